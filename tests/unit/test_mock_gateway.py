"""The mock gateway in process, through ``httpx.ASGITransport``: protocol, catalogue, faults."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any

import httpx
import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from rerank.mock_gateway import (
    DEFAULT_PROTOCOL,
    MALFORMED_VARIANTS,
    PROTOCOL_V3,
    PROTOCOL_V4,
    PROTOCOL_VERSIONS,
    RERANKING_MODEL_IDS,
    ConnectionDropped,
    LoopbackMockGateway,
    MockGateway,
    MockSettings,
    ProtocolVersion,
    create_app,
    score,
)
from tests.conftest import SEED_DOCUMENTS, SEED_MODEL, SEED_QUERY

BASE_URL = "http://mock/v3/ai"
MODEL = SEED_MODEL
QUERY = SEED_QUERY
CAPITALS = list(SEED_DOCUMENTS)
HEADERS = {
    "authorization": "Bearer test-key-123",
    "ai-gateway-protocol-version": "0.0.1",
    "ai-gateway-auth-method": "api-key",
    "ai-reranking-model-specification-version": "3",
    "ai-model-id": MODEL,
    "content-type": "application/json",
}


def rerank_body(
    values: list[Any] | None = None,
    *,
    query: str = QUERY,
    top_n: int | None = None,
    kind: str = "text",
    options: dict[str, Any] | None = None,
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "documents": {"type": kind, "values": CAPITALS if values is None else values},
        "query": query,
    }
    if top_n is not None:
        body["topN"] = top_n
    if options is not None:
        body["providerOptions"] = options
    return body


def fault(name: str, **params: Any) -> dict[str, Any]:
    return {"mockGateway": {"fault": name, **params}}


def client_for(app: MockGateway) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=BASE_URL)


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with client_for(create_app()) as c:
        yield c


async def rerank(
    client: httpx.AsyncClient,
    body: dict[str, Any] | bytes,
    *,
    headers: dict[str, str] | None = None,
    drop: tuple[str, ...] = (),
) -> httpx.Response:
    sent = {k: v for k, v in {**HEADERS, **(headers or {})}.items() if k not in drop}
    content = body if isinstance(body, bytes) else orjson.dumps(body)
    return await client.post("/reranking-model", content=content, headers=sent)


def assert_envelope(
    response: httpx.Response, status: int, type_: str | None, *, param: Any = None
) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    payload = response.json()
    assert list(payload) == ["error", "generationId"]
    assert payload["generationId"].startswith("gen_")
    error: dict[str, Any] = payload["error"]
    assert list(error) == ["message", "type", "param", "code"]
    assert isinstance(error["message"], str)
    assert error["message"]
    assert error["type"] == type_
    assert error["param"] == param
    return error


# --- the seed example and the success body -------------------------------------------------


async def test_seed_example_ranks_paris_first(client: httpx.AsyncClient) -> None:
    response = await rerank(client, rerank_body(top_n=2))

    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    payload = response.json()
    assert list(payload) == ["ranking", "providerMetadata"]  # no warnings when none apply
    ranking = payload["ranking"]
    assert [item["index"] for item in ranking] == [0, 1]  # Berlin wins the tie-breaker
    assert ranking[0]["relevanceScore"] - ranking[1]["relevanceScore"] > 0.2
    assert ranking[0]["relevanceScore"] >= ranking[1]["relevanceScore"]
    assert payload["providerMetadata"]["gateway"] == {"cost": "0.002"}


async def test_without_top_n_every_document_is_ranked_in_descending_order(
    client: httpx.AsyncClient,
) -> None:
    ranking = (await rerank(client, rerank_body())).json()["ranking"]

    assert sorted(item["index"] for item in ranking) == [0, 1, 2]
    scores = [item["relevanceScore"] for item in ranking]
    assert scores == sorted(scores, reverse=True)
    assert all(0 <= s <= 1 for s in scores)


async def test_top_n_beyond_the_document_count_returns_every_document(
    client: httpx.AsyncClient,
) -> None:
    ranking = (await rerank(client, rerank_body(top_n=50))).json()["ranking"]

    assert len(ranking) == 3


async def test_ties_are_broken_by_ascending_index(client: httpx.AsyncClient) -> None:
    values = ["unrelated words", "capital of France", "unrelated words", "unrelated words"]
    ranking = (await rerank(client, rerank_body(values))).json()["ranking"]

    assert [item["index"] for item in ranking] == [1, 0, 2, 3]
    assert len({item["relevanceScore"] for item in ranking[1:]}) == 1


async def test_object_documents_are_scored_on_their_values(client: httpx.AsyncClient) -> None:
    values = [
        {"title": "Germany", "text": "Berlin is its capital."},
        {"title": "France", "text": "Paris is its capital.", "rank": 1},
        {"capital": "france"},  # keys do not count, so this one has no "capital" term
    ]
    response = await rerank(client, rerank_body(values, kind="object", top_n=2))

    assert response.status_code == 200
    assert [item["index"] for item in response.json()["ranking"]] == [1, 0]


async def test_identical_requests_get_identical_bytes() -> None:
    body = rerank_body(top_n=2, options={"voyage": {"truncation": True}})
    async with client_for(create_app()) as first, client_for(create_app()) as second:
        answers = [await rerank(c, body) for c in (first, first, second)]
        errors = [await rerank(c, rerank_body([])) for c in (first, second)]

    assert answers[0].content == answers[1].content == answers[2].content
    assert errors[0].content == errors[1].content


async def test_cost_grows_with_search_units(client: httpx.AsyncClient) -> None:
    values = [f"document number {i}" for i in range(250)]
    payload = (await rerank(client, rerank_body(values, top_n=1))).json()

    assert payload["providerMetadata"]["gateway"]["cost"] == "0.006"  # 3 units at 0.002
    assert payload["providerMetadata"]["mock"] == {"searchUnits": 3, "documents": 250}


async def test_a_fixed_cost_replaces_the_price_whatever_the_size() -> None:
    async with client_for(create_app(MockSettings(cost_usd=Decimal("0.001")))) as client:
        for values in (["one document"], [f"document number {i}" for i in range(250)]):
            payload = (await rerank(client, rerank_body(values, top_n=1))).json()
            assert payload["providerMetadata"]["gateway"]["cost"] == "0.001"
    with pytest.raises(ValueError, match="cost_usd"):
        MockSettings(cost_usd=Decimal("-0.001"))


@pytest.mark.parametrize(
    ("model", "options", "warned"),
    [
        ("voyage/rerank-2.5", {"cohere": {"maxTokensPerDoc": 512}}, ["providerOptions.cohere"]),
        ("cohere/rerank-v3.5", {"voyage": {"truncation": True}}, ["providerOptions.voyage"]),
        ("cohere/rerank-v3.5", {"cohere": {"maxTokensPerDoc": 512}}, []),
        ("voyage/rerank-2.5", {"gateway": {"order": ["voyage"]}}, []),
    ],
)
async def test_options_for_the_other_provider_are_reported_unsupported(
    client: httpx.AsyncClient, model: str, options: dict[str, Any], warned: list[str]
) -> None:
    response = await rerank(client, rerank_body(options=options), headers={"ai-model-id": model})

    assert response.status_code == 200
    warnings = response.json().get("warnings", [])
    assert [w["feature"] for w in warnings] == warned
    assert all(w["type"] == "unsupported" and w["details"] for w in warnings)


# --- headers and authentication ------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "dropped"),
    [
        ({}, ("authorization",)),
        ({"authorization": "Basic dGVzdA=="}, ()),
        ({"authorization": "Bearer "}, ()),
        ({"authorization": "test-key-123"}, ()),
    ],
)
async def test_a_missing_or_malformed_bearer_token_is_401(
    client: httpx.AsyncClient, headers: dict[str, str], dropped: tuple[str, ...]
) -> None:
    response = await rerank(client, rerank_body(), headers=headers, drop=dropped)

    assert_envelope(response, 401, "authentication_error")


async def test_any_bearer_token_is_accepted_without_an_api_key(client: httpx.AsyncClient) -> None:
    response = await rerank(client, rerank_body(), headers={"authorization": "bearer whatever"})

    assert response.status_code == 200


async def test_an_api_key_admits_only_itself() -> None:
    async with client_for(create_app(MockSettings(api_key="s3cret"))) as client:
        good = await rerank(client, rerank_body(), headers={"authorization": "Bearer s3cret"})
        bad = await rerank(client, rerank_body(), headers={"authorization": "Bearer guess"})
        config = await client.get("/config", headers={"authorization": "Bearer guess"})

    assert good.status_code == 200
    assert "guess" not in assert_envelope(bad, 401, "authentication_error")["message"]
    assert_envelope(config, 401, "authentication_error")


SPEC = "ai-reranking-model-specification-version"


@pytest.mark.parametrize(
    ("headers", "dropped", "param"),
    [
        ({}, ("ai-gateway-protocol-version",), "ai-gateway-protocol-version"),
        ({}, (SPEC,), SPEC),
        ({SPEC: "2"}, (), SPEC),
        ({}, ("ai-model-id",), "ai-model-id"),
        ({"ai-model-id": " "}, (), "ai-model-id"),
        ({}, ("content-type",), "content-type"),
        ({"content-type": "text/plain"}, (), "content-type"),
    ],
)
async def test_protocol_headers_are_enforced(
    client: httpx.AsyncClient, headers: dict[str, str], dropped: tuple[str, ...], param: str
) -> None:
    response = await rerank(client, rerank_body(), headers=headers, drop=dropped)

    error = assert_envelope(response, 400, "invalid_request_error", param=param)
    assert param in error["message"]


async def test_authentication_is_checked_before_the_other_headers(
    client: httpx.AsyncClient,
) -> None:
    response = await rerank(client, b"", drop=("authorization", "ai-model-id"))

    assert_envelope(response, 401, "authentication_error")


async def test_a_json_content_type_with_parameters_is_accepted(client: httpx.AsyncClient) -> None:
    headers = {"content-type": "application/json; charset=utf-8"}
    response = await rerank(client, rerank_body(), headers=headers)

    assert response.status_code == 200


@pytest.mark.parametrize(
    "model", ["acme/rerank-9", "openai/gpt-4o-mini", "openai/text-embedding-3-small"]
)
async def test_models_outside_the_reranking_catalogue_are_not_found(
    client: httpx.AsyncClient, model: str
) -> None:
    response = await rerank(client, rerank_body(), headers={"ai-model-id": model})

    error = assert_envelope(response, 404, "model_not_found", param={"modelId": model})
    assert model in error["message"]


async def test_every_catalogued_reranking_model_answers(client: httpx.AsyncClient) -> None:
    for model in RERANKING_MODEL_IDS:
        response = await rerank(client, rerank_body(top_n=1), headers={"ai-model-id": model})
        assert response.status_code == 200, model
        assert response.json()["ranking"][0]["index"] == 0


# --- body validation -----------------------------------------------------------------------


def _body(**changes: Any) -> bytes:
    body = rerank_body()
    for key, value in changes.items():
        body[key] = value
    return orjson.dumps(body)


@pytest.mark.parametrize(
    ("body", "param"),
    [
        (b"{not json", None),
        (b"", None),
        (b'["documents"]', None),
        (orjson.dumps({"query": QUERY}), "documents"),
        (_body(documents=["a", "b"]), "documents"),
        (_body(documents={"type": "image", "values": ["a"]}), "documents.type"),
        (_body(documents={"values": ["a"]}), "documents.type"),
        (_body(documents={"type": "text", "values": "a"}), "documents.values"),
        (_body(documents={"type": "text"}), "documents.values"),
        (_body(documents={"type": "text", "values": []}), "documents.values"),
        (_body(documents={"type": "text", "values": ["a", 7]}), "documents.values[1]"),
        (_body(documents={"type": "text", "values": ["a", {"t": "b"}]}), "documents.values[1]"),
        (_body(documents={"type": "object", "values": [{"t": "a"}, "b"]}), "documents.values[1]"),
        (_body(documents={"type": "text", "values": ["a"] * 10_001}), "documents.values"),
        (orjson.dumps({"documents": {"type": "text", "values": ["a"]}}), "query"),
        (_body(query=42), "query"),
        (_body(query=None), "query"),
        (_body(topN=0), "topN"),
        (_body(topN=-3), "topN"),
        (_body(topN="2"), "topN"),
        (_body(topN=1.5), "topN"),
        (_body(topN=2.0), "topN"),
        (_body(topN=True), "topN"),
        (_body(providerOptions=["cohere"]), "providerOptions"),
        (_body(providerOptions={"cohere": "fast"}), "providerOptions.cohere"),
    ],
)
async def test_invalid_bodies_are_refused_naming_the_field(
    client: httpx.AsyncClient, body: bytes, param: str | None
) -> None:
    response = await rerank(client, body)

    error = assert_envelope(response, 400, "invalid_request_error", param=param)
    if param is not None:
        assert error["message"].startswith(param)


async def test_an_empty_query_is_answered(client: httpx.AsyncClient) -> None:
    # The SDK does not refuse it and the spec does not say the gateway does.
    response = await rerank(client, rerank_body(query=""))

    assert response.status_code == 200
    assert [item["index"] for item in response.json()["ranking"]] != []


# --- errors outside the rerank call --------------------------------------------------------


async def test_unknown_paths_are_404_in_the_envelope(client: httpx.AsyncClient) -> None:
    response = await client.post("/embedding-model", headers=HEADERS, content=b"{}")

    assert_envelope(response, 404, "invalid_request_error", param="path")


@pytest.mark.parametrize(("method", "path"), [("GET", "/reranking-model"), ("POST", "/config")])
async def test_a_wrong_method_is_405_with_allow(
    client: httpx.AsyncClient, method: str, path: str
) -> None:
    response = await client.request(method, path, headers=HEADERS)

    assert_envelope(response, 405, "invalid_request_error", param="method")
    assert response.headers["allow"] == ("POST" if path == "/reranking-model" else "GET")


async def test_generation_ids_are_derived_from_the_request(client: httpx.AsyncClient) -> None:
    one = (await rerank(client, rerank_body([]))).json()["generationId"]
    again = (await rerank(client, rerank_body([]))).json()["generationId"]
    other = (await rerank(client, rerank_body([], query="other"))).json()["generationId"]

    assert one == again != other
    assert len(one) == len("gen_") + 26


# --- GET /config ---------------------------------------------------------------------------


async def test_config_lists_the_reranking_catalogue_and_other_models(
    client: httpx.AsyncClient,
) -> None:
    response = await client.get("/config", headers={"authorization": "Bearer k"})

    assert response.status_code == 200
    models = response.json()["models"]
    by_type: dict[str, list[str]] = {}
    for model in models:
        assert list(model) == [
            "id", "name", "description", "pricing", "specification", "modelType",
        ]  # fmt: skip
        by_type.setdefault(model["modelType"], []).append(model["id"])
        assert model["specification"] == {
            "specificationVersion": "v3",
            "provider": model["id"].split("/")[0],
            "modelId": model["id"],
        }
        pricing = model["pricing"]
        assert pricing is None or all(isinstance(pricing[k], str) for k in ("input", "output"))
    assert set(by_type["reranking"]) == set(RERANKING_MODEL_IDS) == {
        "cohere/rerank-v3.5", "cohere/rerank-v4-fast", "cohere/rerank-v4-pro",
        "cohere/rerank-v5-fast", "cohere/rerank-v5-pro", "voyage/rerank-2.5",
        "voyage/rerank-2.5-lite", "voyage/rerank-3", "voyage/rerank-3-lite",
    }  # fmt: skip
    assert by_type["language"]
    assert by_type["embedding"]
    assert any(m["pricing"] is None for m in models)
    assert any(m["pricing"] is not None for m in models)


async def test_config_needs_a_bearer_token(client: httpx.AsyncClient) -> None:
    assert_envelope(await client.get("/config"), 401, "authentication_error")


# --- the two protocol versions (spec §0) ---------------------------------------------------

# (base path, the spec-version header it requires, the other version's header): literals of
# the spec, not read back from the mock's table.
VERSIONS = [("/v3/ai", "3", "4"), ("/v4/ai", "4", "3")]


async def rerank_at(
    client: httpx.AsyncClient,
    base: str,
    body: dict[str, Any],
    *,
    spec_version: str | None,
    headers: dict[str, str] | None = None,
) -> httpx.Response:
    sent = {k: v for k, v in {**HEADERS, **(headers or {})}.items() if k != SPEC}
    if spec_version is not None:
        sent[SPEC] = spec_version
    url = f"http://mock{base}/reranking-model"
    return await client.post(url, content=orjson.dumps(body), headers=sent)


def test_the_mock_serves_exactly_v3_and_v4() -> None:
    assert list(PROTOCOL_VERSIONS) == ["v3", "v4"]
    assert [v.base_path for v in PROTOCOL_VERSIONS.values()] == ["/v3/ai", "/v4/ai"]
    assert DEFAULT_PROTOCOL is PROTOCOL_V4
    assert PROTOCOL_V4.base_url("127.0.0.1", 8080) == "http://127.0.0.1:8080/v4/ai"
    assert PROTOCOL_V3.base_url("::1", 8080) == "http://[::1]:8080/v3/ai"


@pytest.mark.parametrize(("base", "own", "other"), VERSIONS)
async def test_each_version_requires_its_own_specification_version(
    client: httpx.AsyncClient, base: str, own: str, other: str
) -> None:
    accepted = await rerank_at(client, base, rerank_body(top_n=2), spec_version=own)
    crossed = await rerank_at(client, base, rerank_body(), spec_version=other)
    missing = await rerank_at(client, base, rerank_body(), spec_version=None)

    assert accepted.status_code == 200, accepted.text
    assert [item["index"] for item in accepted.json()["ranking"]] == [0, 1]
    error = assert_envelope(crossed, 400, "invalid_request_error", param=SPEC)
    assert f"must be '{own}' under {base}, got '{other}'" in error["message"]
    # A client of the other SDK generation is told where its version is served.
    assert f"served under /v{other}/ai" in error["message"]
    error = assert_envelope(missing, 400, "invalid_request_error", param=SPEC)
    assert "it is missing" in error["message"]


async def test_both_versions_answer_a_rerank_with_the_same_bytes(
    client: httpx.AsyncClient,
) -> None:
    body = rerank_body(top_n=2, options={"voyage": {"truncation": True}})
    v3 = await rerank_at(client, "/v3/ai", body, spec_version="3")
    v4 = await rerank_at(client, "/v4/ai", body, spec_version="4")

    assert v3.status_code == v4.status_code == 200
    assert v3.content == v4.content  # spec §0: the success body is the same in both


@pytest.mark.parametrize(("base", "literal"), [("/v3/ai", "v3"), ("/v4/ai", "v4")])
async def test_config_reports_the_specification_version_of_its_path(
    client: httpx.AsyncClient, base: str, literal: str
) -> None:
    response = await client.get(f"http://mock{base}/config", headers={"authorization": "Bearer k"})

    assert response.status_code == 200
    models = response.json()["models"]
    assert {m["specification"]["specificationVersion"] for m in models} == {literal}
    assert {m["id"] for m in models if m["modelType"] == "reranking"} == set(RERANKING_MODEL_IDS)


@pytest.mark.parametrize(("base", "own", "other"), VERSIONS)
async def test_the_team_header_is_accepted_and_shown_in_provider_metadata(
    client: httpx.AsyncClient, base: str, own: str, other: str
) -> None:
    team = {"x-vercel-ai-gateway-team": "team_abc123"}
    with_team = await rerank_at(client, base, rerank_body(), spec_version=own, headers=team)
    without = await rerank_at(client, base, rerank_body(), spec_version=own)

    assert with_team.status_code == without.status_code == 200
    assert with_team.json()["providerMetadata"]["mock"]["team"] == "team_abc123"
    assert "team" not in without.json()["providerMetadata"]["mock"]
    assert with_team.json()["ranking"] == without.json()["ranking"]


@pytest.mark.parametrize("path", ["/v2/ai/reranking-model", "/v5/ai/config", "/v4/reranking-model"])
async def test_other_versions_are_not_served(client: httpx.AsyncClient, path: str) -> None:
    response = await client.post(f"http://mock{path}", headers=HEADERS, content=b"{}")

    assert_envelope(response, 404, "invalid_request_error", param="path")


@pytest.mark.parametrize(
    ("protocol", "suffix"), [(None, "/v3/ai"), (PROTOCOL_V3, "/v3/ai"), (PROTOCOL_V4, "/v4/ai")]
)
async def test_the_embedded_mock_serves_both_versions_on_one_port(
    protocol: ProtocolVersion | None, suffix: str
) -> None:
    embedded = LoopbackMockGateway() if protocol is None else LoopbackMockGateway(protocol=protocol)
    url = await embedded.start()
    try:
        async with httpx.AsyncClient(timeout=10) as http:
            configs = [
                (await http.get(f"{base}/config", headers={"authorization": "Bearer k"})).json()
                for base in (embedded.v3_url, embedded.v4_url)
            ]
    finally:
        await embedded.stop()

    assert url == embedded.url
    assert url.endswith(suffix)  # the server's existing call, start(), still gets v3
    assert embedded.v3_url.removesuffix("/v3/ai") == embedded.v4_url.removesuffix("/v4/ai")
    literals = [{m["specification"]["specificationVersion"] for m in c["models"]} for c in configs]
    assert literals == [{"v3"}, {"v4"}]


# --- the Cohere-compatible endpoint --------------------------------------------------------


async def cohere(
    client: httpx.AsyncClient, body: dict[str, Any], *, version: str = "v2", token: str = "k"
) -> httpx.Response:
    headers = {"authorization": f"Bearer {token}"} if token else {}
    return await client.post(f"http://mock/{version}/rerank", json=body, headers=headers)


async def test_cohere_v2_ranks_with_the_same_scores(client: httpx.AsyncClient) -> None:
    request = {"model": MODEL, "query": QUERY, "documents": CAPITALS, "top_n": 2}
    response = await cohere(client, request)
    native = (await rerank(client, rerank_body(top_n=2))).json()["ranking"]

    assert response.status_code == 200
    payload = response.json()
    assert list(payload) == ["id", "results", "meta"]
    assert payload["results"] == [
        {"index": item["index"], "relevance_score": item["relevanceScore"]} for item in native
    ]
    assert payload["meta"] == {"api_version": {"version": "2"}, "billed_units": {"search_units": 1}}
    again = await cohere(client, request)
    assert again.content == response.content  # the id is derived, not random
    other = await cohere(client, {**request, "top_n": 1})
    assert other.json()["id"] != payload["id"]


async def test_cohere_v1_answers_with_its_version(client: httpx.AsyncClient) -> None:
    documents = [f"doc {i}" for i in range(101)]
    response = await cohere(
        client, {"model": MODEL, "query": "doc", "documents": documents}, version="v1"
    )

    assert response.status_code == 200
    assert response.json()["meta"] == {
        "api_version": {"version": "1"},
        "billed_units": {"search_units": 2},
    }
    assert len(response.json()["results"]) == 101


@pytest.mark.parametrize(
    ("change", "status"),
    [
        ({"model": None}, 400),
        ({"model": "acme/rerank-9"}, 404),
        ({"query": 3}, 400),
        ({"query": "  "}, 400),
        ({"documents": "Paris"}, 400),
        ({"documents": []}, 400),
        ({"documents": [{"text": "Paris"}]}, 400),
        ({"top_n": 0}, 422),
        ({"top_n": "1"}, 400),
        ({"max_tokens_per_doc": 0}, 422),
        ({"priority": 1000}, 422),
    ],
)
async def test_cohere_errors_are_plain_messages(
    client: httpx.AsyncClient, change: dict[str, Any], status: int
) -> None:
    request = {"model": MODEL, "query": QUERY, "documents": CAPITALS, **change}
    response = await cohere(client, {k: v for k, v in request.items() if v is not None})

    assert response.status_code == status
    assert list(response.json()) == ["message"]


async def test_cohere_needs_a_valid_token_and_json() -> None:
    async with client_for(create_app(MockSettings(api_key="s3cret"))) as client:
        request = {"model": MODEL, "query": QUERY, "documents": CAPITALS}
        missing = await cohere(client, request, token="")
        wrong = await cohere(client, request, token="guess")
        not_json = await client.post(
            "http://mock/v2/rerank", content=b"{", headers={"authorization": "Bearer s3cret"}
        )

    assert (missing.status_code, wrong.status_code, not_json.status_code) == (401, 401, 400)
    assert missing.json() == {"message": "no api key supplied"}
    assert wrong.json() == {"message": "invalid api token"}


# --- fault injection -----------------------------------------------------------------------


async def test_rate_limit_fault_sets_both_retry_headers(client: httpx.AsyncClient) -> None:
    default = await rerank(client, rerank_body(options=fault("rate_limit")))
    custom = await rerank(client, rerank_body(options=fault("rate_limit", retryAfterMs=1500)))

    assert_envelope(default, 429, "rate_limit_exceeded")
    assert (default.headers["retry-after-ms"], default.headers["retry-after"]) == ("1000", "1")
    assert_envelope(custom, 429, "rate_limit_exceeded")
    assert (custom.headers["retry-after-ms"], custom.headers["retry-after"]) == ("1500", "2")


@pytest.mark.parametrize(
    ("status", "type_"),
    [
        (401, "authentication_error"),
        (400, "invalid_request_error"),
        (403, "forbidden"),
        (404, "model_not_found"),
        (424, "failed_dependency"),
        (429, "rate_limit_exceeded"),
        (500, "internal_server_error"),
        (503, "brand_new_error"),
    ],
)
async def test_error_fault_produces_any_envelope(
    client: httpx.AsyncClient, status: int, type_: str
) -> None:
    options = fault("error", status=status, type=type_, message="boom", param={"ruleId": "r1"})
    response = await rerank(client, rerank_body(options=options))

    error = assert_envelope(response, status, type_, param={"ruleId": "r1"})
    assert error["message"] == "boom"


async def test_error_fault_can_leave_out_type_and_generation_id(
    client: httpx.AsyncClient,
) -> None:
    options = fault("error", status=502, code=42, generationId=None)
    response = await rerank(client, rerank_body(options=options))

    assert response.status_code == 502
    assert response.json() == {"error": {"message": "Injected error", "param": None, "code": 42}}


async def test_error_fault_uses_a_given_generation_id(client: httpx.AsyncClient) -> None:
    options = fault("error", status=500, type="internal_server_error", generationId="gen_X")
    response = await rerank(client, rerank_body(options=options))

    assert response.json()["generationId"] == "gen_X"


async def test_slow_fault_delays_a_normal_answer(client: httpx.AsyncClient) -> None:
    started = time.perf_counter()
    response = await rerank(client, rerank_body(top_n=2, options=fault("slow", delayMs=200)))
    elapsed = time.perf_counter() - started
    normal = await rerank(client, rerank_body(top_n=2))

    assert elapsed >= 0.2
    assert response.status_code == 200
    assert response.json()["ranking"] == normal.json()["ranking"]


async def test_slow_fault_can_outlast_a_client_timeout(client: httpx.AsyncClient) -> None:
    with pytest.raises(asyncio.TimeoutError):
        async with asyncio.timeout(0.05):
            await rerank(client, rerank_body(options=fault("slow", delayMs=5000)))


async def test_status_only_fault_answers_outside_the_envelope(client: httpx.AsyncClient) -> None:
    default = await rerank(client, rerank_body(options=fault("status_only")))
    custom = await rerank(
        client,
        rerank_body(
            options=fault("status_only", status=500, body="oops", contentType="text/plain")
        ),
    )

    assert default.status_code == 502
    assert default.headers["content-type"].startswith("text/html")
    assert default.text.startswith("<html>")
    assert (custom.status_code, custom.text, custom.headers["content-type"]) == (
        500,
        "oops",
        "text/plain",
    )


@pytest.mark.parametrize("variant", ["mid_body", "before_headers"])
async def test_drop_fault_raises_in_process(client: httpx.AsyncClient, variant: str) -> None:
    # Over a real socket the connection closes instead (see tests/contract/test_mock_wire.py).
    with pytest.raises(ConnectionDropped):
        await rerank(client, rerank_body(options=fault("drop", variant=variant)))


# Every warning type of either version (spec §0 and §3).
DOCUMENTED_WARNING_TYPES = ("unsupported", "compatibility", "other", "deprecated")

# Bodies the SDK's schema lets through: only the caller's own checks can catch them.
SDK_ACCEPTS = ("duplicate_index", "huge", "unsorted", "too_many")


def _sdk_rejects_ranking(payload: Any, count: int) -> bool:
    """Whether the AI SDK's schema or its index check would refuse this body."""
    if not isinstance(payload, dict) or not isinstance(payload.get("ranking"), list):
        return True
    for item in payload["ranking"]:
        if not isinstance(item, dict):
            return True
        index, value = item.get("index"), item.get("relevanceScore")
        if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < count:
            return True
        if isinstance(value, bool) or not isinstance(value, int | float):
            return True
    warnings = payload.get("warnings", [])
    return any(w.get("type") not in ("unsupported", "compatibility", "other") for w in warnings)


