"""The one table from errors to statuses, and the rich details each status carries."""

from __future__ import annotations

import inspect

import grpc
import pytest
from google.rpc import error_details_pb2

from rerank.contract import error_reason, wire_reason
from rerank.server import _errors as errors
from rerank.server._status import (
    ERROR_DOMAIN,
    STATUS_BY_ERROR,
    error_answer,
    rich_status,
    status_code_for,
)
from rerank.v1.rerank_service_pb2 import ErrorReason


def all_error_classes() -> list[type[errors.RerankError]]:
    return [
        cls
        for _, cls in inspect.getmembers(errors, inspect.isclass)
        if issubclass(cls, errors.RerankError)
    ]


@pytest.mark.parametrize("cls", all_error_classes(), ids=lambda cls: cls.__name__)
def test_every_error_class_has_its_own_row(cls: type[errors.RerankError]) -> None:
    assert cls in STATUS_BY_ERROR


def test_a_subclass_without_a_row_falls_back_to_its_parent() -> None:
    class Newer(errors.UpstreamUnavailable):
        pass

    assert status_code_for(Newer("x")) is grpc.StatusCode.UNAVAILABLE


def unpack(status_details: list[object], kind: type) -> list[object]:
    found = []
    for holder in status_details:
        if holder.Is(kind.DESCRIPTOR):  # type: ignore[attr-defined]
            message = kind()
            holder.Unpack(message)  # type: ignore[attr-defined]
            found.append(message)
    return found


def test_invalid_request_carries_field_violations_and_error_info() -> None:
    error = errors.InvalidRequest(
        [
            errors.FieldViolation("documents[17]", "must not be empty"),
            errors.FieldViolation("top_n", "must be at least 1"),
        ]
    )
    code, status = rich_status(error)
    assert code is grpc.StatusCode.INVALID_ARGUMENT
    assert status.code == 3
    assert "documents[17]: must not be empty" in status.message
    (bad,) = unpack(list(status.details), error_details_pb2.BadRequest)
    assert [(v.field, v.description) for v in bad.field_violations] == [  # type: ignore[attr-defined]
        ("documents[17]", "must not be empty"),
        ("top_n", "must be at least 1"),
    ]
    (info,) = unpack(list(status.details), error_details_pb2.ErrorInfo)
    assert info.reason == "INVALID_REQUEST"  # type: ignore[attr-defined]
    assert info.domain == ERROR_DOMAIN  # type: ignore[attr-defined]
    assert not unpack(list(status.details), error_details_pb2.RetryInfo)


def test_rate_limit_carries_the_gateways_delay_and_status() -> None:
    error = errors.UpstreamRateLimited(
        "slow down", status=429, retry_after=2.5, generation_id="gen_1"
    )
    code, status = rich_status(error)
    assert code is grpc.StatusCode.RESOURCE_EXHAUSTED
    (retry,) = unpack(list(status.details), error_details_pb2.RetryInfo)
    assert retry.retry_delay.ToNanoseconds() == 2_500_000_000  # type: ignore[attr-defined]
    (info,) = unpack(list(status.details), error_details_pb2.ErrorInfo)
    assert dict(info.metadata) == {"upstream_status": "429", "generation_id": "gen_1"}  # type: ignore[attr-defined]


def test_unavailable_without_a_delay_still_suggests_one() -> None:
    _, status = rich_status(errors.UpstreamUnavailable("down", status=503))
    (retry,) = unpack(list(status.details), error_details_pb2.RetryInfo)
    assert retry.retry_delay.ToNanoseconds() > 0  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("error", "pushback"),
    [
        # Refused before any gateway call: a client's retry policy may come back after the delay.
        (errors.Overloaded("full"), "1000"),
        # The server's own retry layer owns the gateway: clients are told not to retry again.
        (errors.UpstreamRateLimited("slow down", status=429, retry_after=2.5), "-1"),
        (errors.UpstreamUnavailable("down", status=503), "-1"),
        (errors.UpstreamUnavailable("circuit open", retry_after=4.0), "-1"),
        # No RetryInfo, no pushback: retrying is not what these need.
        (errors.InvalidRequest([errors.FieldViolation("query", "must not be empty")]), None),
        (errors.UpstreamTimeout("slow"), None),
        (errors.UpstreamFailedDependency("provider failed", status=424), None),
    ],
    ids=lambda value: type(value).__name__ if isinstance(value, Exception) else str(value),
)
def test_a_retry_pushback_goes_with_every_retry_info(
    error: errors.RerankError, pushback: str | None
) -> None:
    answer = error_answer(error)
    trailers = dict(answer.trailing_metadata)
    assert trailers.get("grpc-retry-pushback-ms") == pushback
    status = rich_status(error)[1]
    assert trailers["grpc-status-details-bin"] == status.SerializeToString()
    has_retry_info = bool(unpack(list(status.details), error_details_pb2.RetryInfo))
    assert has_retry_info == (pushback is not None)


