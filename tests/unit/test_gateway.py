"""The gateway adapter against the protocol: bytes and headers out, every answer in.

Outgoing requests are checked against the AI SDK's own requests captured on the wire (both
protocol versions, tests/wire), and every answer — including refused, reset and cut
connections — comes from a real HTTP server on a loopback port (tests/scripted_http.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import email.utils
import json
import logging
import os
import socket
from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
import pytest

from rerank.server import _errors as errors
from rerank.server._calls import CallRecord, close_call, open_call
from rerank.server._config import GatewayProtocol
from rerank.server._credentials import OidcTokenFile
from rerank.server._domain import Ranked, RerankQuery, Usage, Warning
from rerank.server._gateway import (
    MAX_LOGGED_WARNING_TYPES,
    PROTOCOL_FACTS,
    TEAM_HEADER,
    GatewayReranker,
    encode_rerank_body,
    error_from_response,
    parse_config_body,
    parse_rerank_body,
)
from rerank.server._gateway_http import MAX_RESPONSE_BYTES, parse_retry_after
from tests.fake_clock import FakeClock
from tests.scripted_http import Fail, Handler, Reply, Request, ScriptedServer
from tests.wire import captured_requests

SEED = RerankQuery(model="cohere/rerank-v3.5", query="q", kind="text", documents=("a", "b"))
# Sent by the HTTP client itself, and left out of the captures (see their `about`).
TRANSPORT_HEADERS = {"host", "content-length", "connection", "accept", "accept-encoding"}


@contextlib.asynccontextmanager
async def gateway(
    handler: Handler,
    *,
    protocol: GatewayProtocol = GatewayProtocol.V4,
    team: str | None = None,
) -> AsyncIterator[tuple[GatewayReranker, ScriptedServer]]:
    """The adapter pointed at a scripted server's `protocol` base URL; both closed afterwards."""
    async with ScriptedServer(handler) as server:
        reranker = GatewayReranker(
            base_url=protocol.base_url_at(server.origin) + "/",  # a trailing slash is dropped
            api_key="test-key-123",
            protocol=protocol,
            team=team,
        )
        try:
            yield reranker, server
        finally:
            await reranker.aclose()


def answer(value: Any, status: int = 200, **headers: str) -> Handler:
    async def handler(request: Request) -> Reply:
        return Reply(status, orjson.dumps(value), {"content-type": "application/json", **headers})

    return handler


def query_from_wire(body: dict[str, Any], model: str) -> RerankQuery:
    documents = body["documents"]
    return RerankQuery(
        model=model,
        query=body["query"],
        kind=documents["type"],
        documents=tuple(documents["values"]),
        top_n=body.get("topN"),
        provider_options=body.get("providerOptions"),
    )


async def answer_by_path(request: Request) -> Reply:
    if request.path.endswith("/config"):
        return Reply(body=b'{"models": []}')
    return Reply(body=b'{"ranking": [{"index": 0, "relevanceScore": 0.5}]}')


@pytest.mark.parametrize("protocol", list(GatewayProtocol), ids=lambda p: p.value)
async def test_requests_match_the_ai_sdk_on_the_wire(protocol: GatewayProtocol) -> None:
    """Path, body byte for byte, every header the SDK sends but user-agent with its value, and
    no header the SDK does not send, for each capture of the protocol."""
    captures = captured_requests(protocol.value)
    assert captures
    for capture in captures:
        headers = capture["headers"]
        async with gateway(answer_by_path, protocol=protocol, team=headers.get(TEAM_HEADER)) as (
            reranker,
            server,
        ):
            if capture["method"] == "GET":
                await reranker.list_models(timeout=5)
            else:
                body = json.loads(capture["body"])
                await reranker.rerank(query_from_wire(body, headers["ai-model-id"]), timeout=5)
        (request,) = server.requests
        assert (request.method, request.path) == (capture["method"], capture["path"])
        assert request.body == capture["body"].encode()
        for name, value in headers.items():
            if name in ("user-agent", "x-custom"):  # free, and a caller's own header
                continue
            assert request.headers.get(name) == value, (capture["name"], name)
        extra = set(request.headers) - set(headers) - TRANSPORT_HEADERS - {"user-agent"}
        assert extra == set(), capture["name"]


