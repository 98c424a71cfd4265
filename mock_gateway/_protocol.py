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
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Literal

import orjson

from ._catalogue import RERANKING_MODELS, Model
from ._http import Reply, json_reply
from ._scoring import score
from ._versions import PROTOCOL_VERSIONS, ProtocolVersion

PROTOCOL_VERSION_HEADER = "ai-gateway-protocol-version"
SPEC_VERSION_HEADER = "ai-reranking-model-specification-version"
MODEL_ID_HEADER = "ai-model-id"
TEAM_HEADER = "x-vercel-ai-gateway-team"
"""Optional on both versions; its value comes back in ``providerMetadata.mock.team``."""

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
        return error_reply(
            self.status,
            {"message": self.message, "type": self.type, "param": self.param, "code": self.code},
            generation_id,
            self.headers,
        )


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


def check_rerank_headers(headers: Mapping[str, str], protocol: ProtocolVersion) -> str:
    """Validate the model headers and content type of a rerank call; return the model id."""
    if PROTOCOL_VERSION_HEADER not in headers:
        raise _header_error(
            f"Missing required header {PROTOCOL_VERSION_HEADER}", PROTOCOL_VERSION_HEADER
        )
    spec_version = headers.get(SPEC_VERSION_HEADER)
    wanted = protocol.specification_version
    if spec_version != wanted:
        got = "it is missing" if spec_version is None else f"got {spec_version!r}"
        raise _header_error(
            f"Header {SPEC_VERSION_HEADER} must be {wanted!r} under {protocol.base_path}, "
            f"{got}{_where_served(spec_version)}",
            SPEC_VERSION_HEADER,
        )
    model_id = headers.get(MODEL_ID_HEADER, "").strip()
    if not model_id:
        raise _header_error(f"Missing required header {MODEL_ID_HEADER}", MODEL_ID_HEADER)
    media_type = headers.get("content-type", "").partition(";")[0].strip().lower()
    if media_type != "application/json":
        raise _header_error(
            f"Header content-type must be application/json, got {media_type or 'nothing'!r}",
            "content-type",
        )
    return model_id


def _where_served(spec_version: str | None) -> str:
    # A client of the other SDK generation at the wrong base URL: say where its version lives.
    for version in PROTOCOL_VERSIONS.values():
        if version.specification_version == spec_version:
            return f" (protocol {version.name} is served under {version.base_path})"
    return ""


def _header_error(message: str, header: str) -> GatewayError:
    return GatewayError(400, message, param=header)


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


@dataclass(frozen=True)
class RerankRequest:
    """A validated body of ``POST /reranking-model``."""

    kind: Literal["text", "object"]
    values: tuple[str | dict[str, Any], ...]
    query: str
    top_n: int | None
    provider_options: dict[str, dict[str, Any]]
    """Empty when the body had no ``providerOptions``."""


def parse_json(body: bytes) -> Any:
    """Decode a JSON body or raise 400 (orjson is strict: no NaN, valid UTF-8 only)."""
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise GatewayError(400, f"Request body is not valid JSON: {exc}") from None


def parse_rerank_body(body: bytes) -> RerankRequest:
    """Validate a rerank body (spec §2); every refusal names the offending field."""
    data = parse_json(body)
    if not isinstance(data, dict):
        raise GatewayError(400, "Request body must be a JSON object")

    documents = data.get("documents")
    if not isinstance(documents, dict):
        raise _field_error("documents", "must be an object {type, values}")
    kind = documents.get("type")
    if kind not in ("text", "object"):
        raise _field_error("documents.type", "must be 'text' or 'object'")
    values = documents.get("values")
    if not isinstance(values, list):
        raise _field_error("documents.values", "must be an array")
    if not values:
        raise _field_error("documents.values", "must not be empty")
    if len(values) > MAX_DOCUMENTS:
        raise _field_error(
            "documents.values", f"must hold at most {MAX_DOCUMENTS} documents, got {len(values)}"
        )
    wanted, wanted_name = (str, "a string") if kind == "text" else (dict, "an object")
    for index, value in enumerate(values):
        if not isinstance(value, wanted):
            raise _field_error(
                f"documents.values[{index}]",
                f"must be {wanted_name} because documents.type is {kind!r}",
            )

    query = data.get("query")
    if not isinstance(query, str):
        raise _field_error("query", "must be a string")

    top_n = data.get("topN")
    if top_n is not None and (not _is_int(top_n) or top_n < 1):
        raise _field_error("topN", f"must be an integer >= 1, got {orjson.dumps(top_n).decode()}")

    options = data.get("providerOptions", {})
    if not isinstance(options, dict):
        raise _field_error("providerOptions", "must be an object")
    for provider, provider_options in options.items():
        if not isinstance(provider_options, dict):
            raise _field_error(f"providerOptions.{provider}", "must be an object")

    return RerankRequest(kind, tuple(values), query, top_n, options)


def _is_int(value: Any) -> bool:
    # JSON true is not a count, and JSON 2.0 decodes to a float.
    return isinstance(value, int) and not isinstance(value, bool)


def _field_error(field: str, problem: str) -> GatewayError:
    return GatewayError(400, f"{field} {problem}", param=field)


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
    warnings = []
    for provider in request.provider_options:
        if provider in ("cohere", "voyage") and provider != model.provider:
            warnings.append(
                {
                    "type": "unsupported",
                    "feature": f"providerOptions.{provider}",
                    "details": f"{model.provider} models ignore {provider} provider options.",
                }
            )
    return warnings


def ranking_items(ranking: list[tuple[int, float]]) -> list[dict[str, Any]]:
    """The ``ranking`` array of a success body."""
    return [{"index": index, "relevanceScore": value} for index, value in ranking]


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
    payload: dict[str, Any] = {"ranking": ranking_items(ranking)}
    warnings = warnings_for(model, request)
    if warnings:
        payload["warnings"] = warnings
    mock: dict[str, Any] = {"searchUnits": units, "documents": len(request.values)}
    if team is not None:
        mock["team"] = team
    payload["providerMetadata"] = {
        "gateway": {
            "cost": _decimal_string(
                model.search_unit_price * units if cost_usd is None else cost_usd
            )
        },
        "mock": mock,
    }
    return payload


def _decimal_string(value: Decimal) -> str:
    # "0.002", never "2E-3" nor "0.0020".
    return format(value.normalize(), "f")
