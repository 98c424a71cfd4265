"""A content-addressed result cache, with identical concurrent calls sharing one upstream call.

Entries live `ttl` seconds, in this process (`MemoryEntries`) or in a Redis every replica shares
(`RedisCacheEntries`); errors are never stored. A shared call runs under the upstream timeout,
each caller waits until its own deadline, and it is cancelled when its last waiter has gone. It
is charged once: the first caller handed its answer gets its usage, every other one (and every
cache hit) `FREE` usage and `cached: true`.

What the cache promises callers, and why: docs/design/guarantees.md.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import time
from collections import OrderedDict
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import msgspec
import orjson
from opentelemetry import trace
from opentelemetry.trace import Tracer

from rerank.server._breaker import Clock
from rerank.server._calls import current_call
from rerank.server._domain import (
    FREE,
    JsonObject,
    Ranked,
    Reranker,
    RerankerLayer,
    RerankOutcome,
    RerankQuery,
    Warning,
)
from rerank.server._errors import UpstreamTimeout
from rerank.server._metrics import Metrics
from rerank.server._tracing import CACHE_LOOKUP_SPAN, child_span

# Per entry besides its serialized outcome (the key, the entry, the LRU node), as tracemalloc
# measures it (a test checks the bound stays honest).
_OVERHEAD_PER_ENTRY = 400


def cache_key(query: RerankQuery) -> bytes:
    """The digest of everything that decides the ranking of `query`, and of whose cache it is: a
    named caller's own (so it never learns what another asked), unless it opts into sharing."""
    scope = None
    options = query.provider_options
    if query.caller is not None:
        if query.caller.shared_cache:
            # Its `gateway.user` (its name) decides whose bill, not the ranking.
            options = _without_gateway_user(options)
        else:
            scope = query.caller.name
    # The team decides which account the gateway bills: an answer one team paid for is not
    # handed free to another, and a call shared in flight goes out with its first caller's team.
    team = call.team if (call := current_call()) is not None else None
    material = orjson.dumps(
        [scope, team, query.model, query.query, query.kind, query.documents, query.top_n, options],
        option=orjson.OPT_SORT_KEYS,
    )
    return hashlib.sha256(material).digest()


def _without_gateway_user(options: JsonObject | None) -> JsonObject | None:
    if options is None or "gateway" not in options:
        return options
    gateway = {k: v for k, v in options["gateway"].items() if k != "user"}
    return {**options, "gateway": gateway}


def _pack(outcome: RerankOutcome) -> bytes:
    """An outcome as one bytes object: its size is its cost, and the garbage collector has
    nothing to traverse in it (many small objects slowed full collections under load). JSON by
    msgspec, which writes any integer the gateway's metadata may hold (orjson stops at 64 bits)."""
    packed = msgspec.json.encode(
        [
            [[r.index, r.score] for r in outcome.ranking],
            [dataclasses.astuple(w) for w in outcome.warnings],
            outcome.provider_metadata,
        ]
    )
    # A small answer's bytes keep msgspec's first buffer (about 256 bytes); a copy is exactly
    # its length, as the byte bound counts it.
    return memoryview(packed).tobytes()


def _unpack(blob: bytes) -> RerankOutcome:
    ranking, warnings, metadata = msgspec.json.decode(blob)
    return RerankOutcome(
        ranking=tuple(Ranked(index, score) for index, score in ranking),
        warnings=tuple(Warning(*fields) for fields in warnings),
        provider_metadata=metadata,
        cached=True,
        usage=FREE,
    )


class CacheEntries(Protocol):
    """Where cached answers (`_pack`'s bytes) are kept by key; `put` may decline one."""

    async def get(self, key: bytes) -> bytes | None: ...

    async def put(self, key: bytes, blob: bytes) -> None: ...

    async def clear(self) -> None: ...

    async def aclose(self) -> None: ...


# A plain (blob, expires) tuple: the collector stops tracking exact tuples of atomic values (an
# instance, or a NamedTuple, would stay tracked).
_Entry = tuple[bytes, float]


def _entry_size(entry: _Entry) -> int:
    return len(entry[0]) + _OVERHEAD_PER_ENTRY


class MemoryEntries:
    """`CacheEntries` in this process: an LRU of at most `max_bytes` (estimated)."""

    def __init__(
        self,
        *,
        ttl: float,
        max_bytes: int,
        clock: Clock = time.monotonic,
        metrics: Metrics | None = None,
    ) -> None:
        self._ttl = ttl
        self._max_bytes = max_bytes
        self._clock = clock
        self._metrics = metrics or Metrics.disabled()
        self._entries: OrderedDict[bytes, _Entry] = OrderedDict()
        self._bytes = 0

    async def get(self, key: bytes) -> bytes | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        blob, expires = entry
        if expires <= self._clock():
            self._evict(key)
            return None
        self._entries.move_to_end(key)
        return blob

    async def put(self, key: bytes, blob: bytes) -> None:
        entry = (blob, self._clock() + self._ttl)
        size = _entry_size(entry)
        if size > self._max_bytes:
            return
        if key in self._entries:
            self._evict(key)
        self._entries[key] = entry
        self._bytes += size
        while self._bytes > self._max_bytes:
            self._evict(next(iter(self._entries)))
        self._metrics.cache_size(self._bytes, len(self._entries))

    def _evict(self, key: bytes) -> None:
        self._bytes -= _entry_size(self._entries.pop(key))
        self._metrics.cache_size(self._bytes, len(self._entries))

    async def clear(self) -> None:
        self._entries.clear()
        self._bytes = 0
        self._metrics.cache_size(0, 0)

    async def aclose(self) -> None:
        await self.clear()