@pytest.mark.parametrize(
    ("protocol", "version"), [(GatewayProtocol.V3, "3"), (GatewayProtocol.V4, "4")]
)
async def test_each_protocol_sends_its_path_and_specification_version(
    protocol: GatewayProtocol, version: str
) -> None:
    async with gateway(answer_by_path, protocol=protocol) as (reranker, server):
        await reranker.rerank(SEED, timeout=5)
        await reranker.list_models(timeout=5)
    rerank_request, config_request = server.requests
    assert rerank_request.path == f"/{protocol.value}/ai/reranking-model"
    assert rerank_request.headers["ai-reranking-model-specification-version"] == version
    assert config_request.path == f"/{protocol.value}/ai/config"
    assert "ai-reranking-model-specification-version" not in config_request.headers
    assert TEAM_HEADER not in rerank_request.headers  # no team configured, no header


@pytest.mark.parametrize("protocol", list(GatewayProtocol), ids=lambda p: p.value)
async def test_the_team_goes_on_every_request(protocol: GatewayProtocol) -> None:
    async with gateway(answer_by_path, protocol=protocol, team="team_abc123") as (
        reranker,
        server,
    ):
        await reranker.rerank(SEED, timeout=5)
        await reranker.list_models(timeout=5)
    assert [r.headers.get(TEAM_HEADER) for r in server.requests] == ["team_abc123"] * 2


@pytest.mark.parametrize("configured", [None, "server-team"])
async def test_a_calls_own_team_goes_on_its_rerank_requests_instead(configured: str | None) -> None:
    """The team a call carries (the AI Gateway door's caller header) replaces the server's on
    that call's requests; a call without one, and `/config`, keep the server's."""
    async with gateway(answer_by_path, team=configured) as (reranker, server):
        token = open_call(CallRecord("req-1", team="caller-team"))
        try:
            await reranker.rerank(SEED, timeout=5)
            await reranker.list_models(timeout=5)
        finally:
            close_call(token)
        token = open_call(CallRecord("req-2"))
        try:
            await reranker.rerank(SEED, timeout=5)
        finally:
            close_call(token)
    assert [r.headers.get(TEAM_HEADER) for r in server.requests] == [
        "caller-team",
        configured,
        configured,
    ]


def test_body_omits_absent_keys_and_never_names_the_model() -> None:
    body = encode_rerank_body(
        RerankQuery(model="cohere/rerank-v3.5", query="q", kind="text", documents=("a",))
    )
    assert body == b'{"documents":{"type":"text","values":["a"]},"query":"q"}'


@pytest.mark.parametrize("count", [2, 3000], ids=["small", "over 64 KiB"])
async def test_the_body_is_sent_whole_with_its_length_and_again_after_a_redirect(
    count: int,
) -> None:
    """The body is made as it is written, not kept (JsonBody): it still arrives byte for byte
    with its content-length, in 64 KiB chunks when larger, and a 307 sends it again."""
    query = dataclasses.replace(SEED, documents=tuple(f"document {i} " * 5 for i in range(count)))
    redirected = False

    async def handler(request: Request) -> Reply:
        nonlocal redirected
        if not redirected:
            redirected = True
            return Reply(307, b"", {"location": request.path})
        return await answer_by_path(request)

    async with gateway(handler) as (reranker, server):
        await reranker.rerank(query, timeout=5)
    expected = encode_rerank_body(query)
    assert len(expected) > 64 * 1024 or count == 2
    assert [r.body for r in server.requests] == [expected, expected]
    assert all(r.headers["content-length"] == str(len(expected)) for r in server.requests)


async def test_list_models_keeps_only_reranking_models() -> None:
    config = {
        "models": [
            {
                "id": "cohere/rerank-v3.5",
                "name": "Rerank 3.5",
                "description": None,
                "pricing": {"input": "0.002", "output": None},
                "specification": {
                    "specificationVersion": "v3",
                    "provider": "cohere",
                    "modelId": "cohere/rerank-v3.5",
                },
                "modelType": "reranking",
            },
            {"id": "openai/gpt-5", "modelType": "language"},
            {"id": "voyage/rerank-2.5", "modelType": "reranking"},
        ]
    }
    async with gateway(answer(config)) as (reranker, server):
        models = await reranker.list_models(timeout=5)
    assert [m.id for m in models] == ["cohere/rerank-v3.5", "voyage/rerank-2.5"]
    assert models[0].provider == "cohere"
    assert models[0].pricing == {"input": "0.002"}
    (request,) = server.requests
    assert (request.method, request.path) == ("GET", "/v4/ai/config")
    assert request.headers["authorization"] == "Bearer test-key-123"
    assert "ai-model-id" not in request.headers


