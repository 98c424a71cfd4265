"""The sync client against a scripted fake RerankService on a real loopback gRPC server.

Each test gets its own server and script here; `test_client_pytest_grpc.py` runs a smaller set
through pytest-grpc's fixtures (with its server and address fixtures overridden).
"""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import grpc
import pytest
from google.protobuf import struct_pb2
from google.rpc import error_details_pb2

import rerank.client as client
from rerank.client import (
    DeadlineExceededError,
    ErrorReason,
    InvalidRequestError,
    MessageTooLargeError,
    NotFoundError,
    OverloadedError,
    PermissionDeniedError,
    RateLimitedError,
    RerankClient,
    RerankClientError,
    ServerError,
    UnauthenticatedError,
    UnavailableError,
    UpstreamRateLimitedError,
)
from rerank.contract import from_struct, from_value, max_response_bytes, to_struct
from rerank.v1 import rerank_service_pb2 as pb

from .client_fakes import (
    Abort,
    Delay,
    FakeRerankService,
    bad_request,
    error_info,
    retry_info,
    serve,
)


@pytest.fixture
def service() -> FakeRerankService:
    return FakeRerankService()


@pytest.fixture
def target(service: FakeRerankService) -> Iterator[str]:
    with serve(service) as address:
        yield address


@pytest.fixture
def rerank_client(target: str) -> Iterator[RerankClient]:
    with RerankClient(target, timeout=10) as c:
        yield c


# --- request building -------------------------------------------------------------------------


def test_text_documents_build_the_request(
    rerank_client: RerankClient, service: FakeRerankService
) -> None:
    rerank_client.rerank("capital of France?", ["Paris", "Berlin"], model="cohere/rerank-v3.5")

    (request,) = service.requests
    assert isinstance(request, pb.RerankRequest)
    assert request.query == "capital of France?"
    assert request.model == "cohere/rerank-v3.5"
    assert [d.WhichOneof("content") for d in request.documents] == ["text", "text"]
    assert [d.text for d in request.documents] == ["Paris", "Berlin"]
    assert not request.HasField("top_n")
    assert not request.HasField("provider_options")


def test_object_documents_become_structs(
    rerank_client: RerankClient, service: FakeRerankService
) -> None:
    doc = {
        "title": "Paris",
        "year": 2020,
        "ratio": 2.5,
        "tags": ["capital", 1, None, True],
        "meta": {"nested": {"deep": -3}},
    }
    rerank_client.rerank("q", [doc, {"title": "Berlin"}])

    request = service.requests[0]
    assert isinstance(request, pb.RerankRequest)
    first = request.documents[0]
    assert first.WhichOneof("content") == "object"
    fields = first.object.fields
    assert fields["year"].number_value == 2020
    assert fields["tags"].list_value.values[2].WhichOneof("kind") == "null_value"
    assert fields["tags"].list_value.values[3].bool_value is True
    assert (
        fields["meta"].struct_value.fields["nested"].struct_value.fields["deep"].number_value == -3
    )
    assert from_struct(first.object) == doc


def test_top_n_model_default_and_provider_options(
    rerank_client: RerankClient, service: FakeRerankService
) -> None:
    options = {"cohere": {"maxTokensPerDoc": 512}, "gateway": {"order": ["cohere", "bedrock"]}}
    result = rerank_client.rerank("q", ["a", "b", "c"], top_n=2, provider_options=options)

    request = service.requests[0]
    assert isinstance(request, pb.RerankRequest)
    assert request.HasField("top_n")
    assert request.top_n == 2
    assert request.model == ""
    assert from_struct(request.provider_options) == options
    assert len(result.ranking) == 2


def test_metadata_is_sent_on_every_call(target: str, service: FakeRerankService) -> None:
    with RerankClient(target, metadata={"authorization": "Bearer t0ken"}) as c:
        c.rerank("q", ["a"])
        c.list_models()
    assert [m.get("authorization") for m in service.metadata] == ["Bearer t0ken"] * 2


