"""BatchRerank through the whole gRPC path: each request answered (or failed) as a Rerank alone
would be, in order, under the call's deadline, a bounded fan-out and per-request admission.

The embedded mock answers where its faults say enough; where a test must see what reaches the
gateway, and when, a scripted HTTP server on loopback plays it and reports each request as an
event: tests wait on those events, never on a sleep.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import uuid
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import json_format
from google.protobuf.struct_pb2 import Struct
from google.rpc import code_pb2, error_details_pb2, status_pb2
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rerank.client import AsyncRerankClient, RerankClientError, RerankRequest
from rerank.contract import to_struct
from rerank.server._admission import HELD_PER_REQUEST_BYTE
from rerank.server._app import RunningServer
from rerank.server._config import Settings, Upstream
from rerank.server._domain import ModelInfo, Reranker, RerankOutcome, RerankQuery
from rerank.server._logs import ACCESS_LOGGER
from rerank.server._metrics import Metrics
from rerank.server._prometheus import PrometheusRecorder
from rerank.v1 import rerank_service_pb2 as pb
from rerank.v1 import rerank_service_pb2_grpc as pb_grpc
from tests.conftest import SEED_DOCUMENTS, SEED_MODEL, SEED_QUERY
from tests.scrapes import ended, scrape_until
from tests.scripted_http import Fail, Reply, Request, ScriptedServer
from tests.service.calls import MESSAGE_LIMIT, access_records, fault, seed_request, status_details
from tests.service.conftest import StartServer
from tests.service.gateways import rank_in_order
from tests.service.hostile import rerank_requests
from tools.waiting import until_async

FAST = Settings(
    port=0, grace_period=2, retry_initial_backoff=0.01, retry_max_backoff=0.05, max_retries=0
)


@pytest.fixture
def serve(servers: StartServer) -> StartServer:
    """`servers`, with FAST settings unless told otherwise."""
    return lambda settings=FAST, **kwargs: servers(settings, **kwargs)


def stub_for(running: RunningServer, channels: list[grpc.aio.Channel]) -> Any:
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{running.port}", options=MESSAGE_LIMIT)
    channels.append(channel)
    return pb_grpc.RerankServiceStub(channel)


def batch(*requests: pb.RerankRequest) -> pb.BatchRerankRequest:
    return pb.BatchRerankRequest(requests=requests)


def query_of(request: Request) -> str:
    return str(json.loads(request.body)["query"])


def ranked(request: Request) -> Reply:
    """The gateway's answer: every document, in order, with falling scores."""
    count = len(json.loads(request.body)["documents"]["values"])
    ranking = [{"index": i, "relevanceScore": 1 - i / count} for i in range(count)]
    return Reply(body=json.dumps({"ranking": ranking}).encode())


async def rank_all(request: Request) -> Reply:
    return ranked(request)


class GatedGateway:
    """A gateway (a real HTTP server on loopback) that holds every request until the test
    opens its gate, and counts how many it holds at once."""

    def __init__(self) -> None:
        self.server = ScriptedServer(self._answer)
        self.gates: list[asyncio.Event] = []
        self.in_flight = 0
        self.most_in_flight = 0
        #: Set as requests arrive and leave.
        self.changed = asyncio.Event()

    async def _answer(self, request: Request) -> Reply:
        gate = asyncio.Event()
        self.gates.append(gate)
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        self.changed.set()
        await gate.wait()
        self.in_flight -= 1
        self.changed.set()
        return ranked(request)


def on(upstream: ScriptedServer, base: Settings = FAST, **changes: Any) -> Settings:
    return dataclasses.replace(
        base, upstream=Upstream.GATEWAY, gateway_url=upstream.url, api_key="k", **changes
    )


def error_of(error: grpc.aio.AioRpcError) -> status_pb2.Status:
    """What a failed Rerank said: its status with the details from its trailers."""
    status = status_details(error)
    assert status.code == error.code().value[0]
    return status


def unpack(status: status_pb2.Status, kind: type) -> Any:
    for holder in status.details:
        if holder.Is(kind.DESCRIPTOR):
            message = kind()
            holder.Unpack(message)
            return message
    return None


