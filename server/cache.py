"""A content-addressed result cache, with identical concurrent calls sharing one upstream call.

The key is a SHA-256 of everything that decides a ranking: model, query, document kind and
documents, `top_n` and provider options (keys sorted, so the order a Struct's map arrives in
does not matter). Entries live `ttl` seconds; the least recently used go first once the
entries' estimated size passes `max_bytes`. Only what a caller would get as OK is stored: the
answer is checked, sorted and cut (`domain.final_outcome`) before it is kept, so an answer the
check refuses is an error like any other, and errors are never cached.

Identical calls that arrive while one is in flight wait for it instead of calling upstream
again. The shared call belongs to no one caller: it runs under the upstream timeout, each
caller waits for it only until its own deadline, and it is cancelled when the last caller
waiting for it has gone — so its deadline is, in effect, the longest of its current waiters',
one caller's cancellation or short deadline never fails another's call, and nobody's
departure leaves an orphan HTTP request running. A cancelled call is forgotten at once: an
identical call arriving while it unwinds starts a new one rather than joining it.

Usage (`domain.Usage`) is charged once per upstream call: the first caller handed the shared
answer gets its usage; every other caller it serves, and every cache hit, gets `FREE` usage
and `cached: true`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import time
from collections import OrderedDict
from dataclasses import dataclass

import orjson

from rerank.server.domain import (
    FREE,
    Ranked,
    Reranker,
    RerankerLayer,
    RerankOutcome,
    RerankQuery,
    Warning,
    final_outcome,
)
from rerank.server.errors import UpstreamTimeout
from rerank.server.metrics import Metrics
from rerank.server.resilience import Clock

# Per entry besides its serialized outcome: the key, the entry object, the LRU node. Measured
# with tracemalloc (tests/unit/test_windows_and_cache.py checks the bound stays honest).
_OVERHEAD_PER_ENTRY = 400


def cache_key(query: RerankQuery) -> bytes:
    """The digest of everything that decides the ranking of `query`."""
    material = orjson.dumps(
        [
            query.model,
            query.query,
            query.kind,
            query.documents,
            query.top_n,
            query.provider_options,
        ],
        option=orjson.OPT_SORT_KEYS,
    )
    return hashlib.sha256(material).digest()


def _pack(outcome: RerankOutcome) -> bytes:
    """An outcome as one bytes object: its size is what it costs, and the garbage collector
    has nothing to traverse in it (a cache of many small objects makes every full collection
    slower, which showed as event-loop stalls under load)."""
    packed = orjson.dumps(
        [
            [[r.index, r.score] for r in outcome.ranking],
            [dataclasses.astuple(w) for w in outcome.warnings],
            outcome.provider_metadata,
        ]
    )
    # orjson's bytes keep its whole write buffer (4 KiB at least); a copy is exactly its length.
    return memoryview(packed).tobytes()


def _unpack(blob: bytes) -> RerankOutcome:
    ranking, warnings, metadata = orjson.loads(blob)
    return RerankOutcome(
        ranking=tuple(Ranked(index, score) for index, score in ranking),
        warnings=tuple(Warning(*fields) for fields in warnings),
        provider_metadata=metadata,
        cached=True,
        usage=FREE,
    )


# An entry is a plain (blob, expires) tuple: the collector stops tracking exact tuples of
# atomic values, so a full cache adds nothing to a full collection's work (a class instance, or
# even a NamedTuple, would stay tracked).
_Entry = tuple[bytes, float]


def _entry_size(entry: _Entry) -> int:
    return len(entry[0]) + _OVERHEAD_PER_ENTRY


@dataclass
class _Flight:
    """One upstream call, and the callers waiting for it."""

    task: asyncio.Future[RerankOutcome]
    waiters: int = 0
    #: Whether a waiter has been handed the answer with its usage (the others get FREE).
    charged: bool = False


class CachingReranker(RerankerLayer):
    """A `Reranker` that answers repeated requests from memory."""

    def __init__(
        self,
        inner: Reranker,
        *,
        ttl: float,
        max_bytes: int,
        upstream_timeout: float,
        clock: Clock = time.monotonic,
        metrics: Metrics | None = None,
    ) -> None:
        super().__init__(inner)
        self._metrics = metrics or Metrics.disabled()
        self._ttl = ttl
        self._max_bytes = max_bytes
        self._upstream_timeout = upstream_timeout
        self._clock = clock
        self._entries: OrderedDict[bytes, _Entry] = OrderedDict()
        self._bytes = 0
        self._flights: dict[bytes, _Flight] = {}
        self.hits = 0
        self.misses = 0

    async def rerank(self, query: RerankQuery, *, timeout: float) -> RerankOutcome:
        if not query.cacheable or self._max_bytes <= 0:
            return await self._inner.rerank(query, timeout=timeout)
        key = cache_key(query)
        cached = self._lookup(key)
        if cached is not None:
            self.hits += 1
            self._metrics.cache_lookup("hit")
            return cached
        flight = self._flights.get(key)
        if flight is not None:
            self.hits += 1
            self._metrics.cache_lookup("coalesced")
        else:
            self.misses += 1
            self._metrics.cache_lookup("miss")
            flight = self._start(key, query)
        return await self._join(key, flight, timeout)

    def _start(self, key: bytes, query: RerankQuery) -> _Flight:
        # Under the upstream timeout, not this caller's deadline: callers who join later
        # may wait longer, and the call ends anyway when the last of them leaves (`_join`).
        flight = _Flight(asyncio.ensure_future(self._fetch(key, query, self._upstream_timeout)))
        self._flights[key] = flight
        flight.task.add_done_callback(lambda _: self._forget(key, flight))
        return flight

    async def _fetch(self, key: bytes, query: RerankQuery, timeout: float) -> RerankOutcome:
        # Checked before it is stored: an answer the check refuses raises here, for every
        # waiter, and never reaches the cache.
        outcome = final_outcome(await self._inner.rerank(query, timeout=timeout), query)
        self._store(key, outcome)
        return outcome

    async def _join(self, key: bytes, flight: _Flight, timeout: float) -> RerankOutcome:
        flight.waiters += 1
        try:
            async with asyncio.timeout(timeout) as own_deadline:
                # shield: a waiter leaving must not cancel the call the others wait for...
                outcome = await asyncio.shield(flight.task)
        except TimeoutError:
            if not own_deadline.expired():
                raise
            raise UpstreamTimeout(f"the gateway did not answer within {timeout:.3g} s") from None
        finally:
            flight.waiters -= 1
            # ...but when the last one leaves, nobody needs it.
            if flight.waiters == 0 and not flight.task.done():
                self._forget(key, flight)
                flight.task.cancel()
        if flight.charged:
            return dataclasses.replace(outcome, cached=True, usage=FREE)
        flight.charged = True
        return outcome

    def _forget(self, key: bytes, flight: _Flight) -> None:
        """Stop offering `flight` to new callers (it ended, or is being cancelled)."""
        if self._flights.get(key) is flight:
            del self._flights[key]

    def clear(self) -> None:
        """Forget every stored answer (calls in flight still finish and share theirs)."""
        self._entries.clear()
        self._bytes = 0
        self._metrics.cache_size(0, 0)

    def _lookup(self, key: bytes) -> RerankOutcome | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        blob, expires = entry
        if expires <= self._clock():
            self._evict(key)
            return None
        self._entries.move_to_end(key)
        return _unpack(blob)

    def _store(self, key: bytes, outcome: RerankOutcome) -> None:
        entry = (_pack(outcome), self._clock() + self._ttl)
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
