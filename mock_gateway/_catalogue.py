"""The models the mock knows: what ``GET /config`` lists and what the rerank endpoints accept.

The reranking entries are the nine models the AI SDK knows by name. Cohere bills per search
(one query over up to 100 documents), so its entries carry no per-token ``pricing``; Voyage
bills per token, so its entries do. The two non-reranking entries exist so that a caller's
``modelType`` filtering is exercised; the rerank endpoints refuse them as unknown models.
Prices are illustrative, not the gateway's price list.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from types import MappingProxyType
from typing import Any

import msgspec

from rerank.server._gateway_protocol import ConfigModel, Specification


@dataclass(frozen=True)
class Model:
    """One catalogue entry."""

    id: str
    name: str
    description: str | None
    model_type: str
    pricing: tuple[str, str] | None
    """Per-token ``(input, output)`` prices as the decimal strings ``/config`` shows."""
    search_unit_price: Decimal
    """US dollars per search unit, the basis of ``providerMetadata.gateway.cost``."""

    @property
    def provider(self) -> str:
        """The provider slug: the part of the id before the slash."""
        return self.id.partition("/")[0]

    def config_entry(self, specification_version: str) -> dict[str, Any]:
        """The model as ``GET /config`` lists it (spec §6) for a protocol version ("v3")."""
        pricing = None
        if self.pricing is not None:
            pricing = {"input": self.pricing[0], "output": self.pricing[1]}
        specification = Specification(specification_version, self.provider, self.id)
        entry = ConfigModel(
            self.id, self.name, self.description, pricing, specification, self.model_type
        )
        listed: dict[str, Any] = msgspec.to_builtins(entry)
        return listed


def _rerank(
    model_id: str, name: str, description: str | None, price: str, pricing: tuple[str, str] | None
) -> Model:
    return Model(model_id, name, description, "reranking", pricing, Decimal(price))


MODELS: tuple[Model, ...] = (
    _rerank("cohere/rerank-v3.5", "Rerank 3.5", None, "0.002", None),
    _rerank("cohere/rerank-v4-fast", "Rerank 4 Fast", "Cohere's fast reranker.", "0.001", None),
    _rerank("cohere/rerank-v4-pro", "Rerank 4 Pro", "Cohere's accurate reranker.", "0.0025", None),
    _rerank("cohere/rerank-v5-fast", "Rerank 5 Fast", None, "0.001", None),
    _rerank("cohere/rerank-v5-pro", "Rerank 5 Pro", None, "0.0025", None),
    _rerank(
        "voyage/rerank-2.5",
        "Rerank 2.5",
        "Voyage's general-purpose reranker.",
        "0.0005",
        ("0.00000005", "0"),
    ),
    _rerank("voyage/rerank-2.5-lite", "Rerank 2.5 Lite", None, "0.0002", ("0.00000002", "0")),
    _rerank("voyage/rerank-3", "Rerank 3", None, "0.0005", ("0.00000005", "0")),
    _rerank("voyage/rerank-3-lite", "Rerank 3 Lite", None, "0.0002", ("0.00000002", "0")),
    Model(
        "openai/gpt-4o-mini",
        "GPT-4o mini",
        "A small language model (listed so that callers filter by modelType).",
        "language",
        ("0.00000015", "0.0000006"),
        Decimal(0),
    ),
    Model(
        "openai/text-embedding-3-small",
        "Text Embedding 3 Small",
        "An embedding model (listed so that callers filter by modelType).",
        "embedding",
        ("0.00000002", "0"),
        Decimal(0),
    ),
)
"""Everything ``GET /config`` lists, in listing order."""

RERANKING_MODELS: Mapping[str, Model] = MappingProxyType(
    {m.id: m for m in MODELS if m.model_type == "reranking"}
)
"""The models the rerank endpoints accept, by id."""

RERANKING_MODEL_IDS: tuple[str, ...] = tuple(RERANKING_MODELS)
"""The ids of the models the rerank endpoints accept."""


def config_body(specification_version: str) -> dict[str, Any]:
    """The body of ``GET /config`` for a protocol version's ``specificationVersion`` ("v3")."""
    return {"models": [model.config_entry(specification_version) for model in MODELS]}
