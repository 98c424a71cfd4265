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
from google.protobuf import struct_pb2
from google.rpc import error_details_pb2
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rerank.mock_gateway import MALFORMED_VARIANTS
from rerank.server.app import RunningServer, start_server
from rerank.server.config import Settings
from rerank.v1 import rerank_service_pb2 as pb
from rerank.v1 import rerank_service_pb2_grpc as pb_grpc
from tests.service.test_rerank_service import MESSAGE_LIMIT, fault, seed_request, unpacked

# The statuses README.md documents for a Rerank call.
DOCUMENTED = {
    grpc.StatusCode.OK,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.INTERNAL,
    grpc.StatusCode.UNKNOWN,
}
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

json_leaf = st.one_of(
    st.none(),
    st.booleans(),
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(min_value=-(2**60), max_value=2**60),
    st.text(max_size=50),
)
json_value = st.recursive(
    json_leaf,
    lambda children: st.one_of(
        st.lists(children, max_size=4), st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=30,
)
hostile_text = st.one_of(
    st.text(max_size=200),
    st.text(alphabet=st.sampled_from("\x00\u200b\ufeff\U0001f600\u0301 aé"), max_size=100),
    st.just("x" * 70_000),
)


def to_struct(value: dict[str, Any]) -> struct_pb2.Struct:
    struct = struct_pb2.Struct()
    struct.update(value)
    return struct


@st.composite
def rerank_requests(draw: st.DrawFn) -> pb.RerankRequest:
    request = pb.RerankRequest(
        model=draw(st.one_of(st.just(""), st.just("cohere/rerank-v3.5"), st.text(max_size=140))),
        query=draw(hostile_text),
    )
    kinds = draw(st.sampled_from(["text", "object", "mixed", "empty"]))
    count = draw(st.one_of(st.integers(0, 12), st.just(1001)))
    for i in range(count):
        kind = kinds if kinds in ("text", "object") else draw(st.sampled_from(["text", "object"]))
        if kinds == "empty" and i == 0:
            request.documents.add()  # neither text nor object
        elif kind == "text":
            request.documents.add(text=draw(hostile_text) if i < 12 else "doc")
        else:
            request.documents.add(
                object=to_struct(draw(st.dictionaries(st.text(max_size=8), json_value, max_size=5)))
            )
    top_n = draw(st.one_of(st.none(), st.integers(-(2**31), 2**31 - 1)))
    if top_n is not None:
        request.top_n = top_n
    if draw(st.booleans()):
        request.provider_options.CopyFrom(
            to_struct(draw(st.dictionaries(st.text(max_size=8), json_value, max_size=3)))
        )
    return request


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
        assert error.code() in DOCUMENTED, (error.code(), error.details())
        # An incident id means a bug in the server, whatever the input.
        assert "incident" not in (error.details() or "")
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
