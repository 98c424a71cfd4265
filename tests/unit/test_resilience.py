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

from rerank.server._breaker import BreakerState, CircuitBreaker, CircuitOpen
from rerank.server._domain import ModelInfo, Ranked, RerankOutcome, RerankQuery, Usage
from rerank.server._errors import (
    ModelNotFound,
    UpstreamError,
    UpstreamProtocolError,
    UpstreamRateLimited,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from rerank.server._resilience import ResilientReranker, RetryBudget, RetryPolicy, found_down
from rerank.server._windows import WindowedReranker, WindowPolicy
from tests.fake_clock import FakeClock

QUERY = RerankQuery(model="cohere/rerank-v3.5", query="q", kind="text", documents=("a",))
# As the gateway adapter answers: one gateway call, and the cost it reported.
OK = RerankOutcome(ranking=(Ranked(0, 0.5),), usage=Usage(Decimal("0.002"), upstream_calls=1))


def after(attempts: int) -> RerankOutcome:
    """OK as the caller gets it after `attempts` gateway calls: each one counted, the cost
    that of the one answer (the failed attempts' errors carry none)."""
    return dataclasses.replace(OK, usage=Usage(Decimal("0.002"), upstream_calls=attempts))


class ScriptedReranker:
    """Answers each call with the next outcome of the script: an error to raise, or OK."""

    def __init__(self, script: Iterable[UpstreamError | None]) -> None:
        self.script = list(script)
        self.calls: list[float] = []

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
    clock: FakeClock | None = None,
) -> tuple[ResilientReranker, ScriptedReranker, FakeClock]:
    clock = clock or FakeClock(1000.0)
    inner = ScriptedReranker(script)
    wrapper = ResilientReranker(
        inner,
        policy=RetryPolicy(max_retries=max_retries, initial_backoff=0.5, max_backoff=8),
        budget=budget or RetryBudget(),
        breaker=breaker or CircuitBreaker(window=1000, clock=clock),
        clock=clock,
        sleep=clock.sleep,
        rng=random.Random(7),
    )
    return wrapper, inner, clock


def down() -> UpstreamUnavailable:
    return UpstreamUnavailable("down", status=503)


async def test_retryable_failures_are_retried_until_success() -> None:
    wrapper, inner, clock = resilient([down(), UpstreamRateLimited("slow"), None])
    assert await wrapper.rerank(QUERY, timeout=30) == after(3)
    assert len(inner.calls) == 3
    assert len(clock.slept) == 2
    # Full jitter within the exponential bound.
    assert 0 <= clock.slept[0] <= 0.5
    assert 0 <= clock.slept[1] <= 1.0


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
    wrapper, _, clock = resilient([UpstreamRateLimited("slow", retry_after=3.0), None])
    await wrapper.rerank(QUERY, timeout=30)
    assert clock.slept == [3.0]


async def test_no_retry_past_the_deadline() -> None:
    wrapper, inner, clock = resilient([UpstreamRateLimited("slow", retry_after=5.0), None])
    with pytest.raises(UpstreamRateLimited):
        await wrapper.rerank(QUERY, timeout=4)
    assert clock.slept == []
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
    breaker.record(found_down(outcome), probe=breaker.before_call())


def test_the_breaker_opens_fails_fast_and_recovers_through_one_probe() -> None:
    clock = FakeClock(1000.0)
    changes: list[BreakerState] = []
    breaker = CircuitBreaker(
        failure_rate=0.5, window=4, cooldown=5, clock=clock, on_change=changes.append
    )
    for outcome in (down(), None, down()):
        attempt(breaker, outcome)
    assert breaker.state is BreakerState.CLOSED  # the window is not full yet
    attempt(breaker, None)
    assert breaker.state is BreakerState.OPEN  # 2 of the last 4 found it down
    with pytest.raises(CircuitOpen) as caught:
        breaker.before_call()
    assert caught.value.retry_after == pytest.approx(5)
    clock.advance(5)
    assert breaker.before_call()  # the probe
    assert breaker.state is BreakerState.HALF_OPEN
    with pytest.raises(CircuitOpen):
        breaker.before_call()  # only one probe at a time
    breaker.record(found_down(None), probe=True)
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
    clock = FakeClock(1000.0)
    breaker = CircuitBreaker(failure_rate=1.0, window=1, cooldown=5, clock=clock)
    attempt(breaker, down())
    clock.advance(5)
    attempt(breaker, down())
    assert breaker.state is BreakerState.OPEN
    with pytest.raises(CircuitOpen):
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
    clock = FakeClock(1000.0)
    breaker = CircuitBreaker(failure_rate=1.0, window=2, cooldown=10, clock=clock)
    wrapper, inner, _ = resilient([down()] * 10, max_retries=0, breaker=breaker, clock=clock)
    for _ in range(5):
        with pytest.raises(UpstreamUnavailable):
            await wrapper.rerank(QUERY, timeout=30)
    assert len(inner.calls) == 2


