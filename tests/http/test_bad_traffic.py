"""Bad traffic on the HTTP port, through raw sockets: each case answered (or the connection
closed) as documented, and the server still answering afterwards."""

from __future__ import annotations

import asyncio
import time

import pytest

from rerank.server._app import RunningServer
from tests.http.conftest import HEADER_TIMEOUT
from tests.service.conftest import StartServer

#: How long a test waits for the server's answer or close: well past the header timeout.
WAIT = 10 * HEADER_TIMEOUT + 5


async def exchange(running: RunningServer, sent: bytes) -> tuple[bytes, float]:
    """Send `sent` on a new connection and read until the server closes it: what came back,
    and after how many seconds."""
    assert running.http is not None
    # Timed from before the connection: the server's timer starts when it accepts it.
    began = time.monotonic()
    reader, writer = await asyncio.open_connection("127.0.0.1", running.http.port)
    try:
        writer.write(sent)
        await writer.drain()
        async with asyncio.timeout(WAIT):
            received = await reader.read(-1)
        return received, time.monotonic() - began
    finally:
        writer.close()
        await writer.wait_closed()


def status_of(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1])


def post(
    path: str, body: bytes, content_type: bytes = b"application/json", **extra: bytes
) -> bytes:
    headers = b"".join(b"%s: %s\r\n" % (k.replace("_", "-").encode(), v) for k, v in extra.items())
    return (
        b"POST %s HTTP/1.1\r\nhost: x\r\ncontent-type: %s\r\ncontent-length: %d\r\n"
        b"connection: close\r\n%s\r\n%s" % (path.encode(), content_type, len(body), headers, body)
    )


async def still_up(running: RunningServer) -> None:
    answer, _ = await exchange(
        running, b"GET /healthz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n"
    )
    assert status_of(answer) == 200


@pytest.mark.parametrize(
    ("request_bytes", "status", "said"),
    [
        (post("/nowhere", b"{}"), 404, b"no such route"),
        (b"GET /v2/rerank HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n", 405, b"only POST"),
        (post("/v2/rerank", b"{}", b"text/plain"), 415, b"text/plain"),
        (post("/rerank.v1.RerankService/Rerank", b"", b"application/grpc"), 415, b"gRPC port"),
    ],
    ids=["404", "405", "415", "415-grpc"],
)
async def test_what_no_dialect_answers_is_refused_by_status(
    serve: StartServer, request_bytes: bytes, status: int, said: bytes
) -> None:
    running = await serve()
    answer, _ = await exchange(running, request_bytes)
    assert status_of(answer) == status
    assert said in answer
    if status == 405:
        assert b"allow: POST" in answer
    await still_up(running)


async def test_a_body_declared_over_the_limit_is_413_before_it_is_sent(serve: StartServer) -> None:
    running = await serve()
    head = (
        b"POST /v2/rerank HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
        b"content-length: %d\r\n\r\n" % (64 * 1024 * 1024 + 1)
    )
    answer, seconds = await exchange(running, head)  # no byte of the body is sent
    assert status_of(answer) == 413
    assert b"limit of 67108864 bytes" in answer
    assert seconds < HEADER_TIMEOUT  # answered at once, not after waiting for the body
    await still_up(running)


async def test_a_stalled_body_is_408(serve: StartServer) -> None:
    running = await serve()
    head = (
        b"POST /v2/rerank HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
        b'content-length: 100\r\n\r\n{"query":'
    )
    answer, seconds = await exchange(running, head)
    assert status_of(answer) == 408
    assert b"stalled" in answer
    assert seconds >= HEADER_TIMEOUT
    await still_up(running)


async def test_headers_over_16_kib_are_431(serve: StartServer) -> None:
    running = await serve()
    big = b"GET /healthz HTTP/1.1\r\nhost: x\r\nx-big: " + b"a" * (17 * 1024) + b"\r\n\r\n"
    answer, _ = await exchange(running, big)
    assert status_of(answer) == 431
    # Headers under the limit are answered, however much body follows them.
    fine = b"GET /healthz HTTP/1.1\r\nhost: x\r\nconnection: close\r\nx-big: " + b"a" * (15 * 1024)
    answer, _ = await exchange(running, fine + b"\r\n\r\n" + b"b" * (64 * 1024))
    assert status_of(answer) == 200
    await still_up(running)


@pytest.mark.parametrize(
    "sent",
    [b"", b"POST /v2/rerank HTTP/1.1\r\nhost: x\r\n"],
    ids=["idle", "stalled-headers"],
)
async def test_a_connection_without_complete_headers_is_closed_after_the_timeout(
    serve: StartServer, sent: bytes
) -> None:
    running = await serve()
    answer, seconds = await exchange(running, sent)
    assert answer == b""
    assert HEADER_TIMEOUT <= seconds < WAIT
    await still_up(running)


async def test_the_next_request_on_a_kept_connection_is_timed_too(serve: StartServer) -> None:
    running = await serve()
    assert running.http is not None
    reader, writer = await asyncio.open_connection("127.0.0.1", running.http.port)
    try:
        for path in (b"/healthz", b"/nowhere"):  # answered by the door, and refused
            writer.write(b"GET %s HTTP/1.1\r\nhost: x\r\n\r\n" % path)
            head = await reader.readuntil(b"\r\n\r\n")
            length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
            await reader.readexactly(length)
        # The next request's headers begin after the answer (uvicorn's own keep-alive timer is
        # then off), and never end: the door's guard closes the connection, the timeout after
        # the last answer.
        writer.write(b"GET /healthz HTTP/1.1\r\n")
        async with asyncio.timeout(WAIT):
            received = await reader.read(-1)
        assert received == b""
    finally:
        writer.close()
        await writer.wait_closed()
    await still_up(running)
