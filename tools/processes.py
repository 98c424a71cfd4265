"""Child processes for the tests, the bench and the tools.

Each starts in a session of its own, so its process group is its PID: a signal sent to that
group reaches what it started too (`make` and its recipe, a server's workers, even orphaned
ones) and nothing else. `Process` collects its output with a thread, waits for the lines it
prints (on a condition the thread notifies, bounded), and stops it: SIGTERM, then SIGKILL,
each wait bounded. `run` runs one to its end on an event loop, killed if it overruns.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import subprocess
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, Self

from tools.waiting import until

READY_SECONDS = 60.0
STOP_SECONDS = 15.0
#: How long the output may take to reach us once the process has exited.
DRAIN_SECONDS = 5.0


def _environment(env: Mapping[str, str] | None) -> dict[str, str]:
    return {**os.environ, **(env or {})}


class Process:
    """A child process in its own session, its stdout collected line by line in `lines`.

    `env` goes over this process's environment. `stderr` is where its stderr goes (an open
    file, or `subprocess.DEVNULL`); by default it joins stdout and is collected too. Use as a
    context manager, or call `stop()`.
    """

    def __init__(
        self,
        args: Sequence[str | Path],
        *,
        env: Mapping[str, str] | None = None,
        cwd: str | Path | None = None,
        stderr: IO[bytes] | int = subprocess.STDOUT,
    ) -> None:
        self.popen = subprocess.Popen(
            [str(arg) for arg in args],
            cwd=cwd,
            env=_environment(env),
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
            start_new_session=True,
        )
        self.lines: list[str] = []
        #: True once its stdout is closed: all of its output is in `lines`.
        self.ended = False
        #: Notified at each line collected and at the end of the output.
        self.changed = threading.Condition()
        self._reader = threading.Thread(target=self._collect, daemon=True)
        self._reader.start()

    @property
    def pid(self) -> int:
        return self.popen.pid

    @property
    def output(self) -> str:
        with self.changed:
            return "".join(self.lines)

    def _collect(self) -> None:
        assert self.popen.stdout is not None
        for line in self.popen.stdout:
            with self.changed:
                self.lines.append(line)
                self.changed.notify_all()
        with self.changed:
            self.ended = True
            self.changed.notify_all()

    def _matching(self, pattern: str, count: int, timeout: float) -> list[re.Match[str]]:
        """The first `count` matches of `pattern` among the lines, once there are as many;
        an AssertionError if the output ends first or `timeout` passes."""
        compiled = re.compile(pattern)

        def matches() -> list[re.Match[str]]:
            return [found for line in self.lines if (found := compiled.search(line))]

        until(
            lambda: self.ended or len(matches()) >= count,
            lambda: f"{count} lines matching {pattern!r} in:\n{self.output}",
            timeout=timeout,
            changed=self.changed,
        )
        with self.changed:
            found = matches()
        if len(found) < count:
            raise AssertionError(
                f"{pattern!r} matched {len(found)} of {count} lines before the output ended "
                f"(exit code {self.popen.poll()}):\n{self.output}"
            )
        return found[:count]

    def wait_for(self, pattern: str, timeout: float = READY_SECONDS) -> re.Match[str]:
        """The first line's match of `pattern`, once it is printed."""
        return self._matching(pattern, 1, timeout)[0]

    def wait_for_count(self, pattern: str, count: int, timeout: float = READY_SECONDS) -> list[str]:
        """Wait until `count` lines match `pattern` (e.g. one per worker); their first groups."""
        return [found.group(1) for found in self._matching(pattern, count, timeout)]

    def signal(self, signum: int) -> None:
        """`signum` to its process group, while it runs."""
        if self.popen.poll() is None:
            os.killpg(self.pid, signum)

    def wait(self, timeout: float = READY_SECONDS) -> int:
        """The exit code, once the process has exited and all its output is read."""
        code = self.popen.wait(timeout=timeout)
        self._reader.join(timeout=DRAIN_SECONDS)
        return code

    def stop(self, timeout: float = STOP_SECONDS) -> None:
        """SIGTERM, SIGKILL if it has not exited within `timeout`; then its output's end."""
        self.signal(signal.SIGTERM)
        try:
            self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.signal(signal.SIGKILL)
            self.popen.wait(timeout=DRAIN_SECONDS)
        self._reader.join(timeout=DRAIN_SECONDS)
        if self._reader.is_alive():
            # The output pipe is still open: children the leader left behind (orphaned
            # workers) hold it, and being alive they keep its process group, so this signal
            # reaches them and nothing else.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pid, signal.SIGKILL)
            self._reader.join(timeout=DRAIN_SECONDS)
        if self.popen.stdout is not None:
            self.popen.stdout.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()


@dataclass(frozen=True)
class Finished:
    returncode: int
    stdout: str
    stderr: str


async def run(
    args: Sequence[str | Path],
    *,
    timeout: float,
    env: Mapping[str, str] | None = None,
    cwd: str | Path | None = None,
) -> Finished:
    """Run `args` to its end, in a session of its own, without blocking the event loop (a
    test's loop may serve what it calls). If it overruns `timeout` seconds, or the caller is
    cancelled, its process group is killed and TimeoutError (or the cancellation) raised."""
    process = await asyncio.create_subprocess_exec(
        *(str(arg) for arg in args),
        cwd=cwd,
        env=_environment(env),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        start_new_session=True,
    )
    try:
        async with asyncio.timeout(timeout):
            stdout, stderr = await process.communicate()
    finally:
        if process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            await process.wait()
    assert process.returncode is not None
    return Finished(process.returncode, stdout.decode(), stderr.decode())
