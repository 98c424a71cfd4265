"""Every failure the server knows how to explain, in one tree.

```
RerankError                      something a caller should hear about
├── InvalidRequest               our own validation failed; names the field
├── MalformedRequest             the bytes are not the method's request message
├── Overloaded                   the server refused work it has no room for
├── LimitsUnavailable            the shared limits cannot be checked, and must be (fail closed)
├── Unauthenticated              no known bearer token (nor a client certificate naming a caller)
├── NotANamedCaller              a question only a named caller can ask (GetUsage)
├── CallerRefused                a named caller's own rules refused the call
│   ├── ModelNotAllowed          a model outside the caller's `models`
│   ├── CallerRateLimited        over its rate or its concurrent calls: retry after `retry_after`
│   └── CallerBudgetExhausted    today's spend reached its budget: retry after UTC midnight
└── UpstreamError                the gateway, or the way to it, failed
    ├── UpstreamTimeout          no answer within the call's deadline
    ├── UpstreamUnavailable      5xx, refused/reset connection: worth retrying later
    ├── UpstreamRateLimited      429 rate_limit_exceeded: retry after `retry_after`
    ├── UpstreamInvalidRequest   400 invalid_request_error: the gateway rejected the input
    ├── UpstreamForbidden        403 forbidden
    ├── ModelNotFound            404 model_not_found
    ├── UpstreamNotFound         404 not_found (v4): a resource other than a model is missing
    ├── UpstreamFailedDependency 424 failed_dependency: the provider behind the gateway failed
    ├── UpstreamAuthentication   401 authentication_error: *our* key is wrong
    └── UpstreamProtocolError    an answer outside the protocol (bad JSON, bad ranking, ...)
```

The gateway adapter is the only place HTTP outcomes become these errors, and `_status.py` is
the only place these errors become gRPC status codes. Each class's `reason` (its
`ErrorInfo.reason`) is a value of the contract's `ErrorReason`, in its wire form; a test checks
that every value is some class's and every class's is a value. Messages are safe to show a
caller: they never hold a credential or a Python repr of an internal object.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from rerank.contract import wire_reason
from rerank.v1.rerank_service_pb2 import ErrorReason


@dataclass(frozen=True)
class FieldViolation:
    """One invalid field of a request, e.g. `documents[17]`: `must not be empty`."""

    field: str
    description: str


class RerankError(Exception):
    """Base of every error the server reports to callers on purpose."""

    #: Why, as the caller reads it in `ErrorInfo.reason`: an `ErrorReason` in its wire form
    #: (`wire_reason`). Each class raised says its own; this base and `CallerRefused`, never
    #: raised themselves, have none.
    reason: ClassVar[str]

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidRequest(RerankError):
    """`violations` name the fields."""

    reason = wire_reason(ErrorReason.ERROR_REASON_INVALID_REQUEST)

    def __init__(self, violations: list[FieldViolation]) -> None:
        super().__init__("; ".join(f"{v.field}: {v.description}" for v in violations))
        self.violations = tuple(violations)


class MalformedRequest(RerankError):
    """Nothing was decoded, so no field can be named; the message says what protobuf found
    wrong."""

    reason = wire_reason(ErrorReason.ERROR_REASON_MALFORMED_REQUEST)

    @classmethod
    def of(cls, decode_error: Exception) -> MalformedRequest:
        """The error for protobuf's `DecodeError`, whose text names the message type and what
        was wrong."""
        return cls(f"the request could not be decoded: {decode_error}")


class Overloaded(RerankError):
    reason = wire_reason(ErrorReason.ERROR_REASON_OVERLOADED)


class LimitsUnavailable(RerankError):
    """Only with `RERANK_LIMITS_FAIL_CLOSED=1`: without it such calls go on, counted in the
    process."""

    reason = wire_reason(ErrorReason.ERROR_REASON_LIMITS_UNAVAILABLE)


class Unauthenticated(RerankError):
    """The message never repeats what was presented."""

    reason = wire_reason(ErrorReason.ERROR_REASON_UNAUTHENTICATED)


class NotANamedCaller(RerankError):
    reason = wire_reason(ErrorReason.ERROR_REASON_NOT_A_NAMED_CALLER)


class CallerRefused(RerankError):
    """Never raised itself: each subclass says which rule, and has its own reason."""

    def __init__(
        self, message: str, *, caller: str, retry_after: float | None = None, **details: str
    ) -> None:
        super().__init__(message)
        self.caller = caller
        #: Seconds until trying again can help; None when waiting does not.
        self.retry_after = retry_after
        #: ErrorInfo metadata: the caller's name and what limit it met.
        self.metadata = {"caller": caller, **details}


class ModelNotAllowed(CallerRefused):
    reason = wire_reason(ErrorReason.ERROR_REASON_MODEL_NOT_ALLOWED)


class CallerRateLimited(CallerRefused):
    reason = wire_reason(ErrorReason.ERROR_REASON_CALLER_RATE_LIMITED)


class CallerBudgetExhausted(CallerRefused):
    reason = wire_reason(ErrorReason.ERROR_REASON_CALLER_BUDGET_EXHAUSTED)


class UpstreamError(RerankError):
    """`status` is the HTTP status, when there was one."""

    reason = wire_reason(ErrorReason.ERROR_REASON_UPSTREAM_ERROR)

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        retry_after: float | None = None,
        generation_id: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        #: Seconds the gateway asked us to wait before trying again, when it said.
        self.retry_after = retry_after
        #: The gateway's id of the failed generation, for support requests.
        self.generation_id = generation_id


class UpstreamTimeout(UpstreamError):
    reason = wire_reason(ErrorReason.ERROR_REASON_UPSTREAM_TIMEOUT)


class UpstreamUnavailable(UpstreamError):
    reason = wire_reason(ErrorReason.ERROR_REASON_UPSTREAM_UNAVAILABLE)


class UpstreamRateLimited(UpstreamError):
    reason = wire_reason(ErrorReason.ERROR_REASON_UPSTREAM_RATE_LIMITED)


class UpstreamInvalidRequest(UpstreamError):
    reason = wire_reason(ErrorReason.ERROR_REASON_UPSTREAM_INVALID_REQUEST)


class UpstreamForbidden(UpstreamError):
    reason = wire_reason(ErrorReason.ERROR_REASON_UPSTREAM_FORBIDDEN)


class ModelNotFound(UpstreamError):
    reason = wire_reason(ErrorReason.ERROR_REASON_MODEL_NOT_FOUND)


class UpstreamNotFound(UpstreamError):
    reason = wire_reason(ErrorReason.ERROR_REASON_UPSTREAM_NOT_FOUND)


class UpstreamFailedDependency(UpstreamError):
    reason = wire_reason(ErrorReason.ERROR_REASON_UPSTREAM_FAILED_DEPENDENCY)


class UpstreamAuthentication(UpstreamError):
    reason = wire_reason(ErrorReason.ERROR_REASON_UPSTREAM_AUTHENTICATION)


class UpstreamProtocolError(UpstreamError):
    reason = wire_reason(ErrorReason.ERROR_REASON_UPSTREAM_PROTOCOL_ERROR)
