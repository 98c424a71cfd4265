"""Windows for large requests and the result cache, around a scripted backend.

The backend scores each document by a fixed table, so a windowed ranking can be compared with
the ranking of the whole set, and it counts calls so sharing and caching can be seen. Its
answers are gateway answers read by the gateway adapter's parser, so the layers get what they
get in production: rankings already checked against the documents each call carried.
"""

from __future__ import annotations

import asyncio
import dataclasses
import tracemalloc
import zlib
from dataclasses import dataclass, field
from decimal import Decimal

import orjson
import pytest

from rerank.server._cache import CachingReranker, cache_key
from rerank.server._domain import (
    FREE,
    ModelInfo,
    Ranked,
    RerankOutcome,
    RerankQuery,
    Usage,
    best_first,
)
from rerank.server._errors import UpstreamProtocolError, UpstreamTimeout, UpstreamUnavailable
from rerank.server._gateway import parse_rerank_body
from rerank.server._metrics import Metrics
from rerank.server._prometheus import PrometheusRecorder
from rerank.server._windows import WindowedReranker, WindowPolicy
from tests.fake_clock import FakeClock
from tests.scrapes import Scrape
from tools.waiting import until_async


def score_of(document: str) -> float:
    # Deterministic and absolute, like a relevance score: depends on the document alone.
    return (zlib.crc32(document.encode()) % 10_000) / 10_000


class Backend:
    def __init__(self, delay: float = 0.0) -> None:
        self.calls: list[int] = []
        self.in_flight = 0
        self.most_in_flight = 0
        self.delay = delay
        self.fail_with: Exception | None = None
        self.cancelled = 0
        self.bad_index = False
        #: Set as calls start and end.
        self.changed = asyncio.Event()

    async def rerank(self, query: RerankQuery, *, timeout: float) -> RerankOutcome:
        self.calls.append(len(query.documents))
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        self.changed.set()
        try:
            await asyncio.sleep(self.delay)
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        finally:
            self.in_flight -= 1
            self.changed.set()
        if self.fail_with is not None:
            raise self.fail_with
        ranking = [
            {"index": i, "relevanceScore": score_of(d)}  # type: ignore[arg-type]
            for i, d in enumerate(query.documents)
        ]
        if self.bad_index:
            ranking.append({"index": len(query.documents), "relevanceScore": 1.0})
        ranking.sort(key=lambda r: -r["relevanceScore"])
        answer = {
            "ranking": ranking[: query.top_n] if query.top_n else ranking,
            "warnings": [{"type": "other", "message": "same in every window"}],
            "providerMetadata": {"gateway": {"cost": "0.001"}},
        }
        return parse_rerank_body(
            orjson.dumps(answer), document_count=len(query.documents), top_n=query.top_n
        )

    async def list_models(self, *, timeout: float) -> tuple[ModelInfo, ...]:
        return ()

    async def aclose(self) -> None:
        pass


def query(n: int, top_n: int | None = None, model: str = "cohere/rerank-v3.5") -> RerankQuery:
    return RerankQuery(
        model=model,
        query="q",
        kind="text",
        documents=tuple(f"document number {i}" for i in range(n)),
        top_n=top_n,
    )


@pytest.mark.parametrize(("n", "top_n"), [(10, None), (25, None), (25, 3), (1000, 7)])
async def test_windows_rank_like_one_call(n: int, top_n: int | None) -> None:
    backend = Backend()
    windowed = WindowedReranker(backend, WindowPolicy(sizes={"cohere": 10}, parallelism=2))
    outcome = await windowed.rerank(query(n, top_n), timeout=10)
    whole = await Backend().rerank(query(n, top_n), timeout=10)
    assert outcome.ranking == whole.ranking
    assert backend.calls == [min(10, n - start) for start in range(0, n, 10)]
    assert backend.most_in_flight <= 2
    assert len(outcome.warnings) == 1  # merged, not repeated per window
    # Every window's cost and call, not the first window's alone.
    windows = len(backend.calls)
    assert outcome.usage == Usage(Decimal("0.001") * windows, upstream_calls=windows)


