"""The composition layer: the real chain — admission → validation → result cache → windows →
retries and circuit breaker → gateway adapter — against the mock gateway over loopback, for the
promises that only hold (or break) where two of those parts meet.

Each part has its own unit tests; here nothing is faked. Faults come from the mock itself
(`providerOptions.mockGateway`), or, where the mock cannot say it, from a scripted HTTP server.
Tests wait on the chain's own counters by polling, never by sleeping a guessed time.
"""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import grpc
import orjson
import pytest
from google.rpc import error_details_pb2

from rerank.server._app import RunningServer
from rerank.server._cache import CachingReranker
from rerank.server._config import Settings, Upstream
from rerank.server._domain import RerankQuery, Usage
from rerank.v1 import rerank_service_pb2 as pb
from rerank.v1 import rerank_service_pb2_grpc as pb_grpc
from tests.conftest import SEED_DOCUMENTS, SEED_MODEL, SEED_QUERY
from tests.scripted_http import Reply, Request, ScriptedServer
from tests.service.calls import MESSAGE_LIMIT, fault, seed_request, unpacked
from tests.service.conftest import StartServer
from tools.waiting import until_async

# Quick retries keep the tests fast; the policy is the same.
FAST = Settings(port=0, grace_period=2, retry_initial_backoff=0.01, retry_max_backoff=0.05)


@pytest.fixture
def serve(servers: StartServer) -> StartServer:
    """`servers`, with FAST settings unless told otherwise."""
    return lambda settings=FAST, **kwargs: servers(settings, **kwargs)


@pytest.fixture
async def running(serve: Callable[..., Any]) -> RunningServer:
    server: RunningServer = await serve()
    return server


@pytest.fixture
def stub(running: RunningServer, channels: list[grpc.aio.Channel]) -> Any:
    return stub_for(running, channels)


def stub_for(running: RunningServer, channels: list[grpc.aio.Channel]) -> Any:
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{running.port}", options=MESSAGE_LIMIT)
    channels.append(channel)
    return pb_grpc.RerankServiceStub(channel)


def cache_of(running: RunningServer) -> CachingReranker:
    """The outermost layer of the production chain, whose counters show what it did."""
    assert isinstance(running.reranker, CachingReranker)
    return running.reranker


def once(**spec: Any) -> dict[str, Any]:
    """Provider options for a mock fault that hits only the first request carrying them."""
    return fault(times=1, key=uuid.uuid4().hex, **spec)


def cost_of(response: pb.RerankResponse) -> Decimal | None:
    gateway = response.provider_metadata.fields.get("gateway")
    if gateway is None or "cost" not in gateway.struct_value.fields:
        return None
    return Decimal(gateway.struct_value.fields["cost"].string_value)


def texts(count: int) -> list[str]:
    return [
        f"passage {i} about {'capital cities' if i % 97 == 0 else 'rivers'}" for i in range(count)
    ]


def large_request(documents: list[str], **changes: Any) -> pb.RerankRequest:
    return pb.RerankRequest(
        model=SEED_MODEL,
        query="which capital cities",
        documents=[pb.Document(text=t) for t in documents],
        top_n=5,
        **changes,
    )


# --- item 1: the cache keeps only what a caller would get as OK ------------------------------


@pytest.mark.parametrize("variant", ["index_out_of_range", "duplicate_index", "negative_index"])
@pytest.mark.parametrize("documents", [3, 2500], ids=["one-call", "windowed"])
async def test_a_refused_answer_is_never_cached(stub: Any, variant: str, documents: int) -> None:
    """The gateway's one bad answer is refused with INTERNAL; the same request again reaches
    the (now healthy) gateway instead of replaying the refusal from the cache."""
    options = once(fault="malformed", variant=variant)
    if documents == 3:
        request = seed_request(provider_options=options)
    else:
        request = large_request(texts(documents))
        request.provider_options.update(options)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.Rerank(request, timeout=20)
    assert caught.value.code() is grpc.StatusCode.INTERNAL
    again = await stub.Rerank(request, timeout=20)
    assert not again.cached
    third = await stub.Rerank(request, timeout=20)
    assert third.cached
    assert list(third.ranking) == list(again.ranking)


@pytest.mark.parametrize("variant", ["unsorted", "too_many"])
async def test_a_sloppy_answer_is_cached_as_the_caller_got_it(stub: Any, variant: str) -> None:
    """An unsorted or over-long ranking is sorted and cut, and the cache then serves exactly
    that: a hit ranks the same as the miss did."""
    request = seed_request(top_n=2, provider_options=once(fault="malformed", variant=variant))
    first = await stub.Rerank(request, timeout=10)
    hit = await stub.Rerank(request, timeout=10)
    assert (first.cached, hit.cached) == (False, True)
    assert [r.original_index for r in first.ranking] == [0, 1]
    assert list(hit.ranking) == list(first.ranking)