RATE_LIMITED = fault(
    fault="error", status=429, type="rate_limit_exceeded", generationId="gen_limited"
)
UNAVAILABLE = fault(fault="error", status=503, generationId="gen_down")


# --- each request as a Rerank alone ---------------------------------------------------------


async def test_each_request_is_answered_or_fails_alone_as_a_rerank_would(
    serve: Callable[..., Any], channels: list[grpc.aio.Channel]
) -> None:
    stub = stub_for(await serve(), channels)
    requests = [
        seed_request(),
        seed_request(query=""),  # INVALID_ARGUMENT, field `query`
        seed_request(model="cohere/no-such-model"),  # NOT_FOUND from the gateway
        # A 429, its generation id fixed: the mock derives one from the body, whose provider
        # options protobuf serializes in no fixed order.
        seed_request(provider_options=RATE_LIMITED),
        seed_request(documents=[pb.Document(text="Paris"), pb.Document(object=Struct())]),
        seed_request(top_n=1, query="Berlin"),
    ]
    response = await stub.BatchRerank(batch(*requests), timeout=10)
    assert len(response.results) == len(requests)
    for request, result in zip(requests, response.results, strict=True):
        try:
            alone = await stub.Rerank(request, timeout=10)
        except grpc.aio.AioRpcError as error:
            assert result.WhichOneof("result") == "error"
            # The same code, message and details (ErrorInfo, BadRequest, RetryInfo), byte for byte.
            assert result.error == error_of(error), request.query
        else:
            assert result.WhichOneof("result") == "response"
            assert [r.original_index for r in result.response.ranking] == [
                r.original_index for r in alone.ranking
            ]
            assert result.response.id != alone.id
    codes = [r.error.code for r in response.results]
    assert codes == [
        code_pb2.OK,
        code_pb2.INVALID_ARGUMENT,
        code_pb2.NOT_FOUND,
        code_pb2.RESOURCE_EXHAUSTED,
        code_pb2.INVALID_ARGUMENT,
        code_pb2.OK,
    ]
    bad_request = unpack(response.results[1].error, error_details_pb2.BadRequest)
    assert [v.field for v in bad_request.field_violations] == ["query"]
    assert unpack(response.results[2].error, error_details_pb2.ErrorInfo).reason == (
        "MODEL_NOT_FOUND"
    )
    limited = response.results[3].error
    assert unpack(limited, error_details_pb2.ErrorInfo).reason == "UPSTREAM_RATE_LIMITED"
    assert unpack(limited, error_details_pb2.RetryInfo).retry_delay.ToMilliseconds() == 1000
    # In order: the last request asked for one document about Berlin.
    (best,) = response.results[5].response.ranking
    assert best.document.text == SEED_DOCUMENTS[1]


async def test_each_request_says_whether_its_answer_echoes_and_what_it_cost(
    serve: Callable[..., Any], channels: list[grpc.aio.Channel]
) -> None:
    """`return_documents` and `usage` are each request's own: a lean request's entries carry
    no document, an echoing one's carry it as sent; each counts its own gateway call, and a
    request the cache answers costs nothing."""
    stub = stub_for(await serve(), channels)
    lean = seed_request()
    lean.return_documents = False
    objects = seed_request(documents=[pb.Document(object=to_struct({"title": "Paris", "n": -0.0}))])
    response = await stub.BatchRerank(batch(lean, objects), timeout=10)
    lean_answer, echoed = (result.response for result in response.results)
    assert lean_answer.ranking
    assert not any(r.HasField("document") for r in lean_answer.ranking)
    assert [r.document for r in echoed.ranking] == list(objects.documents)
    for answer in (lean_answer, echoed):
        assert (answer.usage.cost, answer.usage.upstream_calls) == ("0.002", 1)

    # The same requests again: the cache answers both, without a gateway call.
    again = await stub.BatchRerank(batch(lean, objects), timeout=10)
    for result in again.results:
        assert result.response.cached
        assert (result.response.usage.cost, result.response.usage.upstream_calls) == ("0", 0)
    assert not any(r.HasField("document") for r in again.results[0].response.ranking)


