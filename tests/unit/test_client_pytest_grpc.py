"""`RerankClient.from_channel` against the fake RerankService, through pytest-grpc's fixtures.

pytest-grpc (the design card's choice for a sync fake servicer) provides `grpc_channel`,
`grpc_create_channel` and `grpc_stub` once a module names `grpc_servicer`,
`grpc_add_to_server` and `grpc_stub_cls`. Two of its own fixtures do not fit a suite where
warnings are errors, so this module overrides them:

- its `grpc_addr` binds a probe socket to find a free port and never closes it (a
  ResourceWarning, an error here), and its `grpc_server` then binds that port a second time,
  which races with anything else picking a port meanwhile;
- here `grpc_server` binds 127.0.0.1:0 itself, `grpc_addr` reports the port the server got, and
  the server is stopped and its thread pool joined at the end of the module.

Everything else (the channel, the stub) is pytest-grpc's. The servicer lives for the module
(as pytest-grpc's fixtures do), so an autouse fixture empties its script and records per test.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from concurrent import futures
from dataclasses import dataclass
from typing import Any

import grpc
import pytest

from rerank.client import (
    InvalidRequestError,
    NotFoundError,
    RateLimitedError,
    RerankClient,
    UnavailableError,
)
from rerank.v1 import rerank_service_pb2 as pb
from rerank.v1 import rerank_service_pb2_grpc as pb_grpc

from .client_fakes import (
    MODELS,
    SERVER_OPTIONS,
    Abort,
    FakeRerankService,
    bad_request,
    error_info,
    retry_info,
)

QUERY = "What is the capital of France?"
DOCUMENTS = [
    "Paris is the capital of France.",
    "Berlin is the capital of Germany.",
    "Madrid is the capital of Spain.",
]


@dataclass(frozen=True)
class _Bound:
    server: grpc.Server
    port: int


# --- pytest-grpc's fixtures, named as it expects ------------------------------------------


@pytest.fixture(scope="module")
def grpc_servicer() -> FakeRerankService:
    return FakeRerankService()


@pytest.fixture(scope="module")
def grpc_add_to_server() -> Callable[[Any, grpc.Server], None]:
    return pb_grpc.add_RerankServiceServicer_to_server


@pytest.fixture(scope="module")
def grpc_stub_cls() -> type[pb_grpc.RerankServiceStub]:
    return pb_grpc.RerankServiceStub


@pytest.fixture(scope="module")
def _bound_server(
    grpc_add_to_server: Callable[[Any, grpc.Server], None], grpc_servicer: FakeRerankService
) -> Iterator[_Bound]:
    pool = futures.ThreadPoolExecutor(max_workers=4)
    server = grpc.server(pool, options=SERVER_OPTIONS)
    grpc_add_to_server(grpc_servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")  # the kernel picks; nothing to race
    server.start()
    try:
        yield _Bound(server, port)
    finally:
        grpc_servicer.released.set()
        server.stop(grace=None).wait()
        pool.shutdown(wait=True)


@pytest.fixture(scope="module")
def grpc_server(_bound_server: _Bound) -> grpc.Server:
    """Overrides pytest-grpc's: the server is already bound and started."""
    return _bound_server.server


@pytest.fixture(scope="module")
def grpc_addr(_bound_server: _Bound) -> str:
    """Overrides pytest-grpc's: the address the server actually got; no probe socket."""
    return f"127.0.0.1:{_bound_server.port}"


# --- this module's own ----------------------------------------------------------------------


@pytest.fixture(autouse=True)
def _fresh_servicer(grpc_servicer: FakeRerankService) -> Iterator[None]:
    grpc_servicer.script.clear()
    grpc_servicer.requests.clear()
    grpc_servicer.metadata.clear()
    yield
    grpc_servicer.script.clear()


@pytest.fixture
def client(grpc_channel: grpc.Channel) -> RerankClient:
    # Not closed: `from_channel` would close pytest-grpc's module-wide channel with it.
    return RerankClient.from_channel(grpc_channel, timeout=10)


