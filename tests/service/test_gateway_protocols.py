"""Gateway protocols v3 and v4 through the whole server, seen from both ends.

Upstream is a real HTTP server on a loopback port (tests/scripted_http.py) that records what the
server sends and answers as each test says; downstream is the real Python client over a real
channel. Covered: the path and headers of each version, the team header, warnings reaching the
client (`deprecated`, and types no version defines), `not_found`, and the empty document list
that is answered without asking the gateway.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import orjson
import pytest

from rerank.client import AsyncRerankClient, InvalidRequestError, NotFoundError
from rerank.client import Warning as ClientWarning
from rerank.server._app import RunningServer, start_server
from rerank.server._config import GatewayProtocol, Settings, Upstream
from tests.conftest import SEED_DOCUMENTS, SEED_MODEL, SEED_QUERY
from tests.scripted_http import Reply, Request, ScriptedServer

TEAM_HEADER = "x-vercel-ai-gateway-team"
SPEC_HEADER = "ai-reranking-model-specification-version"
RANKING = [{"index": 0, "relevanceScore": 0.9}, {"index": 1, "relevanceScore": 0.2}]
CONFIG = {
    "models": [
        {
            "id": SEED_MODEL,
            "name": "Rerank 3.5",
            "specification": {"specificationVersion": "v4", "provider": "cohere"},
            "modelType": "reranking",
        }
    ]
}
PROTOCOLS = pytest.mark.parametrize("protocol", list(GatewayProtocol), ids=lambda p: p.value)

Serve = Callable[..., Awaitable[tuple[AsyncRerankClient, ScriptedServer]]]


def ranking_with(**extra: Any) -> Callable[[Request], Awaitable[Reply]]:
    """A gateway that answers every rerank call with RANKING plus `extra`, and /config."""

    async def handler(request: Request) -> Reply:
        if request.path.endswith("/config"):
            return Reply(body=orjson.dumps(CONFIG))
        return Reply(body=orjson.dumps({"ranking": RANKING, **extra}))

    return handler


@pytest.fixture
async def serve() -> AsyncIterator[Serve]:
    """Start a server in front of a scripted gateway speaking `protocol`; a client to it."""
    opened: list[tuple[ScriptedServer, RunningServer, AsyncRerankClient]] = []

    async def start(
        handler: Callable[[Request], Awaitable[Reply]],
        protocol: GatewayProtocol = GatewayProtocol.V4,
        team: str | None = None,
    ) -> tuple[AsyncRerankClient, ScriptedServer]:
        upstream = await ScriptedServer(handler).__aenter__()
        settings = Settings(
            port=0,
            grace_period=1,
            upstream=Upstream.GATEWAY,
            gateway_url=protocol.base_url_at(upstream.origin),
            gateway_protocol=protocol,
            gateway_team=team,
            api_key="test-key-123",
        )
        running = await start_server(settings)
        client = AsyncRerankClient(f"127.0.0.1:{running.port}", timeout=10)
        opened.append((upstream, running, client))
        return client, upstream

    yield start
    for upstream, running, client in opened:
        await client.close()
        await running.stop()
        await upstream.__aexit__(None, None, None)


@PROTOCOLS
async def test_each_version_is_spoken_with_the_team_on_every_request(
    serve: Serve, protocol: GatewayProtocol
) -> None:
    client, upstream = await serve(ranking_with(), protocol, team="team_abc123")
    result = await client.rerank(SEED_QUERY, list(SEED_DOCUMENTS), model=SEED_MODEL, top_n=2)
    models = await client.list_models()
    assert [r.original_index for r in result.ranking] == [0, 1]
    assert [m.id for m in models] == [SEED_MODEL]
    rerank_call, config_call = upstream.requests
    assert rerank_call.path == f"/{protocol.value}/ai/reranking-model"
    assert rerank_call.headers[SPEC_HEADER] == {"v3": "3", "v4": "4"}[protocol.value]
    assert config_call.path == f"/{protocol.value}/ai/config"
    assert [r.headers.get(TEAM_HEADER) for r in upstream.requests] == ["team_abc123"] * 2


async def test_without_a_team_no_team_header_is_sent(serve: Serve) -> None:
    client, upstream = await serve(ranking_with())
    await client.rerank(SEED_QUERY, list(SEED_DOCUMENTS))
    await client.list_models()
    assert all(TEAM_HEADER not in r.headers for r in upstream.requests)


async def test_a_deprecated_warning_reaches_the_client(serve: Serve) -> None:
    deprecated = {"type": "deprecated", "setting": "topN", "message": "use top_k instead"}
    client, _ = await serve(ranking_with(warnings=[deprecated]), GatewayProtocol.V4)
    result = await client.rerank(SEED_QUERY, list(SEED_DOCUMENTS), top_n=2)
    assert result.warnings == (
        ClientWarning("deprecated", setting="topN", message="use top_k instead"),
    )
    assert result.to_json_dict()["warnings"] == [deprecated]  # as the SDK shows it


@pytest.mark.parametrize(
    ("protocol", "kind"),
    [(GatewayProtocol.V4, "shiny"), (GatewayProtocol.V3, "deprecated")],
    ids=["v4-undefined-type", "v3-deprecated"],
)
async def test_an_undefined_warning_type_does_not_fail_the_call(
    serve: Serve, protocol: GatewayProtocol, kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="rerank.server._gateway")
    warning = {"type": kind, "setting": "topN", "message": "m"}
    client, upstream = await serve(ranking_with(warnings=[warning]), protocol)
    for _ in range(3):  # the cache is bypassed: each call is parsed anew
        result = await client.rerank(SEED_QUERY, list(SEED_DOCUMENTS), bypass_cache=True)
        assert [r.original_index for r in result.ranking] == [0, 1]
        (passed_on,) = result.warnings
        assert passed_on.type == "other"
        assert f"unknown warning type {kind!r}" in passed_on.message
    assert len(upstream.requests) == 3
    logged = [r.getMessage() for r in caplog.records if repr(kind) in r.getMessage()]
    assert len(logged) == 1, logged


async def test_not_found_has_its_own_reason_beside_model_not_found(serve: Serve) -> None:
    async def handler(request: Request) -> Reply:
        model = request.headers["ai-model-id"]
        kind = "model_not_found" if model.endswith("v99") else "not_found"
        body = {"error": {"message": f"{kind} here", "type": kind}, "generationId": "gen_1"}
        return Reply(404, orjson.dumps(body))

    client, upstream = await serve(handler, GatewayProtocol.V4, team="ghost-team")
    reasons = []
    for model in ("cohere/rerank-v3.5", "cohere/rerank-v99"):
        with pytest.raises(NotFoundError) as caught:
            await client.rerank(SEED_QUERY, list(SEED_DOCUMENTS), model=model)
        assert caught.value.error_info is not None
        reasons.append(caught.value.error_info.reason)
    assert reasons == ["UPSTREAM_NOT_FOUND", "MODEL_NOT_FOUND"]
    assert len(upstream.requests) == 2  # a 404 is not retried


async def test_no_documents_is_an_empty_ranking_without_a_gateway_call(serve: Serve) -> None:
    client, upstream = await serve(ranking_with())
    result = await client.rerank(SEED_QUERY, [], model=SEED_MODEL, top_n=3)
    assert result.ranking == ()
    assert result.model == SEED_MODEL
    assert result.id
    assert result.provider_metadata is None  # nothing asked, nothing billed
    assert result.warnings == ()
    assert upstream.requests == []


@pytest.mark.parametrize(("changes", "field"), [({"query": ""}, "query"), ({"top_n": 0}, "top_n")])
async def test_no_documents_still_validates_the_other_fields(
    serve: Serve, changes: dict[str, Any], field: str
) -> None:
    client, upstream = await serve(ranking_with())
    arguments: dict[str, Any] = {"query": SEED_QUERY, "top_n": None, **changes}
    with pytest.raises(InvalidRequestError) as caught:
        await client.rerank(arguments["query"], [], top_n=arguments["top_n"])
    assert [f for f, _ in caught.value.field_violations] == [field]
    assert upstream.requests == []


@pytest.fixture
async def embedded() -> AsyncIterator[Callable[[GatewayProtocol], Awaitable[AsyncRerankClient]]]:
    """A server on its embedded mock gateway asked in `protocol`; a client to it."""
    opened: list[tuple[RunningServer, AsyncRerankClient]] = []

    async def start(protocol: GatewayProtocol) -> AsyncRerankClient:
        running = await start_server(Settings(port=0, grace_period=1, gateway_protocol=protocol))
        client = AsyncRerankClient(f"127.0.0.1:{running.port}", timeout=10)
        opened.append((running, client))
        return client

    yield start
    for running, client in opened:
        await client.close()
        await running.stop()


def mock_fault(**spec: Any) -> dict[str, Any]:
    return {"mockGateway": spec}


@PROTOCOLS
async def test_the_embedded_mock_is_asked_in_the_configured_protocol(
    embedded: Callable[[GatewayProtocol], Awaitable[AsyncRerankClient]],
    protocol: GatewayProtocol,
) -> None:
    client = await embedded(protocol)
    # The mock refuses a spec-version header that is not its path's: a ranking means path and
    # header agree.
    result = await client.rerank(SEED_QUERY, list(SEED_DOCUMENTS), top_n=1)
    assert [r.original_index for r in result.ranking] == [0]
    assert SEED_MODEL in [m.id for m in await client.list_models()]
    # Which version it was asked in shows in what the mock may send: a deprecated warning
    # only over v4 (over v3 the mock refuses the fault, naming the version that has it).
    deprecated = mock_fault(fault="warning", type="deprecated", setting="topN", message="m")
    if protocol is GatewayProtocol.V4:
        warned = await client.rerank(SEED_QUERY, ["a"], provider_options=deprecated)
        assert warned.warnings == (ClientWarning("deprecated", setting="topN", message="m"),)
    else:
        with pytest.raises(InvalidRequestError, match="v4"):
            await client.rerank(SEED_QUERY, ["a"], provider_options=deprecated)


async def test_the_mocks_not_found_is_not_found_with_its_reason(
    embedded: Callable[[GatewayProtocol], Awaitable[AsyncRerankClient]],
) -> None:
    client = await embedded(GatewayProtocol.V4)
    with pytest.raises(NotFoundError) as caught:
        await client.rerank(SEED_QUERY, ["a"], provider_options=mock_fault(fault="not_found"))
    assert caught.value.error_info is not None
    assert caught.value.error_info.reason == "UPSTREAM_NOT_FOUND"
