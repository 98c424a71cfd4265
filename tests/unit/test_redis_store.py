"""Limits in a real redis-server: the same rules as the in-process store, shared by replicas,
keys that expire, and fail open (or closed) when Redis goes away.

The clock is injected (`now`), so refills and days are exact; Redis itself is real. "Two
replicas" are two stores over two clients of one Redis, each with its own connection.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest

from rerank.server._errors import LimitsUnavailable
from rerank.server._limits import (
    CallerLimits,
    DailyUsage,
    Granted,
    InMemoryLimitStore,
    LimitStore,
    Refused,
)
from rerank.server._redis_client import RedisClient, RedisUrl
from rerank.server._redis_store import DAY_SECONDS_KEPT, FailOpenLimitStore, RedisLimitStore
from tests.conftest import needs_redis_server
from tools.redis_server import RedisServer

NOON = datetime(2026, 3, 14, 12, tzinfo=UTC).timestamp()
TODAY = "2026-03-14"
CENT_TENTH = Decimal("0.001")
# Generous for a loaded test machine: these tests are about rules, not speed.
TIMEOUT = 5.0


def client_for(server: RedisServer, *, retry_interval: float = 0.0) -> RedisClient:
    return RedisClient(
        RedisUrl.parse(server.url),
        timeout=TIMEOUT,
        purpose="limits",
        when_down="limits are counted in this process until it is back",
        retry_interval=retry_interval,
    )


StoreFactory = Callable[[], LimitStore]


@pytest.fixture(params=["memory", "redis"])
async def new_store(
    request: pytest.FixtureRequest,
) -> AsyncIterator[StoreFactory]:
    """Makes stores of one kind. Redis stores made by one test share its Redis: replicas."""
    made: list[LimitStore] = []

    def make() -> LimitStore:
        store: LimitStore
        if request.param == "memory":
            store = InMemoryLimitStore()
        else:
            server: RedisServer = request.getfixturevalue("redis")
            store = RedisLimitStore(client_for(server), lease_seconds=60)
        made.append(store)
        return store

    yield make
    for store in made:
        await store.aclose()


# The rules, for both stores alike.


async def test_the_bucket_allows_a_burst_then_refills_at_the_rate(new_store: StoreFactory) -> None:
    store = new_store()
    limits = CallerLimits(requests_per_second=5, burst=3)
    outcomes = [await store.admit("a", limits, now=NOON) for _ in range(4)]
    assert [isinstance(o, Granted) for o in outcomes] == [True, True, True, False]
    refused = outcomes[3]
    assert isinstance(refused, Refused)
    assert refused.reason == "CALLER_RATE_LIMITED"
    assert refused.retry_after == pytest.approx(0.2)
    assert isinstance(await store.admit("a", limits, now=NOON + 0.2), Granted)
    assert isinstance(await store.admit("a", limits, now=NOON + 0.2), Refused)
    later = [await store.admit("a", limits, now=NOON + 100) for _ in range(4)]
    assert [isinstance(o, Granted) for o in later] == [True, True, True, False]
    assert await store.usage("a", now=NOON + 100) == DailyUsage(TODAY, Decimal(0), 7, 3)


async def test_concurrency_is_a_lease_released_by_finish(new_store: StoreFactory) -> None:
    store = new_store()
    limits = CallerLimits(max_concurrent_calls=2)
    first, second = [await store.admit("a", limits, now=NOON) for _ in range(2)]
    assert isinstance(first, Granted)
    assert isinstance(second, Granted)
    assert first.lease
    assert second.lease not in ("", first.lease)
    refused = await store.admit("a", limits, now=NOON)
    assert refused == Refused("CALLER_RATE_LIMITED", 0.1)
    await store.finish("a", first.lease, None, now=NOON)
    assert isinstance(await store.admit("a", limits, now=NOON), Granted)


async def test_a_budget_allows_calls_until_the_spend_reaches_it(new_store: StoreFactory) -> None:
    store = new_store()
    limits = CallerLimits(daily_budget_usd=Decimal("0.0025"))
    granted = 0
    while isinstance(decision := await store.admit("a", limits, now=NOON), Granted):
        granted += 1
        await store.finish("a", decision.lease, CENT_TENTH, now=NOON)
    assert granted == 3
    assert decision.reason == "CALLER_BUDGET_EXHAUSTED"
    assert decision.retry_after == 12 * 3600  # the next UTC midnight
    assert await store.usage("a", now=NOON) == DailyUsage(TODAY, Decimal("0.003"), 3, 1)
    # A new UTC day starts from nothing.
    tomorrow = NOON + 86_400
    assert isinstance(await store.admit("a", limits, now=tomorrow), Granted)
    assert await store.usage("a", now=tomorrow) == DailyUsage("2026-03-15", Decimal(0), 1, 0)


async def test_a_refused_call_takes_no_token_and_no_slot(new_store: StoreFactory) -> None:
    store = new_store()
    limits = CallerLimits(requests_per_second=1, burst=2, max_concurrent_calls=1)
    held = await store.admit("a", limits, now=NOON)
    assert isinstance(held, Granted)
    # Refused for its concurrency: the bucket's second token stays.
    assert isinstance(await store.admit("a", limits, now=NOON), Refused)
    await store.finish("a", held.lease, None, now=NOON)
    assert isinstance(await store.admit("a", limits, now=NOON), Granted)


async def test_spend_is_exact_and_an_unknown_cost_charges_nothing(new_store: StoreFactory) -> None:
    store = new_store()
    for cost in (Decimal("0.0000001"), Decimal("0.3"), None, Decimal("0.000000001")):
        decision = await store.admit("a", CallerLimits(), now=NOON)
        assert isinstance(decision, Granted)
        await store.finish("a", decision.lease, cost, now=NOON)
    usage = await store.usage("a", now=NOON)
    assert usage.spent_usd == Decimal("0.300000101")
    assert usage.calls == 4


async def test_callers_are_counted_apart(new_store: StoreFactory) -> None:
    store = new_store()
    limits = CallerLimits(requests_per_second=1, burst=1)
    assert isinstance(await store.admit("a", limits, now=NOON), Granted)
    assert isinstance(await store.admit("a", limits, now=NOON), Refused)
    assert isinstance(await store.admit("b", limits, now=NOON), Granted)


# Redis only: shared by replicas, keys, expiry.


async def test_two_replicas_share_one_bucket_and_one_budget(redis: RedisServer) -> None:
    one = RedisLimitStore(client_for(redis), lease_seconds=60)
    two = RedisLimitStore(client_for(redis), lease_seconds=60)
    try:
        limits = CallerLimits(requests_per_second=5, daily_budget_usd=Decimal("0.0025"))
        decisions = []
        for n in range(8):
            store = (one, two)[n % 2]
            decision = await store.admit("a", limits, now=NOON)
            if isinstance(decision, Granted):
                await store.finish("a", decision.lease, CENT_TENTH, now=NOON)
            decisions.append(decision)
        reasons = [getattr(d, "reason", "granted") for d in decisions]
        assert reasons == ["granted"] * 3 + ["CALLER_BUDGET_EXHAUSTED"] * 5
        assert await two.usage("a", now=NOON) == DailyUsage(TODAY, Decimal("0.003"), 3, 5)
        # The bucket is shared too: five tokens in all, whichever replica takes them.
        rate_only = CallerLimits(requests_per_second=5)
        granted = [
            isinstance(await (one, two)[n % 2].admit("b", rate_only, now=NOON), Granted)
            for n in range(8)
        ]
        assert granted == [True] * 5 + [False] * 3
    finally:
        await one.aclose()
        await two.aclose()


async def test_keys_are_namespaced_and_all_expire(redis: RedisServer) -> None:
    store = RedisLimitStore(client_for(redis), lease_seconds=30)
    try:
        limits = CallerLimits(requests_per_second=2, burst=4, max_concurrent_calls=3)
        decision = await store.admit("search-api", limits, now=NOON)
        assert isinstance(decision, Granted)
        await store.finish("search-api", "", CENT_TENTH, now=NOON)
    finally:
        await store.aclose()
    keys = sorted(redis.command("KEYS", "*"))
    assert keys == [
        b"rerank:limits:{search-api}:bucket",
        b"rerank:limits:{search-api}:day:2026-03-14",
        b"rerank:limits:{search-api}:leases",
    ]
    ttl = {key: redis.command("PTTL", key) for key in keys}
    # The bucket: until it is full again (one token at 2/s), plus a second.
    assert 0 < ttl[keys[0]] <= 500 + 1000
    assert DAY_SECONDS_KEPT * 1000 - 60_000 < ttl[keys[1]] <= DAY_SECONDS_KEPT * 1000
    assert 0 < ttl[keys[2]] <= 30_000
    assert redis.command("HGET", keys[1], "spent") == b"1000000"  # nano-dollars


async def test_a_lease_of_a_replica_that_died_expires(redis: RedisServer) -> None:
    limits = CallerLimits(max_concurrent_calls=1)
    dead = RedisLimitStore(client_for(redis), lease_seconds=10)
    assert isinstance(await dead.admit("a", limits, now=NOON), Granted)
    await dead.aclose()  # it never calls finish
    alive = RedisLimitStore(client_for(redis), lease_seconds=10)
    try:
        assert isinstance(await alive.admit("a", limits, now=NOON + 9.9), Refused)
        assert isinstance(await alive.admit("a", limits, now=NOON + 10), Granted)
    finally:
        await alive.aclose()


async def test_the_scripts_are_sent_again_to_a_redis_that_lost_them(redis: RedisServer) -> None:
    store = RedisLimitStore(client_for(redis), lease_seconds=60)
    try:
        assert isinstance(await store.admit("a", CallerLimits(), now=NOON), Granted)
        redis.command("SCRIPT", "FLUSH")  # as after a restart or a failover
        assert isinstance(await store.admit("a", CallerLimits(), now=NOON), Granted)
        assert (await store.usage("a", now=NOON)).calls == 2
    finally:
        await store.aclose()


async def test_the_redis_store_alone_refuses_when_redis_is_away(own_redis: RedisServer) -> None:
    store = RedisLimitStore(client_for(own_redis), lease_seconds=60)
    try:
        own_redis.stop()
        with pytest.raises(LimitsUnavailable) as caught:
            await store.admit("a", CallerLimits(), now=NOON)
        assert caught.value.reason == "LIMITS_UNAVAILABLE"
        assert "127.0.0.1" not in caught.value.message  # where the limits live is not said
        with pytest.raises(LimitsUnavailable):
            await store.usage("a", now=NOON)
    finally:
        await store.aclose()


# Fail open.


@pytest.fixture
def persistent_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server of the test's own that saves on SIGTERM and loads on restart: an
    outage that loses nothing, as with a Redis that persists."""
    needs_redis_server()
    with RedisServer(tmp_path, "--save", "3600 1") as server:
        yield server