async def test_the_client_fills_in_a_lean_requests_documents(serve: Callable[..., Any]) -> None:
    running = await serve()
    documents = list(SEED_DOCUMENTS)
    async with AsyncRerankClient(f"127.0.0.1:{running.port}", timeout=10) as client:
        lean, echoed = await client.rerank_many(
            [
                RerankRequest(SEED_QUERY, documents, top_n=2, return_documents=False),
                RerankRequest(SEED_QUERY, documents, top_n=2, bypass_cache=True),
            ]
        )
    assert lean.unwrap().reranked_documents == echoed.unwrap().reranked_documents
    assert lean.unwrap().reranked_documents[0] == SEED_DOCUMENTS[0]
    usage = echoed.unwrap().usage
    assert usage is not None
    assert (usage.cost, usage.upstream_calls) == (Decimal("0.002"), 1)


async def test_an_empty_batch_is_answered_with_no_results(
    serve: Callable[..., Any], channels: list[grpc.aio.Channel]
) -> None:
    stub = stub_for(await serve(), channels)
    response = await stub.BatchRerank(pb.BatchRerankRequest(), timeout=10)
    assert list(response.results) == []


async def test_more_requests_than_the_limit_fail_the_whole_call(
    serve: Callable[..., Any], channels: list[grpc.aio.Channel]
) -> None:
    async with ScriptedServer(rank_all) as upstream:
        stub = stub_for(await serve(on(upstream, batch_max_requests=3)), channels)
        assert len((await stub.BatchRerank(batch(*[seed_request()] * 3), timeout=10)).results) == 3
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.BatchRerank(batch(*[seed_request(bypass_cache=True)] * 4), timeout=10)
    assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.details() == "requests: holds 4 requests; at most 3 allowed"
    status = error_of(caught.value)
    assert [v.field for v in unpack(status, error_details_pb2.BadRequest).field_violations] == [
        "requests"
    ]
    assert len(upstream.requests) == 1  # the refused batch reached no gateway


async def test_a_bug_in_one_request_fails_that_request_alone(
    serve: Callable[..., Any], channels: list[grpc.aio.Channel]
) -> None:
    """Only a fake reranker can raise what no gateway answer makes it raise."""

    class Buggy:
        async def rerank(self, query: RerankQuery, *, timeout: float) -> RerankOutcome:
            if query.query == "boom":
                raise RuntimeError("a bug, not an error the contract knows")
            return RerankOutcome(ranking=())

        async def list_models(self, *, timeout: float) -> tuple[ModelInfo, ...]:
            return ()

        async def aclose(self) -> None:
            return None

    reranker: Reranker = Buggy()
    stub = stub_for(await serve(FAST, reranker=reranker), channels)
    response = await stub.BatchRerank(batch(seed_request(query="boom"), seed_request()), timeout=10)
    broken, fine = response.results
    assert broken.error.code == code_pb2.INTERNAL
    assert broken.error.message.startswith("internal error (incident ")
    assert "bug" not in broken.error.message
    assert fine.WhichOneof("result") == "response"


# --- deadline, fan-out, admission -------------------------------------------------------------


async def test_the_deadline_bounds_every_request_and_the_done_ones_come_back(
    serve: Callable[..., Any], channels: list[grpc.aio.Channel]
) -> None:
    async def answer(request: Request) -> Reply | str:
        return Fail.HANG if query_of(request) == "never" else ranked(request)

    async with ScriptedServer(answer) as upstream:
        stub = stub_for(await serve(on(upstream)), channels)
        requests = [seed_request(), seed_request(query="never"), seed_request(query="Berlin")]
        # The call ends OK, before its deadline: the hung request failed in time, alone.
        response = await stub.BatchRerank(batch(*requests), timeout=2.5)
        done, hung, also_done = response.results
        assert done.response.ranking
        assert also_done.response.ranking
        assert hung.error.code == code_pb2.DEADLINE_EXCEEDED
        assert unpack(hung.error, error_details_pb2.ErrorInfo).reason == "UPSTREAM_TIMEOUT"
        # ...and the server hung up on the gateway request it no longer waits for.
        await asyncio.wait_for(upstream.client_went_away.wait(), 5)


