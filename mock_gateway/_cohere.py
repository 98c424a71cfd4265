"""The gateway's Cohere-compatible endpoints, ``POST /v1/rerank`` and ``/v2/rerank`` (spec §7).

Same catalogue, same bearer key and same scoring as ``.../reranking-model`` (v3 and v4); Cohere's
request and response shapes and its plain ``{"message": ...}`` errors. Shape and type
problems are 400, values out of range 422 (as Cohere separates them), unknown models 404.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Mapping
from typing import Any

import orjson

from ._catalogue import RERANKING_MODELS
from ._http import Reply, json_reply
from ._protocol import MAX_DOCUMENTS, bearer_token, rank, search_units, token_accepted


class CohereError(Exception):
    """A refused Cohere-style request: ``status`` with ``{"message": message}``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message

    def reply(self) -> Reply:
        """The error as Cohere answers it."""
        return json_reply(self.status, {"message": self.message})


def check_auth(headers: Mapping[str, str], api_key: str | None) -> None:
    """Raise 401 unless the bearer token is acceptable (Cohere's wording)."""
    token = bearer_token(headers)
    if token is None:
        raise CohereError(401, "no api key supplied")
    if not token_accepted(token, api_key):
        raise CohereError(401, "invalid api token")


def answer(api_version: str, body: bytes) -> Reply:
    """Validate a Cohere rerank request and answer it; raise ``CohereError`` if it is refused."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise CohereError(400, "invalid request: body is not valid JSON") from None
    if not isinstance(data, dict):
        raise CohereError(400, "invalid request: body must be a JSON object")

    model_id = data.get("model")
    if not isinstance(model_id, str) or not model_id:
        raise CohereError(400, "invalid request: model must be a non-empty string")
    if model_id not in RERANKING_MODELS:
        raise CohereError(
            404,
            f"model '{model_id}' not found, make sure the correct model ID was used "
            "and that you have access to the model.",
        )
    query = data.get("query")
    if not isinstance(query, str):
        raise CohereError(400, "invalid request: query must be a string")
    if not query.strip():
        raise CohereError(400, "invalid request: query must not be empty")
    documents = data.get("documents")
    if not isinstance(documents, list):
        raise CohereError(400, "invalid request: documents must be a list of strings")
    if not documents:
        raise CohereError(400, "invalid request: list of documents must not be empty")
    for index, document in enumerate(documents):
        if not isinstance(document, str):
            raise CohereError(400, f"invalid request: documents[{index}] must be a string")
    if len(documents) > MAX_DOCUMENTS:
        raise CohereError(
            422, f"too many documents: {len(documents)} (at most {MAX_DOCUMENTS} are allowed)"
        )
    top_n = _integer(data, "top_n", 1, None)
    _integer(data, "max_tokens_per_doc", 1, None)
    _integer(data, "priority", 0, 999)

    ranking = rank(model_id, query, tuple(documents), top_n)
    # A UUID like Cohere's, but derived from the request so equal requests get equal bytes.
    digest = hashlib.blake2b(api_version.encode() + b"\x00" + body, digest_size=16).digest()
    return json_reply(
        200,
        {
            "id": str(uuid.UUID(bytes=digest, version=4)),
            "results": [{"index": i, "relevance_score": s} for i, s in ranking],
            "meta": {
                "api_version": {"version": api_version},
                "billed_units": {"search_units": search_units(len(documents))},
            },
        },
    )


def _integer(data: dict[str, Any], name: str, minimum: int, maximum: int | None) -> int | None:
    value = data.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise CohereError(400, f"invalid request: {name} must be an integer")
    if value < minimum or (maximum is not None and value > maximum):
        bound = f">= {minimum}" if maximum is None else f"within [{minimum}, {maximum}]"
        raise CohereError(422, f"{name} must be {bound}, got {value}")
    return value