def test_config_without_models_is_a_protocol_error() -> None:
    with pytest.raises(errors.UpstreamProtocolError):
        parse_config_body(b'{"modelz": []}')


def test_a_good_body_parses_with_warnings_and_metadata() -> None:
    outcome = parse_rerank_body(
        orjson.dumps(
            {
                "ranking": [{"index": 1, "relevanceScore": 0.9}, {"index": 0, "relevanceScore": 1}],
                "warnings": [
                    {"type": "unsupported", "feature": "topN", "details": "d"},
                    {"type": "other", "message": "m"},
                ],
                "providerMetadata": {"gateway": {"cost": "0.002"}},
                "somethingNew": True,
            }
        ),
        document_count=2,
    )
    assert outcome.ranking == (Ranked(0, 1.0), Ranked(1, 0.9))  # best first
    assert [w.type for w in outcome.warnings] == ["unsupported", "other"]
    assert outcome.warnings[0].feature == "topN"
    assert outcome.provider_metadata == {"gateway": {"cost": "0.002"}}
    assert outcome.usage == Usage(cost=Decimal("0.002"), upstream_calls=1)


def test_an_answer_without_a_cost_has_an_unknown_one() -> None:
    outcome = parse_rerank_body(
        b'{"ranking": [{"index": 0, "relevanceScore": 0.5}]}', document_count=1
    )
    assert outcome.usage == Usage(cost=None, upstream_calls=1)


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"not json",
        b'{"ranking": [{"index": 0, "relevanceScore": 0.5}',  # truncated
        b"[]",
        b"{}",
        b'{"ranking": {}}',
        b'{"ranking": [1]}',
        b'{"ranking": [{"index": "0", "relevanceScore": 0.5}]}',
        b'{"ranking": [{"index": 0.5, "relevanceScore": 0.5}]}',
        b'{"ranking": [{"index": true, "relevanceScore": 0.5}]}',
        b'{"ranking": [{"index": 0, "relevanceScore": "0.5"}]}',
        b'{"ranking": [{"index": 0}]}',
        b'{"ranking": [{"index": 0, "relevanceScore": NaN}]}',
        b'{"ranking": [], "warnings": {}}',
        b'{"ranking": [], "warnings": [1]}',
        b'{"ranking": [], "warnings": [{"feature": "topN"}]}',
        b'{"ranking": [], "warnings": [{"type": 3}]}',
        b'{"ranking": [], "providerMetadata": {"gateway": 1}}',
        b'{"error": {"message": "boom", "type": "internal_server_error"}}',
    ],
)
def test_a_body_outside_the_protocol_is_refused(body: bytes) -> None:
    with pytest.raises(errors.UpstreamProtocolError):
        parse_rerank_body(body, document_count=1)


def ranking_body(*items: tuple[int, float | str]) -> bytes:
    """An answer whose ranking is `items`, each (index, score); a str score is a JSON number
    written as is."""
    return b'{"ranking": [%s]}' % b", ".join(
        b'{"index": %d, "relevanceScore": %s}' % (index, str(score).encode())
        for index, score in items
    )


@pytest.mark.parametrize(
    "ranking",
    [
        [(0, 0.5), (2, 0.4)],
        [(-1, 0.5)],
        [(1, 0.5), (1, 0.4)],
        [(0, "NaN")],
        [(0, "1e999")],  # beyond a double: infinity
    ],
)
def test_a_ranking_that_cannot_rank_the_documents_sent_is_refused(
    ranking: list[tuple[int, float | str]],
) -> None:
    with pytest.raises(errors.UpstreamProtocolError):
        parse_rerank_body(ranking_body(*ranking), document_count=2)


def test_the_ranking_is_checked_sorted_and_cut_for_the_query_and_the_rest_kept() -> None:
    body = orjson.dumps(
        {
            "ranking": [
                {"index": 0, "relevanceScore": 0.1},
                {"index": 1, "relevanceScore": 0.9},
                {"index": 2, "relevanceScore": 0.5},
            ],
            "providerMetadata": {"gateway": {"cost": "0.002"}},
        }
    )
    outcome = parse_rerank_body(body, document_count=3, top_n=2)
    assert outcome.ranking == (Ranked(1, 0.9), Ranked(2, 0.5))
    assert (outcome.provider_metadata, outcome.usage) == (
        {"gateway": {"cost": "0.002"}},
        Usage(Decimal("0.002"), 1),
    )
    with pytest.raises(errors.UpstreamProtocolError):
        parse_rerank_body(body, document_count=2)


