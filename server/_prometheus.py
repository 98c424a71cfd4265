"""Metrics through prometheus-client: the families as its metrics, what a scrape returns, where
every process of a server stores them, and the `/metrics` endpoint.

The library chooses a process's storage once, when first imported: memory, or the mmap'd files
of its multiprocess mode, which `__main__` sets up for `--workers N` only, as they cost twice the
CPU (docs/operating.md, "One scrape is the whole server"). An in-process server (tests, the
pytest kit) never sets the storage, so never switches anyone else's metrics.
"""

from __future__ import annotations

import contextlib
import itertools
import socket
import threading
from collections.abc import Iterator, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_PLAIN_0_0_4,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    values,
)
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from rerank.server._metric_families import BUILD_INFO, COST, COST_SHOWN, NANOS_PER_DOLLAR, Family
from rerank.server._metrics import Tallies, Tally


class PrometheusRecorder(Collector):
    """The families in a registry of their own (not the global one, which other code in the
    process may use): in the library's files when it stores there (the workers), else in
    this process's memory as `Tally`s, which this collects."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self._tallies = Tallies() if values.ValueClass is values.MutexValue else None
        if self._tallies is not None:
            self.registry.register(self)

    def counter(self, family: Family, /) -> Counter | Tally:
        if self._tallies is not None:
            return self._tallies.counter(family)
        return Counter(family.name, family.help, family.labels, registry=self.registry)

    def gauge(self, family: Family, /) -> Gauge | Tally:
        if self._tallies is not None:
            return self._tallies.gauge(family)
        # Per-process state: the sum over the workers alive now (docs/operating.md).
        return Gauge(
            family.name,
            family.help,
            family.labels,
            registry=self.registry,
            multiprocess_mode="livesum",
        )

    def histogram(self, family: Family, /) -> Histogram | Tally:
        if self._tallies is not None:
            return self._tallies.histogram(family)
        return Histogram(
            family.name, family.help, family.labels, registry=self.registry, buckets=family.buckets
        )

    def collect(self) -> Iterator[Metric]:
        """The tallies as the library's metric families, samples in its order. Read from the
        scrape's thread while the event loop's adds children: each list copied first, at once."""
        for tally in list(self._tallies or ()):
            family = tally.family
            children = list(tally.children.items()) if family.labels else [((), tally)]
            if family.kind != "histogram":
                kind = CounterMetricFamily if family.kind == "counter" else GaugeMetricFamily
                metric = kind(family.name, family.help, labels=family.labels)
                for key, child in children:
                    metric.add_metric(key, child.value)
                yield metric
                continue
            histogram = HistogramMetricFamily(family.name, family.help, labels=family.labels)
            bounds = [*map(floatToGoString, family.buckets), "+Inf"]
            for key, child in children:
                buckets = list(zip(bounds, itertools.accumulate(child.counts), strict=True))
                histogram.add_metric(key, buckets, child.sum)
            yield histogram


class Exposition(Collector):
    """What a scrape returns: the metrics `source` collects (a `PrometheusRecorder`'s registry,
    or `MetricsDirectory.collector()`), the cost shown in dollars, and the build info."""

    def __init__(self, source: Collector, build_info: Mapping[str, str]) -> None:
        self._source = source
        self._build_info = dict(build_info)

    def collect(self) -> Iterator[Metric]:
        for metric in self._source.collect():
            if not metric.samples:  # labelled, with no child yet: files hold nothing of it either
                continue
            yield _in_dollars(metric) if metric.name == COST.name else metric
        info = GaugeMetricFamily(BUILD_INFO.name, BUILD_INFO.help, labels=list(self._build_info))
        info.add_metric(list(self._build_info.values()), 1)
        yield info


def _in_dollars(counter: Metric) -> Metric:
    """The nano-dollar counter as dollars: an integer over 10**9, divided once and correctly
    rounded, prints as the exact decimal sum (a float sum of 0.001s would not)."""
    shown = Metric(COST_SHOWN, counter.documentation, "counter")
    for sample in counter.samples:
        name = sample.name.replace(COST.name, COST_SHOWN, 1)
        shown.add_sample(name, sample.labels, int(sample.value) / NANOS_PER_DOLLAR)
    return shown


class MetricsDirectory:
    """Where one server's metrics are: the library's files of every process in `path`, or
    (None) the memory of its one process."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._memory = PrometheusRecorder() if path is None else None

    def recorder(self) -> PrometheusRecorder:
        return self._memory or PrometheusRecorder()

    def collector(self) -> Collector:
        if self._memory is not None:
            return self._memory.registry
        collector: Collector = MultiProcessCollector(None, str(self.path))  # type: ignore[no-untyped-call]
        return collector

    def process_dead(self, pid: int) -> None:
        """A worker exited: its `livesum` gauges stop counting; its counters and histograms
        stay, so totals do not drop when a worker is replaced."""
        mark_process_dead(pid, str(self.path))  # type: ignore[no-untyped-call]


class MetricsEndpoint:
    """`GET /metrics` on `host:port` (0: a free port), bound when made (a taken port fails
    before any worker exists), served by a daemon thread from `start()`, so no event loop
    renders a scrape."""

    def __init__(self, host: str, port: int, exposition: Exposition) -> None:
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
        """Held (`with quiet():`) while the parent forks a worker: a lock a scrape holds (the
        library's, a file's) would stay held for ever in the child."""
        return self._rendering

    def close_in_child(self) -> None:
        """In a forked worker: release the inherited socket."""
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
    path: Path | None, host: str, port: int, build_info: Mapping[str, str]
) -> Iterator[tuple[MetricsDirectory, MetricsEndpoint]]:
    """The storage at `path` (None: memory) and an endpoint over it, bound (OSError when the
    port is taken), closed at exit."""
    directory = MetricsDirectory(path)
    endpoint = MetricsEndpoint(host, port, Exposition(directory.collector(), build_info))
    try:
        yield directory, endpoint
    finally:
        endpoint.close()
