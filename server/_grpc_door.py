"""The gRPC ends of the call pipeline: metadata in, status and trailers out.

Every method is registered wrapped once, here, and the wrapping (`_door`) does for each call,
in order: gRPC's server metrics (gRFC A66), a place among the calls in flight (`CallPlaces`),
refused before the message is read, then the call itself. The service's methods go through the
`Pipeline`; the door reads their `x-request-id`, `authorization` and trace context, and writes
the answer, or the error's status from the one table (`rerank.server._status`) with the request
id in the trailers.

Health and reflection take a shorter path: health checks have places of their own (a flood of
calls never starves a balancer's probe, nor a flood of Watch streams the calls), a caller is
required of them only when configured (of reflection, whenever authentication is on), and no
span; a unary check still gets its request id and access-log line.

A place is taken before the message is read because every handler is handed to gRPC as
request-streaming: gRPC leaves the message unread until the wrapper asks for it. The bytes are
decoded by the method, so bytes that are not its request are a `MalformedRequest`
(INVALID_ARGUMENT), where gRPC would answer UNKNOWN.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Mapping
from operator import methodcaller
from typing import TYPE_CHECKING, Any, NoReturn

import grpc
from google.protobuf.message import DecodeError
from opentelemetry import trace

from rerank.server._admission import CallPlaces
from rerank.server._calls import CallRecord
from rerank.server._errors import MalformedRequest, RerankError, Unauthenticated
from rerank.server._metrics import OTHER, Metrics
from rerank.server._pipeline import Handler, Pipeline
from rerank.server._status import ErrorAnswer, error_answer, log_failure
from rerank.server._tracing import TRACE_CONTEXT_KEYS

if TYPE_CHECKING:
    # grpc's stubs make these generic; the runtime classes are not subscriptable.
    MethodHandler = grpc.RpcMethodHandler[Any, Any]
    GenericHandler = grpc.GenericRpcHandler[Any, Any]
else:
    MethodHandler = grpc.RpcMethodHandler
    GenericHandler = grpc.GenericRpcHandler
Context = grpc.aio.ServicerContext[Any, Any]
#: What `_door` wraps: one call's work, given its requests' bytes and the call's `_Call`.
Body = Callable[[AsyncIterable[bytes], "_Call"], Awaitable[Any]]

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

    def _door(
        self,
        method: str,
        places: CallPlaces,
        body: Body,
        serialize: Callable[[Any], bytes],
        response_streaming: bool = False,
    ) -> MethodHandler:
        """`body` wrapped in what every call gets: its metrics, its place, its final status,
        and the access-log line of a call the pipeline does not log (a health check)."""
        calls = None if self._metrics is None else self._metrics.grpc_method(method)
        access_log = self._pipeline.access_log

        async def door(requests: AsyncIterable[bytes], context: Context) -> Any:
            began = time.perf_counter()
            if calls is not None:
                calls.started.inc()
            code = grpc.StatusCode.OK
            state = _Call(context, serialize)
            try:
                if (refused := places.take()) is not None:
                    log_failure(method, grpc.StatusCode.RESOURCE_EXHAUSTED, refused)
                    await _abort(context, error_answer(refused), None)
                try:
                    return await body(requests, state)
                finally:
                    places.give()
            except BaseException as error:
                # The status gRPC sends: set by an abort or the behaviour, else from the error.
                code = context.code() or (
                    grpc.StatusCode.CANCELLED
                    if isinstance(error, asyncio.CancelledError)
                    else grpc.StatusCode.UNKNOWN
                )
                raise
            finally:
                seconds = time.perf_counter() - began
                if calls is not None:
                    calls.ended(code, seconds, state.received, state.sent)
                if state.call is not None:
                    access_log.write(method, state.call, code, trace.INVALID_SPAN_CONTEXT, seconds)

        if response_streaming:
            return grpc.stream_stream_rpc_method_handler(door)
        return grpc.stream_unary_rpc_method_handler(door)

    def _through_pipeline(self, method: str, handler: Handler) -> MethodHandler:
        pipeline = self._pipeline

        async def serve(requests: AsyncIterable[bytes], state: _Call) -> bytes:
            context = state.context
            data = await _only(context)
            state.received = len(data)
            request_id, authorization, carrier = _read(context)
            call = pipeline.arrive(request_id, context.time_remaining())
            answer = await pipeline.answer(
                method, handler, call, data, authorization, context, carrier
            )
            if isinstance(answer, RerankError | ErrorAnswer):  # an ErrorAnswer: an incident
                failed = answer if isinstance(answer, ErrorAnswer) else error_answer(answer)
                await _abort(context, failed, call.request_id)
            context.set_trailing_metadata(((_REQUEST_ID, call.request_id),))
            return state.sent_as_bytes(answer)

        return self._door(method, self._places, serve, methodcaller("SerializeToString"))

    def _plain(self, method: str, handler: MethodHandler) -> MethodHandler:
        """A health or reflection method on the shorter path, whatever its shape."""
        health = method.startswith(HEALTH_SERVICE)
        pipeline = self._pipeline
        authenticates = pipeline.authenticates and (self._auth_health or not health)
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

        async def plain(requests: AsyncIterable[bytes], state: _Call) -> Any:
            context = state.context
            request_id, authorization, _ = _read(context)
            call: CallRecord | None = None
            if unary:  # a health check: its request id and access-log line
                call = state.call = pipeline.arrive(request_id, None)
                context.set_trailing_metadata(((_REQUEST_ID, call.request_id),))
            try:
                if authenticates:
                    pipeline.identify(method, authorization, context)
                if handler.request_streaming:
                    request: Any = state.requests(requests, deserialize)
                else:
                    data = await _only(context)
                    state.received = len(data)
                    try:
                        request = deserialize(data)
                    except DecodeError as exc:
                        if not unary:  # gRPC answers UNKNOWN, as it would without the door
                            raise
                        raise MalformedRequest.of(exc) from None
            except RerankError as error:
                if call is not None:
                    call.reason = error.reason
                failed = error_answer(error)
                if not isinstance(error, Unauthenticated):  # logged with its reason
                    log_failure(method, failed.code, error)
                await _abort(context, failed, None if call is None else call.request_id)
            if unary:
                return state.sent_as_bytes(await behaviour(request, context))
            answers = behaviour(request, state)
            if inspect.isasyncgen(answers):  # else it writes through the context
                async for answer in answers:
                    await state.write(answer)
            else:
                await answers
            return None

        places = self._health_places if health else self._places
        return self._door(method, places, plain, serialize, handler.response_streaming)


def _register(server: grpc.aio.Server, service: str, handlers: dict[str, MethodHandler]) -> None:
    """As generic handlers only, not also as registered methods (as generated code adds them):
    grpc.aio's server keeps one task waiting for calls per registered method, and for every
    call that arrives it waits on all of them again (`asyncio.wait` over 9 tasks here, against
    1): 0.959x the server CPU per call (docs/performance.md, "A sixth pass")."""
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service, handlers),))


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


async def _abort(context: Context, failed: ErrorAnswer, request_id: str | None) -> NoReturn:
    """End the call with `failed`, and its request id."""
    trailers = failed.trailing_metadata
    if request_id is not None:
        trailers = ((_REQUEST_ID, request_id), *trailers)
    await context.abort(failed.code, failed.message, trailing_metadata=trailers)


async def _only(context: Context) -> bytes:
    """The request of a unary method: the first message, as grpc's unary path reads it. Read
    from the context, not through the request iterator: iterating it makes an async generator
    per call, which the event loop registers and, once collected, closes in a task."""
    request: bytes = await context.read()
    # `grpc.aio.EOF` is public (its `__all__`); grpc-stubs predates it.
    if request is grpc.aio.EOF:  # type: ignore[attr-defined]
        # No message: the caller went away before sending one. grpc's unary path then ends
        # the call without an answer, and so does this (grpc takes CancelledError as that).
        raise asyncio.CancelledError
    return request


def _identity(value: Any) -> Any:
    return value


class _Call:
    """One call at the door: the sizes of its messages, for the metrics, and the record of a
    call the door logs itself. Also the context a streaming behaviour writes through, counting
    what it writes."""

    __slots__ = ("_serialize", "call", "context", "received", "sent")

    def __init__(self, context: Context, serialize: Callable[[Any], bytes]) -> None:
        self.context = context
        self._serialize = serialize
        self.call: CallRecord | None = None
        self.received = 0
        self.sent = 0

    def sent_as_bytes(self, message: Any) -> bytes:
        data = self._serialize(message)
        self.sent += len(data)
        return data

    async def write(self, message: Any) -> None:
        await self.context.write(self.sent_as_bytes(message))

    async def requests(
        self, requests: AsyncIterable[bytes], deserialize: Callable[[bytes], Any]
    ) -> AsyncIterator[Any]:
        async for data in requests:
            self.received += len(data)
            yield deserialize(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.context, name)
