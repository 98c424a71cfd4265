"""A bad setting, as a user meets it: the real `rerank-server` stops at once with one line
naming the setting and its range, exit code 2, no traceback."""

from __future__ import annotations

import os
import subprocess

import pytest

from tests.e2e.processes import RERANK_SERVER

pytestmark = pytest.mark.e2e


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("RERANK_WINDOW_PARALLELISM", "0", "an integer in [1, 64]"),
        ("RERANK_WINDOW_SIZE", "0", "an integer in [1, 10000]"),
        ("RERANK_BREAKER_FAILURE_RATE", "1.5", "a number in (0, 1]"),
        ("RERANK_LOG_LEVEL", "LOUD", "one of DEBUG, INFO, WARNING, ERROR, CRITICAL"),
    ],
)
def test_a_bad_setting_is_one_line_and_exit_2(variable: str, value: str, message: str) -> None:
    # Before the model checked ranges, the first three started a server (the timeout ends
    # it, and the test fails) and the last printed a traceback.
    completed = subprocess.run(
        [RERANK_SERVER, "--port", "0", "--workers", "1"],
        env={**os.environ, variable: value},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert completed.returncode == 2, completed.stderr
    assert completed.stdout == ""
    assert completed.stderr.endswith(f"{variable} must be {message}, got {value!r}\n")
    assert completed.stderr.count("\n") == 1, completed.stderr
