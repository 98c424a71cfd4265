"""The errors the client raises, and the one place gRPC errors become them.

Every failed call raises a subclass of `RerankClientError`, chosen by the gRPC status code and,
where one code means several things, by the server's ErrorInfo reason (the contract's
`ErrorReason`, read through `rerank.contract.error_reason`)::

    RerankClientError              any failed RPC: code, details, and the rich details below
    ├── InvalidRequestError        INVALID_ARGUMENT    malformed request (see field_violations)
    ├── NotFoundError              NOT_FOUND           a model the gateway does not know (reason
    │                                                  MODEL_NOT_FOUND) or another resource it
    │                                                  lacks (UPSTREAM_NOT_FOUND)
    ├── RateLimitedError           RESOURCE_EXHAUSTED  wait `retry_delay`, then try again
    │   ├── OverloadedError          reason OVERLOADED: this server is at its limits
    │   └── UpstreamRateLimitedError reason UPSTREAM_RATE_LIMITED: the gateway limits us
    ├── MessageTooLargeError       RESOURCE_EXHAUSTED  by gRPC itself: a message over the size
    │                                                  limit; retrying cannot help, split it
    ├── UnavailableError           UNAVAILABLE         the server or its gateway is unreachable
    ├── DeadlineExceededError      DEADLINE_EXCEEDED   no answer within the call's deadline
    ├── PermissionDeniedError      PERMISSION_DENIED
    ├── UnauthenticatedError       UNAUTHENTICATED
    └── ServerError                INTERNAL, UNKNOWN and every other code

`from_rpc_error` is the only function that looks inside a `grpc.RpcError` (sync or aio); the
clients call it at their single boundary with the channel, so no gRPC exception escapes them.
`from_status` builds the same exception from a `google.rpc.Status` alone: a BatchRerank's
failed request carries one, and becomes what a Rerank of that request alone would have raised.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, cast

import grpc
from google.protobuf.message import DecodeError
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from rerank.contract import ERROR_DOMAIN, error_reason
from rerank.v1.rerank_service_pb2 import ErrorReason

__all__ = [
    "DeadlineExceededError",
    "ErrorInfo",
    "InvalidRequestError",
    "MessageTooLargeError",
    "NotFoundError",
    "OverloadedError",
    "PermissionDeniedError",
    "RateLimitedError",
    "RerankClientError",
    "ServerError",
    "UnauthenticatedError",
    "UnavailableError",
    "UpstreamRateLimitedError",
    "from_rpc_error",
    "from_status",
    "map_rpc_errors",
]


@dataclass(frozen=True, slots=True)
class ErrorInfo:
    """The `google.rpc.ErrorInfo` the server attached to an error: why, and in which domain."""

    reason: str
    """A machine-readable cause in UPPER_SNAKE_CASE as it came, e.g. `OVERLOADED`."""
    domain: str
    """The system that produced the reason: `rerank.v1` for this service's own."""
    metadata: dict[str, str] = field(default_factory=dict)
    """Further structured context, e.g. `{"upstream_status": "429"}`."""

    @property
    def error_reason(self) -> ErrorReason.ValueType:
        """`reason` as the contract's enum, e.g. `ErrorReason.ERROR_REASON_OVERLOADED`;
        `ERROR_REASON_UNSPECIFIED` for a reason of another domain or one this client's copy of
        the contract does not know (a newer server's)."""
        if self.domain != ERROR_DOMAIN:
            return ErrorReason.ERROR_REASON_UNSPECIFIED
        return error_reason(self.reason)


class RerankClientError(Exception):
    """A call to the rerank service failed.

    Attributes:
        code: The gRPC status code.
        details: The status message the server (or the local gRPC runtime) gave.
        error_info: The `google.rpc.ErrorInfo` detail, when the server sent one.
        retry_delay: Seconds the server asks the caller to wait before retrying
            (`google.rpc.RetryInfo`), when it sent one.
        field_violations: `(field, description)` pairs from a `google.rpc.BadRequest` detail,
            e.g. `("documents[17]", "must not be empty")`; empty when none were sent.
    """

    def __init__(
        self,
        code: grpc.StatusCode,
        details: str,
        *,
        error_info: ErrorInfo | None = None,
        retry_delay: float | None = None,
        field_violations: list[tuple[str, str]] | None = None,
    ) -> None:
        super().__init__(f"{code.name}: {details}")
        self.code = code
        self.details = details
        self.error_info = error_info
        self.retry_delay = retry_delay
        self.field_violations: list[tuple[str, str]] = list(field_violations or [])


