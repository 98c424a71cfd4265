"""The expressions of the Grafana dashboard in deploy/grafana, for the tests that check them."""

from __future__ import annotations

import json

from tests.conftest import REPO_ROOT

DEPLOY = REPO_ROOT / "deploy"


def dashboard_expressions() -> list[str]:
    dashboard = json.loads((DEPLOY / "grafana" / "rerank-service.json").read_text())
    return [target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])]
