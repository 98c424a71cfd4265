"""Prometheus metrics: what the server counts, where it is kept, and the `/metrics` endpoint.

Storage is prometheus-client's multiprocess format: every process writes its own mmap'd files
(one per kind, named after its pid) in one directory, and the process serving `/metrics` (the
parent with `--workers N`, else the server itself) merges all of them on each scrape with
prometheus-client's `MultiProcessCollector`. So one scrape covers every worker, and a worker
that dies leaves its counters in its files: one restarted in its place writes new files under
its new pid, so nothing is lost or counted twice. Gauges of per-process state are `livesum`:
the parent deletes a dead worker's gauge files (`mark_process_dead`) and its cache or circuit
stops counting.

The same path serves `--workers 1`: one process writes and serves. Metrics are recorded only
into files (no in-process registry), so there is one way to store and one way to read, tested
once.

Why a writer of our own over the library's file format, rather than its `Counter` and
`Histogram` classes: in multiprocess mode those choose their storage once per process, at
import, from the `PROMETHEUS_MULTIPROC_DIR` environment variable, and take a lock and a
`getpid()` on every increment. Measured here: 2.0 µs per counter increment and 3.2 µs per
histogram observation, against 0.6 µs and 1.2 µs for the writer below, with about twenty of them
per call. The directory is passed in explicitly instead, so nothing here reads the environment.

Recording sites call `Metrics` methods at the point where a thing happens; children (one label
set of one metric) are created once and kept. `Metrics.disabled()` records nothing, at the cost
of a method call.
"""

from __future__ import annotations

import bisect
import contextlib
import glob
import os
import shutil
import socket
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Literal, Protocol, cast

import grpc
from prometheus_client import CONTENT_TYPE_PLAIN_0_0_4, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.mmap_dict import MmapedDict, mmap_key
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead
from prometheus_client.samples import Sample
from prometheus_client.utils import floatToGoString

