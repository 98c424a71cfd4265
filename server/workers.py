"""`--workers N`: N server processes sharing one port through SO_REUSEPORT.

The kernel spreads incoming connections across the workers' listening sockets, so N
processes use N cores with no proxy in between. Workers are forked before any of them
starts a gRPC server (gRPC does not survive a fork once its core is running). The parent
only supervises: it reserves the port (so `--port 0` resolves once, for all), waits until
every worker listens, prints the one ready line, forwards SIGTERM/SIGINT, and exits when
they have, with a failure status if any worker failed. With metrics on, it also serves
`/metrics` over the files every worker writes (`rerank.server.metrics`), and when a worker
exits it drops that worker's live gauges.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import selectors
import signal
import socket
import time
from collections.abc import Callable
from pathlib import Path

from rerank.server.app import RunningServer, StartupError, serve
from rerank.server.config import Settings
from rerank.server.metrics import MetricsDirectory, MetricsEndpoint

logger = logging.getLogger(__name__)

READY_TIMEOUT = 60.0


def reserve_port(host: str, port: int) -> socket.socket:
    """A bound, non-listening SO_REUSEPORT socket holding `host:port` for the workers."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    return sock


def run_workers(
    settings: Settings,
    workers: int,
    ready: Callable[[int], None],
    metrics: tuple[MetricsDirectory, MetricsEndpoint] | None = None,
) -> int:
    """Fork `workers` servers on one port; return the exit status for the whole group.

    `metrics`: the directory the workers record into and the endpoint (bound, not yet serving)
    this process serves it from once the workers are forked."""
    try:
        reservation = reserve_port(settings.host, settings.port)
    except OSError as exc:
        raise StartupError(
            f"cannot serve on {settings.host}:{settings.port}: {exc.strerror}"
        ) from exc
    settings = dataclasses.replace(settings, port=reservation.getsockname()[1])
    ready_read, ready_write = os.pipe()
    children: list[int] = []
    for _ in range(workers):
        pid = os.fork()
        if pid == 0:  # the worker
            os.close(ready_read)
            reservation.close()
            directory = None
            if metrics is not None:
                metrics[1].close_in_child()
                directory = metrics[0].path
            os._exit(_worker(settings, ready_write, directory))
        children.append(pid)
    os.close(ready_write)
    # Threads only now: forking a process that runs threads is asking for a held lock.
    if metrics is not None:
        metrics[1].start()

    def forward(signum: int, _frame: object) -> None:
        for child in children:
            # A worker that has already exited is not there to tell.
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    if _wait_ready(ready_read, workers):
        ready(settings.port)
    else:
        logger.error("not every worker started within %.0f s; stopping", READY_TIMEOUT)
        forward(signal.SIGTERM, None)
    os.close(ready_read)
    status = 0
    for _ in children:
        # Whichever exits first: its live gauges must stop counting now, not when the workers
        # started before it have exited too.
        child, code = os.wait()
        if metrics is not None:
            metrics[0].process_dead(child)
        status = status or os.waitstatus_to_exitcode(code)
    reservation.close()
    return status


def _worker(settings: Settings, ready_write: int, metrics_directory: Path | None) -> int:
    def listening(_running: RunningServer) -> None:
        os.write(ready_write, b".")
        os.close(ready_write)

    try:
        asyncio.run(serve(settings, listening, metrics_directory))
    except StartupError as exc:
        logger.error("%s", exc)
        return 1
    except Exception:
        logger.exception("worker %d failed", os.getpid())
        return 1
    return 0


def _wait_ready(ready_read: int, workers: int) -> bool:
    """True once every worker reported listening; False on a timeout or a dead worker."""
    deadline = time.monotonic() + READY_TIMEOUT
    seen = 0
    with selectors.DefaultSelector() as selector:
        selector.register(ready_read, selectors.EVENT_READ)
        while seen < workers:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not selector.select(remaining):
                return False
            chunk = os.read(ready_read, workers)
            if not chunk:  # every worker closed its end: some died before listening
                return False
            seen += len(chunk)
    return True
