"""The gRPC ends of the call pipeline: metadata in, status and trailers out.

Every method is registered wrapped once, here, and the wrapping does for each call, in order:
gRPC's server metrics (gRFC A66: started, and per status the duration and the bytes of the
messages), a place among the calls in flight (`CallPlaces`), refused before the message is
read, then the call itself. The service's methods go through the `Pipeline`; the door reads
their `x-request-id`, `authorization` and trace context from the metadata, and writes the
answer, or the error's status from the one table (`rerank.server._status`) with the request id
in the trailers.

Health and reflection take a shorter path: health checks have places of their own (a flood of
calls never starves a balancer's probe, nor a flood of Watch streams the calls), a caller is
required of them only when configured (of reflection, whenever authentication is on), and no
span; a unary check still gets its request id and access-log line.

A place is taken before the message is read because every handler is handed to gRPC as
request-streaming: gRPC leaves the message unread until the wrapper asks for it, and the wrapper
asks once the call has its place. The bytes are decoded by the method, so bytes that are not
its request are a `MalformedRequest` (INVALID_ARGUMENT) of the service, where gRPC would answer
UNKNOWN.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import AsyncIterable, AsyncIterator, Callable, Mapping
from typing import TYPE_CHECKING, Any, NoReturn

import grpc
from google.protobuf.message import DecodeError
from opentelemetry import trace

from rerank.server._admission import CallPlaces
from rerank.server._calls import CallRecord
from rerank.server._errors import MalformedRequest, Overloaded, RerankError, Unauthenticated
from rerank.server._metrics import OTHER, GrpcMethodMetrics, Metrics
from rerank.server._pipeline import Handler, Pipeline
from rerank.server._status import error_answer, log_failure
from rerank.server._tracing import TRACE_CONTEXT_KEYS

if TYPE_CHECKING:
    # grpc's stubs make these generic; the runtime classes are not subscriptable.
    MethodHandler = grpc.RpcMethodHandler[Any, Any]
    GenericHandler = grpc.GenericRpcHandler[Any, Any]
else:
    MethodHandler = grpc.RpcMethodHandler
    GenericHandler = grpc.GenericRpcHandler
Context = grpc.aio.ServicerContext[Any, Any]

HEALTH_SERVICE = "grpc.health.v1.Health"
_REQUEST_ID = "x-request-id"


class GrpcDoor:
    """Registers methods on a grpc.aio server, each wrapped once, for every call to it.

    At most `limit` calls in flight, health checks not counted; at most `health_limit` of
    those. `auth_health`: health checks need a caller too (when the pipeline authenticates).
    """

    def __init__(
        self,
        pipeline: Pipeline,
        metrics: Metrics,
        *,
        limit: int,
        health_limit: int,
        auth_health: bool,
    ) -> None:
        self._pipeline = pipeline
        self._metrics = metrics if metrics.enabled else None
        self._places = CallPlaces(limit)
        self._health_places = CallPlaces(health_limit)
        self._auth_health = auth_health

    def add_service(
        self, server: grpc.aio.Server, service: str, methods: Mapping[str, Handler]
    ) -> None:
        """Register `service`'s `methods` (by name), each answered through the pipeline."""
        _register(
            server,
            service,
            {name: self._through_pipeline(f"{service}/{name}", h) for name, h in methods.items()},
        )

    def registrar(self, server: grpc.aio.Server) -> Any:
        """A stand-in for `server` to hand a generated `add_*_to_server` (health, reflection):
        it registers each of their handlers on `server` on the shorter path."""
        return _Registrar(self, server)

    def answer_unknown_methods(self, server: grpc.aio.Server) -> None:
        """Answer a method nobody registered UNIMPLEMENTED on the shorter path (after every
        service): counted as `other`, so a caller cannot make up label values, and, with
        authentication on, refused UNAUTHENTICATED first, so that without a token nobody
        learns which methods exist."""
        handler = grpc.stream_stream_rpc_method_handler(_unimplemented)
        server.add_generic_rpc_handlers((_Unknown(self._plain(OTHER, handler)),))

    def _meter(self, method: str) -> GrpcMethodMetrics | None:
        return None if self._metrics is None else self._metrics.grpc_method(method)

    def _through_pipeline(self, method: str, handler: Handler) -> MethodHandler:
        pipeline = self._pipeline
        places = self._places
        calls = self._meter(method)

        async def serve(requests: AsyncIterable[bytes], context: Context) -> bytes:
            began = time.perf_counter()
            if calls is not None:
                calls.started.inc()
            code = grpc.StatusCode.OK
            received = sent = 0
            try:
                if (refused := places.take()) is not None:
                    await _refuse(context, method, refused)
                try:
                    data = await _only(requests)
                    received = len(data)
                    request_id, authorization, carrier = _read(context)
                    call = pipeline.arrive(request_id, context.time_remaining())
                    answer = await pipeline.answer(
                        method, handler, call, data, authorization, context, carrier
                    )
                    if isinstance(answer, bytes):
                        context.set_trailing_metadata(((_REQUEST_ID, call.request_id),))
                        sent = len(answer)
                        return answer
                    if isinstance(answer, RerankError):
                        await _abort(context, answer, call.request_id)
                    await context.abort(
                        grpc.StatusCode.INTERNAL,
                        answer.message,
                        trailing_metadata=((_REQUEST_ID, call.request_id),),
                    )
                finally:
                    places.give()
            except BaseException as error:
                code = _status_of(context, error)
                raise
            finally:
                if calls is not None:
                    calls.ended(code, time.perf_counter() - began, received, sent)

        return grpc.stream_unary_rpc_method_handler(serve)

    def _plain(self, method: str, handler: MethodHandler) -> MethodHandler:
        """A health or reflection method on the shorter path, whatever its shape."""
        health = method.startswith(HEALTH_SERVICE)
        places = self._health_places if health else self._places
        pipeline = self._pipeline
        authenticates = pipeline.authenticates and (self._auth_health or not health)
        calls = self._meter(method)
        deserialize: Callable[[bytes], Any] = handler.request_deserializer or _identity
        serialize: Callable[[Any], bytes] = handler.response_serializer or _identity
        unary = handler.unary_unary is not None
        # grpc's stubs type behaviours as sync; under grpc.aio every one here is async.
        behaviour: Any = (
            handler.unary_unary
            or handler.unary_stream
            or handler.stream_unary
            or handler.stream_stream
        )

        async def plain(requests: AsyncIterator[bytes], context: Context) -> Any:
            began = time.perf_counter()
            if calls is not None:
                calls.started.inc()
            code = grpc.StatusCode.OK
            sizes = _Sized(context, serialize)
            call: CallRecord | None = None
            try:
                if (refused := places.take()) is not None:
                    await _refuse(context, method, refused)
                try:
                    request_id, authorization, _ = _read(context)
                    if unary:  # a health check: its request id and access-log line
                        call = pipeline.arrive(request_id, None)
                        context.set_trailing_metadata(((_REQUEST_ID, call.request_id),))
                    try:
                        if authenticates:
                            pipeline.identify(method, authorization, context)
                        if handler.request_streaming:
                            request: Any = sizes.requests(requests, deserialize)
                        else:
                            data = await _only(requests)
                            sizes.received = len(data)
                            request = _decoded(deserialize, data, unary)
                    except RerankError as error:
                        if call is not None:
                            call.reason = error.reason
                        if not isinstance(error, Unauthenticated):  # logged with its reason
                            log_failure(method, error_answer(error).code, error)
                        await _abort(context, error, None if call is None else call.request_id)
                    if unary:
                        return sizes.sent_as_bytes(await behaviour(request, context))
                    answers = behaviour(request, sizes)
                    if inspect.isasyncgen(answers):  # else it writes through the context
                        async for answer in answers:
                            await sizes.write(answer)
                    else:
                        await answers
                    return None
                finally:
                    places.give()
            except BaseException as error:
                code = _status_of(context, error)
                raise
            finally:
                seconds = time.perf_counter() - began
                if calls is not None:
                    calls.ended(code, seconds, sizes.received, sizes.sent)
                if call is not None:
                    pipeline.access_log.write(
                        method, call, code, trace.INVALID_SPAN_CONTEXT, seconds
                    )

        if handler.response_streaming:
            return grpc.stream_stream_rpc_method_handler(plain)
        return grpc.stream_unary_rpc_method_handler(plain)


