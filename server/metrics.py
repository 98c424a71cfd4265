"""What the server records, at the point where each thing happens: `Metrics`, handed by the app's
wiring to every part that records, and `MeteredUpstream` around the gateway adapter.

`Metrics` records through a `Recorder`: prometheus-client's own metrics in a registry of their
own (`rerank.server._prometheus`), or nothing (`Metrics.disabled()`, at the cost of a method
call). This module does not import prometheus-client, because the settings import it: the
library decides where every metric of a process is stored when it is first imported, and the
server's entry (`rerank.server.__main__`) must get to choose that after reading its settings.

The children (one label set of one metric) that a call's path records into are made once and
kept; rarer ones (retries, refusals) are looked up by the library on each use.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from decimal import Decimal
from typing import Literal, Protocol

import grpc

from rerank.server._metric_families import (
    ADMISSION_REFUSALS,
    BATCH_REQUESTS,
    BREAKER_STATE,
    BREAKER_TRANSITIONS,
    CACHE_BYTES,
    CACHE_ENTRIES,
    CACHE_REQUESTS,
    CALLER_CALLS,
    CALLER_REFUSALS,
    COST,
    DOCUMENTS,
    GRPC_DURATION,
    GRPC_RCVD,
    GRPC_SENT,
    GRPC_STARTED,
    IN_FLIGHT,
    LIMITS_DECIDED_LOCALLY,
    NANOS_PER_DOLLAR,
    REDIS_UP,
    RETRIES,
    RETRY_BUDGET_EXHAUSTED,
    UPSTREAM_ATTEMPTS,
    UPSTREAM_DURATION,
    WINDOWS,
    Family,
)
from rerank.server.domain import ModelInfo, Reranker, RerankerLayer, RerankOutcome, RerankQuery
from rerank.server.errors import UpstreamError

#: Models the gateway has answered for, at most: beyond it a new model counts as `other`, so a
#: gateway that accepted any name could still not grow the label set without bound.
MAX_MODEL_LABELS = 64
OTHER = "other"
CACHE_RESULTS = ("hit", "miss", "coalesced")
ADMISSION_REASONS = ("concurrent_calls", "inflight_bytes")
BREAKER_STATES = ("closed", "open", "half_open")


# --- Children: one label set of one metric, and what makes them ------------------------------


class Counter(Protocol):
    def inc(self, amount: float = 1) -> None: ...


class Histogram(Protocol):
    def observe(self, amount: float, /) -> None: ...


class Gauge(Protocol):
    def set(self, value: float, /) -> None: ...
    def inc(self, amount: float = 1) -> None: ...


class Recorder(Protocol):
    """The child of `family` with `labels` (all of its label names), made on first use."""

    def counter(self, family: Family, **labels: str) -> Counter: ...
    def gauge(self, family: Family, **labels: str) -> Gauge: ...
    def histogram(self, family: Family, **labels: str) -> Histogram: ...


class _Nothing:
    """Every child, and the recorder, of disabled metrics: records nothing."""

    __slots__ = ()

    def inc(self, amount: float = 1) -> None:
        pass

    def observe(self, amount: float, /) -> None:
        pass

    def set(self, value: float, /) -> None:
        pass

    def counter(self, family: Family, **labels: str) -> Counter:
        return self

    def gauge(self, family: Family, **labels: str) -> Gauge:
        return self

    def histogram(self, family: Family, **labels: str) -> Histogram:
        return self


# --- What the server records ---------------------------------------------------------------------


class GrpcMethodMetrics:
    """The A66 metrics of one method: started, and per status duration and sizes."""

    def __init__(self, recorder: Recorder, method: str) -> None:
        self._recorder = recorder
        self._method = method
        self.started = recorder.counter(GRPC_STARTED, grpc_method=method)
        self._ended: dict[grpc.StatusCode, tuple[Histogram, Histogram, Histogram]] = {}

    def ended(self, code: grpc.StatusCode, seconds: float, received: int, sent: int) -> None:
        children = self._ended.get(code)
        if children is None:
            labels = {"grpc_method": self._method, "grpc_status": code.name}
            children = self._ended[code] = (
                self._recorder.histogram(GRPC_DURATION, **labels),
                self._recorder.histogram(GRPC_RCVD, **labels),
                self._recorder.histogram(GRPC_SENT, **labels),
            )
        duration, rcvd, sent_bytes = children
        duration.observe(seconds)
        rcvd.observe(received)
        sent_bytes.observe(sent)


class Metrics:
    """Everything one process records. Made in the app's wiring (with a recorder from
    `rerank.server._prometheus`) and handed to the parts that record; `Metrics.disabled()` when
    no metrics port is set."""

    def __init__(self, recorder: Recorder | None) -> None:
        self.enabled = recorder is not None
        recorder = self._recorder = recorder or _Nothing()
        # Children a call's path records into, by label values only known as calls come.
        self._grpc_methods: dict[str, GrpcMethodMetrics] = {}
        self._upstream: dict[tuple[str, str, str], tuple[Counter, Histogram]] = {}
        self._costs: dict[tuple[str, str], Counter] = {}
        self._caller_calls: dict[str, Counter] = {}
        self._answered_models: set[str] = set()
        # Children of label values known in advance exist from the start (at 0), so a first
        # increment is an increase Prometheus can see, and the series are there to alert on.
        self._cache = {r: recorder.counter(CACHE_REQUESTS, result=r) for r in CACHE_RESULTS}
        self._refusals = {
            reason: recorder.counter(ADMISSION_REFUSALS, reason=reason)
            for reason in ADMISSION_REASONS
        }
        self._breaker_state = {s: recorder.gauge(BREAKER_STATE, state=s) for s in BREAKER_STATES}
        self._breaker_transitions = {
            s: recorder.counter(BREAKER_TRANSITIONS, to=s) for s in BREAKER_STATES
        }
        self._budget_exhausted = recorder.counter(RETRY_BUDGET_EXHAUSTED)
        self._cache_bytes = recorder.gauge(CACHE_BYTES)
        self._cache_entries = recorder.gauge(CACHE_ENTRIES)
        self._cache_bytes.set(0)
        self._cache_entries.set(0)
        self._in_flight = recorder.gauge(IN_FLIGHT)
        self._in_flight.set(0)
        self._windows = recorder.histogram(WINDOWS)
        self._documents = recorder.histogram(DOCUMENTS)
        self._batch_ok = recorder.counter(BATCH_REQUESTS, grpc_status="OK")
        self.breaker_state("closed")

    @classmethod
    def disabled(cls) -> Metrics:
        return cls(None)

    def close(self) -> None:
        """Nothing to release: prometheus-client keeps a process's files open for the life of
        the process, shared by all of its metrics."""

    # gRPC (the interceptor)

    def grpc_method(self, method: str) -> GrpcMethodMetrics:
        """The children of `method` (e.g. `rerank.v1.RerankService/Rerank`, or `other`)."""
        found = self._grpc_methods.get(method)
        if found is None:
            found = self._grpc_methods[method] = GrpcMethodMetrics(self._recorder, method)
        return found

    # The call (servicer, admission)

    def documents(self, count: int) -> None:
        self._documents.observe(count)

    def batch_request(self, code: grpc.StatusCode) -> None:
        """One request of a BatchRerank was answered with `code` (OK: its response)."""
        if code is grpc.StatusCode.OK:
            self._batch_ok.inc()
        else:
            self._recorder.counter(BATCH_REQUESTS, grpc_status=code.name).inc()

    def admitted(self, delta: int) -> None:
        """A call entered (+1) or left (-1) the server's admission."""
        self._in_flight.inc(delta)

    def refused(self, reason: Literal["concurrent_calls", "inflight_bytes"]) -> None:
        self._refusals[reason].inc()

    # Cache, windows

    def cache_lookup(self, result: Literal["hit", "miss", "coalesced"]) -> None:
        self._cache[result].inc()

    def cache_size(self, size: int, entries: int) -> None:
        self._cache_bytes.set(size)
        self._cache_entries.set(entries)

    def windows(self, count: int) -> None:
        self._windows.observe(count)

    # Resilience

    def retry(self, reason: str) -> None:
        self._recorder.counter(RETRIES, reason=reason).inc()

    def retry_budget_exhausted(self) -> None:
        self._budget_exhausted.inc()

    def breaker_state(self, state: str) -> None:
        """This process's circuit is now in `state` (a `livesum` gauge per state: summed over
        the live workers, it says how many are in each)."""
        for name, gauge in self._breaker_state.items():
            gauge.set(1 if name == state else 0)

    def breaker_transition(self, state: str) -> None:
        """This process's circuit entered `state` (closed, open or half_open)."""
        self.breaker_state(state)
        self._breaker_transitions[state].inc()

    # Upstream attempts (`MeteredUpstream`)

    def model_label(self, model: str) -> str:
        """`model` once the gateway has answered for it, else `other`: callers choose the model
        name, and a label must not take any value a caller sends. Empty (no label) for calls
        that name no model (`list_models`)."""
        return model if not model or model in self._answered_models else OTHER

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
        ("" for a caller without a name)."""
        label = self.model_label(model)
        children = self._upstream.get((operation, label, outcome))
        if children is None:
            labels = {"operation": operation, "model": label, "outcome": outcome}
            children = self._upstream[(operation, label, outcome)] = (
                self._recorder.counter(UPSTREAM_ATTEMPTS, **labels),
                self._recorder.histogram(UPSTREAM_DURATION, **labels),
            )
        attempts, duration = children
        attempts.inc()
        duration.observe(seconds)
        if cost:
            counter = self._costs.get((label, caller))
            if counter is None:
                counter = self._costs[(label, caller)] = self._recorder.counter(
                    COST, model=label, caller=caller
                )
            counter.inc(nano_dollars(cost))

    # Named callers (`rerank.server.caller_limits`): label values are the callers file's names,
    # so the operator, not a caller, bounds them.

    # Redis (`redis_client`, `redis_store`)

    def redis_state(self, purpose: str) -> Callable[[bool], None]:
        """The recorder of whether this process can use its Redis for `purpose` (`limits`,
        `cache`): a `livesum` gauge, 1 from the start (nothing has failed yet)."""
        gauge = self._recorder.gauge(REDIS_UP, purpose=purpose)
        gauge.set(1)
        return lambda up: gauge.set(1 if up else 0)

    def limits_decided_locally(self) -> Callable[[], None]:
        """The recorder of a call whose limits this process decided, Redis being away."""
        return self._recorder.counter(LIMITS_DECIDED_LOCALLY).inc

    def caller_call(self, caller: str) -> None:
        """A named caller's call got past its limits."""
        counter = self._caller_calls.get(caller)
        if counter is None:
            counter = self._caller_calls[caller] = self._recorder.counter(
                CALLER_CALLS, caller=caller
            )
        counter.inc()

    def caller_refused(self, caller: str, reason: str) -> None:
        """A named caller's call was refused by its own limits, for `reason`."""
        self._recorder.counter(CALLER_REFUSALS, caller=caller, reason=reason).inc()


