"""The one table from `_errors` to gRPC status codes, the rich details sent along, and the
failures' log lines: a bug's with its traceback under an incident id.

Every status, its reason and what a caller does about it: docs/errors.md (made from this table).
"""

from __future__ import annotations

import logging
import math
import uuid
from collections.abc import Mapping
from dataclasses import dataclass

import grpc
from google.protobuf import duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2

from rerank.contract import ERROR_DOMAIN
from rerank.server import _errors as errors
from rerank.server._calls import CallRecord

logger = logging.getLogger(__name__)

#: Why each error gets its code: docs/errors.md. A test checks that every class has a row.
STATUS_BY_ERROR: Mapping[type[errors.RerankError], grpc.StatusCode] = {
    errors.RerankError: grpc.StatusCode.INTERNAL,
    errors.InvalidRequest: grpc.StatusCode.INVALID_ARGUMENT,
    errors.MalformedRequest: grpc.StatusCode.INVALID_ARGUMENT,
    errors.Overloaded: grpc.StatusCode.RESOURCE_EXHAUSTED,
    # Our own limits store is away: retrying later helps, as with any unavailable dependency.
    errors.LimitsUnavailable: grpc.StatusCode.UNAVAILABLE,
    errors.Unauthenticated: grpc.StatusCode.UNAUTHENTICATED,
    # A caller without a name has no standing to report: the server is not set up for it.
    errors.NotANamedCaller: grpc.StatusCode.FAILED_PRECONDITION,
    errors.CallerRefused: grpc.StatusCode.PERMISSION_DENIED,
    errors.ModelNotAllowed: grpc.StatusCode.PERMISSION_DENIED,
    # Waiting helps both: tokens refill, calls end, a new UTC day starts.
    errors.CallerRateLimited: grpc.StatusCode.RESOURCE_EXHAUSTED,
    errors.CallerBudgetExhausted: grpc.StatusCode.RESOURCE_EXHAUSTED,
    # An unknown error type from the gateway: it did not tell us enough to say more.
    errors.UpstreamError: grpc.StatusCode.UNKNOWN,
    errors.UpstreamTimeout: grpc.StatusCode.DEADLINE_EXCEEDED,
    errors.UpstreamUnavailable: grpc.StatusCode.UNAVAILABLE,
    errors.UpstreamRateLimited: grpc.StatusCode.RESOURCE_EXHAUSTED,
    errors.UpstreamInvalidRequest: grpc.StatusCode.INVALID_ARGUMENT,
    errors.UpstreamForbidden: grpc.StatusCode.PERMISSION_DENIED,
    errors.ModelNotFound: grpc.StatusCode.NOT_FOUND,
    errors.UpstreamNotFound: grpc.StatusCode.NOT_FOUND,
    # The provider behind the gateway failed, finally: not the caller's to fix, not worth a
    # blind retry (as FAILED_PRECONDITION or UNAVAILABLE would say).
    errors.UpstreamFailedDependency: grpc.StatusCode.INTERNAL,
    # Our own key is wrong: the caller can do nothing about it, an operator must.
    errors.UpstreamAuthentication: grpc.StatusCode.INTERNAL,
    errors.UpstreamProtocolError: grpc.StatusCode.INTERNAL,
}

# Failures of ours or upstream's deserve a warning; a caller's mistakes or a refusal under
# overload are routine and would drown the log at WARNING.
_OPERATOR_CODES = frozenset(
    {grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN, grpc.StatusCode.UNAVAILABLE}
)

# When the gateway gives no delay, callers still learn a sensible pause for these.
_DEFAULT_RETRY_DELAY: Mapping[grpc.StatusCode, float] = {
    grpc.StatusCode.UNAVAILABLE: 1.0,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 1.0,
}


def status_code_for(error: errors.RerankError) -> grpc.StatusCode:
    """The status of `error`: its own class's row, else its nearest ancestor's (`RerankError`'s
    at the last)."""
    return next(STATUS_BY_ERROR[c] for c in type(error).__mro__ if c in STATUS_BY_ERROR)


