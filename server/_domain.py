"""What a rerank call is, independent of gRPC and HTTP: frozen values and the rules on them.

No grpc, no HTTP here. The servicer translates protos into these values; the gateway adapter
translates them into the gateway's JSON. Both sides meet on `Reranker`.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any, Literal, Protocol

from rerank.server._errors import FieldViolation, InvalidRequest
from rerank.server._limits import UNLIMITED, CallerLimits

#: A JSON object as Python sees it after parsing.
JsonObject = dict[str, Any]
DocumentKind = Literal["text", "object"]
WarningType = Literal["unsupported", "compatibility", "other", "deprecated"]

# `provider/model`: a lower-case provider, then a model id that may carry dots, dashes,
# underscores and colons (e.g. `cohere/rerank-v3.5`, `voyage/rerank-2.5-lite`).
_MODEL_SLUG = re.compile(r"[a-z0-9][a-z0-9_-]*/[A-Za-z0-9][A-Za-z0-9._:-]*")
MAX_MODEL_SLUG_LENGTH = 128


def is_model_slug(text: str) -> bool:
    """Whether `text` is a gateway model slug `provider/model` (what requests and the default
    model setting must name)."""
    return len(text) <= MAX_MODEL_SLUG_LENGTH and _MODEL_SLUG.fullmatch(text) is not None


@dataclass(frozen=True)
class Limits:
    """The size rules a request must keep, from `Settings`."""

    max_documents: int
    max_document_bytes: int
    max_query_bytes: int


@dataclass(frozen=True)
class Caller:
    """A named caller of `RERANK_CALLERS_FILE` (`_callers`), as one call sees it; other calls
    carry none, and have no limits."""

    name: str
    limits: CallerLimits = UNLIMITED
    #: Model slugs it may use, as globs (`cohere/*`); empty allows every model.
    models: tuple[str, ...] = ()
    #: `cache_scope = "shared"`: its answers share the result cache with other such callers.
    shared_cache: bool = False

    def may_use(self, model: str) -> bool:
        """Whether `model` matches one of `models` (always, when there are none)."""
        return not self.models or any(fnmatch.fnmatchcase(model, glob) for glob in self.models)


@dataclass(frozen=True)
class RerankQuery:
    """One validated request to rank `documents` against `query`."""

    model: str
    query: str
    kind: DocumentKind
    #: Texts when `kind` is "text", JSON objects when it is "object".
    documents: tuple[str, ...] | tuple[JsonObject, ...]
    top_n: int | None = None
    provider_options: JsonObject | None = None
    #: False when the caller asked to bypass the result cache.
    cacheable: bool = True
    #: Who asks, when it is a named caller: its name reaches the gateway as
    #: `providerOptions.gateway.user`, and scopes the result cache.
    caller: Caller | None = None


@dataclass(frozen=True)
class Ranked:
    """One ranked document: its index in the request, and its score."""

    index: int
    score: float


@dataclass(frozen=True)
class Warning:
    """A remark of the gateway on a call that succeeded.

    `feature` and `details` belong to "unsupported" and "compatibility", `message` to "other"
    and "deprecated", `setting` (the deprecated one) to "deprecated".
    """

    type: WarningType
    feature: str = ""
    details: str = ""
    message: str = ""
    setting: str = ""


@dataclass(frozen=True)
class Usage:
    """What one call spent upstream (README, "Usage"): `cost` exact, None when unknown (any
    answer without one), so a known total is never an under-count; `upstream_calls` counts
    every window and every attempt."""

    cost: Decimal | None = None
    upstream_calls: int = 0

    def __add__(self, other: Usage) -> Usage:
        cost = None if self.cost is None or other.cost is None else self.cost + other.cost
        return Usage(cost, self.upstream_calls + other.upstream_calls)


#: The usage of a call the gateway had no part in.
FREE = Usage(cost=Decimal(0), upstream_calls=0)


@dataclass(frozen=True)
class RerankOutcome:
    """What a backend answered. Its ranking is valid for its query, so every layer above
    trusts it: each index names one of the query's documents, at most once; scores are finite;
    it is `best_first`, cut to `top_n`. The gateway adapter makes it so where it enters."""

    ranking: tuple[Ranked, ...]
    warnings: tuple[Warning, ...] = ()
    #: The gateway's entries as it sent them (for a windowed call, the first window's).
    #: Its `gateway.cost` is not this call's: `caller_metadata` puts `usage.cost` there.
    provider_metadata: JsonObject | None = None
    #: True when another call was charged for this answer: a cache hit, or a shared call.
    cached: bool = False
    usage: Usage = Usage()


@dataclass(frozen=True)
class ModelInfo:
    """One reranking model a backend offers."""

    id: str
    name: str = ""
    description: str = ""
    provider: str = ""
    pricing: Mapping[str, str] | None = None
    #: The most documents one upstream call carries for this model: the windows layer's size
    #: for it (None from a backend that does not split requests).
    documents_per_upstream_call: int | None = None


class Reranker(Protocol):
    """Something that reranks: the gateway adapter, or a layer around it. `rerank` gives up
    with `UpstreamTimeout` after `timeout` seconds; `aclose` is called once, at shutdown."""

    async def rerank(self, query: RerankQuery, *, timeout: float) -> RerankOutcome: ...

    async def list_models(self, *, timeout: float) -> tuple[ModelInfo, ...]: ...

    async def aclose(self) -> None: ...


class RerankerLayer:
    """A `Reranker` around another: each concern (limits, cache, windows, retries) overrides
    the one method it changes, and every other call passes through to `inner`."""

    def __init__(self, inner: Reranker) -> None:
        self._inner = inner

    async def rerank(self, query: RerankQuery, *, timeout: float) -> RerankOutcome:
        return await self._inner.rerank(query, timeout=timeout)

    async def list_models(self, *, timeout: float) -> tuple[ModelInfo, ...]:
        return await self._inner.list_models(timeout=timeout)

    async def aclose(self) -> None:
        await self._inner.aclose()


def on_behalf_of(query: RerankQuery, caller: Caller) -> RerankQuery:
    """`query` as `caller` sends it: its name replaces any `providerOptions.gateway.user` the
    request set (a caller must not spend under another's name), so the gateway's own spend
    reports split by caller too."""
    options = dict(query.provider_options or {})
    options["gateway"] = {**options.get("gateway", {}), "user": caller.name}
    return dataclasses.replace(query, caller=caller, provider_options=options)


def reported_cost(provider_metadata: JsonObject | None) -> Decimal | None:
    """The cost one gateway answer reports in `providerMetadata.gateway.cost` (spec §4); None
    unless a finite, non-negative decimal string: a figure we cannot trust is unknown, not 0."""
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
    """A cost as the gateway writes one: a decimal in positional notation, "0.0000001" and
    never "1E-7"."""
    return format(cost, "f")


def caller_metadata(outcome: RerankOutcome) -> JsonObject | None:
    """The provider metadata a caller sees: the gateway's, with `gateway.cost` this call's
    total, or without it when unknown (README, "Usage")."""
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
        violations.append(
            FieldViolation(
                "model",
                f"must be a gateway model slug 'provider/model' of at most "
                f"{MAX_MODEL_SLUG_LENGTH} characters, e.g. 'cohere/rerank-v3.5'",
            )
        )
    if not query.query.strip():
        violations.append(FieldViolation("query", "must not be empty"))
    elif len(query.query.encode()) > limits.max_query_bytes:
        violations.append(
            FieldViolation("query", f"must be at most {limits.max_query_bytes} bytes of UTF-8")
        )
    # No documents is a valid question with an empty answer (the servicer gives it without
    # asking the gateway), as the AI SDK's rerank() answers it.
    if len(query.documents) > limits.max_documents:
        violations.append(
            FieldViolation(
                "documents",
                f"holds {len(query.documents)} documents; at most {limits.max_documents} allowed",
            )
        )
    if query.top_n is not None and query.top_n < 1:
        violations.append(
            FieldViolation("top_n", f"must be at least 1 when set, got {query.top_n}")
        )
    if violations:
        raise InvalidRequest(violations)


def best_first(ranking: Iterable[Ranked], top_n: int | None) -> tuple[Ranked, ...]:
    """`ranking` in the order callers get: highest score first, equal scores by index, cut to
    `top_n` (all of it when None)."""
    ordered = sorted(ranking, key=lambda item: (-item.score, item.index))
    return tuple(ordered if top_n is None else ordered[:top_n])
