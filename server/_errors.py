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

The gateway adapter is the only place HTTP outcomes become these errors, `_status.py` the only
place these errors become gRPC status codes. Each class's `reason` (`ErrorInfo.reason`) is the
contract's `ErrorReason` of its name (`UpstreamTimeout`: `UPSTREAM_TIMEOUT`); the two bases never
raised have none. Messages are safe to show a caller: never a credential or an internal repr.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import ClassVar

from rerank.contract import error_reason, wire_reason
from rerank.v1.rerank_service_pb2 import ErrorReason


@dataclass(frozen=True)
class FieldViolation:
    """One invalid field of a request, e.g. `documents[17]`: `must not be empty`."""

    field: str
    description: str


class RerankError(Exception):
    """Base of every error the server reports to callers on purpose."""

    reason: ClassVar[str]

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __init_subclass__(cls) -> None:
        wire = re.sub(r"(?<=.)([A-Z])", r"_\1", cls.__name__).upper()
        if error_reason(wire) != ErrorReason.ERROR_REASON_UNSPECIFIED:
            cls.reason = wire_reason(error_reason(wire))


class InvalidRequest(RerankError):
    """`violations` name the fields."""

    def __init__(self, violations: list[FieldViolation]) -> None:
        super().__init__("; ".join(f"{v.field}: {v.description}" for v in violations))
        self.violations = tuple(violations)


class MalformedRequest(RerankError):
    """Nothing was decoded, so no field can be named."""

    @classmethod
    def of(cls, decode_error: Exception) -> MalformedRequest:
        return cls(f"the request could not be decoded: {decode_error}")  # it names the type


class Overloaded(RerankError): ...


class LimitsUnavailable(RerankError): ...  # only with RERANK_LIMITS_FAIL_CLOSED=1


class Unauthenticated(RerankError): ...  # its message never repeats what was presented


class NotANamedCaller(RerankError): ...


class CallerRefused(RerankError):
    """Never raised itself: each subclass says which rule."""

    def __init__(
        self, message: str, *, caller: str, retry_after: float | None = None, **details: str
    ) -> None:
        super().__init__(message)
        self.caller = caller
        self.retry_after = retry_after  # seconds until trying again can help, if it can
        self.metadata = {"caller": caller, **details}  # ErrorInfo's: the caller, the limit met


class ModelNotAllowed(CallerRefused): ...


class CallerRateLimited(CallerRefused): ...


class CallerBudgetExhausted(CallerRefused): ...


class UpstreamError(RerankError):
    """`status`: the HTTP status, if any; `retry_after`: seconds the gateway asked us to wait;
    `generation_id`: the gateway's id of the failed generation, for support requests."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        retry_after: float | None = None,
        generation_id: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.retry_after, self.generation_id = status, retry_after, generation_id


class UpstreamTimeout(UpstreamError): ...


class UpstreamUnavailable(UpstreamError): ...


class UpstreamRateLimited(UpstreamError): ...


class UpstreamInvalidRequest(UpstreamError): ...


class UpstreamForbidden(UpstreamError): ...


class ModelNotFound(UpstreamError): ...


class UpstreamNotFound(UpstreamError): ...


class UpstreamFailedDependency(UpstreamError): ...


class UpstreamAuthentication(UpstreamError): ...


class UpstreamProtocolError(UpstreamError): ...