async def test_a_request_whose_turn_comes_after_the_deadline_is_not_sent(
    serve: Callable[..., Any], channels: list[grpc.aio.Channel]
) -> None:
    async def answer(request: Request) -> Reply | str:
        return Fail.HANG if query_of(request) == "never" else ranked(request)

    async with ScriptedServer(answer) as upstream:
        stub = stub_for(await serve(on(upstream, batch_parallelism=1)), channels)
        response = await stub.BatchRerank(
            batch(seed_request(query="never"), seed_request()), timeout=2
        )
        assert [r.error.code for r in response.results] == [code_pb2.DEADLINE_EXCEEDED] * 2
        assert "before this request's turn" in response.results[1].error.message
        assert [query_of(r) for r in upstream.requests] == ["never"]


async def test_cancelling_the_batch_cancels_its_gateway_requests(
    serve: Callable[..., Any], channels: list[grpc.aio.Channel]
) -> None:
    async def never(request: Request) -> str:
        return Fail.HANG

    async with ScriptedServer(never) as upstream:
        stub = stub_for(await serve(on(upstream)), channels)
        call = stub.BatchRerank(batch(seed_request()), timeout=30)
        await asyncio.wait_for(upstream.request_arrived.wait(), 5)
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
        await asyncio.wait_for(upstream.client_went_away.wait(), 5)


async def test_the_fan_out_is_bounded_by_the_parallelism(
    serve: Callable[..., Any], channels: list[grpc.aio.Channel]
) -> None:
    gateway = GatedGateway()
    async with gateway.server:
        stub = stub_for(await serve(on(gateway.server, batch_parallelism=3)), channels)
        requests = [seed_request(query=f"query {i}") for i in range(7)]
        call = asyncio.ensure_future(stub.BatchRerank(batch(*requests), timeout=20))
        # Open one gate at a time: each frees one place, which the next request takes.
        for opened in range(7):
            await until_async(
                lambda opened=opened: (
                    gateway.in_flight == min(3, 7 - opened)
                    and len(gateway.gates) == min(7, opened + 3)
                ),
                f"{min(3, 7 - opened)} requests held",
                changed=gateway.changed,
            )
            gateway.gates[opened].set()
        response = await call
    assert gateway.most_in_flight == 3
    assert all(result.response.ranking for result in response.results)
    assert sorted(query_of(r) for r in gateway.server.requests) == sorted(r.query for r in requests)


async def test_each_request_holds_its_own_admission_place(
    serve: Callable[..., Any], channels: list[grpc.aio.Channel]
) -> None:
    gateway = GatedGateway()
    async with gateway.server:
        settings = on(gateway.server, batch_parallelism=3, max_concurrent_calls=2)
        stub = stub_for(await serve(settings), channels)
        requests = [seed_request(query=f"query {i}") for i in range(3)]
        call = asyncio.ensure_future(stub.BatchRerank(batch(*requests), timeout=20))
        await until_async(
            lambda: gateway.in_flight == 2, "two requests held", changed=gateway.changed
        )
        # The batch's two running requests fill the server: a Rerank meanwhile is refused too.
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.Rerank(seed_request(query="another caller"), timeout=10)
        assert caught.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
        for gate in gateway.gates:
            gate.set()
        response = await call
    codes = [r.error.code for r in response.results]
    assert sorted(codes) == [code_pb2.OK, code_pb2.OK, code_pb2.RESOURCE_EXHAUSTED]
    (refused,) = [r.error for r in response.results if r.error.code]
    assert refused == error_of(caught.value)  # OVERLOADED with its RetryInfo, as a Rerank gets
    assert unpack(refused, error_details_pb2.ErrorInfo).reason == "OVERLOADED"
    assert len(gateway.server.requests) == 2  # the refused request never reached the gateway