_VARIANT_CHECKS: dict[str, Any] = {
    "not_json": lambda body, ranking: not _is_json(body),
    "truncated": lambda body, ranking: not _is_json(body) and body,
    "empty": lambda body, ranking: body == b"",
    "wrong_types": lambda body, ranking: all(
        isinstance(i["relevanceScore"], str) for i in orjson.loads(body)["ranking"]
    ),
    "nan_score": lambda body, ranking: b'"relevanceScore":NaN' in body and not _is_json(body),
    "missing_score": lambda body, ranking: all(
        "relevanceScore" not in i for i in orjson.loads(body)["ranking"]
    ),
    "missing_ranking": lambda body, ranking: "ranking" not in orjson.loads(body),
    "index_out_of_range": lambda body, ranking: orjson.loads(body)["ranking"][0]["index"] == 3,
    "duplicate_index": lambda body, ranking: (
        len({i["index"] for i in orjson.loads(body)["ranking"]})
        < len(orjson.loads(body)["ranking"])
    ),
    "negative_index": lambda body, ranking: orjson.loads(body)["ranking"][0]["index"] == -1,
    "float_index": lambda body, ranking: orjson.loads(body)["ranking"][0]["index"] % 1 == 0.5,
    "error_envelope": lambda body, ranking: list(orjson.loads(body)) == ["error", "generationId"],
    "huge": lambda body, ranking: (
        len(body) > 20_000_000 and orjson.loads(body)["ranking"] == ranking
    ),
    "unsorted": lambda body, ranking: orjson.loads(body)["ranking"] == ranking[::-1],
    "too_many": lambda body, ranking: len(orjson.loads(body)["ranking"]) == 3,
    "unknown_warning": lambda body, ranking: (
        orjson.loads(body)["warnings"][-1]["type"] not in DOCUMENTED_WARNING_TYPES
    ),
}


