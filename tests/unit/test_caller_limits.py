"""The caller-limits layer on an injected clock, the caller's name in the gateway's options,
and the cache's scope per caller."""

from __future__ import annotations

import asyncio
import dataclasses
from datetime import UTC, datetime
from decimal import Decimal

import pytest

from rerank.server._cache import cache_key
from rerank.server._caller_limits import CallerLimitsReranker
from rerank.server._domain import (
    FREE,
    Caller,
    ModelInfo,
    Ranked,
    RerankOutcome,
    RerankQuery,
    Usage,
    on_behalf_of,
)
from rerank.server._errors import (
    CallerBudgetExhausted,
    CallerRateLimited,
    ModelNotAllowed,
    UpstreamUnavailable,
)
from rerank.server._limits import CallerLimits, InMemoryLimitStore
from tests.fake_clock import FakeClock

NOON = datetime(2026, 3, 14, 12, tzinfo=UTC).timestamp()
QUERY = RerankQuery(model="cohere/rerank-v3.5", query="q", kind="text", documents=("a", "b"))


class Backend:
    """A reranker answering with a set cost, or failing, or waiting until released."""

    def __init__(self, cost: str | None = "0.001") -> None:
        self.cost = cost
        self.calls = 0
        self.fail: Exception | None = None
        self.cached = False
        self.release: asyncio.Event | None = None
        self.entered = asyncio.Event()

    async def rerank(self, query: RerankQuery, *, timeout: float) -> RerankOutcome:
        self.calls += 1
        self.entered.set()
        if self.release is not None:
            await self.release.wait()
        if self.fail is not None:
            raise self.fail
        usage = Usage(None if self.cost is None else Decimal(self.cost), upstream_calls=1)
        return RerankOutcome(
            ranking=(Ranked(0, 0.9), Ranked(1, 0.1)),
            cached=self.cached,
            usage=FREE if self.cached else usage,
        )

    async def list_models(self, *, timeout: float) -> tuple[ModelInfo, ...]:
        return ()

    async def aclose(self) -> None:
        pass


def layer(backend: Backend, clock: FakeClock | None = None) -> CallerLimitsReranker:
    return CallerLimitsReranker(backend, InMemoryLimitStore(), clock=clock or FakeClock(NOON))


def as_caller(name: str = "search-api", **limits: object) -> RerankQuery:
    caller = Caller(name=name, limits=CallerLimits(**limits))  # type: ignore[arg-type]
    return on_behalf_of(QUERY, caller)


async def test_calls_without_a_named_caller_pass_untouched() -> None:
    backend = Backend()
    limited = layer(backend)
    for _ in range(20):
        await limited.rerank(QUERY, timeout=5)
    assert backend.calls == 20


async def test_a_model_outside_the_callers_globs_is_refused_before_anything() -> None:
    backend = Backend()
    limited = layer(backend)
    caller = Caller(name="search-api", models=("voyage/*",))
    with pytest.raises(ModelNotAllowed) as caught:
        await limited.rerank(on_behalf_of(QUERY, caller), timeout=5)
    assert caught.value.metadata == {"caller": "search-api", "model": "cohere/rerank-v3.5"}
    assert caught.value.retry_after is None
    assert "voyage/*" in caught.value.message
    assert backend.calls == 0
    # Not a call: nothing is counted.
    assert (await limited.usage(caller)).calls == 0


async def test_over_the_rate_is_refused_with_when_to_retry() -> None:
    backend, clock = Backend(), FakeClock(NOON)
    limited = layer(backend, clock)
    query = as_caller(requests_per_second=2, burst=2)
    await limited.rerank(query, timeout=5)
    await limited.rerank(query, timeout=5)
    with pytest.raises(CallerRateLimited) as caught:
        await limited.rerank(query, timeout=5)
    assert caught.value.reason == "CALLER_RATE_LIMITED"
    assert caught.value.retry_after == pytest.approx(0.5)
    assert "2 calls per second" in caught.value.message
    assert backend.calls == 2
    clock.advance(0.5)
    await limited.rerank(query, timeout=5)
    assert backend.calls == 3


async def test_over_the_concurrent_calls_is_refused_until_one_ends() -> None:
    backend = Backend()
    backend.release = asyncio.Event()
    limited = layer(backend)
    query = as_caller(max_concurrent_calls=1)
    first = asyncio.ensure_future(limited.rerank(query, timeout=5))
    await backend.entered.wait()
    with pytest.raises(CallerRateLimited) as caught:
        await limited.rerank(query, timeout=5)
    assert "its limit of 1 call in flight" in caught.value.message
    backend.release.set()
    await first
    await limited.rerank(query, timeout=5)


