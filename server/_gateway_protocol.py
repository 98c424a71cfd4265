"""The AI Gateway's reranking protocol (gateway spec §0-§6), defined once for its client (the
gateway adapter, `_gateway`) and its servers (the HTTP port's `_http_gateway`, the mock gateway):
headers, bodies, answers, the error envelope, the model listing, and what differs between v3
and v4 (`PROTOCOL_VERSIONS`). Answers and envelopes are msgspec structs, typed as they decode
(the cheapest way measured, `python -m bench.decode_cost`). A refused request is a
`ProtocolViolation`, which each side words as its own error.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Literal

import msgspec
import orjson

PROTOCOL_VERSION = "0.0.1"  # of `ai-gateway-protocol-version`, on every request
PROTOCOL_VERSION_HEADER = "ai-gateway-protocol-version"
SPEC_VERSION_HEADER = "ai-reranking-model-specification-version"
MODEL_ID_HEADER = "ai-model-id"
TEAM_HEADER = "x-vercel-ai-gateway-team"  # optional: `createGateway({teamIdOrSlug})` sends it
RERANK_PATH = "/reranking-model"
CONFIG_PATH = "/config"

WarningKind = Literal["unsupported", "compatibility", "other", "deprecated"]


@dataclass(frozen=True)
class ProtocolVersion:
    """What one version of the protocol requires and allows (spec §0): `name` is the first
    segment of its base path, `specification_version` the value of the
    `ai-reranking-model-specification-version` header, `config_specification_version` the
    literal the SDK's schema demands of every model `GET /config` lists; `warning_types` any
    other of which fails the SDK's whole call, `error_types` those it has a class of its own for.
    """

    name: str
    specification_version: str
    config_specification_version: str
    warning_types: tuple[WarningKind, ...]
    error_types: tuple[str, ...]

    @property
    def base_path(self) -> str:
        return f"/{self.name}/ai"

    def base_url(self, host: str, port: int) -> str:
        return http_origin(host, port) + self.base_path


def http_origin(host: str, port: int) -> str:
    """``http://HOST:PORT``, an IPv6 address in brackets."""
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


_V3_WARNING_TYPES: tuple[WarningKind, ...] = ("unsupported", "compatibility", "other")
_V3_ERROR_TYPES = (  # spec §4
    "authentication_error",
    "invalid_request_error",
    "forbidden",
    "model_not_found",
    "failed_dependency",
    "rate_limit_exceeded",
    "internal_server_error",
)

PROTOCOL_V3 = ProtocolVersion("v3", "3", "v3", _V3_WARNING_TYPES, _V3_ERROR_TYPES)
"""``ai`` 6 with ``@ai-sdk/gateway`` 3.x."""
PROTOCOL_V4 = ProtocolVersion(
    "v4", "4", "v4", (*_V3_WARNING_TYPES, "deprecated"), (*_V3_ERROR_TYPES, "not_found")
)
"""``ai`` 7 with ``@ai-sdk/gateway`` 4.x: what ``npm install ai`` gives today."""
PROTOCOL_VERSIONS: Mapping[str, ProtocolVersion] = MappingProxyType(
    {version.name: version for version in (PROTOCOL_V3, PROTOCOL_V4)}
)


class ProtocolViolation(Exception):
    """A request outside the protocol: `param` names the header or body field, `problem` says
    what is wrong with it, `message` says both in one sentence."""

    def __init__(self, param: str, problem: str, message: str | None = None) -> None:
        self.param, self.problem = param, problem
        self.message = message or f"{param} {problem}"
        super().__init__(self.message)