def test_a_failed_dependency_is_internal_not_a_precondition_for_the_caller() -> None:
    """gRPC's guide: FAILED_PRECONDITION means "fix the system's state, then retry", a state the
    caller could fix; UNAVAILABLE invites a retry, which the gateway says will not help."""
    assert status_code_for(errors.UpstreamFailedDependency("x", status=424)) is (
        grpc.StatusCode.INTERNAL
    )


def test_both_not_founds_are_not_found_with_their_own_reasons() -> None:
    infos = []
    for error in (errors.ModelNotFound("m", status=404), errors.UpstreamNotFound("t", status=404)):
        code, status = rich_status(error)
        assert code is grpc.StatusCode.NOT_FOUND
        (info,) = unpack(list(status.details), error_details_pb2.ErrorInfo)
        infos.append(info.reason)  # type: ignore[attr-defined]
    assert infos == ["MODEL_NOT_FOUND", "UPSTREAM_NOT_FOUND"]


# The reasons the service sent before they became the contract's `ErrorReason`: the wire form
# of the enum must keep them exactly, or a caller that reads the strings would break.
REASONS_ON_THE_WIRE_BEFORE_THE_ENUM = {
    "INVALID_REQUEST",
    "MALFORMED_REQUEST",
    "OVERLOADED",
    "UPSTREAM_ERROR",
    "UPSTREAM_TIMEOUT",
    "UPSTREAM_UNAVAILABLE",
    "UPSTREAM_RATE_LIMITED",
    "UPSTREAM_INVALID_REQUEST",
    "UPSTREAM_FORBIDDEN",
    "MODEL_NOT_FOUND",
    "UPSTREAM_NOT_FOUND",
    "UPSTREAM_FAILED_DEPENDENCY",
    "UPSTREAM_AUTHENTICATION",
    "UPSTREAM_PROTOCOL_ERROR",
    "LIMITS_UNAVAILABLE",
    "UNAUTHENTICATED",
    "NOT_A_NAMED_CALLER",
    "MODEL_NOT_ALLOWED",
    "CALLER_RATE_LIMITED",
    "CALLER_BUDGET_EXHAUSTED",
}


def raised_classes() -> list[type[errors.RerankError]]:
    """The classes raised: those that say their own reason (not the bases of others only)."""
    return [cls for cls in all_error_classes() if "reason" in vars(cls)]


def an_error(cls: type[errors.RerankError]) -> errors.RerankError:
    if issubclass(cls, errors.InvalidRequest):
        return cls([errors.FieldViolation("query", "must not be empty")])
    if issubclass(cls, errors.CallerRefused):
        return cls("x", caller="a-caller")
    return cls("x")


def reasons_the_server_sends() -> dict[str, type[errors.RerankError]]:
    """Each concrete error class's ErrorInfo reason (the base is never raised itself)."""
    sent: dict[str, type[errors.RerankError]] = {}
    for cls in raised_classes():
        assert cls.reason not in sent, f"{cls.__name__} and {sent[cls.reason].__name__}"
        sent[cls.reason] = cls
    return sent


def test_every_error_reason_is_a_reason_the_server_sends_and_vice_versa() -> None:
    defined = {
        wire_reason(value)
        for value in ErrorReason.values()
        if value != ErrorReason.ERROR_REASON_UNSPECIFIED
    }
    assert set(reasons_the_server_sends()) == defined


def test_the_reasons_on_the_wire_are_the_ones_sent_before_the_enum() -> None:
    assert set(reasons_the_server_sends()) == REASONS_ON_THE_WIRE_BEFORE_THE_ENUM


@pytest.mark.parametrize("value", ErrorReason.values(), ids=ErrorReason.Name)
def test_the_wire_form_maps_back_to_its_value(value: ErrorReason.ValueType) -> None:
    assert error_reason(wire_reason(value)) == value
    assert not wire_reason(value).startswith("ERROR_REASON_")


@pytest.mark.parametrize("wire", ["", "NOT_A_REASON", "ERROR_REASON_OVERLOADED", "overloaded"])
def test_a_reason_the_contract_does_not_define_reads_as_unspecified(wire: str) -> None:
    assert error_reason(wire) == ErrorReason.ERROR_REASON_UNSPECIFIED


def test_only_the_bases_say_no_reason_of_their_own() -> None:
    assert set(all_error_classes()) - set(raised_classes()) == {
        errors.RerankError,
        errors.CallerRefused,
    }


@pytest.mark.parametrize("cls", raised_classes(), ids=lambda c: c.__name__)
def test_the_error_info_carries_the_classs_reason(cls: type[errors.RerankError]) -> None:
    _, status = rich_status(an_error(cls))
    (info,) = unpack(list(status.details), error_details_pb2.ErrorInfo)
    assert error_reason(info.reason) != ErrorReason.ERROR_REASON_UNSPECIFIED  # type: ignore[attr-defined]
    assert info.reason == cls.reason  # type: ignore[attr-defined]
