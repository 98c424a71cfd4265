"""Hostile input from callers and a rude upstream: every answer is a documented status, the
ranking is never wrong, and the server stays up.

Callers: hypothesis generates requests (odd unicode, NUL, long strings, deep or huge objects,
NaN/Infinity inside Structs, extreme top_n, many documents). Upstream: every malformed body the
mock gateway can produce.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rerank.client import AsyncRerankClient, MessageTooLargeError, RateLimitedError
from rerank.mock_gateway import MALFORMED_VARIANTS
from rerank.server._app import RunningServer, start_server
from rerank.server._config import Settings
from rerank.v1 import rerank_service_pb2 as pb
from rerank.v1 import rerank_service_pb2_grpc as pb_grpc
from tests.service.calls import MESSAGE_LIMIT, fault, seed_request, unpacked
from tests.service.hostile import rerank_requests

# Bodies the server can put right (sort and cut) rather than refuse.
REPAIRABLE = {"unsorted", "too_many"}
# A valid ranking with a warning of a type the protocol does not define: warnings are advice,
# the ranking is the answer, so the call succeeds and the warning is passed on.
ADVICE_ONLY = {"unknown_warning"}


@pytest.fixture
async def running() -> AsyncIterator[RunningServer]:
    server = await start_server(Settings(port=0, grace_period=1, retry_initial_backoff=0.01))
    yield server
    await server.stop()


@pytest.fixture
async def stub(running: RunningServer) -> AsyncIterator[pb_grpc.RerankServiceStub]:
    async with grpc.aio.insecure_channel(
        f"127.0.0.1:{running.port}", options=MESSAGE_LIMIT
    ) as channel:
        yield pb_grpc.RerankServiceStub(channel)


@pytest.mark.parametrize("variant", MALFORMED_VARIANTS)
async def test_a_malformed_upstream_is_never_a_wrong_ranking(
    stub: pb_grpc.RerankServiceStub, variant: str
) -> None:
    request = seed_request(provider_options=fault(fault="malformed", variant=variant))
    try:
        response = await stub.Rerank(request, timeout=20)
    except grpc.aio.AioRpcError as error:
        assert variant not in REPAIRABLE | ADVICE_ONLY
        assert error.code() is grpc.StatusCode.INTERNAL
        info = unpacked(error, error_details_pb2.ErrorInfo)
        assert info.reason == "UPSTREAM_PROTOCOL_ERROR"
    else:
        assert variant in REPAIRABLE | ADVICE_ONLY, f"{variant} was accepted"
        assert [r.original_index for r in response.ranking][:1] == [0]
        assert len(response.ranking) == 2
        if variant in ADVICE_ONLY:
            assert response.warnings[-1].type == pb.Warning.TYPE_OTHER
            assert "unknown warning type" in response.warnings[-1].message
    assert (await stub.Rerank(seed_request(), timeout=10)).ranking  # still up


# --- generated requests -------------------------------------------------------------------


def assert_documented_refusal(request: pb.RerankRequest, error: grpc.aio.AioRpcError) -> None:
    """What docs/design/guarantees.md (hostile input) allows for a well-formed request: the
    invalid fields named, or NOT_FOUND for a model slug the gateway does not know."""
    code, details = error.code(), error.details() or ""
    info = unpacked(error, error_details_pb2.ErrorInfo)
    if code is grpc.StatusCode.INVALID_ARGUMENT and info.reason == "INVALID_REQUEST":
        bad = unpacked(error, error_details_pb2.BadRequest)
        assert bad.field_violations, details
        for violation in bad.field_violations:
            assert f"{violation.field}: {violation.description}" in details
        return
    if code is grpc.StatusCode.NOT_FOUND:
        assert info.reason == "MODEL_NOT_FOUND", details
        assert request.model not in ("", "cohere/rerank-v3.5"), details
        return
    raise AssertionError(f"undocumented answer to hostile input: {code.name} {details!r}")


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(request=rerank_requests())
async def test_generated_requests_get_documented_answers(
    request: pb.RerankRequest, stub: pb_grpc.RerankServiceStub
) -> None:
    try:
        response = await stub.Rerank(request, timeout=20)
    except grpc.aio.AioRpcError as error:
        assert_documented_refusal(request, error)
        return
    # An answer is a correct one: indices valid and unique, sorted, cut.
    indices = [r.original_index for r in response.ranking]
    assert len(set(indices)) == len(indices)
    assert all(0 <= i < len(request.documents) for i in indices)
    keys = [(-r.score, r.original_index) for r in response.ranking]
    assert keys == sorted(keys)
    if request.HasField("top_n"):
        assert len(indices) == min(request.top_n, len(request.documents))
    for ranked in response.ranking:
        assert ranked.document == request.documents[ranked.original_index]


# --- bytes that are not a request ------------------------------------------------------------

RERANK = "/rerank.v1.RerankService/Rerank"
LIST_MODELS = "/rerank.v1.RerankService/ListModels"


@pytest.fixture
async def raw(running: RunningServer) -> AsyncIterator[Any]:
    """Send bytes as they are: no serializer on the way out, none on the way back."""
    async with grpc.aio.insecure_channel(
        f"127.0.0.1:{running.port}", options=MESSAGE_LIMIT
    ) as channel:

        async def send(method: str, data: bytes) -> bytes:
            call = channel.unary_unary(method, request_serializer=None, response_deserializer=None)
            answer: bytes = await call(data, timeout=20)
            return answer

        yield send


def with_field(message: bytes, number: int, value: bytes) -> bytes:
    """`message` with one more length-delimited field appended (the last one wins)."""
    assert len(value) < 128
    return message + bytes([number << 3 | 2, len(value)]) + value


NOT_UTF8 = b"Paris \xc3\x28"
UNDECODABLE = {
    "garbage": b"\xff\xff\xff\xff",
    "text that is not protobuf": b"What is the capital of France?",
    "a message cut short": seed_request().SerializeToString()[:-5],
    "invalid UTF-8 in query": with_field(seed_request().SerializeToString(), 2, NOT_UTF8),
    "invalid UTF-8 in a document": with_field(
        seed_request(documents=[]).SerializeToString(), 3, with_field(b"", 1, NOT_UTF8)
    ),
}


@pytest.mark.parametrize("data", UNDECODABLE.values(), ids=UNDECODABLE.keys())
async def test_bytes_that_are_not_a_request_are_invalid_argument(raw: Any, data: bytes) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await raw(RERANK, data)
    assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    details = caught.value.details() or ""
    assert details.startswith("the request could not be decoded: "), details
    assert "rerank.v1.RerankRequest" in details, details
    assert unpacked(caught.value, error_details_pb2.ErrorInfo).reason == "MALFORMED_REQUEST"
    # The same connection still serves good requests.
    answer = pb.RerankResponse.FromString(await raw(RERANK, seed_request().SerializeToString()))
    assert answer.ranking[0].original_index == 0


async def test_list_models_refuses_garbage_the_same_way(raw: Any) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await raw(LIST_MODELS, b"\xff\xff\xff\xff")
    assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert unpacked(caught.value, error_details_pb2.ErrorInfo).reason == "MALFORMED_REQUEST"


def flipped(data: bytes, position: int, byte: int) -> bytes:
    position %= len(data)
    return data[:position] + bytes([byte]) + data[position + 1 :]


@settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    data=st.one_of(
        st.binary(max_size=300),
        st.builds(
            flipped,
            st.just(seed_request().SerializeToString()),
            st.integers(0, 10_000),
            st.integers(0, 255),
        ),
    )
)
async def test_arbitrary_bytes_get_documented_answers(raw: Any, data: bytes) -> None:
    """Whatever the bytes: a correct answer, INVALID_ARGUMENT (they do not decode, or decode to
    an invalid request), or NOT_FOUND for a model slug the gateway does not know."""
    try:
        answer = pb.RerankResponse.FromString(await raw(RERANK, data))
    except grpc.aio.AioRpcError as error:
        info = unpacked(error, error_details_pb2.ErrorInfo)
        assert (error.code(), info.reason) in {
            (grpc.StatusCode.INVALID_ARGUMENT, "MALFORMED_REQUEST"),
            (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_REQUEST"),
            (grpc.StatusCode.INVALID_ARGUMENT, "UPSTREAM_INVALID_REQUEST"),
            (grpc.StatusCode.NOT_FOUND, "MODEL_NOT_FOUND"),
        }, (error.code(), error.details())
        return
    request = pb.RerankRequest.FromString(data)
    assert {r.original_index for r in answer.ranking} <= set(range(len(request.documents)))


async def test_a_hundred_thousand_documents(stub: pb_grpc.RerankServiceStub) -> None:
    request = pb.RerankRequest(query="q", documents=[pb.Document(text="d")] * 100_000)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.Rerank(request, timeout=20)
    assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "documents" in (caught.value.details() or "")


async def test_a_message_over_the_limit_is_refused_by_grpc() -> None:
    server = await start_server(Settings(port=0, grace_period=1, max_message_bytes=1024 * 1024))
    try:
        async with grpc.aio.insecure_channel(
            f"127.0.0.1:{server.port}", options=MESSAGE_LIMIT
        ) as channel:
            stub = pb_grpc.RerankServiceStub(channel)
            request = pb.RerankRequest(query="q", documents=[pb.Document(text="x" * 60_000)] * 30)
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await stub.Rerank(request, timeout=20)
            assert caught.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
            assert (await stub.Rerank(seed_request(), timeout=10)).ranking
        # The client knows it from gRPC's own words (there are no rich details): not a rate
        # limit to wait out, but a request to split.
        async with AsyncRerankClient(f"127.0.0.1:{server.port}", timeout=20) as client:
            with pytest.raises(MessageTooLargeError) as too_large:
                await client.rerank("q", ["x" * 60_000] * 30)
        assert too_large.value.limit == 1024 * 1024
        assert too_large.value.size is not None
        assert too_large.value.size > 1024 * 1024
        assert not isinstance(too_large.value, RateLimitedError)
    finally:
        await server.stop()


async def test_many_hostile_calls_at_once_leave_the_server_up(
    stub: pb_grpc.RerankServiceStub,
) -> None:
    bad = [seed_request(query=""), seed_request(top_n=-5), seed_request(model="x")]
    calls = [stub.Rerank(bad[i % 3], timeout=20) for i in range(60)]
    results = await asyncio.gather(*calls, return_exceptions=True)
    assert all(
        isinstance(r, grpc.aio.AioRpcError) and r.code() is grpc.StatusCode.INVALID_ARGUMENT
        for r in results
    )
    assert (await stub.Rerank(seed_request(), timeout=10)).ranking