async def test_one_window_of_unknown_cost_makes_the_total_unknown() -> None:
    class SecondWindowSaysNothing(Backend):
        async def rerank(self, query: RerankQuery, *, timeout: float) -> RerankOutcome:
            outcome = await super().rerank(query, timeout=timeout)
            if query.documents[0] == "document number 10":
                return dataclasses.replace(outcome, usage=Usage(None, upstream_calls=1))
            return outcome

    windowed = WindowedReranker(SecondWindowSaysNothing(), WindowPolicy(sizes={"cohere": 10}))
    outcome = await windowed.rerank(query(30), timeout=10)
    assert outcome.usage == Usage(cost=None, upstream_calls=3)


def test_window_sizes_by_model_then_provider_then_default() -> None:
    policy = WindowPolicy(sizes={"voyage": 1000, "voyage/rerank-2.5-lite": 500}, default_size=64)
    assert policy.size_for("voyage/rerank-2.5-lite") == 500
    assert policy.size_for("voyage/rerank-2.5") == 1000
    assert policy.size_for("jina/reranker-v2") == 64


async def test_the_models_listed_carry_the_window_each_gets() -> None:
    class Listing(Backend):
        async def list_models(self, *, timeout: float) -> tuple[ModelInfo, ...]:
            return (
                ModelInfo(id="voyage/rerank-2.5-lite", name="Lite"),
                ModelInfo(id="voyage/rerank-2.5"),
                ModelInfo(id="jina/reranker-v2"),
            )

    policy = WindowPolicy(sizes={"voyage": 1000, "voyage/rerank-2.5-lite": 500}, default_size=64)
    models = await WindowedReranker(Listing(), policy).list_models(timeout=1)
    assert [(m.id, m.documents_per_upstream_call) for m in models] == [
        ("voyage/rerank-2.5-lite", 500),
        ("voyage/rerank-2.5", 1000),
        ("jina/reranker-v2", 64),
    ]
    assert models[0].name == "Lite"  # the rest as the backend gave it


async def test_windows_run_in_parallel() -> None:
    backend = Backend(delay=0.2)
    windowed = WindowedReranker(backend, WindowPolicy(sizes={"cohere": 10}, parallelism=4))
    await windowed.rerank(query(40), timeout=10)
    assert backend.most_in_flight == 4


async def test_a_bad_index_in_one_window_cannot_pass_for_another_windows() -> None:
    backend = Backend()
    backend.bad_index = True  # index 10 in a window of 10: valid in the merged numbering
    windowed = WindowedReranker(backend, WindowPolicy(sizes={"cohere": 10}))
    with pytest.raises(UpstreamProtocolError):
        await windowed.rerank(query(20), timeout=10)


async def test_one_failed_window_cancels_the_others() -> None:
    class FirstWindowFails(Backend):
        async def rerank(self, query: RerankQuery, *, timeout: float) -> RerankOutcome:
            if query.documents[0] == "document number 0":
                raise UpstreamUnavailable("down")
            return await super().rerank(query, timeout=timeout)

    backend = FirstWindowFails(delay=5)
    windowed = WindowedReranker(backend, WindowPolicy(sizes={"cohere": 10}, parallelism=4))
    with pytest.raises(UpstreamUnavailable):
        await asyncio.wait_for(windowed.rerank(query(40), timeout=10), 2)
    assert backend.cancelled == 3


async def test_a_caller_leaving_cancels_every_window() -> None:
    backend = Backend(delay=5)
    windowed = WindowedReranker(backend, WindowPolicy(sizes={"cohere": 10}, parallelism=4))
    task = asyncio.ensure_future(windowed.rerank(query(40), timeout=10))
    await until_async(lambda: backend.in_flight == 4, "4 in flight", changed=backend.changed)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert backend.cancelled == 4


# --- the cache ------------------------------------------------------------------------------