def test_a_deprecated_warning_is_read_over_v4() -> None:
    outcome = parse_rerank_body(
        orjson.dumps(
            {
                "ranking": [{"index": 0, "relevanceScore": 0.5}],
                "warnings": [{"type": "deprecated", "setting": "topN", "message": "use top_k"}],
            }
        ),
        GatewayProtocol.V4,
        document_count=1,
    )
    assert outcome.warnings == (Warning("deprecated", setting="topN", message="use top_k"),)


@pytest.mark.parametrize(
    ("protocol", "warning", "named"),
    [
        (
            GatewayProtocol.V4,
            {"type": "shiny", "feature": "topN", "details": "new"},
            "unknown warning type 'shiny' (feature: topN; details: new)",
        ),
        (GatewayProtocol.V4, {"type": "shiny"}, "unknown warning type 'shiny'"),
        (
            GatewayProtocol.V3,  # v3 does not define it
            {"type": "deprecated", "setting": "topN", "message": "use top_k"},
            "unknown warning type 'deprecated' (setting: topN; message: use top_k)",
        ),
    ],
)
def test_an_undefined_warning_type_is_passed_on_as_other(
    protocol: GatewayProtocol, warning: dict[str, Any], named: str
) -> None:
    heard: list[str] = []
    outcome = parse_rerank_body(
        orjson.dumps({"ranking": [{"index": 0, "relevanceScore": 0.5}], "warnings": [warning]}),
        protocol,
        document_count=1,
        on_unknown_warning=heard.append,
    )
    assert outcome.ranking == (Ranked(0, 0.5),)
    assert outcome.warnings == (Warning("other", message=named),)
    assert heard == [warning["type"]]


def test_the_facts_table_differs_only_where_the_spec_says() -> None:
    v3, v4 = PROTOCOL_FACTS[GatewayProtocol.V3], PROTOCOL_FACTS[GatewayProtocol.V4]
    assert (v3.specification_version, v4.specification_version) == ("3", "4")
    assert v4.warning_types - v3.warning_types == {"deprecated"}
    assert set(v4.error_types) - set(v3.error_types) == {"not_found"}
    assert set(PROTOCOL_FACTS) == set(GatewayProtocol)


