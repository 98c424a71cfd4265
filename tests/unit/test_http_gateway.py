"""The gateway door's translations at its boundary: the service's answers and errors into the
AI Gateway's shapes, per protocol version (its routes: tests/sdk/test_gateway_door.py)."""

from __future__ import annotations

import json

import grpc
import msgspec
import pytest

from rerank.server._errors import (
    CallerRateLimited,
    FieldViolation,
    InvalidRequest,
    ModelNotFound,
    UpstreamNotFound,
)
from rerank.server._gateway_protocol import (
    PROTOCOL_V3,
    PROTOCOL_V4,
    ErrorEnvelope,
    ProtocolViolation,
    parse_rerank_body,
)
from rerank.server._http_gateway import config_answer, gateway_error, rerank_answer, rerank_request
from rerank.v1 import rerank_service_pb2 as pb

HEADERS = {
    "ai-gateway-protocol-version": "0.0.1",
    "ai-reranking-model-specification-version": "4",
    "ai-model-id": "cohere/rerank-v3.5",
    "content-type": "application/json",
}


def test_a_caller_over_its_rate_is_429_with_both_retry_headers() -> None:
    refused = CallerRateLimited("over its rate", caller="slow", retry_after=2.25)
    status, headers, body = gateway_error(
        PROTOCOL_V4, refused, grpc.StatusCode.RESOURCE_EXHAUSTED, refused.message, "m/x"
    )
    assert status == 429
    assert dict(headers) == {b"retry-after": b"3", b"retry-after-ms": b"2250"}
    assert json.loads(body) == {
        "error": {
            "message": "over its rate",
            "type": "rate_limit_exceeded",
            "param": None,
            "code": None,
        }
    }


def test_an_unknown_model_names_it_and_a_missing_resource_is_v4s_own() -> None:
    unknown = ModelNotFound("no such model", status=404)
    status, _, body = gateway_error(
        PROTOCOL_V3, unknown, grpc.StatusCode.NOT_FOUND, "no such model", "cohere/x"
    )
    assert (status, json.loads(body)["error"]["param"]) == (404, {"modelId": "cohere/x"})
    assert json.loads(body)["error"]["type"] == "model_not_found"
    missing = UpstreamNotFound("no such team", status=404)
    for version, kind in ((PROTOCOL_V4, "not_found"), (PROTOCOL_V3, "internal_server_error")):
        _, _, body = gateway_error(version, missing, grpc.StatusCode.NOT_FOUND, "x", "m/x")
        assert json.loads(body)["error"]["type"] == kind


def test_a_bug_is_500_without_details() -> None:
    status, headers, body = gateway_error(
        PROTOCOL_V4, None, grpc.StatusCode.INTERNAL, "internal error (incident 1)", "m/x"
    )
    assert (status, headers) == (500, [])
    assert json.loads(body)["error"]["type"] == "internal_server_error"


def test_an_invalid_request_names_its_field_as_param() -> None:
    invalid = InvalidRequest([FieldViolation("topN", "must be an integer >= 1, got 0")])
    status, _, body = gateway_error(
        PROTOCOL_V4, invalid, grpc.StatusCode.INVALID_ARGUMENT, invalid.message, "m/x"
    )
    assert (status, json.loads(body)["error"]["param"]) == (400, "topN")


def test_the_request_is_the_contracts() -> None:
    body = {
        "documents": {"type": "object", "values": [{"title": "a", "n": 2}]},
        "query": "q",
        "topN": 1,
        "providerOptions": {"cohere": {"maxTokensPerDoc": 512}},
    }
    request = rerank_request(PROTOCOL_V4, HEADERS, json.dumps(body).encode())
    assert request.model == "cohere/rerank-v3.5"
    assert request.documents[0].object.fields["n"].number_value == 2
    assert (request.top_n, request.return_documents) == (1, False)
    assert request.provider_options.fields["cohere"].struct_value.fields["maxTokensPerDoc"]
    with pytest.raises(InvalidRequest, match="ai-reranking-model-specification-version"):
        rerank_request(PROTOCOL_V3, HEADERS, json.dumps(body).encode())


def test_the_body_is_checked_once_for_every_server() -> None:
    with pytest.raises(ProtocolViolation) as caught:
        parse_rerank_body(b'{"documents":{"type":"text","values":["a",1]},"query":"q"}')
    assert (caught.value.param, caught.value.problem) == (
        "documents.values[1]",
        "must be a string because documents.type is 'text'",
    )
    assert (
        parse_rerank_body(
            b'{"documents":{"type":"text","values":[]},"query":"q"}', allow_empty=True
        ).values
        == ()
    )


def test_the_answer_keeps_v3s_warning_types() -> None:
    response = pb.RerankResponse(
        ranking=[pb.RankedDocument(original_index=1, score=0.5)],
        warnings=[pb.Warning(type=pb.Warning.TYPE_DEPRECATED, setting="topN", message="going")],
    )
    response.provider_metadata.update({"gateway": {"cost": "0.003"}})
    v4 = json.loads(rerank_answer(PROTOCOL_V4, response))
    v3 = json.loads(rerank_answer(PROTOCOL_V3, response))
    assert v4 == {
        "ranking": [{"index": 1, "relevanceScore": 0.5}],
        "warnings": [{"type": "deprecated", "setting": "topN", "message": "going"}],
        "providerMetadata": {"gateway": {"cost": "0.003"}},
    }
    assert v3["warnings"] == [{"type": "other", "message": "deprecated setting 'topN': going"}]


def test_config_lists_pricing_only_when_the_sdk_can_read_it() -> None:
    models = pb.ListModelsResponse(
        models=[
            pb.Model(id="voyage/rerank-2.5", name="R", pricing={"input": "1", "output": "0"}),
            pb.Model(id="cohere/rerank-v3.5", name="C", pricing={"search_unit": "0.002"}),
        ]
    )
    listed = json.loads(config_answer(PROTOCOL_V3, models))["models"]
    assert [m["pricing"] for m in listed] == [{"input": "1", "output": "0"}, None]
    assert listed[1] == {
        "id": "cohere/rerank-v3.5",
        "name": "C",
        "description": None,
        "pricing": None,
        "specification": {
            "specificationVersion": "v3",
            "provider": "cohere",
            "modelId": "cohere/rerank-v3.5",
        },
        "modelType": "reranking",
    }


def test_the_envelope_reads_as_the_sdk_shows_it() -> None:
    envelope = msgspec.json.decode(
        b'{"error":{"message":"bad","type":"x"},"generationId":"gen_1"}', type=ErrorEnvelope
    )
    assert envelope.display_message == "bad [gen_1]"