def caching(backend: Backend, **kwargs: object) -> tuple[CachingReranker, FakeClock]:
    clock = FakeClock()
    options: dict[str, object] = {"ttl": 60.0, "max_bytes": 1_000_000, "upstream_timeout": 30.0}
    options.update(kwargs)
    return CachingReranker(backend, clock=clock, **options), clock  # type: ignore[arg-type]


async def test_a_repeated_request_is_answered_from_the_cache() -> None:
    backend = Backend()
    cache, _ = caching(backend)
    first = await cache.rerank(query(5), timeout=10)
    second = await cache.rerank(query(5), timeout=10)
    assert not first.cached
    assert second.cached
    assert second.ranking == first.ranking
    assert backend.calls == [5]
    # The first call paid; the hit costs nothing, and says so (not the original's cost again).
    assert first.usage == Usage(Decimal("0.001"), upstream_calls=1)
    assert second.usage == FREE


async def test_a_refused_answer_is_never_stored() -> None:
    """The cache keeps only what a caller would get as OK: an answer the ranking check
    refuses is an error, so the next identical call goes upstream again."""
    backend = Backend()
    cache, _ = caching(backend)
    backend.bad_index = True
    with pytest.raises(UpstreamProtocolError):
        await cache.rerank(query(5), timeout=10)
    backend.bad_index = False
    assert not (await cache.rerank(query(5), timeout=10)).cached
    assert backend.calls == [5, 5]


async def test_what_is_stored_is_sorted_and_cut() -> None:
    backend = Backend()
    cache, _ = caching(backend)
    first = await cache.rerank(query(5, top_n=2), timeout=10)
    hit = await cache.rerank(query(5, top_n=2), timeout=10)
    assert hit.ranking == first.ranking
    assert first.ranking == best_first(first.ranking, 2)


def test_the_key_covers_everything_that_decides_a_ranking() -> None:
    base = query(3, top_n=2)
    variants = [
        dataclasses.replace(base, model="voyage/rerank-2.5"),
        dataclasses.replace(base, query="other"),
        dataclasses.replace(base, documents=("a", "b", "c")),
        dataclasses.replace(base, top_n=3),
        dataclasses.replace(base, provider_options={"cohere": {"maxTokensPerDoc": 5}}),
        dataclasses.replace(base, kind="object", documents=({"t": "a"}, {"t": "b"}, {"t": "c"})),
    ]
    keys = {cache_key(base)} | {cache_key(v) for v in variants}
    assert len(keys) == len(variants) + 1
    # Key order inside provider options does not matter (a Struct's map has none).
    a = dataclasses.replace(base, provider_options={"x": {"a": 1, "b": 2}, "y": {}})
    b = dataclasses.replace(base, provider_options={"y": {}, "x": {"b": 2, "a": 1}})
    assert cache_key(a) == cache_key(b)


async def test_entries_expire() -> None:
    backend = Backend()
    cache, clock = caching(backend, ttl=10.0)
    await cache.rerank(query(5), timeout=10)
    clock.now = 10.5
    assert not (await cache.rerank(query(5), timeout=10)).cached
    assert backend.calls == [5, 5]


async def test_clear_forgets_every_answer() -> None:
    backend = Backend()
    cache, _ = caching(backend, max_bytes=1000)
    await cache.rerank(query(1), timeout=10)
    assert (await cache.rerank(query(1), timeout=10)).cached
    await cache.clear()
    assert not (await cache.rerank(query(1), timeout=10)).cached
    # The byte count was reset too: two entries still fit after the clear.
    await cache.rerank(query(2), timeout=10)
    assert (await cache.rerank(query(1), timeout=10)).cached
    assert backend.calls == [1, 1, 2]


async def test_clear_empties_the_cache_gauges_too() -> None:
    recorder = PrometheusRecorder()
    cache, _ = caching(Backend(), metrics=Metrics(recorder))
    await cache.rerank(query(1), timeout=10)
    await cache.rerank(query(2), timeout=10)
    assert Scrape.of(recorder).total("rerank_cache_entries") == 2
    await cache.clear()
    cleared = Scrape.of(recorder)
    assert cleared.total("rerank_cache_entries") == 0
    assert cleared.total("rerank_cache_bytes") == 0