class InvalidRequestError(RerankClientError):
    """INVALID_ARGUMENT: the request is malformed; `field_violations` names the fields."""


class NotFoundError(RerankClientError):
    """NOT_FOUND: the requested model does not exist (`error_info.error_reason`
    `ERROR_REASON_MODEL_NOT_FOUND`), or the gateway lacks another resource the call needs
    (`ERROR_REASON_UPSTREAM_NOT_FOUND`)."""


class RateLimitedError(RerankClientError):
    """RESOURCE_EXHAUSTED: come back later (after `retry_delay`, when the server sent one).

    The base of `OverloadedError` and `UpstreamRateLimitedError`; raised as itself for a
    RESOURCE_EXHAUSTED that says neither (e.g. from a proxy in between).
    """


class OverloadedError(RateLimitedError):
    """This server refused the call at once: it is at its limit of calls or bytes in flight.

    Nothing was sent to the gateway. Another replica may have room now; this one will after
    `retry_delay`.
    """


class UpstreamRateLimitedError(RateLimitedError):
    """The gateway rate-limited this server's calls (its 429), after the server's own retries.

    Every replica shares that limit: wait at least `retry_delay` (the gateway's own
    `retry-after` when it gave one) and send less.
    """


class MessageTooLargeError(RerankClientError):
    """RESOURCE_EXHAUSTED from gRPC itself: a message is over a side's size limit.

    gRPC refuses it before any handler runs, so there are no rich details; the client knows
    it from gRPC's status message. `size` and `limit` are in bytes (None when the message did
    not say). The same request will fail the same way: send fewer or smaller documents.
    """

    def __init__(self, code: grpc.StatusCode, details: str, **kwargs: Any) -> None:
        super().__init__(code, details, **kwargs)
        sizes = _TOO_LARGE.search(details)
        self.size = int(sizes.group(1)) if sizes else None
        self.limit = int(sizes.group(2)) if sizes else None


class UnavailableError(RerankClientError):
    """UNAVAILABLE: the server, or the gateway behind it, cannot be reached right now."""


class DeadlineExceededError(RerankClientError):
    """DEADLINE_EXCEEDED: no answer within the call's deadline."""


class PermissionDeniedError(RerankClientError):
    """PERMISSION_DENIED: the caller is not allowed to do this."""


class UnauthenticatedError(RerankClientError):
    """UNAUTHENTICATED: the call carried no valid credentials."""


class ServerError(RerankClientError):
    """INTERNAL, UNKNOWN or any other status: a fault the caller cannot fix by changing input."""


