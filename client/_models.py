"""The typed results the client returns: frozen dataclasses, free of protobuf and gRPC."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Literal

from ._exceptions import RerankClientError

__all__ = [
    "BatchItem",
    "CallerUsage",
    "Document",
    "ModelInfo",
    "RankedDocument",
    "RerankRequest",
    "RerankResult",
    "Usage",
    "Warning",
    "WarningType",
]

Document = str | dict[str, Any]
"""A document: plain text, or a JSON object."""

WarningType = Literal["unsupported", "compatibility", "other", "deprecated"]
"""The kinds of warning, named as the AI SDK names them (`deprecated` since gateway protocol v4)."""


@dataclass(frozen=True, slots=True)
class RankedDocument:
    """One document of a ranking, as the AI SDK's `ranking` entries."""

    original_index: int
    """The document's position in the request's `documents`, from 0."""
    score: float
    """The model's relevance score; higher is more relevant."""
    document: Document
    """The document itself, as it was sent (text, or a JSON object)."""

    def to_json_dict(self, *, documents: bool = True) -> dict[str, Any]:
        """The SDK's JSON shape: `{"originalIndex", "score", "document"}`; without `document`
        when `documents` is False."""
        out: dict[str, Any] = {"originalIndex": self.original_index, "score": self.score}
        if documents:
            out["document"] = self.document
        return out


# Named as the brief and the SDK name it; this shadows the builtin `Warning` only inside this
# module and for `from client import *`, so callers should write `rerank.client.Warning`.
@dataclass(frozen=True, slots=True)
class Warning:
    """A remark from the gateway about a call that nevertheless succeeded."""

    type: WarningType
    """`unsupported`, `compatibility` (both about `feature`), `deprecated` (about `setting`)
    or `other` (see `message`; also a type the gateway's protocol does not define, named there)."""
    feature: str = ""
    """For `unsupported` and `compatibility`: the feature concerned, e.g. `topN`."""
    details: str = ""
    """For `unsupported` and `compatibility`: more detail, when the gateway gave any."""
    message: str = ""
    """For `other` and `deprecated`: the gateway's message."""
    setting: str = ""
    """For `deprecated`: the setting concerned, e.g. `topN`."""

    def to_json_dict(self) -> dict[str, Any]:
        """The SDK's JSON shape: `{type, feature, details?}`, `{type: "other", message}` or
        `{type: "deprecated", setting, message}`."""
        if self.type == "other":
            return {"type": self.type, "message": self.message}
        if self.type == "deprecated":
            return {"type": self.type, "setting": self.setting, "message": self.message}
        out: dict[str, Any] = {"type": self.type, "feature": self.feature}
        if self.details:
            out["details"] = self.details
        return out


@dataclass(frozen=True, slots=True)
class Usage:
    """What one call spent at the gateway, as the server reports it."""

    cost: Decimal | None
    """The call's cost in US dollars, exact (every window's, summed); `Decimal(0)` when no
    gateway call was charged to it (e.g. a cache hit); None when the gateway did not report
    one: unknown, which is not free."""
    upstream_calls: int
    """Gateway calls made for it: every window and every attempt, retried or not."""

    def to_json_dict(self) -> dict[str, Any]:
        """`{"cost": "0.002" | null, "upstreamCalls": 1}`: the cost as the decimal string it
        travels as, so no float rounds it."""
        cost = None if self.cost is None else format(self.cost, "f")
        return {"cost": cost, "upstreamCalls": self.upstream_calls}


@dataclass(frozen=True, slots=True)
class RerankResult:
    """The answer to `rerank`: the ranked documents, best first, cut to `top_n`."""

    ranking: tuple[RankedDocument, ...]
    """The ranked documents by descending score; ties by ascending `original_index`."""
    model: str
    """The model that ranked them (the requested one, or the server's default)."""
    id: str
    """A unique identifier of this response, for logs and support."""
    warnings: tuple[Warning, ...] = ()
    """Warnings from the gateway; empty when none."""
    provider_metadata: dict[str, Any] | None = None
    """Provider-specific metadata, e.g. `{"gateway": {"cost": "0.002"}}`; None when none."""
    cached: bool = False
    """True when this call was not charged for a gateway call: a cache hit, or an identical
    call in flight that another caller was charged for."""
    usage: Usage | None = None
    """What the call spent at the gateway; None from a server older than the field."""

    @property
    def reranked_documents(self) -> tuple[Document, ...]:
        """The documents in ranked order, as the AI SDK's `rerankedDocuments`."""
        return tuple(entry.document for entry in self.ranking)

    def to_json_dict(self, *, documents: bool = True) -> dict[str, Any]:
        """The AI SDK-style JSON object, in camelCase.

        `{"ranking": [{"originalIndex", "score", "document"}], "rerankedDocuments": [...],
        "model", "id", "warnings": [...], "providerMetadata", "cached", "usage"}`;
        `providerMetadata` and `usage` are always present (null when the server sent none) so
        consumers see one stable shape. With `documents` False, the ranking's entries carry no
        `document` and there is no `rerankedDocuments`: indices and scores only.
        """
        out: dict[str, Any] = {
            "ranking": [entry.to_json_dict(documents=documents) for entry in self.ranking]
        }
        if documents:
            out["rerankedDocuments"] = list(self.reranked_documents)
        out.update(
            {
                "model": self.model,
                "id": self.id,
                "warnings": [warning.to_json_dict() for warning in self.warnings],
                "providerMetadata": self.provider_metadata,
                "cached": self.cached,
                "usage": None if self.usage is None else self.usage.to_json_dict(),
            }
        )
        return out