def check_rerank_headers(headers: Mapping[str, str], protocol: ProtocolVersion) -> str:
    """Check the model headers and content type of a rerank call; return the model id."""
    if PROTOCOL_VERSION_HEADER not in headers:
        raise _header(PROTOCOL_VERSION_HEADER, "is missing", "Missing required header")
    spec_version = headers.get(SPEC_VERSION_HEADER)
    wanted = protocol.specification_version
    if spec_version != wanted:
        got = "it is missing" if spec_version is None else f"got {spec_version!r}"
        served = [
            f" (protocol {v.name} is served under {v.base_path})"
            for v in PROTOCOL_VERSIONS.values()
            if v.specification_version == spec_version
        ]
        problem = f"must be {wanted!r} under {protocol.base_path}, {got}{''.join(served)}"
        raise ProtocolViolation(
            SPEC_VERSION_HEADER, problem, f"Header {SPEC_VERSION_HEADER} {problem}"
        )
    model_id = headers.get(MODEL_ID_HEADER, "").strip()
    if not model_id:
        raise _header(MODEL_ID_HEADER, "is missing", "Missing required header")
    media_type = headers.get("content-type", "").partition(";")[0].strip().lower()
    if media_type != "application/json":
        problem = f"must be application/json, got {media_type or 'nothing'!r}"
        raise ProtocolViolation("content-type", problem, f"Header content-type {problem}")
    return model_id


def _header(name: str, problem: str, said: str) -> ProtocolViolation:
    return ProtocolViolation(name, problem, f"{said} {name}")


@dataclass(frozen=True)
class RerankRequest:
    """A body of `POST /reranking-model` (spec §2), checked; the model is the header's."""

    kind: Literal["text", "object"]
    values: tuple[str | dict[str, Any], ...]
    query: str
    top_n: int | None
    provider_options: dict[str, dict[str, Any]]  # empty when the body had none


def encode_rerank_body(
    kind: str,
    values: Any,
    query: str,
    top_n: int | None,
    provider_options: Mapping[str, Any] | None,
) -> bytes:
    """The body exactly as the AI SDK writes it: camelCase, this key order, absent keys
    omitted, no `model` key (the model travels only in the `ai-model-id` header)."""
    body: dict[str, Any] = {"documents": {"type": kind, "values": values}, "query": query}
    if top_n is not None:
        body["topN"] = top_n
    if provider_options is not None:
        body["providerOptions"] = provider_options
    return orjson.dumps(body)


def parse_json(body: bytes) -> Any:
    """orjson is strict: no NaN, valid UTF-8 only."""
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise ProtocolViolation("body", "", f"Request body is not valid JSON: {exc}") from None


def parse_rerank_body(
    body: bytes, *, max_documents: int | None = None, allow_empty: bool = False
) -> RerankRequest:
    """Check a rerank body (spec §2); every refusal names the offending field. A server with
    limits of its own passes none here (`max_documents` None, `allow_empty`)."""
    data = parse_json(body)
    if not isinstance(data, dict):
        raise ProtocolViolation(
            "body", "must be a JSON object", "Request body must be a JSON object"
        )
    documents = data.get("documents")
    if not isinstance(documents, dict):
        raise ProtocolViolation("documents", "must be an object {type, values}")
    kind = documents.get("type")
    if kind not in ("text", "object"):
        raise ProtocolViolation("documents.type", "must be 'text' or 'object'")
    values = documents.get("values")
    if not isinstance(values, list):
        raise ProtocolViolation("documents.values", "must be an array")
    if not values and not allow_empty:
        raise ProtocolViolation("documents.values", "must not be empty")
    if max_documents is not None and len(values) > max_documents:
        problem = f"must hold at most {max_documents} documents, got {len(values)}"
        raise ProtocolViolation("documents.values", problem)
    wanted, wanted_name = (str, "a string") if kind == "text" else (dict, "an object")
    for index, value in enumerate(values):
        if not isinstance(value, wanted):
            raise ProtocolViolation(
                f"documents.values[{index}]",
                f"must be {wanted_name} because documents.type is {kind!r}",
            )
    query = data.get("query")
    if not isinstance(query, str):
        raise ProtocolViolation("query", "must be a string")
    top_n = data.get("topN")
    # JSON true is not a count, and JSON 2.0 decodes to a float.
    if top_n is not None and (not isinstance(top_n, int) or isinstance(top_n, bool) or top_n < 1):
        raise ProtocolViolation(
            "topN", f"must be an integer >= 1, got {orjson.dumps(top_n).decode()}"
        )
    options = data.get("providerOptions", {})
    if not isinstance(options, dict):
        raise ProtocolViolation("providerOptions", "must be an object")
    for provider, provider_options in options.items():
        if not isinstance(provider_options, dict):
            raise ProtocolViolation(f"providerOptions.{provider}", "must be an object")
    return RerankRequest(kind, tuple(values), query, top_n, options)


