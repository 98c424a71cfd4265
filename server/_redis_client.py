"""A small Redis client for the hot path: one pipelined connection (the commands of one
event-loop turn in one write), hiredis replies; ours as it costs less CPU than redis-py's asyncio
client (docs/design/clients.md). A call out of its `timeout` closes the connection, so no reply
meets the wrong command. The first failure opens a breaker (logged once): for `retry_interval`
seconds calls fail at once, then one at a time tries again. It raises only `RedisError`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import ssl
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar, cast
from urllib.parse import parse_qsl, unquote, urlsplit

import hiredis

from rerank.server._breaker import BreakerState, CircuitBreaker, CircuitOpen, Clock

logger = logging.getLogger(__name__)

DEFAULT_PORT = 6379
RETRY_INTERVAL = 1.0
Arg = str | bytes | int | float


class RedisError(Exception):
    """Redis cannot serve this call: unreachable, too slow, or it answered an error."""


_Failure = TypeVar("_Failure", RedisError, None)


@dataclass(frozen=True)
class RedisUrl:
    """`redis://[[user]:password@]host[:port][/db]`, `rediss://` for TLS; `?ssl_ca_certs=FILE`
    (redis-py's name) checks a TLS server against that CA bundle instead of the system's."""

    host: str
    port: int = DEFAULT_PORT
    db: int = 0
    tls: bool = False
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    ca_file: str | None = None

    @classmethod
    def parse(cls, url: str) -> RedisUrl:
        """`url`, or `ValueError` naming what is wrong (never echoing a password)."""
        parts = urlsplit(url)
        if parts.scheme not in ("redis", "rediss"):
            raise ValueError("must start with redis:// or rediss:// (TLS)")
        try:
            port = parts.port or DEFAULT_PORT
        except ValueError:
            raise ValueError("has a port that is not a number from 0 to 65535") from None
        if not parts.hostname:
            raise ValueError("names no host")
        path = parts.path.strip("/")
        if path and not path.isdigit():
            raise ValueError(f"has path {parts.path!r}; only a database number may follow the host")
        query = dict(parse_qsl(parts.query, keep_blank_values=True))
        unknown = sorted(set(query) - {"ssl_ca_certs"})
        if unknown:
            raise ValueError(f"has unknown parameter {unknown[0]!r} (known: ssl_ca_certs)")
        if "ssl_ca_certs" in query and parts.scheme != "rediss":
            raise ValueError("has ssl_ca_certs, which only a rediss:// (TLS) URL uses")
        return cls(
            host=parts.hostname,
            port=port,
            db=int(path or 0),
            tls=parts.scheme == "rediss",
            username=unquote(parts.username) if parts.username else None,
            password=unquote(parts.password) if parts.password is not None else None,
            ca_file=query.get("ssl_ca_certs") or None,
        )

    def __str__(self) -> str:
        """Without its credentials: safe to log."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'rediss' if self.tls else 'redis'}://{host}:{self.port}/{self.db}"


class Script:
    """A Lua script, run by its SHA-1 (EVALSHA) once Redis has it."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.sha = hashlib.sha1(source.encode()).hexdigest()


class _Connection(asyncio.Protocol):
    """One connection: replies matched to commands in order."""

    def __init__(self) -> None:
        self._reader = hiredis.Reader()
        self._pending: deque[asyncio.Future[Any]] = deque()
        self._outgoing: list[bytes] = []
        self._transport: asyncio.Transport | None = None
        self.lost: Exception | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A stream transport (uvloop's is one without subclassing asyncio.Transport).
        self._transport = cast(asyncio.Transport, transport)

    def send(self, packed: bytes) -> asyncio.Future[Any]:
        """Queue one packed command; the future gets its reply (an error as a value)."""
        if self.lost is not None or self._transport is None:
            raise RedisError(f"the connection was lost: {self.lost}")
        loop = asyncio.get_running_loop()
        reply = loop.create_future()
        self._pending.append(reply)
        if not self._outgoing:
            loop.call_soon(self._flush)
        self._outgoing.append(packed)
        return reply

    def _flush(self) -> None:
        if self._transport is not None and self._outgoing and self.lost is None:
            self._transport.write(b"".join(self._outgoing))
        self._outgoing.clear()

    def data_received(self, data: bytes) -> None:
        self._reader.feed(data)
        while (reply := self._reader.gets()) is not False:
            waiter = self._pending.popleft()
            if not waiter.done():  # its caller may have given up on it
                waiter.set_result(reply)

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = exc or RedisError("closed by the server")
        while self._pending:
            waiter = self._pending.popleft()
            if not waiter.done():
                waiter.set_exception(RedisError(f"the connection was lost: {self.lost}"))

    def close(self) -> None:
        if self._transport is not None:
            self._transport.abort()


class RedisClient:
    """A Redis at `url`, for `purpose` ("limits", "the result cache"). `on_state` hears every
    change of state (the rerank_redis_up gauge)."""

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
        self._connection: _Connection | None = None
        self._connecting: asyncio.Future[_Connection] | None = None
        self._ssl = ssl.create_default_context(cafile=url.ca_file) if url.tls else None
        self._breaker = CircuitBreaker(
            failure_rate=1.0, window=1, cooldown=retry_interval, clock=clock
        )
        self._down_since = 0.0

    @property
    def up(self) -> bool:
        """False from a failure until the next success."""
        return self._breaker.state is BreakerState.CLOSED

    async def call(self, *args: Arg) -> Any:
        """One command and its reply; `RedisError` when Redis cannot serve it."""
        reply = await self._round_trip(args)
        if isinstance(reply, hiredis.ReplyError):
            raise self._record(RedisError(f"Redis answered: {reply}"))
        return reply

    async def run(self, script: Script, keys: Sequence[str], args: Sequence[Arg]) -> Any:
        """Run `script` (EVALSHA; sending its source once when Redis does not have it)."""
        reply = await self._round_trip(("EVALSHA", script.sha, len(keys), *keys, *args))
        if isinstance(reply, hiredis.ReplyError) and str(reply).startswith("NOSCRIPT"):
            # A new or restarted Redis: EVAL runs the script and keeps it for EVALSHA.
            reply = await self._round_trip(("EVAL", script.source, len(keys), *keys, *args))
        if isinstance(reply, hiredis.ReplyError):
            raise self._record(RedisError(f"Redis answered: {reply}"))
        return reply

    async def _round_trip(self, command: tuple[Arg, ...]) -> Any:
        try:
            probe = self._breaker.before_call()
        except CircuitOpen:
            outage = self._clock() - self._down_since
            raise RedisError(f"unreachable for the last {outage:.1f} s") from None
        try:
            async with asyncio.timeout(self._timeout):
                reply = await self._exchange(command)
        except TimeoutError:
            self._drop_connection()
            error = RedisError(f"no answer within {self._timeout:.3g} s")
            raise self._record(error, probe=probe) from None
        except (OSError, ssl.SSLError, RedisError) as error:
            self._drop_connection()
            raise self._record(RedisError(_describe(error)), probe=probe) from None
        except BaseException:
            self._breaker.record(None, probe=probe)
            raise
        self._record(None, probe=probe)
        return reply

    async def _exchange(self, command: tuple[Arg, ...]) -> Any:
        """The transport alone (the deadline, breaker and log lines are `_round_trip`'s; the
        redis-py bench replaces only this)."""
        connection = await self._connected()
        return await connection.send(_pack(command))

    async def _connected(self) -> _Connection:
        if self._connection is not None and self._connection.lost is None:
            return self._connection
        if self._connecting is None:
            self._connecting = asyncio.ensure_future(self._connect())
        connecting = self._connecting
        try:
            # shield: one caller giving up must not cancel the connection others wait for.
            connection = await asyncio.shield(connecting)
        finally:
            if connecting.done() and self._connecting is connecting:
                self._connecting = None
        self._connection = connection
        return connection

    async def _connect(self) -> _Connection:
        loop = asyncio.get_running_loop()
        # Bounded on its own too: an attempt at a host that never answers must not outlive
        # the callers, who stop waiting at their deadline.
        async with asyncio.timeout(self._timeout):
            _, connection = await loop.create_connection(
                _Connection,
                self.url.host,
                self.url.port,
                ssl=self._ssl,
                server_hostname=self.url.host if self._ssl else None,
            )
        handshake = []
        if self.url.password is not None:
            credentials = (self.url.username or "default", self.url.password)
            handshake.append(connection.send(_pack(("AUTH", *credentials))))
        if self.url.db:
            handshake.append(connection.send(_pack(("SELECT", self.url.db))))
        for reply in await asyncio.gather(*handshake):
            if isinstance(reply, hiredis.ReplyError):
                connection.close()
                raise RedisError(f"Redis refused the connection: {reply}")
        return connection

    def _drop_connection(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    def _record(self, error: _Failure, *, probe: bool = False) -> _Failure:
        """Tell the breaker how a call ended (None: well); log a change of state, and tell it."""
        was_up = self.up
        self._breaker.record(error is not None, probe=probe)
        if was_up == self.up:
            return error
        if error is not None:
            self._down_since = self._clock()
            state = f"cannot be used: {error}; {self._when_down}"
        else:
            state = f"is back after {self._clock() - self._down_since:.1f} s"
        logger.warning("Redis for %s at %s %s", self._purpose, self.url, state)
        if self._on_state is not None:
            self._on_state(self.up)
        return error

    async def aclose(self) -> None:
        if self._connecting is not None:
            self._connecting.cancel()
            with contextlib.suppress(BaseException):
                await self._connecting
        self._drop_connection()


def _pack(command: tuple[Arg, ...]) -> bytes:
    packed: bytes = hiredis.pack_command(command)  # type: ignore[arg-type]  # its stub says a 1-tuple
    return packed


def _describe(error: BaseException) -> str:
    """A failure in a few words, not a repr."""
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    return str(error) or type(error).__name__
