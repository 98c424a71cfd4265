"""What every HTTP call shares with gRPC's: its request id, its trace, its access record, the
metrics; and what browsers and balancers need: CORS, health and readiness."""

from __future__ import annotations

import logging

import httpx
import pytest

from rerank.server._logs import ACCESS_LOGGER
from rerank.server._metrics import Metrics
from rerank.server._prometheus import PrometheusRecorder
from tests.conftest import SEED_DOCUMENTS, SEED_QUERY
from tests.http.conftest import base_url, settings
from tests.scrapes import ended, scrape_until
from tests.service.calls import access_records
from tests.service.conftest import StartServer

COHERE = {"model": "rerank-v3.5", "query": SEED_QUERY, "documents": list(SEED_DOCUMENTS)}
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
TRACEPARENT = f"00-{TRACE_ID}-00f067aa0ba902b7-01"


async def test_the_request_id_comes_back_and_the_trace_is_joined(
    serve: StartServer, client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=ACCESS_LOGGER)
    running = await serve()
    url = base_url(running)
    headers = {"x-request-id": "req-http-1", "traceparent": TRACEPARENT}
    answer = await client.post(f"{url}/v2/rerank", json=COHERE, headers=headers)
    assert answer.status_code == 200
    assert answer.headers["x-request-id"] == "req-http-1"
    connect = await client.post(
        f"{url}/rerank.v1.RerankService/Rerank", json={"query": ""}, headers=headers
    )
    assert connect.status_code == 400
    assert connect.headers["x-request-id"] == "req-http-1"
    fresh = await client.post(f"{url}/v2/rerank", json=COHERE)
    assert len(fresh.headers["x-request-id"]) == 32
    records = [r for r in access_records(caplog) if r["request_id"] == "req-http-1"]
    assert [r["method"] for r in records] == ["rerank.v1.RerankService/Rerank"] * 2
    assert {r["trace_id"] for r in records} == {TRACE_ID}


async def test_http_calls_are_counted_by_route_and_status(
    servers: StartServer, client: httpx.AsyncClient
) -> None:
    recorder = PrometheusRecorder()
    running = await servers(settings(), metrics=Metrics(recorder))
    url = base_url(running)
    await client.post(f"{url}/v2/rerank", json=COHERE)
    await client.post(f"{url}/v2/rerank", json={"query": ""})
    await client.post(f"{url}/rerank.v1.RerankService/Rerank", json={"query": ""})
    await client.post(f"{url}/nowhere", json={})
    result = await scrape_until(recorder, lambda s: ended(s, "other", "UNIMPLEMENTED") == 1)
    assert ended(result, "/v2/rerank", "OK") == 1
    assert ended(result, "/v2/rerank", "INVALID_ARGUMENT") == 1
    assert ended(result, "/rerank.v1.RerankService/Rerank", "INVALID_ARGUMENT") == 1
    # The gRPC port's own series are apart.
    assert ended(result, "rerank.v1.RerankService/Rerank", "OK") == 0


async def test_browsers_of_a_configured_origin_are_answered(
    serve: StartServer, client: httpx.AsyncClient
) -> None:
    running = await serve(settings(http_cors_origins=frozenset({"https://app.example"})))
    url = f"{base_url(running)}/rerank.v1.RerankService/Rerank"
    asked = {
        "access-control-request-method": "POST",
        "access-control-request-headers": "content-type, connect-protocol-version",
    }
    preflight = await client.options(url, headers={"origin": "https://app.example", **asked})
    assert preflight.status_code == 204
    assert preflight.headers["access-control-allow-origin"] == "https://app.example"
    assert "connect-protocol-version" in preflight.headers["access-control-allow-headers"]
    other = await client.options(url, headers={"origin": "https://evil.example", **asked})
    assert other.status_code == 403
    assert "access-control-allow-origin" not in other.headers
    call = await client.post(
        f"{base_url(running)}/v2/rerank", json=COHERE, headers={"origin": "https://app.example"}
    )
    assert call.headers["access-control-allow-origin"] == "https://app.example"
    exposed = call.headers["access-control-expose-headers"]
    assert "x-request-id" in exposed
    assert "grpc-status" in exposed


async def test_ready_until_draining_healthy_throughout(
    serve: StartServer, client: httpx.AsyncClient
) -> None:
    running = await serve(settings(drain_delay=0))
    url = base_url(running)
    assert (await client.get(f"{url}/readyz")).status_code == 200
    await running.drain(0)
    assert (await client.get(f"{url}/readyz")).status_code == 503
    assert (await client.get(f"{url}/healthz")).status_code == 200
    # Calls are still answered while draining.
    assert (await client.post(f"{url}/v2/rerank", json=COHERE)).status_code == 200