async def test_a_batch_counts_its_memory_once_and_is_refused_whole_without_room(
    serve: Callable[..., Any], channels: list[grpc.aio.Channel]
) -> None:
    """The memory a batch holds is counted for the whole call on arrival, as a Rerank's: with
    a Rerank in flight holding most of the room, a batch is refused whole (OVERLOADED), and
    none of its requests reaches the gateway; once the room is back it is answered."""
    gateway = GatedGateway()
    async with gateway.server:
        held = seed_request(query="held")
        room = (held.ByteSize() + 200) * HELD_PER_REQUEST_BYTE
        stub = stub_for(await serve(on(gateway.server, max_inflight_bytes=room)), channels)
        call = asyncio.ensure_future(stub.Rerank(held, timeout=20))
        await until_async(
            lambda: gateway.in_flight == 1, "the Rerank held", changed=gateway.changed
        )
        requests = batch(seed_request(query="one"), seed_request(query="two"))
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.BatchRerank(requests, timeout=10)
        assert caught.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
        assert unpack(error_of(caught.value), error_details_pb2.ErrorInfo).reason == "OVERLOADED"
        assert len(gateway.server.requests) == 1
        gateway.gates[0].set()
        await call
        answered = asyncio.ensure_future(stub.BatchRerank(requests, timeout=20))
        await until_async(
            lambda: gateway.in_flight == 2, "both requests held", changed=gateway.changed
        )
        for gate in gateway.gates:
            gate.set()
        response = await answered
    assert [r.WhichOneof("result") for r in response.results] == ["response", "response"]


# --- the chain applies per request: cache, windows, retries ------------------------------------


async def test_the_cache_and_shared_calls_apply_per_request(
    serve: Callable[..., Any], channels: list[grpc.aio.Channel]
) -> None:
    async with ScriptedServer(rank_all) as upstream:
        stub = stub_for(await serve(on(upstream)), channels)
        assert not (await stub.Rerank(seed_request(), timeout=10)).cached
        response = await stub.BatchRerank(
            batch(
                seed_request(),  # answered by the cache
                seed_request(bypass_cache=True),  # asks the gateway
                seed_request(query="twice"),  # these two share one gateway call
                seed_request(query="twice"),
            ),
            timeout=10,
        )
    cached = [result.response.cached for result in response.results]
    assert cached[:2] == [True, False]
    assert sorted(cached[2:]) == [False, True]
    assert [query_of(r) for r in upstream.requests] == [seed_request().query] * 2 + ["twice"]


async def test_windows_and_retries_apply_per_request(
    serve: Callable[..., Any], channels: list[grpc.aio.Channel]
) -> None:
    stub = stub_for(await serve(dataclasses.replace(FAST, max_retries=2)), channels)
    windowed = seed_request(documents=[pb.Document(text=f"passage {i}") for i in range(2500)])
    retried = seed_request(
        provider_options=fault(fault="error", status=503, times=2, key=uuid.uuid4().hex)
    )
    response = await stub.BatchRerank(batch(windowed, retried), timeout=30)
    windows, recovered = response.results
    # Windows of 1,000, 1,000 and 500 documents, each billed: the oracle asks each alone.
    each = []
    for start in range(0, 2500, 1000):
        alone = seed_request(documents=windowed.documents[start : start + 1000])
        each.append(Decimal(cost_of(await stub.Rerank(alone, timeout=30))))
    assert Decimal(cost_of(windows.response)) == sum(each)
    assert recovered.response.ranking[0].original_index == 0  # two 503s, then the answer


def cost_of(response: pb.RerankResponse) -> str:
    return str(json_format.MessageToDict(response.provider_metadata)["gateway"]["cost"])


# --- the client, hostile requests and bytes -------------------------------------------------


