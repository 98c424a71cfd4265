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
from ._versions import PROTOCOL_V3, PROTOCOL_V4, ProtocolVersion


class _HostOwnsSignals(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class LoopbackMockGateway:
    """`await start()` serves the mock on `host`:free-port; `await stop()` ends it.

    Both protocol versions are served on that port; `protocol` only chooses which base URL
    `start()` returns and `url` names. It is v3 unless told otherwise because that is what the
    rerank server's embedded default has always been handed; `v3_url` and `v4_url` name both.
    """

    def __init__(
        self,
        settings: MockSettings | None = None,
        *,
        host: str = "127.0.0.1",
        protocol: ProtocolVersion = PROTOCOL_V3,
    ) -> None:
        self._settings = settings or MockSettings()
        self._host = host
        self._protocol = protocol
        self._server: uvicorn.Server | None = None
        self._task: asyncio.Task[None] | None = None
        self.url = ""
        """The base URL of `protocol` (empty until started)."""
        self.v3_url = ""
        """`http://HOST:PORT/v3/ai` (empty until started)."""
        self.v4_url = ""
        """`http://HOST:PORT/v4/ai` (empty until started)."""

    async def start(self) -> str:
        """Serve, and return the base URL of `protocol` (`http://HOST:PORT/v3/ai` by default)
        once accepting."""
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
        port = sock.getsockname()[1]
        self.url = self._protocol.base_url(self._host, port)
        self.v3_url = PROTOCOL_V3.base_url(self._host, port)
        self.v4_url = PROTOCOL_V4.base_url(self._host, port)
        return self.url

    async def stop(self) -> None:
        """Stop accepting, let answers in progress end (at most 1 s), and close."""
        if self._server is not None and self._task is not None:
            self._server.should_exit = True
            await self._task
