"""The server's interceptors: metrics outermost, then the call limit, then telemetry, then
authentication, then errors into statuses.

`MetricsInterceptor` counts and times every call, refused ones included, under gRPC's own
metric names (gRFC A66); `CallLimitInterceptor` refuses a call beyond the limit before its
message is read, with health checks counted apart so a flood of calls never starves them;
`TelemetryInterceptor` gives every unary call within the limit its request id, its server span
and its access-log line, refused ones included; `AuthInterceptor` refuses calls without a known
bearer token before any handler runs, and tells the handler which named caller is calling
(`current_caller()`); `ErrorInterceptor` turns every `RerankError` into its status through the
one table in `rerank.server.status`, and any other exception into INTERNAL with an incident id;
bytes that do not decode as the method's request become `MalformedRequest` (INVALID_ARGUMENT)
there too.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import os
import re
import time
import uuid
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Iterable
from contextvars import ContextVar
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NoReturn

import grpc
from google.protobuf.message import DecodeError
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import Span, SpanKind, Status, StatusCode, Tracer

from rerank.server.callers import CallerRegistry
from rerank.server.calls import CallRecord, close_call, current_call, open_call
from rerank.server.domain import Caller
from rerank.server.errors import MalformedRequest, Overloaded, RerankError, Unauthenticated
from rerank.server.logs import AccessLog
from rerank.server.metrics import OTHER, GrpcMethodMetrics, Metrics
from rerank.server.status import error_answer
from rerank.server.tracing import TRACE_CONTEXT_KEYS, caller_context

logger = logging.getLogger(__name__)

_OPERATOR_CODES = frozenset(
    {grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN, grpc.StatusCode.UNAVAILABLE}
)
HEALTH_METHODS = frozenset({"/grpc.health.v1.Health/Check", "/grpc.health.v1.Health/Watch"})


if TYPE_CHECKING:
    # grpc's stubs make these generic; the runtime classes are not subscriptable.
    ServerInterceptor = grpc.aio.ServerInterceptor[Any, Any]
    Handler = grpc.RpcMethodHandler[Any, Any]
else:
    ServerInterceptor = grpc.aio.ServerInterceptor
    Handler = grpc.RpcMethodHandler
Continuation = Callable[[grpc.HandlerCallDetails], Awaitable[Handler]]

#: A caller's `x-request-id` is kept when it is 1-128 visible ASCII characters; anything else
#: (too long to be an id) is replaced by a new one.
_REQUEST_ID = re.compile(r"[!-~]{1,128}")
# OpenTelemetry's gRPC conventions: the statuses that mark a server span as failed (the others
# are the caller's doing).
SERVER_ERROR_CODES = frozenset(
    {
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.UNIMPLEMENTED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DATA_LOSS,
    }
)


class TelemetryInterceptor(ServerInterceptor):
    """Every unary call: a request id, a server span, a `CallRecord`, one access-log line.

    The request id is the caller's `x-request-id` metadata, or a new one; it goes back in the
    trailing metadata (`x-request-id`), on errors too. The server span (OpenTelemetry's RPC
    conventions) continues the caller's W3C trace context from the metadata; health checks
    (`untraced`) get none, so a prober's calls do not fill a trace store. Streaming calls
    (health's Watch, reflection) pass through untouched.

    Outermost, so a call authentication refuses is traced and logged like any other. Only the
    server's own `methods` (`/package.Service/Method`) are observed: a name a caller makes up
    gets no span name or log line of its choosing (grpc answers UNIMPLEMENTED, or authentication
    refuses it with its own warning). The observed handler is built once per (method, inner
    handler): the inner one is the same object on every call (the error interceptor's, or one
    of authentication's three refusals).
    """

    def __init__(
        self,
        tracer: Tracer,
        access_log: AccessLog,
        *,
        methods: Iterable[str],
        untraced: frozenset[str],
    ) -> None:
        self._tracer = tracer
        self._access_log = access_log
        self._methods = frozenset(methods)
        self._untraced = untraced
        self._observed: dict[tuple[str, int], tuple[Handler, Handler]] = {}

    async def intercept_service(
        self, continuation: Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> Handler:
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or handler.unary_unary is None or method not in self._methods:
            return handler
        key = (method, id(handler))
        if (known := self._observed.get(key)) is not None:
            return known[1]
        observed = self._observe(method, handler)
        # The entry keeps `handler` alive, so its id cannot be reused by another object.
        # Bounded: the registered methods × (their handler, authentication's refusal).
        self._observed[key] = (handler, observed)
        return observed

    def _observe(self, method: str, handler: Handler) -> Handler:
        behaviour: Any = handler.unary_unary  # a coroutine function under grpc.aio
        name = method[1:]  # `rerank.v1.RerankService/Rerank`: the span's name, the log's method
        service, _, rpc_method = name.rpartition("/")
        traced = method not in self._untraced
        tracer = self._tracer
        access_log = self._access_log

        async def observed(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            started = time.perf_counter()
            request_id: str | None = None
            carrier: dict[str, str] | None = None
            for key, value in context.invocation_metadata() or ():
                if key == "x-request-id":
                    request_id = value if isinstance(value, str) else None
                elif key in TRACE_CONTEXT_KEYS and isinstance(value, str):
                    if carrier is None:
                        carrier = {}
                    carrier[key] = value
            if request_id is None or not _REQUEST_ID.fullmatch(request_id):
                request_id = os.urandom(16).hex()  # as random as uuid4().hex, a third the cost
            call = CallRecord(request_id)
            context.set_trailing_metadata((("x-request-id", request_id),))
            span: Span = trace.INVALID_SPAN
            attached = None
            if traced:
                parent = None if carrier is None else caller_context(carrier)
                span = tracer.start_span(name, context=parent, kind=SpanKind.SERVER)
                attached = otel_context.attach(trace.set_span_in_context(span, parent))
            opened = open_call(call)
            error: BaseException | None = None
            try:
                return await behaviour(request, context)
            except BaseException as exc:
                error = exc
                raise
            finally:
                close_call(opened)
                if attached is not None:
                    otel_context.detach(attached)
                code = _status_of(context, error)
                if span.is_recording():
                    _end_server_span(span, service, rpc_method, call, code)
                span.end()
                access_log.write(
                    name, call, code, span.get_span_context(), time.perf_counter() - started
                )

        return grpc.unary_unary_rpc_method_handler(
            observed,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )


def _status_of(
    context: grpc.aio.ServicerContext[Any, Any], error: BaseException | None
) -> grpc.StatusCode:
    """The status grpc sends for a call that ended with `error` (None: returned normally)."""
    code: grpc.StatusCode | None = context.code()
    if code is not None:  # set by abort (the error interceptor, authentication) or set_code
        return code
    if error is None:
        return grpc.StatusCode.OK
    if isinstance(error, asyncio.CancelledError):
        return grpc.StatusCode.CANCELLED
    return grpc.StatusCode.UNKNOWN


def _end_server_span(
    span: Span, service: str, method: str, call: CallRecord, code: grpc.StatusCode
) -> None:
    """The server span's attributes, set once at its end from what the call noted."""
    attributes: dict[str, str | int | bool] = {
        "rpc.system": "grpc",
        "rpc.service": service,
        "rpc.method": method,
        "rpc.grpc.status_code": code.value[0],
        "rerank.request_id": call.request_id,
        "rerank.upstream_attempts": call.upstream_attempts,
        "rerank.windows": call.windows,
    }
    if call.caller is not None:
        attributes["rerank.caller"] = call.caller
    if call.model is not None:
        attributes["rerank.model"] = call.model
    if call.documents is not None:
        attributes["rerank.documents"] = call.documents
    if call.top_n is not None:
        attributes["rerank.top_n"] = call.top_n
    if call.cached is not None:
        attributes["rerank.cached"] = call.cached
    if call.reason is not None:
        attributes["error.type"] = call.reason
    elif code is not grpc.StatusCode.OK:
        attributes["error.type"] = code.name
    span.set_attributes(attributes)
    if code in SERVER_ERROR_CODES:
        span.set_status(Status(StatusCode.ERROR, call.reason or code.name))


class MetricsInterceptor(ServerInterceptor):
    """gRPC's server metrics (gRFC A66) for every call that reaches a handler: started, and per
    status its duration and the bytes of its messages. Outermost, so a call refused by the
    authentication interceptor is counted (UNAUTHENTICATED) like any other.

    `methods` are the registered full method names (`/rerank.v1.RerankService/Rerank`); any
    other name is counted as `other`, so a caller cannot make up label values. The metered
    handler is built once per (method, inner handler): the inner one is the same object on
    every call, or one of the authentication interceptor's three refusals.

    Sizes are the serialized messages, as gRPC's own deserializer receives and its serializer
    returns them (no compression is configured, so A66's "compressed" size is that). A unary
    request's size travels from our deserializer to our handler inside the value grpc hands
    from one to the other; a unary response is serialized by our handler itself; streamed
    messages are counted by wrapped serializers into the call's `_StreamedBytes`.
    """

    def __init__(self, metrics: Metrics, methods: Iterable[str]) -> None:
        self._metrics = metrics
        self._methods = frozenset(methods)
        self._metered: dict[tuple[str, int], tuple[Handler, Handler]] = {}
        for method in self._methods:
            metrics.grpc_method(method[1:])  # every method's counter from 0

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Handler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Handler:
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        key = (method, id(handler))
        if (known := self._metered.get(key)) is not None:
            return known[1]
        registered = method in self._methods
        calls = self._metrics.grpc_method(method[1:] if registered else OTHER)
        if handler is None:
            # No such method: grpc answers UNIMPLEMENTED without running anything.
            calls.started.inc()
            calls.ended(grpc.StatusCode.UNIMPLEMENTED, 0.0, 0, 0)
            return handler
        metered = meter(handler, calls)
        if registered:  # bounded: registered methods × (their handler, three refusals)
            # The entry keeps `handler` alive, so its id cannot be reused by another object.
            self._metered[key] = (handler, metered)
        return metered


class _Call:
    """One call being measured."""

    __slots__ = ("_began", "_calls", "received", "sent")

    def __init__(self, calls: GrpcMethodMetrics, received: int = 0) -> None:
        calls.started.inc()
        self._calls = calls
        self._began = time.perf_counter()
        self.received = received
        self.sent = 0

    def end(self, context: grpc.aio.ServicerContext[Any, Any], error: BaseException | None) -> None:
        # A status the handler set (abort, set_code) is what grpc sends; else what grpc makes
        # of how the handler ended.
        code: grpc.StatusCode | None = context.code()
        if code is None:
            if error is None:
                code = grpc.StatusCode.OK
            elif isinstance(error, asyncio.CancelledError | GeneratorExit):
                code = grpc.StatusCode.CANCELLED
            else:
                code = grpc.StatusCode.UNKNOWN
        self._calls.ended(code, time.perf_counter() - self._began, self.received, self.sent)


# The call a streamed message belongs to, for the serializers of streaming handlers: grpc runs
# them in the call's own task, whose context holds it.
_STREAMED: ContextVar[_Call | None] = ContextVar("rerank_streamed_call", default=None)


def _identity(value: Any) -> Any:
    return value


def meter(handler: Handler, calls: GrpcMethodMetrics) -> Handler:
    """`handler`, measured into `calls`; any of the four shapes."""
    deserialize: Callable[[bytes], Any] = handler.request_deserializer or _identity
    serialize: Callable[[Any], bytes] = handler.response_serializer or _identity

    def sized_request(data: bytes) -> tuple[int, Any]:
        try:
            return len(data), deserialize(data)
        except Exception:
            # Not a valid message: grpc answers UNKNOWN and no handler runs.
            _Call(calls, len(data)).end(_NO_CONTEXT, Exception())
            raise

    def counted_request(data: bytes) -> Any:
        call = _STREAMED.get()
        if call is not None:
            call.received += len(data)
        return deserialize(data)

    def counted_response(message: Any) -> bytes:
        data = serialize(message)
        call = _STREAMED.get()
        if call is not None:
            call.sent += len(data)
        return data

    if handler.unary_unary is not None:
        unary: Any = handler.unary_unary

        async def unary_unary(request: tuple[int, Any], context: Any) -> bytes:
            call = _Call(calls, request[0])
            error: BaseException | None = None
            try:
                data = serialize(await unary(request[1], context))
                call.sent = len(data)
                return data
            except BaseException as exc:
                error = exc
                raise
            finally:
                call.end(context, error)

        return grpc.unary_unary_rpc_method_handler(unary_unary, request_deserializer=sized_request)

    if handler.stream_unary is not None:
        stream_unary: Any = handler.stream_unary

        async def stream_to_unary(requests: Any, context: Any) -> bytes:
            call = _Call(calls)
            _STREAMED.set(call)
            error: BaseException | None = None
            try:
                data = serialize(await stream_unary(requests, context))
                call.sent = len(data)
                return data
            except BaseException as exc:
                error = exc
                raise
            finally:
                call.end(context, error)

        return grpc.stream_unary_rpc_method_handler(
            stream_to_unary, request_deserializer=counted_request
        )

    streaming: Any = handler.unary_stream or handler.stream_stream
    unary_request = handler.unary_stream is not None

    def begin(request: Any) -> tuple[_Call, Any]:
        if unary_request:
            size, request = request
            call = _Call(calls, size)
        else:
            call = _Call(calls)
        _STREAMED.set(call)
        return call, request

    if inspect.isasyncgenfunction(streaming):

        async def responses(request: Any, context: Any) -> AsyncIterator[Any]:
            call, request = begin(request)
            error: BaseException | None = None
            try:
                async for response in streaming(request, context):
                    yield response
            except BaseException as exc:
                error = exc
                raise
            finally:
                call.end(context, error)

        behaviour: Any = responses
    else:  # writes its responses with `context.write`

        async def written(request: Any, context: Any) -> None:
            call, request = begin(request)
            error: BaseException | None = None
            try:
                await streaming(request, context)
            except BaseException as exc:
                error = exc
                raise
            finally:
                call.end(context, error)

        behaviour = written
    if unary_request:
        return grpc.unary_stream_rpc_method_handler(
            behaviour, request_deserializer=sized_request, response_serializer=counted_response
        )
    return grpc.stream_stream_rpc_method_handler(
        behaviour, request_deserializer=counted_request, response_serializer=counted_response
    )


class _NoContext:
    """For a call that ended before a handler (and its context) existed."""

    def code(self) -> None:
        return None


_NO_CONTEXT: Any = _NoContext()


class ErrorInterceptor(ServerInterceptor):
    """Turns `RerankError`s into statuses through the one table in `rerank.server.status`.

    Anything else is a bug: it is logged with its traceback under an incident id and the
    caller gets INTERNAL with that id, never the exception's text. It also wraps each method's
    request deserializer, so bytes that are not the method's message are answered as a
    `MalformedRequest` rather than left to grpc, which would answer UNKNOWN.
    """

    def __init__(self) -> None:
        # grpc asks interceptors for a handler on every call; the guarded handler of a method
        # never changes, so it is built once, not once per call.
        self._guarded: dict[str, grpc.RpcMethodHandler[Any, Any]] = {}

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any]]
        ],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any]:
        method = handler_call_details.method
        if (guarded := self._guarded.get(method)) is not None:
            return guarded
        handler = await continuation(handler_call_details)
        if handler is None or handler.unary_unary is None:
            return handler
        # grpc's stubs type handlers as sync; under grpc.aio the behaviour is a coroutine.
        behaviour: Any = handler.unary_unary

        async def guard(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            try:
                if isinstance(request, _Undecodable):
                    raise request.error
                return await behaviour(request, context)
            except RerankError as error:
                await abort_with(context, method, error)
            except (asyncio.CancelledError, grpc.aio.AbortError):
                raise
            except Exception:
                await context.abort(grpc.StatusCode.INTERNAL, report_incident(method))

        self._guarded[method] = grpc.unary_unary_rpc_method_handler(
            guard,
            request_deserializer=_decoding(handler.request_deserializer),
            response_serializer=handler.response_serializer,
        )
        return self._guarded[method]


def log_failure(what: str, code: grpc.StatusCode, error: RerankError) -> None:
    """Log a call (or a batch's request) that failed with `error`, answered as `code`."""
    # Failures of ours or upstream's deserve a warning; a caller's mistakes or a refusal under
    # overload are routine and would drown the log at WARNING.
    level = logging.WARNING if code in _OPERATOR_CODES else logging.INFO
    logger.log(level, "%s failed: %s %s", what, code.name, error.reason)


def report_incident(what: str) -> str:
    """Log the exception being handled (a bug) with its traceback under a new incident id,
    noted in the current call's record, and return the message the caller gets instead of the
    exception's text (with INTERNAL)."""
    incident = uuid.uuid4().hex[:12]
    if (call := current_call()) is not None:
        call.incident = incident
    logger.exception("%s failed unexpectedly (incident %s)", what, incident)
    return f"internal error (incident {incident})"


class _Undecodable:
    """What the request deserializer hands the guard instead of a message it cannot decode.

    A deserializer cannot answer the call itself: an exception raised in it reaches grpc, which
    answers UNKNOWN before any handler (or interceptor) runs. So it returns this, and the guard
    answers with the error it holds.
    """

    __slots__ = ("error",)

    def __init__(self, error: MalformedRequest) -> None:
        self.error = error


def _decoding(deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    if deserializer is None:
        return None
    decode = deserializer

    def decode_or_explain(data: bytes) -> Any:
        try:
            return decode(data)
        except DecodeError as exc:
            return _Undecodable(MalformedRequest.of(exc))

    return decode_or_explain


async def abort_with(
    context: grpc.aio.ServicerContext[Any, Any], method: str, error: RerankError
) -> NoReturn:
    """End the call with `error`'s answer from the one table: status, details, pushback."""
    log_failure(method, error_answer(error).code, error)
    await _answer(context, error)


async def _answer(context: grpc.aio.ServicerContext[Any, Any], error: RerankError) -> NoReturn:
    """Abort the call with `error`'s answer, noted in the call's record."""
    answer = error_answer(error)
    if (call := current_call()) is not None:
        call.reason = error.reason
    await context.abort(
        answer.code,
        answer.message,
        # abort() replaces what was set before (the request id): keep it.
        trailing_metadata=(*context.trailing_metadata(), *answer.trailing_metadata),
    )


@dataclass
class _InFlight:
    """Calls of one kind in flight, and how many may be."""

    limit: int
    calls: int = 0


class CallLimitInterceptor(ServerInterceptor):
    """At most `limit` calls in flight, health checks not counted; at most `health_limit` of those.

    Replaces grpc.aio's `maximum_concurrent_rpcs`, which counts every method alike: under a
    flood it refused health checks too, and a balancer that sees failed checks takes a busy
    but healthy replica out. Here health checks have their own count, so calls cannot use up
    their room (nor they the calls').

    A refusal still comes before the request is read: every handler is handed to grpc as
    request-streaming, so grpc leaves the message unread until the wrapper asks for it, and
    the wrapper asks only once the call has a place. A unary handler then gets the one message
    as before. What changed against grpc's own limit: the refusal is our `Overloaded` status
    from the one table (with RetryInfo), not grpc's bare "Concurrent RPC limit exceeded!", and
    the method is looked up (interceptors run) before the refusal.
    """

    def __init__(
        self,
        limit: int,
        health_limit: int,
        health_methods: frozenset[str],
        methods: Iterable[str],
    ) -> None:
        self._calls = _InFlight(limit)
        self._health = _InFlight(health_limit)
        self._health_methods = health_methods
        self._methods = frozenset(methods)
        # grpc asks for a handler on every call, and the one below a method is the same object
        # each time (or one of the authentication interceptor's three refusals): the wrapping
        # is kept per (registered method, inner handler). The entry keeps the inner handler
        # alive, so its id is not reused; other method names are wrapped per call, so a
        # caller cannot grow this by making names up.
        self._wrapped: dict[tuple[str, int], tuple[Handler, Handler]] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Handler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Handler:
        method = handler_call_details.method
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        key = (method, id(handler))
        if (known := self._wrapped.get(key)) is not None:
            return known[1]
        in_flight = self._health if method in self._health_methods else self._calls
        wrapped = _limited(handler, method, in_flight)
        if method in self._methods:
            self._wrapped[key] = (handler, wrapped)
        return wrapped


def _limited(
    handler: grpc.RpcMethodHandler[Any, Any], method: str, in_flight: _InFlight
) -> grpc.RpcMethodHandler[Any, Any]:
    """`handler` as a request-streaming handler that first takes a place in `in_flight`."""
    # grpc's stubs type handlers as sync; under grpc.aio every behaviour here is async.
    behaviour: Any = (
        handler.unary_unary or handler.unary_stream or handler.stream_unary or handler.stream_stream
    )

    async def limited(
        requests: AsyncIterable[Any], context: grpc.aio.ServicerContext[Any, Any]
    ) -> Any:
        if in_flight.calls >= in_flight.limit:
            await abort_with(
                context,
                method,
                Overloaded(
                    f"the server is at its limit of {in_flight.limit} calls in flight; retry later"
                ),
            )
        in_flight.calls += 1
        try:
            request = requests if handler.request_streaming else await _only(requests)
            result = behaviour(request, context)
            if not handler.response_streaming:
                return await result
            # A streaming behaviour either writes through the context or is an async generator.
            if inspect.isasyncgen(result):
                async for response in result:
                    await context.write(response)
            else:
                await result
            return None
        finally:
            in_flight.calls -= 1

    if handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(
            limited,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
    return grpc.stream_unary_rpc_method_handler(
        limited,
        request_deserializer=handler.request_deserializer,
        response_serializer=handler.response_serializer,
    )


async def _only(requests: AsyncIterable[Any]) -> Any:
    """The request of a unary method: the first message, as grpc's unary path reads it."""
    async for request in requests:
        return request
    # No message: the caller went away before sending one. grpc's unary path then ends the
    # call without an answer, and so does this (grpc takes CancelledError as exactly that).
    raise asyncio.CancelledError


class AuthInterceptor(ServerInterceptor):
    """Requires `authorization: Bearer <token>` with a token the registry knows, or, with
    mutual TLS, a client certificate that names a caller of `RERANK_CALLERS_FILE`.

    A token decides when one is sent (an unknown one is refused even beside a good
    certificate). A token of `RERANK_AUTH_TOKENS` is a caller without a name; a named
    caller's call runs with `current_caller()` set to it. grpc.aio interceptors see no auth
    context, so the certificate is read in a wrapper around the handler, which names the
    caller from the call's own context. Methods in `open_methods` (health checks, by default)
    pass without either. A token, or its digest, is never logged or echoed.

    Every handler it returns is the same object on every call (a refusal per method shape, a
    wrapper per method): an interceptor outside it may keep its own wrapping of each.
    """

    def __init__(self, registry: CallerRegistry, open_methods: frozenset[str]) -> None:
        self._registry = registry
        self._open_methods = open_methods
        # Per method: the handler wrapped, and its wrapper. Keeping the first keeps its id
        # from being reused; bounded by the methods times their (stable) handlers.
        self._identifying: dict[tuple[str, int], tuple[Handler, Handler]] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Handler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Handler:
        method = handler_call_details.method
        if method in self._open_methods:
            return await continuation(handler_call_details)
        directory = self._registry.directory
        presented = _bearer_token(handler_call_details.invocation_metadata)
        if presented is not None:
            known, caller = directory.for_token(presented)
            if not known:
                return _refusal(method, "missing or unknown bearer token")
            handler = await continuation(handler_call_details)
            # A caller without a name needs nothing more: the handler runs as it is.
            return handler if caller is None else self._identifying_handler(method, handler)
        if directory.names_by_certificate:
            return self._identifying_handler(method, await continuation(handler_call_details))
        return _refusal(method, "missing or unknown bearer token")

    def _identifying_handler(self, method: str, handler: Handler) -> Handler:
        if handler is None:  # an unknown method: grpc answers UNIMPLEMENTED
            return handler
        key = (method, id(handler))
        if (known := self._identifying.get(key)) is not None:
            return known[1]
        wrapper = _with_caller(method, handler, self._caller_of)
        self._identifying[key] = (handler, wrapper)
        return wrapper

    def _caller_of(self, context: grpc.aio.ServicerContext[Any, Any]) -> Caller | None:
        """The named caller of a call, from its own context: its token's, when it sent one
        (known by the interceptor already), else its client certificate's."""
        directory = self._registry.directory
        presented = _bearer_token(context.invocation_metadata())
        if presented is not None:
            return directory.for_token(presented)[1]
        auth = context.auth_context()
        subjects = list(auth.get("x509_subject", ()))
        sans = list(auth.get("x509_subject_alternative_name", ()))
        return directory.for_certificate(
            subjects[0].decode() if subjects else None, [san.decode() for san in sans]
        )


_BEARER = b"Bearer "


def _bearer_token(metadata: Iterable[tuple[str, str | bytes]] | None) -> bytes | None:
    """The token of a call's `authorization: Bearer <token>`; b"" for an `authorization` of
    another form (known to nobody), None without one."""
    presented: bytes | None = None
    for key, value in metadata or ():
        if key == "authorization":
            presented = value.encode() if isinstance(value, str) else value
    if presented is None:
        return None
    return presented[len(_BEARER) :] if presented.startswith(_BEARER) else b""


#: The named caller of the call being handled. A ContextVar, not shared state: grpc.aio runs
#: each call's handler in a task of its own, and the value set there is that task's alone.
_CURRENT_CALLER: ContextVar[Caller | None] = ContextVar("rerank_current_caller", default=None)


def current_caller() -> Caller | None:
    """The named caller of the call being handled; None for a caller without a name, and
    whenever authentication is off."""
    return _CURRENT_CALLER.get()


def _with_caller(
    method: str,
    handler: Handler,
    identify: Callable[[grpc.aio.ServicerContext[Any, Any]], Caller | None],
) -> Handler:
    """`handler` run with `current_caller()` set to what `identify` finds in the call's
    context; refused UNAUTHENTICATED when it finds nobody."""
    why = "no known bearer token, and no caller named by the client certificate"
    if handler.unary_unary is not None:
        unary: Any = handler.unary_unary

        async def identified(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            caller = identify(context)
            if caller is None:
                logger.warning("%s refused: %s", method, why)
                await _abort_unauthenticated(context)
            reset = _CURRENT_CALLER.set(caller)
            if (call := current_call()) is not None:
                call.caller = caller.name  # the name only: never a token
            try:
                return await unary(request, context)
            finally:
                _CURRENT_CALLER.reset(reset)

        return grpc.unary_unary_rpc_method_handler(
            identified,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
    # Streaming methods (health's Watch, reflection) need no caller, only to be let in; they
    # are answered by writing, whatever shape the wrapped behaviour has.
    streaming: Any = handler.unary_stream or handler.stream_stream

    async def identified_stream(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        if identify(context) is None:
            logger.warning("%s refused: %s", method, why)
            await _abort_unauthenticated(context)
        answers = streaming(request, context)
        if hasattr(answers, "__aiter__"):
            async for answer in answers:
                await context.write(answer)
        else:
            await answers

    make = (
        grpc.unary_stream_rpc_method_handler
        if handler.unary_stream is not None
        else grpc.stream_stream_rpc_method_handler
    )
    return make(
        identified_stream,
        request_deserializer=handler.request_deserializer,
        response_serializer=handler.response_serializer,
    )


async def _abort_unauthenticated(context: grpc.aio.ServicerContext[Any, Any]) -> NoReturn:
    """Abort the call UNAUTHENTICATED, with the ErrorInfo of `Unauthenticated`."""
    await _answer(
        context,
        Unauthenticated(
            "missing or unknown bearer token: send 'authorization: Bearer <token>'"
            " (or, with mutual TLS, a client certificate that names a caller)"
        ),
    )


async def _refuse(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
    await _abort_unauthenticated(context)


async def _refuse_stream(
    requests: Any, context: grpc.aio.ServicerContext[Any, Any]
) -> AsyncIterator[Any]:
    await _abort_unauthenticated(context)
    yield None  # pragma: no cover - abort raised above


# One refusal per method shape, the same object on every call.
_REFUSE_UNARY: Handler = grpc.unary_unary_rpc_method_handler(_refuse)
_REFUSE_UNARY_STREAM: Handler = grpc.unary_stream_rpc_method_handler(_refuse_stream)
_REFUSE_STREAM_STREAM: Handler = grpc.stream_stream_rpc_method_handler(_refuse_stream)


def _refusal(method: str, why: str) -> Handler:
    """The refusal of a call to `method`, logged (never with what was presented)."""
    logger.warning("%s refused: %s", method, why)
    # The refusal must match the method's streaming shape or grpc cannot call it; we do not
    # know that shape without the real handler, so answer both ways (unary, and stream-stream
    # for reflection).
    if method.startswith("/grpc.reflection."):
        return _REFUSE_STREAM_STREAM
    if method.endswith("/Watch"):
        return _REFUSE_UNARY_STREAM
    return _REFUSE_UNARY
