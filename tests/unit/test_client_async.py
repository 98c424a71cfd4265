"""The asyncio client against the scripted fake RerankService on a `grpc.aio` server."""

from __future__ import annotations

from collections.abc import AsyncIterator
from decimal import Decimal

import grpc
import grpc.aio
import pytest

import rerank.client as client
from rerank.client import (
    AsyncRerankClient,
    DeadlineExceededError,
    InvalidRequestError,
    NotFoundError,
    RateLimitedError,
    ServerError,
    UnavailableError,
)
from rerank.v1 import rerank_service_pb2 as pb
from rerank.v1 import rerank_service_pb2_grpc as pb_grpc

from .client_fakes import (
    SERVER_OPTIONS,
    Abort,
    AsyncFakeRerankService,
    Delay,
    bad_request,
    error_info,
    retry_info,
)


@pytest.fixture
def service() -> AsyncFakeRerankService:
    return AsyncFakeRerankService()


@pytest.fixture
async def target(service: AsyncFakeRerankService) -> AsyncIterator[str]:
    server = grpc.aio.server(options=SERVER_OPTIONS)
    pb_grpc.add_RerankServiceServicer_to_server(service, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        await server.stop(None)


@pytest.fixture
async def rerank_client(target: str) -> AsyncIterator[AsyncRerankClient]:
    async with AsyncRerankClient(target, timeout=10) as c:
        yield c


async def test_rerank_text_documents(
    rerank_client: AsyncRerankClient, service: AsyncFakeRerankService
) -> None:
    result = await rerank_client.rerank("q", ["a", "b", "c"], model="m/x", top_n=2)

    (request,) = service.requests
    assert isinstance(request, pb.RerankRequest)
    assert [d.text for d in request.documents] == ["a", "b", "c"]
    assert request.top_n == 2
    assert request.model == "m/x"
    assert result.reranked_documents == ("c", "b")
    assert [r.original_index for r in result.ranking] == [2, 1]
    assert result.model == "m/x"


async def test_without_documents_the_answer_is_the_same(
    rerank_client: AsyncRerankClient, service: AsyncFakeRerankService
) -> None:
    documents = ["a", {"b": 1}, "c"]
    lean = await rerank_client.rerank("q", documents, return_documents=False)
    echoed = await rerank_client.rerank("q", documents)
    lean_request, echoed_request = service.requests
    assert lean_request.HasField("return_documents")  # type: ignore[attr-defined]
    assert not echoed_request.HasField("return_documents")  # type: ignore[attr-defined]
    assert lean.ranking == echoed.ranking
    assert lean.reranked_documents == ("c", {"b": 1}, "a")


async def test_list_models_walks_every_page(
    rerank_client: AsyncRerankClient, service: AsyncFakeRerankService
) -> None:
    service.script.extend(
        [
            pb.ListModelsResponse(models=[pb.Model(id="a/one")], next_page_token="t"),
            pb.ListModelsResponse(models=[pb.Model(id="b/two")]),
        ]
    )
    assert [m.id for m in await rerank_client.list_models()] == ["a/one", "b/two"]
    assert [r.page_token for r in service.requests] == ["", "t"]  # type: ignore[attr-defined]


async def test_rerank_object_documents_round_trip(rerank_client: AsyncRerankClient) -> None:
    documents = [{"title": "Paris", "year": 2020, "tags": {"eu": True}}, {"title": "Berlin"}]
    result = await rerank_client.rerank("q", documents, provider_options={"cohere": {"k": 1}})
    assert result.reranked_documents == (documents[1], documents[0])
    year = result.to_json_dict()["rerankedDocuments"][1]["year"]
    assert year == 2020
    assert type(year) is int


async def test_list_models(rerank_client: AsyncRerankClient) -> None:
    models = await rerank_client.list_models()
    assert [m.id for m in models] == ["cohere/rerank-v3.5", "voyage/rerank-2"]
    assert models[0].pricing == {"input": "0.002"}


async def test_get_usage(rerank_client: AsyncRerankClient) -> None:
    usage = await rerank_client.get_usage()
    assert (usage.caller, usage.spent_usd, usage.calls, usage.refused) == (
        "search-api",
        Decimal("0.003"),
        3,
        1,
    )


async def test_metadata_is_sent(target: str, service: AsyncFakeRerankService) -> None:
    async with AsyncRerankClient(target, metadata=[("authorization", "Bearer t0ken")]) as c:
        await c.list_models()
    assert service.metadata[0]["authorization"] == "Bearer t0ken"


@pytest.mark.parametrize(
    ("code", "error_class"),
    [
        (grpc.StatusCode.NOT_FOUND, NotFoundError),
        (grpc.StatusCode.INTERNAL, ServerError),
        (grpc.StatusCode.UNKNOWN, ServerError),
    ],
)
async def test_statuses_become_exceptions(
    rerank_client: AsyncRerankClient,
    service: AsyncFakeRerankService,
    code: grpc.StatusCode,
    error_class: type[client.RerankClientError],
) -> None:
    service.script.append(Abort(code, "nope", [error_info("SOME_REASON")]))
    with pytest.raises(error_class) as caught:
        await rerank_client.rerank("q", ["a"])
    assert caught.value.code == code
    assert caught.value.details == "nope"
    assert caught.value.error_info is not None
    assert caught.value.error_info.reason == "SOME_REASON"
    assert isinstance(caught.value.__cause__, grpc.aio.AioRpcError)


async def test_rich_details_are_decoded(
    rerank_client: AsyncRerankClient, service: AsyncFakeRerankService
) -> None:
    service.script.append(
        Abort(
            grpc.StatusCode.INVALID_ARGUMENT,
            "query: must not be empty",
            [bad_request(("query", "must not be empty"))],
        )
    )
    with pytest.raises(InvalidRequestError) as caught:
        await rerank_client.rerank(" ", ["a"])
    assert caught.value.field_violations == [("query", "must not be empty")]

    service.script.append(Abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "slow down", [retry_info(2)]))
    with pytest.raises(RateLimitedError) as limited:
        await rerank_client.list_models()
    assert limited.value.retry_delay == pytest.approx(2)