@pytest.mark.parametrize("bad", [42, b"bytes", None, ["a"]])
def test_a_document_that_is_neither_text_nor_object_is_a_type_error(
    rerank_client: RerankClient, service: FakeRerankService, bad: Any
) -> None:
    with pytest.raises(TypeError, match=r"documents\[1\]"):
        rerank_client.rerank("q", ["ok", bad])
    assert service.requests == []


def test_a_bare_string_is_not_a_list_of_documents(rerank_client: RerankClient) -> None:
    with pytest.raises(TypeError, match="single string"):
        rerank_client.rerank("q", "abc")


def test_non_json_values_inside_objects_are_type_errors() -> None:
    with pytest.raises(TypeError, match=r"documents\[0\]\.when"):
        client._wire.build_rerank_request(
            "q", [{"when": object()}], model="", top_n=None, provider_options=None
        )
    with pytest.raises(TypeError, match="not a string"):
        to_struct({1: "x"})  # type: ignore[dict-item]


# --- result mapping ---------------------------------------------------------------------------


def test_result_mapping_and_reranked_documents(rerank_client: RerankClient) -> None:
    result = rerank_client.rerank("q", ["zero", "one", "two"], model="m/x")

    assert [r.original_index for r in result.ranking] == [2, 1, 0]
    assert [r.score for r in result.ranking] == pytest.approx([1.0, 0.9, 0.8])
    assert result.reranked_documents == ("two", "one", "zero")
    assert result.model == "m/x"
    assert result.id == "rr-test"
    assert result.warnings == ()
    assert result.provider_metadata is None


def test_integral_floats_come_back_as_ints(rerank_client: RerankClient) -> None:
    doc = {"year": 2020, "score": 2.5, "list": [1, 2.0, 3.25], "big": 2**60}
    result = rerank_client.rerank("q", [doc])

    back = result.ranking[0].document
    assert isinstance(back, dict)
    assert back["year"] == 2020
    assert type(back["year"]) is int
    assert back["score"] == 2.5
    assert [type(x) for x in back["list"]] == [int, int, float]
    # Beyond 2**53 a double no longer holds every integer: it stays a float.
    assert type(back["big"]) is float


def test_from_value_edges() -> None:
    def number(x: float) -> struct_pb2.Value:
        return struct_pb2.Value(number_value=x)

    assert from_value(number(2.0**53)) == 2**53
    assert type(from_value(number(2.0**53))) is int
    assert type(from_value(number(2.0**53 + 2))) is float
    assert type(from_value(number(-(2.0**53)))) is int
    assert from_value(number(1e300)) == 1e300
    assert from_value(struct_pb2.Value()) is None


def test_warnings_metadata_and_json_shape(
    rerank_client: RerankClient, service: FakeRerankService
) -> None:
    metadata = struct_pb2.Struct()
    metadata.update({"gateway": {"cost": "0.002", "attempts": 1}})
    service.script.append(
        pb.RerankResponse(
            ranking=[
                pb.RankedDocument(
                    original_index=1, score=0.75, document=pb.Document(text="Madrid")
                ),
                pb.RankedDocument(original_index=0, score=0.5, document=pb.Document(text="Paris")),
            ],
            model="cohere/rerank-v3.5",
            id="rr-42",
            warnings=[
                pb.Warning(type=pb.Warning.TYPE_UNSUPPORTED, feature="topN", details="ignored"),
                pb.Warning(type=pb.Warning.TYPE_COMPATIBILITY, feature="maxTokensPerDoc"),
                pb.Warning(type=pb.Warning.TYPE_OTHER, message="slow"),
                pb.Warning(type=pb.Warning.TYPE_UNSPECIFIED, message="?"),
                pb.Warning(type=pb.Warning.TYPE_DEPRECATED, setting="topN", message="use top_k"),
                pb.Warning(type=99, message="from a newer server"),
            ],
            provider_metadata=metadata,
        )
    )
    result = rerank_client.rerank("q", ["Paris", "Madrid"])

    assert [w.type for w in result.warnings] == [
        "unsupported",
        "compatibility",
        "other",
        "other",
        "deprecated",
        "other",
    ]
    assert result.warnings[0] == client.Warning("unsupported", "topN", "ignored", "")
    assert result.warnings[4] == client.Warning("deprecated", setting="topN", message="use top_k")
    assert result.to_json_dict() == {
        "ranking": [
            {"originalIndex": 1, "score": 0.75, "document": "Madrid"},
            {"originalIndex": 0, "score": 0.5, "document": "Paris"},
        ],
        "rerankedDocuments": ["Madrid", "Paris"],
        "model": "cohere/rerank-v3.5",
        "id": "rr-42",
        "warnings": [
            {"type": "unsupported", "feature": "topN", "details": "ignored"},
            {"type": "compatibility", "feature": "maxTokensPerDoc"},
            {"type": "other", "message": "slow"},
            {"type": "other", "message": "?"},
            {"type": "deprecated", "setting": "topN", "message": "use top_k"},
            {"type": "other", "message": "from a newer server"},
        ],
        "providerMetadata": {"gateway": {"cost": "0.002", "attempts": 1}},
        "cached": False,
        "usage": None,  # a server older than the field sends none
    }


