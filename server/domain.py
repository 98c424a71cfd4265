"""What a rerank call is, independent of gRPC and HTTP: frozen values and the rules on them.

No grpc, no HTTP here. The servicer translates protos into these values; the gateway adapter
translates them into the gateway's JSON. Both sides meet on `Reranker`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from rerank.server.errors import FieldViolation, InvalidRequest, UpstreamProtocolError

#: A JSON object as Python sees it after parsing.
JsonObject = dict[str, Any]
DocumentKind = Literal["text", "object"]
WarningType = Literal["unsupported", "compatibility", "other"]

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


@dataclass(frozen=True)
class Ranked:
    """One ranked document: its index in the request and its score."""

    index: int
    score: float


@dataclass(frozen=True)
class Warning:
    """A remark of the gateway on a call that succeeded."""

    type: WarningType
    feature: str = ""
    details: str = ""
    message: str = ""


@dataclass(frozen=True)
class RerankOutcome:
    """What a backend answered: the ranking as it came, plus warnings and metadata."""

    ranking: tuple[Ranked, ...]
    warnings: tuple[Warning, ...] = ()
    provider_metadata: JsonObject | None = None
    #: True when the answer was served from the result cache (or shared with an identical
    #: call in flight) rather than fetched for this call.
    cached: bool = False


@dataclass(frozen=True)
class ModelInfo:
    """One reranking model a backend offers."""

    id: str
    name: str = ""
    description: str = ""
    provider: str = ""
    pricing: Mapping[str, str] | None = None


class Reranker(Protocol):
    """Something that reranks: the gateway adapter, over the real gateway or the mock."""

    async def rerank(self, query: RerankQuery, *, timeout: float) -> RerankOutcome:
        """Rank `query.documents`; give up with `UpstreamTimeout` after `timeout` seconds."""
        ...

    async def list_models(self, *, timeout: float) -> tuple[ModelInfo, ...]:
        """The reranking models on offer."""
        ...

    async def aclose(self) -> None:
        """Release connections; called once, at shutdown."""
        ...


class RerankerLayer:
    """A `Reranker` around another: every call passes through to `inner` unless the layer
    overrides it. The cache, the windows and the retries are layers; a new concern (metrics,
    tenants) is a layer that overrides the one method it changes."""

    def __init__(self, inner: Reranker) -> None:
        self._inner = inner

    async def rerank(self, query: RerankQuery, *, timeout: float) -> RerankOutcome:
        return await self._inner.rerank(query, timeout=timeout)

    async def list_models(self, *, timeout: float) -> tuple[ModelInfo, ...]:
        return await self._inner.list_models(timeout=timeout)

    async def aclose(self) -> None:
        await self._inner.aclose()


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
    if not query.documents:
        violations.append(FieldViolation("documents", "must hold at least one document"))
    elif len(query.documents) > limits.max_documents:
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


def final_ranking(
    ranking: Sequence[Ranked], document_count: int, top_n: int | None
) -> list[Ranked]:
    """Sort and cut a backend's ranking, after checking it is a ranking of these documents.

    The protocol says the gateway sorts and cuts already; we do it again so a sloppy backend
    cannot hand callers a wrong order. Scores that are not finite, or indices out of range or
    repeated, mean the answer cannot be trusted at all: `UpstreamProtocolError`.
    """
    seen: set[int] = set()
    for position, item in enumerate(ranking):
        if not 0 <= item.index < document_count:
            raise UpstreamProtocolError(
                f"gateway ranking[{position}] has index {item.index}, "
                f"outside the {document_count} documents sent"
            )
        if item.index in seen:
            raise UpstreamProtocolError(f"gateway ranking[{position}] repeats index {item.index}")
        if not math.isfinite(item.score):
            raise UpstreamProtocolError(f"gateway ranking[{position}] has a non-finite score")
        seen.add(item.index)
    ordered = sorted(ranking, key=lambda item: (-item.score, item.index))
    return ordered if top_n is None else ordered[:top_n]