def _register(server: grpc.aio.Server, service: str, handlers: dict[str, MethodHandler]) -> None:
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service, handlers),))
    # As generated code does (grpcio 1.62+); grpc-stubs predates the method.
    server.add_registered_method_handlers(service, handlers)  # type: ignore[attr-defined]


class _Registrar:
    """What generated `add_*_to_server` functions call, registering on the shorter path."""

    def __init__(self, door: GrpcDoor, server: grpc.aio.Server) -> None:
        self._door = door
        self._server = server

    def add_generic_rpc_handlers(self, handlers: object) -> None:
        """The same handlers come by `add_registered_method_handlers`, by name."""

    def add_registered_method_handlers(
        self, service: str, handlers: Mapping[str, MethodHandler]
    ) -> None:
        door = self._door
        wrapped = {name: door._plain(f"{service}/{name}", h) for name, h in handlers.items()}
        _register(self._server, service, wrapped)


class _Unknown(GenericHandler):
    """The handler of every method no other handler has: the last handler asked."""

    def __init__(self, handler: MethodHandler) -> None:
        self._handler = handler

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> MethodHandler:
        return self._handler


async def _unimplemented(requests: AsyncIterator[Any], context: Context) -> AsyncIterator[Any]:
    await context.abort(grpc.StatusCode.UNIMPLEMENTED, "Method not found!")
    yield  # never reached: a generator, as a streaming method's behaviour is


