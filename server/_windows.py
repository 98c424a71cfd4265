"""Large document sets: split into windows the model takes in one call, rank them in parallel
under one deadline, merge by score (relevance scores of one model for one query compare across
calls), cut to `top_n`. A window's answer is valid for its own documents, so shifting its
indices by its first document makes it valid for the whole request.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Coroutine, Mapping
from dataclasses import dataclass, field
from typing import Any

from opentelemetry import trace
from opentelemetry.trace import Status, StatusCode, Tracer

from rerank.server._calls import current_call
from rerank.server._domain import (
    FREE,
    ModelInfo,
    Ranked,
    Reranker,
    RerankerLayer,
    RerankOutcome,
    RerankQuery,
    best_first,
)
from rerank.server._errors import RerankError
from rerank.server._metrics import Metrics
from rerank.server._tracing import WINDOW_SPAN, child_span

#: Per-call document limits of the providers behind the gateway (spec §8): Cohere recommends at
#: most 1,000 per request and Voyage allows 1,000.
DEFAULT_WINDOW_SIZES: Mapping[str, int] = {"cohere": 1000, "voyage": 1000}


@dataclass(frozen=True)
class WindowPolicy:
    """Documents per upstream call, by model slug or provider (the slug wins), else
    `default_size`; and windows of one request in flight at once."""

    sizes: Mapping[str, int] = field(default_factory=lambda: dict(DEFAULT_WINDOW_SIZES))
    default_size: int = 1000
    parallelism: int = 4

    def size_for(self, model: str) -> int:
        provider = model.split("/", 1)[0]
        return self.sizes.get(model) or self.sizes.get(provider) or self.default_size


class WindowedReranker(RerankerLayer):
    """Splits requests larger than a window; says each model's window in the models listed."""

    def __init__(
        self,
        inner: Reranker,
        policy: WindowPolicy,
        metrics: Metrics | None = None,
        *,
        tracer: Tracer | None = None,
    ) -> None:
        super().__init__(inner)
        self._policy = policy
        self._metrics = metrics or Metrics.disabled()
        self._tracer = tracer or trace.NoOpTracer()

    async def list_models(self, *, timeout: float) -> tuple[ModelInfo, ...]:
        models = await self._inner.list_models(timeout=timeout)
        return tuple(
            dataclasses.replace(m, documents_per_upstream_call=self._policy.size_for(m.id))
            for m in models
        )

    def rerank(self, query: RerankQuery, *, timeout: float) -> Coroutine[Any, Any, RerankOutcome]:
        size = self._policy.size_for(query.model)
        starts = range(0, len(query.documents), size)
        self._metrics.windows(len(starts))
        call = current_call()
        if call is not None:
            call.windows = max(len(starts), 1)
        if len(starts) <= 1:  # one window: the inner call itself, without a frame of ours
            return self._inner.rerank(query, timeout=timeout)
        return self._in_windows(query, size, starts, timeout)

    async def _in_windows(
        self, query: RerankQuery, size: int, starts: range, timeout: float
    ) -> RerankOutcome:
        deadline = time.monotonic() + timeout
        slots = asyncio.Semaphore(self._policy.parallelism)

        async def window(number: int, start: int) -> RerankOutcome:
            async with slots:
                part = dataclasses.replace(query, documents=query.documents[start : start + size])
                span = child_span(self._tracer, WINDOW_SPAN)
                span.set_attributes(
                    {
                        "rerank.window.index": number,
                        "rerank.window.first_document": start,
                        "rerank.documents": len(part.documents),
                    }
                )
                # Our errors' messages may quote the gateway: the span gets the reason only.
                with trace.use_span(
                    span, end_on_exit=True, record_exception=False, set_status_on_exception=False
                ):
                    try:
                        left = deadline - time.monotonic()
                        outcome = await self._inner.rerank(part, timeout=left)
                    except RerankError as error:
                        span.set_attribute("error.type", error.reason)
                        span.set_status(Status(StatusCode.ERROR, error.reason))
                        raise
            return dataclasses.replace(
                outcome, ranking=tuple(Ranked(r.index + start, r.score) for r in outcome.ranking)
            )

        tasks = [
            asyncio.ensure_future(window(number, start)) for number, start in enumerate(starts)
        ]
        try:
            outcomes = await asyncio.gather(*tasks)
        except BaseException:
            # One window failed (or the caller left): the others are of no use any more.
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise
        return merge(outcomes, query.top_n)


def merge(outcomes: list[RerankOutcome], top_n: int | None) -> RerankOutcome:
    """One outcome from the windows': rankings merged best first, each warning once, the usage
    of all of them, and the first window's provider metadata."""
    return RerankOutcome(
        ranking=best_first((r for outcome in outcomes for r in outcome.ranking), top_n),
        warnings=tuple(dict.fromkeys(w for outcome in outcomes for w in outcome.warnings)),
        provider_metadata=next(
            (o.provider_metadata for o in outcomes if o.provider_metadata is not None), None
        ),
        usage=sum((o.usage for o in outcomes), FREE),
    )
