"""The AI SDK's own gateway provider against our server's HTTP port, as the gateway.

`createGateway({baseURL: 'http://127.0.0.1:PORT/v4/ai', apiKey})` with `ai` 7 + gateway 4, and
`/v3/ai` with `ai` 6 + gateway 3: the server answers as the AI Gateway would, through its own
pipeline (named callers, limits, windows), in front of the bundled mock gateway. Each case is a
Node process (rerank.mjs, models.mjs) judged by the SDK's own error classes and result; the
server runs in the test's event loop, which the Node process leaves free.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest

from rerank.mock_gateway import RERANKING_MODEL_IDS, LoopbackMockGateway, MockSettings
from rerank.server._app import RunningServer
from rerank.server._config import Settings, Upstream
from rerank.v1 import rerank_service_pb2 as pb
from rerank.v1 import rerank_service_pb2_grpc as pb_grpc
from tests.conftest import SEED_DOCUMENTS, SEED_MODEL, SEED_QUERY
from tests.sdk.conftest import (
    AI_7,
    GENERATIONS,
    TEST_SECONDS,
    Generation,
    Run,
    arun_script,
    assert_rate_limited_to_the_end,
)
from tests.service.conftest import StartServer
from tests.service.conftest import servers as servers  # the service tests' fixture, shared

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.usefixtures("sdk_scripts"),
    pytest.mark.timeout(TEST_SECONDS),
]

APP, SLOW, NARROW = "app-token-5d1e", "slow-token-93b0", "narrow-token-0c7a"
CALLERS = f"""
[callers.app]
token = "{APP}"

[callers.slow]
token = "{SLOW}"
requests_per_second = 0.01   # after its one call, refused for 100 s
burst = 1

[callers.narrow]
token = "{NARROW}"
models = ["cohere/*"]
"""
#: What the mock bills every gateway call: a windowed call's cost says how many calls it made.
CALL_COST = Decimal("0.001")

Door = Callable[..., Awaitable[RunningServer]]


@pytest.fixture
async def door(servers: StartServer, tmp_path: Path) -> AsyncIterator[Door]:
    """Start the mock gateway, and a server with an HTTP port and the callers above in front
    of it (`origin` names its HTTP port)."""
    mock = LoopbackMockGateway(MockSettings(cost_usd=CALL_COST))

    async def start(**overrides: Any) -> RunningServer:
        await mock.start()
        callers = tmp_path / "callers.toml"
        callers.write_text(CALLERS)
        settings = Settings(
            port=0,
            http_port=0,
            grace_period=1,
            upstream=Upstream.GATEWAY,
            gateway_url=mock.v4_url,
            api_key="mock-key",
            callers_file=str(callers),
            **overrides,
        )
        return await servers(settings)

    yield start
    await mock.stop()


async def rerank(generation: Generation, at: str, *args: str, token: str = APP) -> Run:
    base = generation.base_url(at)
    return await arun_script(
        "rerank.mjs", generation, "--base-url", base, "--api-key", token, *args
    )


async def grpc_ranking(port: int, documents: list[str], top_n: int) -> list[tuple[int, float]]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        answer = await pb_grpc.RerankServiceStub(channel).Rerank(
            pb.RerankRequest(
                model=SEED_MODEL,
                query=SEED_QUERY,
                documents=[pb.Document(text=text) for text in documents],
                top_n=top_n,
                bypass_cache=True,
            ),
            metadata=(("authorization", f"Bearer {APP}"),),
            timeout=10,
        )
    return [(ranked.original_index, ranked.score) for ranked in answer.ranking]


def origin(running: RunningServer) -> str:
    assert running.http is not None
    return f"http://127.0.0.1:{running.http.port}"


@pytest.mark.parametrize("generation", GENERATIONS)
async def test_the_seed_example(door: Door, generation: Generation) -> None:
    """rerank.mjs without options is the seed example: the SDK's ranking is the one gRPC
    gives for the same request, and the cost is the one gateway call's."""
    running = await door()
    result = (await rerank(generation, origin(running))).ok()

    by_grpc = await grpc_ranking(running.port, list(SEED_DOCUMENTS), 2)
    assert [(item["originalIndex"], item["score"]) for item in result["ranking"]] == by_grpc
    assert result["ranking"][0]["document"] == SEED_DOCUMENTS[0]
    assert len(result["ranking"]) == 2
    assert result["modelId"] == SEED_MODEL
    assert result["warnings"] == []
    assert result["providerMetadata"]["gateway"] == {"cost": str(CALL_COST)}
    scores = [item["score"] for item in result["ranking"]]
    assert scores == sorted(scores, reverse=True)