@dataclass(frozen=True)
class ErrorAnswer:
    """Everything the caller is sent for one error: status code, message, trailing metadata."""

    code: grpc.StatusCode
    message: str
    trailing_metadata: tuple[tuple[str, str | bytes], ...]


def error_answer(error: errors.RerankError) -> ErrorAnswer:
    """The answer to `error`: its status, the rich details, and a retry pushback with them."""
    code, status = rich_status(error)
    trailers: list[tuple[str, str | bytes]] = [
        ("grpc-status-details-bin", status.SerializeToString())
    ]
    if (delay := retry_delay(error, code)) is not None:
        # A gRPC client whose retry policy covers the code waits this long, or never retries
        # when it is negative (gRFC A6): one retry layer per hop, and ours has retried the
        # gateway. Our own refusals came before any gateway call: a retry costs it nothing.
        pushback = -1 if isinstance(error, errors.UpstreamError) else max(0, round(delay * 1000))
        trailers.append(("grpc-retry-pushback-ms", str(pushback)))
    return ErrorAnswer(code, status.message, tuple(trailers))


def retry_delay(error: errors.RerankError, code: grpc.StatusCode | None = None) -> float | None:
    """Seconds the caller should wait before trying again (the RetryInfo, and an HTTP
    dialect's `retry-after`), or None; `code`: the error's status, when known already."""
    code = status_code_for(error) if code is None else code
    own: float | None = getattr(error, "retry_after", None)  # the gateway's, or a limit's
    return _DEFAULT_RETRY_DELAY.get(code) if own is None else own


def retry_after_header(
    error: errors.RerankError | None, *, millis: bool = False
) -> list[tuple[bytes, bytes]]:
    """HTTP's `retry-after` for `error` (whole seconds, at least 1), when waiting helps; and,
    `millis`, the AI SDK's `retry-after-ms` beside it."""
    seconds = None if error is None else retry_delay(error)
    if seconds is None:
        return []
    headers = [(b"retry-after", str(max(1, math.ceil(seconds))).encode())]
    if millis:
        headers.append((b"retry-after-ms", str(max(0, round(seconds * 1000))).encode()))
    return headers


def rich_status(error: errors.RerankError) -> tuple[grpc.StatusCode, status_pb2.Status]:
    """The status code and the `google.rpc.Status` (with details) that answer `error`."""
    code = status_code_for(error)
    metadata: dict[str, str] = {}
    if isinstance(error, errors.UpstreamError):
        if error.status is not None:
            metadata["upstream_status"] = str(error.status)
        if error.generation_id:
            metadata["generation_id"] = error.generation_id
    elif isinstance(error, errors.CallerRefused):
        metadata.update(error.metadata)
    details = [
        error_details_pb2.ErrorInfo(reason=error.reason, domain=ERROR_DOMAIN, metadata=metadata)
    ]
    if isinstance(error, errors.InvalidRequest):
        violation = error_details_pb2.BadRequest.FieldViolation
        fields = [violation(field=v.field, description=v.description) for v in error.violations]
        details.append(error_details_pb2.BadRequest(field_violations=fields))
    if (retry_after := retry_delay(error, code)) is not None:
        delay = duration_pb2.Duration()
        delay.FromNanoseconds(int(retry_after * 1e9))
        details.append(error_details_pb2.RetryInfo(retry_delay=delay))
    status = status_pb2.Status(code=getattr(code_pb2, code.name), message=error.message)
    for detail in details:
        status.details.add().Pack(detail)
    return code, status


def log_failure(what: str, code: grpc.StatusCode, error: errors.RerankError) -> None:
    level = logging.WARNING if code in _OPERATOR_CODES else logging.INFO
    logger.log(level, "%s failed: %s %s", what, code.name, error.reason)


def report_incident(what: str, call: CallRecord) -> str:
    """Log the exception being handled (a bug) under a new incident id, noted in `call`; the
    message the caller gets instead of the exception's."""
    incident = call.incident = uuid.uuid4().hex[:12]
    logger.exception("%s failed unexpectedly (incident %s)", what, incident)
    return f"internal error (incident {incident})"
