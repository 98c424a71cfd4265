"""What the server records, where each thing happens: `Metrics`, handed by the app's wiring to
every part that records, and `MeteredUpstream` around the gateway adapter. `Metrics` records into
what a `PrometheusRecorder` makes (`rerank.server._prometheus`): the library's metrics in its
files, or `Tally`s in memory; or into `Tally`s nobody collects (`Metrics.disabled()`). This
module does not import the library, because the settings import it: the library chooses a
process's storage when first imported, after the entry (`rerank.server.__main__`) has read its
settings. The children (label sets) of a call's path are made once and kept; rarer ones
(retries, refusals) are looked up on each use (`labels()`).
"""

from __future__ import annotations

import functools
import time
from bisect import bisect_left
from collections.abc import Callable, Iterable
from decimal import Decimal
from typing import TYPE_CHECKING, Literal

import grpc

from rerank.server import _metric_families as family
from rerank.server._domain import ModelInfo, Reranker, RerankerLayer, RerankOutcome, RerankQuery
from rerank.server._errors import UpstreamError

if TYPE_CHECKING:  # the library is imported by the recorder, once the entry has chosen its storage
    from prometheus_client import Counter, Histogram

    from rerank.server._prometheus import PrometheusRecorder

#: Models the gateway has answered for, at most: beyond it a new model counts as `other`, so a
#: gateway that accepted any name could still not grow the label set without bound.
MAX_MODEL_LABELS = 64
OTHER = "other"


class Tally:
    """A family's value in this process's memory, or one child's (`labels`), when one process
    keeps its metrics (or none are kept). Plain numbers, no lock (every recording is made on
    the event loop's thread): a tenth of the cost of the library's values."""

    __slots__ = ("children", "counts", "family", "sum", "value")

    def __init__(self, family: family.Family) -> None:
        self.family = family
        self.children: dict[tuple[str, ...], Tally] = {}
        self.value = self.sum = 0.0
        #: A histogram's observations by bucket (the last: above every bound), not cumulative.
        self.counts = [0] * (len(family.buckets) + 1)

    def labels(self, **labels: str) -> Tally:
        key = tuple(labels[name] for name in self.family.labels)
        child = self.children.get(key)
        if child is None:
            child = self.children[key] = Tally(self.family)
        return child

    def inc(self, amount: float = 1) -> None:
        self.value += amount

    def set(self, value: float) -> None:
        self.value = value

    def observe(self, amount: float) -> None:
        self.counts[bisect_left(self.family.buckets, amount)] += 1
        self.sum += amount


class Tallies(list[Tally]):
    """Makes a `Tally` per family and keeps them, in the order made."""

    def counter(self, family: family.Family, /) -> Tally:
        self.append(made := Tally(family))
        return made

    gauge = histogram = counter


class GrpcMethodMetrics:
    """The A66 metrics of one method: started, and per status duration and sizes."""

    def __init__(
        self, method: str, started: Counter | Tally, ended: tuple[Histogram | Tally, ...]
    ) -> None:
        self.started = started.labels(grpc_method=method)
        self._method, self._families = method, ended
        self._ended: dict[grpc.StatusCode, tuple[Histogram | Tally, ...]] = {}

    def ended(self, code: grpc.StatusCode, seconds: float, received: int, sent: int) -> None:
        children = self._ended.get(code)
        if children is None:
            labels = {"grpc_method": self._method, "grpc_status": code.name}
            children = self._ended[code] = tuple(f.labels(**labels) for f in self._families)
        duration, rcvd, sent_bytes = children
        duration.observe(seconds)
        rcvd.observe(received)
        sent_bytes.observe(sent)