async def test_the_byte_bound_evicts_the_least_recently_used() -> None:
    backend = Backend()
    cache, _ = caching(backend, max_bytes=1000)  # room for two small entries, not three
    for n in (1, 2, 1, 3):
        await cache.rerank(query(n), timeout=10)
    assert (await cache.rerank(query(1), timeout=10)).cached  # used recently: kept
    assert not (await cache.rerank(query(2), timeout=10)).cached  # the oldest: evicted


async def test_errors_are_not_cached_and_bypass_is_honoured() -> None:
    backend = Backend()
    cache, _ = caching(backend)
    backend.fail_with = UpstreamUnavailable("down")
    with pytest.raises(UpstreamUnavailable):
        await cache.rerank(query(5), timeout=10)
    backend.fail_with = None
    assert not (await cache.rerank(query(5), timeout=10)).cached
    bypass = dataclasses.replace(query(5), cacheable=False)
    assert not (await cache.rerank(bypass, timeout=10)).cached
    assert backend.calls == [5, 5, 5]
    off, _ = caching(Backend(), max_bytes=0)
    await off.rerank(query(5), timeout=10)
    assert not (await off.rerank(query(5), timeout=10)).cached


# --- calls in flight, shared: a backend whose every call waits until the test answers it ------


@dataclass
class HeldCall:
    """One upstream call of `HeldBackend`, as the test sees it."""

    timeout: float
    answer: asyncio.Event = field(default_factory=asyncio.Event)
    cancelled: asyncio.Event = field(default_factory=asyncio.Event)
    #: Set by the test to let a cancelled call finish unwinding (when the backend holds it).
    unwound: asyncio.Event = field(default_factory=asyncio.Event)


class HeldBackend:
    """Each call is announced on `arrived`, then waits until the test sets its `answer`; a
    cancelled call sets `cancelled`, and with `slow_to_cancel` waits for `unwound` before it
    ends, as an HTTP request being torn down does."""

    def __init__(self, *, slow_to_cancel: bool = False) -> None:
        self.arrived: asyncio.Queue[HeldCall] = asyncio.Queue()
        self.slow_to_cancel = slow_to_cancel

    async def rerank(self, query: RerankQuery, *, timeout: float) -> RerankOutcome:
        call = HeldCall(timeout)
        self.arrived.put_nowait(call)
        try:
            await call.answer.wait()
        except asyncio.CancelledError:
            call.cancelled.set()
            if self.slow_to_cancel:
                await call.unwound.wait()
            raise
        return RerankOutcome(
            ranking=(Ranked(0, 0.5),), usage=Usage(Decimal("0.001"), upstream_calls=1)
        )

    async def next_call(self) -> HeldCall:
        return await asyncio.wait_for(self.arrived.get(), 5)

    async def list_models(self, *, timeout: float) -> tuple[ModelInfo, ...]:
        return ()

    async def aclose(self) -> None:
        pass


async def test_identical_concurrent_calls_share_one_upstream_call() -> None:
    backend = HeldBackend()
    cache, _ = caching(backend)  # type: ignore[arg-type]
    callers = [asyncio.ensure_future(cache.rerank(query(5), timeout=10)) for _ in range(10)]
    call = await backend.next_call()
    await until_async(lambda: cache.hits == 9, "9 joined the call")
    call.answer.set()
    outcomes = await asyncio.gather(*callers)
    assert backend.arrived.empty()  # the only upstream call
    # Charged once: one caller carries the call's usage, the nine others ride free.
    assert [o.usage for o in outcomes if not o.cached] == [Usage(Decimal("0.001"), 1)]
    assert [o.usage for o in outcomes if o.cached] == [FREE] * 9


