"""The AI Gateway adapter: domain values ⇄ the gateway's HTTP protocol.

This module is the only place that knows the gateway's JSON and the only place its answers
(statuses, envelopes) become `rerank.server._errors`; the exchanges themselves, and their
failures, are `rerank.server._gateway_http`'s. The protocol it speaks is the one the AI SDK's
`@ai-sdk/gateway` speaks (`POST {base}/reranking-model`, `GET {base}/config`), header for
header, so the real gateway and the bundled mock are interchangeable behind it. Both versions of
it, v3 (gateway 3.x) and v4 (4.x), are spoken; what differs between them is the one table
`PROTOCOL_FACTS`.

A rerank answer's ranking is checked here, once, against the documents the call sent, and leaves
valid (`RerankOutcome`): no layer above checks it again. It is decoded by msgspec into typed
values: 24 µs of CPU per answer of 20 documents and 1.05 ms per 1,000, against 34 µs and 1.43 ms
for orjson with the types checked by hand (`python -m bench.decode_cost`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import NoReturn, TypeVar

import msgspec
from opentelemetry.trace import Tracer

from rerank.server import _errors as errors
from rerank.server._calls import current_call
from rerank.server._config import GatewayProtocol
from rerank.server._credentials import Credential, StaticCredential
from rerank.server._domain import (
    JsonObject,
    ModelInfo,
    Ranked,
    RerankOutcome,
    RerankQuery,
    Usage,
    Warning,
    WarningType,
    best_first,
    reported_cost,
)
from rerank.server._gateway_http import USER_AGENT, GatewayHttp, JsonBody, parse_retry_after
from rerank.server._gateway_protocol import PROTOCOL_V3, PROTOCOL_V4, PROTOCOL_VERSION, TEAM_HEADER
from rerank.server._gateway_protocol import ErrorEnvelope as _Envelope
from rerank.server._gateway_protocol import RankedItem as _RankedItem
from rerank.server._gateway_protocol import RerankAnswer as _RerankAnswer
from rerank.server._gateway_protocol import encode_rerank_body as _encode_body

logger = logging.getLogger(__name__)
T = TypeVar("T")

#: Distinct undocumented warning types logged per adapter; past this, no more are (a gateway
#: inventing a new type per answer must not grow our memory or flood the log).
MAX_LOGGED_WARNING_TYPES = 100


@dataclass(frozen=True)
class ProtocolFacts:
    """What one version of the gateway's reranking protocol says (the spec's section 0)."""

    #: The value of `ai-reranking-model-specification-version` on a rerank call.
    specification_version: str
    #: The warning types the SDK of this version accepts; any other is passed on as "other".
    warning_types: frozenset[WarningType]
    #: The gateway's `error.type` → our error. A missing or unknown type is decided by status.
    error_types: Mapping[str, type[errors.UpstreamError]]


_ERROR_CLASSES: Mapping[str, type[errors.UpstreamError]] = {
    "authentication_error": errors.UpstreamAuthentication,
    "invalid_request_error": errors.UpstreamInvalidRequest,
    "forbidden": errors.UpstreamForbidden,
    "model_not_found": errors.ModelNotFound,
    "not_found": errors.UpstreamNotFound,
    "failed_dependency": errors.UpstreamFailedDependency,
    "rate_limit_exceeded": errors.UpstreamRateLimited,
    "internal_server_error": errors.UpstreamUnavailable,
}
#: The one table of what differs between the versions (`_gateway_protocol.PROTOCOL_VERSIONS`),
#: in our terms; everything else is the same.
PROTOCOL_FACTS: Mapping[GatewayProtocol, ProtocolFacts] = MappingProxyType(
    {
        setting: ProtocolFacts(
            version.specification_version,
            frozenset(version.warning_types),
            MappingProxyType({kind: _ERROR_CLASSES[kind] for kind in version.error_types}),
        )
        for setting, version in (
            (GatewayProtocol.V3, PROTOCOL_V3),
            (GatewayProtocol.V4, PROTOCOL_V4),
        )
    }
)
# Never shown to callers: the gateway's own text might be about our key, and the caller
# cannot fix it anyway (the AI SDK replaces it with a fixed text for the same reason).
_AUTHENTICATION_MESSAGE = (
    "the gateway rejected this server's credentials; an operator must check its "
    "AI_GATEWAY_API_KEY or OIDC token"
)


class GatewayReranker:
    """A `Reranker` that calls an AI Gateway over one pooled HTTP client session
    (`rerank.server._gateway_http`).

    The bearer token comes from `credential`, asked on every request (a token file's token
    changes while the server runs); `api_key` is a fixed one, for short.
    `protocol` is the version spoken (`PROTOCOL_FACTS`); `team`, when given, goes out as
    `x-vercel-ai-gateway-team` on every request, as the SDK's `teamIdOrSlug` does; a call's own
    team (`CallRecord.team`) takes its place on that call's rerank requests.
    """

    def __init__(
        self,
        *,
        base_url: str,
        api_key: str | None = None,
        max_connections: int = 100,
        tracer: Tracer | None = None,
        credential: Credential | None = None,
        protocol: GatewayProtocol = GatewayProtocol.V4,
        team: str | None = None,
    ) -> None:
        if credential is None:
            if api_key is None:
                raise ValueError("GatewayReranker needs an api_key or a credential")
            credential = StaticCredential(api_key)
        self._credential = credential
        self._http = GatewayHttp(base_url, max_connections, tracer)
        self._protocol = protocol
        self._auth_headers = {
            "ai-gateway-protocol-version": PROTOCOL_VERSION,
            "ai-gateway-auth-method": credential.auth_method,
            "user-agent": USER_AGENT,
        }
        if team:
            self._auth_headers[TEAM_HEADER] = team
        self._rerank_headers = {
            **self._auth_headers,
            "ai-reranking-model-specification-version": (
                PROTOCOL_FACTS[protocol].specification_version
            ),
            "content-type": "application/json",
        }
        # Undocumented warning types already logged: once per type for this adapter's life.
        self._logged_warning_types: set[str] = set()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def rerank(self, query: RerankQuery, *, timeout: float) -> RerankOutcome:
        """POST the query to `{base}/reranking-model` and parse the ranking."""
        headers = {**self._rerank_headers, "ai-model-id": query.model}
        if (call := current_call()) is not None and call.team:
            headers[TEAM_HEADER] = call.team
        request_body = JsonBody(lambda: encode_rerank_body(query))
        body = await self._call("POST", "/reranking-model", headers, request_body, timeout)
        return parse_rerank_body(
            body,
            self._protocol,
            document_count=len(query.documents),
            top_n=query.top_n,
            on_unknown_warning=self._log_unknown_warning_once,
        )

    async def list_models(self, *, timeout: float) -> tuple[ModelInfo, ...]:
        """GET `{base}/config` and keep the reranking models."""
        body = await self._call("GET", "/config", self._auth_headers, None, timeout)
        return parse_config_body(body)

    async def _call(
        self,
        method: str,
        path: str,
        headers: Mapping[str, str],
        data: JsonBody | None,
        timeout: float,
    ) -> bytes:
        """One exchange; returns a 2xx body or raises an UpstreamError."""
        headers = {"authorization": f"Bearer {self._credential.bearer_token()}", **headers}
        status, answer_headers, body = await self._http.exchange(
            method, path, headers, data, timeout
        )
        if 200 <= status < 300:
            return body
        raise error_from_response(status, answer_headers, body, self._protocol)

    def _log_unknown_warning_once(self, kind: str) -> None:
        logged = self._logged_warning_types
        if kind in logged or len(logged) >= MAX_LOGGED_WARNING_TYPES:
            return
        logged.add(kind)
        logger.warning(
            "the gateway sent a warning of type %r, which protocol %s does not define; "
            "passed on to callers as 'other' (logged once per type)",
            kind[:100],
            self._protocol.value,
        )


def encode_rerank_body(query: RerankQuery) -> bytes:
    """The request body exactly as the AI SDK writes it: camelCase, this key order, absent
    keys omitted, no `model` key (the model travels only in the `ai-model-id` header)."""
    return _encode_body(
        query.kind, query.documents, query.query, query.top_n, query.provider_options
    )


def parse_rerank_body(
    body: bytes,
    protocol: GatewayProtocol = GatewayProtocol.V4,
    *,
    document_count: int,
    top_n: int | None = None,
    on_unknown_warning: Callable[[str], None] | None = None,
) -> RerankOutcome:
    """Parse a 200 answer of `reranking-model` to a query of `document_count` documents and
    `top_n`, rejecting anything outside the protocol; its ranking comes out as the domain
    requires (`RerankOutcome`), the rest as `rerank_outcome` reads it."""
    answer = _decoded(_RERANK_ANSWER, body)
    if answer.ranking is None:
        if (envelope := _envelope(body)) is not None:
            raise errors.UpstreamProtocolError(
                f"the gateway answered 200 with an error: {envelope.display_message}"
            )
        raise errors.UpstreamProtocolError("the gateway's answer has no 'ranking' list")
    return rerank_outcome(
        _checked_ranking(answer.ranking, document_count, top_n),
        answer.warnings,
        answer.provider_metadata,
        protocol,
        on_unknown_warning,
    )


def rerank_outcome(
    ranking: tuple[Ranked, ...],
    warnings: object,
    provider_metadata: object,
    protocol: GatewayProtocol = GatewayProtocol.V4,
    on_unknown_warning: Callable[[str], None] | None = None,
) -> RerankOutcome:
    """The outcome of an answer around its checked `ranking`: its `warnings` and
    `provider_metadata` (as JSON decodes them) read as `protocol` defines them.

    Warnings are advice and the ranking is the answer: a warning of a type `protocol` does not
    define is passed on as "other", its type named in the message, and `on_unknown_warning`
    hears the type (the adapter logs it once).
    """
    if provider_metadata is not None and not (
        isinstance(provider_metadata, dict)
        and all(isinstance(value, dict) for value in provider_metadata.values())
    ):
        _protocol_error("'providerMetadata' is not a map of objects")
    metadata: JsonObject | None = provider_metadata
    return RerankOutcome(
        ranking=ranking,
        warnings=_warnings(warnings, PROTOCOL_FACTS[protocol].warning_types, on_unknown_warning),
        provider_metadata=metadata,
        usage=Usage(cost=reported_cost(metadata), upstream_calls=1),
    )


_RERANK_ANSWER = msgspec.json.Decoder(_RerankAnswer)
_ENVELOPE = msgspec.json.Decoder(_Envelope)
_JSON_OBJECT = msgspec.json.Decoder(JsonObject)


def _decoded(decoder: msgspec.json.Decoder[T], body: bytes) -> T:
    try:
        return decoder.decode(body)
    except msgspec.DecodeError as error:
        # Malformed JSON, or a value of the wrong type (a non-finite score among them): the
        # message says where, never what.
        _protocol_error(str(error))


def _envelope(body: bytes) -> _Envelope | None:
    try:
        return _ENVELOPE.decode(body)
    except msgspec.DecodeError:
        return None


def _checked_ranking(
    items: list[_RankedItem], document_count: int, top_n: int | None
) -> tuple[Ranked, ...]:
    """`items` sorted and cut, after checking they rank the documents sent.

    The protocol says the gateway sorts and cuts already; we do it again so a sloppy gateway
    cannot hand callers a wrong order. An index out of range or repeated means the answer
    cannot be trusted at all: `errors.UpstreamProtocolError`.
    """
    seen: set[int] = set()
    for position, item in enumerate(items):
        if not 0 <= item.index < document_count:
            _protocol_error(
                f"ranking[{position}] has index {item.index}, "
                f"outside the {document_count} documents sent"
            )
        if item.index in seen:
            _protocol_error(f"ranking[{position}] repeats index {item.index}")
        seen.add(item.index)
    return best_first((Ranked(item.index, item.score) for item in items), top_n)


_WARNING_TEXTS = ("feature", "details", "message", "setting")  # `Warning`'s fields after its type


def _warnings(
    raw: object, defined: frozenset[WarningType], on_unknown: Callable[[str], None] | None
) -> tuple[Warning, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list):
        _protocol_error("'warnings' is not a list")
    warnings: list[Warning] = []
    for position, item in enumerate(raw):
        kind = item.get("type") if isinstance(item, dict) else None
        if not isinstance(item, dict) or not isinstance(kind, str):
            _protocol_error(f"warnings[{position}] is not an object with a string 'type'")
        if kind in defined:
            texts = (_str_or_empty(item.get(key)) for key in _WARNING_TEXTS)
            warnings.append(Warning(kind, *texts))
            continue
        # The SDK would reject the whole (billed) answer here; a warning is advice, the
        # ranking is the answer, so we keep the ranking and say what came.
        if on_unknown is not None:
            on_unknown(kind)
        said = "; ".join(f"{k}: {v}" for k, v in item.items() if k != "type" and isinstance(v, str))
        message = f"unknown warning type {kind!r}" + (f" ({said})" if said else "")
        warnings.append(Warning(type="other", message=message))
    return tuple(warnings)


def parse_config_body(body: bytes) -> tuple[ModelInfo, ...]:
    """Parse `GET /config` and keep the models whose `modelType` is "reranking"."""
    models = _decoded(_JSON_OBJECT, body).get("models")
    if not isinstance(models, list):
        _protocol_error("the gateway's config has no 'models' list")
    found: list[ModelInfo] = []
    for model in models:
        if not isinstance(model, dict) or model.get("modelType") != "reranking":
            continue
        if not isinstance(model_id := model.get("id"), str):
            continue
        specification, pricing = model.get("specification"), model.get("pricing")
        provider = specification.get("provider") if isinstance(specification, dict) else None
        found.append(
            ModelInfo(
                id=model_id,
                name=_str_or_empty(model.get("name")),
                description=_str_or_empty(model.get("description")),
                provider=_str_or_empty(provider),
                pricing=(
                    {k: v for k, v in pricing.items() if isinstance(v, str)}
                    if isinstance(pricing, dict)
                    else None
                ),
            )
        )
    return tuple(found)


def error_from_response(
    status: int,
    headers: Mapping[str, str],
    body: bytes,
    protocol: GatewayProtocol = GatewayProtocol.V4,
) -> errors.UpstreamError:
    """The one translation of a non-2xx gateway answer into our error tree: by the envelope's
    `error.type` as `protocol` defines it, else by status as the AI SDK reads one."""
    retry_after = parse_retry_after(headers)
    if status == 429:
        by_status: type[errors.UpstreamError] | None = errors.UpstreamRateLimited
    elif status >= 500 or status in (408, 409):
        by_status = errors.UpstreamUnavailable
    else:
        by_status = None
    envelope = _envelope(body)
    if envelope is None:
        # Not the gateway's envelope (a proxy's HTML page, an empty body): only the status
        # tells us anything.
        if by_status is None:
            return errors.UpstreamProtocolError(
                f"the gateway answered HTTP {status} without an error envelope", status=status
            )
        said = "is rate-limiting calls" if status == 429 else f"failed with HTTP {status}"
        return by_status(f"the gateway {said}", status=status, retry_after=retry_after)
    error_class = PROTOCOL_FACTS[protocol].error_types.get(_str_or_empty(envelope.error.type))
    error_class = error_class or by_status or errors.UpstreamError
    authentication = error_class is errors.UpstreamAuthentication
    return error_class(
        _AUTHENTICATION_MESSAGE if authentication else envelope.display_message,
        status=status,
        retry_after=retry_after,
        generation_id=envelope.generation_id if isinstance(envelope.generation_id, str) else None,
    )


def _str_or_empty(value: object) -> str:
    return value if isinstance(value, str) else ""


def _protocol_error(detail: str) -> NoReturn:
    raise errors.UpstreamProtocolError(f"the gateway broke its protocol: {detail}")
