"""The mock gateway served on a free loopback port inside an event loop someone else runs.

For a host process that owns its signals, such as the rerank server's embedded default:
unlike `python -m rerank.mock_gateway`, nothing here installs a signal handler, so the host's
SIGTERM handling is left alone. Requests still cross a real loopback socket, so the host's
HTTP client is exercised exactly as against the real gateway.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Iterator

import uvicorn

from ._app import create_app
from ._settings import MockSettings


class _HostOwnsSignals(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class LoopbackMockGateway:
    """`await start()` serves the mock on `host`:free-port; `await stop()` ends it."""

    def __init__(self, settings: MockSettings | None = None, *, host: str = "127.0.0.1") -> None:
        self._settings = settings or MockSettings()
        self._host = host
        self._server: uvicorn.Server | None = None
        self._task: asyncio.Task[None] | None = None
        self.url = ""

    async def start(self) -> str:
        """Serve, and return the base URL (`http://HOST:PORT/v3/ai`) once accepting."""
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind((self._host, 0))
        config = uvicorn.Config(
            create_app(self._settings),
            http="h11",
            lifespan="off",
            log_level="warning",
            access_log=False,
            timeout_graceful_shutdown=1,
        )
        server = _HostOwnsSignals(config)
        self._server = server
        self._task = asyncio.create_task(server.serve(sockets=[sock]))
        while not server.started:
            if self._task.done():  # start-up failed; surface why
                await self._task
                raise RuntimeError("the embedded mock gateway did not start")
            await asyncio.sleep(0.005)
        self.url = f"http://{self._host}:{sock.getsockname()[1]}/v3/ai"
        return self.url

    async def stop(self) -> None:
        """Stop accepting, let answers in progress end (at most 1 s), and close."""
        if self._server is not None and self._task is not None:
            self._server.should_exit = True
            await self._task
