"""The metric files and the scrape: what each process writes is what `/metrics` shows, summed
over processes; the cost is exact; dead processes keep their counts but not their live gauges;
labels stay bounded; the server's entry chooses the library's storage before importing it."""

from __future__ import annotations

import os
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import pytest
from prometheus_client import generate_latest
from prometheus_client.registry import Collector

from rerank.server.__main__ import metrics_storage
from rerank.server._metrics import MAX_MODEL_LABELS, Metrics, nano_dollars
from rerank.server._prometheus import (
    Exposition,
    MetricsDirectory,
    MetricsEndpoint,
    PrometheusRecorder,
)
from tests.scrapes import Scrape
from tests.unit.recorded_calls import MODEL, record_a_call

INFO = {"version": "1.2.3", "gateway_protocol": "v3"}


@pytest.fixture
def directory(tmp_path: Path) -> MetricsDirectory:
    """The library's files of processes recording as workers do (`record_in_another_process`)."""
    return MetricsDirectory(tmp_path)


@pytest.fixture
def recorder() -> PrometheusRecorder:
    """This process's metrics, in memory (this process never sets the library's storage)."""
    return PrometheusRecorder()


@pytest.fixture
def metrics(recorder: PrometheusRecorder) -> Iterator[Metrics]:
    made = Metrics(recorder)
    yield made
    made.close()


def scrape(source: MetricsDirectory | PrometheusRecorder) -> Scrape:
    collector: Collector = (
        source.collector() if isinstance(source, MetricsDirectory) else source.registry
    )
    return Scrape(generate_latest(Exposition(collector, INFO)).decode())


def record_in_another_process(
    directory: MetricsDirectory, code: str, metrics: str = "Metrics(PrometheusRecorder())"
) -> int:
    """Run `code` (with `metrics` made by the expression `metrics`) in a process of its own
    storing into `directory`, as a worker does; return its pid, which has exited when this
    returns."""
    program = (
        "import os, sys\n"
        "from rerank.server._prometheus import PrometheusRecorder\n"
        "from rerank.server._metrics import Metrics\n"
        f"metrics = {metrics}\n"
        f"{code}\n"
        "print(os.getpid())\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", program],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
        env={**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(directory.path)},
    )
    return int(done.stdout)


def test_a_scrape_shows_the_exact_decimal_sum_of_many_small_charges(
    recorder: PrometheusRecorder, metrics: Metrics
) -> None:
    metrics.models_offered([MODEL])
    for _ in range(12_345):
        metrics.upstream_attempt("rerank", MODEL, "OK", 0.01, Decimal("0.001"))
    # What the same charges add up to as floats: the error a float counter would show.
    assert sum([0.001] * 12_345) != 12.345
    line = scrape(recorder).line("rerank_gateway_cost_usd_total", model=MODEL, caller="")
    assert line.split()[-1] == "12.345"


def test_the_cost_of_every_process_adds_up_exactly(directory: MetricsDirectory) -> None:
    charge = f"metrics.models_offered([{MODEL!r}])\nfrom decimal import Decimal\n"
    for _ in range(3):
        record_in_another_process(
            directory,
            charge + "for _ in range(1001):\n"
            f"    metrics.upstream_attempt('rerank', {MODEL!r}, 'OK', 0.01, Decimal('0.001'))",
        )
    record_in_another_process(
        directory,
        charge
        + f"metrics.upstream_attempt('rerank', {MODEL!r}, 'OK', 0.01, Decimal('0.000000123'))",
    )
    result = scrape(directory)
    assert (
        result.line("rerank_gateway_cost_usd_total", model=MODEL, caller="").split()[-1]
        == "3.003000123"
    )
    assert result.total("rerank_upstream_attempts_total", model=MODEL) == 3004


