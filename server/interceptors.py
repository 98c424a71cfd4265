"""The server's interceptors: the call limit first, then authentication, then errors into
statuses.

`CallLimitInterceptor` refuses a call beyond the limit before its message is read, with health
checks counted apart so a flood of calls never starves them; `AuthInterceptor` refuses calls
without a known bearer token before any handler runs; `ErrorInterceptor` turns every
`RerankError` into its status through the one table in `rerank.server.status`, and any other
exception into INTERNAL with an incident id; bytes that do not decode as the method's request
become `MalformedRequest` (INVALID_ARGUMENT) there too.
"""

from __future__ import annotations

import asyncio
import hmac
import inspect
import logging
import uuid
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NoReturn

import grpc
from google.protobuf.message import DecodeError

from rerank.server.errors import MalformedRequest, Overloaded, RerankError
from rerank.server.status import error_answer

logger = logging.getLogger(__name__)

_OPERATOR_CODES = frozenset(
    {grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN, grpc.StatusCode.UNAVAILABLE}
)
HEALTH_METHODS = frozenset({"/grpc.health.v1.Health/Check", "/grpc.health.v1.Health/Watch"})


if TYPE_CHECKING:
    # grpc's stubs make the interceptor generic; the runtime class is not subscriptable.
    ServerInterceptor = grpc.aio.ServerInterceptor[Any, Any]
else:
    ServerInterceptor = grpc.aio.ServerInterceptor


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
                incident = uuid.uuid4().hex[:12]
                logger.exception("%s failed unexpectedly (incident %s)", method, incident)
                await context.abort(
                    grpc.StatusCode.INTERNAL, f"internal error (incident {incident})"
                )

        self._guarded[method] = grpc.unary_unary_rpc_method_handler(
            guard,
            request_deserializer=_decoding(handler.request_deserializer),
            response_serializer=handler.response_serializer,
        )
        return self._guarded[method]


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
            # protobuf's text names the message type and what was wrong, e.g. "Error parsing
            # message with type 'rerank.v1.RerankRequest': String field had bad UTF-8".
            return _Undecodable(MalformedRequest(f"the request could not be decoded: {exc}"))

    return decode_or_explain


async def abort_with(
    context: grpc.aio.ServicerContext[Any, Any], method: str, error: RerankError
) -> NoReturn:
    """End the call with `error`'s answer from the one table: status, details, pushback."""
    answer = error_answer(error)
    # Failures of ours or upstream's deserve a warning; a caller's mistakes or a refusal under
    # overload are routine and would drown the log at WARNING.
    level = logging.WARNING if answer.code in _OPERATOR_CODES else logging.INFO
    logger.log(level, "%s failed: %s %s", method, answer.code.name, error.reason)
    await context.abort(answer.code, answer.message, trailing_metadata=answer.trailing_metadata)


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

    def __init__(self, limit: int, health_limit: int, health_methods: frozenset[str]) -> None:
        self._calls = _InFlight(limit)
        self._health = _InFlight(health_limit)
        self._health_methods = health_methods
        # grpc asks for a handler on every call, and the one below a method rarely changes:
        # the wrapped handler is kept per method for as long as the inner one is the same.
        self._wrapped: dict[str, tuple[grpc.RpcMethodHandler[Any, Any], Any]] = {}

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any]]
        ],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any]:
        method = handler_call_details.method
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        cached = self._wrapped.get(method)
        if cached is not None and cached[0] is handler:
            wrapped: grpc.RpcMethodHandler[Any, Any] = cached[1]
            return wrapped
        in_flight = self._health if method in self._health_methods else self._calls
        wrapped = _limited(handler, method, in_flight)
        self._wrapped[method] = (handler, wrapped)
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
    """Requires `authorization: Bearer <token>` with one of the configured tokens.

    Methods in `open_methods` (health checks, by default) pass without one. The token a caller
    sent is never logged or echoed.
    """

    def __init__(self, tokens: frozenset[str], open_methods: frozenset[str]) -> None:
        self._expected = [f"Bearer {token}".encode() for token in tokens]
        self._open_methods = open_methods

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any]]
        ],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any]:
        if handler_call_details.method in self._open_methods or self._authorized(
            handler_call_details
        ):
            return await continuation(handler_call_details)
        return _refusal(handler_call_details.method)

    def _authorized(self, details: grpc.HandlerCallDetails) -> bool:
        presented = b""
        for key, value in details.invocation_metadata or ():
            if key == "authorization":
                presented = value.encode() if isinstance(value, str) else value
        # Compare against every token, in constant time, so timing tells nothing.
        matches = [hmac.compare_digest(presented, expected) for expected in self._expected]
        return any(matches)


def _refusal(method: str) -> grpc.RpcMethodHandler[Any, Any]:
    async def refuse(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        logger.warning("%s refused: missing or unknown bearer token", method)
        await context.abort(
            grpc.StatusCode.UNAUTHENTICATED,
            "missing or unknown bearer token: send 'authorization: Bearer <token>'",
        )

    async def refuse_stream(
        requests: Any, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[Any]:
        await refuse(None, context)
        yield None  # pragma: no cover - abort raised above

    # The refusal must match the method's streaming shape or grpc cannot call it; we do not
    # know that shape without the real handler, so answer both ways (unary, and stream-stream
    # for reflection).
    if method.startswith("/grpc.reflection."):
        return grpc.stream_stream_rpc_method_handler(refuse_stream)
    if method.endswith("/Watch"):
        return grpc.unary_stream_rpc_method_handler(refuse_stream)
    return grpc.unary_unary_rpc_method_handler(refuse)
