"""The HTTP port's server: uvicorn (with httptools) on the worker's event loop, beside grpc.aio,
on a SO_REUSEPORT socket (`_listening.reserve_port`), behind a guard.

Why uvicorn: of the ASGI servers that serve on our loop from a socket we bind, it costs the
least CPU per request (a 20-document Cohere body over 32 keep-alive connections: 171-178 µs;
with h11 329 µs, hypercorn 445-472 µs; granian's 127-140 µs binds its own socket, which our
workers cannot share, and calls itself experimental).

What uvicorn lacks, the guard (`HeaderGuard`, wrapping its protocol) adds: it closes a connection
whose request headers are not complete within the header timeout (uvicorn closes one idle after
an answer, never one stalled in its headers), and answers 431 to headers over 16 KiB without
handing them on. The door tells it when an answer is complete, so that it times the next
request's headers; it finds the guard by the peer's address, unique among a listener's
connections.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
from collections.abc import Callable
from typing import Any, cast

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from rerank.server._config import Settings

logger = logging.getLogger(__name__)

#: Request headers larger than this are answered 431 (as Node and most proxies do).
MAX_HEADER_BYTES = 16 * 1024
_HEADERS_END = b"\r\n\r\n"
_TOO_LARGE_BODY = b'{"code":"resource_exhausted","message":"request headers over 16 KiB"}'
_TOO_LARGE = (
    b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: application/json\r\n"
    b"content-length: %d\r\nconnection: close\r\n\r\n%s" % (len(_TOO_LARGE_BODY), _TOO_LARGE_BODY)
)


class HeaderGuard(asyncio.Protocol):
    """uvicorn's protocol for one connection, behind the header deadline and size limit."""

    def __init__(self, inner: asyncio.Protocol, connections: Connections, timeout: float) -> None:
        self._inner = inner
        self._connections = connections
        self._timeout = timeout
        self._transport: asyncio.Transport | None = None
        self._peer = ""
        #: Header bytes seen since the request began (None: its headers are complete).
        self._seen: int | None = 0
        self._tail = b""
        self._timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A stream transport (uvloop's is one without subclassing asyncio.Transport).
        self._transport = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername")
        self._peer = f"{peer[0]}:{peer[1]}" if peer else ""
        self._connections[self._peer] = self
        self._arm()
        self._inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        if self._seen is not None:
            found = (self._tail + data).find(_HEADERS_END)
            if found >= 0 and self._seen - len(self._tail) + found <= MAX_HEADER_BYTES:
                self._seen = None
                self._disarm()
            else:
                self._seen += len(data)
                self._tail = (self._tail + data)[-3:]
                if self._seen > MAX_HEADER_BYTES:
                    self._refuse()
                    return
        self._inner.data_received(data)

    def answered(self) -> None:
        """The door answered the request in full: the next one's headers are timed."""
        self._seen, self._tail = 0, b""
        self._arm()

    def _refuse(self) -> None:
        assert self._transport is not None
        logger.info(
            "HTTP request from %s refused: headers over %d bytes", self._peer, MAX_HEADER_BYTES
        )
        self._disarm()
        self._transport.write(_TOO_LARGE)
        self._transport.close()

    def _arm(self) -> None:
        self._disarm()
        self._timer = asyncio.get_running_loop().call_later(self._timeout, self._expire)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _expire(self) -> None:
        self._timer = None
        if self._seen is not None and self._transport is not None:
            self._transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        if self._connections.get(self._peer) is self:
            del self._connections[self._peer]
        self._inner.connection_lost(exc)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received()

    def pause_writing(self) -> None:
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._inner.resume_writing()


#: The guards of one HTTP server's connections, by their peer's `host:port`.
Connections = dict[str | None, HeaderGuard]


class HttpServer:
    """uvicorn serving `app` on `sock`, without its signal handling (the worker's own)."""

    def __init__(
        self,
        app: Callable[..., Any],
        settings: Settings,
        sock: socket.socket,
        connections: Connections,
    ) -> None:
        timeout = settings.http_header_timeout

        def guarded(**kwargs: Any) -> HeaderGuard:
            return HeaderGuard(HttpToolsProtocol(**kwargs), connections, timeout)

        client_ca = settings.tls_client_ca_file
        config = uvicorn.Config(
            app,
            http=guarded,  # type: ignore[arg-type]  # a protocol factory, as uvicorn calls it
            lifespan="off",
            access_log=False,  # the pipeline writes the access log
            log_config=None,
            server_header=False,
            timeout_keep_alive=max(1, round(timeout)),
            timeout_graceful_shutdown=max(1, round(settings.grace_period)),
            ssl_certfile=settings.tls_cert_file,
            ssl_keyfile=settings.tls_key_file,
            ssl_ca_certs=client_ca,
            ssl_cert_reqs=ssl.CERT_REQUIRED if client_ca else ssl.CERT_NONE,
        )
        self._server = uvicorn.Server(config)
        self._sock = sock
        self.port: int = sock.getsockname()[1]
        self._ticks: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._server.config.load()
        self._server.lifespan = self._server.config.lifespan_class(self._server.config)
        await self._server.startup(sockets=[self._sock])
        # The date header, refreshed once a second.
        self._ticks = asyncio.create_task(self._server.main_loop())

    async def stop(self) -> None:
        """Stop listening; answer the requests in flight (within the grace period), then close
        every connection."""
        self._server.should_exit = True
        if self._ticks is not None:
            await self._ticks
        await self._server.shutdown()
        self._sock.close()