@pytest.mark.parametrize("generation", GENERATIONS)
async def test_a_wrong_key_is_gateway_authentication(door: Door, generation: Generation) -> None:
    running = await door()
    error = (await rerank(generation, origin(running), token="not-" + APP)).error

    assert error["class"] == "GatewayAuthenticationError"
    assert error["statusCode"] == 401
    assert error["isRetryable"] is False


@pytest.mark.parametrize("generation", GENERATIONS)
async def test_an_unknown_model_is_gateway_model_not_found(
    door: Door, generation: Generation
) -> None:
    running = await door()
    error = (await rerank(generation, origin(running), "--model", "cohere/rerank-v0")).error

    assert error["class"] == "GatewayModelNotFoundError"
    assert error["statusCode"] == 404
    assert error["modelId"] == "cohere/rerank-v0"
    assert error["isRetryable"] is False


@pytest.mark.parametrize("generation", GENERATIONS)
async def test_a_caller_over_its_rate_is_retried_then_a_retry_error(
    door: Door, generation: Generation
) -> None:
    """The caller's one token is spent; each later attempt is 429 `rate_limit_exceeded` with a
    retry-after beyond the SDK's 60 s, so the SDK waits its own 2 s and 4 s, then throws."""
    running = await door()
    assert (await rerank(generation, origin(running), token=SLOW)).returncode == 0
    error = (await rerank(generation, origin(running), "--query", "again", token=SLOW)).error

    assert_rate_limited_to_the_end(error)


@pytest.mark.parametrize("generation", GENERATIONS)
async def test_get_available_models_lists_the_models_the_caller_may_use(
    door: Door, generation: Generation
) -> None:
    running = await door()
    listed = {}
    for token in (APP, NARROW):
        run = await arun_script(
            "models.mjs",
            generation,
            "--base-url",
            generation.base_url(origin(running)),
            "--api-key",
            token,
        )
        listed[token] = run.ok()["models"]

    assert sorted(m["id"] for m in listed[APP]) == sorted(RERANKING_MODEL_IDS)
    assert sorted(m["id"] for m in listed[NARROW]) == sorted(
        model for model in RERANKING_MODEL_IDS if model.startswith("cohere/")
    )
    for models in listed.values():
        assert {m["modelType"] for m in models} == {"reranking"}
        assert {m["specificationVersion"] for m in models} == {generation.protocol}


@pytest.mark.parametrize("generation", GENERATIONS)
async def test_2500_documents_are_three_gateway_calls_and_one_ranking(
    door: Door, generation: Generation
) -> None:
    """Windows of 1,000, 1,000 and 500 documents upstream: three calls billed, their costs
    summed in `gateway.cost`; the SDK gets one ranking of all 2,500."""
    running = await door()
    documents = [f"passage {i} on growing tomatoes" for i in range(2500)]
    documents[1234] = SEED_DOCUMENTS[0]
    args = ("--documents", json.dumps(documents), "--top-n", "3")
    result = (await rerank(generation, origin(running), *args)).ok()

    assert len(result["ranking"]) == 3
    assert result["ranking"][0]["originalIndex"] == 1234
    assert result["providerMetadata"]["gateway"] == {"cost": str(3 * CALL_COST)}
    assert result["providerMetadata"]["mock"]["documents"] == 1000  # the first window's


async def test_the_sdks_team_reaches_the_gateway(door: Door) -> None:
    """v4 only: createGateway({teamIdOrSlug}) sends x-vercel-ai-gateway-team, and the server
    passes it on to the gateway in place of its own team (the mock echoes the team it got)."""
    running = await door(gateway_team="server-team")
    result = (await rerank(AI_7, origin(running), "--team", "team_abc123")).ok()

    assert len(result["ranking"]) == 2
    assert result["providerMetadata"]["mock"]["team"] == "team_abc123"