def _is_json(body: bytes) -> bool:
    try:
        orjson.loads(body)
    except orjson.JSONDecodeError:
        return False
    return True


def test_every_malformed_variant_has_a_check() -> None:
    assert set(_VARIANT_CHECKS) == set(MALFORMED_VARIANTS)


@pytest.mark.parametrize("variant", MALFORMED_VARIANTS)
async def test_malformed_fault_variants(client: httpx.AsyncClient, variant: str) -> None:
    normal = (await rerank(client, rerank_body(top_n=2))).json()["ranking"]
    options = fault("malformed", variant=variant)
    response = await rerank(client, rerank_body(top_n=2, options=options))

    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert _VARIANT_CHECKS[variant](response.content, normal)
    if variant not in SDK_ACCEPTS:
        body = response.content
        assert not _is_json(body) or _sdk_rejects_ranking(orjson.loads(body), 3)


async def test_huge_variant_size_is_adjustable(client: httpx.AsyncClient) -> None:
    options = fault("malformed", variant="huge", sizeBytes=1000)
    response = await rerank(client, rerank_body(options=options))

    assert 1000 < len(response.content) < 1300


async def status(client: httpx.AsyncClient, options: dict[str, Any]) -> int:
    return (await rerank(client, rerank_body(options=options))).status_code


