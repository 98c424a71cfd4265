"""A real HTTP/1.1 server on a loopback port whose every answer a test scripts.

It records each request byte for byte and answers as the test's handler says: a response, or
a failure only a real socket can show — closing without a word, a reset, a body cut short, or
never answering (and noticing when the client gives up). The gateway adapter is tested against
it over real sockets.
"""

from __future__ import annotations

import asyncio
import socket
import struct
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass(frozen=True)
class Reply:
    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=lambda: {"content-type": "application/json"})


class Fail:
    """What to do instead of answering."""

    CLOSE = "close"  # close the connection without a response
    RESET = "reset"  # abort it with a TCP reset
    CUT = "cut"  # send the headers and half the body, then close
    HANG = "hang"  # never answer; note when the client goes away


Handler = Callable[[Request], Awaitable[Reply | str]]


class ScriptedServer:
    """`async with ScriptedServer(handler) as server:` ... `server.url`, `server.requests`.

    `server.origin` is `http://127.0.0.1:PORT`; `server.url` a gateway base URL on it
    (`/v3/ai`); any path is answered by the handler.
    """

    def __init__(self, handler: Handler) -> None:
        self._handler = handler
        self.requests: list[Request] = []
        self.client_went_away = asyncio.Event()
        self.request_arrived = asyncio.Event()
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self.connections = 0
        self.origin = ""
        self.url = ""

    async def __aenter__(self) -> ScriptedServer:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        self.origin = f"http://127.0.0.1:{port}"
        self.url = f"{self.origin}/v3/ai"
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        assert self._server is not None
        self._server.close()
        for writer in self._writers:
            writer.close()
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        self.connections += 1
        try:
            while (request := await _read_request(reader)) is not None:
                self.requests.append(request)
                self.request_arrived.set()
                outcome = await self._handler(request)
                if isinstance(outcome, Reply):
                    writer.write(_response_bytes(outcome))
                    await writer.drain()
                    continue
                await self._fail(outcome, reader, writer)
                return
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self._writers.discard(writer)
            writer.close()

    async def _fail(
        self, how: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        if how == Fail.RESET:
            sock = writer.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        elif how == Fail.CUT:
            whole = _response_bytes(Reply(body=b'{"ranking":[{"index":0,"relevanceScore":0.5}]}'))
            writer.write(whole[:-20])
            await writer.drain()
        elif how == Fail.HANG:
            await reader.read()  # returns when the client closes its end
            self.client_went_away.set()


async def _read_request(reader: asyncio.StreamReader) -> Request | None:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError:
        return None
    lines = head.decode("latin-1").split("\r\n")
    method, path, _ = lines[0].split(" ", 2)
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    body = await reader.readexactly(int(headers.get("content-length", "0")))
    return Request(method, path, headers, body)


def _response_bytes(reply: Reply) -> bytes:
    headers = {**reply.headers, "content-length": str(len(reply.body))}
    head = f"HTTP/1.1 {reply.status} X\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    return head.encode() + b"\r\n" + reply.body