def test_object_documents_in_json(rerank_client: RerankClient) -> None:
    result = rerank_client.rerank("q", [{"year": 2020}, {"year": 1999}])
    as_json = result.to_json_dict()
    assert as_json["rerankedDocuments"] == [{"year": 1999}, {"year": 2020}]
    assert as_json["ranking"][0]["document"] == {"year": 1999}
    assert as_json["providerMetadata"] is None


def test_list_models(rerank_client: RerankClient) -> None:
    models = rerank_client.list_models()
    assert models == [
        client.ModelInfo(
            id="cohere/rerank-v3.5",
            name="Rerank 3.5",
            description="Cohere's reranker",
            provider="cohere",
            pricing={"input": "0.002"},
        ),
        client.ModelInfo(id="voyage/rerank-2"),
    ]
    assert models[1].to_json_dict() == {
        "id": "voyage/rerank-2",
        "name": "",
        "description": "",
        "provider": "",
        "pricing": {},
        "documentsPerUpstreamCall": 0,
    }


def test_list_models_walks_every_page(
    rerank_client: RerankClient, service: FakeRerankService
) -> None:
    """A server that pages: the client asks for each next page with its token, and returns
    every model once, in order."""
    service.script.extend(
        [
            pb.ListModelsResponse(
                models=[pb.Model(id="cohere/rerank-v3.5", documents_per_upstream_call=1000)],
                next_page_token="page-2",
            ),
            pb.ListModelsResponse(models=[pb.Model(id="voyage/rerank-2")], next_page_token=""),
        ]
    )
    models = rerank_client.list_models()
    assert [m.id for m in models] == ["cohere/rerank-v3.5", "voyage/rerank-2"]
    assert models[0].documents_per_upstream_call == 1000
    assert [r.page_token for r in service.requests] == ["", "page-2"]  # type: ignore[attr-defined]


def test_an_empty_page_with_a_token_ends_the_walk(
    rerank_client: RerankClient, service: FakeRerankService
) -> None:
    service.script.append(pb.ListModelsResponse(next_page_token="again"))
    assert rerank_client.list_models() == []
    assert len(service.requests) == 1


# --- lean answers and usage -------------------------------------------------------------------


def test_without_documents_the_client_fills_them_in(
    rerank_client: RerankClient, service: FakeRerankService
) -> None:
    documents = ["Paris", {"city": "Madrid", "year": 2020}, "Berlin"]
    lean = rerank_client.rerank("q", documents, return_documents=False)
    (sent,) = service.requests
    assert isinstance(sent, pb.RerankRequest)
    assert sent.HasField("return_documents")
    assert not sent.return_documents
    echoed = rerank_client.rerank("q", documents)
    assert not service.requests[1].HasField("return_documents")  # type: ignore[attr-defined]
    # The same result either way; only the wire differed.
    assert lean.ranking == echoed.ranking
    assert lean.reranked_documents == ("Berlin", {"city": "Madrid", "year": 2020}, "Paris")