async def test_times_and_key_limit_a_fault_to_the_first_requests() -> None:
    async with client_for(create_app()) as client, client_for(create_app()) as fresh:
        options = fault("rate_limit", times=2, key="retry-test")
        statuses = [await status(client, options) for _ in range(4)]
        other_key = fault("rate_limit", times=1, key="other")
        other = [await status(client, other_key) for _ in range(2)]
        unkeyed = fault("error", status=503, times=1)
        default_key = [await status(client, unkeyed) for _ in range(2)]
        elsewhere = await status(fresh, options)

    assert statuses == [429, 429, 200, 200]
    assert other == [429, 200]
    assert default_key == [503, 200]
    assert elsewhere == 429  # counts belong to one app instance


async def test_a_fault_does_not_remove_the_other_options(client: httpx.AsyncClient) -> None:
    options = {**fault("slow", delayMs=0), "voyage": {"truncation": True}}
    response = await rerank(client, rerank_body(options=options))

    assert [w["feature"] for w in response.json()["warnings"]] == ["providerOptions.voyage"]


@pytest.mark.parametrize(
    ("spec", "param"),
    [
        ({"fault": "explode"}, "fault"),
        ({}, "fault"),
        ({"fault": "slow", "delayMS": 10}, "delayMS"),
        ({"fault": "slow", "delayMs": -1}, "delayMs"),
        ({"fault": "malformed"}, "variant"),
        ({"fault": "malformed", "variant": "purple"}, "variant"),
        ({"fault": "drop", "variant": "later"}, "variant"),
        ({"fault": "error", "status": 99}, "status"),
        ({"fault": "error", "message": 5}, "message"),
        ({"fault": "rate_limit", "times": 0}, "times"),
        ({"fault": "rate_limit", "key": 1}, "key"),
        ({"fault": "status_only", "body": None}, "body"),
        ({"fault": "status_only", "contentType": "text/html\r\nx: y"}, "contentType"),
        ({"fault": "warning"}, "type"),
        ({"fault": "warning", "type": "purple"}, "type"),
        ({"fault": "warning", "type": "unsupported", "setting": "s"}, "setting"),
        ({"fault": "warning", "type": "deprecated", "feature": "f"}, "feature"),
        ({"fault": "warning", "type": "other", "message": 1}, "message"),
        ({"fault": "not_found", "status": 410}, "status"),
    ],
)
async def test_invalid_fault_requests_are_refused(
    client: httpx.AsyncClient, spec: dict[str, Any], param: str
) -> None:
    response = await rerank(client, rerank_body(options={"mockGateway": spec}))

    field = f"providerOptions.mockGateway.{param}"
    error = assert_envelope(response, 400, "invalid_request_error", param=field)
    assert error["message"].startswith(field)