def test_a_scrape_is_the_same_from_memory_as_from_files(
    directory: MetricsDirectory, recorder: PrometheusRecorder, metrics: Metrics
) -> None:
    record_in_another_process(
        directory, "from tests.unit.recorded_calls import record_a_call\nrecord_a_call(metrics)"
    )
    record_a_call(metrics)
    from_files, from_memory = scrape(directory).text, scrape(recorder).text
    assert "rerank_gateway_cost_usd_total" in from_files
    assert sorted(from_memory.splitlines()) == sorted(from_files.splitlines())


def test_cost_is_counted_in_whole_nano_dollars() -> None:
    assert nano_dollars(Decimal("0.002")) == 2_000_000
    assert nano_dollars(Decimal("1.0000000015")) == 1_000_000_002  # half-even below a nano


def test_counters_and_histograms_of_processes_are_summed(directory: MetricsDirectory) -> None:
    record_in_another_process(
        directory, "metrics.cache_lookup('hit')\nmetrics.documents(20)\nmetrics.documents(3)"
    )
    record_in_another_process(
        directory,
        "metrics.cache_lookup('hit')\nmetrics.cache_lookup('miss')\nmetrics.documents(20)\n"
        "metrics.documents(20_000)",  # past the last bucket: only +Inf holds it
    )
    result = scrape(directory)
    assert result.total("rerank_cache_requests_total", result="hit") == 2
    assert result.total("rerank_cache_requests_total", result="miss") == 1
    assert result.total("rerank_cache_requests_total", result="coalesced") == 0
    assert result.total("rerank_documents_per_request_count") == 4
    assert result.total("rerank_documents_per_request_sum") == 20 + 3 + 20 + 20_000
    # `le` is inclusive and buckets are cumulative.
    assert result.total("rerank_documents_per_request_bucket", le="2.0") == 0
    assert result.total("rerank_documents_per_request_bucket", le="5.0") == 1
    assert result.total("rerank_documents_per_request_bucket", le="20.0") == 3
    assert result.total("rerank_documents_per_request_bucket", le="10000.0") == 3
    assert result.total("rerank_documents_per_request_bucket", le="+Inf") == 4
    assert result.line("rerank_build_info", **INFO).endswith(" 1.0")


def test_a_dead_process_keeps_its_counts_and_its_gauges_stop_counting(
    directory: MetricsDirectory,
) -> None:
    worker = "metrics.cache_lookup('miss')\nmetrics.cache_size(1000, 2)\nmetrics.admitted(1)"
    first = record_in_another_process(directory, worker)
    second = record_in_another_process(directory, worker)
    before = scrape(directory)
    assert before.total("rerank_cache_entries") == 4
    assert before.total("rerank_circuit_breaker_state", state="closed") == 2
    directory.process_dead(first)
    after = scrape(directory)
    assert after.total("rerank_cache_requests_total", result="miss") == 2  # kept
    assert after.total("rerank_cache_entries") == 2
    assert after.total("rerank_cache_bytes") == 1000
    assert after.total("rerank_calls_in_flight") == 1
    assert after.total("rerank_circuit_breaker_state", state="closed") == 1
    # A worker started in its place adds to the counts, from zero.
    directory.process_dead(second)
    record_in_another_process(directory, worker)
    again = scrape(directory)
    assert again.total("rerank_cache_requests_total", result="miss") == 3
    assert again.total("rerank_cache_entries") == 2


def test_a_pid_used_again_goes_on_from_its_file(directory: MetricsDirectory) -> None:
    record_in_another_process(
        directory,
        "metrics.cache_lookup('hit')\n"
        "again = Metrics(PrometheusRecorder())  # the same pid, as a reused one would be\n"
        "again.cache_lookup('hit')",
    )
    assert scrape(directory).total("rerank_cache_requests_total", result="hit") == 2