async def test_the_clients_items_are_what_rerank_returns_or_raises(
    serve: Callable[..., Any],
) -> None:
    running = await serve()
    requests = [
        RerankRequest(SEED_QUERY, list(SEED_DOCUMENTS), top_n=2),
        RerankRequest(SEED_QUERY, list(SEED_DOCUMENTS), model="cohere/no-such-model"),
        RerankRequest(" ", ["x"]),
        RerankRequest("which", [{"title": "Paris"}, {"title": "Berlin"}], top_n=1),
        RerankRequest("q", ["x"], provider_options=UNAVAILABLE),
    ]
    async with AsyncRerankClient(f"127.0.0.1:{running.port}", timeout=10) as client:
        items = await client.rerank_many(requests)
        for request, item in zip(requests, items, strict=True):
            try:
                alone = await client.rerank(
                    request.query,
                    request.documents,
                    model=request.model,
                    top_n=request.top_n,
                    provider_options=request.provider_options,
                )
            except RerankClientError as raised:
                assert item.error is not None, request
                assert type(item.error) is type(raised)
                assert (item.error.code, item.error.details) == (raised.code, raised.details)
                assert item.error.error_info == raised.error_info
                assert item.error.retry_delay == raised.retry_delay
                assert item.error.field_violations == raised.field_violations
            else:
                assert item.result is not None, request
                assert item.result.reranked_documents == alone.reranked_documents
    assert [type(item.error).__name__ for item in items] == [
        "NoneType",
        "NotFoundError",
        "InvalidRequestError",
        "NoneType",
        "UnavailableError",
    ]


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,  # a generated request may hold 1,001 documents
    ],
)
@given(requests=st.lists(rerank_requests(), max_size=4))
async def test_generated_batches_answer_each_request_as_rerank_does(
    requests: list[pb.RerankRequest], hostile: Any
) -> None:
    response = await hostile.BatchRerank(batch(*requests), timeout=30)
    assert len(response.results) == len(requests)
    for request, result in zip(requests, response.results, strict=True):
        try:
            alone = await hostile.Rerank(request, timeout=30)
        except grpc.aio.AioRpcError as error:
            assert unordered(result.error) == unordered(error_of(error))
        else:
            assert [r.original_index for r in result.response.ranking] == [
                r.original_index for r in alone.ranking
            ]


def unordered(status: status_pb2.Status) -> tuple[Any, ...]:
    """A status with its field violations in no particular order: those of a Struct's keys come
    in the order of its map, which protobuf leaves open (two decodings may differ)."""
    details: list[Any] = []
    for holder in status.details:
        if holder.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            holder.Unpack(bad)
            details.append(sorted((v.field, v.description) for v in bad.field_violations))
        elif holder.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            holder.Unpack(info)
            details.append((info.reason, info.domain, sorted(info.metadata.items())))
        else:
            details.append(holder.SerializeToString())
    return status.code, sorted(status.message.split("; ")), details


@pytest.fixture
async def hostile(serve: Callable[..., Any], channels: list[grpc.aio.Channel]) -> Any:
    return stub_for(await serve(dataclasses.replace(FAST, max_retries=0)), channels)


async def test_bytes_that_are_not_a_batch_fail_the_whole_call(
    serve: Callable[..., Any], channels: list[grpc.aio.Channel]
) -> None:
    """One request of a batch that does not decode makes the whole message undecodable: no
    result can be told from another."""
    running = await serve()
    stub_for(running, channels)
    channel = channels[-1]
    send = channel.unary_unary("/rerank.v1.RerankService/BatchRerank", None, None)
    cut = seed_request().SerializeToString()[:-5]
    for data in (b"\xff\xff\xff\xff", b"\x0a" + bytes([len(cut)]) + cut):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await send(data, timeout=10)
        assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert "rerank.v1.BatchRerankRequest" in (caught.value.details() or "")
        info = unpack(error_of(caught.value), error_details_pb2.ErrorInfo)
        assert info.reason == "MALFORMED_REQUEST"


async def test_each_request_is_counted_with_its_status(
    serve: Callable[..., Any], channels: list[grpc.aio.Channel]
) -> None:
    """The call is one OK RPC in gRPC's metrics; its requests are counted one by one."""
    recorder = PrometheusRecorder()
    running = await serve(FAST, metrics=Metrics(recorder))
    stub = stub_for(running, channels)
    requests = [seed_request(), seed_request(query=""), seed_request(query="Berlin")]
    await stub.BatchRerank(batch(*requests), timeout=10)
    method = "rerank.v1.RerankService/BatchRerank"
    result = await scrape_until(recorder, lambda s: ended(s, method, "OK") == 1)
    counted = "rerank_batch_requests_total"
    assert result.total(counted, grpc_status="OK") == 2
    assert result.total(counted, grpc_status="INVALID_ARGUMENT") == 1
    assert result.total("rerank_documents_per_request_count") == 2  # the valid ones
    assert result.total("rerank_upstream_attempts_total", outcome="OK") == 2
    assert result.total("rerank_calls_in_flight") == 0


