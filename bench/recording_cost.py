"""`python -m bench.recording_cost`: microseconds of CPU of the metric recordings one proxied
Rerank call makes (a cache miss, one window, one attempt that cost something), timed in this
process: the part of the metrics' overhead that is ours, without the noise of the shared box.

Run it with `PROMETHEUS_MULTIPROC_DIR` set, as `bench.run` does: prometheus-client chooses its
storage when it is first imported, and the server's `__main__` chooses its files. Prints one
JSON number.
"""

from __future__ import annotations

import json
import sys
import time
from decimal import Decimal

import grpc

from bench import _workload
from rerank.server._metrics import Metrics
from rerank.server._prometheus import PrometheusRecorder

CALLS = 20_000


def recording_cost(calls: int = CALLS) -> float:
    metrics = Metrics(PrometheusRecorder())
    method = metrics.grpc_method("rerank.v1.RerankService/Rerank")
    metrics.models_offered([_workload.MODEL])
    cost = Decimal("0.002")
    began = time.thread_time()  # CPU time: other processes on the box do not count
    for _ in range(calls):
        method.started.inc()
        metrics.admitted(1)
        metrics.documents(20)
        metrics.cache_lookup("miss")
        metrics.windows(1)
        metrics.upstream_attempt("rerank", _workload.MODEL, "OK", 0.002, cost)
        metrics.cache_size(1_000_000, 1000)
        metrics.admitted(-1)
        method.ended(grpc.StatusCode.OK, 0.003, 4000, 2000)
    return (time.thread_time() - began) / calls * 1e6


if __name__ == "__main__":
    sys.stdout.write(json.dumps(recording_cost()) + "\n")