# --- item 2: a shared call lives as long as its longest waiter -------------------------------


async def test_a_shared_call_outlives_the_first_callers_deadline(
    running: RunningServer, stub: Any
) -> None:
    """A (short deadline) and B (long deadline) share one slow gateway call: A ends at its
    deadline, B still gets the answer, and the gateway was asked once."""
    cache = cache_of(running)
    request = seed_request(provider_options=fault(fault="slow", delayMs=1500, key=uuid.uuid4().hex))
    short = asyncio.ensure_future(stub.Rerank(request, timeout=0.5))
    await until_async(lambda: cache.misses == 1, "A's call in flight")
    long = asyncio.ensure_future(stub.Rerank(request, timeout=20))
    await until_async(lambda: cache.hits == 1, "B joined A's call")
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await short
    assert caught.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
    answer = await long
    assert answer.ranking[0].original_index == 0
    assert cache.misses == 1  # one gateway call for both
    # A left before the answer came: B is the caller that got it, so B carries its cost.
    assert not answer.cached
    assert cost_of(answer) == Decimal("0.002")


async def test_a_caller_alone_still_ends_at_its_deadline(stub: Any) -> None:
    request = seed_request(provider_options=fault(fault="slow", delayMs=3000, key=uuid.uuid4().hex))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.Rerank(request, timeout=0.3)
    assert caught.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED


@pytest.mark.parametrize("bypass", [True, False], ids=["own-call", "shared-call"])
async def test_where_retries_are_planned(stub: Any, bypass: bool) -> None:
    """The documented trade-off (docs/design/guarantees.md, "Usage"): a call of its own plans
    retries against its deadline and gets the gateway's error at once when the retry cannot
    fit; a shared call plans them against the upstream timeout, since later callers may wait
    longer, so a caller whose deadline comes first ends at its deadline."""
    request = seed_request(
        bypass_cache=bypass, provider_options=once(fault="rate_limit", retryAfterMs=5000)
    )
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.Rerank(request, timeout=1)
    expected = grpc.StatusCode.RESOURCE_EXHAUSTED if bypass else grpc.StatusCode.DEADLINE_EXCEEDED
    assert caught.value.code() is expected


# --- item 9 and usage: every window's cost, once per call ------------------------------------


async def test_a_windowed_call_reports_the_cost_of_every_window(stub: Any) -> None:
    documents = texts(2500)  # windows of 1,000, 1,000 and 500
    response = await stub.Rerank(large_request(documents), timeout=30)
    # The oracle: each window's documents asked alone, through the same chain.
    each = [
        cost_of(await stub.Rerank(large_request(documents[start : start + 1000]), timeout=30))
        for start in range(0, 2500, 1000)
    ]
    assert None not in each
    assert cost_of(response) == sum(c for c in each if c is not None)
    assert set(response.provider_metadata.fields) == {"gateway", "mock"}  # the gateway's entries
    # Typed: the same total, and one gateway call per window.
    assert Decimal(response.usage.cost) == cost_of(response)
    assert response.usage.upstream_calls == 3


async def test_a_cache_hit_costs_nothing(stub: Any) -> None:
    first = await stub.Rerank(seed_request(), timeout=10)
    hit = await stub.Rerank(seed_request(), timeout=10)
    assert (first.cached, hit.cached) == (False, True)
    assert cost_of(first) == Decimal("0.002")
    assert cost_of(hit) == Decimal(0)


async def test_a_shared_call_is_charged_once(running: RunningServer, stub: Any) -> None:
    cache = cache_of(running)
    request = seed_request(provider_options=fault(fault="slow", delayMs=500, key=uuid.uuid4().hex))
    first = asyncio.ensure_future(stub.Rerank(request, timeout=20))
    await until_async(lambda: cache.misses == 1, "the first call in flight")
    second = asyncio.ensure_future(stub.Rerank(request, timeout=20))
    await until_async(lambda: cache.hits == 1, "the second call joined it")
    answers = [await first, await second]
    charged = [a for a in answers if not a.cached]
    assert len(charged) == 1
    assert [cost_of(a) for a in answers] == [
        Decimal("0.002") if a is charged[0] else Decimal(0) for a in answers
    ]
    assert [a.usage for a in answers] == [
        pb.Usage(cost="0.002", upstream_calls=1)
        if a is charged[0]
        else pb.Usage(cost="0", upstream_calls=0)
        for a in answers
    ]


def chain_query(**changes: Any) -> RerankQuery:
    query = RerankQuery(
        model=SEED_MODEL, query=SEED_QUERY, kind="text", documents=SEED_DOCUMENTS, top_n=2
    )
    return dataclasses.replace(query, **changes)