def nano_dollars(cost: Decimal) -> int:
    """`cost` in whole nano-dollars (rounded half-even below one nano-dollar)."""
    return int((cost * NANOS_PER_DOLLAR).to_integral_value())


class MeteredUpstream(RerankerLayer):
    """Right around the gateway adapter: counts and times every call that reaches it (so each
    retry and each window is one), adds up what each cost (its usage record's cost: summed,
    that is the per-call usage of every call that went upstream; a cache hit never gets here),
    and learns which models the gateway answers for. Calls the circuit breaker refused never
    get here."""

    def __init__(self, inner: Reranker, metrics: Metrics) -> None:
        super().__init__(inner)
        self._metrics = metrics
        self._clock = time.perf_counter

    async def rerank(self, query: RerankQuery, *, timeout: float) -> RerankOutcome:
        started = self._clock()
        try:
            outcome = await self._inner.rerank(query, timeout=timeout)
        except BaseException as error:
            self._failed("rerank", query.model, error, started)
            raise
        self._metrics.models_offered((query.model,))
        # The usage record of this one gateway call: its cost, when the gateway reported one.
        self._metrics.upstream_attempt(
            "rerank",
            query.model,
            "OK",
            self._clock() - started,
            outcome.usage.cost,
            caller="" if query.caller is None else query.caller.name,
        )
        return outcome

    async def list_models(self, *, timeout: float) -> tuple[ModelInfo, ...]:
        started = self._clock()
        try:
            models = await self._inner.list_models(timeout=timeout)
        except BaseException as error:
            self._failed("list_models", "", error, started)
            raise
        self._metrics.models_offered(model.id for model in models)
        self._metrics.upstream_attempt("list_models", "", "OK", self._clock() - started, None)
        return models

    def _failed(self, operation: str, model: str, error: BaseException, started: float) -> None:
        if isinstance(error, UpstreamError):
            outcome = error.reason
        elif isinstance(error, Exception):
            outcome = "INTERNAL"
        else:
            outcome = "CANCELLED"  # the caller left, or the server is stopping
        self._metrics.upstream_attempt(operation, model, outcome, self._clock() - started, None)
