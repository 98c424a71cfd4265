"""Callers over HTTP are the gRPC port's callers: one token, one set of limits and one
standing, whichever door the calls come through; each refusal in its dialect's status."""

from __future__ import annotations

from pathlib import Path

import grpc
import httpx

from rerank.v1 import rerank_service_pb2_grpc as pb_grpc
from tests.conftest import SEED_DOCUMENTS, SEED_QUERY
from tests.http.conftest import base_url, settings
from tests.service.calls import seed_request
from tests.service.conftest import StartServer

TOKEN = "http-caller-token"
CALLERS = f"""
[callers.web-app]
token = "{TOKEN}"
requests_per_second = 0.01   # one token per 100 s: after the burst, refused for long enough
burst = 2
models = ["cohere/rerank-v3.5", "cohere/no-such-model"]
"""
COHERE = {"model": "rerank-v3.5", "query": SEED_QUERY, "documents": list(SEED_DOCUMENTS)}
BEARER = {"authorization": f"Bearer {TOKEN}"}


async def test_one_callers_limits_and_usage_span_both_ports(
    serve: StartServer, client: httpx.AsyncClient, tmp_path: Path
) -> None:
    path = tmp_path / "callers.toml"
    path.write_text(CALLERS)
    running = await serve(settings(callers_file=str(path)))
    url = base_url(running)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
        stub = pb_grpc.RerankServiceStub(channel)
        await stub.Rerank(seed_request(), metadata=tuple(BEARER.items()), timeout=10)
    assert (await client.post(f"{url}/v2/rerank", json=COHERE, headers=BEARER)).status_code == 200
    refused = await client.post(f"{url}/v2/rerank", json=COHERE, headers=BEARER)
    assert refused.status_code == 429
    assert int(refused.headers["retry-after"]) >= 1
    forbidden = await client.post(
        f"{url}/v2/rerank", json={**COHERE, "model": "voyage/rerank-2.5"}, headers=BEARER
    )
    assert forbidden.status_code == 403
    usage = await client.post(f"{url}/rerank.v1.RerankService/GetUsage", json={}, headers=BEARER)
    assert usage.status_code == 200
    assert usage.json()["caller"] == "web-app"
    assert int(usage.json()["calls"]) == 2
    assert (
        int(usage.json()["refused"]) == 1
    )  # the rate's: a model outside `models` is refused before the limits count


async def test_a_model_the_gateway_does_not_know_is_404(
    serve: StartServer, client: httpx.AsyncClient
) -> None:
    running = await serve()
    answer = await client.post(
        f"{base_url(running)}/v2/rerank", json={**COHERE, "model": "cohere/no-such-model"}
    )
    assert answer.status_code == 404
    assert "cohere/no-such-model" in answer.json()["message"]
