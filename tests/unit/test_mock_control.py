"""The mock's control API in process (``httpx.ASGITransport``): off by default, then each route.

The same routes over a real socket, from a real process, are in tests/contract/test_mock_wire.py.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import orjson
import pytest

from rerank.mock_gateway import MockGateway, MockSettings, create_app
from tests.conftest import SEED_DOCUMENTS, SEED_MODEL, SEED_QUERY

V4_HEADERS = {
    "authorization": "Bearer k",
    "ai-gateway-protocol-version": "0.0.1",
    "ai-reranking-model-specification-version": "4",
    "ai-model-id": SEED_MODEL,
    "content-type": "application/json",
}
BODY = orjson.dumps(
    {"documents": {"type": "text", "values": list(SEED_DOCUMENTS)}, "query": SEED_QUERY}
)


def client_for(app: MockGateway) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://mock")


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with client_for(create_app(MockSettings(control=True))) as c:
        yield c


async def control(
    client: httpx.AsyncClient, action: str, body: Any = None, *, token: str | None = "k"
) -> httpx.Response:
    headers = {} if token is None else {"authorization": f"Bearer {token}"}
    content = b"" if body is None else orjson.dumps(body)
    return await client.post(f"/_control/{action}", content=content, headers=headers)


async def rerank_v4(client: httpx.AsyncClient) -> httpx.Response:
    return await client.post("/v4/ai/reranking-model", content=BODY, headers=V4_HEADERS)


@pytest.mark.parametrize("action", ["fail_next", "set_scores", "reset"])
async def test_the_control_api_is_off_by_default(action: str) -> None:
    async with client_for(create_app()) as off:
        response = await control(off, action, {"fault": "rate_limit"})
        after = await rerank_v4(off)

    assert response.status_code == 404
    assert response.json()["error"]["param"] == "path"
    assert after.status_code == 200  # nothing was scripted


async def test_fail_next_scripts_the_next_calls_of_either_version(
    client: httpx.AsyncClient,
) -> None:
    scripted = await control(client, "fail_next", {"fault": "rate_limit", "retryAfterMs": 1500})
    queued = await control(client, "fail_next", {"fault": "error", "status": 503, "times": 2})
    first = await rerank_v4(client)
    v3_headers = {**V4_HEADERS, "ai-reranking-model-specification-version": "3"}
    second = await client.post("/v3/ai/reranking-model", content=BODY, headers=v3_headers)
    third = await rerank_v4(client)
    fourth = await rerank_v4(client)

    assert (scripted.status_code, scripted.json()) == (200, {"pendingFaults": 1})
    assert queued.json() == {"pendingFaults": 3}
    assert (first.status_code, first.headers["retry-after-ms"]) == (429, "1500")
    assert [second.status_code, third.status_code, fourth.status_code] == [503, 503, 200]


async def test_set_scores_and_reset(client: httpx.AsyncClient) -> None:
    scores = {SEED_DOCUMENTS[2]: 0.99, SEED_DOCUMENTS[0]: 0.01}
    set_ = await control(client, "set_scores", {"scores": scores})
    fixed = (await rerank_v4(client)).json()["ranking"]
    await control(client, "fail_next", {"fault": "rate_limit", "times": 5})
    reset = await control(client, "reset")
    after = await rerank_v4(client)

    assert (set_.status_code, set_.json()) == (200, {"pendingFaults": 0})
    assert [item["index"] for item in fixed] == [2, 1, 0]
    assert fixed[0]["relevanceScore"] == 0.99
    assert (reset.status_code, reset.json()) == (200, {"pendingFaults": 0})
    assert after.status_code == 200
    assert after.json()["ranking"][0]["index"] == 0  # lexical scores again


@pytest.mark.parametrize(
    ("action", "body", "param", "words"),
    [
        ("fail_next", {}, "fault", "name of a fault"),
        ("fail_next", {"fault": "rate_limt"}, None, "must be one of"),
        ("fail_next", {"fault": "rate_limit", "retryAfterMs": "soon"}, None, "retryAfterMs"),
        ("fail_next", {"fault": "rate_limit", "key": "k"}, None, "key"),
        ("fail_next", {"fault": "rate_limit", "times": 0}, None, "times"),
        ("fail_next", {"fault": "malformed"}, None, "variant"),
        ("fail_next", {"fault": "rate_limit", "self": 1}, None, "self is not a parameter"),
        ("fail_next", [1], None, "JSON object"),
        ("set_scores", {"scores": [1]}, "scores", "object"),
        ("set_scores", {"scores": {"a": "high"}}, "scores", "number"),
        ("set_scores", {}, "scores", "object"),
    ],
)
async def test_mistakes_are_400_naming_what_was_wrong(
    client: httpx.AsyncClient, action: str, body: Any, param: str | None, words: str
) -> None:
    response = await control(client, action, body)

    assert response.status_code == 400
    error = response.json()["error"]
    assert (error["type"], error["param"]) == ("invalid_request_error", param)
    assert words in error["message"]
    assert (await rerank_v4(client)).status_code == 200  # nothing was scripted


async def test_a_body_that_is_not_json_is_refused(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/_control/fail_next", content=b"{nope", headers={"authorization": "Bearer k"}
    )

    assert response.status_code == 400
    assert "not valid JSON" in response.json()["error"]["message"]


async def test_the_bearer_token_is_checked_as_on_the_gateway_paths() -> None:
    app = create_app(MockSettings(api_key="s3cret", control=True))
    async with client_for(app) as locked:
        missing = await control(locked, "reset", token=None)
        wrong = await control(locked, "fail_next", {"fault": "rate_limit"}, token="nope")
        right = await control(locked, "fail_next", {"fault": "rate_limit"}, token="s3cret")

    assert [missing.status_code, wrong.status_code] == [401, 401]
    assert missing.json()["error"]["type"] == "authentication_error"
    assert right.status_code == 200
    assert app.script.pending_faults == 1  # only the authorised call scripted anything


async def test_control_routes_take_post_only(client: httpx.AsyncClient) -> None:
    response = await client.get("/_control/reset", headers={"authorization": "Bearer k"})

    assert response.status_code == 405
    assert response.headers["allow"] == "POST"