async def test_an_undefined_warning_type_is_logged_once_per_type_by_each_adapter(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def handler(request: Request) -> Reply:
        kind = orjson.loads(request.body)["query"]
        return Reply(
            body=orjson.dumps(
                {
                    "ranking": [{"index": 0, "relevanceScore": 0.5}],
                    "warnings": [{"type": kind, "message": "m"}, {"type": kind}],
                }
            )
        )

    def logged() -> list[str]:
        return [r.getMessage() for r in caplog.records]

    caplog.set_level(logging.WARNING, logger="rerank.server._gateway")
    for _ in range(2):  # each adapter instance keeps its own record of what it logged
        caplog.clear()
        async with gateway(handler) as (reranker, _server):
            for kind in ("shiny", "shiny", "sparkly", "shiny"):
                query = RerankQuery(model=SEED.model, query=kind, kind="text", documents=("a",))
                outcome = await reranker.rerank(query, timeout=5)
                assert [w.type for w in outcome.warnings] == ["other", "other"]
        assert len(logged()) == 2
        assert "'shiny'" in logged()[0]
        assert "'sparkly'" in logged()[1]


async def test_logging_of_undefined_warning_types_is_bounded(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def handler(request: Request) -> Reply:
        kinds = [f"type-{i}" for i in range(MAX_LOGGED_WARNING_TYPES + 5)]
        warnings = [{"type": kind} for kind in kinds]
        return Reply(body=orjson.dumps({"ranking": [], "warnings": warnings}))

    caplog.set_level(logging.WARNING, logger="rerank.server._gateway")
    async with gateway(handler) as (reranker, _server):
        outcome = await reranker.rerank(SEED, timeout=5)
    assert len(outcome.warnings) == MAX_LOGGED_WARNING_TYPES + 5  # every one passed on
    assert len(caplog.records) == MAX_LOGGED_WARNING_TYPES


def envelope(type_: str | None, message: str = "msg", generation_id: str | None = None) -> bytes:
    error: dict[str, Any] = {"message": message, "param": None, "code": None}
    if type_ is not None:
        error["type"] = type_
    data: dict[str, Any] = {"error": error}
    if generation_id:
        data["generationId"] = generation_id
    return orjson.dumps(data)


@pytest.mark.parametrize("protocol", list(GatewayProtocol), ids=lambda p: p.value)
@pytest.mark.parametrize(
    ("status", "type_", "expected"),
    [
        (401, "authentication_error", errors.UpstreamAuthentication),
        (400, "invalid_request_error", errors.UpstreamInvalidRequest),
        (403, "forbidden", errors.UpstreamForbidden),
        (404, "model_not_found", errors.ModelNotFound),
        (424, "failed_dependency", errors.UpstreamFailedDependency),
        (429, "rate_limit_exceeded", errors.UpstreamRateLimited),
        (500, "internal_server_error", errors.UpstreamUnavailable),
        (503, "something_new", errors.UpstreamUnavailable),
        (500, None, errors.UpstreamUnavailable),
        (409, None, errors.UpstreamUnavailable),
        (429, None, errors.UpstreamRateLimited),
        (418, "something_new", errors.UpstreamError),
    ],
)
def test_every_error_type_maps_to_its_class(
    status: int,
    type_: str | None,
    expected: type[errors.UpstreamError],
    protocol: GatewayProtocol,
) -> None:
    error = error_from_response(status, {}, envelope(type_, generation_id="gen_01ABC"), protocol)
    assert type(error) is expected
    assert error.status == status
    assert error.generation_id == "gen_01ABC"


@pytest.mark.parametrize(
    ("protocol", "expected"),
    [
        (GatewayProtocol.V4, errors.UpstreamNotFound),
        # v3 does not define the type: an unknown type on a 404, judged by status
        (GatewayProtocol.V3, errors.UpstreamError),
    ],
)
def test_not_found_is_its_own_error_in_v4(
    protocol: GatewayProtocol, expected: type[errors.UpstreamError]
) -> None:
    error = error_from_response(404, {}, envelope("not_found", "team missing"), protocol)
    assert type(error) is expected
    assert error.message == "team missing"


async def test_not_found_over_the_wire() -> None:
    async def handler(request: Request) -> Reply:
        return Reply(404, envelope("not_found", "no such team", "gen_9"))

    async with gateway(handler, team="ghost") as (reranker, _server):
        with pytest.raises(errors.UpstreamNotFound) as caught:
            await reranker.rerank(SEED, timeout=5)
    assert (caught.value.status, caught.value.reason) == (404, "UPSTREAM_NOT_FOUND")
    assert caught.value.message == "no such team [gen_9]"


def test_the_generation_id_is_appended_like_the_sdk_does() -> None:
    error = error_from_response(400, {}, envelope("invalid_request_error", "bad query", "gen_1"))
    assert error.message == "bad query [gen_1]"


def test_an_authentication_failure_never_echoes_the_gateway_text() -> None:
    error = error_from_response(401, {}, envelope("authentication_error", "key sk-123 invalid"))
    assert "sk-123" not in error.message
    assert "AI_GATEWAY_API_KEY" in error.message


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (502, errors.UpstreamUnavailable),
        (429, errors.UpstreamRateLimited),
        (408, errors.UpstreamUnavailable),
        (404, errors.UpstreamProtocolError),
        (400, errors.UpstreamProtocolError),
    ],
)
def test_a_body_outside_the_envelope_is_judged_by_status(
    status: int, expected: type[errors.UpstreamError]
) -> None:
    assert type(error_from_response(status, {}, b"<html>Bad Gateway</html>")) is expected


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"retry-after-ms": "1500", "retry-after": "9"}, 1.5),
        ({"retry-after": "3"}, 3.0),
        ({"retry-after": "61"}, None),
        ({"retry-after-ms": "-5"}, None),
        ({"retry-after": "soon"}, None),
        ({"retry-after-ms": "nan"}, None),
        ({}, None),
    ],
)
def test_retry_after(headers: dict[str, str], expected: float | None) -> None:
    assert parse_retry_after(headers) == expected


def test_retry_after_as_an_http_date() -> None:
    date = email.utils.formatdate(1_000_010, usegmt=True)
    assert parse_retry_after({"retry-after": date}, now=1_000_000) == pytest.approx(10)


