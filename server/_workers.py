"""`--workers N`: N server processes sharing one port (SO_REUSEPORT), and their parent, which
only supervises (docs/design/processes.md).

The parent never starts gRPC (which does not survive a fork once its core runs), so it can fork
a replacement at any time; it holds the port with a bound, non-listening socket, so `--port 0`
resolves once for all. Workers report over one pipe (`<pid> ready`, or `<pid> failed <reason>`
before they exit); signals reach the parent through `signal.set_wakeup_fd`, so one `select`
waits for all. With metrics on, the parent serves `/metrics`, with threads: each fork happens
while the endpoint holds off (`MetricsEndpoint.quiet`), so no lock is held in the child.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import selectors
import signal
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass

import uvloop

from rerank.server._app import serve
from rerank.server._config import Settings
from rerank.server._listening import StartupError, refuse_taken_port, reserve_port
from rerank.server._prometheus import MetricsDirectory, MetricsEndpoint, PrometheusRecorder

logger = logging.getLogger(__name__)

READY_TIMEOUT = 60.0  # seconds every worker has to listen at the start
# Seconds before a dead worker is replaced: doubles per death in its slot, up to MAX_BACKOFF,
# and starts afresh once a worker served STABLE_AFTER.
FIRST_BACKOFF = 0.5
MAX_BACKOFF = 30.0
STABLE_AFTER = 60.0
START_ATTEMPTS = 3  # replacements in a row that die before they listen: the server stops
# Seconds a stopping worker gets beyond drain and grace, to close and unwind.
STOP_MARGIN = 5.0

_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD)


def run_workers(
    settings: Settings,
    ready: Callable[[int, int | None], None],
    metrics: tuple[MetricsDirectory, MetricsEndpoint] | None = None,
) -> int:
    """Serve with `settings.workers` processes on one port; the exit status for them all.
    `metrics`: the directory the workers record into and its endpoint (not serving yet)."""
    if settings.port != 0 and not settings.allow_port_overlap:
        refuse_taken_port(settings.host, settings.port)
    try:
        reservation = reserve_port(settings.host, settings.port)
    except OSError as exc:
        refuse_taken_port(settings.host, settings.port, overlap_failed=True)
        where = f"{settings.host}:{settings.port}"
        raise StartupError(f"cannot serve on {where}: {exc.strerror}") from exc
    http = None
    try:
        if settings.http_port is not None:  # the HTTP port, held the same way
            if settings.http_port != 0 and not settings.allow_port_overlap:
                refuse_taken_port(settings.host, settings.http_port)
            http = reserve_port(settings.host, settings.http_port)
        # The workers share the ports among themselves by design: the checks were for others.
        shared = dataclasses.replace(
            settings,
            port=reservation.getsockname()[1],
            http_port=None if http is None else http.getsockname()[1],
            allow_port_overlap=True,
        )
        return _Supervisor(shared, reservation, metrics, http).run(ready)
    except OSError as exc:
        raise StartupError(f"cannot serve HTTP on {settings.host}: {exc.strerror}") from exc
    finally:
        reservation.close()
        if http is not None:
            http.close()


@dataclass
class _Slot:
    """One of the N places a worker fills; its back-off outlives each worker."""

    number: int
    pid: int = 0  # 0: no worker in it now
    started: float = 0.0
    listening: bool = False
    reason: str = ""  # what the worker in it said before it died
    failed_starts: int = 0  # replacements in a row that died before listening
    backoff: float = FIRST_BACKOFF
    restart_at: float | None = None


class _Supervisor:
    def __init__(
        self,
        settings: Settings,
        reservation: socket.socket,
        metrics: tuple[MetricsDirectory, MetricsEndpoint] | None,
        http_reservation: socket.socket | None = None,
    ) -> None:
        self._settings = settings
        self._reservation = reservation
        self._http_reservation = http_reservation
        self._metrics = metrics
        self._slots = [_Slot(number) for number in range(1, settings.workers + 1)]
        self._status_read, self._status_write = os.pipe()
        self._wakeup_read, self._wakeup_write = os.pipe()
        for fd in (self._status_read, self._wakeup_read, self._wakeup_write):
            os.set_blocking(fd, False)
        self._unread = b""
        self._serving = False  # every worker listened once, and the ready line is out
        self._stop_signal: int | None = None
        self._kill_at: float | None = None
        self._startup_failure: str | None = None
        self._exit_status = 0

    def run(self, ready: Callable[[int, int | None], None]) -> int:
        previous = {signum: signal.signal(signum, _wake) for signum in _SIGNALS}
        previous_wakeup = signal.set_wakeup_fd(self._wakeup_write, warn_on_full_buffer=False)
        try:
            self._supervise(ready)
        finally:
            signal.set_wakeup_fd(previous_wakeup)
            for signum, handler in previous.items():
                signal.signal(signum, handler)
            for fd in (self._status_read, self._status_write, self._wakeup_read):
                os.close(fd)
            os.close(self._wakeup_write)
        if self._startup_failure is not None:
            raise StartupError(self._startup_failure)
        return self._exit_status

    @property
    def _starting(self) -> bool:
        return not self._serving and self._stop_signal is None

    def _supervise(self, ready: Callable[[int, int | None], None]) -> None:
        for slot in self._slots:
            self._spawn(slot)
        if self._metrics is not None:
            self._metrics[1].start()
        ready_by = time.monotonic() + READY_TIMEOUT
        with selectors.DefaultSelector() as selector:
            selector.register(self._wakeup_read, selectors.EVENT_READ)
            selector.register(self._status_read, selectors.EVENT_READ)
            while any(slot.pid or slot.restart_at is not None for slot in self._slots):
                deadlines = [s.restart_at for s in self._slots if s.restart_at is not None]
                deadlines += [ready_by] if self._starting else []
                deadlines += [self._kill_at] if self._kill_at is not None else []
                now = time.monotonic()
                selector.select(max(0.0, min(deadlines) - now) if deadlines else None)
                # Signals first: a worker that a Ctrl-C on the terminal killed while starting
                # is then seen as stopping, not as failing to start.
                for signum in _read_all(self._wakeup_read, 512):
                    if signum in (signal.SIGTERM, signal.SIGINT):
                        self._stop(signum)
                    elif signum == signal.SIGHUP and self._stop_signal is None:
                        # Each worker re-reads the callers file itself. Not while stopping: a
                        # worker out of its event loop has lost its handler, and would die.
                        self._send(signal.SIGHUP)
                # Then what workers said, before their deaths: a reason precedes its exit.
                self._read_status(ready)
                self._reap()
                self._on_time(time.monotonic(), ready_by)

    def _spawn(self, slot: _Slot) -> None:
        slot.restart_at = None
        quiet = self._metrics[1].quiet() if self._metrics is not None else contextlib.nullcontext()
        with quiet:
            pid = os.fork()
        if pid == 0:  # the worker; it must never return into the parent's code
            status = 1
            try:
                self._become_worker()
                status = _worker(self._settings, self._status_write, self._metrics is not None)
            finally:
                os._exit(status)
        slot.pid, slot.started, slot.listening, slot.reason = pid, time.monotonic(), False, ""
        logger.debug("worker %d started (pid %d)", slot.number, pid)

    def _become_worker(self) -> None:
        signal.set_wakeup_fd(-1)
        for signum in _SIGNALS:
            signal.signal(signum, signal.SIG_DFL)
        # Until the worker's own handler is installed (`serve`), a SIGHUP must not kill it, as
        # its default action would; the file is read at the start anyway.
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        for fd in (self._status_read, self._wakeup_read, self._wakeup_write):
            os.close(fd)
        self._reservation.close()
        if self._http_reservation is not None:
            self._http_reservation.close()
        if self._metrics is not None:
            self._metrics[1].close_in_child()

    def _read_status(self, ready: Callable[[int, int | None], None]) -> None:
        *lines, self._unread = (self._unread + _read_all(self._status_read, 65536)).split(b"\n")
        for line in lines:
            pid, _, message = line.decode(errors="replace").partition(" ")
            slot = self._slot_of(int(pid))
            if slot is None:
                continue
            if message != "ready":
                slot.reason = message.removeprefix("failed ")
                continue
            slot.listening, slot.failed_starts = True, 0
            logger.info("worker %d (pid %d) listening", slot.number, slot.pid)
            if self._starting and all(s.listening for s in self._slots):
                self._serving = True
                ready(self._settings.port, self._settings.http_port)

    def _reap(self) -> None:
        while True:
            try:
                pid, wait_status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            if self._metrics is not None:
                # Its live gauges must stop counting now, not when the others have exited too.
                self._metrics[0].process_dead(pid)
            if (slot := self._slot_of(pid)) is not None:
                self._ended(slot, os.waitstatus_to_exitcode(wait_status))

    def _ended(self, slot: _Slot, code: int) -> None:
        pid, listened, served = slot.pid, slot.listening, time.monotonic() - slot.started
        how = f"exit status {code}" if code >= 0 else f"killed by {signal.Signals(-code).name}"
        reason, who = slot.reason or how, f"worker {slot.number} (pid {pid})"
        slot.pid, slot.listening = 0, False
        if self._stop_signal is not None:
            # A worker killed by the signal it was sent, before it could handle it, stopped.
            if code not in (0, -self._stop_signal):
                logger.warning("%s ended (%s)", who, reason)
                self._exit_status = 1
            return
        if not self._serving:
            self._startup_failure = reason
            self._stop(signal.SIGINT)  # nobody was sent calls yet: nothing to drain
            return
        if not listened:
            slot.failed_starts += 1
            if slot.failed_starts >= START_ATTEMPTS:
                times = f"{slot.failed_starts} times in a row ({reason})"
                logger.error(
                    "worker %d could not start %s; stopping the server", slot.number, times
                )
                self._exit_status = 1
                self._stop(signal.SIGTERM)
                return
            again = f"trying again in {slot.backoff:.3g} s"
            logger.warning("%s could not start (%s); %s", who, reason, again)
        else:
            if served >= STABLE_AFTER:
                slot.backoff = FIRST_BACKOFF
            again = f"replacing it in {slot.backoff:.3g} s"
            logger.warning("%s died (%s) after %.0f s; %s", who, reason, served, again)
        slot.restart_at = time.monotonic() + slot.backoff
        slot.backoff = min(slot.backoff * 2, MAX_BACKOFF)

    def _stop(self, signum: int) -> None:
        """Stop every worker with `signum` (again, when already stopping: a SIGINT then cuts a
        drain short), and no longer replace any."""
        if self._stop_signal is None:
            self._stop_signal = signum
            self._kill_at = time.monotonic() + self._stop_budget()
            for slot in self._slots:
                slot.restart_at = None
        self._send(signum)

    def _send(self, signum: int) -> None:
        for slot in self._slots:
            if slot.pid:
                # A worker that has exited but is not reaped yet is not there to tell.
                with contextlib.suppress(ProcessLookupError):
                    os.kill(slot.pid, signum)

    def _on_time(self, now: float, ready_by: float) -> None:
        for slot in self._slots:
            if slot.restart_at is not None and now >= slot.restart_at:
                self._spawn(slot)
        if self._kill_at is not None and now >= self._kill_at:
            self._kill_at = None
            for slot in self._slots:
                if slot.pid:
                    logger.error(
                        "worker %d (pid %d) still runs %.3g s after it was told to stop "
                        "(drain delay + grace period + %.3g s); killing it",
                        slot.number,
                        slot.pid,
                        self._stop_budget(),
                        STOP_MARGIN,
                    )
                    self._exit_status = 1
            self._send(signal.SIGKILL)
        if self._starting and now >= ready_by:
            self._startup_failure = f"not every worker listened within {READY_TIMEOUT:.0f} s"
            self._stop(signal.SIGINT)

    def _stop_budget(self) -> float:
        drain = self._settings.drain_delay if self._stop_signal == signal.SIGTERM else 0.0
        return drain + self._settings.grace_period + STOP_MARGIN

    def _slot_of(self, pid: int) -> _Slot | None:
        return next((slot for slot in self._slots if slot.pid == pid), None)


def _wake(_signum: int, _frame: object) -> None:
    """A handler that does nothing: the wakeup fd carries the signal to the loop."""


def _read_all(fd: int, size: int) -> bytes:
    """What a non-blocking pipe holds now."""
    received = b""
    with contextlib.suppress(BlockingIOError):
        while chunk := os.read(fd, size):
            received += chunk
    return received


def _worker(settings: Settings, status_write: int, record_metrics: bool) -> int:
    def report(message: str) -> None:
        line = f"{os.getpid()} {message}".replace("\n", " ")[:2000] + "\n"
        os.write(status_write, line.encode())

    try:
        try:
            # libuv's event loop: about a tenth less CPU per proxied call (docs/performance.md).
            recorder = PrometheusRecorder() if record_metrics else None
            uvloop.run(serve(settings, lambda *_ports: report("ready"), recorder))
        finally:
            # Closing the loop put SIGHUP's default action (death) back; a reload sent now
            # must not turn a clean exit, or a failed start's reason, into "killed by SIGHUP".
            signal.signal(signal.SIGHUP, signal.SIG_IGN)
    except StartupError as exc:
        report(f"failed {exc}")
        return 1
    except Exception as exc:
        logger.exception("worker %d failed", os.getpid())
        report(f"failed {type(exc).__name__}: {exc}")
        return 1
    return 0