async def test_the_callers_team_is_passed_on_and_keys_the_cache(door: Door) -> None:
    """Over raw HTTP: without the header the gateway hears the server's team; with it, the
    caller's. An answer billed to one team is not another team's cache hit; the same team's
    is. A team that cannot be a header is refused, naming the header."""
    running = await door(gateway_team="server-team")
    headers = {
        "ai-gateway-protocol-version": "0.0.1",
        "ai-model-id": SEED_MODEL,
        "ai-reranking-model-specification-version": "4",
        "authorization": f"Bearer {APP}",
        "content-type": "application/json",
    }
    body = json.dumps(
        {"documents": {"type": "text", "values": list(SEED_DOCUMENTS)}, "query": SEED_QUERY}
    )

    async with httpx.AsyncClient(base_url=origin(running) + "/v4/ai", timeout=10) as client:

        async def call(team: str | None) -> dict[str, Any]:
            sent = headers if team is None else {**headers, "x-vercel-ai-gateway-team": team}
            answer = await client.post("/reranking-model", headers=sent, content=body)
            assert answer.status_code == 200, answer.text
            data: dict[str, Any] = answer.json()
            return data

        served = await call(None)
        team_a = await call("team-a")
        team_b = await call("team-b")
        team_a_again = await call("team-a")
        refused = await client.post(
            "/reranking-model",
            headers={**headers, "x-vercel-ai-gateway-team": "team a"},
            content=body,
        )

    assert served["providerMetadata"]["mock"]["team"] == "server-team"
    assert team_a["providerMetadata"]["mock"]["team"] == "team-a"
    assert team_b["providerMetadata"]["mock"]["team"] == "team-b"
    for billed in (served, team_a, team_b):
        assert billed["providerMetadata"]["gateway"] == {"cost": str(CALL_COST)}
    assert team_a_again["ranking"] == team_a["ranking"]
    assert team_a_again["providerMetadata"]["gateway"] == {"cost": "0"}  # a hit, not billed
    assert refused.status_code == 400
    error = refused.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert error["param"] == "x-vercel-ai-gateway-team"


async def test_the_paths_version_and_method_are_enforced_in_the_envelope(door: Door) -> None:
    """A request as gateway 4.0.146 sends it is answered with the keys in the gateway's order;
    sent under the other version's header, or with GET, it is refused in the gateway's
    envelope, naming the header and where that version is served."""
    running = await door()
    headers = {
        "ai-gateway-auth-method": "api-key",
        "ai-gateway-protocol-version": "0.0.1",
        "ai-model-id": SEED_MODEL,
        "ai-reranking-model-specification-version": "4",
        "authorization": f"Bearer {APP}",
        "content-type": "application/json",
        "user-agent": "ai-sdk-gateway/4.0.146 ai-sdk-provider-utils/5.0.81 node.js/v20.20.2",
    }
    body = json.dumps(
        {
            "documents": {"type": "text", "values": list(SEED_DOCUMENTS)},
            "query": SEED_QUERY,
            "topN": 2,
        },
        separators=(",", ":"),
    )
    async with httpx.AsyncClient(base_url=origin(running) + "/v4/ai", timeout=10) as client:
        answer = await client.post("/reranking-model", headers=headers, content=body)
        assert answer.status_code == 200, answer.text
        assert answer.headers["content-type"] == "application/json"
        assert list(answer.json()) == ["ranking", "providerMetadata"]
        assert [item["index"] for item in answer.json()["ranking"]] == [0, 1]

        wrong = {**headers, "ai-reranking-model-specification-version": "3"}
        refused = await client.post("/reranking-model", headers=wrong, content=body)
        assert refused.status_code == 400
        error = refused.json()["error"]
        assert error["type"] == "invalid_request_error"
        assert error["param"] == "ai-reranking-model-specification-version"
        assert "/v3/ai" in error["message"]

        not_get = await client.get("/reranking-model", headers=headers)
        assert not_get.status_code == 405
        assert not_get.json()["error"]["type"] == "invalid_request_error"


WIRE = Path(__file__).resolve().parent.parent / "wire"
CAPTURED = [
    pytest.param(request, id=f"{path.stem}: {request['name']}")
    for path in sorted(WIRE.glob("ai-sdk-v*-requests.json"))
    for request in json.loads(path.read_text())["requests"]
]


@pytest.mark.parametrize("captured", CAPTURED)
async def test_every_request_the_sdks_send_is_answered(
    door: Door, captured: dict[str, Any]
) -> None:
    """Each request exactly as an SDK sent it (tests/wire: headers and body bytes, the bearer
    token ours) is answered 200 in the protocol's shape."""
    running = await door()
    headers = {**captured["headers"], "authorization": f"Bearer {APP}"}
    async with httpx.AsyncClient(base_url=origin(running), timeout=10) as client:
        answer = await client.request(
            captured["method"], captured["path"], headers=headers, content=captured["body"]
        )
    assert answer.status_code == 200, answer.text
    data = answer.json()
    if captured["method"] == "GET":
        version = captured["path"].split("/")[1]
        assert sorted(m["id"] for m in data["models"]) == sorted(RERANKING_MODEL_IDS)
        assert {m["specification"]["specificationVersion"] for m in data["models"]} == {version}
        return
    body = json.loads(captured["body"])
    sent = len(body["documents"]["values"])
    assert len(data["ranking"]) == min(sent, body.get("topN", sent))
    assert {item["index"] for item in data["ranking"]} <= set(range(sent))
    scores = [item["relevanceScore"] for item in data["ranking"]]
    assert scores == sorted(scores, reverse=True)
    assert data["providerMetadata"]["gateway"] == {"cost": str(CALL_COST)}
