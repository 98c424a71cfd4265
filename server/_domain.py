"""What a rerank call is, independent of gRPC and HTTP: frozen values and the rules on them.
The servicer and the gateway adapter translate them, and meet on `Reranker`.

What these values promise (a valid ranking, exact usage): docs/design/guarantees.md.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import re
from collections.abc import Coroutine, Iterable, Mapping
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any, Literal, Protocol

import msgspec

from rerank.server._errors import FieldViolation, InvalidRequest
from rerank.server._limits import UNLIMITED, CallerLimits

JsonObject = dict[str, Any]
DocumentKind = Literal["text", "object"]
WarningType = Literal["unsupported", "compatibility", "other", "deprecated"]

# `provider/model`, e.g. `cohere/rerank-v3.5`, `voyage/rerank-2.5-lite`.
_MODEL_SLUG = re.compile(r"[a-z0-9][a-z0-9_-]*/[A-Za-z0-9][A-Za-z0-9._:-]*")
MAX_MODEL_SLUG_LENGTH = 128


def is_model_slug(text: str) -> bool:
    """Whether `text` is a gateway model slug `provider/model`."""
    return len(text) <= MAX_MODEL_SLUG_LENGTH and _MODEL_SLUG.fullmatch(text) is not None


@dataclass(frozen=True)
class Limits:
    max_documents: int
    max_document_bytes: int
    max_query_bytes: int


@dataclass(frozen=True)
class Caller:
    """A named caller of `RERANK_CALLERS_FILE`: `models` it may use, as globs (none: every one);
    `shared_cache`: its answers share the cache with other such callers."""

    name: str
    limits: CallerLimits = UNLIMITED
    models: tuple[str, ...] = ()
    shared_cache: bool = False

    def may_use(self, model: str) -> bool:
        return not self.models or any(fnmatch.fnmatchcase(model, glob) for glob in self.models)


@dataclass(frozen=True)
class RerankQuery:
    """One validated request to rank `documents` (texts, or JSON objects) against `query`;
    `caller`, when named, scopes the cache and reaches the gateway (`on_behalf_of`)."""

    model: str
    query: str
    kind: DocumentKind
    documents: tuple[str, ...] | tuple[JsonObject, ...]
    top_n: int | None = None
    provider_options: JsonObject | None = None
    cacheable: bool = True
    caller: Caller | None = None


class Ranked(msgspec.Struct, frozen=True, gc=False):
    """One document's place in a ranking. Made for every item of every answer (the gateway
    ranks all the documents sent), so a msgspec Struct: a seventh of a frozen dataclass's cost
    to make. Numbers only, never in a reference cycle: not tracked by the collector."""

    index: int
    score: float


@dataclass(frozen=True)
class Warning:
    """A remark of the gateway on a call that succeeded: `feature` and `details` of
    "unsupported" and "compatibility", `message` of "other" and "deprecated", `setting` of
    "deprecated"."""

    type: WarningType
    feature: str = ""
    details: str = ""
    message: str = ""
    setting: str = ""


@dataclass(frozen=True)
class Usage:
    """What one call spent upstream (docs/design/guarantees.md#usage): `cost` exact, None when
    any answer had none (a known total is never an under-count); every window and attempt is a
    call."""

    cost: Decimal | None = None
    upstream_calls: int = 0

    def __add__(self, other: Usage) -> Usage:
        cost = None if self.cost is None or other.cost is None else self.cost + other.cost
        return Usage(cost, self.upstream_calls + other.upstream_calls)


FREE = Usage(cost=Decimal(0), upstream_calls=0)


@dataclass(frozen=True)
class RerankOutcome:
    """What a backend answered. Its ranking is valid for its query (the gateway adapter makes it
    so), so every layer above trusts it: indices of the query's documents, each once; finite
    scores; `best_first`, cut. `provider_metadata` is the gateway's (the first window's);
    `cached`: another call was charged for this answer."""

    ranking: tuple[Ranked, ...]
    warnings: tuple[Warning, ...] = ()
    provider_metadata: JsonObject | None = None
    cached: bool = False
    usage: Usage = Usage()


@dataclass(frozen=True)
class ModelInfo:
    """One reranking model a backend offers; `documents_per_upstream_call`: the windows' size."""

    id: str
    name: str = ""
    description: str = ""
    provider: str = ""
    pricing: Mapping[str, str] | None = None
    documents_per_upstream_call: int | None = None


