"""The AI Gateway adapter: domain values ⇄ the gateway's HTTP protocol.

This module is the only place that knows the gateway's JSON and the only place HTTP outcomes
(statuses, envelopes, aiohttp exceptions) become `rerank.server.errors`. The protocol it speaks is
the one the AI SDK's `@ai-sdk/gateway` speaks (`POST {base}/reranking-model`, `GET {base}/config`),
header for header, so the real gateway and the bundled mock are interchangeable behind it. Both
versions of it, v3 (gateway 3.x) and v4 (4.x), are spoken; what differs between them is the one
table `PROTOCOL_FACTS`.

A rerank answer's ranking is checked here, once, against the documents the call sent, and leaves
valid (`RerankOutcome`): no layer above checks it again. It is decoded by msgspec into typed
values: 24 µs of CPU per answer of 20 documents and 1.05 ms per 1,000, against 34 µs and 1.43 ms
for orjson with the types checked by hand (`python -m bench.decode_cost`).
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import math
import platform
import time
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, NoReturn

import aiohttp
import msgspec
import orjson
from aiohttp.abc import AbstractStreamWriter
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import Span, SpanKind, Status, StatusCode, Tracer

from rerank.server.config import GatewayProtocol
from rerank.server.credentials import Credential, StaticCredential
from rerank.server.domain import (
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
from rerank.server.errors import (
    ModelNotFound,
    UpstreamAuthentication,
    UpstreamError,
    UpstreamFailedDependency,
    UpstreamForbidden,
    UpstreamInvalidRequest,
    UpstreamNotFound,
    UpstreamProtocolError,
    UpstreamRateLimited,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from rerank.server.tracing import RESEND_COUNT_KEY, child_span, inject_trace_context

logger = logging.getLogger(__name__)

PROTOCOL_VERSION = "0.0.1"
TEAM_HEADER = "x-vercel-ai-gateway-team"
USER_AGENT = (
    f"rerank-service/0.1.0 aiohttp/{aiohttp.__version__} runtime/python/{platform.python_version()}"
)

#: The largest body we read from the gateway. A ranking of 10,000 documents is under 1 MiB;
#: anything far beyond is not a ranking, and reading it whole would let the upstream spend
#: our memory.
MAX_RESPONSE_BYTES = 8 * 1024 * 1024
#: A request body is written this much at a time (aiohttp's own chunk for file bodies).
_WRITE_CHUNK = 64 * 1024

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
    error_types: Mapping[str, type[UpstreamError]]


_V3_WARNING_TYPES: frozenset[WarningType] = frozenset({"unsupported", "compatibility", "other"})
_V3_ERROR_TYPES: Mapping[str, type[UpstreamError]] = MappingProxyType(
    {
        "authentication_error": UpstreamAuthentication,
        "invalid_request_error": UpstreamInvalidRequest,
        "forbidden": UpstreamForbidden,
        "model_not_found": ModelNotFound,
        "failed_dependency": UpstreamFailedDependency,
        "rate_limit_exceeded": UpstreamRateLimited,
        "internal_server_error": UpstreamUnavailable,
    }
)
#: The one table of what differs between the versions; everything else is the same.
PROTOCOL_FACTS: Mapping[GatewayProtocol, ProtocolFacts] = MappingProxyType(
    {
        GatewayProtocol.V3: ProtocolFacts("3", _V3_WARNING_TYPES, _V3_ERROR_TYPES),
        GatewayProtocol.V4: ProtocolFacts(
            "4",
            _V3_WARNING_TYPES | {"deprecated"},
            MappingProxyType({**_V3_ERROR_TYPES, "not_found": UpstreamNotFound}),
        ),
    }
)
# Never shown to callers: the gateway's own text might be about our key, and the caller
# cannot fix it anyway (the AI SDK replaces it with a fixed text for the same reason).
_AUTHENTICATION_MESSAGE = (
    "the gateway rejected this server's credentials; an operator must check its "
    "AI_GATEWAY_API_KEY or OIDC token"
)


class GatewayReranker:
    """A `Reranker` that calls an AI Gateway over one pooled HTTP client session.

    The HTTP client is aiohttp: on `make bench` it cost half the server CPU per proxied call
    of a tuned httpx (README, "Performance"). This class is the only code that knows it.

    The bearer token comes from `credential`, asked on every request (a token file's token
    changes while the server runs); `api_key` (with `auth_method`) is the fixed one, for short.
    `protocol` is the version spoken (`PROTOCOL_FACTS`); `team`, when given, goes out as
    `x-vercel-ai-gateway-team` on every request, as the SDK's `teamIdOrSlug` does.
    """

    def __init__(
        self,
        *,
        base_url: str,
        api_key: str | None = None,
        auth_method: str = "api-key",
        max_connections: int = 100,
        tracer: Tracer | None = None,
        credential: Credential | None = None,
        protocol: GatewayProtocol = GatewayProtocol.V4,
        team: str | None = None,
    ) -> None:
        if credential is None:
            if api_key is None:
                raise ValueError("GatewayReranker needs an api_key or a credential")
            credential = StaticCredential(api_key, auth_method)
        self._credential = credential
        self._base_url = base_url.rstrip("/")
        self._max_connections = max_connections
        self._session: aiohttp.ClientSession | None = None
        self._tracer = tracer or trace.NoOpTracer()
        # The HTTP client span's fixed attributes: where, never the URL itself (a base URL could
        # carry a query or user info).
        url = urllib.parse.urlsplit(self._base_url)
        self._span_attributes: dict[str, str | int] = {
            "server.address": url.hostname or "",
            "server.port": url.port or (443 if url.scheme == "https" else 80),
            "url.scheme": url.scheme,
        }
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
        """Close the pooled connections."""
        if self._session is not None:
            await self._session.close()

    async def rerank(self, query: RerankQuery, *, timeout: float) -> RerankOutcome:
        """POST the query to `{base}/reranking-model` and parse the ranking."""
        headers = {**self._rerank_headers, "ai-model-id": query.model}
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

    def _pool(self) -> aiohttp.ClientSession:
        # Created on first use, inside the event loop that will run it (aiohttp's rule).
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self._max_connections),
                # Deadlines are ours (one asyncio.timeout per exchange), not aiohttp's 5 min.
                timeout=aiohttp.ClientTimeout(total=None),
                # The SDK sends no cookies; neither may a shared client carry one caller's
                # cookie into another caller's request.
                cookie_jar=aiohttp.DummyCookieJar(),
            )
        return self._session

    async def _call(
        self,
        method: str,
        path: str,
        headers: Mapping[str, str],
        data: JsonBody | None,
        timeout: float,
    ) -> bytes:
        """One HTTP exchange under one deadline; returns a 2xx body or raises an UpstreamError.

        Each exchange is an HTTP client span (OpenTelemetry's HTTP conventions) whose context
        the request carries as `traceparent`, so the gateway's spans join the caller's trace.
        """
        if timeout <= 0:
            raise UpstreamTimeout("the call's deadline passed before the gateway was asked")
        headers = {"authorization": f"Bearer {self._credential.bearer_token()}", **headers}
        span = child_span(self._tracer, method, SpanKind.CLIENT)
        recording = span.is_recording()
        if recording:
            span.set_attributes(self._span_attributes)
            span.set_attribute("http.request.method", method)
            if resend := otel_context.get_value(RESEND_COUNT_KEY):
                span.set_attribute("http.request.resend_count", resend)  # type: ignore[arg-type]
        inject_trace_context(headers, span.get_span_context())
        try:
            async with (
                asyncio.timeout(timeout),
                self._pool().request(
                    method, self._base_url + path, headers=headers, data=data
                ) as response,
            ):
                body = await _read_bounded(response)
        except TimeoutError as exc:
            _failed(span, "timeout")
            raise UpstreamTimeout(f"the gateway did not answer within {timeout:.3g} s") from exc
        except aiohttp.ClientError as exc:
            _failed(span, type(exc).__name__)
            # Refused, reset or dropped connections, truncated bodies, unparsable HTTP.
            raise UpstreamUnavailable(f"cannot reach the gateway: {type(exc).__name__}") from exc
        except BaseException as exc:  # too large an answer, or the call was cancelled
            _failed(span, getattr(exc, "reason", None) or type(exc).__name__)
            raise
        if recording:
            span.set_attribute("http.response.status_code", response.status)
        if 200 <= response.status < 300:
            span.end()
            return body
        # The client-span convention: any 4xx or 5xx is an error, named by its status.
        _failed(span, str(response.status))
        raise error_from_response(response.status, response.headers, body, self._protocol)


class JsonBody(aiohttp.Payload):
    """A request body let go of once written: `encode` makes it.

    aiohttp keeps a request's payload until the answer's headers arrive, and a rerank body is
    a copy of the call's documents: kept, every call waiting on a slow gateway would hold its
    documents twice for as long as it waits. So the body is made once (its length goes out as
    the content-length, as the SDK sends one), written in chunks of 64 KiB with the event loop
    served in between, and dropped; should aiohttp write it again (a 307 redirect), it is made
    again from `encode`.
    """

    def __init__(self, encode: Callable[[], bytes]) -> None:
        body = encode()
        super().__init__(None, content_type="application/json")
        self._encode = encode
        self._body: bytes | None = body
        self._size = len(body)

    def decode(self, encoding: str = "utf-8", errors: str = "strict") -> str:
        return (self._body or self._encode()).decode(encoding, errors)

    async def write(self, writer: AbstractStreamWriter) -> None:
        await self.write_with_length(writer, None)

    async def write_with_length(
        self, writer: AbstractStreamWriter, content_length: int | None
    ) -> None:
        body, self._body = memoryview(self._body or self._encode()), None
        end = len(body) if content_length is None else min(content_length, len(body))
        for start in range(0, end, _WRITE_CHUNK):
            await writer.write(body[start : min(start + _WRITE_CHUNK, end)])


def _failed(span: Span, error_type: str) -> None:
    """End an attempt's span as failed, with `error.type` (a status, or what went wrong)."""
    if span.is_recording():
        span.set_attribute("error.type", error_type)
        span.set_status(Status(StatusCode.ERROR, error_type))
    span.end()


async def _read_bounded(response: aiohttp.ClientResponse) -> bytes:
    declared = response.content_length
    if declared is not None and declared > MAX_RESPONSE_BYTES:
        raise UpstreamProtocolError(
            f"the gateway's answer of {declared} bytes exceeds {MAX_RESPONSE_BYTES} bytes"
        )
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.content.iter_any():
        size += len(chunk)
        if size > MAX_RESPONSE_BYTES:
            raise UpstreamProtocolError(f"the gateway's answer exceeds {MAX_RESPONSE_BYTES} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def encode_rerank_body(query: RerankQuery) -> bytes:
    """The request body exactly as the AI SDK writes it: camelCase, this key order, absent
    keys omitted, no `model` key (the model travels only in the `ai-model-id` header)."""
    body: dict[str, Any] = {
        "documents": {"type": query.kind, "values": query.documents},
        "query": query.query,
    }
    if query.top_n is not None:
        body["topN"] = query.top_n
    if query.provider_options is not None:
        body["providerOptions"] = query.provider_options
    return orjson.dumps(body)


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
    requires (`RerankOutcome`).

    Warnings are advice and the ranking is the answer: a warning of a type `protocol` does not
    define is passed on as "other", its type named in the message, and `on_unknown_warning`
    hears the type (the adapter logs it once).
    """
    try:
        answer = _RERANK_ANSWER.decode(body)
    except msgspec.DecodeError as error:
        # Malformed JSON, or a value of the wrong type (a non-finite score among them): the
        # message says where, never what.
        _protocol_error(str(error))
    if answer.ranking is None:
        data = _parse_json_object(body)
        if isinstance(data.get("error"), dict):
            envelope = _Envelope.parse(data)
            raise UpstreamProtocolError(
                f"the gateway answered 200 with an error: {envelope.display_message}"
            )
        raise UpstreamProtocolError("the gateway's answer has no 'ranking' list")
    metadata = _parse_provider_metadata(answer.provider_metadata)
    return RerankOutcome(
        ranking=_checked_ranking(answer.ranking, document_count, top_n),
        warnings=_parse_warnings(answer.warnings, PROTOCOL_FACTS[protocol], on_unknown_warning),
        provider_metadata=metadata,
        usage=Usage(cost=reported_cost(metadata), upstream_calls=1),
    )


class _RankedItem(msgspec.Struct):
    """One item of an answer's `ranking`, typed: an index that is not an integer (a bool, a
    float) or a score that is not a finite number does not decode."""

    index: int
    score: float = msgspec.field(name="relevanceScore")


class _RerankAnswer(msgspec.Struct, rename="camel"):
    """A 200 answer of `reranking-model`: the ranking typed, the rest read by the helpers that
    read it as the protocol version says."""

    ranking: list[_RankedItem] | None = None
    warnings: Any = None
    provider_metadata: Any = None


_RERANK_ANSWER = msgspec.json.Decoder(_RerankAnswer)


def _checked_ranking(
    items: list[_RankedItem], document_count: int, top_n: int | None
) -> tuple[Ranked, ...]:
    """`items` sorted and cut, after checking they rank the documents sent.

    The protocol says the gateway sorts and cuts already; we do it again so a sloppy gateway
    cannot hand callers a wrong order. An index out of range or repeated means the answer
    cannot be trusted at all: `UpstreamProtocolError`.
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


def parse_config_body(body: bytes) -> tuple[ModelInfo, ...]:
    """Parse `GET /config` and keep the models whose `modelType` is "reranking"."""
    data = _parse_json_object(body)
    models = data.get("models")
    if not isinstance(models, list):
        _protocol_error("the gateway's config has no 'models' list")
    found: list[ModelInfo] = []
    for model in models:
        if not isinstance(model, dict) or model.get("modelType") != "reranking":
            continue
        model_id = model.get("id")
        if not isinstance(model_id, str):
            continue
        specification = model.get("specification")
        provider = specification.get("provider") if isinstance(specification, dict) else None
        pricing = model.get("pricing")
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
) -> UpstreamError:
    """The one translation of a non-2xx gateway answer into our error tree; `error.type` is
    read as `protocol` defines it."""
    retry_after = parse_retry_after(headers)
    try:
        envelope = _Envelope.parse(_parse_json_object(body))
    except UpstreamProtocolError:
        envelope = None
    if envelope is None:
        # Not the gateway's envelope (a proxy's HTML page, an empty body): only the status
        # tells us anything, read the way the AI SDK reads it.
        if status == 429:
            return UpstreamRateLimited(
                "the gateway is rate-limiting calls", status=status, retry_after=retry_after
            )
        if status >= 500 or status in (408, 409):
            return UpstreamUnavailable(
                f"the gateway failed with HTTP {status}", status=status, retry_after=retry_after
            )
        return UpstreamProtocolError(
            f"the gateway answered HTTP {status} without an error envelope", status=status
        )
    error_class = PROTOCOL_FACTS[protocol].error_types.get(envelope.type or "")
    if error_class is None:
        if status == 429:
            error_class = UpstreamRateLimited
        elif status >= 500 or status in (408, 409):
            error_class = UpstreamUnavailable
        else:
            error_class = UpstreamError
    message = (
        _AUTHENTICATION_MESSAGE
        if error_class is UpstreamAuthentication
        else envelope.display_message
    )
    return error_class(
        message,
        status=status,
        retry_after=retry_after,
        generation_id=envelope.generation_id,
    )


