"""The end-to-end tests' processes (tools/processes.py): the installed console scripts, started
from the checkout's root, and the ready lines the servers print."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO_ROOT
from tools.processes import Process

BIN = Path(sys.executable).parent
# The console scripts the wheel installs: a process started through them imports only what is
# installed (the checkout's root is not on its path), so an old top-level name cannot leak in.
RERANK_SERVER = str(BIN / "rerank-server")
RERANK_MOCK_GATEWAY = str(BIN / "rerank-mock-gateway")


def start(processes: list[Process], args: list[str], env: dict[str, str] | None = None) -> Process:
    """Start `args`, to be stopped with the test. No drain delay unless a test asks for one: it
    is there for load balancers, and would add its seconds to every stop of every test."""
    process = Process(args, env={"RERANK_DRAIN_DELAY": "0", **(env or {})}, cwd=REPO_ROOT)
    processes.append(process)
    return process


def start_server(processes: list[Process], *args: str, env: dict[str, str] | None = None) -> str:
    server = start(processes, [RERANK_SERVER, "--port", "0", *args], env)
    return server.wait_for(r"rerank server listening on (\S+:\d+)").group(1)


def start_mock_gateway(processes: list[Process], *args: str) -> str:
    """Start the mock gateway; return its v3 base URL, for a rerank server's `--gateway-url`.

    The ready line names the v4 base URL; v3 is served on the same port under `/v3/ai`, and
    the server's gateway adapter sends specification version 3.
    """
    mock = start(processes, [RERANK_MOCK_GATEWAY, "--port", "0", *args])
    origin = mock.wait_for(r"mock gateway listening on (http://\S+)/v4/ai").group(1)
    return f"{origin}/v3/ai"


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "rerank"), *args], capture_output=True, text=True, timeout=60, check=False
    )