async def test_the_usage_record_counts_every_attempt_and_window(running: RunningServer) -> None:
    """The record later issues read (metrics, budgets), straight off the production chain."""
    chain = running.reranker
    retried = chain_query(
        provider_options=fault(fault="rate_limit", retryAfterMs=10, times=2, key=uuid.uuid4().hex)
    )
    outcome = await chain.rerank(retried, timeout=10)
    # Two refusals and the answer: three gateway calls; only the answer carried a cost.
    assert outcome.usage == Usage(cost=Decimal("0.002"), upstream_calls=3)
    assert (await chain.rerank(retried, timeout=10)).usage == Usage(Decimal(0), 0)
    bypassed = await chain.rerank(dataclasses.replace(retried, cacheable=False), timeout=10)
    assert bypassed.usage == Usage(Decimal("0.002"), 1)

    windowed = chain_query(documents=tuple(texts(2500)), top_n=5)
    usage = (await chain.rerank(windowed, timeout=30)).usage
    assert usage.upstream_calls == 3
    window_costs = []
    for start in range(0, 2500, 1000):
        window = chain_query(documents=tuple(texts(2500)[start : start + 1000]), top_n=5)
        window_costs.append((await chain.rerank(window, timeout=30)).usage.cost)
    assert None not in window_costs
    assert usage.cost == sum(c for c in window_costs if c is not None)


async def test_a_cost_the_gateway_did_not_report_is_unknown_not_zero(
    serve: Callable[..., Any], channels: list[grpc.aio.Channel]
) -> None:
    """A gateway that reports the cost of some windows only: the call's total is unknown, so
    the caller sees no `gateway.cost` at all rather than an under-count."""

    async def rank_all(request: Request) -> Reply:
        values = orjson.loads(request.body)["documents"]["values"]
        body: dict[str, Any] = {
            "ranking": [{"index": i, "relevanceScore": 0.5} for i in range(len(values))]
        }
        if values[0] == "d0":  # the first window says what it cost; the others do not
            body["providerMetadata"] = {"gateway": {"cost": "0.01"}, "other": {"x": 1}}
        return Reply(body=orjson.dumps(body))

    async with ScriptedServer(rank_all) as upstream:
        settings = dataclasses.replace(
            FAST,
            upstream=Upstream.GATEWAY,
            gateway_url=upstream.url,
            api_key="k",
            window_sizes={"cohere": 2},
        )
        running = await serve(settings)
        documents = tuple(f"d{i}" for i in range(5))
        outcome = await running.reranker.rerank(chain_query(documents=documents), timeout=10)
        assert outcome.usage == Usage(cost=None, upstream_calls=3)
        stub = stub_for(running, channels)
        request = seed_request(
            documents=[pb.Document(text=d) for d in documents], bypass_cache=True
        )
        response = await stub.Rerank(request, timeout=10)
        assert cost_of(response) is None
        assert "other" in response.provider_metadata.fields  # the gateway's other entries stay
        # Typed, unknown is the empty string: never "0", which would read as free.
        assert response.usage == pb.Usage(cost="", upstream_calls=3)


async def test_metadata_numbers_beyond_64_bits_pass_the_cache_and_beyond_a_double_fail_clearly(
    serve: Callable[..., Any], channels: list[grpc.aio.Channel]
) -> None:
    """The gateway's metadata is JSON of any size: an integer wider than 64 bits is stored by
    the cache and answered (as the double a Struct holds); one no double holds is the gateway's
    protocol error, not an incident."""
    numbers = {"wide": b"1180591620717411303424", "huge": b"1" + b"0" * 400}  # 2**70, 10**400

    async def answer(request: Request) -> Reply:
        sent = orjson.loads(request.body)
        ranking = [
            {"index": i, "relevanceScore": 0.5} for i in range(len(sent["documents"]["values"]))
        ]
        metadata = b'{"p":{"n":' + numbers[sent["query"]] + b"}}"
        return Reply(
            body=orjson.dumps({"ranking": ranking})[:-1] + b',"providerMetadata":' + metadata + b"}"
        )

    async with ScriptedServer(answer) as upstream:
        settings = dataclasses.replace(
            FAST, upstream=Upstream.GATEWAY, gateway_url=upstream.url, api_key="k"
        )
        running = await serve(settings)
        stub = stub_for(running, channels)
        for _ in range(2):  # from the gateway, then from the cache
            response = await stub.Rerank(seed_request(query="wide"), timeout=10)
            assert response.provider_metadata["p"]["n"] == 2.0**70
        assert len(upstream.requests) == 1
        assert cache_of(running).hits == 1
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.Rerank(seed_request(query="huge"), timeout=10)
        assert caught.value.code() is grpc.StatusCode.INTERNAL
        info = unpacked(caught.value, error_details_pb2.ErrorInfo)
        assert info.reason == "UPSTREAM_PROTOCOL_ERROR"
        assert "beyond a double's range" in (caught.value.details() or "")