class GatedGateway(ScriptedReranker):
    """A healthy gateway whose calls take as long as the test says: each waits for `answer`."""

    def __init__(self) -> None:
        super().__init__([])
        self.called = asyncio.Event()
        self.answer = asyncio.Event()

    async def rerank(self, query: RerankQuery, *, timeout: float) -> RerankOutcome:
        self.calls.append(timeout)
        self.called.set()
        await self.answer.wait()
        return RerankOutcome(ranking=tuple(Ranked(i, 0.5) for i in range(len(query.documents))))


def breaker_telling_when_closed(
    clock: FakeClock, *, cooldown: float
) -> tuple[CircuitBreaker, asyncio.Event]:
    """A breaker that one failure opens, and an event set when it closes."""
    closed = asyncio.Event()
    breaker = CircuitBreaker(
        failure_rate=1.0,
        window=1,
        cooldown=cooldown,
        clock=clock,
        on_change=lambda state: closed.set() if state is BreakerState.CLOSED else None,
    )
    return breaker, closed


async def half_open_with_a_probe_whose_caller_left(
    clock: FakeClock, breaker: CircuitBreaker, budget: RetryBudget | None = None
) -> tuple[ResilientReranker, GatedGateway]:
    """A wrapper whose probe is in flight at a gateway that has not answered yet, its caller
    cancelled."""
    attempt(breaker, down())
    clock.advance(1)
    gateway = GatedGateway()
    wrapper = ResilientReranker(
        gateway,
        policy=RetryPolicy(),
        budget=budget or RetryBudget(),
        breaker=breaker,
        clock=clock,
        sleep=clock.sleep,
    )
    task = asyncio.create_task(wrapper.rerank(QUERY, timeout=30))
    await asyncio.wait_for(gateway.called.wait(), 5)  # the probe is at the gateway
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    return wrapper, gateway


async def test_a_probe_whose_caller_left_still_decides() -> None:
    clock = FakeClock(1000.0)
    breaker, closed = breaker_telling_when_closed(clock, cooldown=1)
    _, gateway = await half_open_with_a_probe_whose_caller_left(clock, breaker)
    with pytest.raises(CircuitOpen):
        breaker.before_call()  # the probe is still the one in flight
    gateway.answer.set()
    await asyncio.wait_for(closed.wait(), 5)
    assert not breaker.before_call()


async def test_closing_cancels_a_probe_whose_caller_left() -> None:
    clock = FakeClock(1000.0)
    breaker = CircuitBreaker(failure_rate=1.0, window=1, cooldown=1, clock=clock)
    wrapper, _ = await half_open_with_a_probe_whose_caller_left(clock, breaker)
    await wrapper.aclose()
    assert not [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    assert breaker.before_call()  # its slot is free again, for what it is worth


async def test_reset_forgets_the_circuit_and_the_budget() -> None:
    """What the testing kit does between tests: as if no call had ever been made."""
    clock = FakeClock(1000.0)
    breaker, _ = breaker_telling_when_closed(clock, cooldown=1)
    budget = RetryBudget(ratio=0.0, capacity=1)
    assert budget.try_spend()
    wrapper, _ = await half_open_with_a_probe_whose_caller_left(clock, breaker, budget)
    await wrapper.reset()
    assert not [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    assert breaker.state is BreakerState.CLOSED
    assert not breaker.before_call()
    assert budget.try_spend()


# --- the breaker under windows: one request, several attempts at once -----------------------


async def test_large_requests_close_a_half_open_circuit() -> None:
    """Window 1 of a large request takes the half-open circuit's one probe
    slot and windows 2-4 are refused ("calls are paused"); that failure cancels window 1. The
    probe's verdict must still be reached, or the circuit stays half-open for as long as only
    large requests come: with the gateway healthy again, the next large request must pass."""
    clock = FakeClock(1000.0)
    breaker, closed = breaker_telling_when_closed(clock, cooldown=5)
    attempt(breaker, down())
    assert breaker.state is BreakerState.OPEN
    clock.advance(5)  # the cool-down is over, and the gateway is healthy again
    gateway = GatedGateway()
    windowed = WindowedReranker(
        ResilientReranker(
            gateway,
            policy=RetryPolicy(),
            budget=RetryBudget(),
            breaker=breaker,
            clock=clock,
            sleep=clock.sleep,
        ),
        WindowPolicy(default_size=10, parallelism=4),
    )
    large = dataclasses.replace(QUERY, model="jina/x", documents=tuple(f"d{i}" for i in range(40)))

    # The probe is in flight (window 1 waits for its answer) when windows 2-4 are refused.
    with pytest.raises(UpstreamUnavailable, match="paused"):
        await windowed.rerank(large, timeout=30)
    assert len(gateway.calls) == 1
    gateway.answer.set()  # the gateway answers the probe
    await asyncio.wait_for(closed.wait(), 5)
    assert len((await windowed.rerank(large, timeout=30)).ranking) == 40
    assert len(gateway.calls) == 5
