"""`MockScript`, the mock gateway's scripting hook, in process through `httpx.ASGITransport`.

A scripted fault must be answered exactly as the same fault sent in
`providerOptions.mockGateway` (it is rendered by the same code); scripted scores replace the
lexical ones for the named documents only; nothing is shared between two apps.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import orjson
import pytest

from rerank.mock_gateway import MockGateway, create_app, score
from tests.conftest import SEED_DOCUMENTS, SEED_MODEL, SEED_QUERY

BASE_URL = "http://mock/v3/ai"
MODEL = SEED_MODEL
QUERY = SEED_QUERY
CAPITALS = list(SEED_DOCUMENTS)
HEADERS = {
    "authorization": "Bearer test-key",
    "ai-gateway-protocol-version": "0.0.1",
    "ai-reranking-model-specification-version": "3",
    "ai-model-id": MODEL,
    "content-type": "application/json",
}


def body(options: dict[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
    data: dict[str, Any] = {"documents": {"type": "text", "values": CAPITALS}, "query": QUERY}
    if options is not None:
        data["providerOptions"] = options
    return {**data, **extra}


@pytest.fixture
def app() -> MockGateway:
    return create_app()


@pytest.fixture
async def http(app: MockGateway) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url=BASE_URL
    ) as client:
        yield client


async def rerank(http: httpx.AsyncClient, data: dict[str, Any]) -> httpx.Response:
    return await http.post("/reranking-model", headers=HEADERS, content=orjson.dumps(data))


def without_generation_id(response: httpx.Response) -> Any:
    try:
        data = response.json()
    except ValueError:
        return response.content
    if isinstance(data, dict):
        data.pop("generationId", None)
    return data


@pytest.mark.parametrize(
    ("fault", "params"),
    [
        ("rate_limit", {"retryAfterMs": 1500}),
        ("error", {"status": 403, "type": "forbidden", "message": "no"}),
        ("error", {"status": 503}),
        ("status_only", {}),
        ("malformed", {"variant": "index_out_of_range"}),
        ("malformed", {"variant": "unsorted"}),
        ("malformed", {"variant": "not_json"}),
        ("warning", {"type": "other", "message": "m"}),
    ],
)
async def test_a_scripted_fault_is_answered_as_the_same_fault_in_the_request(
    app: MockGateway, http: httpx.AsyncClient, fault: str, params: dict[str, Any]
) -> None:
    by_request = await rerank(http, body({"mockGateway": {"fault": fault, **params}}))
    app.script.fail_next(fault, **params)
    scripted = await rerank(http, body())
    assert scripted.status_code == by_request.status_code
    headers = ("content-type", "retry-after", "retry-after-ms")
    assert [scripted.headers.get(h) for h in headers] == [
        by_request.headers.get(h) for h in headers
    ]
    # The generation id is derived from the request, whose body differs by the fault option.
    assert without_generation_id(scripted) == without_generation_id(by_request)
    assert (await rerank(http, body())).status_code == 200


async def test_times_counts_calls_and_faults_queue_in_order(
    app: MockGateway, http: httpx.AsyncClient
) -> None:
    app.script.fail_next("error", status=500, times=2)
    app.script.fail_next("rate_limit")
    assert app.script.pending_faults == 3
    statuses = [(await rerank(http, body())).status_code for _ in range(4)]
    assert statuses == [500, 500, 429, 200]
    assert app.script.pending_faults == 0


async def test_a_requests_own_fault_wins_and_leaves_the_script(
    app: MockGateway, http: httpx.AsyncClient
) -> None:
    app.script.fail_next("rate_limit")
    own = await rerank(http, body({"mockGateway": {"fault": "error", "status": 418}}))
    assert own.status_code == 418
    assert app.script.pending_faults == 1
    assert (await rerank(http, body())).status_code == 429


async def test_only_valid_calls_consume_the_script(
    app: MockGateway, http: httpx.AsyncClient
) -> None:
    app.script.fail_next("rate_limit")
    assert (await rerank(http, body(query=7))).status_code == 400
    assert (await http.get("/config", headers=HEADERS)).status_code == 200
    assert app.script.pending_faults == 1


async def test_a_scripted_v4_only_fault_is_refused_by_the_v3_call_it_reaches(
    app: MockGateway, http: httpx.AsyncClient
) -> None:
    # The script cannot know the version of the next call: the call's own version decides.
    v4_headers = {**HEADERS, "ai-reranking-model-specification-version": "4"}
    app.script.fail_next("warning", type="deprecated", times=2)
    v3 = await rerank(http, body())
    v4 = await http.post(
        "http://mock/v4/ai/reranking-model", headers=v4_headers, content=orjson.dumps(body())
    )

    assert v3.status_code == 400
    assert v3.json()["error"]["param"] == "providerOptions.mockGateway.type"
    assert v4.status_code == 200
    assert v4.json()["warnings"] == [
        {"type": "deprecated", "setting": "mockGateway", "message": "Injected deprecation warning."}
    ]
    assert app.script.pending_faults == 0


async def test_fixed_scores_replace_only_the_named_documents(
    app: MockGateway, http: httpx.AsyncClient
) -> None:
    app.script.set_scores({CAPITALS[2]: 0.99})
    app.script.set_scores({CAPITALS[1]: 0.99, "not sent": 0.5})
    ranking = (await rerank(http, body(topN=3))).json()["ranking"]
    assert ranking == [
        {"index": 1, "relevanceScore": 0.99},  # a tie: ascending index
        {"index": 2, "relevanceScore": 0.99},
        {"index": 0, "relevanceScore": score(MODEL, QUERY, CAPITALS[0])},
    ]
    app.script.reset()
    assert (await rerank(http, body())).json()["ranking"][0]["index"] == 0


async def test_reset_forgets_faults_and_scores(app: MockGateway, http: httpx.AsyncClient) -> None:
    app.script.fail_next("rate_limit", times=3)
    app.script.set_scores({CAPITALS[2]: 1.0})
    app.script.reset()
    response = await rerank(http, body())
    assert response.status_code == 200
    assert response.json()["ranking"][0]["index"] == 0


def test_two_apps_never_share_a_script() -> None:
    one, other = create_app(), create_app()
    one.script.fail_next("rate_limit")
    assert (one.script.pending_faults, other.script.pending_faults) == (1, 0)


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda s: s.fail_next("rate_limt"), "must be one of"),
        (lambda s: s.fail_next("rate_limit", retryAfterMs=-1), "retryAfterMs"),
        (lambda s: s.fail_next("malformed"), "variant"),
        (lambda s: s.fail_next("warning"), "type"),
        (lambda s: s.fail_next("warning", type="other", setting="x"), "setting"),
        (lambda s: s.fail_next("error", key="k"), "key"),
        (lambda s: s.fail_next("error", times=0), "times"),
        (lambda s: s.set_scores({"a": float("nan")}), "finite"),
        (lambda s: s.set_scores({"a": "high"}), "number"),
        (lambda s: s.set_scores({1: 0.5}), "text"),
    ],
)
def test_mistakes_are_refused_at_once(call: Any, match: str) -> None:
    app = create_app()
    with pytest.raises(ValueError, match=match):
        call(app.script)
    assert app.script.pending_faults == 0
