"""The alert rules and the Grafana dashboard in deploy/ speak of metrics the server exports,
under the names it exports them (the queries themselves run against a real Prometheus in
tests/e2e/test_metrics.py)."""

from __future__ import annotations

import re

import pytest

from rerank.server._metric_families import FAMILIES
from tests.dashboard import DEPLOY, dashboard_expressions

# What a scrape shows: counters with `_total`, histograms as `_bucket`, `_sum` and `_count`,
# the cost in dollars (it is stored in nano-dollars).
SUFFIXES = {"counter": ("_total",), "gauge": ("",), "histogram": ("_bucket", "_sum", "_count")}
SHOWN = {family.name.replace("nanousd", "usd"): family for family in FAMILIES}
EXPORTED = {name + suffix for name, family in SHOWN.items() for suffix in SUFFIXES[family.kind]}
METRIC = re.compile(r"\b(?:grpc_server|rerank)_[a-z0-9_]+")


@pytest.mark.parametrize(
    "text",
    [
        pytest.param((DEPLOY / "prometheus" / "alerts.yml").read_text(), id="alerts"),
        pytest.param("\n".join(dashboard_expressions()), id="dashboard"),
    ],
)
def test_every_metric_named_is_one_the_server_exports(text: str) -> None:
    named = set(METRIC.findall(text))
    assert named, "no metric found: the pattern is wrong"
    # Prose may name a family (`rerank_documents_per_request`), a query a series of it.
    assert named <= EXPORTED | set(SHOWN), named - EXPORTED - set(SHOWN)


def test_the_dashboard_shows_every_metric() -> None:
    named = set(METRIC.findall("\n".join(dashboard_expressions())))
    shown = {
        name
        for name, family in SHOWN.items()
        if any(name + suffix in named for suffix in SUFFIXES[family.kind])
    }
    assert shown == set(SHOWN), set(SHOWN) - shown