class Reranker(Protocol):
    """The gateway adapter, or a layer around it; `UpstreamTimeout` after `timeout` seconds."""

    async def rerank(self, query: RerankQuery, *, timeout: float) -> RerankOutcome: ...

    async def list_models(self, *, timeout: float) -> tuple[ModelInfo, ...]: ...

    async def aclose(self) -> None: ...


class RerankerLayer:
    """A `Reranker` around `inner`: each concern overrides what it changes; the rest passes."""

    def __init__(self, inner: Reranker) -> None:
        self._inner = inner

    def rerank(self, query: RerankQuery, *, timeout: float) -> Coroutine[Any, Any, RerankOutcome]:
        return self._inner.rerank(query, timeout=timeout)  # no frame of this layer's own

    async def list_models(self, *, timeout: float) -> tuple[ModelInfo, ...]:
        return await self._inner.list_models(timeout=timeout)

    async def aclose(self) -> None:
        await self._inner.aclose()


def on_behalf_of(query: RerankQuery, caller: Caller) -> RerankQuery:
    """`query` as `caller` sends it: its name is `providerOptions.gateway.user` (a caller must not
    spend under another's), so the gateway's spend reports split by caller too."""
    options = dict(query.provider_options or {})
    options["gateway"] = {**options.get("gateway", {}), "user": caller.name}
    return dataclasses.replace(query, caller=caller, provider_options=options)


def reported_cost(provider_metadata: JsonObject | None) -> Decimal | None:
    """`providerMetadata.gateway.cost` (spec §4) if a finite, non-negative decimal string."""
    gateway = (provider_metadata or {}).get("gateway")
    text = gateway.get("cost") if isinstance(gateway, dict) else None
    if not isinstance(text, str):
        return None
    try:
        cost = Decimal(text)
    except InvalidOperation:
        return None
    return cost if cost.is_finite() and cost >= 0 else None


def cost_text(cost: Decimal) -> str:
    """A cost as the gateway writes one: "0.0000001", never "1E-7"."""
    return format(cost, "f")


def caller_metadata(outcome: RerankOutcome) -> JsonObject | None:
    """The provider metadata a caller sees: `gateway.cost` this call's total, if known."""
    if outcome.provider_metadata is None:
        return None
    metadata = dict(outcome.provider_metadata)
    gateway = dict(metadata.get("gateway") or {})
    cost = outcome.usage.cost
    if cost is not None:
        gateway["cost"] = cost_text(cost)
    else:
        gateway.pop("cost", None)
    if gateway:
        metadata["gateway"] = gateway
    else:
        metadata.pop("gateway", None)
    return metadata or None


def check_request(query: RerankQuery, limits: Limits) -> None:
    """Raise `InvalidRequest` naming every field of `query` that breaks the contract."""
    violations: list[FieldViolation] = []
    if not is_model_slug(query.model):
        slug = (
            f"a gateway model slug 'provider/model' of at most {MAX_MODEL_SLUG_LENGTH} characters"
        )
        violations.append(FieldViolation("model", f"must be {slug}, e.g. 'cohere/rerank-v3.5'"))
    if not query.query.strip():
        violations.append(FieldViolation("query", "must not be empty"))
    elif len(query.query.encode()) > limits.max_query_bytes:
        most = f"must be at most {limits.max_query_bytes} bytes of UTF-8"
        violations.append(FieldViolation("query", most))
    # No documents is a valid question, with an empty answer, as the AI SDK's rerank() says.
    if (count := len(query.documents)) > limits.max_documents:
        most = f"holds {count} documents; at most {limits.max_documents} allowed"
        violations.append(FieldViolation("documents", most))
    if query.top_n is not None and query.top_n < 1:
        least = f"must be at least 1 when set, got {query.top_n}"
        violations.append(FieldViolation("top_n", least))
    if violations:
        raise InvalidRequest(violations)


def best_first(ranking: Iterable[Ranked], top_n: int | None) -> tuple[Ranked, ...]:
    """Highest score first, equal scores by index, cut to `top_n`."""
    ordered = sorted(ranking, key=lambda item: (-item.score, item.index))
    return tuple(ordered if top_n is None else ordered[:top_n])