from rerank.server._metric_families import (
    ADMISSION_REFUSALS,
    BATCH_REQUESTS,
    BREAKER_STATE,
    BREAKER_TRANSITIONS,
    BUILD_INFO,
    CACHE_BYTES,
    CACHE_ENTRIES,
    CACHE_REQUESTS,
    CALLER_CALLS,
    CALLER_REFUSALS,
    COST,
    COST_SHOWN,
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


# --- Children: one label set of one metric -----------------------------------------------------


class Counter(Protocol):
    def inc(self, amount: float = 1) -> None: ...


class Histogram(Protocol):
    def observe(self, value: float) -> None: ...


class Gauge(Protocol):
    def set(self, value: float) -> None: ...
    def add(self, amount: float) -> None: ...


class _Nothing:
    """Every child of disabled metrics: records nothing."""

    __slots__ = ()

    def inc(self, amount: float = 1) -> None:
        pass

    def observe(self, value: float) -> None:
        pass

    def set(self, value: float) -> None:
        pass

    def add(self, amount: float) -> None:
        pass


_NOTHING = _Nothing()


class _File(Protocol):
    """`prometheus_client.mmap_dict.MmapedDict`, typed."""

    def read_value(self, key: str) -> tuple[float, float]: ...
    def write_value(self, key: str, value: float, timestamp: float) -> None: ...
    def close(self) -> None: ...


class _Slot:
    """One value in a metric file: kept in memory, written through on every change."""

    __slots__ = ("_file", "_key", "value")

    def __init__(self, file: _File, key: str) -> None:
        self._file = file
        self._key = key
        # A file of this pid may exist already (a pid reused by a restarted worker): go on from it.
        self.value = file.read_value(key)[0]

    def inc(self, amount: float = 1) -> None:
        self.value += amount
        self._file.write_value(self._key, self.value, 0.0)

    def set(self, value: float) -> None:
        self.value = value
        self._file.write_value(self._key, value, 0.0)

    add = inc


class _Histogram:
    """Buckets and sum, as prometheus-client stores them (it derives `_count` from the buckets)."""

    __slots__ = ("_bounds", "_buckets", "_sum")

    def __init__(self, bounds: tuple[float, ...], buckets: list[_Slot], total: _Slot) -> None:
        self._bounds = bounds
        self._buckets = buckets
        self._sum = total

    def observe(self, value: float) -> None:
        # `le` is inclusive: the first bound ≥ value; past the last one, +Inf.
        self._buckets[bisect.bisect_left(self._bounds, value)].inc()
        self._sum.inc(value)


class _Files:
    """This process's metric files in `directory`, one per kind, as `MultiProcessCollector`
    reads them: `counter_PID.db`, `histogram_PID.db`, `gauge_livesum_PID.db`."""

    def __init__(self, directory: Path) -> None:
        self._directory = directory
        self._pid = os.getpid()
        self._open: dict[str, _File] = {}

    def slot(self, family: Family, sample: str, labels: Mapping[str, str]) -> _Slot:
        kind = "gauge_livesum" if family.kind == "gauge" else family.kind
        file = self._open.get(kind)
        if file is None:
            path = str(self._directory / f"{kind}_{self._pid}.db")
            file = self._open[kind] = cast(_File, MmapedDict(path))  # type: ignore[no-untyped-call]
        key = mmap_key(family.name, sample, list(labels), list(labels.values()), family.help)
        return _Slot(file, key)

    def close(self) -> None:
        for file in self._open.values():
            file.close()
        self._open.clear()


def _go_float(bound: float) -> str:
    """A bucket bound as prometheus-client writes `le` (`0.005`, `1.0`, `+Inf`)."""
    text: str = floatToGoString(bound)  # type: ignore[no-untyped-call]
    return text


class _Recorder:
    """Makes children: in files, or nothing when metrics are off."""

    def __init__(self, files: _Files | None) -> None:
        self._files = files

    def counter(self, family: Family, **labels: str) -> Counter:
        if self._files is None:
            return _NOTHING
        return self._files.slot(family, family.name + "_total", labels)

    def gauge(self, family: Family, **labels: str) -> Gauge:
        if self._files is None:
            return _NOTHING
        return self._files.slot(family, family.name, labels)

    def histogram(self, family: Family, **labels: str) -> Histogram:
        if self._files is None:
            return _NOTHING
        bounds = (*family.buckets, float("inf"))
        buckets = [
            self._files.slot(family, family.name + "_bucket", {**labels, "le": _go_float(b)})
            for b in bounds
        ]
        return _Histogram(bounds, buckets, self._files.slot(family, family.name + "_sum", labels))

    def close(self) -> None:
        if self._files is not None:
            self._files.close()


# --- What the server records ---------------------------------------------------------------------


class GrpcMethodMetrics:
    """The A66 metrics of one method: started, and per status duration and sizes."""

    def __init__(self, recorder: _Recorder, method: str) -> None:
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
    """Everything one process records. Made in the app's wiring and handed to the parts that
    record; `Metrics.disabled()` when no metrics port is set."""

    def __init__(self, files: _Files | None) -> None:
        recorder = self._recorder = _Recorder(files)
        self.enabled = files is not None
        self._grpc_methods: dict[str, GrpcMethodMetrics] = {}
        self._upstream: dict[tuple[str, str, str], tuple[Counter, Histogram]] = {}
        self._costs: dict[tuple[str, str], Counter] = {}
        self._caller_calls: dict[str, Counter] = {}
        self._caller_refusals: dict[tuple[str, str], Counter] = {}
        self._retries: dict[str, Counter] = {}
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
        self._batch_requests = {
            grpc.StatusCode.OK: recorder.counter(BATCH_REQUESTS, grpc_status="OK")
        }
        self.breaker_state("closed")

    @classmethod
    def disabled(cls) -> Metrics:
        return cls(None)

    @classmethod
    def in_directory(cls, directory: Path) -> Metrics:
        """Record into this process's files in `directory` (a `MetricsDirectory`)."""
        return cls(_Files(directory))

    def close(self) -> None:
        self._recorder.close()

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
        child = self._batch_requests.get(code)
        if child is None:
            child = self._batch_requests[code] = self._recorder.counter(
                BATCH_REQUESTS, grpc_status=code.name
            )
        child.inc()

    def admitted(self, delta: int) -> None:
        """A call entered (+1) or left (-1) the server's admission."""
        self._in_flight.add(delta)

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
        counter = self._retries.get(reason)
        if counter is None:
            counter = self._retries[reason] = self._recorder.counter(RETRIES, reason=reason)
        counter.inc()

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
        counter = self._caller_refusals.get((caller, reason))
        if counter is None:
            counter = self._caller_refusals[(caller, reason)] = self._recorder.counter(
                CALLER_REFUSALS, caller=caller, reason=reason
            )
        counter.inc()


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


# --- The directory and the endpoint ----------------------------------------------------------


class MetricsDirectory:
    """A fresh private directory for the metric files of every process of one server; removed
    by `close()`. Made by the process that serves `/metrics`, before any worker starts."""

    def __init__(self) -> None:
        # mkdtemp: mode 0700, a new name each time, so no stale file of an earlier run is read.
        self.path = Path(tempfile.mkdtemp(prefix="rerank-metrics-"))

    def process_dead(self, pid: int) -> None:
        """A worker exited: its `livesum` gauges (cache, circuit, in flight) stop counting; its
        counters and histograms stay, so totals do not drop when a worker is replaced."""
        mark_process_dead(pid, str(self.path))  # type: ignore[no-untyped-call]

    def close(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)


class Exposition:
    """What a scrape returns: every process's files merged, the cost shown in dollars, and the
    build info."""

    def __init__(self, directory: Path, build_info: Mapping[str, str]) -> None:
        self._directory = directory
        self._build_info = dict(build_info)

    def collect(self) -> Iterator[Metric]:
        files = glob.glob(str(self._directory / "*.db"))
        merged: Iterable[Metric] = MultiProcessCollector.merge(files, accumulate=True)  # type: ignore[no-untyped-call]
        for metric in merged:
            yield _in_dollars(metric) if metric.name == COST.name else metric
        info = Metric(BUILD_INFO.name, BUILD_INFO.help, "gauge")
        info.add_sample(BUILD_INFO.name, self._build_info, 1)
        yield info


def _in_dollars(metric: Metric) -> Metric:
    """The nano-dollar counter as dollars: an integer over 10**9, divided once and correctly
    rounded, prints as the exact decimal sum (a float sum of 0.001s would not)."""
    shown = Metric(COST_SHOWN, metric.documentation, "counter")
    for sample in metric.samples:
        name = sample.name.replace(COST.name, COST_SHOWN, 1)
        shown.samples.append(
            Sample(name, sample.labels, int(sample.value) / NANOS_PER_DOLLAR, None, None)
        )
    return shown


class MetricsEndpoint:
    """`GET /metrics` on `host:port` (0: a free port), in the Prometheus text format.

    The socket is bound when this is made (so a taken port fails at start, before any worker
    exists) and served by a daemon thread from `start()`: the event loop of a server process
    never renders a scrape. A worker forked after it closes its copy with `close_in_child()`.
    """

    def __init__(self, host: str, port: int, exposition: Exposition) -> None:
        # Held while a scrape renders, and by `quiet()`: see there.
        self._rendering = threading.Lock()
        handler = type(
            "Handler", (_Handler,), {"exposition": exposition, "rendering": self._rendering}
        )
        server_class = _IPv6Server if ":" in host else ThreadingHTTPServer
        self._server = server_class((host, port), handler)
        self._server.daemon_threads = True
        self._thread: threading.Thread | None = None
        self.host = host
        self.port: int = self._server.server_address[1]

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/metrics"

    def start(self) -> None:
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="metrics", daemon=True
        )
        self._thread.start()

    def close(self) -> None:
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join(timeout=5)
        self._server.server_close()

    def quiet(self) -> threading.Lock:
        """Hold off rendering while this is held, for a fork: the workers' parent forks a
        replacement while this endpoint's threads run, and a lock a scrape holds (the
        library's, a file's) would stay held for ever in the child. Use as `with quiet():`."""
        return self._rendering

    def close_in_child(self) -> None:
        """In a forked worker: release the inherited socket (no thread runs there)."""
        self._server.socket.close()


class _IPv6Server(ThreadingHTTPServer):
    address_family = socket.AF_INET6


class _Handler(BaseHTTPRequestHandler):
    exposition: Exposition
    rendering: threading.Lock

    def do_GET(self) -> None:
        if self.path.split("?", 1)[0] != "/metrics":
            self.send_error(404, "only /metrics is served here")
            return
        with self.rendering:
            body = generate_latest(self.exposition)
        self.send_response(200)
        self.send_header("Content-Type", CONTENT_TYPE_PLAIN_0_0_4)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # a scrape every few seconds is not news


@contextlib.contextmanager
def serving_metrics(
    host: str, port: int, build_info: Mapping[str, str]
) -> Iterator[tuple[MetricsDirectory, MetricsEndpoint]]:
    """A directory and an endpoint over it, bound (raises OSError when the port is taken);
    both closed and removed at exit."""
    directory = MetricsDirectory()
    try:
        endpoint = MetricsEndpoint(host, port, Exposition(directory.path, build_info))
        try:
            yield directory, endpoint
        finally:
            endpoint.close()
    finally:
        directory.close()
