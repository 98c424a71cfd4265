"""The in-process limit store on an injected clock: bucket, leases, the day's budget and counts."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import pytest

from rerank.server._limits import (
    CallerLimits,
    DailyUsage,
    Granted,
    InMemoryLimitStore,
    Refused,
    bucket_size,
    from_nanos,
    seconds_to_next_utc_midnight,
    to_nanos,
    utc_day,
)

# 2026-03-14 12:00:00 UTC: twelve hours from either midnight.
NOON = datetime(2026, 3, 14, 12, tzinfo=UTC).timestamp()


def test_day_and_midnight_are_utc() -> None:
    assert utc_day(NOON) == "2026-03-14"
    assert seconds_to_next_utc_midnight(NOON) == 12 * 3600
    last_second = datetime(2026, 3, 14, 23, 59, 59, tzinfo=UTC).timestamp()
    assert seconds_to_next_utc_midnight(last_second) == 1
    assert utc_day(last_second + 1) == "2026-03-15"


def test_nanos_are_exact_and_round_a_fraction_up() -> None:
    assert to_nanos(Decimal("0.001")) == 1_000_000
    assert to_nanos(Decimal("20")) == 20_000_000_000
    assert to_nanos(Decimal("0.0000000001")) == 1
    assert from_nanos(3 * to_nanos(Decimal("0.001"))) == Decimal("0.003")
    # Ten thousand calls at a tenth of a cent sum without a float's drift.
    assert from_nanos(sum(to_nanos(Decimal("0.001")) for _ in range(10_000))) == Decimal(10)


def test_bucket_size_defaults_to_the_rate_and_is_at_least_one_call() -> None:
    assert bucket_size(CallerLimits(requests_per_second=5)) == 5
    assert bucket_size(CallerLimits(requests_per_second=5, burst=2)) == 2
    assert bucket_size(CallerLimits(requests_per_second=0.5)) == 1
    assert bucket_size(CallerLimits()) == float("inf")


async def test_an_unlimited_caller_is_always_granted_and_counted() -> None:
    store = InMemoryLimitStore()
    for _ in range(1000):
        assert await store.admit("a", CallerLimits(), now=NOON) == Granted(lease="")
    assert await store.usage("a", now=NOON) == DailyUsage("2026-03-14", Decimal(0), 1000, 0)


async def test_the_bucket_allows_a_burst_then_refills_at_the_rate() -> None:
    store = InMemoryLimitStore()
    limits = CallerLimits(requests_per_second=5, burst=3)
    outcomes = [await store.admit("a", limits, now=NOON) for _ in range(4)]
    assert all(isinstance(o, Granted) for o in outcomes[:3])
    refused = outcomes[3]
    assert isinstance(refused, Refused)
    assert refused.reason == "CALLER_RATE_LIMITED"
    assert refused.retry_after == pytest.approx(0.2)  # one token at 5/s
    # After 0.2 s one token is back, and only one.
    assert isinstance(await store.admit("a", limits, now=NOON + 0.2), Granted)
    assert isinstance(await store.admit("a", limits, now=NOON + 0.2), Refused)
    # A long pause refills only up to the bucket's size.
    later = [await store.admit("a", limits, now=NOON + 100) for _ in range(4)]
    assert [isinstance(o, Granted) for o in later] == [True, True, True, False]
    usage = await store.usage("a", now=NOON + 100)
    assert (usage.calls, usage.refused) == (7, 3)


async def test_a_clock_stepping_back_does_not_drain_or_fill_the_bucket() -> None:
    store = InMemoryLimitStore()
    limits = CallerLimits(requests_per_second=1, burst=1)
    assert isinstance(await store.admit("a", limits, now=NOON), Granted)
    assert isinstance(await store.admit("a", limits, now=NOON - 50), Refused)
    assert isinstance(await store.admit("a", limits, now=NOON - 49), Granted)


async def test_callers_have_buckets_of_their_own() -> None:
    store = InMemoryLimitStore()
    limits = CallerLimits(requests_per_second=1)
    assert isinstance(await store.admit("a", limits, now=NOON), Granted)
    assert isinstance(await store.admit("a", limits, now=NOON), Refused)
    assert isinstance(await store.admit("b", limits, now=NOON), Granted)


async def test_concurrency_leases_are_held_until_finish() -> None:
    store = InMemoryLimitStore()
    limits = CallerLimits(max_concurrent_calls=2)
    first = await store.admit("a", limits, now=NOON)
    second = await store.admit("a", limits, now=NOON)
    assert isinstance(first, Granted)
    assert isinstance(second, Granted)
    assert first.lease != second.lease
    assert first.lease
    third = await store.admit("a", limits, now=NOON)
    assert isinstance(third, Refused)
    assert third.reason == "CALLER_RATE_LIMITED"
    assert third.retry_after > 0
    await store.finish("a", first.lease, None, now=NOON)
    assert isinstance(await store.admit("a", limits, now=NOON), Granted)
    # Finishing a lease twice frees nothing more.
    await store.finish("a", first.lease, None, now=NOON)
    assert isinstance(await store.admit("a", limits, now=NOON), Refused)


async def test_a_concurrency_refusal_takes_no_token() -> None:
    store = InMemoryLimitStore()
    limits = CallerLimits(requests_per_second=1, burst=2, max_concurrent_calls=1)
    held = await store.admit("a", limits, now=NOON)
    assert isinstance(held, Granted)
    assert isinstance(await store.admit("a", limits, now=NOON), Refused)
    await store.finish("a", held.lease, None, now=NOON)
    # The second token is still there.
    assert isinstance(await store.admit("a", limits, now=NOON), Granted)


async def test_the_budget_refuses_once_spend_has_reached_it_until_midnight() -> None:
    store = InMemoryLimitStore()
    limits = CallerLimits(daily_budget_usd=Decimal("0.0025"))
    granted = 0
    while isinstance(outcome := await store.admit("a", limits, now=NOON), Granted):
        granted += 1
        await store.finish("a", outcome.lease, Decimal("0.001"), now=NOON)
    assert granted == 3  # 0, 0.001, 0.002 are under 0.0025; 0.003 is not
    assert outcome == Refused("CALLER_BUDGET_EXHAUSTED", 12 * 3600)
    assert await store.usage("a", now=NOON) == DailyUsage(
        "2026-03-14", Decimal("0.003"), calls=3, refused=1
    )
    # The next UTC day starts from nothing.
    tomorrow = NOON + 12 * 3600
    assert isinstance(await store.admit("a", limits, now=tomorrow), Granted)
    assert await store.usage("a", now=tomorrow) == DailyUsage("2026-03-15", Decimal(0), 1, 0)


async def test_a_zero_budget_refuses_every_call() -> None:
    store = InMemoryLimitStore()
    outcome = await store.admit("a", CallerLimits(daily_budget_usd=Decimal(0)), now=NOON)
    assert isinstance(outcome, Refused)
    assert outcome.reason == "CALLER_BUDGET_EXHAUSTED"


async def test_a_budget_refusal_takes_no_token_and_no_lease() -> None:
    store = InMemoryLimitStore()
    limits = CallerLimits(
        requests_per_second=1, burst=1, max_concurrent_calls=1, daily_budget_usd=Decimal("1")
    )
    first = await store.admit("a", limits, now=NOON)
    assert isinstance(first, Granted)
    await store.finish("a", first.lease, Decimal("1"), now=NOON)
    assert isinstance(await store.admit("a", limits, now=NOON + 10), Refused)
    unlimited_spend = CallerLimits(requests_per_second=1, burst=1, max_concurrent_calls=1)
    assert isinstance(await store.admit("a", unlimited_spend, now=NOON + 10), Granted)


async def test_unknown_or_missing_costs_charge_nothing() -> None:
    store = InMemoryLimitStore()
    granted = await store.admit("a", CallerLimits(), now=NOON)
    assert isinstance(granted, Granted)
    await store.finish("a", granted.lease, None, now=NOON)
    await store.finish("never-admitted", "", Decimal(1), now=NOON)
    assert (await store.usage("a", now=NOON)).spent_usd == 0
    assert await store.usage("never-admitted", now=NOON) == DailyUsage(
        "2026-03-14", Decimal(0), 0, 0
    )


async def test_new_limits_apply_at_the_next_call() -> None:
    store = InMemoryLimitStore()
    generous = CallerLimits(requests_per_second=10)
    for _ in range(3):
        assert isinstance(await store.admit("a", generous, now=NOON), Granted)
    # Seven tokens left, but the new bucket holds two: two calls, then a refusal.
    strict = CallerLimits(requests_per_second=1, burst=2)
    outcomes = [await store.admit("a", strict, now=NOON) for _ in range(3)]
    assert [isinstance(o, Granted) for o in outcomes] == [True, True, False]
