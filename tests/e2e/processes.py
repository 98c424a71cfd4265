"""Child processes for end-to-end tests: started in their own process group, output collected,
stopped by PID (SIGTERM, then SIGKILL), and the ready lines the servers print."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from tests.conftest import REPO_ROOT

BIN = Path(sys.executable).parent
# The console scripts the wheel installs: a process started through them imports only what is
# installed (the checkout's root is not on its path), so an old top-level name cannot leak in.
RERANK_SERVER = str(BIN / "rerank-server")
RERANK_MOCK_GATEWAY = str(BIN / "rerank-mock-gateway")
STARTUP_SECONDS = 60


class Process:
    """A child process in its own process group, with its output collected by a thread."""

    def __init__(self, args: list[str], env: dict[str, str] | None = None) -> None:
        self.popen = subprocess.Popen(
            args,
            cwd=REPO_ROOT,
            # No drain delay unless a test asks for one: it is there for load balancers, and
            # would add its seconds to every stop of every test.
            env={**os.environ, "RERANK_DRAIN_DELAY": "0", **(env or {})},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,  # so `make` and its children are signalled together
        )
        self.lines: list[str] = []
        self._new_line = threading.Condition()
        self._reader = threading.Thread(target=self._collect, daemon=True)
        self._reader.start()

    def _collect(self) -> None:
        assert self.popen.stdout is not None
        for line in self.popen.stdout:
            with self._new_line:
                self.lines.append(line)
                self._new_line.notify_all()

    def wait_for(self, pattern: str, timeout: float = STARTUP_SECONDS) -> re.Match[str]:
        compiled = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while True:
            # Once the process has exited, its last lines may still be on their way: read
            # them all (the reader ends at EOF) before the final look.
            exited = self.popen.poll() is not None
            if exited:
                self._reader.join(timeout=5)
            with self._new_line:
                for line in self.lines:
                    if match := compiled.search(line):
                        return match
                remaining = deadline - time.monotonic()
                if remaining <= 0 or exited:
                    raise AssertionError(f"{pattern!r} never appeared in:\n{self.output}")
                self._new_line.wait(min(remaining, 0.5))

    def wait_for_count(
        self, pattern: str, count: int, timeout: float = STARTUP_SECONDS
    ) -> list[str]:
        """Wait until `count` lines match `pattern` (e.g. one per worker); their first groups."""
        compiled = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while True:
            exited = self.popen.poll() is not None
            if exited:
                self._reader.join(timeout=5)
            with self._new_line:
                found = [m.group(1) for line in self.lines if (m := compiled.search(line))]
                if len(found) >= count:
                    return found
                remaining = deadline - time.monotonic()
                if remaining <= 0 or exited:
                    raise AssertionError(
                        f"{pattern!r} matched {len(found)} of {count} lines in:\n{self.output}"
                    )
                self._new_line.wait(min(remaining, 0.5))

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def signal(self, signum: int) -> None:
        if self.popen.poll() is None:
            os.killpg(self.popen.pid, signum)

    def wait(self, timeout: float = STARTUP_SECONDS) -> int:
        """The exit code, once the process has exited and all its output is read."""
        code = self.popen.wait(timeout=timeout)
        self._reader.join(timeout=5)
        return code

    def stop(self) -> None:
        self.signal(signal.SIGTERM)
        try:
            self.popen.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.signal(signal.SIGKILL)
            self.popen.wait(timeout=5)
        self._reader.join(timeout=5)
        if self._reader.is_alive():
            # The output pipe is still open: children the leader left behind (orphaned
            # workers) hold it, and being alive they keep its process group, so this signal
            # reaches them and nothing else.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, signal.SIGKILL)
            self._reader.join(timeout=5)
        if self.popen.stdout is not None:
            self.popen.stdout.close()


def start(processes: list[Process], args: list[str], env: dict[str, str] | None = None) -> Process:
    process = Process(args, env)
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