# --- faults that belong to one protocol version --------------------------------------------


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        (
            {"type": "deprecated"},
            {"setting": "mockGateway", "message": "Injected deprecation warning."},
        ),
        (
            {"type": "deprecated", "setting": "topN", "message": "m"},
            {"setting": "topN", "message": "m"},
        ),
        ({"type": "unsupported"}, {"feature": "mockGateway"}),
        (
            {"type": "compatibility", "feature": "f", "details": "d"},
            {"feature": "f", "details": "d"},
        ),
        ({"type": "other", "message": "m"}, {"message": "m"}),
    ],
)
async def test_warning_fault_adds_one_warning_to_the_normal_answer_on_v4(
    client: httpx.AsyncClient, params: dict[str, Any], expected: dict[str, Any]
) -> None:
    options = {**fault("warning", **params), "voyage": {"truncation": True}}
    normal = await rerank_at(client, "/v4/ai", rerank_body(top_n=2), spec_version="4")
    response = await rerank_at(
        client, "/v4/ai", rerank_body(top_n=2, options=options), spec_version="4"
    )

    assert response.status_code == 200, response.text
    payload = response.json()
    assert list(payload) == ["ranking", "warnings", "providerMetadata"]
    assert payload["ranking"] == normal.json()["ranking"]
    # The mock's own warning first, then the injected one, with its fields in wire order.
    assert payload["warnings"][0]["feature"] == "providerOptions.voyage"
    assert payload["warnings"][1] == {"type": params["type"], **expected}
    assert list(payload["warnings"][1]) == ["type", *expected]