class Metrics:
    """Everything one process records. Made in the app's wiring (with a recorder from
    `rerank.server._prometheus`) and handed to the parts that record; `Metrics.disabled()` when
    no metrics port is set.

    Every family but one (`limits_decided_locally`) is made here: one without labels shows from
    then, one with labels from its first child. Children of label values known in advance are
    made here too (at 0), so a first increment is an increase Prometheus can see, and the
    series are there to alert on."""

    def __init__(self, recorder: PrometheusRecorder | None) -> None:
        self.enabled = recorder is not None
        self._recorder = make = recorder or Tallies()
        self._grpc_started = make.counter(family.GRPC_STARTED)
        self._grpc_ended = tuple(
            make.histogram(f) for f in (family.GRPC_DURATION, family.GRPC_RCVD, family.GRPC_SENT)
        )
        self._attempts = make.counter(family.UPSTREAM_ATTEMPTS)
        self._attempt_seconds = make.histogram(family.UPSTREAM_DURATION)
        self._cost = make.counter(family.COST)
        self._retries = make.counter(family.RETRIES)
        self._batch = make.counter(family.BATCH_REQUESTS)
        self._caller_calls = make.counter(family.CALLER_CALLS)
        self._caller_refusals = make.counter(family.CALLER_REFUSALS)
        self._redis_up = make.gauge(family.REDIS_UP)
        cache = make.counter(family.CACHE_REQUESTS)
        refusals = make.counter(family.ADMISSION_REFUSALS)
        self._cache = {r: cache.labels(result=r) for r in ("hit", "miss", "coalesced")}
        self._refusals = {
            r: refusals.labels(reason=r) for r in ("concurrent_calls", "inflight_bytes")
        }
        states = ("closed", "open", "half_open")
        state = make.gauge(family.BREAKER_STATE)
        self._breaker_state = {s: state.labels(state=s) for s in states}
        transitions = make.counter(family.BREAKER_TRANSITIONS)
        self._breaker_transitions = {s: transitions.labels(to=s) for s in states}
        self._batch_ok = self._batch.labels(grpc_status="OK")
        self._cache_bytes = make.gauge(family.CACHE_BYTES)
        self._cache_entries = make.gauge(family.CACHE_ENTRIES)
        #: How many documents one valid request (or request of a BatchRerank) has.
        self.documents: Callable[[int], None] = make.histogram(family.DOCUMENTS).observe
        #: How many windows one request past the cache was split into.
        self.windows: Callable[[int], None] = make.histogram(family.WINDOWS).observe
        #: A call entered (+1) or left (-1) the server's admission.
        self.admitted: Callable[[int], None] = make.gauge(family.IN_FLIGHT).inc
        self.retry_budget_exhausted: Callable[[], None] = make.counter(
            family.RETRY_BUDGET_EXHAUSTED
        ).inc
        self.breaker_state("closed")
        # Children of label values only known as calls come, made once.
        self._grpc_methods: dict[str, GrpcMethodMetrics] = {}
        self._upstream: dict[tuple[str, ...], tuple[Counter | Tally, Histogram | Tally]] = {}
        self._costs: dict[tuple[str, str], Counter | Tally] = {}
        self._callers: dict[str, Counter | Tally] = {}
        self._answered_models: set[str] = set()

    @classmethod
    def disabled(cls) -> Metrics:
        return cls(None)

    def close(self) -> None:
        """Nothing to release: prometheus-client keeps a process's files open for the life of
        the process, shared by all of its metrics."""

    def grpc_method(self, method: str) -> GrpcMethodMetrics:
        """The children of `method` (e.g. `rerank.v1.RerankService/Rerank`, or `other`)."""
        found = self._grpc_methods.get(method)
        if found is None:
            found = self._grpc_methods[method] = GrpcMethodMetrics(
                method, self._grpc_started, self._grpc_ended
            )
        return found

    def batch_request(self, code: grpc.StatusCode) -> None:
        """One request of a BatchRerank was answered with `code` (OK: its response)."""
        ok = code is grpc.StatusCode.OK
        (self._batch_ok if ok else self._batch.labels(grpc_status=code.name)).inc()

    def refused(self, reason: Literal["concurrent_calls", "inflight_bytes"]) -> None:
        self._refusals[reason].inc()

    def cache_lookup(self, result: Literal["hit", "miss", "coalesced"]) -> None:
        self._cache[result].inc()

    def cache_size(self, size: int, entries: int) -> None:
        self._cache_bytes.set(size)
        self._cache_entries.set(entries)

    def retry(self, reason: str) -> None:
        self._retries.labels(reason=reason).inc()

    def breaker_state(self, state: str) -> None:
        """This process's circuit is now in `state` (a `livesum` gauge per state: summed over
        the live workers, it says how many are in each)."""
        for name, gauge in self._breaker_state.items():
            gauge.set(1 if name == state else 0)

    def breaker_transition(self, state: str) -> None:
        """This process's circuit entered `state` (closed, open or half_open)."""
        self.breaker_state(state)
        self._breaker_transitions[state].inc()

    def models_offered(self, models: Iterable[str]) -> None:
        """The gateway listed these models, or answered for one of them."""
        for model in models:
            if len(self._answered_models) >= MAX_MODEL_LABELS:
                return
            self._answered_models.add(model)

    def upstream_attempt(
        self,
        operation: str,
        model: str,
        outcome: str,
        seconds: float,
        cost: Decimal | None,
        caller: str = "",
    ) -> None:
        """One gateway call; its `cost` is counted under its model and its named `caller`
        ("" for a caller without a name). The model is `other` until the gateway has answered
        for it: callers choose the name, and a label must not take any value a caller sends
        (empty, no label, for calls that name no model: `list_models`)."""
        label = model if not model or model in self._answered_models else OTHER
        key = (operation, label, outcome)
        children = self._upstream.get(key)
        if children is None:
            labels = {"operation": operation, "model": label, "outcome": outcome}
            children = self._upstream[key] = (
                self._attempts.labels(**labels),
                self._attempt_seconds.labels(**labels),
            )
        children[0].inc()
        children[1].observe(seconds)
        if cost:
            counter = self._costs.get((label, caller))
            if counter is None:
                counter = self._costs[label, caller] = self._cost.labels(model=label, caller=caller)
            counter.inc(nano_dollars(cost))

    # Named callers (`rerank.server._caller_limits`): label values are the callers file's names,
    # so the operator, not a caller, bounds them.

    def caller_call(self, caller: str) -> None:
        """A named caller's call got past its limits."""
        counter = self._callers.get(caller)
        if counter is None:
            counter = self._callers[caller] = self._caller_calls.labels(caller=caller)
        counter.inc()

    def caller_refused(self, caller: str, reason: str) -> None:
        """A named caller's call was refused by its own limits, for `reason`."""
        self._caller_refusals.labels(caller=caller, reason=reason).inc()

    # Redis (`redis_client`, `redis_store`)

    def redis_state(self, purpose: str) -> Callable[[bool], None]:
        """The recorder of whether this process can use its Redis for `purpose` (`limits`,
        `cache`): a `livesum` gauge, 1 from the start (nothing has failed yet)."""
        gauge = self._redis_up.labels(purpose=purpose)
        gauge.set(1)
        return lambda up: gauge.set(1 if up else 0)

    def limits_decided_locally(self) -> Callable[[], None]:
        """The recorder of a call whose limits this process decided, Redis being away."""
        return self._decided_locally.inc

    @functools.cached_property
    def _decided_locally(self) -> Counter | Tally:
        # Made when a limit store that fails open asks: the series shows only where there is one.
        return self._recorder.counter(family.LIMITS_DECIDED_LOCALLY)


