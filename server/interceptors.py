"""The server's interceptors: authentication first, then errors into statuses.

`AuthInterceptor` refuses calls without a known bearer token before any handler runs;
`ErrorInterceptor` turns every `RerankError` into its status through the one table in
`rerank.server.status`, and any other exception into INTERNAL with an incident id; bytes that
do not decode as the method's request become `MalformedRequest` (INVALID_ARGUMENT) there too.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any

import grpc
from google.protobuf.message import DecodeError

from rerank.server.errors import MalformedRequest, RerankError
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
                answer = error_answer(error)
                log_failure(method, answer.code, error)
                await context.abort(
                    answer.code, answer.message, trailing_metadata=answer.trailing_metadata
                )
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
    """Log the exception being handled (a bug) with its traceback under a new incident id, and
    return the message the caller gets instead of the exception's text (with INTERNAL)."""
    incident = uuid.uuid4().hex[:12]
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
            # protobuf's text names the message type and what was wrong, e.g. "Error parsing
            # message with type 'rerank.v1.RerankRequest': String field had bad UTF-8".
            return _Undecodable(MalformedRequest(f"the request could not be decoded: {exc}"))

    return decode_or_explain


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