async def test_rate_limit_carries_the_retry_delay() -> None:
    async def handler(request: Request) -> Reply:
        return Reply(429, envelope("rate_limit_exceeded"), {"retry-after-ms": "250"})

    async with gateway(handler) as (reranker, _):
        with pytest.raises(errors.UpstreamRateLimited) as caught:
            await reranker.rerank(SEED, timeout=5)
    assert caught.value.retry_after == 0.25


@pytest.mark.parametrize("how", [Fail.CLOSE, Fail.RESET, Fail.CUT])
async def test_broken_connections_are_unavailable(how: str) -> None:
    async def handler(request: Request) -> str:
        return how

    async with gateway(handler) as (reranker, _):
        with pytest.raises(errors.UpstreamUnavailable):
            await reranker.list_models(timeout=5)


async def test_a_refused_connection_is_unavailable() -> None:
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))  # bound, never listening: connecting is refused
        port = closed.getsockname()[1]
        reranker = GatewayReranker(base_url=f"http://127.0.0.1:{port}/v3/ai", api_key="k")
        with pytest.raises(errors.UpstreamUnavailable):
            await reranker.list_models(timeout=5)
        await reranker.aclose()


async def test_a_silent_gateway_times_out_and_is_hung_up_on() -> None:
    async def handler(request: Request) -> str:
        return Fail.HANG

    async with gateway(handler) as (reranker, server):
        with pytest.raises(errors.UpstreamTimeout):
            await reranker.list_models(timeout=0.3)
        await asyncio.wait_for(server.client_went_away.wait(), 5)


async def test_no_time_left_means_no_call() -> None:
    async with gateway(answer({"models": []})) as (reranker, server):
        with pytest.raises(errors.UpstreamTimeout):
            await reranker.list_models(timeout=0)
    assert server.requests == []


async def test_an_oversized_answer_is_refused() -> None:
    async def handler(request: Request) -> Reply:
        return Reply(200, b" " * (MAX_RESPONSE_BYTES + 1))

    async with gateway(handler) as (reranker, _):
        with pytest.raises(errors.UpstreamProtocolError, match="exceeds"):
            await reranker.list_models(timeout=5)


async def test_keep_alive_connections_are_reused() -> None:
    async with gateway(answer({"models": []})) as (reranker, server):
        for _ in range(5):
            await reranker.list_models(timeout=5)
    assert len(server.requests) == 5
    assert server.connections == 1


async def test_the_bearer_token_follows_the_token_file(tmp_path: Path) -> None:
    """Seen by a real HTTP server: after the platform rotates the token file, the next requests
    carry the new token, on the same pooled connection, with auth method `oidc`."""
    token_file = tmp_path / "oidc-token"
    token_file.write_text("first-token\n")
    clock = FakeClock(1_900_000_000.0)
    credential = OidcTokenFile(str(token_file), check_interval=5, clock=clock)
    ranking = {"ranking": [{"index": 0, "relevanceScore": 0.5}]}
    async with ScriptedServer(answer(ranking)) as server:
        reranker = GatewayReranker(base_url=server.url, credential=credential)
        query = RerankQuery(model="cohere/rerank-v3.5", query="q", kind="text", documents=("d",))
        try:
            await reranker.rerank(query, timeout=5)
            rotated = tmp_path / "oidc-token.new"
            rotated.write_text("second-token\n")
            os.replace(rotated, token_file)
            await reranker.rerank(query, timeout=5)  # within the check interval: not looked at
            clock.advance(5)
            await reranker.rerank(query, timeout=5)
            with contextlib.suppress(errors.UpstreamProtocolError):
                await reranker.list_models(timeout=5)  # GET /config carries it too
        finally:
            await reranker.aclose()
    assert [r.headers["authorization"] for r in server.requests] == [
        "Bearer first-token",
        "Bearer first-token",
        "Bearer second-token",
        "Bearer second-token",
    ]
    assert {r.headers["ai-gateway-auth-method"] for r in server.requests} == {"oidc"}
    assert server.connections == 1


async def test_a_fixed_api_key_is_still_taken_as_before() -> None:
    async with gateway(answer({"ranking": []})) as (reranker, server):
        query = RerankQuery(model="cohere/rerank-v3.5", query="q", kind="text", documents=("d",))
        await reranker.rerank(query, timeout=5)
    (request,) = server.requests
    assert request.headers["authorization"] == "Bearer test-key-123"
    assert request.headers["ai-gateway-auth-method"] == "api-key"
