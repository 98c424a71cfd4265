"""The AI Gateway's reranking protocol (spec §1-§4): headers, request body, answers, errors.

Everything here is pure: it turns request bytes into a validated ``RerankRequest`` or a
``GatewayError``, and a ranking into response bytes. What differs between v3 and v4 comes in
as a ``ProtocolVersion`` (``_versions``). The ASGI plumbing lives in ``_app``.
"""

from __future__ import annotations

import hashlib
import hmac
import math
from collections.abc import Callable, Mapping
from decimal import Decimal
from typing import Any

import msgspec

from rerank.server import _gateway_protocol as protocol
from rerank.server._gateway_protocol import (
    ErrorBody,
    ErrorEnvelope,
    ProtocolViolation,
    RankedItem,
    RerankAnswer,
    RerankRequest,
    warning,
)

from ._catalogue import RERANKING_MODELS, Model
from ._http import Reply, json_reply
from ._scoring import score
from ._versions import ProtocolVersion

MAX_DOCUMENTS = 10_000
"""Cohere's hard limit; the real gateway's is not documented."""

DOCUMENTS_PER_SEARCH_UNIT = 100

# Crockford's base32 alphabet, as ULIDs (and the gateway's generation ids) use it.
_BASE32 = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


class GatewayError(Exception):
    """A request the gateway refuses; becomes the error envelope of spec §4."""

    def __init__(
        self,
        status: int,
        message: str,
        type_: str = "invalid_request_error",
        *,
        param: Any = None,
        code: Any = None,
        headers: tuple[tuple[str, str], ...] = (),
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type_
        self.param = param
        self.code = code
        self.headers = headers

    def reply(self, generation_id: str) -> Reply:
        """The envelope ``{"error": {...}, "generationId": ...}`` with this error's status."""
        envelope = ErrorEnvelope(
            ErrorBody(self.message, self.type, self.param, self.code), generation_id
        )
        return json_reply(self.status, msgspec.to_builtins(envelope), self.headers)

    @classmethod
    def of(cls, violation: ProtocolViolation) -> GatewayError:
        """400 for a request outside the protocol, naming the header or field."""
        return cls(400, violation.message, param=violation.param)


def error_reply(
    status: int,
    error: Mapping[str, Any],
    generation_id: str | None,
    headers: tuple[tuple[str, str], ...] = (),
) -> Reply:
    """An error envelope; ``generation_id=None`` leaves the key out."""
    payload: dict[str, Any] = {"error": dict(error)}
    if generation_id is not None:
        payload["generationId"] = generation_id
    return json_reply(status, payload, headers)


def generation_id(*parts: bytes) -> str:
    """A ``gen_`` id derived from the request, so that equal requests get equal answers."""
    digest = hashlib.blake2b(b"\x00".join(parts), digest_size=16).digest()
    number = int.from_bytes(digest, "big")
    chars = [_BASE32[(number >> shift) & 31] for shift in range(125, -1, -5)]
    return "gen_" + "".join(chars)


def bearer_token(headers: Mapping[str, str]) -> str | None:
    """The token of an ``authorization: Bearer <token>`` header, or None if there is none."""
    scheme, _, token = headers.get("authorization", "").strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        return None
    return token


def token_accepted(token: str, api_key: str | None) -> bool:
    """Whether ``token`` opens the door: any token without a key, else exactly the key."""
    if api_key is None:
        return True
    # Constant time, as a real key check would be.
    return hmac.compare_digest(token.encode(), api_key.encode())


def check_auth(headers: Mapping[str, str], api_key: str | None) -> None:
    """Raise 401 ``authentication_error`` unless the bearer token is acceptable."""
    token = bearer_token(headers)
    if token is None:
        raise GatewayError(
            401,
            "Missing or malformed authorization header: expected 'Bearer <api key or OIDC token>'",
            "authentication_error",
        )
    if not token_accepted(token, api_key):
        # Never echo the presented token.
        raise GatewayError(401, "Invalid API key or OIDC token", "authentication_error")


def check_rerank_headers(headers: Mapping[str, str], version: ProtocolVersion) -> str:
    """Validate the model headers and content type of a rerank call; return the model id."""
    try:
        return protocol.check_rerank_headers(headers, version)
    except ProtocolViolation as violation:
        raise GatewayError.of(violation) from None


def find_model(model_id: str) -> Model:
    """The reranking model ``model_id``, or 404 ``model_not_found`` with ``param.modelId``."""
    model = RERANKING_MODELS.get(model_id)
    if model is None:
        raise GatewayError(
            404,
            f"Reranking model {model_id!r} not found",
            "model_not_found",
            param={"modelId": model_id},
        )
    return model


def parse_json(body: bytes) -> Any:
    """Decode a JSON body or raise 400 (orjson is strict: no NaN, valid UTF-8 only)."""
    try:
        return protocol.parse_json(body)
    except ProtocolViolation as violation:
        raise GatewayError(400, violation.message) from None


def parse_rerank_body(body: bytes) -> RerankRequest:
    """Validate a rerank body (spec §2); every refusal names the offending field."""
    try:
        return protocol.parse_rerank_body(body, max_documents=MAX_DOCUMENTS)
    except ProtocolViolation as violation:
        param = None if violation.param == "body" else violation.param
        raise GatewayError(400, violation.message, param=param) from None


def rank(
    model_id: str,
    query: str,
    values: tuple[str | dict[str, Any], ...],
    top_n: int | None,
    fixed: Callable[[str | dict[str, Any]], float | None] | None = None,
) -> list[tuple[int, float]]:
    """``(index, score)`` pairs by descending score, ties by ascending index, cut to ``top_n``.

    ``fixed`` may give a document a score of its own (a test's script, see ``_script``); None
    from it, or no ``fixed``, scores the document with ``score``.
    """

    def scored_one(value: str | dict[str, Any]) -> float:
        chosen = None if fixed is None else fixed(value)
        return score(model_id, query, value) if chosen is None else chosen

    scored = [(index, scored_one(value)) for index, value in enumerate(values)]
    scored.sort(key=lambda pair: (-pair[1], pair[0]))
    return scored if top_n is None else scored[:top_n]


def search_units(document_count: int) -> int:
    """Billed units: one per query over up to 100 documents (Cohere's definition)."""
    return max(1, math.ceil(document_count / DOCUMENTS_PER_SEARCH_UNIT))


def warnings_for(model: Model, request: RerankRequest) -> list[dict[str, str]]:
    """Warnings the mock emits: options addressed to the other reranking provider.

    ``providerOptions.cohere`` sent to a Voyage model (or ``voyage`` to a Cohere model) is
    ignored and reported as ``unsupported``, in the order the options were sent.
    """
    return [
        warning(
            "unsupported",
            f"providerOptions.{provider}",
            f"{model.provider} models ignore {provider} provider options.",
        )
        for provider in request.provider_options
        if provider in ("cohere", "voyage") and provider != model.provider
    ]


def ranking_items(ranking: list[tuple[int, float]]) -> list[dict[str, Any]]:
    """The ``ranking`` array of a success body."""
    items: list[dict[str, Any]] = msgspec.to_builtins(_ranked(ranking))
    return items


def _ranked(ranking: list[tuple[int, float]]) -> list[RankedItem]:
    return [RankedItem(index, value) for index, value in ranking]


def success_payload(
    model: Model,
    request: RerankRequest,
    ranking: list[tuple[int, float]],
    team: str | None = None,
    cost_usd: Decimal | None = None,
) -> dict[str, Any]:
    """The 200 body of spec §3; ``warnings`` only when there is one.

    ``team`` is the request's ``x-vercel-ai-gateway-team``, shown to the test as
    ``providerMetadata.mock.team`` (left out without the header). ``cost_usd`` replaces the
    cost the model's price gives (``MockSettings.cost_usd``).
    """
    units = search_units(len(request.values))
    mock: dict[str, Any] = {"searchUnits": units, "documents": len(request.values)}
    if team is not None:
        mock["team"] = team
    cost = model.search_unit_price * units if cost_usd is None else cost_usd
    answer = RerankAnswer(
        _ranked(ranking),
        warnings_for(model, request) or None,
        {"gateway": {"cost": _decimal_string(cost)}, "mock": mock},
    )
    payload: dict[str, Any] = msgspec.to_builtins(answer)
    return payload


def _decimal_string(value: Decimal) -> str:
    # "0.002", never "2E-3" nor "0.0020".
    return format(value.normalize(), "f")
