"""The HTTP ends of the call pipeline: one ASGI app for Connect, gRPC-Web and the Cohere API.

In front of every dialect, before a byte of the body is read: the route (404), the method
(405), CORS, the content type (415; `application/grpc` names the gRPC port), the declared size
(413), a place among the calls in flight (429, as gRPC's RESOURCE_EXHAUSTED). Then the body,
each part within the header timeout (408 when it stalls), then the dialect:

- Connect and gRPC-Web (`POST /rerank.v1.RerankService/<Method>`) through connectrpc's ASGI app
  (`rerank.v1.rerank_service_connect`), whose service hands each call to the pipeline; connectrpc
  hands it only the headers and the client's address, so the door finds what it noted of the
  call by that address (one request at a time per HTTP/1.1 connection);
- Cohere's `POST /v1/rerank` and `/v2/rerank` (`rerank.server._http_cohere`);
- the AI Gateway's own `/v3/ai` and `/v4/ai` routes (`rerank.server._http_gateway`).

Each call gets its request id (`x-request-id`, sent back), its caller by bearer token only
(ASGI servers do not hand over the client certificate), its trace, span and access-log line,
and the gRFC A66 metrics with the route as `grpc_method` (`/v2/rerank`), apart from gRPC's.
Errors come from the one table (`rerank.server._status`), written as each dialect writes them
(Connect's with gRPC's ErrorInfo/BadRequest/RetryInfo details).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import grpc
import orjson
from connectrpc.request import RequestContext

from rerank.server._admission import CallPlaces
from rerank.server._calls import CallRecord
from rerank.server._config import Settings
from rerank.server._errors import RerankError
from rerank.server._http_cohere import cohere_call
from rerank.server._http_connect import ConnectService, connect_code, connect_error
from rerank.server._http_gateway import GATEWAY_ROUTES, JsonCall, gateway_call, gateway_refusal
from rerank.server._http_server import Connections, HttpServer
from rerank.server._listening import StartupError, refuse_taken_port, reserve_port
from rerank.server._metrics import OTHER, GrpcMethodMetrics, Metrics
from rerank.server._pipeline import Handler, Pipeline
from rerank.server._status import ErrorAnswer, error_answer, log_failure, retry_after_header
from rerank.server._tracing import TRACE_CONTEXT_KEYS
from rerank.v1.rerank_service_connect import RerankServiceASGIApplication

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

SERVICE = "rerank.v1.RerankService"
COHERE_ROUTES = {"/v1/rerank": 1, "/v2/rerank": 2}
HEALTH_ROUTES = ("/healthz", "/readyz")
_CONNECT_TYPES = (
    b"application/json",
    b"application/proto",
    b"application/grpc-web",
    b"application/grpc-web+proto",
    b"application/grpc-web+json",
)
#: What a browser may read of an answer: the request id, Connect's and gRPC-Web's headers.
_EXPOSED = (
    b"x-request-id, retry-after, grpc-status, grpc-message, grpc-status-details-bin, "
    b"connect-protocol-version, connect-content-encoding"
)


class _NoCertificate:
    """The peer of an HTTP call: ASGI servers do not hand over the client certificate."""

    @staticmethod
    def auth_context() -> Mapping[str, Iterable[bytes]]:
        return {}


_PEER = _NoCertificate()


@dataclass(slots=True)
class _Exchange:
    """One HTTP call at the door: its record, what travelled beside the body, its outcome."""

    call: CallRecord
    authorization: bytes | None = None
    trace: dict[str, str] | None = None
    code: grpc.StatusCode = grpc.StatusCode.OK
    received: int = 0
    sent: int = 0
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)


class _Refusal(Exception):
    """A request answered before its dialect: an HTTP status, a code, and why."""

    def __init__(
        self, status: int, code: grpc.StatusCode, message: str, *headers: tuple[bytes, bytes]
    ) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers


class HttpDoor:
    """The ASGI app of the HTTP port, over the same pipeline and methods as the gRPC door."""

    def __init__(
        self,
        pipeline: Pipeline,
        methods: Mapping[str, Handler],
        metrics: Metrics,
        connections: Connections,
        *,
        limit: int,
        max_body: int,
        body_timeout: float,
        cors_origins: frozenset[str],
        grpc_port: int,
    ) -> None:
        self._pipeline = pipeline
        self._methods = methods
        self._connections = connections
        self._places = CallPlaces(limit)
        self._max_body = max_body
        self._too_large = f"the body is larger than the server's limit of {max_body} bytes"
        self._body_timeout = body_timeout
        self._origins = cors_origins
        self._grpc_port = grpc_port
        self._cohere = {v: cohere_call(v, methods["Rerank"]) for v in (1, 2)}
        self._exchanges: dict[str | None, _Exchange] = {}
        self.serving = True
        self._connect = RerankServiceASGIApplication(ConnectService(self), read_max_bytes=None)
        routes = [*COHERE_ROUTES, *GATEWAY_ROUTES, *(f"/{SERVICE}/{m}" for m in methods), OTHER]
        self._metrics: dict[str, GrpcMethodMetrics] | None = (
            {route: metrics.grpc_method(route) for route in routes} if metrics.enabled else None
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        client = scope.get("client")
        peer = f"{client[0]}:{client[1]}" if client else None
        try:
            await self._serve(scope, receive, send, peer)
        finally:
            if (guard := self._connections.get(peer)) is not None:
                guard.answered()

    async def _serve(self, scope: Scope, receive: Receive, send: Send, peer: str | None) -> None:
        path: str = scope["path"]
        headers = dict(scope["headers"])
        origin = headers.get(b"origin")
        allowed = origin is not None and ("*" in self._origins or origin.decode() in self._origins)
        if path in HEALTH_ROUTES and scope["method"] in ("GET", "HEAD"):
            ready = path == "/healthz" or self.serving
            await _write(send, 200 if ready else 503, [], b"ok" if ready else b"not serving")
            return
        version = COHERE_ROUTES.get(path)
        name = path.removeprefix(f"/{SERVICE}/") if path.startswith(f"/{SERVICE}/") else None
        gateway = GATEWAY_ROUTES.get(path)
        known = version is not None or name in self._methods or gateway is not None
        if scope["method"] == "OPTIONS" and known and b"access-control-request-method" in headers:
            await self._preflight(send, origin if allowed else None, headers)
            return
        began = time.perf_counter()
        request_id = headers.get(b"x-request-id")
        exchange = _Exchange(
            Pipeline.arrive(None if request_id is None else request_id.decode("latin-1"), None),
            headers.get(b"authorization"),
            {k.decode(): v.decode("latin-1") for k, v in headers.items() if k in _TRACE_KEYS}
            or None,
        )
        exchange.headers.append((b"x-request-id", exchange.call.request_id.encode()))
        if allowed:
            assert origin is not None
            exchange.headers += [
                (b"access-control-allow-origin", origin),
                (b"access-control-expose-headers", _EXPOSED),
                (b"vary", b"origin"),
            ]
        route = path if known else OTHER
        metrics = None if self._metrics is None else self._metrics[route]
        if metrics is not None:
            metrics.started.inc()
        try:
            self._check(scope["method"], known, headers, version or gateway)
            if (refused := self._places.take()) is not None:
                log_failure("HTTP call", grpc.StatusCode.RESOURCE_EXHAUSTED, refused)
                retry = retry_after_header(refused)
                raise _Refusal(429, grpc.StatusCode.RESOURCE_EXHAUSTED, refused.message, *retry)
            try:
                body = await self._body(receive)
                exchange.received = len(body)
                if version is not None:
                    await self._answer_json(self._cohere[version], body, exchange, send)
                elif gateway is not None:
                    call = gateway_call(gateway, headers, self._methods)
                    await self._answer_json(call, body, exchange, send)
                else:
                    self._exchanges[peer] = exchange
                    try:
                        await self._connect(scope, _replay(body, receive), _adding(send, exchange))
                    finally:
                        self._exchanges.pop(peer, None)
            finally:
                self._places.give()
        except _Refusal as refusal:
            exchange.code = refusal.code
            if refusal.code is grpc.StatusCode.CANCELLED:
                return  # nobody to answer
            extra = [(b"connection", b"close")] if refusal.status in (408, 413) else []
            body = orjson.dumps({"code": connect_code(refusal.code), "message": refusal.message})
            if gateway is not None:
                body = gateway_refusal(refusal.status, refusal.message)
            await _write(send, refusal.status, [*exchange.headers, *refusal.headers, *extra], body)
        finally:
            if metrics is not None:
                seconds = time.perf_counter() - began
                metrics.ended(exchange.code, seconds, exchange.received, exchange.sent)

    def _check(self, method: str, known: bool, headers: dict[bytes, bytes], json: Any) -> None:
        """Refuse what no dialect here can answer, from the request line and headers alone."""
        wanted = getattr(json, "http_method", "POST")  # a gateway route's own, else POST
        if not known:
            raise _Refusal(404, grpc.StatusCode.UNIMPLEMENTED, "no such route")
        if method != wanted:
            refused = f"only {wanted}"
            raise _Refusal(405, grpc.StatusCode.UNIMPLEMENTED, refused, (b"allow", wanted.encode()))
        if method == "GET":
            return
        kind = headers.get(b"content-type", b"").partition(b";")[0].strip().lower()
        if kind.startswith(b"application/grpc") and not kind.startswith(b"application/grpc-web"):
            raise _Refusal(
                415,
                grpc.StatusCode.INVALID_ARGUMENT,
                f"gRPC is served on the gRPC port ({self._grpc_port}), not this HTTP port",
            )
        if kind not in ((b"application/json",) if json else _CONNECT_TYPES):
            raise _Refusal(
                415, grpc.StatusCode.INVALID_ARGUMENT, f"unsupported content type {kind.decode()!r}"
            )
        length = headers.get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self._max_body:
            raise _Refusal(413, grpc.StatusCode.RESOURCE_EXHAUSTED, self._too_large)

    async def _body(self, receive: Receive) -> bytes:
        """The request's body; 408 when none of it arrives for the timeout, 413 over the limit."""
        chunks: list[bytes] = []
        size = 0
        while True:
            try:
                async with asyncio.timeout(self._body_timeout):
                    message = await receive()
            except TimeoutError:
                raise _Refusal(
                    408, grpc.StatusCode.DEADLINE_EXCEEDED, "the request's body stalled"
                ) from None
            if message["type"] == "http.disconnect":
                raise _Refusal(499, grpc.StatusCode.CANCELLED, "the caller went away")
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self._max_body:
                raise _Refusal(413, grpc.StatusCode.RESOURCE_EXHAUSTED, self._too_large)
            chunks.append(chunk)
            if not message.get("more_body"):
                return b"".join(chunks)

    async def _answer_json(
        self, dialect: JsonCall, body: bytes, exchange: _Exchange, send: Send
    ) -> None:
        call = exchange.call
        answer = await self._pipeline.answer(
            f"{SERVICE}/{dialect.method}",
            dialect.handler,
            call,
            body,
            exchange.authorization,
            _PEER,
            exchange.trace,
        )
        if not isinstance(answer, RerankError | ErrorAnswer):
            data = dialect.answer(answer, call)
            exchange.sent = len(data)
            await _write(send, 200, exchange.headers, data)
            return
        failed = answer if isinstance(answer, ErrorAnswer) else error_answer(answer)
        exchange.code = failed.code
        error = answer if isinstance(answer, RerankError) else None
        status, headers, data = dialect.error(error, failed.code, failed.message)
        await _write(send, status, [*exchange.headers, *headers], data)

    async def _preflight(
        self, send: Send, origin: bytes | None, headers: dict[bytes, bytes]
    ) -> None:
        if origin is None:
            await _write(send, 403, [], orjson.dumps({"message": "origin not allowed"}))
            return
        asked = headers.get(b"access-control-request-headers", b"")
        allow = [
            (b"access-control-allow-origin", origin),
            (b"access-control-allow-methods", b"GET, POST"),
            (b"access-control-allow-headers", asked),
            (b"access-control-max-age", b"7200"),
            (b"vary", b"origin"),
        ]
        await _write(send, 204, allow, b"")

    async def connect_call(self, name: str, request: Any, ctx: RequestContext[Any, Any]) -> Any:
        """A Connect or gRPC-Web call to `name`, through the pipeline."""
        exchange = self._exchanges[ctx.client_address]
        call = exchange.call
        if (milliseconds := ctx.timeout_ms) is not None:
            call.deadline = time.monotonic() + milliseconds / 1000
        answer = await self._pipeline.answer(
            f"{SERVICE}/{name}",
            self._methods[name],
            call,
            request.SerializeToString(),
            exchange.authorization,
            _PEER,
            exchange.trace,
        )
        if not isinstance(answer, RerankError | ErrorAnswer):
            exchange.sent = answer.ByteSize()
            return answer
        failed = answer if isinstance(answer, ErrorAnswer) else error_answer(answer)
        exchange.code = failed.code
        raise connect_error(answer, failed.code, failed.message)