@pytest.mark.parametrize("type_", ["unsupported", "compatibility", "other"])
async def test_v3_warning_types_are_injected_on_v3(client: httpx.AsyncClient, type_: str) -> None:
    response = await rerank_at(
        client, "/v3/ai", rerank_body(options=fault("warning", type=type_)), spec_version="3"
    )

    assert response.status_code == 200, response.text
    assert [w["type"] for w in response.json()["warnings"]] == [type_]


async def test_a_deprecated_warning_is_refused_on_v3(client: httpx.AsyncClient) -> None:
    options = fault("warning", type="deprecated")
    response = await rerank_at(client, "/v3/ai", rerank_body(options=options), spec_version="3")

    field = "providerOptions.mockGateway.type"
    error = assert_envelope(response, 400, "invalid_request_error", param=field)
    assert "protocol v3 (unsupported, compatibility, other), got 'deprecated'" in error["message"]
    assert "protocol v4, under /v4/ai" in error["message"]


async def test_not_found_fault_is_a_v4_error(client: httpx.AsyncClient) -> None:
    options = fault("not_found", message="No such team", param={"team": "t"})
    v4 = await rerank_at(client, "/v4/ai", rerank_body(options=options), spec_version="4")
    default = await rerank_at(
        client, "/v4/ai", rerank_body(options=fault("not_found")), spec_version="4"
    )
    v3 = await rerank_at(client, "/v3/ai", rerank_body(options=options), spec_version="3")

    error = assert_envelope(v4, 404, "not_found", param={"team": "t"})
    assert error["message"] == "No such team"
    assert assert_envelope(default, 404, "not_found")["message"]
    field = "providerOptions.mockGateway.fault"
    error = assert_envelope(v3, 400, "invalid_request_error", param=field)
    assert "not an error type of protocol v3" in error["message"]
    assert '"type": "not_found"' in error["message"]  # how to send it on v3 regardless