def test_the_breaker_gauge_says_how_many_workers_are_in_each_state(
    directory: MetricsDirectory,
) -> None:
    record_in_another_process(directory, "metrics.breaker_transition('open')")
    record_in_another_process(directory, "metrics.breaker_transition('half_open')")
    result = scrape(directory)
    assert result.total("rerank_circuit_breaker_state", state="open") == 1
    assert result.total("rerank_circuit_breaker_state", state="half_open") == 1
    assert result.total("rerank_circuit_breaker_state", state="closed") == 0
    assert result.total("rerank_circuit_breaker_transitions_total", to="open") == 1


def test_a_model_the_gateway_has_not_answered_for_is_other(
    recorder: PrometheusRecorder, metrics: Metrics
) -> None:
    metrics.upstream_attempt("rerank", "made/up-by-a-caller", "MODEL_NOT_FOUND", 0.01, None)
    metrics.models_offered([MODEL])
    metrics.upstream_attempt("rerank", MODEL, "OK", 0.01, None)
    metrics.models_offered(f"p/m{n}" for n in range(2 * MAX_MODEL_LABELS))
    metrics.upstream_attempt("rerank", f"p/m{2 * MAX_MODEL_LABELS - 1}", "OK", 0.01, None)
    result = scrape(recorder)
    models = result.labels("rerank_upstream_attempts_total", "model")
    assert "made/up-by-a-caller" not in models
    assert {"other", MODEL} <= models
    assert result.total("rerank_upstream_attempts_total", model="other") == 2


def test_disabled_metrics_write_nothing(directory: MetricsDirectory) -> None:
    record_in_another_process(
        directory,
        "from decimal import Decimal\n"
        "metrics.cache_lookup('hit')\n"
        f"metrics.upstream_attempt('rerank', {MODEL!r}, 'OK', 0.01, Decimal('1'))\n"
        "metrics.grpc_method('x/y').started.inc()\n"
        "assert not metrics.enabled",
        metrics="Metrics.disabled()",
    )
    assert list(directory.path.iterdir()) == []


def test_the_endpoint_serves_metrics_and_only_metrics(
    recorder: PrometheusRecorder, metrics: Metrics
) -> None:
    metrics.cache_lookup("miss")
    endpoint = MetricsEndpoint("127.0.0.1", 0, Exposition(recorder.registry, INFO))
    endpoint.start()
    try:
        with urllib.request.urlopen(endpoint.url, timeout=10) as response:
            assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
            result = Scrape(response.read().decode())
        assert result.total("rerank_cache_requests_total", result="miss") == 1
        with pytest.raises(urllib.error.HTTPError) as caught:
            urllib.request.urlopen(endpoint.url.replace("/metrics", "/"), timeout=10)
        assert caught.value.code == 404
        caught.value.close()
    finally:
        endpoint.close()


def test_a_taken_port_fails_when_the_endpoint_is_made(recorder: PrometheusRecorder) -> None:
    first = MetricsEndpoint("127.0.0.1", 0, Exposition(recorder.registry, INFO))
    try:
        with pytest.raises(OSError, match="in use"):
            MetricsEndpoint("127.0.0.1", first.port, Exposition(recorder.registry, INFO))
    finally:
        first.close()


def test_the_directory_is_private_fresh_and_removed() -> None:
    environ: dict[str, str] = {}
    with metrics_storage(environ) as path:
        assert environ["PROMETHEUS_MULTIPROC_DIR"] == str(path)
        assert path.stat().st_mode & 0o777 == 0o700
        with metrics_storage({}) as other:
            assert other != path
        directory = MetricsDirectory(path)
        record_in_another_process(directory, "metrics.cache_lookup('hit')")
        assert list(path.iterdir())
    assert not path.exists()


def test_the_server_entry_imports_prometheus_client_only_once_it_has_set_its_storage() -> None:
    """The library reads its storage once, when first imported: the entry reads its settings
    (which decide whether metrics are on) before it sets it, so nothing it has imported by then
    may import the library."""
    program = (
        "import sys\n"
        "from rerank.server.__main__ import settings_from\n"
        "settings_from(['--metrics-port', '0', '--workers', '2'], {})\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'prometheus_client'))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stdout.strip() == "[]"
