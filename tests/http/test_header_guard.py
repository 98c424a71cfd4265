"""The guard in front of uvicorn's protocol, on its own: what it hands on, when it answers 431,
when it closes; with the bytes split as a network may split them."""

from __future__ import annotations

import asyncio
from typing import Any

from rerank.server._http_server import MAX_HEADER_BYTES, Connections, HeaderGuard

HEAD = b"POST /v2/rerank HTTP/1.1\r\nhost: x\r\nx-pad: " + b"a" * (MAX_HEADER_BYTES - 100)


class Inner(asyncio.Protocol):
    """What the guard wraps: it keeps what it is handed."""

    def __init__(self) -> None:
        self.received = b""
        self.lost = False

    def data_received(self, data: bytes) -> None:
        self.received += data

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True


class Transport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.written = b""
        self.closed = asyncio.Event()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 40000) if name == "peername" else default

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.written += bytes(data)

    def close(self) -> None:
        self.closed.set()


def guarded(timeout: float = 60) -> tuple[HeaderGuard, Inner, Transport, Connections]:
    inner, transport, connections = Inner(), Transport(), Connections()
    guard = HeaderGuard(inner, connections, timeout)
    guard.connection_made(transport)
    return guard, inner, transport, connections


async def test_an_end_of_headers_split_across_reads_is_found() -> None:
    guard, inner, transport, connections = guarded()
    body = b"b" * (2 * MAX_HEADER_BYTES)
    for part in (HEAD + b"\r\n\r", b"\n" + body):
        guard.data_received(part)
    assert inner.received == HEAD + b"\r\n\r\n" + body
    assert not transport.closed.is_set()
    assert connections.get("127.0.0.1:40000") is guard


async def test_headers_over_the_limit_are_431_and_not_handed_on() -> None:
    guard, inner, transport, _ = guarded()
    guard.data_received(HEAD)
    guard.data_received(b"b" * 200)
    assert transport.written.startswith(b"HTTP/1.1 431 ")
    assert transport.closed.is_set()
    assert inner.received == HEAD  # the part under the limit, nothing after it


async def test_the_next_requests_headers_are_counted_afresh() -> None:
    guard, inner, transport, _ = guarded()
    guard.data_received(HEAD + b"\r\n\r\n")
    guard.answered()
    guard.data_received(HEAD + b"\r\n\r\n")
    assert not transport.closed.is_set()
    assert inner.received == (HEAD + b"\r\n\r\n") * 2


async def test_headers_not_complete_in_time_close_the_connection() -> None:
    guard, _, transport, connections = guarded(timeout=0.05)
    guard.data_received(b"GET / HTTP/1.1\r\n")
    async with asyncio.timeout(5):
        await transport.closed.wait()
    guard.connection_lost(None)
    assert connections.get("127.0.0.1:40000") is None