async def test_the_error_fault_still_sends_any_type_on_v3(client: httpx.AsyncClient) -> None:
    options = fault("error", status=404, type="not_found")
    response = await rerank_at(client, "/v3/ai", rerank_body(options=options), spec_version="3")

    assert_envelope(response, 404, "not_found")


# The answers that are JSON (the others carry no type at all).
V3_ANSWERS = [
    *(
        fault("malformed", variant=v, sizeBytes=10)
        for v in MALFORMED_VARIANTS
        if v not in ("not_json", "truncated", "empty", "nan_score")
    ),
    *(fault("warning", type=t) for t in DOCUMENTED_WARNING_TYPES),
    fault("not_found"),
]


@pytest.mark.parametrize(
    "options", V3_ANSWERS, ids=lambda o: "-".join(map(str, o["mockGateway"].values()))
)
async def test_no_v3_answer_carries_a_v4_only_type(
    client: httpx.AsyncClient, options: dict[str, Any]
) -> None:
    response = await rerank_at(client, "/v3/ai", rerank_body(options=options), spec_version="3")

    payload = orjson.loads(response.content)
    assert "deprecated" not in [w["type"] for w in payload.get("warnings", [])]
    assert payload.get("error", {}).get("type") != "not_found"


async def test_faults_follow_request_validation(client: httpx.AsyncClient) -> None:
    response = await rerank(
        client, rerank_body([], options=fault("rate_limit")), headers={"ai-model-id": "x/y"}
    )

    assert response.status_code == 404