def test_an_index_outside_the_documents_is_the_servers_fault(
    rerank_client: RerankClient, service: FakeRerankService
) -> None:
    service.script.append(
        pb.RerankResponse(ranking=[pb.RankedDocument(original_index=5, score=1.0)])
    )
    with pytest.raises(ServerError, match="original_index 5, outside the 2 documents"):
        rerank_client.rerank("q", ["a", "b"], return_documents=False)


@pytest.mark.parametrize(
    ("usage", "expected", "as_json"),
    [
        (
            pb.Usage(cost="0.002", upstream_calls=1),
            client.Usage(Decimal("0.002"), 1),
            {"cost": "0.002", "upstreamCalls": 1},
        ),
        (pb.Usage(cost="0", upstream_calls=0), client.Usage(Decimal(0), 0), None),
        # Unknown is not free: None, never zero.
        (
            pb.Usage(cost="", upstream_calls=3),
            client.Usage(None, 3),
            {"cost": None, "upstreamCalls": 3},
        ),
        (pb.Usage(cost="not a number", upstream_calls=1), client.Usage(None, 1), None),
    ],
)
def test_usage_is_typed(
    rerank_client: RerankClient,
    service: FakeRerankService,
    usage: pb.Usage,
    expected: client.Usage,
    as_json: dict[str, Any] | None,
) -> None:
    service.script.append(pb.RerankResponse(model="m", id="rr-1", usage=usage))
    result = rerank_client.rerank("q", ["a"])
    assert result.usage == expected
    if as_json is not None:
        assert result.to_json_dict()["usage"] == as_json


def test_the_json_shape_without_documents(
    rerank_client: RerankClient, service: FakeRerankService
) -> None:
    result = rerank_client.rerank("q", ["a", "b"], return_documents=False)
    as_json = result.to_json_dict(documents=False)
    assert as_json["ranking"] == [
        {"originalIndex": 1, "score": 1.0},
        {"originalIndex": 0, "score": 0.9},
    ]
    assert "rerankedDocuments" not in as_json


def test_get_usage(rerank_client: RerankClient, service: FakeRerankService) -> None:
    usage = rerank_client.get_usage()
    assert isinstance(service.requests[-1], pb.GetUsageRequest)
    assert usage == client.CallerUsage(
        caller="search-api",
        day="2026-03-14",
        spent_usd=Decimal("0.003"),
        calls=3,
        refused=1,
        daily_budget_usd=Decimal("0.0025"),
        requests_per_second=5.0,
        burst=5.0,
        max_concurrent_calls=None,
        models=("cohere/*",),
    )
    assert usage.to_json_dict() == {
        "caller": "search-api",
        "day": "2026-03-14",
        "spentUsd": "0.003",
        "dailyBudgetUsd": "0.0025",
        "calls": 3,
        "refused": 1,
        "requestsPerSecond": 5.0,
        "burst": 5.0,
        "maxConcurrentCalls": None,
        "models": ["cohere/*"],
    }


def test_get_usage_without_limits_reads_them_as_none(
    rerank_client: RerankClient, service: FakeRerankService
) -> None:
    service.script.append(pb.GetUsageResponse(caller="batch", day="2026-03-14", spent_usd="0"))
    usage = rerank_client.get_usage()
    assert usage == client.CallerUsage(
        caller="batch", day="2026-03-14", spent_usd=Decimal(0), calls=0, refused=0
    )
    assert usage.daily_budget_usd is None
    assert usage.requests_per_second is None


def test_get_usage_errors_are_translated(
    rerank_client: RerankClient, service: FakeRerankService
) -> None:
    service.script.append(
        Abort(
            grpc.StatusCode.FAILED_PRECONDITION,
            "only a named caller has a usage to tell",
            [error_info("NOT_A_NAMED_CALLER")],
        )
    )
    with pytest.raises(ServerError) as caught:
        rerank_client.get_usage()
    assert caught.value.error_info is not None
    assert caught.value.error_info.reason == "NOT_A_NAMED_CALLER"


def test_large_requests_and_responses_fit(rerank_client: RerankClient) -> None:
    # 1,000 documents of 4 KiB: about 4 MiB each way, past gRPC's 4 MiB default.
    documents = [f"{i:04d}" + "x" * 4092 for i in range(1000)]
    result = rerank_client.rerank("q", documents)
    assert len(result.ranking) == 1000
    assert result.reranked_documents[0] == documents[-1]