def parse_retry_after(headers: Mapping[str, str], now: float | None = None) -> float | None:
    """Seconds to wait from `retry-after-ms` (wins) or `retry-after` (seconds or HTTP date).

    As in the AI SDK, a delay outside 0–60 s is ignored rather than obeyed.
    """
    delay: float | None = None
    millis = headers.get("retry-after-ms")
    if millis is not None:
        delay = _float_or_none(millis)
        delay = None if delay is None else delay / 1000
    if delay is None and (seconds := headers.get("retry-after")) is not None:
        delay = _float_or_none(seconds)
        if delay is None:
            try:
                when = email.utils.parsedate_to_datetime(seconds).timestamp()
            except (TypeError, ValueError):
                when = None
            if when is not None:
                delay = when - (time.time() if now is None else now)
    if delay is None or not 0 <= delay <= 60:
        return None
    return delay


class _Envelope:
    """`{"error": {"message", "type"?, "param"?, "code"?}, "generationId"?}`."""

    def __init__(self, message: str, type_: str | None, generation_id: str | None) -> None:
        self.message = message
        self.type = type_
        self.generation_id = generation_id

    @property
    def display_message(self) -> str:
        # The AI SDK shows the generation id appended to the message; so do we.
        if self.generation_id:
            return f"{self.message} [{self.generation_id}]"
        return self.message

    @classmethod
    def parse(cls, data: JsonObject) -> _Envelope:
        error = data.get("error")
        if not isinstance(error, dict) or not isinstance(error.get("message"), str):
            _protocol_error("not an error envelope")
        type_ = error.get("type")
        generation_id = data.get("generationId")
        return cls(
            message=error["message"],
            type_=type_ if isinstance(type_, str) else None,
            generation_id=generation_id if isinstance(generation_id, str) else None,
        )