_ERROR_FOR_CODE: dict[grpc.StatusCode, type[RerankClientError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidRequestError,
    grpc.StatusCode.NOT_FOUND: NotFoundError,
    grpc.StatusCode.RESOURCE_EXHAUSTED: RateLimitedError,
    grpc.StatusCode.UNAVAILABLE: UnavailableError,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceededError,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDeniedError,
    grpc.StatusCode.UNAUTHENTICATED: UnauthenticatedError,
}


#: ErrorInfo reasons (domain `rerank.v1`) that refine a status code's class.
_ERROR_FOR_REASON: dict[ErrorReason.ValueType, type[RerankClientError]] = {
    ErrorReason.ERROR_REASON_OVERLOADED: OverloadedError,
    ErrorReason.ERROR_REASON_UPSTREAM_RATE_LIMITED: UpstreamRateLimitedError,
}

# How gRPC (C core, any side) words its refusal of an oversized message, e.g.
# "SERVER: Received message larger than max (1800243 vs. 1048576)" or
# "CLIENT: Sent message larger than max (1800243 vs. 100000)".
_TOO_LARGE = re.compile(r"message larger than max \((\d+) vs\. (\d+)\)")


def _error_class(
    code: grpc.StatusCode, details: str, error_info: ErrorInfo | None
) -> type[RerankClientError]:
    by_code = _ERROR_FOR_CODE.get(code, ServerError)
    if error_info is not None:
        by_reason = _ERROR_FOR_REASON.get(error_info.error_reason)
        # A reason only narrows its own code's class: a mismatch trusts the status line.
        if by_reason is not None and issubclass(by_reason, by_code):
            return by_reason
    if code is grpc.StatusCode.RESOURCE_EXHAUSTED and _TOO_LARGE.search(details):
        return MessageTooLargeError
    return by_code


def _rich_status(error: grpc.RpcError) -> status_pb2.Status | None:
    # Sync errors are grpc.Call objects; aio's AioRpcError is not, but has the same
    # `code()`/`details()`/`trailing_metadata()` methods, which is all `from_call` uses.
    if not callable(getattr(error, "trailing_metadata", None)):
        return None
    try:
        status = rpc_status.from_call(cast(grpc.Call, error))
    except (ValueError, DecodeError):
        # The details disagree with the status line, or do not parse (a misbehaving peer or
        # proxy): the status line is what gRPC itself acted on, so trust it and drop them.
        return None
    return cast(status_pb2.Status | None, status)


#: gRPC status codes by their number, as a `google.rpc.Status` carries them.
_CODE_BY_NUMBER: dict[int, grpc.StatusCode] = {code.value[0]: code for code in grpc.StatusCode}


def from_status(status: status_pb2.Status) -> RerankClientError:
    """Translate a `google.rpc.Status` into the client's tree, as `from_rpc_error` translates a
    call that failed with it: the same class, message and rich details.

    A code that is no gRPC error code (OK, or a number gRPC does not define) is UNKNOWN: the
    status says something failed but not how.
    """
    code = _CODE_BY_NUMBER.get(status.code, grpc.StatusCode.UNKNOWN)
    if code is grpc.StatusCode.OK:
        code = grpc.StatusCode.UNKNOWN
    return _from_parts(code, status.message, status)


def from_rpc_error(error: grpc.RpcError) -> RerankClientError:
    """Translate a `grpc.RpcError` (sync or `grpc.aio.AioRpcError`) into the client's tree.

    The status code picks the class, narrowed by the ErrorInfo reason or, for a message over
    the size limit, by gRPC's own status message; `google.rpc` details from the
    `grpc-status-details-bin` trailer (ErrorInfo, RetryInfo, BadRequest) fill its attributes.
    """
    code: Any = error.code() if callable(getattr(error, "code", None)) else None
    if not isinstance(code, grpc.StatusCode):
        # A bare RpcError without a status (never raised by grpcio itself): treat as unknown.
        code = grpc.StatusCode.UNKNOWN
    details = (error.details() if callable(getattr(error, "details", None)) else None) or ""
    return _from_parts(code, details, _rich_status(error))


def _from_parts(
    code: grpc.StatusCode, details: str, status: status_pb2.Status | None
) -> RerankClientError:
    """The exception for `code` and `details`, its attributes filled from `status`'s details."""
    error_info: ErrorInfo | None = None
    retry_delay: float | None = None
    violations: list[tuple[str, str]] = []
    if status is not None:
        for detail in status.details:
            if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                info = error_details_pb2.ErrorInfo()
                detail.Unpack(info)
                error_info = ErrorInfo(info.reason, info.domain, dict(info.metadata))
            elif detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
                retry = error_details_pb2.RetryInfo()
                detail.Unpack(retry)
                retry_delay = retry.retry_delay.ToTimedelta().total_seconds()
            elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
                bad_request = error_details_pb2.BadRequest()
                detail.Unpack(bad_request)
                violations.extend((v.field, v.description) for v in bad_request.field_violations)

    error_class = _error_class(code, details, error_info)
    return error_class(
        code,
        details,
        error_info=error_info,
        retry_delay=retry_delay,
        field_violations=violations,
    )


@contextmanager
def map_rpc_errors() -> Iterator[None]:
    """Re-raise any `grpc.RpcError` raised inside the block as a `RerankClientError`.

    A plain (sync) context manager works around `await` too, so both clients share it.
    """
    try:
        yield
    except grpc.RpcError as exc:
        raise from_rpc_error(exc) from exc