# --- errors -----------------------------------------------------------------------------------

ERROR_CLASSES = [
    (grpc.StatusCode.INVALID_ARGUMENT, InvalidRequestError),
    (grpc.StatusCode.NOT_FOUND, NotFoundError),
    (grpc.StatusCode.RESOURCE_EXHAUSTED, RateLimitedError),
    (grpc.StatusCode.UNAVAILABLE, UnavailableError),
    (grpc.StatusCode.DEADLINE_EXCEEDED, DeadlineExceededError),
    (grpc.StatusCode.PERMISSION_DENIED, PermissionDeniedError),
    (grpc.StatusCode.UNAUTHENTICATED, UnauthenticatedError),
    (grpc.StatusCode.INTERNAL, ServerError),
    (grpc.StatusCode.UNKNOWN, ServerError),
    (grpc.StatusCode.UNIMPLEMENTED, ServerError),
    (grpc.StatusCode.FAILED_PRECONDITION, ServerError),
    (grpc.StatusCode.DATA_LOSS, ServerError),
]


@pytest.mark.parametrize(("code", "error_class"), ERROR_CLASSES)
def test_every_status_becomes_its_exception(
    target: str,
    service: FakeRerankService,
    code: grpc.StatusCode,
    error_class: type[RerankClientError],
) -> None:
    service.script.append(Abort(code, f"failed with {code.name}"))
    # No service config: an UNAVAILABLE must reach us on the first attempt.
    with (
        RerankClient(target, service_config=None) as c,
        pytest.raises(error_class) as caught,
    ):
        c.rerank("q", ["a"])
    error = caught.value
    assert type(error) is error_class
    assert error.code == code
    assert error.details == f"failed with {code.name}"
    assert str(error) == f"{code.name}: failed with {code.name}"
    assert error.error_info is None
    assert error.retry_delay is None
    assert error.field_violations == []
    assert isinstance(error.__cause__, grpc.RpcError)


# One status code, several causes a caller acts on differently: the ErrorInfo reason decides.
REASONED_CLASSES = [
    ("OVERLOADED", OverloadedError),
    ("UPSTREAM_RATE_LIMITED", UpstreamRateLimitedError),
]


@pytest.mark.parametrize(("reason", "error_class"), REASONED_CLASSES)
def test_resource_exhausted_is_told_apart_by_its_reason(
    rerank_client: RerankClient,
    service: FakeRerankService,
    reason: str,
    error_class: type[RerankClientError],
) -> None:
    service.script.append(
        Abort(
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            "come back later",
            [error_info(reason), retry_info(1.5)],
        )
    )
    with pytest.raises(RateLimitedError) as caught:  # the common base still catches both
        rerank_client.rerank("q", ["a"])
    assert type(caught.value) is error_class
    assert caught.value.retry_delay == pytest.approx(1.5)
    assert caught.value.error_info is not None
    assert caught.value.error_info.error_reason == ErrorReason.Value(f"ERROR_REASON_{reason}")


def test_a_reason_never_overrides_its_status_code(
    target: str, rerank_client: RerankClient, service: FakeRerankService
) -> None:
    service.script.append(Abort(grpc.StatusCode.UNAVAILABLE, "x", [error_info("OVERLOADED")]))
    service.script.append(
        Abort(
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            "x",
            [error_details_pb2.ErrorInfo(reason="OVERLOADED", domain="elsewhere.example")],
        )
    )
    with (
        RerankClient(target, service_config=None) as no_retries,
        pytest.raises(RerankClientError) as caught,
    ):
        no_retries.rerank("q", ["a"])
    assert type(caught.value) is UnavailableError
    with pytest.raises(RerankClientError) as caught:
        rerank_client.rerank("q", ["a"])
    assert type(caught.value) is RateLimitedError  # another domain's reason means nothing here
    assert caught.value.error_info is not None
    assert caught.value.error_info.reason == "OVERLOADED"
    assert caught.value.error_info.error_reason == ErrorReason.ERROR_REASON_UNSPECIFIED


