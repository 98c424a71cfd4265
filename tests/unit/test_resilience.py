"""Retries, the retry budget and the circuit breaker, on a scripted backend and a fake clock.

The backend here is a script of outcomes: the unit under test is the policy around it, and
failures in a chosen order cannot be had from a real gateway.
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
from collections.abc import Iterable
from decimal import Decimal

import pytest

from rerank.server.domain import ModelInfo, Ranked, RerankOutcome, RerankQuery, Usage
from rerank.server.errors import (
    ModelNotFound,
    UpstreamError,
    UpstreamProtocolError,
    UpstreamRateLimited,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from rerank.server.resilience import (
    BreakerState,
    CircuitBreaker,
    ResilientReranker,
    RetryBudget,
    RetryPolicy,
)

QUERY = RerankQuery(model="cohere/rerank-v3.5", query="q", kind="text", documents=("a",))
# As the gateway adapter answers: one gateway call, and the cost it reported.
OK = RerankOutcome(ranking=(Ranked(0, 0.5),), usage=Usage(Decimal("0.002"), upstream_calls=1))


def after(attempts: int) -> RerankOutcome:
    """OK as the caller gets it after `attempts` gateway calls: each one counted, the cost
    that of the one answer (the failed attempts' errors carry none)."""
    return dataclasses.replace(OK, usage=Usage(Decimal("0.002"), upstream_calls=attempts))


class FakeTime:
    def __init__(self) -> None:
        self.now = 1000.0
        self.slept: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


class ScriptedReranker:
    """Answers each call with the next outcome of the script: an error to raise, or OK."""

    def __init__(self, script: Iterable[UpstreamError | None], time: FakeTime) -> None:
        self.script = list(script)
        self.calls: list[float] = []
        self.time = time

    async def rerank(self, query: RerankQuery, *, timeout: float) -> RerankOutcome:
        self.calls.append(timeout)
        outcome = self.script.pop(0)
        if outcome is not None:
            raise outcome
        return OK

    async def list_models(self, *, timeout: float) -> tuple[ModelInfo, ...]:
        raise NotImplementedError

    async def aclose(self) -> None:
        pass


def resilient(
    script: Iterable[UpstreamError | None],
    *,
    max_retries: int = 2,
    budget: RetryBudget | None = None,
    breaker: CircuitBreaker | None = None,
    time: FakeTime | None = None,
) -> tuple[ResilientReranker, ScriptedReranker, FakeTime]:
    time = time or FakeTime()
    inner = ScriptedReranker(script, time)
    wrapper = ResilientReranker(
        inner,
        policy=RetryPolicy(max_retries=max_retries, initial_backoff=0.5, max_backoff=8),
        budget=budget or RetryBudget(),
        breaker=breaker or CircuitBreaker(window=1000, clock=time.clock),
        clock=time.clock,
        sleep=time.sleep,
        rng=random.Random(7),
    )
    return wrapper, inner, time


def down() -> UpstreamUnavailable:
    return UpstreamUnavailable("down", status=503)


async def test_retryable_failures_are_retried_until_success() -> None:
    wrapper, inner, time = resilient([down(), UpstreamRateLimited("slow"), None])
    assert await wrapper.rerank(QUERY, timeout=30) == after(3)
    assert len(inner.calls) == 3
    assert len(time.slept) == 2
    # Full jitter within the exponential bound.
    assert 0 <= time.slept[0] <= 0.5
    assert 0 <= time.slept[1] <= 1.0


async def test_at_most_max_retries() -> None:
    wrapper, inner, _ = resilient([down(), down(), down(), None])
    with pytest.raises(UpstreamUnavailable):
        await wrapper.rerank(QUERY, timeout=30)
    assert len(inner.calls) == 3


@pytest.mark.parametrize(
    "error",
    [
        ModelNotFound("no"),
        UpstreamProtocolError("bad"),
        UpstreamTimeout("late"),
        UpstreamError("odd", status=418),
    ],
)
async def test_other_failures_are_not_retried(error: UpstreamError) -> None:
    wrapper, inner, _ = resilient([error, None])
    with pytest.raises(type(error)):
        await wrapper.rerank(QUERY, timeout=30)
    assert len(inner.calls) == 1


async def test_the_gateways_retry_after_is_honoured() -> None:
    wrapper, _, time = resilient([UpstreamRateLimited("slow", retry_after=3.0), None])
    await wrapper.rerank(QUERY, timeout=30)
    assert time.slept == [3.0]


async def test_no_retry_past_the_deadline() -> None:
    wrapper, inner, time = resilient([UpstreamRateLimited("slow", retry_after=5.0), None])
    with pytest.raises(UpstreamRateLimited):
        await wrapper.rerank(QUERY, timeout=4)
    assert time.slept == []
    assert len(inner.calls) == 1


async def test_each_attempt_gets_only_the_time_left() -> None:
    wrapper, inner, _ = resilient([UpstreamRateLimited("slow", retry_after=2.0), None])
    await wrapper.rerank(QUERY, timeout=10)
    assert inner.calls == [10, 8]


async def test_an_empty_budget_stops_retries() -> None:
    budget = RetryBudget(ratio=0.0, capacity=1)
    wrapper, inner, _ = resilient([down(), None, down(), None], budget=budget)
    assert await wrapper.rerank(QUERY, timeout=30) == after(2)  # spends the only token
    with pytest.raises(UpstreamUnavailable):
        await wrapper.rerank(QUERY, timeout=30)
    assert len(inner.calls) == 3


def test_the_budget_refills_with_traffic() -> None:
    budget = RetryBudget(ratio=0.5, capacity=1)
    assert budget.try_spend()
    assert not budget.try_spend()
    budget.record_attempt()
    assert not budget.try_spend()
    budget.record_attempt()
    assert budget.try_spend()


def attempt(breaker: CircuitBreaker, outcome: UpstreamError | None) -> None:
    breaker.record(outcome, probe=breaker.before_call())


def test_the_breaker_opens_fails_fast_and_recovers_through_one_probe() -> None:
    time = FakeTime()
    changes: list[BreakerState] = []
    breaker = CircuitBreaker(
        failure_rate=0.5, window=4, cooldown=5, clock=time.clock, on_change=changes.append
    )
    for outcome in (down(), None, down()):
        attempt(breaker, outcome)
    assert breaker.state is BreakerState.CLOSED  # the window is not full yet
    attempt(breaker, None)
    assert breaker.state is BreakerState.OPEN  # 2 of the last 4 found it down
    with pytest.raises(UpstreamUnavailable) as caught:
        breaker.before_call()
    assert caught.value.retry_after == pytest.approx(5)
    time.now += 5
    assert breaker.before_call()  # the probe
    assert breaker.state is BreakerState.HALF_OPEN
    with pytest.raises(UpstreamUnavailable):
        breaker.before_call()  # only one probe at a time
    breaker.record(None, probe=True)
    assert breaker.state is BreakerState.CLOSED
    assert not breaker.before_call()
    assert changes == [BreakerState.OPEN, BreakerState.HALF_OPEN, BreakerState.CLOSED]


def test_a_failing_minority_never_opens_it() -> None:
    """One attempt in five failing (a flaky gateway, or a poisonous request retried) leaves
    everyone else's calls alone."""
    breaker = CircuitBreaker(failure_rate=0.5, window=20)
    for i in range(1000):
        attempt(breaker, down() if i % 5 == 0 else None)
    assert breaker.state is BreakerState.CLOSED


def test_a_failed_probe_reopens_the_breaker() -> None:
    time = FakeTime()
    breaker = CircuitBreaker(failure_rate=1.0, window=1, cooldown=5, clock=time.clock)
    attempt(breaker, down())
    time.now += 5
    attempt(breaker, down())
    assert breaker.state is BreakerState.OPEN
    with pytest.raises(UpstreamUnavailable):
        breaker.before_call()


def test_answers_and_timeouts_do_not_count_as_down() -> None:
    breaker = CircuitBreaker(failure_rate=0.75, window=4)
    for outcome in (down(), ModelNotFound("no"), down(), UpstreamTimeout("late"), down()):
        attempt(breaker, outcome)
    # The timeout is not counted; an answer (even a 404) counts as up: 3 of 4 down.
    assert breaker.state is BreakerState.OPEN
    closed = CircuitBreaker(failure_rate=0.75, window=4)
    for outcome in (down(), ModelNotFound("no"), UpstreamRateLimited("slow"), down()):
        attempt(closed, outcome)
    assert closed.state is BreakerState.CLOSED


async def test_the_open_breaker_spares_the_upstream() -> None:
    time = FakeTime()
    breaker = CircuitBreaker(failure_rate=1.0, window=2, cooldown=10, clock=time.clock)
    wrapper, inner, _ = resilient([down()] * 10, max_retries=0, breaker=breaker, time=time)
    for _ in range(5):
        with pytest.raises(UpstreamUnavailable):
            await wrapper.rerank(QUERY, timeout=30)
    assert len(inner.calls) == 2


async def test_a_cancelled_probe_frees_its_slot() -> None:
    time = FakeTime()
    breaker = CircuitBreaker(failure_rate=1.0, window=1, cooldown=1, clock=time.clock)
    attempt(breaker, down())
    time.now += 1

    class Hanging(ScriptedReranker):
        async def rerank(self, query: RerankQuery, *, timeout: float) -> RerankOutcome:
            await asyncio.Event().wait()
            raise AssertionError("unreachable")

    wrapper = ResilientReranker(
        Hanging([], time),
        policy=RetryPolicy(),
        budget=RetryBudget(),
        breaker=breaker,
        clock=time.clock,
        sleep=time.sleep,
    )
    task = asyncio.create_task(wrapper.rerank(QUERY, timeout=30))
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert breaker.before_call()  # a new probe may go
