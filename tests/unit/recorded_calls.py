"""What a proxied call records into `Metrics`, for the metrics tests (run in a process of its
own too, as a worker records)."""

from __future__ import annotations

from decimal import Decimal

import grpc

from rerank.server._metrics import Metrics

MODEL = "cohere/rerank-v3.5"


def record_a_call(metrics: Metrics) -> None:
    """What one proxied call records, and a few things more."""
    method = metrics.grpc_method("rerank.v1.RerankService/Rerank")
    method.started.inc()
    metrics.models_offered([MODEL])
    metrics.documents(3)
    metrics.cache_lookup("miss")
    metrics.upstream_attempt("rerank", MODEL, "OK", 0.02, Decimal("0.002"), caller="team")
    metrics.retry("UPSTREAM_RATE_LIMITED")
    metrics.caller_call("team")
    method.ended(grpc.StatusCode.OK, 0.03, 400, 200)