def test_a_reason_the_contract_does_not_know_is_unspecified_and_keeps_its_text(
    rerank_client: RerankClient, service: FakeRerankService
) -> None:
    """A newer server may send a reason this copy of the contract lacks: the status code still
    picks the class, and the reason's text is kept for the caller."""
    service.script.append(
        Abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "x", [error_info("SOMETHING_NEWER")])
    )
    with pytest.raises(RerankClientError) as caught:
        rerank_client.rerank("q", ["a"])
    assert type(caught.value) is RateLimitedError
    assert caught.value.error_info is not None
    assert caught.value.error_info.reason == "SOMETHING_NEWER"
    assert caught.value.error_info.error_reason == ErrorReason.ERROR_REASON_UNSPECIFIED


def test_a_message_over_the_send_limit_is_message_too_large(target: str) -> None:
    """gRPC refuses it on this side, before anything is sent: only its status message says why."""
    with (
        RerankClient(target, options=[("grpc.max_send_message_length", 1000)]) as small,
        pytest.raises(MessageTooLargeError) as caught,
    ):
        small.rerank("q", ["x" * 2000])
    error = caught.value
    assert error.code is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert not isinstance(error, RateLimitedError)  # waiting cannot help
    assert error.limit == 1000
    assert error.size is not None
    assert error.size > 2000


def test_every_error_class_is_reachable() -> None:
    mapped = {error_class for _, error_class in ERROR_CLASSES + REASONED_CLASSES}
    mapped.add(MessageTooLargeError)
    defined = {
        value
        for value in vars(client).values()
        if isinstance(value, type) and issubclass(value, RerankClientError)
    }
    assert defined - {RerankClientError} == mapped


def test_field_violations_are_decoded(
    rerank_client: RerankClient, service: FakeRerankService
) -> None:
    service.script.append(
        Abort(
            grpc.StatusCode.INVALID_ARGUMENT,
            "documents[1]: must not be empty",
            [bad_request(("documents[1]", "must not be empty"), ("top_n", "must be >= 1"))],
        )
    )
    with pytest.raises(InvalidRequestError) as caught:
        rerank_client.rerank("q", ["a", ""], top_n=0)
    assert caught.value.field_violations == [
        ("documents[1]", "must not be empty"),
        ("top_n", "must be >= 1"),
    ]


def test_retry_delay_and_error_info_are_decoded(
    rerank_client: RerankClient, service: FakeRerankService
) -> None:
    service.script.append(
        Abort(
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            "rate limited by the gateway",
            [retry_info(1.5), error_info("GATEWAY_RATE_LIMITED", model="cohere/rerank-v3.5")],
        )
    )
    with pytest.raises(RateLimitedError) as caught:
        rerank_client.rerank("q", ["a"])
    error = caught.value
    assert error.retry_delay == pytest.approx(1.5)
    assert error.error_info == client.ErrorInfo(
        "GATEWAY_RATE_LIMITED", "rerank.v1", {"model": "cohere/rerank-v3.5"}
    )


def test_list_models_errors_are_translated_too(
    rerank_client: RerankClient, service: FakeRerankService
) -> None:
    service.script.append(Abort(grpc.StatusCode.PERMISSION_DENIED, "no"))
    with pytest.raises(PermissionDeniedError):
        rerank_client.list_models()


class _BareRpcError(grpc.RpcError):
    """An RpcError without a status, as a hand-written interceptor might raise."""


class _MismatchedCall(grpc.RpcError):
    """An error whose status-details trailer disagrees with its status line."""

    def code(self) -> grpc.StatusCode:
        return grpc.StatusCode.NOT_FOUND

    def details(self) -> str:
        return "no such model"

    def trailing_metadata(self) -> tuple[tuple[str, bytes], ...]:
        status = Abort(grpc.StatusCode.INTERNAL, "something else", [retry_info(3)]).status()
        return tuple(status.trailing_metadata)