class RankedItem(msgspec.Struct):
    """One item of an answer's `ranking`, typed: an index that is not an integer (a bool, a
    float) or a score that is not a finite number does not decode."""

    index: int
    score: float = msgspec.field(name="relevanceScore")


class RerankAnswer(msgspec.Struct, rename="camel", omit_defaults=True):
    """A 200 answer of `reranking-model` (spec §3): `ranking` sorted and cut to `topN` by its
    producer; `warnings` items of the types the version allows (`warning`); `providerMetadata`
    a map of objects, the gateway's `{"cost": "0.002"}` under `gateway`. A reader checks the
    two optional parts itself, as its version defines them."""

    ranking: list[RankedItem] | None = None
    warnings: Any = None
    provider_metadata: Any = None


def warning(
    kind: WarningKind, feature: str = "", details: str = "", message: str = "", setting: str = ""
) -> dict[str, str]:
    """One warning with the keys its type has: `feature` and `details` (when given) for
    "unsupported" and "compatibility", `message` for "other", `setting` and `message` for
    "deprecated"."""
    if kind in ("unsupported", "compatibility"):
        return {"type": kind, "feature": feature, **({"details": details} if details else {})}
    if kind == "deprecated":
        return {"type": kind, "setting": setting, "message": message}
    return {"type": kind, "message": message}


class ErrorBody(msgspec.Struct):
    """`error` of the envelope: `message` required; `type`, `param`, `code` null when absent."""

    message: str
    type: Any = None
    param: Any = None
    code: Any = None


class ErrorEnvelope(msgspec.Struct, rename="camel", omit_defaults=True):
    """Every non-2xx body (spec §4): `{"error": {...}, "generationId"?: ...}`."""

    error: ErrorBody
    generation_id: Any = None

    @property
    def display_message(self) -> str:
        """The message as the AI SDK shows it: the generation id appended in brackets."""
        generation_id = self.generation_id if isinstance(self.generation_id, str) else ""
        return f"{self.error.message} [{generation_id}]" if generation_id else self.error.message


class Specification(msgspec.Struct, rename="camel"):
    specification_version: str
    provider: str
    model_id: str


class ConfigModel(msgspec.Struct, rename="camel"):
    """One model of `GET /config` (spec §6); `pricing`, when there is one, has string
    `input` and `output` (the SDK's schema refuses the whole list otherwise)."""

    id: str
    name: str
    description: str | None
    pricing: dict[str, str] | None
    specification: Specification
    model_type: str


def config_model(
    protocol: ProtocolVersion,
    model_id: str,
    name: str,
    description: str | None,
    pricing: Mapping[str, str] | None,
) -> ConfigModel:
    """A model as `GET /config` of `protocol` lists it."""
    if pricing is not None and not {"input", "output"} <= pricing.keys():
        pricing = None
    specification = Specification(
        protocol.config_specification_version, model_id.partition("/")[0], model_id
    )
    return ConfigModel(
        model_id,
        name,
        description,
        None if pricing is None else dict(pricing),
        specification,
        "reranking",
    )


class ConfigAnswer(msgspec.Struct):
    """The body of `GET /config`."""

    models: list[ConfigModel]
