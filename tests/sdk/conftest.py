"""The AI SDK's own client, run as Node processes from this folder's pinned package.

`npm ci` installs both SDK generations once per session from package-lock.json (no install
scripts), on the Node of the dev install (tools/node.py): nothing here needs the machine's Node,
and nothing skips. Each script prints one JSON document (see sdk.mjs).
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tools import node, processes

SDK_DIR = Path(__file__).resolve().parent
NPM_CI_SECONDS = 300
SCRIPT_SECONDS = 60
#: pytest-timeout's budget for one test here: the session's `npm ci` runs in the first one's setup.
TEST_SECONDS = NPM_CI_SECONDS + 2 * SCRIPT_SECONDS


@dataclass(frozen=True)
class Generation:
    """One pinned SDK generation and the gateway protocol it speaks."""

    sdk: str  # the `ai` major, as the scripts' --sdk takes it
    protocol: str  # "v3" or "v4": the base URL's path is /{protocol}/ai

    def base_url(self, origin: str) -> str:
        return f"{origin}/{self.protocol}/ai"


AI_6 = Generation("6", "v3")
AI_7 = Generation("7", "v4")
GENERATIONS = [pytest.param(AI_6, id="ai@6"), pytest.param(AI_7, id="ai@7")]


@dataclass(frozen=True)
class Run:
    """What one script printed: `result` is its JSON document."""

    returncode: int
    result: dict[str, Any]
    stderr: str

    @property
    def error(self) -> dict[str, Any]:
        assert self.returncode == 1, (self.result, self.stderr)
        error: dict[str, Any] = self.result["error"]
        return error

    def ok(self) -> dict[str, Any]:
        assert self.returncode == 0, (self.result, self.stderr)
        return self.result


@pytest.fixture(scope="session")
def sdk_scripts() -> Path:
    """Runs `npm ci` in tests/sdk once for the session."""
    npm_ci = node.command("npm", "ci", "--prefix", str(SDK_DIR), "--no-audit", "--no-fund")
    finished = asyncio.run(processes.run(npm_ci, timeout=NPM_CI_SECONDS, env=node.environment()))
    assert finished.returncode == 0, finished.stdout + finished.stderr
    return SDK_DIR


def _command(script: str, generation: Generation | None, args: tuple[str, ...]) -> list[str]:
    sdk = ("--sdk", generation.sdk) if generation is not None else ()
    return node.command("node", str(SDK_DIR / script), *sdk, *args)


async def arun_script(script: str, generation: Generation | None, *args: str) -> Run:
    """Run `node tests/sdk/<script> --sdk N ARGS...`, the event loop free meanwhile (a test's
    loop may serve the HTTP server the script calls)."""
    finished = await processes.run(
        _command(script, generation, args), timeout=SCRIPT_SECONDS, env=node.environment()
    )
    try:
        result = json.loads(finished.stdout)
    except json.JSONDecodeError as exc:
        raise AssertionError(
            f"not one JSON document:\n{finished.stdout}\n{finished.stderr}"
        ) from exc
    return Run(finished.returncode, result, finished.stderr)


def run_script(script: str, generation: Generation | None, *args: str) -> Run:
    """`arun_script` for a test without an event loop."""
    return asyncio.run(arun_script(script, generation, *args))


def assert_rate_limited_to_the_end(error: dict[str, Any]) -> None:
    """The SDK's error after every attempt was a 429: its 3 attempts spent, the rate limit last."""
    assert error["class"] == "RetryError"
    assert error["reason"] == "maxRetriesExceeded"
    assert error["attempts"] == 3
    assert error["lastError"]["class"] == "GatewayRateLimitError"
    assert error["lastError"]["statusCode"] == 429
    assert error["lastError"]["isRetryable"] is True