async def test_a_failed_or_cancelled_call_gives_its_lease_back() -> None:
    backend = Backend()
    limited = layer(backend)
    query = as_caller(max_concurrent_calls=1)
    backend.fail = UpstreamUnavailable("down")
    with pytest.raises(UpstreamUnavailable):
        await limited.rerank(query, timeout=5)
    backend.fail, backend.release = None, asyncio.Event()
    hung = asyncio.ensure_future(limited.rerank(query, timeout=5))
    await backend.entered.wait()
    hung.cancel()
    with pytest.raises(asyncio.CancelledError):
        await hung
    backend.release.set()
    await limited.rerank(query, timeout=5)  # the slot is free again


async def test_the_budget_is_charged_exactly_and_refuses_until_midnight() -> None:
    backend, clock = Backend(cost="0.001"), FakeClock(NOON)
    limited = layer(backend, clock)
    query = as_caller(daily_budget_usd=Decimal("0.0025"))
    for _ in range(3):
        await limited.rerank(query, timeout=5)
    with pytest.raises(CallerBudgetExhausted) as caught:
        await limited.rerank(query, timeout=5)
    assert caught.value.retry_after == 12 * 3600
    assert caught.value.metadata == {"caller": "search-api", "daily_budget_usd": "0.0025"}
    assert "00:00 UTC" in caught.value.message
    usage = await limited.usage(query.caller)  # type: ignore[arg-type]
    assert (usage.spent_usd, usage.calls, usage.refused) == (Decimal("0.003"), 3, 1)
    clock.advance(12 * 3600)
    await limited.rerank(query, timeout=5)


async def test_a_cached_answer_is_a_call_that_costs_nothing() -> None:
    backend = Backend(cost="0.5")
    backend.cached = True
    limited = layer(backend)
    query = as_caller(daily_budget_usd=Decimal("0.1"))
    for _ in range(5):
        await limited.rerank(query, timeout=5)
    usage = await limited.usage(query.caller)  # type: ignore[arg-type]
    assert (usage.spent_usd, usage.calls) == (Decimal(0), 5)


async def test_a_cost_the_gateway_did_not_report_is_charged_as_nothing() -> None:
    backend = Backend(cost=None)
    limited = layer(backend)
    query = as_caller(daily_budget_usd=Decimal("0.001"))
    for _ in range(3):
        await limited.rerank(query, timeout=5)
    usage = await limited.usage(query.caller)  # type: ignore[arg-type]
    assert (usage.spent_usd, usage.calls) == (Decimal(0), 3)


def test_the_callers_name_replaces_any_gateway_user() -> None:
    sneaky = dataclasses.replace(
        QUERY, provider_options={"gateway": {"user": "someone-else", "order": ["cohere"]}}
    )
    sent = on_behalf_of(sneaky, Caller(name="search-api"))
    assert sent.provider_options == {"gateway": {"user": "search-api", "order": ["cohere"]}}
    assert on_behalf_of(QUERY, Caller(name="batch")).provider_options == {
        "gateway": {"user": "batch"}
    }
    # The request itself is left as it was.
    assert sneaky.provider_options == {"gateway": {"user": "someone-else", "order": ["cohere"]}}


def test_each_named_caller_has_a_cache_of_its_own_unless_it_shares() -> None:
    alone_a = on_behalf_of(QUERY, Caller(name="a"))
    alone_b = on_behalf_of(QUERY, Caller(name="b"))
    shared_a = on_behalf_of(QUERY, Caller(name="a", shared_cache=True))
    shared_b = on_behalf_of(QUERY, Caller(name="b", shared_cache=True))
    assert cache_key(alone_a) != cache_key(alone_b)
    assert cache_key(alone_a) == cache_key(on_behalf_of(QUERY, Caller(name="a")))
    assert cache_key(shared_a) == cache_key(shared_b)
    assert cache_key(shared_a) != cache_key(alone_a)
    # Unnamed callers share one cache, as before, apart from every named one.
    assert cache_key(QUERY) == cache_key(dataclasses.replace(QUERY))
    assert cache_key(QUERY) not in {cache_key(alone_a), cache_key(alone_b)}
    # What decides the ranking still decides the key of a shared caller.
    other = dataclasses.replace(QUERY, query="another")
    assert cache_key(on_behalf_of(other, Caller(name="a", shared_cache=True))) != cache_key(
        shared_a
    )
