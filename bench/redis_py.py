"""redis-py's asyncio client behind `RedisClient`'s interface: the alternative `make bench`
measures ours against (`bench.limits_cost`, and `bench.redis_py_server` for a whole server).

It does what `RedisClient` does, the redis-py way: a connection pool (a connection per call in
flight), replies parsed by hiredis (redis-py picks it when it is installed), no retries of its
own, and the same deadline, circuit breaker, log lines and `RedisError`. Replies come back as
Redis sent them (no response callbacks), as `RedisClient`'s do.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

import redis.asyncio
import redis.exceptions
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from rerank.server._breaker import BreakerState, CircuitBreaker, CircuitOpen, Clock
from rerank.server._redis_client import RETRY_INTERVAL, Arg, RedisError, RedisUrl, Script

logger = logging.getLogger("rerank.server._redis_client")


class RedisPyClient:
    """`RedisClient`'s interface over `redis.asyncio.Redis`."""

    def __init__(
        self,
        url: RedisUrl,
        *,
        timeout: float,
        purpose: str,
        when_down: str,
        retry_interval: float = RETRY_INTERVAL,
        on_state: Callable[[bool], None] | None = None,
        clock: Clock = time.monotonic,
    ) -> None:
        self.url = url
        self._timeout = timeout
        self._purpose = purpose
        self._when_down = when_down
        self._on_state = on_state
        self._clock = clock
        self._redis = redis.asyncio.Redis(
            host=url.host,
            port=url.port,
            db=url.db,
            username=url.username,
            password=url.password,
            ssl=url.tls,
            ssl_ca_certs=url.ca_file,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            retry=Retry(NoBackoff(), 0),
        )
        # Replies as Redis sent them: what the store and the cache read.
        self._redis.response_callbacks.clear()
        self._breaker = CircuitBreaker(
            failure_rate=1.0, window=1, cooldown=retry_interval, clock=clock
        )
        self._down_since = 0.0

    @property
    def up(self) -> bool:
        return self._breaker.state is BreakerState.CLOSED

    async def call(self, *args: Arg) -> Any:
        return await self._round_trip(args)

    async def run(self, script: Script, keys: Sequence[str], args: Sequence[Arg]) -> Any:
        return await self._round_trip(
            ("EVALSHA", script.sha, len(keys), *keys, *args),
            ("EVAL", script.source, len(keys), *keys, *args),
        )

    async def _round_trip(self, command: Sequence[Arg], unscripted: Sequence[Arg] = ()) -> Any:
        try:
            probe = self._breaker.before_call()
        except CircuitOpen:
            outage = self._clock() - self._down_since
            raise RedisError(f"unreachable for the last {outage:.1f} s") from None
        try:
            async with asyncio.timeout(self._timeout):
                try:
                    reply = await self._redis.execute_command(*command)  # type: ignore[no-untyped-call]
                except redis.exceptions.NoScriptError:
                    reply = await self._redis.execute_command(*unscripted)  # type: ignore[no-untyped-call]
        except TimeoutError:
            error = RedisError(f"no answer within {self._timeout:.3g} s")
            raise self._failed(error, probe=probe) from None
        except (OSError, redis.exceptions.RedisError) as error:
            raise self._failed(RedisError(str(error)), probe=probe) from None
        except BaseException:
            self._breaker.release(probe=probe)
            raise
        self._succeeded(probe=probe)
        return reply

    def _failed(self, error: RedisError, *, probe: bool) -> RedisError:
        was_up = self.up
        self._breaker.record(True, probe=probe)
        if was_up and not self.up:
            self._down_since = self._clock()
            logger.warning(
                "Redis for %s at %s cannot be used: %s; %s",
                self._purpose,
                self.url,
                error,
                self._when_down,
            )
            if self._on_state is not None:
                self._on_state(False)
        return error

    def _succeeded(self, *, probe: bool) -> None:
        was_up = self.up
        self._breaker.record(False, probe=probe)
        if self.up and not was_up:
            logger.warning(
                "Redis for %s at %s is back after %.1f s",
                self._purpose,
                self.url,
                self._clock() - self._down_since,
            )
            if self._on_state is not None:
                self._on_state(True)

    async def aclose(self) -> None:
        await self._redis.aclose()
