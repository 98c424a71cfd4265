"""Lean answers (`return_documents`), the send limit that fits every answer an accepted request
can produce, and the typed usage of each answer: a real server over the embedded mock gateway."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator

import grpc
import pytest
from google.rpc import error_details_pb2

from rerank.contract import RESPONSE_EXTRAS_BYTES, max_response_bytes
from rerank.server._app import RunningServer, start_server
from rerank.server._config import Settings
from rerank.v1 import rerank_service_pb2 as pb
from rerank.v1 import rerank_service_pb2_grpc as pb_grpc
from tests.conftest import SEED_DOCUMENTS, SEED_QUERY
from tests.service.calls import MESSAGE_LIMIT, fault, seed_request, struct, unpacked

SETTINGS = Settings(port=0, grace_period=2)


@pytest.fixture
async def serve() -> AsyncIterator[list[RunningServer]]:
    started: list[RunningServer] = []
    yield started
    for running in started:
        await running.stop()


async def stub_of(started: list[RunningServer], settings: Settings) -> pb_grpc.RerankServiceStub:
    running = await start_server(settings)
    started.append(running)
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{running.port}", options=MESSAGE_LIMIT)
    return pb_grpc.RerankServiceStub(channel)


@pytest.fixture
async def stub(serve: list[RunningServer]) -> pb_grpc.RerankServiceStub:
    return await stub_of(serve, SETTINGS)


# --- return_documents ----------------------------------------------------------------------


async def test_without_documents_each_entry_is_its_index_and_score(
    stub: pb_grpc.RerankServiceStub,
) -> None:
    echoed = await stub.Rerank(seed_request(top_n=None, bypass_cache=True), timeout=10)
    lean = await stub.Rerank(
        seed_request(top_n=None, bypass_cache=True, return_documents=False), timeout=10
    )
    assert [(r.original_index, r.score) for r in lean.ranking] == [
        (r.original_index, r.score) for r in echoed.ranking
    ]
    assert len(lean.ranking) == len(SEED_DOCUMENTS)
    assert not any(r.HasField("document") for r in lean.ranking)
    assert all(r.HasField("document") for r in echoed.ranking)
    assert lean.ByteSize() < echoed.ByteSize()


async def test_return_documents_true_echoes_as_unset_does(stub: pb_grpc.RerankServiceStub) -> None:
    response = await stub.Rerank(seed_request(return_documents=True), timeout=10)
    assert [r.document.text for r in response.ranking] == [
        SEED_DOCUMENTS[r.original_index] for r in response.ranking
    ]


async def test_object_documents_are_left_out_too(stub: pb_grpc.RerankServiceStub) -> None:
    objects = [{"text": text, "n": i} for i, text in enumerate(SEED_DOCUMENTS)]
    request = pb.RerankRequest(
        query=SEED_QUERY,
        documents=[pb.Document(object=struct(o)) for o in objects],
        return_documents=False,
    )
    response = await stub.Rerank(request, timeout=10)
    assert response.ranking[0].original_index == 0
    assert not any(r.HasField("document") for r in response.ranking)


async def test_a_cache_hit_honours_each_callers_choice(stub: pb_grpc.RerankServiceStub) -> None:
    """The cache keys the ranking, not the answer's shape: a lean call and an echoed one of
    the same request share it, and each gets the shape it asked for."""
    lean = await stub.Rerank(seed_request(return_documents=False), timeout=10)
    echoed = await stub.Rerank(seed_request(), timeout=10)
    assert (lean.cached, echoed.cached) == (False, True)
    assert not lean.ranking[0].HasField("document")
    assert echoed.ranking[0].document.text == SEED_DOCUMENTS[echoed.ranking[0].original_index]


# --- the send limit ------------------------------------------------------------------------


def documents_filling(limit: int, count: int) -> list[pb.Document]:
    """`count` text documents whose request comes within a few bytes of `limit`."""
    # Each entry costs its text plus at most 8 bytes of tags and lengths; the last one makes up
    # the difference.
    room = limit - 64 - seed_request(documents=[], top_n=None).ByteSize()
    words = (room // count - 16) // 8
    documents = [pb.Document(text=f"{i:05d} " + "capital " * words) for i in range(count)]
    shortfall = limit - 64 - seed_request(documents=documents, top_n=None).ByteSize()
    assert shortfall >= 0
    documents[-1] = pb.Document(text=documents[-1].text + "x" * shortfall)
    return documents


async def test_an_answer_echoing_a_request_near_the_receive_limit_is_sent(
    serve: list[RunningServer],
) -> None:
    """Every document echoed, each with its index and score: more than the request itself. The
    send limit is sized for it, so the answer arrives rather than failing after the gateway
    has ranked (and billed) the request."""
    limit = 1024 * 1024
    settings = dataclasses.replace(SETTINGS, max_message_bytes=limit, max_documents=1000)
    stub = await stub_of(serve, settings)
    request = seed_request(documents=documents_filling(limit, 1000), top_n=None)
    assert limit - 100 < request.ByteSize() <= limit
    response = await stub.Rerank(request, timeout=30)
    assert len(response.ranking) == 1000
    assert response.ByteSize() > limit
    for ranked in response.ranking:
        assert ranked.document == request.documents[ranked.original_index]


async def test_a_batch_near_the_receive_limit_is_answered_with_every_document_echoed(
    serve: list[RunningServer],
) -> None:
    """The same for BatchRerank, where it is harder: its requests together fit the receive
    limit, but each answer has its own ranked entries, extras and wrapping. Many requests of
    many short documents make an answer several times the request, beyond what one Rerank's
    allowance would cover."""
    limit = 1024 * 1024
    settings = dataclasses.replace(SETTINGS, max_message_bytes=limit, max_documents=2000)
    stub = await stub_of(serve, settings)
    documents = [pb.Document(text=f"{i}") for i in range(2000)]
    one = seed_request(documents=documents, top_n=None)
    requests = [one] * (limit // (one.ByteSize() + 4))
    batch = pb.BatchRerankRequest(requests=requests)
    assert limit - one.ByteSize() < batch.ByteSize() <= limit
    response = await stub.BatchRerank(batch, timeout=60)
    one_answers_allowance = max_response_bytes(limit, 2000)
    assert response.ByteSize() > one_answers_allowance
    for result in response.results:
        assert result.WhichOneof("result") == "response", result.error
        assert len(result.response.ranking) == 2000
        assert all(r.document == documents[r.original_index] for r in result.response.ranking)


async def test_over_the_receive_limit_is_refused_by_grpc(serve: list[RunningServer]) -> None:
    """The one size refusal that remains comes before the gateway is asked."""
    limit = 64 * 1024
    stub = await stub_of(serve, dataclasses.replace(SETTINGS, max_message_bytes=limit))
    request = seed_request(documents=documents_filling(limit + 1000, 10), top_n=None)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.Rerank(request, timeout=10)
    assert caught.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED


async def test_warnings_beyond_what_an_answer_carries_are_the_gateways_fault(
    stub: pb_grpc.RerankServiceStub,
) -> None:
    huge = "x" * (RESPONSE_EXTRAS_BYTES + 1)
    request = seed_request(provider_options=fault(fault="warning", type="other", message=huge))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.Rerank(request, timeout=30)
    assert caught.value.code() is grpc.StatusCode.INTERNAL
    assert unpacked(caught.value, error_details_pb2.ErrorInfo).reason == "UPSTREAM_PROTOCOL_ERROR"
    assert f"at most {RESPONSE_EXTRAS_BYTES}" in (caught.value.details() or "")


# --- usage ---------------------------------------------------------------------------------


async def test_usage_is_the_gateways_cost_and_calls(stub: pb_grpc.RerankServiceStub) -> None:
    response = await stub.Rerank(seed_request(), timeout=10)
    assert response.usage == pb.Usage(cost="0.002", upstream_calls=1)
    # The same figure the provider metadata shows, typed.
    assert response.provider_metadata["gateway"]["cost"] == response.usage.cost


async def test_a_cache_hit_is_free_and_makes_no_call(stub: pb_grpc.RerankServiceStub) -> None:
    await stub.Rerank(seed_request(), timeout=10)
    hit = await stub.Rerank(seed_request(), timeout=10)
    assert hit.cached
    assert hit.usage == pb.Usage(cost="0", upstream_calls=0)


async def test_no_documents_is_free_and_makes_no_call(stub: pb_grpc.RerankServiceStub) -> None:
    response = await stub.Rerank(seed_request(documents=[]), timeout=10)
    assert response.HasField("usage")
    assert response.usage == pb.Usage(cost="0", upstream_calls=0)


async def test_every_retried_attempt_is_counted(serve: list[RunningServer]) -> None:
    fast = dataclasses.replace(SETTINGS, retry_initial_backoff=0.01, retry_max_backoff=0.05)
    stub = await stub_of(serve, fast)
    retried = seed_request(
        provider_options=fault(fault="rate_limit", retryAfterMs=10, times=2, key="usage-retries")
    )
    response = await stub.Rerank(retried, timeout=10)
    # Two refusals, then the answer: three gateway calls, and only the answer had a cost.
    assert response.usage == pb.Usage(cost="0.002", upstream_calls=3)