async def test_unavailable_once_is_retried(
    rerank_client: AsyncRerankClient, service: AsyncFakeRerankService
) -> None:
    service.script.append(Abort(grpc.StatusCode.UNAVAILABLE, "try again"))
    result = await rerank_client.rerank("q", ["a"])
    assert result.reranked_documents == ("a",)
    assert len(service.requests) == 2


async def test_invalid_argument_is_not_retried(
    rerank_client: AsyncRerankClient, service: AsyncFakeRerankService
) -> None:
    service.script.append(Abort(grpc.StatusCode.INVALID_ARGUMENT, "bad"))
    with pytest.raises(InvalidRequestError):
        await rerank_client.rerank("q", ["a"])
    assert len(service.requests) == 1


async def test_no_service_config_means_no_retries(
    target: str, service: AsyncFakeRerankService
) -> None:
    service.script.append(Abort(grpc.StatusCode.UNAVAILABLE, "try again"))
    async with AsyncRerankClient(target, service_config=None) as c:
        with pytest.raises(UnavailableError):
            await c.rerank("q", ["a"])
    assert len(service.requests) == 1


async def test_timeout_becomes_deadline_exceeded(
    target: str, service: AsyncFakeRerankService
) -> None:
    service.script.extend([Delay(5), Delay(5)])
    async with AsyncRerankClient(target, timeout=0.1) as c:
        with pytest.raises(DeadlineExceededError):
            await c.rerank("q", ["a"])
        with pytest.raises(DeadlineExceededError):
            await c.list_models(timeout=0.05)


async def test_from_channel_and_close(target: str) -> None:
    channel = grpc.aio.insecure_channel(target)
    async with AsyncRerankClient.from_channel(channel) as c:
        assert c.channel is channel
        assert (await c.rerank("q", ["a"])).reranked_documents == ("a",)
    # Leaving the block closed the channel: it can no longer carry calls.
    with pytest.raises(grpc.aio.UsageError):
        await c.rerank("q", ["a"])


async def test_type_errors_are_raised_before_any_call(
    rerank_client: AsyncRerankClient, service: AsyncFakeRerankService
) -> None:
    with pytest.raises(TypeError, match=r"documents\[0\]"):
        await rerank_client.rerank("q", [3.5])  # type: ignore[list-item]
    assert service.requests == []
