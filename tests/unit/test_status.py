"""The one table from errors to statuses, and the rich details each status carries."""

from __future__ import annotations

import inspect

import grpc
import pytest
from google.rpc import error_details_pb2

from rerank.server import errors
from rerank.server.status import (
    ERROR_DOMAIN,
    STATUS_BY_ERROR,
    error_answer,
    rich_status,
    status_code_for,
)


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
