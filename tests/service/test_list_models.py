"""ListModels over gRPC against the embedded mock: pages (AIP-158), their errors, and each
model's window as the server uses it."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator

import grpc
import pytest
from google.rpc import error_details_pb2

from rerank.server._app import RunningServer, start_server
from rerank.server._config import Settings
from rerank.v1 import rerank_service_pb2 as pb
from rerank.v1 import rerank_service_pb2_grpc as pb_grpc
from tests.service.calls import MESSAGE_LIMIT, unpacked

SETTINGS = Settings(port=0, grace_period=2)


@pytest.fixture
async def started() -> AsyncIterator[list[RunningServer]]:
    servers: list[RunningServer] = []
    yield servers
    for running in servers:
        await running.stop()


async def stub_of(started: list[RunningServer], settings: Settings) -> pb_grpc.RerankServiceStub:
    running = await start_server(settings)
    started.append(running)
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{running.port}", options=MESSAGE_LIMIT)
    return pb_grpc.RerankServiceStub(channel)


@pytest.fixture
async def stub(started: list[RunningServer]) -> pb_grpc.RerankServiceStub:
    return await stub_of(started, SETTINGS)


async def test_the_default_page_is_every_model_as_before(stub: pb_grpc.RerankServiceStub) -> None:
    response = await stub.ListModels(pb.ListModelsRequest(), timeout=10)
    assert len(response.models) == 9  # the mock's reranking catalogue
    assert response.next_page_token == ""


async def test_pages_list_every_model_once(stub: pb_grpc.RerankServiceStub) -> None:
    everything = (await stub.ListModels(pb.ListModelsRequest(), timeout=10)).models
    pages: list[list[str]] = []
    request = pb.ListModelsRequest(page_size=4)
    while True:
        response = await stub.ListModels(request, timeout=10)
        pages.append([m.id for m in response.models])
        if not response.next_page_token:
            break
        request = pb.ListModelsRequest(page_size=4, page_token=response.next_page_token)
    assert [len(page) for page in pages] == [4, 4, 1]
    assert [i for page in pages for i in page] == [m.id for m in everything]


@pytest.mark.parametrize(
    ("request_", "field"),
    [
        (pb.ListModelsRequest(page_size=-1), "page_size"),
        (pb.ListModelsRequest(page_token="not a token"), "page_token"),
    ],
    ids=["negative page_size", "bad page_token"],
)
async def test_a_bad_page_request_is_invalid_argument(
    stub: pb_grpc.RerankServiceStub, request_: pb.ListModelsRequest, field: str
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.ListModels(request_, timeout=10)
    assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert field in (caught.value.details() or "")
    violations = unpacked(caught.value, error_details_pb2.BadRequest).field_violations
    assert [v.field for v in violations] == [field]
    assert unpacked(caught.value, error_details_pb2.ErrorInfo).reason == "INVALID_REQUEST"


async def test_each_model_says_how_many_documents_one_upstream_call_carries(
    started: list[RunningServer],
) -> None:
    settings = dataclasses.replace(
        SETTINGS,
        window_sizes={"cohere": 1000, "voyage/rerank-2.5-lite": 500},
        default_window_size=200,
    )
    stub = await stub_of(started, settings)
    models = {m.id: m for m in (await stub.ListModels(pb.ListModelsRequest(), timeout=10)).models}
    assert models["cohere/rerank-v3.5"].documents_per_upstream_call == 1000
    assert models["voyage/rerank-2.5-lite"].documents_per_upstream_call == 500  # by slug
    assert models["voyage/rerank-2.5"].documents_per_upstream_call == 200  # the default


async def test_the_window_listed_is_the_one_rerank_uses(started: list[RunningServer]) -> None:
    """The fact is the server's own: a request one document over it takes two gateway calls."""
    stub = await stub_of(started, dataclasses.replace(SETTINGS, window_sizes={"cohere": 3}))
    models = (await stub.ListModels(pb.ListModelsRequest(), timeout=10)).models
    window = next(m for m in models if m.id == "cohere/rerank-v3.5").documents_per_upstream_call
    documents = [pb.Document(text=f"document {i}") for i in range(window + 1)]
    at_window = await stub.Rerank(
        pb.RerankRequest(query="document", documents=documents[:window]), timeout=10
    )
    over = await stub.Rerank(pb.RerankRequest(query="document", documents=documents), timeout=10)
    assert (at_window.usage.upstream_calls, over.usage.upstream_calls) == (1, 2)