async def test_a_shared_call_outlives_its_first_callers_deadline() -> None:
    backend = HeldBackend()
    cache, _ = caching(backend, upstream_timeout=30.0)  # type: ignore[arg-type]
    short = asyncio.ensure_future(cache.rerank(query(5), timeout=0.5))
    call = await backend.next_call()
    long = asyncio.ensure_future(cache.rerank(query(5), timeout=20))
    await until_async(lambda: cache.hits == 1, "1 joined the call")
    assert not short.done()  # the long caller joined while the short one still waited
    # The shared call was not given the first caller's deadline but the upstream timeout...
    assert call.timeout == 30.0
    with pytest.raises(UpstreamTimeout):
        await asyncio.wait_for(short, 5)
    # ...so the first caller's deadline ends the first caller only.
    assert not call.cancelled.is_set()
    call.answer.set()
    answer = await asyncio.wait_for(long, 5)
    assert answer.ranking
    # The caller handed the answer is charged for it (the first one left with nothing).
    assert (answer.cached, answer.usage) == (False, Usage(Decimal("0.001"), 1))


async def test_a_caller_alone_ends_at_its_deadline_and_cancels_the_call() -> None:
    backend = HeldBackend()
    cache, _ = caching(backend)  # type: ignore[arg-type]
    caller = asyncio.ensure_future(cache.rerank(query(5), timeout=0.05))
    call = await backend.next_call()
    with pytest.raises(UpstreamTimeout):
        await asyncio.wait_for(caller, 5)
    await asyncio.wait_for(call.cancelled.wait(), 5)


async def test_one_caller_leaving_does_not_fail_the_others() -> None:
    backend = HeldBackend()
    cache, _ = caching(backend)  # type: ignore[arg-type]
    leaving = asyncio.ensure_future(cache.rerank(query(5), timeout=10))
    call = await backend.next_call()
    staying = asyncio.ensure_future(cache.rerank(query(5), timeout=10))
    await until_async(lambda: cache.hits == 1, "1 joined the call")
    leaving.cancel()
    with pytest.raises(asyncio.CancelledError):
        await leaving
    call.answer.set()
    assert (await staying).ranking
    assert not call.cancelled.is_set()


async def test_when_every_caller_leaves_the_upstream_call_is_cancelled() -> None:
    backend = HeldBackend()
    cache, _ = caching(backend)  # type: ignore[arg-type]
    callers = [asyncio.ensure_future(cache.rerank(query(5), timeout=10)) for _ in range(3)]
    call = await backend.next_call()
    await until_async(lambda: cache.hits == 2, "2 joined the call")
    for caller in callers:
        caller.cancel()
    await asyncio.gather(*callers, return_exceptions=True)
    await asyncio.wait_for(call.cancelled.wait(), 5)


async def test_a_call_arriving_while_the_shared_call_is_cancelled_starts_a_new_one() -> None:
    """The last caller left, and the upstream call is still unwinding: an identical call now
    must not join it (it would end CANCELLED through no fault of its own)."""
    backend = HeldBackend(slow_to_cancel=True)
    cache, _ = caching(backend)  # type: ignore[arg-type]
    gone = asyncio.ensure_future(cache.rerank(query(5), timeout=10))
    dying = await backend.next_call()
    gone.cancel()
    await asyncio.wait_for(dying.cancelled.wait(), 5)
    newcomer = asyncio.ensure_future(cache.rerank(query(5), timeout=10))
    fresh = await backend.next_call()
    fresh.answer.set()
    answer = await asyncio.wait_for(newcomer, 5)
    assert (answer.cached, answer.usage) == (False, Usage(Decimal("0.001"), 1))
    dying.unwound.set()
    with pytest.raises(asyncio.CancelledError):
        await gone


async def test_the_byte_bound_is_honest_about_memory() -> None:
    """What the cache counts is what it holds: a full cache of top-10 rankings takes no more
    memory (traced by tracemalloc) than its bound, give or take a fifth."""
    bound = 2_000_000
    cache, _ = caching(Backend(), max_bytes=bound, ttl=3600.0)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for i in range(20_000):
            await cache.rerank(dataclasses.replace(query(30, top_n=10), query=f"q{i}"), timeout=10)
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert cache.misses == 20_000  # the bound, not the loop, decided what stayed
    assert 0.8 * bound < held < 1.2 * bound, held
