"""The gRPC reranking server: `python -m rerank.server` (or `rerank-server`).

Its public face is this package's names below; every module in it is private. A call travels,
outermost first:

    door          (`_grpc_door`)      gRPC's ends: a place among the calls in flight, metadata,
                                      status and trailers, the gRFC A66 metrics
                  (`_http_door`)      or HTTP's (`_http_server`: uvicorn behind a header guard):
                                      Connect and gRPC-Web (`_http_connect`), Cohere's API
                                      (`_http_cohere`), the same places, statuses and metrics
    pipeline      (`_pipeline`)       request id, server span, caller, access-log line
    servicer      (`_service`)        each method, in domain values (`_translate`: proto ⇄
                                      domain, every field checked by `_domain.check_request`)
    admission     (`_admission`)      calls and bytes in flight, refused at once when full
    caller limits (`_caller_limits`)  a named caller's rate, concurrency, budget and models
    cache         (`_cache`)          repeated requests from memory or Redis, one upstream
                                      call per key
    windows       (`_windows`)        requests above a model's per-call limit, split and merged
    resilience    (`_resilience`)     retries under a budget, the circuit breaker (`_breaker`)
    metered       (`_metrics`)        what each upstream attempt took and cost
    gateway       (`_gateway`)        domain ⇄ the AI Gateway's protocol, its answers checked
                                      where they enter (`_gateway_http`: the HTTP exchange)

Caller limits, cache, windows, resilience and metering are `_domain.RerankerLayer`s around the
gateway adapter. `_errors` is the one error tree, `_status` the one table from it to gRPC codes
(and the failures' log lines), `_calls` the per-call record the pipeline hands down, `_metrics`
what the server counts (`_prometheus` stores it and serves `/metrics`), `_app` wires
everything, `_config` holds the settings, `_callers` reads the named callers' file into the
callers' directory, which `_credentials` holds with our own gateway credential, `_workers` runs
several processes on one port.

The names are imported on first use: importing this package imports nothing else, so that
`__main__` can choose prometheus-client's storage before anything imports the library.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rerank.server._app import RunningServer, serve, start_server
    from rerank.server._config import GatewayProtocol, SettingError, Settings, Upstream
    from rerank.server._listening import StartupError

#: Public name → the private module that defines it.
_PUBLIC = {
    "GatewayProtocol": "_config",
    "RunningServer": "_app",
    "SettingError": "_config",
    "Settings": "_config",
    "StartupError": "_listening",
    "Upstream": "_config",
    "serve": "_app",
    "start_server": "_app",
}

__all__ = [
    "GatewayProtocol",
    "RunningServer",
    "SettingError",
    "Settings",
    "StartupError",
    "Upstream",
    "serve",
    "start_server",
]


def __getattr__(name: str) -> Any:
    if name not in _PUBLIC:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_PUBLIC[name]}"), name)