_TRACE_KEYS = frozenset(key.encode() for key in TRACE_CONTEXT_KEYS)


def _replay(body: bytes, receive: Receive) -> Receive:
    """`receive` for an app behind the door: the body read already, then the connection's."""
    given = False

    async def replay() -> dict[str, Any]:
        nonlocal given
        if given:
            return await receive()
        given = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replay


def _adding(send: Send, exchange: _Exchange) -> Send:
    """`send` that adds the exchange's headers to the answer's."""

    async def adding(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            message["headers"] = [*message.get("headers", ()), *exchange.headers]
            # connectrpc's own refusals (a body it cannot decode) never reach the pipeline.
            if message["status"] >= 400 and exchange.code is grpc.StatusCode.OK:
                exchange.code = grpc.StatusCode.INVALID_ARGUMENT
        await send(message)

    return adding


async def _write(send: Send, status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> None:
    kind = [(b"content-type", b"application/json")] if body[:1] == b"{" else []
    length = (b"content-length", str(len(body)).encode())
    await send(
        {"type": "http.response.start", "status": status, "headers": [*kind, length, *headers]}
    )
    await send({"type": "http.response.body", "body": body})


class HttpPort:
    """The HTTP port of a running server: its door and its server, started and stopped together."""

    def __init__(self, door: HttpDoor, server: HttpServer) -> None:
        self.door = door
        self._server = server
        self.port = server.port

    def drain(self) -> None:
        """`GET /readyz` answers 503 from now on; calls are still served."""
        self.door.serving = False

    async def stop(self) -> None:
        self.drain()
        await self._server.stop()


async def open_http_port(
    settings: Settings,
    pipeline: Pipeline,
    methods: Mapping[str, Handler],
    metrics: Metrics,
    *,
    limit: int,
    grpc_port: int,
) -> HttpPort:
    """Serve `methods` through `pipeline` on `settings.http_port` (which must be set)."""
    assert settings.http_port is not None
    if settings.http_port != 0 and not settings.allow_port_overlap:
        refuse_taken_port(settings.host, settings.http_port)
    try:
        sock = reserve_port(settings.host, settings.http_port)  # shared by workers, as gRPC's
    except OSError as exc:
        where = f"{settings.host}:{settings.http_port}"
        raise StartupError(f"cannot serve HTTP on {where}: {exc.strerror}") from exc
    connections = Connections()
    door = HttpDoor(
        pipeline,
        methods,
        metrics,
        connections,
        limit=limit,
        max_body=settings.max_message_bytes,
        body_timeout=settings.http_header_timeout,
        cors_origins=settings.http_cors_origins,
        grpc_port=grpc_port,
    )
    server = HttpServer(door, settings, sock, connections)
    await server.start()
    return HttpPort(door, server)