def _parse_json_object(body: bytes) -> JsonObject:
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        _protocol_error("the gateway's answer is not JSON")
    if not isinstance(data, dict):
        _protocol_error("the gateway's answer is not a JSON object")
    return data


def _parse_warnings(
    raw: object,
    facts: ProtocolFacts,
    on_unknown_warning: Callable[[str], None] | None,
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
        if kind in facts.warning_types:
            warnings.append(
                Warning(
                    type=kind,
                    feature=_str_or_empty(item.get("feature")),
                    details=_str_or_empty(item.get("details")),
                    message=_str_or_empty(item.get("message")),
                    setting=_str_or_empty(item.get("setting")),
                )
            )
            continue
        # The SDK would reject the whole (billed) answer here; a warning is advice, the
        # ranking is the answer, so we keep the ranking and say what came.
        if on_unknown_warning is not None:
            on_unknown_warning(kind)
        said = "; ".join(
            f"{key}: {value}"
            for key, value in item.items()
            if key != "type" and isinstance(value, str)
        )
        message = f"unknown warning type {kind!r}" + (f" ({said})" if said else "")
        warnings.append(Warning(type="other", message=message))
    return tuple(warnings)


def _parse_provider_metadata(raw: object) -> JsonObject | None:
    if raw is None:
        return None
    if not isinstance(raw, dict) or not all(isinstance(v, dict) for v in raw.values()):
        _protocol_error("'providerMetadata' is not a map of objects")
    return raw


def _str_or_empty(value: object) -> str:
    return value if isinstance(value, str) else ""


def _float_or_none(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def _protocol_error(detail: str) -> NoReturn:
    raise UpstreamProtocolError(f"the gateway broke its protocol: {detail}")
