"""The metric files and the scrape: what each process writes is what `/metrics` shows, summed
over processes; the cost is exact; dead processes keep their counts but not their live gauges;
labels stay bounded."""

from __future__ import annotations

import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import pytest
from prometheus_client import generate_latest

from rerank.server.metrics import (
    MAX_MODEL_LABELS,
    Exposition,
    Metrics,
    MetricsDirectory,
    MetricsEndpoint,
    nano_dollars,
)
from tests.scrapes import Scrape

MODEL = "cohere/rerank-v3.5"
INFO = {"version": "1.2.3", "gateway_protocol": "v3"}


@pytest.fixture
def directory() -> Iterator[MetricsDirectory]:
    made = MetricsDirectory()
    yield made
    made.close()


@pytest.fixture
def metrics(directory: MetricsDirectory) -> Iterator[Metrics]:
    """This process's metrics in `directory`."""
    made = Metrics.in_directory(directory.path)
    yield made
    made.close()


def scrape(directory: MetricsDirectory) -> Scrape:
    return Scrape(generate_latest(Exposition(directory.path, INFO)).decode())


def record_in_another_process(directory: MetricsDirectory, code: str) -> int:
    """Run `code` (with `metrics` a `Metrics` in `directory`) in a process of its own, as a
    worker would; return its pid, which has exited when this returns."""
    program = (
        "import os, sys\n"
        "from pathlib import Path\n"
        "from rerank.server.metrics import Metrics\n"
        f"metrics = Metrics.in_directory(Path({str(directory.path)!r}))\n"
        f"{code}\n"
        "print(os.getpid())\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, timeout=60, check=True
    )
    return int(done.stdout)


def test_a_scrape_shows_the_exact_decimal_sum_of_many_small_charges(
    directory: MetricsDirectory, metrics: Metrics
) -> None:
    metrics.models_offered([MODEL])
    for _ in range(12_345):
        metrics.upstream_attempt("rerank", MODEL, "OK", 0.01, Decimal("0.001"))
    # What the same charges add up to as floats: the error a float counter would show.
    assert sum([0.001] * 12_345) != 12.345
    line = scrape(directory).line("rerank_gateway_cost_usd_total", model=MODEL, caller="")
    assert line.split()[-1] == "12.345"


def test_the_cost_of_every_process_adds_up_exactly(
    directory: MetricsDirectory, metrics: Metrics
) -> None:
    charge = f"metrics.models_offered([{MODEL!r}])\n" + (
        "from decimal import Decimal\n"
        "for _ in range(1001):\n"
        f"    metrics.upstream_attempt('rerank', {MODEL!r}, 'OK', 0.01, Decimal('0.001'))\n"
    )
    for _ in range(3):
        record_in_another_process(directory, charge)
    metrics.models_offered([MODEL])
    metrics.upstream_attempt("rerank", MODEL, "OK", 0.01, Decimal("0.000000123"))
    result = scrape(directory)
    assert (
        result.line("rerank_gateway_cost_usd_total", model=MODEL, caller="").split()[-1]
        == "3.003000123"
    )
    assert result.total("rerank_upstream_attempts_total", model=MODEL) == 3004


def test_cost_is_counted_in_whole_nano_dollars() -> None:
    assert nano_dollars(Decimal("0.002")) == 2_000_000
    assert nano_dollars(Decimal("1.0000000015")) == 1_000_000_002  # half-even below a nano


def test_counters_and_histograms_of_processes_are_summed(
    directory: MetricsDirectory, metrics: Metrics
) -> None:
    record_in_another_process(
        directory, "metrics.cache_lookup('hit')\nmetrics.documents(20)\nmetrics.documents(3)"
    )
    metrics.cache_lookup("hit")
    metrics.cache_lookup("miss")
    metrics.documents(20)
    metrics.documents(20_000)  # past the last bucket: only +Inf holds it
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
    first = Metrics.in_directory(directory.path)
    first.cache_lookup("hit")
    first.close()
    again = Metrics.in_directory(directory.path)  # the same pid, as a reused one would be
    again.cache_lookup("hit")
    again.close()
    assert scrape(directory).total("rerank_cache_requests_total", result="hit") == 2


def test_the_breaker_gauge_says_how_many_workers_are_in_each_state(
    directory: MetricsDirectory, metrics: Metrics
) -> None:
    record_in_another_process(directory, "metrics.breaker_transition('open')")
    metrics.breaker_transition("half_open")
    result = scrape(directory)
    assert result.total("rerank_circuit_breaker_state", state="open") == 1
    assert result.total("rerank_circuit_breaker_state", state="half_open") == 1
    assert result.total("rerank_circuit_breaker_state", state="closed") == 0
    assert result.total("rerank_circuit_breaker_transitions_total", to="open") == 1


def test_a_model_the_gateway_has_not_answered_for_is_other(
    directory: MetricsDirectory, metrics: Metrics
) -> None:
    metrics.upstream_attempt("rerank", "made/up-by-a-caller", "MODEL_NOT_FOUND", 0.01, None)
    metrics.models_offered([MODEL])
    metrics.upstream_attempt("rerank", MODEL, "OK", 0.01, None)
    metrics.models_offered(f"p/m{n}" for n in range(2 * MAX_MODEL_LABELS))
    metrics.upstream_attempt("rerank", f"p/m{2 * MAX_MODEL_LABELS - 1}", "OK", 0.01, None)
    result = scrape(directory)
    models = result.labels("rerank_upstream_attempts_total", "model")
    assert "made/up-by-a-caller" not in models
    assert {"other", MODEL} <= models
    assert result.total("rerank_upstream_attempts_total", model="other") == 2


def test_disabled_metrics_write_nothing(directory: MetricsDirectory) -> None:
    metrics = Metrics.disabled()
    metrics.cache_lookup("hit")
    metrics.upstream_attempt("rerank", MODEL, "OK", 0.01, Decimal("1"))
    metrics.grpc_method("x/y").started.inc()
    assert not metrics.enabled
    assert list(directory.path.iterdir()) == []


def test_the_endpoint_serves_metrics_and_only_metrics(
    directory: MetricsDirectory, metrics: Metrics
) -> None:
    metrics.cache_lookup("miss")
    endpoint = MetricsEndpoint("127.0.0.1", 0, Exposition(directory.path, INFO))
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


def test_a_taken_port_fails_when_the_endpoint_is_made(directory: MetricsDirectory) -> None:
    first = MetricsEndpoint("127.0.0.1", 0, Exposition(directory.path, INFO))
    try:
        with pytest.raises(OSError, match="in use"):
            MetricsEndpoint("127.0.0.1", first.port, Exposition(directory.path, INFO))
    finally:
        first.close()


def test_the_directory_is_private_and_removed(directory: MetricsDirectory) -> None:
    assert directory.path.stat().st_mode & 0o777 == 0o700
    other = MetricsDirectory()
    assert other.path != directory.path
    writer = Metrics.in_directory(other.path)
    writer.cache_lookup("hit")
    writer.close()
    other.close()
    assert not Path(other.path).exists()
