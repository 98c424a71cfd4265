"""Print one `/metrics` scrape of a real server to stdout, for `make metrics-lint`
(`| promtool check metrics`).

Run as `python -m tools.scrape_metrics` from the checkout's root. It starts `python -m
rerank.server --workers 2 --metrics-port 0` on loopback (the bundled mock gateway), makes calls
that touch every metric family (a success, a cache hit, a caller's mistake, an unknown model, a
retried gateway failure, a model list, a health check), scrapes once, and stops the server by
its PID. Every wait is bounded.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
import urllib.request

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from rerank.v1 import rerank_service_pb2 as pb
from rerank.v1 import rerank_service_pb2_grpc as pb_grpc
from tools.processes import Process

START_TIMEOUT_S = 60.0


def _calls(target: str) -> None:
    request = pb.RerankRequest(
        model="cohere/rerank-v3.5",
        query="What is the capital of France?",
        documents=[pb.Document(text=t) for t in ("Paris is in France.", "Berlin is in Germany.")],
        top_n=1,
    )
    retried = pb.RerankRequest()
    retried.CopyFrom(request)
    retried.provider_options.update(
        {"mockGateway": {"fault": "rate_limit", "retryAfterMs": 10, "times": 1, "key": "lint"}}
    )
    unknown_model = pb.RerankRequest()
    unknown_model.CopyFrom(request)
    unknown_model.model = "nobody/no-such-model"
    with grpc.insecure_channel(target) as channel:
        stub = pb_grpc.RerankServiceStub(channel)
        for call in (request, request, retried, unknown_model, pb.RerankRequest(query="")):
            with contextlib.suppress(grpc.RpcError):  # the failures are what is counted
                stub.Rerank(call, timeout=10)
        stub.ListModels(pb.ListModelsRequest(), timeout=10)
        health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)


def main() -> int:
    server = Process(
        [
            *(sys.executable, "-m", "rerank.server", "--port", "0", "--metrics-port", "0"),
            *("--workers", "2", "--mock", "--log-level", "WARNING"),
        ],
        env={"RERANK_GRACE_PERIOD": "1"},
        stderr=subprocess.DEVNULL,
    )
    with server:
        target = server.wait_for(r"rerank server listening on (\S+:\d+)", START_TIMEOUT_S)
        url = server.wait_for(r"rerank metrics on (http://\S+)", START_TIMEOUT_S)
        _calls(target.group(1))
        with urllib.request.urlopen(url.group(1), timeout=10) as response:
            sys.stdout.write(response.read().decode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
