"""redis-py's asyncio client as `RedisClient`'s transport: the alternative `make bench`
measures ours against (`bench.limits_cost`, and `bench.redis_py_server` for a whole server).

A subclass that replaces only `_exchange`: the deadline, the circuit breaker, the log lines and
`RedisError` are ours, so the two differ in the transport alone. redis-py's way: a connection
pool (a connection per call in flight), replies parsed by hiredis (redis-py picks it when it is
installed), no retries of its own, replies as Redis sent them (no response callbacks), and an
error reply handed back as the `hiredis.ReplyError` value ours gives.
"""

from __future__ import annotations

from typing import Any

import hiredis
import redis.asyncio
import redis.exceptions
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from rerank.server._redis_client import Arg, RedisClient, RedisError, RedisUrl


class RedisPyClient(RedisClient):
    """`RedisClient` over `redis.asyncio.Redis`."""

    def __init__(self, url: RedisUrl, *, timeout: float, **options: Any) -> None:
        super().__init__(url, timeout=timeout, **options)
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
        self._redis.response_callbacks.clear()

    async def _exchange(self, command: tuple[Arg, ...]) -> Any:
        try:
            return await self._redis.execute_command(*command)  # type: ignore[no-untyped-call]
        except redis.exceptions.NoScriptError as error:
            # redis-py drops the error's code, which ours keeps and `run` reads.
            return hiredis.ReplyError(f"NOSCRIPT {error}")
        except redis.exceptions.ResponseError as error:
            return hiredis.ReplyError(str(error))
        except redis.exceptions.RedisError as error:
            raise RedisError(str(error)) from None

    def _drop_connection(self) -> None:
        """Nothing to drop: the pool replaces a broken connection itself."""

    async def aclose(self) -> None:
        await self._redis.aclose()
