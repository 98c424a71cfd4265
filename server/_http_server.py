"""The HTTP port's server: uvicorn (with httptools) on the worker's event loop, beside grpc.aio,
on a SO_REUSEPORT socket (`_listening.reserve_port`), and a guard in front of uvicorn's protocol.

Why uvicorn: of the ASGI servers that can serve on the worker's one loop from a socket we bind
(SO_REUSEPORT, shared by the workers), it costs the least CPU per request: measured with one
keep-alive client of 32 connections posting a 20-document Cohere body to a trivial app, server
CPU per request was 171-178 µs for uvicorn with httptools, 329 µs with h11, 445-472 µs for
hypercorn; granian's embedded server took 127-140 µs but binds its own socket (no
SO_REUSEPORT for our workers, nor a socket handed to it) and says it is experimental.

What uvicorn lacks, the guard adds (`HeaderGuard`): uvicorn never closes a connection that stalls in
its headers, nor a new idle one, and answers headers of any size (64 KiB: 200). The guard
wraps uvicorn's protocol (composition, not a subclass): it closes a connection whose request
headers are not complete within the header timeout (uvicorn's own keep-alive timeout closes one
left idle after an answer), and answers 431 to headers over 16 KiB without handing them on.
The door (`rerank.server._http_door`) tells it when a request's answer is complete, so that it
times the next request's headers. Connections are found by their peer's address, which
identifies one connection of a listener at a time.
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


class Connections:
    """The connections of one HTTP server, by their peer's `host:port`."""

    def __init__(self) -> None:
        self._by_peer: dict[str, HeaderGuard] = {}

    def get(self, peer: str | None) -> HeaderGuard | None:
        return None if peer is None else self._by_peer.get(peer)

    def add(self, peer: str, guard: HeaderGuard) -> None:
        self._by_peer[peer] = guard

    def remove(self, peer: str, guard: HeaderGuard) -> None:
        if self._by_peer.get(peer) is guard:
            del self._by_peer[peer]


class HeaderGuard(asyncio.Protocol):
    """uvicorn's protocol for one connection, behind the header deadline and size limit."""

    def __init__(self, inner: Any, connections: Connections, timeout: float) -> None:
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
        self._connections.add(self._peer, self)
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
        self._connections.remove(self._peer, self)
        self._inner.connection_lost(exc)

    def eof_received(self) -> bool | None:
        result: bool | None = self._inner.eof_received()
        return result

    def pause_writing(self) -> None:
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._inner.resume_writing()


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
