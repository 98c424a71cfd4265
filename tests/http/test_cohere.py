"""The Cohere-compatible routes, through Cohere's own SDK and over plain HTTP."""

from __future__ import annotations

import asyncio
from unittest.mock import ANY

import cohere
import grpc
import httpx
import pytest

from rerank.server._errors import CallerRateLimited
from rerank.server._http_cohere import cohere_error
from tests.conftest import SEED_DOCUMENTS, SEED_QUERY
from tests.http.conftest import base_url, settings
from tests.service.conftest import StartServer


def sdk(url: str, token: str, transport: httpx.Client) -> cohere.ClientV2:
    """Cohere's client for `url`, over `transport` (which the test closes)."""
    return cohere.ClientV2(base_url=url, api_key=token, httpx_client=transport)


async def test_the_cohere_sdk_reranks_through_v2(serve: StartServer) -> None:
    running = await serve()
    with httpx.Client(timeout=10) as transport:
        client = sdk(base_url(running), "unused", transport)
        # The SDK blocks: in a thread, so that this loop goes on serving it.
        answer = await asyncio.to_thread(
            client.rerank,
            model="rerank-v3.5",
            query=SEED_QUERY,
            documents=list(SEED_DOCUMENTS),
            top_n=2,
        )
    assert [r.index for r in answer.results] == [0, 1]
    scores = [r.relevance_score for r in answer.results]
    assert scores == sorted(scores, reverse=True)
    assert answer.id
    assert answer.meta is not None
    assert answer.meta.billed_units is not None
    assert answer.meta.billed_units.search_units == 1


async def test_a_call_the_gateway_was_not_asked_for_bills_no_search_unit(
    serve: StartServer, client: httpx.AsyncClient
) -> None:
    running = await serve()
    url = f"{base_url(running)}/v2/rerank"
    body = {"model": "cohere/rerank-v3.5", "query": SEED_QUERY, "documents": list(SEED_DOCUMENTS)}
    units = []
    for sent in (body, body, {**body, "documents": []}):  # asked, a cache hit, nothing to rank
        answer = await client.post(url, json=sent)
        assert answer.status_code == 200, answer.text
        units.append(answer.json()["meta"]["billed_units"]["search_units"])
    assert units == [1, 0, 0]


async def test_v1_takes_text_objects_and_echoes_documents(
    serve: StartServer, client: httpx.AsyncClient
) -> None:
    running = await serve()
    body = {
        "model": "cohere/rerank-v3.5",
        "query": SEED_QUERY,
        "documents": [{"text": SEED_DOCUMENTS[0]}, SEED_DOCUMENTS[1]],
        "return_documents": True,
    }
    answer = await client.post(f"{base_url(running)}/v1/rerank", json=body)
    assert answer.status_code == 200, answer.text
    best = answer.json()["results"][0]
    assert best["index"] == 0
    assert best["document"] == {"text": SEED_DOCUMENTS[0]}
    assert answer.json()["meta"]["api_version"] == {"version": "1"}
    # As Cohere's API: without `return_documents`, the results carry none.
    del body["return_documents"]
    answer = await client.post(f"{base_url(running)}/v2/rerank", json=body | {"documents": ["a"]})
    assert answer.status_code == 200, answer.text
    assert answer.json()["results"] == [{"index": 0, "relevance_score": ANY}]


async def test_a_bad_body_is_400_naming_the_field(
    serve: StartServer, client: httpx.AsyncClient
) -> None:
    running = await serve()
    url = f"{base_url(running)}/v2/rerank"
    answer = await client.post(url, json={"query": SEED_QUERY, "documents": [{"text": "x"}]})
    assert answer.status_code == 400
    assert "documents[0]" in answer.json()["message"]
    answer = await client.post(url, json={"query": "", "documents": ["x"]})
    assert answer.status_code == 400
    assert "query" in answer.json()["message"]
    answer = await client.post(
        url, content=b"not json", headers={"content-type": "application/json"}
    )
    assert answer.status_code == 400
    assert "not JSON" in answer.json()["message"]


async def test_a_bearer_token_names_the_caller_and_none_is_401(serve: StartServer) -> None:
    running = await serve(settings(auth_tokens=frozenset({"good-token"})))
    request = {"model": "rerank-v3.5", "query": SEED_QUERY, "documents": list(SEED_DOCUMENTS)}
    with httpx.Client(timeout=10) as transport:
        denied = sdk(base_url(running), "bad-token", transport)
        with pytest.raises(cohere.UnauthorizedError) as refused:
            await asyncio.to_thread(denied.rerank, **request)
        assert "bearer token" in str(refused.value.body)
        allowed = sdk(base_url(running), "good-token", transport)
        answer = await asyncio.to_thread(allowed.rerank, **request)
    assert len(answer.results) == len(SEED_DOCUMENTS)


def test_a_refusal_that_waiting_helps_is_429_with_retry_after() -> None:
    refused = CallerRateLimited("over its rate", caller="team-a", retry_after=2.2)
    status, headers, body = cohere_error(refused, grpc.StatusCode.RESOURCE_EXHAUSTED, "over")
    assert (status, headers, body) == (429, [(b"retry-after", b"3")], b'{"message":"over"}')
    assert cohere_error(None, grpc.StatusCode.UNAVAILABLE, "down")[0] == 503
    assert cohere_error(None, grpc.StatusCode.DEADLINE_EXCEEDED, "late")[0] == 504
    assert cohere_error(None, grpc.StatusCode.INTERNAL, "bug")[0] == 500