def test_a_ranking_is_mapped_and_the_request_built(
    client: RerankClient, grpc_servicer: FakeRerankService
) -> None:
    result = client.rerank(QUERY, DOCUMENTS, model="cohere/rerank-v3.5", top_n=2)

    assert [(r.original_index, r.score) for r in result.ranking] == [(2, 1.0), (1, 0.9)]
    assert list(result.reranked_documents) == [DOCUMENTS[2], DOCUMENTS[1]]
    assert (result.model, result.id) == ("cohere/rerank-v3.5", "rr-test")
    [request] = grpc_servicer.requests
    assert isinstance(request, pb.RerankRequest)
    assert (request.query, request.model, request.top_n) == (QUERY, "cohere/rerank-v3.5", 2)
    assert [d.text for d in request.documents] == DOCUMENTS


def test_object_documents_round_trip(client: RerankClient) -> None:
    documents = [{"title": "France", "year": 2024, "tags": ["capital"]}, {"title": "Spain"}]
    result = client.rerank(QUERY, documents)
    assert list(result.reranked_documents) == [documents[1], documents[0]]
    assert isinstance(result.reranked_documents[1]["year"], int)


def test_unset_top_n_is_not_sent(client: RerankClient, grpc_servicer: FakeRerankService) -> None:
    assert len(client.rerank(QUERY, DOCUMENTS).ranking) == 3
    request = grpc_servicer.requests[0]
    assert isinstance(request, pb.RerankRequest)
    assert not request.HasField("top_n")


def test_models_are_mapped(client: RerankClient) -> None:
    models = client.list_models()
    assert [m.id for m in models] == [m.id for m in MODELS.models]
    assert models[0].name == "Rerank 3.5"
    assert models[0].pricing == {"input": "0.002"}


def test_invalid_argument_carries_the_field_violations(
    client: RerankClient, grpc_servicer: FakeRerankService
) -> None:
    grpc_servicer.script.append(
        Abort(
            grpc.StatusCode.INVALID_ARGUMENT,
            "documents[1]: must not be empty",
            [bad_request(("documents[1]", "must not be empty")), error_info("INVALID_REQUEST")],
        )
    )
    with pytest.raises(InvalidRequestError) as caught:
        client.rerank(QUERY, DOCUMENTS)
    assert caught.value.field_violations == [("documents[1]", "must not be empty")]
    assert caught.value.error_info is not None
    assert caught.value.error_info.reason == "INVALID_REQUEST"


def test_rate_limiting_carries_the_retry_delay(
    client: RerankClient, grpc_servicer: FakeRerankService
) -> None:
    grpc_servicer.script.append(
        Abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "rate limited", [retry_info(1.5)])
    )
    with pytest.raises(RateLimitedError) as caught:
        client.rerank(QUERY, DOCUMENTS)
    assert caught.value.retry_delay == pytest.approx(1.5)


def test_not_found_and_unavailable(client: RerankClient, grpc_servicer: FakeRerankService) -> None:
    grpc_servicer.script.extend(
        [
            Abort(grpc.StatusCode.NOT_FOUND, "no such model", [error_info("MODEL_NOT_FOUND")]),
            Abort(grpc.StatusCode.UNAVAILABLE, "gateway down"),
        ]
    )
    with pytest.raises(NotFoundError):
        client.rerank(QUERY, DOCUMENTS, model="cohere/nope")
    # pytest-grpc's channel has no service config, hence no retries: one call, one error.
    with pytest.raises(UnavailableError):
        client.list_models()
    assert len(grpc_servicer.requests) == 2


def test_metadata_is_sent_with_every_call(
    grpc_channel: grpc.Channel, grpc_servicer: FakeRerankService
) -> None:
    client = RerankClient.from_channel(grpc_channel, metadata={"authorization": "Bearer t0k"})
    client.rerank(QUERY, DOCUMENTS)
    client.list_models()
    assert [m.get("authorization") for m in grpc_servicer.metadata] == ["Bearer t0k"] * 2


def test_the_raw_stub_and_the_client_agree(
    client: RerankClient, grpc_stub: pb_grpc.RerankServiceStub
) -> None:
    request = pb.RerankRequest(query=QUERY, documents=[pb.Document(text=d) for d in DOCUMENTS])
    raw = grpc_stub.Rerank(request, timeout=10)
    mapped = client.rerank(QUERY, DOCUMENTS)
    assert [r.original_index for r in raw.ranking] == [r.original_index for r in mapped.ranking]
    assert [r.score for r in raw.ranking] == [r.score for r in mapped.ranking]
