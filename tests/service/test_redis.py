"""Servers in this process over a real redis-server: the result cache shared by replicas
(RERANK_CACHE_BACKEND=redis), bounded by its TTL, a Redis that goes away costs calls nothing
but the cache, a Redis that could evict limits keeps no cache entries; named callers' budget
spent once across servers, and refused with LIMITS_UNAVAILABLE when told to fail closed."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc

from rerank.server._app import RunningServer, start_server
from rerank.server._config import CacheBackend, Settings
from rerank.server._metrics import Metrics
from rerank.server._prometheus import PrometheusRecorder
from rerank.server._redis_client import RedisUrl
from rerank.server._redis_store import CACHE_KEY_PREFIX
from rerank.v1 import rerank_service_pb2 as pb
from rerank.v1 import rerank_service_pb2_grpc as pb_grpc
from tests.conftest import needs_redis_server
from tests.scrapes import Scrape
from tests.service.calls import MESSAGE_LIMIT, seed_request, unpacked
from tools.redis_server import RedisServer

FAST = Settings(port=0, grace_period=2, redis_timeout=5.0, cache_ttl=120.0)


@pytest.fixture
async def serve() -> AsyncIterator[Callable[..., Any]]:
    started: list[tuple[RunningServer, grpc.aio.Channel]] = []

    async def start(settings: Settings) -> tuple[RunningServer, pb_grpc.RerankServiceStub]:
        running = await start_server(settings)
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{running.port}", options=MESSAGE_LIMIT)
        started.append((running, channel))
        return running, pb_grpc.RerankServiceStub(channel)

    yield start
    for running, channel in started:
        await channel.close()
        await running.stop()


def with_redis_cache(server: RedisServer, **changes: Any) -> Settings:
    return dataclasses.replace(
        FAST,
        cache_backend=CacheBackend.REDIS,
        cache_redis_url=RedisUrl.parse(server.url),
        **changes,
    )


def cache_keys(server: RedisServer) -> list[bytes]:
    keys: list[bytes] = server.command("KEYS", CACHE_KEY_PREFIX + "*")
    return keys


async def test_replicas_share_the_cache_and_entries_expire_with_the_ttl(
    redis: RedisServer, serve: Callable[..., Any]
) -> None:
    _, first = await serve(with_redis_cache(redis))
    _, second = await serve(with_redis_cache(redis))
    answer = await first.Rerank(seed_request())
    assert not answer.cached
    # The other replica has never seen this request: it finds the first one's answer.
    shared = await second.Rerank(seed_request())
    assert shared.cached
    assert [r.original_index for r in shared.ranking] == [r.original_index for r in answer.ranking]
    assert [r.score for r in shared.ranking] == [r.score for r in answer.ranking]
    (key,) = cache_keys(redis)
    assert len(key) == len(CACHE_KEY_PREFIX) + 64  # the SHA-256, in hex
    assert 110_000 < redis.command("PTTL", key) <= 120_000
    # Asked to bypass the cache, a replica neither reads nor writes it.
    assert not (await second.Rerank(seed_request(bypass_cache=True))).cached


async def test_a_cache_redis_that_goes_away_costs_calls_only_the_cache(
    own_redis: RedisServer, serve: Callable[..., Any], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="rerank.server._redis_client")
    running, stub = await serve(with_redis_cache(own_redis))
    assert not (await stub.Rerank(seed_request())).cached
    assert (await stub.Rerank(seed_request())).cached
    own_redis.stop()
    for _ in range(5):
        assert not (await stub.Rerank(seed_request())).cached
    health = health_pb2_grpc.HealthStub(
        grpc.aio.insecure_channel(f"127.0.0.1:{running.port}")  # closed with the server
    )
    status = await health.Check(health_pb2.HealthCheckRequest(service=""))
    assert status.status == health_pb2.HealthCheckResponse.SERVING
    (line,) = [r.getMessage() for r in caplog.records if "cannot be used" in r.getMessage()]
    assert line.startswith("Redis for the result cache at redis://127.0.0.1:")
    assert line.endswith("calls go on uncached until it is back")
    own_redis.restart()  # empty: its entries went with it
    # Tried again a second after the last failure: from then on answers are kept again.
    for _ in range(600):  # polled, bounded (30 s)
        if (await stub.Rerank(seed_request())).cached:
            break
        await asyncio.sleep(0.05)
    else:
        raise AssertionError("answers were never cached again")
    assert len(cache_keys(own_redis)) == 1
    assert [r.getMessage() for r in caplog.records if "is back after" in r.getMessage()]


@pytest.fixture
def evicting_redis(tmp_path: Path) -> Iterator[RedisServer]:
    needs_redis_server()
    with RedisServer(
        tmp_path, "--maxmemory", "64mb", "--maxmemory-policy", "allkeys-lru"
    ) as server:
        yield server


async def test_a_redis_that_holds_limits_and_may_evict_keeps_no_cache_entries(
    evicting_redis: RedisServer, serve: Callable[..., Any], caplog: pytest.LogCaptureFixture
) -> None:
    url = RedisUrl.parse(evicting_redis.url)
    _, stub = await serve(
        dataclasses.replace(FAST, cache_backend=CacheBackend.REDIS, redis_url=url)
    )
    for _ in range(3):
        assert not (await stub.Rerank(seed_request())).cached
    assert cache_keys(evicting_redis) == []
    (line,) = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert "maxmemory-policy allkeys-lru" in line
    assert "RERANK_CACHE_REDIS_URL" in line


async def test_a_redis_that_holds_limits_and_never_evicts_may_hold_the_cache(
    redis: RedisServer, serve: Callable[..., Any]
) -> None:
    redis.command("CONFIG", "SET", "maxmemory", "64mb")
    redis.command("CONFIG", "SET", "maxmemory-policy", "noeviction")
    try:
        settings = dataclasses.replace(
            FAST, cache_backend=CacheBackend.REDIS, redis_url=RedisUrl.parse(redis.url)
        )
        _, stub = await serve(settings)
        assert not (await stub.Rerank(seed_request())).cached
        assert (await stub.Rerank(seed_request())).cached
        assert len(cache_keys(redis)) == 1
    finally:
        redis.command("CONFIG", "SET", "maxmemory", "0")


NAMED, UNBOUNDED, LEGACY = "named-caller-token", "unbounded-token", "legacy-token"
CALLERS = f"""
[callers.team-a]
token = "{NAMED}"
daily_budget_usd = 0.003