@dataclass(frozen=True, slots=True)
class RerankRequest:
    """One request of `rerank_many`: the arguments of one `rerank` call."""

    query: str
    """The search query."""
    documents: Sequence[str] | Sequence[Mapping[str, Any]]
    """The candidates: all text (`str`) or all JSON objects (mappings)."""
    model: str = ""
    """The gateway's model slug, e.g. `cohere/rerank-v3.5`; empty for the server's default."""
    top_n: int | None = None
    """How many of the best documents to return; None for all of them."""
    provider_options: Mapping[str, Any] | None = None
    """Provider-specific options, e.g. `{"cohere": {"maxTokensPerDoc": 512}}`."""
    bypass_cache: bool = False
    """Ask the server not to answer from, or store into, its result cache."""
    return_documents: bool = True
    """False: the server's answer carries no documents; the result still has them, from this
    request's own."""


@dataclass(frozen=True, slots=True)
class BatchItem:
    """The answer to one request of `rerank_many`: exactly one of `result` and `error` is set.

    `error` is the exception `rerank` would have raised for that request alone (the same
    class, `code`, `details` and rich details), not raised, so that one failure does not hide
    the other answers.
    """

    result: RerankResult | None = None
    """The answer, when the request succeeded."""
    error: RerankClientError | None = None
    """Why the request failed, when it did."""

    @property
    def ok(self) -> bool:
        """True when the request succeeded."""
        return self.error is None

    def unwrap(self) -> RerankResult:
        """The result, or raise the error, as `rerank` would have."""
        if self.error is not None:
            raise self.error
        assert self.result is not None  # one of the two is always set
        return self.result

    def to_json_dict(self, *, documents: bool = True) -> dict[str, Any]:
        """The result's JSON (`RerankResult.to_json_dict`, `documents` as there), or
        `{"error": {"code", "message", "reason", "fieldViolations", "retryDelay"}}` for a
        failed request (`code` the status name, e.g. `INVALID_ARGUMENT`; `reason` the
        ErrorInfo reason or null; `retryDelay` in seconds or null)."""
        if self.error is None:
            assert self.result is not None
            return self.result.to_json_dict(documents=documents)
        error = self.error
        return {
            "error": {
                "code": error.code.name,
                "message": error.details,
                "reason": error.error_info.reason if error.error_info else None,
                "fieldViolations": [
                    {"field": field_name, "description": description}
                    for field_name, description in error.field_violations
                ],
                "retryDelay": error.retry_delay,
            }
        }


@dataclass(frozen=True, slots=True)
class ModelInfo:
    """A reranking model the gateway offers."""

    id: str
    """The slug to pass as `model`, e.g. `cohere/rerank-v3.5`."""
    name: str = ""
    """A human-readable name, e.g. `Rerank 3.5`; empty when the gateway gave none."""
    description: str = ""
    """A description; empty when the gateway gave none."""
    provider: str = ""
    """The provider serving the model, e.g. `cohere`; empty when the gateway gave none."""
    pricing: dict[str, str] = field(default_factory=dict)
    """Pricing as decimal strings per unit, e.g. `{"input": "0.002"}`; empty when none."""
    documents_per_upstream_call: int = 0
    """The most documents the server sends the gateway in one call for this model (its
    window); larger requests are ranked in several calls, each billed. 0 from a server older
    than the field."""

    def to_json_dict(self) -> dict[str, Any]:
        """The model as a JSON object: `{"id", "name", "description", "provider", "pricing",
        "documentsPerUpstreamCall"}`."""
        return {
            "id": self.id,
            "name": self.name,
            "description": self.description,
            "provider": self.provider,
            "pricing": dict(self.pricing),
            "documentsPerUpstreamCall": self.documents_per_upstream_call,
        }


@dataclass(frozen=True, slots=True)
class CallerUsage:
    """A named caller's own standing on the current UTC day (`get_usage`), and its limits.

    Limits that are None are unlimited.
    """

    caller: str
    """The caller's name in the server's callers file."""
    day: str
    """The UTC day of the figures, `YYYY-MM-DD`."""
    spent_usd: Decimal
    """US dollars spent today, as the gateway reported each call's cost (exact)."""
    calls: int
    """Calls let through today (answered from the cache or not)."""
    refused: int
    """Calls refused today for the rate, the concurrent calls or the budget."""
    daily_budget_usd: Decimal | None = None
    """The daily budget in US dollars."""
    requests_per_second: float | None = None
    """The rate its token bucket refills at."""
    burst: float | None = None
    """The token bucket's size."""
    max_concurrent_calls: int | None = None
    """Calls it may have in flight at once."""
    models: tuple[str, ...] = ()
    """Model slugs (globs) it may use; empty allows every model."""

    def to_json_dict(self) -> dict[str, Any]:
        """The standing as a JSON object, camelCase; dollar amounts as exact decimal strings."""
        return {
            "caller": self.caller,
            "day": self.day,
            "spentUsd": str(self.spent_usd),
            "dailyBudgetUsd": None if self.daily_budget_usd is None else str(self.daily_budget_usd),
            "calls": self.calls,
            "refused": self.refused,
            "requestsPerSecond": self.requests_per_second,
            "burst": self.burst,
            "maxConcurrentCalls": self.max_concurrent_calls,
            "models": list(self.models),
        }
