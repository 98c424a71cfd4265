"""The Cohere-compatible dialect: `POST /v1/rerank` and `/v2/rerank` bodies ⇄ the contract's
RerankRequest and RerankResponse, and the service's statuses as Cohere's.

A request is translated inside the call (the pipeline's handler), so a body that is not one is
an `InvalidRequest` or `MalformedRequest` with its span and access-log line like any other.
"""

from __future__ import annotations

import math
from typing import Any, cast

import grpc
import orjson
from google.protobuf.message import Message

from rerank.server._calls import CallRecord
from rerank.server._errors import FieldViolation, InvalidRequest, MalformedRequest, RerankError
from rerank.server._http_gateway import Handler, JsonCall
from rerank.server._status import retry_after_header
from rerank.v1 import rerank_service_pb2 as pb

#: The service's status codes as Cohere's HTTP statuses: the one translation at this boundary.
COHERE_STATUS: dict[grpc.StatusCode, int] = {
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.FAILED_PRECONDITION: 422,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
}
#: One search unit is one query over up to this many documents (Cohere's billing).
_SEARCH_UNIT_DOCUMENTS = 100


def _field(body: dict[str, Any], name: str, kind: type | tuple[type, ...], what: str) -> Any:
    value = body.get(name)
    if value is None:
        return None
    if not isinstance(value, kind) or isinstance(value, bool) is not (kind is bool):
        raise InvalidRequest([FieldViolation(name, f"must be {what}")])
    return value


def _document(version: int, index: int, value: object) -> pb.Document:
    if isinstance(value, dict) and version == 1 and isinstance(value.get("text"), str):
        value = value["text"]
    if not isinstance(value, str):
        shape = "a string or {'text': string}" if version == 1 else "a string"
        raise InvalidRequest([FieldViolation(f"documents[{index}]", f"must be {shape}")])
    return pb.Document(text=value)


def cohere_request(version: int, data: bytes) -> pb.RerankRequest:
    """The RerankRequest a Cohere v1 or v2 rerank body asks for."""
    try:
        body = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise MalformedRequest(f"the body is not JSON: {exc}") from None
    if not isinstance(body, dict):
        raise MalformedRequest("the body is not a JSON object")
    model = _field(body, "model", str, "a string") or ""
    if model and "/" not in model:
        model = f"cohere/{model}"  # a bare Cohere name, as Haystack and LlamaIndex send
    documents = _field(body, "documents", list, "a list")
    request = pb.RerankRequest(
        model=model,
        query=_field(body, "query", str, "a string") or "",
        documents=[_document(version, i, d) for i, d in enumerate(documents or ())],
    )
    if (top_n := _field(body, "top_n", int, "an integer")) is not None:
        if not 1 <= top_n <= 2**31 - 1:
            raise InvalidRequest([FieldViolation("top_n", "must be at least 1")])
        request.top_n = top_n
    # Cohere returns the documents only when asked (`return_documents`, false by default).
    request.return_documents = bool(_field(body, "return_documents", bool, "true or false"))
    tokens = _field(body, "max_tokens_per_doc", int, "an integer")
    if tokens is not None and version == 2:
        request.provider_options.update({"cohere": {"maxTokensPerDoc": tokens}})
    return request


def cohere_call(version: int, rerank: Handler) -> JsonCall:
    """The call a Cohere body of `version` makes of the service's Rerank."""

    async def handle(call: CallRecord, data: bytes) -> Message:
        return await rerank(call, cohere_request(version, data).SerializeToString())

    def answer(response: Message, call: CallRecord) -> bytes:
        return cohere_answer(version, response, call.documents)

    return JsonCall("Rerank", handle, answer, cohere_error)


def cohere_answer(version: int, answer: Message, documents: int | None) -> bytes:
    """A RerankResponse as Cohere's JSON answer (`documents`: how many were sent)."""
    response = cast(pb.RerankResponse, answer)
    results = []
    for ranked in response.ranking:
        result: dict[str, Any] = {"index": ranked.original_index, "relevance_score": ranked.score}
        if ranked.HasField("document"):
            result["document"] = {"text": ranked.document.text}
        results.append(result)
    # What the gateway billed this call: nothing when it was not asked (a cache hit, no
    # documents), as the answer's own usage says.
    asked = response.usage.upstream_calls > 0
    units = max(1, math.ceil((documents or 0) / _SEARCH_UNIT_DOCUMENTS)) if asked else 0
    meta = {"api_version": {"version": str(version)}, "billed_units": {"search_units": units}}
    return orjson.dumps({"id": response.id, "results": results, "meta": meta})


def cohere_error(
    error: RerankError | None, code: grpc.StatusCode, message: str
) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    """Cohere's status, headers (a `Retry-After` when waiting helps) and `{"message"}` body."""
    body = orjson.dumps({"message": message})
    return COHERE_STATUS.get(code, 500), retry_after_header(error), body