def _read(context: Context) -> tuple[str | None, str | bytes | None, dict[str, str] | None]:
    """A call's request id, `authorization` and trace context, from its metadata."""
    request_id: str | None = None
    authorization: str | bytes | None = None
    carrier: dict[str, str] | None = None
    for key, value in context.invocation_metadata() or ():
        if key == _REQUEST_ID:
            request_id = value if isinstance(value, str) else None
        elif key == "authorization":
            authorization = value
        elif key in TRACE_CONTEXT_KEYS and isinstance(value, str):
            if carrier is None:
                carrier = {}
            carrier[key] = value
    return request_id, authorization, carrier


async def _refuse(context: Context, method: str, refused: Overloaded) -> NoReturn:
    """Refuse a call for want of a place, before its message is read."""
    log_failure(method, grpc.StatusCode.RESOURCE_EXHAUSTED, refused)
    await _abort(context, refused, None)


async def _abort(context: Context, error: RerankError, request_id: str | None) -> NoReturn:
    """End the call with `error`'s answer from the one table, and its request id."""
    failed = error_answer(error)
    trailers = failed.trailing_metadata
    if request_id is not None:
        trailers = ((_REQUEST_ID, request_id), *trailers)
    await context.abort(failed.code, failed.message, trailing_metadata=trailers)


def _decoded(deserialize: Callable[[bytes], Any], data: bytes, unary: bool) -> Any:
    """The request in `data`. Bytes that are not one are `MalformedRequest` for a unary
    method; for a streaming one gRPC answers UNKNOWN, as it would without the door."""
    try:
        return deserialize(data)
    except DecodeError as exc:
        if not unary:
            raise
        raise MalformedRequest.of(exc) from None


async def _only(requests: AsyncIterable[bytes]) -> bytes:
    """The request of a unary method: the first message, as grpc's unary path reads it."""
    async for request in requests:
        return request
    # No message: the caller went away before sending one. grpc's unary path then ends the
    # call without an answer, and so does this (grpc takes CancelledError as exactly that).
    raise asyncio.CancelledError


def _status_of(context: Context, error: BaseException) -> grpc.StatusCode:
    """The status gRPC sends for a call that ended with `error`."""
    code: grpc.StatusCode | None = context.code()
    if code is not None:  # set by an abort, or by the behaviour
        return code
    if isinstance(error, asyncio.CancelledError):
        return grpc.StatusCode.CANCELLED
    return grpc.StatusCode.UNKNOWN


def _identity(value: Any) -> Any:
    return value


class _Sized:
    """The sizes of one streaming call's messages: the context its behaviour writes through,
    counting what it writes, and its requests, counted as read."""

    __slots__ = ("_context", "_serialize", "received", "sent")

    def __init__(self, context: Context, serialize: Callable[[Any], bytes]) -> None:
        self._context = context
        self._serialize = serialize
        self.received = 0
        self.sent = 0

    def sent_as_bytes(self, message: Any) -> bytes:
        data = self._serialize(message)
        self.sent += len(data)
        return data

    async def write(self, message: Any) -> None:
        await self._context.write(self.sent_as_bytes(message))

    async def requests(
        self, requests: AsyncIterable[bytes], deserialize: Callable[[bytes], Any]
    ) -> AsyncIterator[Any]:
        async for data in requests:
            self.received += len(data)
            yield deserialize(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._context, name)
