"""A test whose binary is missing skips with one line off CI, and fails under CI, so a missing
install step in `.ci/run` cannot pass green (`tests.conftest.missing_tool`)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT

NEEDS_A_TOOL = """
from tests.conftest import missing_tool

def test_needs_frobnicator():
    missing_tool("frobnicator not found: apt-get install frobnicator")
"""


def run_pytest(folder: Path, ci: str | None) -> subprocess.CompletedProcess[str]:
    (folder / "test_needs.py").write_text(NEEDS_A_TOOL)
    env = {k: v for k, v in os.environ.items() if k != "CI"} | {"PYTHONPATH": str(REPO_ROOT)}
    if ci is not None:
        env["CI"] = ci
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", "test_needs.py"],
        cwd=folder,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_off_ci_a_missing_binary_skips_with_one_line(tmp_path: Path) -> None:
    run = run_pytest(tmp_path, ci=None)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "1 skipped" in run.stdout
    assert "frobnicator not found: apt-get install frobnicator" in run.stdout


@pytest.mark.parametrize("ci", ["true", "1"])
def test_under_ci_a_missing_binary_fails(tmp_path: Path, ci: str) -> None:
    run = run_pytest(tmp_path, ci=ci)
    assert run.returncode == 1, run.stdout + run.stderr
    assert "1 failed" in run.stdout
    assert "frobnicator not found: apt-get install frobnicator" in run.stdout
    # One line, not a traceback of our helper.
    assert "def missing_tool" not in run.stdout
