"""The wheel built from this checkout, once per session, for every packaging test."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT

PIP_WHEEL = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q"]


@pytest.fixture(scope="session")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    # No build isolation: setuptools comes with the dev install, so nothing is downloaded.
    subprocess.run(
        [*PIP_WHEEL, "-w", str(out), str(REPO_ROOT)],
        check=True,
        capture_output=True,
        timeout=240,
    )
    (built,) = out.glob("rerank_service-*.whl")
    return built