[callers.team-b]
token = "{UNBOUNDED}"
"""


def with_redis_limits(server: RedisServer, callers: Path, **changes: Any) -> Settings:
    return dataclasses.replace(
        FAST,
        callers_file=str(callers),
        auth_tokens=frozenset({LEGACY}),
        redis_url=RedisUrl.parse(server.url),
        **changes,
    )


def bearer(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


async def test_two_servers_spend_one_budget(
    redis: RedisServer, serve: Callable[..., Any], tmp_path: Path
) -> None:
    callers = tmp_path / "callers.toml"
    callers.write_text(CALLERS)
    replicas = [(await serve(with_redis_limits(redis, callers)))[1] for _ in range(2)]
    # The embedded mock charges 0.002 USD for this request: after two calls the spend (0.004)
    # has reached the budget (0.003), whichever server took them.
    codes = []
    for n in range(4):
        try:
            await replicas[n % 2].Rerank(seed_request(bypass_cache=True), metadata=bearer(NAMED))
            codes.append("OK")
        except grpc.aio.AioRpcError as error:
            codes.append(unpacked(error, error_details_pb2.ErrorInfo).reason)
    assert codes == ["OK", "OK", "CALLER_BUDGET_EXHAUSTED", "CALLER_BUDGET_EXHAUSTED"]
    usage = await replicas[1].GetUsage(pb.GetUsageRequest(), metadata=bearer(NAMED))
    assert (usage.spent_usd, usage.calls, usage.refused) == ("0.004", 2, 2)


async def test_fail_closed_refuses_named_callers_while_redis_is_away(
    own_redis: RedisServer, serve: Callable[..., Any], tmp_path: Path
) -> None:
    callers = tmp_path / "callers.toml"
    callers.write_text(CALLERS)
    _, stub = await serve(with_redis_limits(own_redis, callers, limits_fail_closed=True))
    await stub.Rerank(seed_request(), metadata=bearer(NAMED))
    own_redis.stop()
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.Rerank(seed_request(bypass_cache=True), metadata=bearer(NAMED))
    error = caught.value
    assert error.code() is grpc.StatusCode.UNAVAILABLE
    assert unpacked(error, error_details_pb2.ErrorInfo).reason == "LIMITS_UNAVAILABLE"
    assert unpacked(error, error_details_pb2.RetryInfo).retry_delay.seconds == 1
    assert "127.0.0.1" not in (error.details() or "")
    with pytest.raises(grpc.aio.AioRpcError) as usage_refused:
        await stub.GetUsage(pb.GetUsageRequest(), metadata=bearer(NAMED))
    assert usage_refused.value.code() is grpc.StatusCode.UNAVAILABLE
    # A caller without a name has no limits to check: it goes on.
    assert (await stub.Rerank(seed_request(bypass_cache=True), metadata=bearer(LEGACY))).ranking


async def test_metrics_say_when_redis_is_away_and_calls_are_decided_here(
    own_redis: RedisServer, tmp_path: Path
) -> None:
    callers = tmp_path / "callers.toml"
    callers.write_text(CALLERS)
    recorder = PrometheusRecorder()
    settings = with_redis_limits(
        own_redis,
        callers,
        cache_backend=CacheBackend.REDIS,
        cache_redis_url=RedisUrl.parse(own_redis.url),
    )
    running = await start_server(settings, metrics=Metrics(recorder))
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            stub = pb_grpc.RerankServiceStub(channel)
            await stub.Rerank(seed_request(), metadata=bearer(UNBOUNDED))

            before = Scrape.of(recorder)
            assert before.total("rerank_redis_up", purpose="limits") == 1
            assert before.total("rerank_redis_up", purpose="cache") == 1
            assert before.total("rerank_limits_decided_locally_total") == 0
            own_redis.stop()
            for _ in range(3):  # fail open: they go on
                await stub.Rerank(seed_request(bypass_cache=True), metadata=bearer(UNBOUNDED))
            away = Scrape.of(recorder)
            assert away.total("rerank_redis_up", purpose="limits") == 0
            assert away.total("rerank_redis_up", purpose="cache") == 1  # not asked: bypassed
            assert away.total("rerank_limits_decided_locally_total") == 3
    finally:
        await running.stop()