def test_odd_rpc_errors_still_translate() -> None:
    bare = client.from_rpc_error(_BareRpcError())
    assert type(bare) is ServerError
    assert bare.code == grpc.StatusCode.UNKNOWN

    mismatched = client.from_rpc_error(_MismatchedCall())
    assert type(mismatched) is NotFoundError
    assert mismatched.details == "no such model"
    assert mismatched.retry_delay is None  # the inconsistent details are dropped


# --- service config: retries ------------------------------------------------------------------


def test_default_service_config_is_the_shipped_one() -> None:
    config = client.default_service_config()
    assert config["loadBalancingConfig"] == [{"round_robin": {}}]
    (method,) = config["methodConfig"]
    assert method["name"] == [{"service": "rerank.v1.RerankService"}]
    assert method["retryPolicy"]["retryableStatusCodes"] == ["UNAVAILABLE"]

    options = dict(client.channel_options(None, client.USE_DEFAULT))
    assert options["grpc.enable_retries"] == 1
    # Receives the largest answer a default server sends for a request or batch it accepted.
    assert options["grpc.max_receive_message_length"] == max_response_bytes(
        64 * 1024 * 1024, 10_000, 100
    )
    assert options["grpc.max_send_message_length"] == 64 * 1024 * 1024
    assert "grpc.service_config" in options
    assert "grpc.service_config" not in dict(client.channel_options(None, None))
    overridden = dict(client.channel_options([("grpc.max_send_message_length", 1)], None))
    assert overridden["grpc.max_send_message_length"] == 1


def test_unavailable_once_is_retried_transparently(
    rerank_client: RerankClient, service: FakeRerankService
) -> None:
    service.script.append(Abort(grpc.StatusCode.UNAVAILABLE, "try again"))
    result = rerank_client.rerank("q", ["a", "b"])
    assert result.reranked_documents == ("b", "a")
    assert len(service.requests) == 2


def test_unavailable_gives_up_after_max_attempts(
    rerank_client: RerankClient, service: FakeRerankService
) -> None:
    service.script.extend([Abort(grpc.StatusCode.UNAVAILABLE, "down", [retry_info(0.25)])] * 5)
    with pytest.raises(UnavailableError) as caught:
        rerank_client.rerank("q", ["a"])
    assert caught.value.retry_delay == pytest.approx(0.25)
    assert len(service.requests) == 3  # maxAttempts in service_config.json


def test_invalid_argument_is_not_retried(
    rerank_client: RerankClient, service: FakeRerankService
) -> None:
    service.script.append(Abort(grpc.StatusCode.INVALID_ARGUMENT, "bad"))
    with pytest.raises(InvalidRequestError):
        rerank_client.rerank("q", ["a"])
    assert len(service.requests) == 1


def test_no_service_config_means_no_retries(target: str, service: FakeRerankService) -> None:
    service.script.append(Abort(grpc.StatusCode.UNAVAILABLE, "try again"))
    with RerankClient(target, service_config=None) as c, pytest.raises(UnavailableError):
        c.rerank("q", ["a"])
    assert len(service.requests) == 1


# --- deadlines --------------------------------------------------------------------------------


def test_per_call_timeout_becomes_deadline_exceeded(
    rerank_client: RerankClient, service: FakeRerankService
) -> None:
    service.script.append(Delay(5))
    with pytest.raises(DeadlineExceededError) as caught:
        rerank_client.rerank("q", ["a"], timeout=0.1)
    assert caught.value.code == grpc.StatusCode.DEADLINE_EXCEEDED


def test_client_default_timeout_applies(target: str, service: FakeRerankService) -> None:
    service.script.append(Delay(5))
    with RerankClient(target, timeout=0.1) as c, pytest.raises(DeadlineExceededError):
        c.list_models()


# --- channel ownership ------------------------------------------------------------------------


def test_from_channel_and_close(target: str) -> None:
    channel = grpc.insecure_channel(target)
    with RerankClient.from_channel(channel, timeout=5) as c:
        assert c.channel is channel
        assert c.rerank("q", ["a"]).reranked_documents == ("a",)
    # Leaving the block closed the channel: it can no longer carry calls.
    with pytest.raises(ValueError, match="closed channel"):
        c.rerank("q", ["a"])