def nano_dollars(cost: Decimal) -> int:
    """`cost` in whole nano-dollars (rounded half-even below one nano-dollar)."""
    return int((cost * family.NANOS_PER_DOLLAR).to_integral_value())


class MeteredUpstream(RerankerLayer):
    """Right around the gateway adapter: counts and times every call that reaches it (so each
    retry and each window is one), adds up what each cost (its usage record's cost: summed,
    that is the per-call usage of every call that went upstream; a cache hit never gets here),
    and learns which models the gateway answers for. Calls the circuit breaker refused never
    get here."""

    def __init__(self, inner: Reranker, metrics: Metrics) -> None:
        super().__init__(inner)
        self._metrics = metrics

    async def rerank(self, query: RerankQuery, *, timeout: float) -> RerankOutcome:
        started = time.perf_counter()
        try:
            outcome = await self._inner.rerank(query, timeout=timeout)
        except BaseException as error:
            self._failed("rerank", query.model, error, started)
            raise
        self._metrics.models_offered((query.model,))
        caller = "" if query.caller is None else query.caller.name
        seconds = time.perf_counter() - started
        # The usage record of this one gateway call: its cost, when the gateway reported one.
        self._metrics.upstream_attempt(
            "rerank", query.model, "OK", seconds, outcome.usage.cost, caller
        )
        return outcome

    async def list_models(self, *, timeout: float) -> tuple[ModelInfo, ...]:
        started = time.perf_counter()
        try:
            models = await self._inner.list_models(timeout=timeout)
        except BaseException as error:
            self._failed("list_models", "", error, started)
            raise
        self._metrics.models_offered(model.id for model in models)
        self._metrics.upstream_attempt("list_models", "", "OK", time.perf_counter() - started, None)
        return models

    def _failed(self, operation: str, model: str, error: BaseException, started: float) -> None:
        if isinstance(error, UpstreamError):
            outcome = error.reason
        elif isinstance(error, Exception):
            outcome = "INTERNAL"
        else:
            outcome = "CANCELLED"  # the caller left, or the server is stopping
        seconds = time.perf_counter() - started
        self._metrics.upstream_attempt(operation, model, outcome, seconds, None)