# --- settings: error rate and latency ------------------------------------------------------


async def test_error_rate_one_fails_every_call_with_503() -> None:
    async with client_for(create_app(MockSettings(error_rate=1.0))) as client:
        response = await rerank(client, rerank_body())
        cohere_response = await cohere(client, {"model": MODEL, "query": "q", "documents": ["d"]})

    assert_envelope(response, 503, "internal_server_error")
    assert cohere_response.status_code == 503
    assert list(cohere_response.json()) == ["message"]


async def test_error_rate_draws_are_seeded_per_app() -> None:
    async def statuses(seed: int) -> list[int]:
        async with client_for(create_app(MockSettings(error_rate=0.5, seed=seed))) as client:
            return [(await rerank(client, rerank_body())).status_code for _ in range(40)]

    first, again, other = await statuses(7), await statuses(7), await statuses(8)

    assert first == again != other
    assert set(first) == {200, 503}


async def test_error_rate_spares_invalid_requests() -> None:
    async with client_for(create_app(MockSettings(error_rate=1.0))) as client:
        response = await rerank(client, rerank_body([]))

    assert response.status_code == 400


async def test_latency_is_added_to_rerank_calls() -> None:
    async with client_for(create_app(MockSettings(latency_ms=300))) as client:
        started = time.perf_counter()
        await rerank(client, rerank_body())
        rerank_elapsed = time.perf_counter() - started
        started = time.perf_counter()
        await client.get("/config", headers={"authorization": "Bearer k"})
        config_elapsed = time.perf_counter() - started

    assert rerank_elapsed >= 0.3
    assert config_elapsed < 0.3


@pytest.mark.parametrize(
    "kwargs", [{"api_key": ""}, {"latency_ms": -1}, {"error_rate": 1.5}, {"error_rate": -0.1}]
)
def test_settings_refuse_nonsense(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        MockSettings(**kwargs)


# --- ASGI lifespan -------------------------------------------------------------------------


async def test_lifespan_startup_and_shutdown_complete() -> None:
    incoming = [{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return incoming.pop(0)

    async def send(message: Any) -> None:
        sent.append(dict(message))

    await create_app()({"type": "lifespan", "asgi": {"version": "3.0"}}, receive, send)

    assert sent == [
        {"type": "lifespan.startup.complete"},
        {"type": "lifespan.shutdown.complete"},
    ]


# --- the scoring function ------------------------------------------------------------------


def test_score_prefers_the_document_that_answers_the_query() -> None:
    paris, berlin, madrid = (score(MODEL, QUERY, d) for d in CAPITALS)

    assert paris > max(berlin, madrid) + 0.2
    assert math.isclose(berlin, madrid, abs_tol=0.01)  # only the tie-breaker separates them


def test_score_of_an_unrelated_document_is_only_the_tie_breaker() -> None:
    assert score(MODEL, QUERY, "Bananas are yellow.") < 0.01
    assert score(MODEL, "the of and", "the of and") < 0.01  # stopwords only


def test_score_saturates_with_repetition() -> None:
    once = score(MODEL, "paris", "paris")
    twice = score(MODEL, "paris", "paris paris")
    many = score(MODEL, "paris", " ".join(["paris"] * 50))

    assert once < twice < many < 0.96


def test_score_is_case_and_width_insensitive_up_to_the_tie_breaker() -> None:
    assert math.isclose(
        score(MODEL, "PARIS France", "ｐａｒｉｓ france"),
        score(MODEL, "paris france", "paris france"),
        abs_tol=0.01,
    )


def test_score_depends_on_the_model_only_through_the_tie_breaker() -> None:
    scores = {score(model, QUERY, CAPITALS[1]) for model in RERANKING_MODEL_IDS}

    assert len(scores) > 1
    assert max(scores) - min(scores) < 0.01


def test_object_documents_score_values_not_keys() -> None:
    assert score(MODEL, "paris", {"city": "Paris"}) > 0.7
    assert score(MODEL, "city", {"city": "Paris"}) < 0.01
    assert score(MODEL, "paris", {"a": {"b": ["Paris"]}}) > 0.7
    # Key order does not matter: the document's identity is its canonical JSON.
    assert score(MODEL, "q", {"a": 1, "b": 2}) == score(MODEL, "q", {"b": 2, "a": 1})


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-1000, 1000) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=5), children, max_size=3)
    ),
    max_leaves=8,
)


@given(
    model=st.sampled_from(RERANKING_MODEL_IDS),
    query=st.text(max_size=60),
    document=st.text(max_size=200) | st.dictionaries(st.text(max_size=5), json_values),
)
def test_score_is_a_pure_function_into_the_unit_interval(
    model: str, query: str, document: str | dict[str, Any]
) -> None:
    value = score(model, query, document)

    assert 0.0 <= value <= 1.0
    assert value == round(value, 6)
    assert score(model, query, document) == value