async def test_fail_open_decides_here_while_redis_is_away_then_hands_the_counts_back(
    persistent_redis: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    decided_here: list[None] = []
    store = FailOpenLimitStore(
        RedisLimitStore(client_for(persistent_redis), lease_seconds=60),
        on_local_decision=lambda: decided_here.append(None),
    )
    limits = CallerLimits(requests_per_second=2, burst=2, daily_budget_usd=Decimal("0.0035"))
    caplog.set_level(logging.WARNING, logger="rerank.server._redis_client")
    try:
        granted = await store.admit("a", limits, now=NOON)
        assert isinstance(granted, Granted)
        await store.finish("a", granted.lease, CENT_TENTH, now=NOON)
        assert not decided_here

        persistent_redis.stop()
        # Decided here: the rate holds in this process (a fresh bucket of 2)...
        away = [await store.admit("a", limits, now=NOON + 10) for _ in range(3)]
        assert [isinstance(d, Granted) for d in away] == [True, True, False]
        assert len(decided_here) == 3
        for decision in away[:2]:
            assert isinstance(decision, Granted)
            await store.finish("a", decision.lease, CENT_TENTH, now=NOON + 10)
        # ...and the budget against what Redis said was spent (0.001) plus what was spent
        # here since (0.002): one more call may start, then the budget is reached.
        later = NOON + 20
        last = await store.admit("a", limits, now=later)
        assert isinstance(last, Granted)
        await store.finish("a", last.lease, CENT_TENTH, now=later)
        assert (await store.admit("a", limits, now=later + 1)) == Refused(
            "CALLER_BUDGET_EXHAUSTED", 12 * 3600 - 21
        )
        # One line for the outage, however many calls it saw.
        outage_lines = [r for r in caplog.records if "cannot be used" in r.getMessage()]
        assert len(outage_lines) == 1, caplog.text
        assert "limits are counted in this process" in outage_lines[0].getMessage()
        # A caller's standing is not made up from one process's counts.
        with pytest.raises(LimitsUnavailable):
            await store.usage("a", now=later)

        persistent_redis.restart()
        # Back: what was counted here reaches Redis before the next decision there.
        refused = await store.admit("a", limits, now=later + 2)
        assert isinstance(refused, Refused)
        assert refused.reason == "CALLER_BUDGET_EXHAUSTED"
        assert len(decided_here) == 5  # that last one was Redis's
        # 4 calls (1 before, 3 during) at 0.001; refused: 1 rate and 1 budget during, 1 after.
        assert await store.usage("a", now=later + 2) == DailyUsage(TODAY, Decimal("0.004"), 4, 3)
        assert len([r for r in caplog.records if "is back after" in r.getMessage()]) == 1
    finally:
        await store.aclose()


async def test_fail_open_shares_limits_again_once_redis_is_back(own_redis: RedisServer) -> None:
    replicas = [
        FailOpenLimitStore(RedisLimitStore(client_for(own_redis), lease_seconds=60))
        for _ in range(2)
    ]
    limits = CallerLimits(requests_per_second=1, burst=2)
    try:
        own_redis.stop()
        # Away: each replica has a bucket of its own.
        assert all(
            [isinstance(await r.admit("a", limits, now=NOON), Granted) for r in replicas * 2]
        )
        own_redis.restart()
        # Back (Redis restarted empty): one bucket of two, for both.
        later = NOON + 60
        granted = [isinstance(await r.admit("a", limits, now=later), Granted) for r in replicas * 2]
        assert granted == [True, True, False, False]
    finally:
        for replica in replicas:
            await replica.aclose()


async def test_a_hung_redis_costs_one_deadline_then_calls_go_on_at_once(
    own_redis: RedisServer,
) -> None:
    client = RedisClient(
        RedisUrl.parse(own_redis.url),
        timeout=0.2,
        purpose="limits",
        when_down="limits are counted in this process until it is back",
        retry_interval=3600,
    )
    store = FailOpenLimitStore(RedisLimitStore(client, lease_seconds=60))
    try:
        assert isinstance(await store.admit("a", CallerLimits(), now=NOON), Granted)
        own_redis.pause()
        try:
            # The first call waits out the deadline; while Redis is left alone, the next
            # thousand are decided here without waiting on it (the test's timeout is far
            # below a thousand deadlines).
            async with asyncio.timeout(30):
                for _ in range(1000):
                    assert isinstance(await store.admit("a", CallerLimits(), now=NOON), Granted)
            assert not client.up
        finally:
            own_redis.resume()
    finally:
        await store.aclose()
