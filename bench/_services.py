"""The processes under test: started with Popen, ready on their line, stopped by PID."""

from __future__ import annotations

import asyncio
import json
import os
import re
import selectors
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

READY_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 15.0


class Service:
    """One child process: `PYTHON -m MODULE ARGS`, its stderr in `log`.

    `python` is this interpreter unless given: another one runs another build of the code
    (`python -m bench --against REF` runs a server installed in a virtualenv of its own).

    Use as a context manager: `__exit__` sends SIGTERM to this PID only, waits a bounded time,
    and kills it (this PID only) if it has not exited.
    """

    def __init__(
        self,
        name: str,
        module: str,
        args: Sequence[str],
        ready: str,
        log: Path,
        env: Mapping[str, str] | None = None,
        python: str | Path = sys.executable,
    ) -> None:
        self.name = name
        self._command = [str(python), "-m", module, *args]
        self._ready = re.compile(ready)
        self._log_path = log
        self._env = {**os.environ, **(env or {})}
        self._popen: subprocess.Popen[bytes] | None = None
        self.address = ""
        #: What the process printed on stdout up to its ready line.
        self.printed = ""

    @property
    def pid(self) -> int:
        assert self._popen is not None
        return self._popen.pid

    def __enter__(self) -> Service:
        log = self._log_path.open("wb")
        try:
            self._popen = subprocess.Popen(
                self._command, stdout=subprocess.PIPE, stderr=log, env=self._env
            )
        finally:
            log.close()  # the child holds its own descriptor
        try:
            self.address = self._wait_ready()
        except BaseException:
            self._stop()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._stop()

    def _wait_ready(self) -> str:
        """The ready line's first group, read within READY_TIMEOUT_S (never a blocking read)."""
        assert self._popen is not None
        assert self._popen.stdout is not None
        deadline = time.monotonic() + READY_TIMEOUT_S
        buffered = b""
        with selectors.DefaultSelector() as selector:
            selector.register(self._popen.stdout, selectors.EVENT_READ)
            while (left := deadline - time.monotonic()) > 0:
                if not selector.select(timeout=left):
                    continue
                chunk = os.read(self._popen.stdout.fileno(), 4096)
                if not chunk:
                    break  # the child closed stdout: it exited
                buffered += chunk
                self.printed = buffered.decode(errors="replace")
                match = self._ready.search(self.printed)
                if match:
                    return match.group(1)
        raise RuntimeError(
            f"{self.name} did not print its ready line within {READY_TIMEOUT_S:.0f} s "
            f"(exit code {self._popen.poll()}); see {self._log_path.name}"
        )

    def _stop(self) -> None:
        popen = self._popen
        if popen is None or popen.poll() is not None:
            return
        popen.send_signal(signal.SIGTERM)
        try:
            popen.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            popen.kill()
            popen.wait(timeout=STOP_TIMEOUT_S)
        finally:
            if popen.stdout is not None:
                popen.stdout.close()


def mock_gateway(log: Path) -> Service:
    """The mock gateway, on a free loopback port; `v3_url` is the base URL to send it."""
    return Service(
        "mock gateway",
        "rerank.mock_gateway",
        ["--host", "127.0.0.1", "--port", "0", "--log-level", "warning"],
        # The ready line names the v4 base URL; keep its origin (host and port).
        r"mock gateway listening on (http://\S+)/v4/ai",
        log,
    )


def v3_url(mock: Service) -> str:
    # v3, served on the same port: the workload (bench/_workload.py) and the server's gateway
    # adapter both send specification version 3.
    return f"{mock.address}/v3/ai"


async def run_json(
    module: str,
    *args: str,
    timeout: float,
    what: str,
    env: Mapping[str, str] | None = None,
) -> Any:
    """Run `python -m MODULE ARGS` to its end and return the JSON it prints: a measurement
    in a process of its own, with `env` over this one's environment. Bounded: killed (this
    PID only) if it overruns `timeout` seconds; its stderr is in the error when it fails.
    `what` names it in those errors."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        module,
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, **(env or {})},
    )
    try:
        out, err = await asyncio.wait_for(process.communicate(), timeout=timeout)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise RuntimeError(f"{what} overran {timeout:.0f} s") from None
    if process.returncode != 0:
        raise RuntimeError(f"{what} failed ({process.returncode}):\n{err.decode()}")
    return json.loads(out)
