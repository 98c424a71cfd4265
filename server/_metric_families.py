"""What the server exports: every metric's name, kind, labels, help text and buckets.

docs/operating.md#metrics shows them to operators (its table made from these), and `deploy/`
speaks of these names.
Plain data that imports no metrics library: what records them and what stores them read it alike.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

# gRFC A66's default buckets: latency in seconds, sizes in bytes.
LATENCY_BUCKETS = (
    0, 0.00001, 0.00005, 0.0001, 0.0003, 0.0006, 0.0008, 0.001, 0.002, 0.003, 0.004, 0.005,
    0.006, 0.008, 0.01, 0.013, 0.016, 0.02, 0.025, 0.03, 0.04, 0.05, 0.065, 0.08, 0.1, 0.13,
    0.16, 0.2, 0.25, 0.3, 0.4, 0.5, 0.65, 0.8, 1, 2, 5, 10, 20, 50, 100,
)  # fmt: skip
SIZE_BUCKETS = (
    0, 1024, 2048, 4096, 16384, 65536, 262144, 1048576, 4194304, 16777216, 67108864,
    268435456, 1073741824, 4294967296,
)  # fmt: skip
# The gateway's answers take milliseconds to a minute: fewer, wider buckets than A66's.
UPSTREAM_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
DOCUMENT_BUCKETS = (0, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000)
WINDOW_BUCKETS = (1, 2, 3, 4, 6, 8, 10, 16, 32, 64)

#: The cost is counted in integer nano-dollars, exact in a float64 up to 2**53 of them (about
#: nine million dollars per process and model); the scrape shows dollars, under this name.
NANOS_PER_DOLLAR = 10**9
COST_SHOWN = "rerank_gateway_cost_usd"

Kind = Literal["counter", "histogram", "gauge"]


@dataclass(frozen=True)
class Family:
    """One metric: its name (without `_total`), kind, label names, help text and buckets."""

    name: str
    kind: Kind
    labels: tuple[str, ...]
    help: str
    buckets: tuple[float, ...] = ()


def _f(name: str, kind: Kind, labels: str, help: str, buckets: tuple[float, ...] = ()) -> Family:
    """A row of the table below; `labels` space-separated."""
    return Family(name, kind, tuple(labels.split()), help, buckets)


# The table: name, kind, labels, help (as the scrape shows it), buckets.
# fmt: off
GRPC_STARTED = _f("grpc_server_call_started", "counter", "grpc_method",
    "RPCs started (gRFC A66).")
GRPC_DURATION = _f("grpc_server_call_duration_seconds", "histogram", "grpc_method grpc_status",
    "Time from the handler's start to its end, per RPC (gRFC A66).", LATENCY_BUCKETS)
GRPC_RCVD = _f("grpc_server_call_rcvd_total_compressed_message_size_bytes", "histogram",
    "grpc_method grpc_status",
    "Bytes of the request messages of one RPC, serialized (gRFC A66; no compression is used).",
    SIZE_BUCKETS)
GRPC_SENT = _f("grpc_server_call_sent_total_compressed_message_size_bytes", "histogram",
    "grpc_method grpc_status",
    "Bytes of the response messages of one RPC, serialized (gRFC A66; no compression is used).",
    SIZE_BUCKETS)
UPSTREAM_ATTEMPTS = _f("rerank_upstream_attempts", "counter", "operation model outcome",
    "Calls to the gateway (each retry and each window is one), by outcome: OK or the "
    "ErrorInfo reason of the failure.")
UPSTREAM_DURATION = _f("rerank_upstream_attempt_duration_seconds", "histogram",
    "operation model outcome", "Time one call to the gateway took.", UPSTREAM_BUCKETS)
RETRIES = _f("rerank_upstream_retries", "counter", "reason",
    "Gateway calls retried, by the ErrorInfo reason of the failure retried.")
RETRY_BUDGET_EXHAUSTED = _f("rerank_upstream_retry_budget_exhausted", "counter", "",
    "Retryable failures not retried because the retry budget was spent.")
BREAKER_STATE = _f("rerank_circuit_breaker_state", "gauge", "state",
    "Worker processes whose gateway circuit is in this state (closed, open, half_open).")
BREAKER_TRANSITIONS = _f("rerank_circuit_breaker_transitions", "counter", "to",
    "Changes of a worker's gateway circuit, by the state entered.")
CACHE_REQUESTS = _f("rerank_cache_requests", "counter", "result",
    "Result cache lookups: hit (from memory), coalesced (shared an identical call in flight), "
    "miss (went upstream). Requests that bypass the cache are not counted.")
CACHE_BYTES = _f("rerank_cache_bytes", "gauge", "",
    "Bytes the result caches hold (all workers).")
CACHE_ENTRIES = _f("rerank_cache_entries", "gauge", "",
    "Entries in the result caches (all workers).")
WINDOWS = _f("rerank_windows_per_request", "histogram", "",
    "Upstream windows one request past the cache was split into (1: not split).", WINDOW_BUCKETS)
DOCUMENTS = _f("rerank_documents_per_request", "histogram", "",
    "Documents in one valid Rerank request (or valid request of a BatchRerank).",
    DOCUMENT_BUCKETS)
BATCH_REQUESTS = _f("rerank_batch_requests", "counter", "grpc_status",
    "Requests answered inside BatchRerank calls, by the status each got (the call itself is "
    "counted with the gRPC metrics, OK however its requests fared).")
ADMISSION_REFUSALS = _f("rerank_admission_refusals", "counter", "reason",
    "Calls refused at once because the server was full, by the limit reached.")
IN_FLIGHT = _f("rerank_calls_in_flight", "gauge", "",
    "Rerank and ListModels calls, and requests of BatchRerank calls, admitted and not finished.")
COST = _f("rerank_gateway_cost_nanousd", "counter", "model caller",
    "What the gateway charged, in US dollars, by model and named caller (empty: a caller "
    "without a name). Exact: kept as integer nano-dollars.")
CALLER_CALLS = _f("rerank_caller_calls", "counter", "caller",
    "Rerank calls of a named caller that its limits let through (answered from the cache or not).")
CALLER_REFUSALS = _f("rerank_caller_refusals", "counter", "caller reason",
    "Rerank calls of a named caller that its own limits refused, by the ErrorInfo reason "
    "(CALLER_RATE_LIMITED, CALLER_BUDGET_EXHAUSTED, MODEL_NOT_ALLOWED).")
REDIS_UP = _f("rerank_redis_up", "gauge", "purpose",
    "Worker processes that can use their Redis, by what it holds (limits, cache); a process "
    "that cannot decides its named callers' limits itself (or serves uncached) until it can.")
LIMITS_DECIDED_LOCALLY = _f("rerank_limits_decided_locally", "counter", "",
    "Calls of named callers whose limits were decided in the process because the limits' "
    "Redis was away (fail open).")
BUILD_INFO = _f("rerank_build_info", "gauge", "version gateway_protocol",
    "Always 1; the labels say which build and gateway protocol serve.")
# fmt: on
#: Every family above, in the table's order: none can be left out of the list.
FAMILIES = tuple(value for value in list(globals().values()) if isinstance(value, Family))