@dataclass
class _Flight:
    task: asyncio.Future[RerankOutcome]
    waiters: int = 0
    charged: bool = False  # a waiter was handed the answer with its usage


class CachingReranker(RerankerLayer):
    """Answers repeated requests from `entries`, by default `MemoryEntries` (none when
    `max_bytes` is 0)."""

    def __init__(
        self,
        inner: Reranker,
        *,
        ttl: float,
        max_bytes: int,
        upstream_timeout: float,
        clock: Clock = time.monotonic,
        metrics: Metrics | None = None,
        entries: CacheEntries | None = None,
        tracer: Tracer | None = None,
    ) -> None:
        super().__init__(inner)
        self._metrics = metrics or Metrics.disabled()
        self._tracer = tracer or trace.NoOpTracer()
        if entries is None and max_bytes > 0:
            entries = MemoryEntries(ttl=ttl, max_bytes=max_bytes, clock=clock, metrics=metrics)
        self._entries = entries
        self._upstream_timeout = upstream_timeout
        self._flights: dict[bytes, _Flight] = {}
        self.hits = 0
        self.misses = 0

    def rerank(self, query: RerankQuery, *, timeout: float) -> Coroutine[Any, Any, RerankOutcome]:
        if not query.cacheable or self._entries is None:  # without a frame of this layer's own
            return self._inner.rerank(query, timeout=timeout)
        return self._cached(query, self._entries, timeout)

    async def _cached(
        self, query: RerankQuery, entries: CacheEntries, timeout: float
    ) -> RerankOutcome:
        lookup = child_span(self._tracer, CACHE_LOOKUP_SPAN)
        key = cache_key(query)
        try:
            blob = await entries.get(key)
        except BaseException:
            lookup.end()  # a shared store that failed: the span ends without a result
            raise
        flight = None if blob is not None else self._flights.get(key)
        result: Literal["hit", "miss", "coalesced"]
        result = "hit" if blob is not None else "miss" if flight is None else "coalesced"
        if result == "miss":
            self.misses += 1
        else:
            self.hits += 1
        self._metrics.cache_lookup(result)
        if lookup.is_recording():
            lookup.set_attribute("rerank.cache.result", result)
            lookup.end()
        if blob is not None:
            return _unpack(blob)
        if flight is None:
            flight = self._start(key, query)
        return await self._join(key, flight, timeout)

    def _start(self, key: bytes, query: RerankQuery) -> _Flight:
        # Not this caller's deadline: callers who join later may wait longer.
        flight = _Flight(asyncio.ensure_future(self._fetch(key, query, self._upstream_timeout)))
        self._flights[key] = flight
        flight.task.add_done_callback(lambda _: self._forget(key, flight))
        return flight

    async def _fetch(self, key: bytes, query: RerankQuery, timeout: float) -> RerankOutcome:
        outcome = await self._inner.rerank(query, timeout=timeout)
        assert self._entries is not None  # no call is shared without them
        await self._entries.put(key, _pack(outcome))
        return outcome

    async def _join(self, key: bytes, flight: _Flight, timeout: float) -> RerankOutcome:
        flight.waiters += 1
        try:
            # Waited on, not awaited: a waiter leaving, by its deadline or cancelled, does not
            # cancel the call the others wait for...
            await asyncio.wait((flight.task,), timeout=timeout)
        finally:
            flight.waiters -= 1
            # ...but when the last one leaves, nobody needs it.
            if flight.waiters == 0 and not flight.task.done():
                self._forget(key, flight)
                flight.task.cancel()
            elif flight.waiters == 0 and not flight.task.cancelled():
                flight.task.exception()  # read: an error no waiter is left for is not logged
        if not flight.task.done():
            raise UpstreamTimeout(f"the gateway did not answer within {timeout:.3g} s")
        outcome = flight.task.result()
        if flight.charged:
            return dataclasses.replace(outcome, cached=True, usage=FREE)
        flight.charged = True
        return outcome

    def _forget(self, key: bytes, flight: _Flight) -> None:
        if self._flights.get(key) is flight:
            del self._flights[key]

    async def clear(self) -> None:
        """Forget every stored answer (calls in flight still finish and share theirs)."""
        if self._entries is not None:
            await self._entries.clear()

    async def aclose(self) -> None:
        await self._inner.aclose()
        if self._entries is not None:
            await self._entries.aclose()
