"""`rerank_many`, sync and async, against the scripted fake RerankService on loopback gRPC
servers: the request it builds, and each result as `rerank` would have returned or raised it."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import grpc
import grpc.aio
import pytest
from google.rpc import status_pb2

from rerank.client import (
    AsyncRerankClient,
    BatchItem,
    DeadlineExceededError,
    InvalidRequestError,
    OverloadedError,
    RerankClient,
    RerankClientError,
    RerankRequest,
    RerankResult,
    ServerError,
    UnavailableError,
    from_status,
)
from rerank.v1 import rerank_service_pb2 as pb
from rerank.v1 import rerank_service_pb2_grpc as pb_grpc

from .client_fakes import (
    SERVER_OPTIONS,
    Abort,
    AsyncFakeRerankService,
    Delay,
    FakeRerankService,
    bad_request,
    default_rerank_response,
    error_info,
    retry_info,
    serve,
)


@pytest.fixture
def service() -> FakeRerankService:
    return FakeRerankService()


@pytest.fixture
def rerank_client(service: FakeRerankService) -> Iterator[RerankClient]:
    # No service config: an UNAVAILABLE must reach us on the first attempt.
    with serve(service) as target, RerankClient(target, timeout=10, service_config=None) as c:
        yield c


def status_of(abort: Abort) -> status_pb2.Status:
    """The `google.rpc.Status` a failed call with `abort` carries in its trailers."""
    status = status_pb2.Status(code=abort.code.value[0], message=abort.message)
    for detail in abort.details:
        status.details.add().Pack(detail)
    return status


def failed(abort: Abort) -> pb.BatchRerankResult:
    return pb.BatchRerankResult(error=status_of(abort))


def summary(error: RerankClientError) -> tuple[Any, ...]:
    return (
        type(error),
        error.code,
        error.details,
        error.error_info,
        error.retry_delay,
        error.field_violations,
    )


TWO = [
    RerankRequest("capital of France?", ["Paris", "Berlin"], model="cohere/rerank-v3.5"),
    RerankRequest(
        "which", [{"title": "A", "year": 2020}], top_n=1, provider_options={"cohere": {"x": 1}}
    ),
]


def test_each_request_is_built_as_rerank_builds_it(
    rerank_client: RerankClient, service: FakeRerankService
) -> None:
    rerank_client.rerank_many(TWO)
    for request in TWO:
        rerank_client.rerank(
            request.query,
            request.documents,
            model=request.model,
            top_n=request.top_n,
            provider_options=request.provider_options,
            bypass_cache=request.bypass_cache,
        )
    batch, *alone = service.requests
    assert isinstance(batch, pb.BatchRerankRequest)
    assert list(batch.requests) == alone


def test_results_come_back_in_order(rerank_client: RerankClient) -> None:
    items = rerank_client.rerank_many(TWO)
    assert [item.ok for item in items] == [True, True]
    first, second = (item.unwrap() for item in items)
    assert first.reranked_documents == ("Berlin", "Paris")  # the fake ranks last-first
    assert second.reranked_documents == ({"title": "A", "year": 2020},)


# Every kind of failure a request can meet, with the details the server attaches to it.
RESOURCE_EXHAUSTED = grpc.StatusCode.RESOURCE_EXHAUSTED
ABORTS = [
    Abort(
        grpc.StatusCode.INVALID_ARGUMENT,
        "query: must not be empty",
        [bad_request(("query", "must not be empty")), error_info("INVALID_REQUEST")],
    ),
    Abort(RESOURCE_EXHAUSTED, "full", [error_info("OVERLOADED"), retry_info(1)]),
    Abort(RESOURCE_EXHAUSTED, "429", [error_info("UPSTREAM_RATE_LIMITED"), retry_info(2.5)]),
    Abort(grpc.StatusCode.NOT_FOUND, "no model", [error_info("MODEL_NOT_FOUND", status="404")]),
    Abort(grpc.StatusCode.UNAVAILABLE, "down", [error_info("UPSTREAM_UNAVAILABLE"), retry_info(1)]),
    Abort(grpc.StatusCode.DEADLINE_EXCEEDED, "too late", [error_info("UPSTREAM_TIMEOUT")]),
    Abort(grpc.StatusCode.PERMISSION_DENIED, "forbidden", [error_info("UPSTREAM_FORBIDDEN")]),
    Abort(grpc.StatusCode.INTERNAL, "internal error (incident 123)"),
    Abort(grpc.StatusCode.UNKNOWN, "odd", [error_info("UPSTREAM_ERROR")]),
]


@pytest.mark.parametrize("abort", ABORTS, ids=[f"{a.code.name}-{a.message}" for a in ABORTS])
def test_a_failed_request_is_the_exception_rerank_would_have_raised(
    rerank_client: RerankClient, service: FakeRerankService, abort: Abort
) -> None:
    service.script.append(abort)
    with pytest.raises(RerankClientError) as raised:
        rerank_client.rerank("q", ["a"])
    service.script.append(
        pb.BatchRerankResponse(
            results=[
                pb.BatchRerankResult(response=default_rerank_response(pb.RerankRequest())),
                failed(abort),
            ]
        )
    )
    answered, item = rerank_client.rerank_many([RerankRequest("q", []), RerankRequest("q", ["a"])])
    assert isinstance(answered.result, RerankResult)
    assert item.result is None
    assert item.error is not None
    assert not item.ok
    assert summary(item.error) == summary(raised.value)
    with pytest.raises(type(raised.value)) as unwrapped:
        item.unwrap()
    assert unwrapped.value is item.error


def test_a_status_without_an_error_code_is_unknown() -> None:
    for code in (0, 99):
        error = from_status(status_pb2.Status(code=code, message="what"))
        assert summary(error) == (ServerError, grpc.StatusCode.UNKNOWN, "what", None, None, [])


def test_a_result_with_neither_response_nor_error_fails_alone(
    rerank_client: RerankClient, service: FakeRerankService
) -> None:
    service.script.append(
        pb.BatchRerankResponse(
            results=[pb.BatchRerankResult(), pb.BatchRerankResult(response=pb.RerankResponse())]
        )
    )
    unknown, fine = rerank_client.rerank_many(TWO)
    assert isinstance(unknown.error, ServerError)
    assert unknown.error.code is grpc.StatusCode.UNKNOWN
    assert fine.ok


def test_a_count_of_results_unlike_the_requests_fails_the_call(
    rerank_client: RerankClient, service: FakeRerankService
) -> None:
    service.script.append(pb.BatchRerankResponse(results=[pb.BatchRerankResult()]))
    with pytest.raises(ServerError, match="1 results to 2 requests"):
        rerank_client.rerank_many(TWO)


def test_a_failure_of_the_whole_call_is_raised(
    rerank_client: RerankClient, service: FakeRerankService
) -> None:
    too_many = Abort(
        grpc.StatusCode.INVALID_ARGUMENT,
        "requests: holds 101 requests; at most 100 allowed",
        [bad_request(("requests", "holds 101 requests; at most 100 allowed"))],
    )
    service.script.append(too_many)
    with pytest.raises(InvalidRequestError) as caught:
        rerank_client.rerank_many(TWO)
    assert caught.value.field_violations == [
        ("requests", "holds 101 requests; at most 100 allowed")
    ]
    assert isinstance(caught.value.__cause__, grpc.RpcError)


def test_requests_that_cannot_be_built_are_type_errors_before_any_call(
    rerank_client: RerankClient, service: FakeRerankService
) -> None:
    with pytest.raises(TypeError, match=r"^requests\[1\]: documents\[0\]: expected str"):
        rerank_client.rerank_many([TWO[0], RerankRequest("q", [3])])  # type: ignore[list-item]
    with pytest.raises(TypeError, match=r"^requests\[0\]: expected a RerankRequest, got tuple"):
        rerank_client.rerank_many([("q", ["a"])])  # type: ignore[list-item]
    assert service.requests == []


def test_an_empty_batch_is_sent_and_answered_empty(
    rerank_client: RerankClient, service: FakeRerankService
) -> None:
    assert rerank_client.rerank_many([]) == []
    assert service.requests == [pb.BatchRerankRequest()]


def test_timeout_and_metadata_apply_to_the_call(service: FakeRerankService) -> None:
    service.script.extend([Delay(5), Delay(5)])
    with serve(service) as target:
        with (
            RerankClient(target, metadata={"authorization": "Bearer t"}) as c,
            pytest.raises(DeadlineExceededError),
        ):
            c.rerank_many(TWO, timeout=0.1)
        assert service.metadata[0]["authorization"] == "Bearer t"
        with RerankClient(target, timeout=0.1) as c, pytest.raises(DeadlineExceededError):
            c.rerank_many(TWO)


def test_an_item_as_json() -> None:
    error = from_status(
        status_of(Abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "full", [error_info("OVERLOADED")]))
    )
    assert BatchItem(error=error).to_json_dict() == {
        "error": {
            "code": "RESOURCE_EXHAUSTED",
            "message": "full",
            "reason": "OVERLOADED",
            "fieldViolations": [],
            "retryDelay": None,
        }
    }
    result = RerankResult(ranking=(), model="m", id="rr_1")
    assert BatchItem(result=result).to_json_dict() == result.to_json_dict()


# --- the async client -------------------------------------------------------------------------


@pytest.fixture
async def async_service() -> AsyncFakeRerankService:
    return AsyncFakeRerankService()


@pytest.fixture
async def async_client(async_service: AsyncFakeRerankService) -> AsyncIterator[AsyncRerankClient]:
    server = grpc.aio.server(options=SERVER_OPTIONS)
    pb_grpc.add_RerankServiceServicer_to_server(async_service, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with AsyncRerankClient(f"127.0.0.1:{port}", timeout=10) as c:
            yield c
    finally:
        await server.stop(None)


async def test_async_rerank_many_answers_each_request(
    async_client: AsyncRerankClient, async_service: AsyncFakeRerankService
) -> None:
    overloaded = Abort(
        grpc.StatusCode.RESOURCE_EXHAUSTED, "full", [error_info("OVERLOADED"), retry_info(1)]
    )
    async_service.script.append(
        pb.BatchRerankResponse(
            results=[
                pb.BatchRerankResult(response=default_rerank_response(pb.RerankRequest())),
                failed(overloaded),
            ]
        )
    )
    answered, refused = await async_client.rerank_many(TWO)
    assert answered.unwrap().ranking == ()
    assert isinstance(refused.error, OverloadedError)
    assert refused.error.retry_delay == 1.0
    (batch,) = async_service.requests
    assert isinstance(batch, pb.BatchRerankRequest)
    assert [r.query for r in batch.requests] == [r.query for r in TWO]


async def test_async_whole_call_failures_are_raised(
    async_client: AsyncRerankClient, async_service: AsyncFakeRerankService
) -> None:
    async_service.script.append(Abort(grpc.StatusCode.UNAVAILABLE, "restarting"))
    async_service.script.append(Abort(grpc.StatusCode.UNAVAILABLE, "restarting"))
    async_service.script.append(Abort(grpc.StatusCode.UNAVAILABLE, "restarting"))
    with pytest.raises(UnavailableError):
        await async_client.rerank_many(TWO)
    assert len(async_service.requests) == 3  # the shipped service config retries the hop
    items = await async_client.rerank_many(TWO)
    assert [item.ok for item in items] == [True, True]