# --- a named caller's limits, per request ------------------------------------------------------

LIMITED = "batch-caller-token"
CALLERS = f"""
[callers.batcher]
token = "{LIMITED}"
requests_per_second = 0.01   # after the burst, no token for 100 s
burst = 3
models = ["cohere/*"]
"""


async def test_a_named_callers_limits_count_each_request(
    serve: Callable[..., Any], channels: list[grpc.aio.Channel], tmp_path: Path
) -> None:
    callers = tmp_path / "callers.toml"
    callers.write_text(CALLERS)
    running = await serve(dataclasses.replace(FAST, callers_file=str(callers)))
    stub = stub_for(running, channels)
    metadata = (("authorization", f"Bearer {LIMITED}"),)
    requests = [seed_request(query=f"query {i}") for i in range(5)]
    requests.insert(2, seed_request(model="voyage/rerank-2"))  # not among its models
    response = await stub.BatchRerank(batch(*requests), metadata=metadata, timeout=10)

    reasons = [
        unpack(r.error, error_details_pb2.ErrorInfo).reason if r.error.code else "OK"
        for r in response.results
    ]
    assert reasons[2] == "MODEL_NOT_ALLOWED"
    assert response.results[2].error.code == code_pb2.PERMISSION_DENIED
    others = reasons[:2] + reasons[3:]
    # The burst of three lets three requests through; the other two are refused alone, each
    # told when a token comes back, as a Rerank would be.
    assert sorted(others) == ["CALLER_RATE_LIMITED"] * 2 + ["OK"] * 3
    for result, why in zip(response.results, reasons, strict=True):
        if why == "CALLER_RATE_LIMITED":
            assert result.error.code == code_pb2.RESOURCE_EXHAUSTED
            assert unpack(result.error, error_details_pb2.RetryInfo).retry_delay.seconds > 60
    usage = await stub.GetUsage(pb.GetUsageRequest(), metadata=metadata, timeout=5)
    assert usage.calls == 3

    # A batch without a token is refused as a whole.
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.BatchRerank(batch(seed_request()), timeout=10)
    assert caught.value.code() is grpc.StatusCode.UNAUTHENTICATED


async def test_the_access_record_sums_the_requests(
    serve: Callable[..., Any], channels: list[grpc.aio.Channel], caplog: pytest.LogCaptureFixture
) -> None:
    """One record for the call; each request was noted as a call of its own, and the record
    sums what they did (a failed request charged nothing)."""
    caplog.set_level(logging.INFO, logger=ACCESS_LOGGER)
    async with ScriptedServer(rank_in_order) as upstream:  # 0.001 a gateway call
        running = await serve(on(upstream, window_sizes={"cohere": 2}))
        stub = stub_for(running, channels)
        five = [pb.Document(text=f"passage {i}") for i in range(5)]
        requests = [seed_request(), seed_request(query=""), seed_request(documents=five)]
        await stub.BatchRerank(batch(*requests), metadata=(("x-request-id", "b1"),), timeout=10)
    (record,) = access_records(caplog)
    assert {k: record[k] for k in ("request_id", "method", "status", "model", "top_n")} == {
        "request_id": "b1",
        "method": "rerank.v1.RerankService/BatchRerank",
        "status": "OK",
        "model": SEED_MODEL,
        "top_n": None,
    }
    # Windows of two documents: 2 for the seed's three, 3 for the five; the empty query none.
    assert (record["documents"], record["windows"], record["upstream_attempts"]) == (11, 5, 5)
    assert (record["cached"], record["cost"]) == (False, "0.005")
