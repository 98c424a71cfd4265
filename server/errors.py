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

The gateway adapter is the only place HTTP outcomes become these errors, and `status.py` is
the only place these errors become gRPC status codes. Messages are safe to show a caller:
they never hold a credential or a Python repr of an internal object.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class FieldViolation:
    """One invalid field of a request, e.g. `documents[17]`: `must not be empty`."""

    field: str
    description: str


class RerankError(Exception):
    """Base of every error the server reports to callers on purpose."""

    #: A stable, machine-readable reason (ErrorInfo.reason), UPPER_SNAKE_CASE.
    reason = "RERANK_ERROR"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidRequest(RerankError):
    """The request broke a rule of the contract; `violations` name the fields."""

    reason = "INVALID_REQUEST"

    def __init__(self, violations: list[FieldViolation]) -> None:
        super().__init__("; ".join(f"{v.field}: {v.description}" for v in violations))
        self.violations = tuple(violations)


class MalformedRequest(RerankError):
    """The bytes received do not decode as the method's request message: not protobuf, cut
    short, or a string field that is not UTF-8. gRPC hands them to no handler, so no field
    can be named; the message says what protobuf found wrong."""

    reason = "MALFORMED_REQUEST"


class Overloaded(RerankError):
    """The server is at its admission limit and refused the call at once."""

    reason = "OVERLOADED"


class LimitsUnavailable(RerankError):
    """The per-caller limits live in a Redis that cannot be reached (or did not answer in
    time), and `RERANK_LIMITS_FAIL_CLOSED=1` says to refuse calls rather than let them go on
    unchecked. Without that setting such calls go on, counted in the process."""

    reason = "LIMITS_UNAVAILABLE"


class Unauthenticated(RerankError):
    """The call carries no bearer token anybody holds, nor a client certificate that names a
    caller. The message never repeats what was presented."""

    reason = "UNAUTHENTICATED"


class NotANamedCaller(RerankError):
    """Only a caller of `RERANK_CALLERS_FILE` has a standing to ask about (GetUsage)."""

    reason = "NOT_A_NAMED_CALLER"


class CallerRefused(RerankError):
    """A named caller's own rules (`RERANK_CALLERS_FILE`) refused its call."""

    reason = "CALLER_REFUSED"

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
    """The model is not among the caller's `models`."""

    reason = "MODEL_NOT_ALLOWED"


class CallerRateLimited(CallerRefused):
    """The caller is over its `requests_per_second` (and `burst`) or `max_concurrent_calls`."""

    reason = "CALLER_RATE_LIMITED"


class CallerBudgetExhausted(CallerRefused):
    """The caller's spend today has reached its `daily_budget_usd`; a new UTC day resets it."""

    reason = "CALLER_BUDGET_EXHAUSTED"


class UpstreamError(RerankError):
    """The gateway failed to rank; `status` is the HTTP status when there was one."""

    reason = "UPSTREAM_ERROR"

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
    """The gateway did not answer within the time the call had left."""

    reason = "UPSTREAM_TIMEOUT"


class UpstreamUnavailable(UpstreamError):
    """The gateway could not be reached or failed on its side (5xx)."""

    reason = "UPSTREAM_UNAVAILABLE"


class UpstreamRateLimited(UpstreamError):
    """The gateway rate-limited us (429)."""

    reason = "UPSTREAM_RATE_LIMITED"


class UpstreamInvalidRequest(UpstreamError):
    """The gateway judged the request invalid (400 invalid_request_error)."""

    reason = "UPSTREAM_INVALID_REQUEST"


class UpstreamForbidden(UpstreamError):
    """The gateway forbade the call (403 forbidden), e.g. by a team rule."""

    reason = "UPSTREAM_FORBIDDEN"


class ModelNotFound(UpstreamError):
    """The gateway does not know the model (404 model_not_found)."""

    reason = "MODEL_NOT_FOUND"


class UpstreamNotFound(UpstreamError):
    """The gateway lacks a resource other than the model (404 not_found, protocol v4), e.g. a
    team or a configuration the call names; `ModelNotFound` is the model's own case."""

    reason = "UPSTREAM_NOT_FOUND"


class UpstreamFailedDependency(UpstreamError):
    """The provider behind the gateway failed the call (424 failed_dependency)."""

    reason = "UPSTREAM_FAILED_DEPENDENCY"


class UpstreamAuthentication(UpstreamError):
    """The gateway rejected this server's credentials (401): an operator must fix it."""

    reason = "UPSTREAM_AUTHENTICATION"


class UpstreamProtocolError(UpstreamError):
    """The gateway answered outside its protocol: unparsable or inconsistent."""

    reason = "UPSTREAM_PROTOCOL_ERROR"
