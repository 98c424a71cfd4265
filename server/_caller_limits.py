"""The caller-limits layer: a named caller's models, rate, concurrency and daily budget.
Outermost, so a cached answer takes a token (it is a call) and costs nothing from the budget.

What a caller's limits and budget mean to it: docs/callers.md.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Coroutine
from decimal import Decimal
from typing import Any

from rerank.server import _errors as errors
from rerank.server._domain import Caller, Reranker, RerankerLayer, RerankOutcome, RerankQuery
from rerank.server._limits import DailyUsage, LimitStore, Refused
from rerank.server._metrics import Metrics


class CallerLimitsReranker(RerankerLayer):
    def __init__(
        self,
        inner: Reranker,
        store: LimitStore,
        *,
        metrics: Metrics | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(inner)
        self._store = store
        self._metrics = metrics or Metrics.disabled()
        self._clock = clock

    def rerank(self, query: RerankQuery, *, timeout: float) -> Coroutine[Any, Any, RerankOutcome]:
        if query.caller is None:  # nothing to limit: no frame of this layer's own
            return self._inner.rerank(query, timeout=timeout)
        return self._limited(query, query.caller, timeout)

    async def _limited(self, query: RerankQuery, caller: Caller, timeout: float) -> RerankOutcome:
        self.check_model(query)
        verdict = await self._store.admit(caller.name, caller.limits, now=self._clock())
        if isinstance(verdict, Refused):
            self._metrics.caller_refused(caller.name, verdict.reason)
            raise _refusal(caller, verdict)
        self._metrics.caller_call(caller.name)
        cost: Decimal | None = None
        try:
            outcome = await self._inner.rerank(query, timeout=timeout)
            cost = outcome.usage.cost
            return outcome
        finally:
            # Shielded: a caller hanging up must still give its lease back and pay its way.
            await asyncio.shield(
                self._store.finish(caller.name, verdict.lease, cost, now=self._clock())
            )

    def check_model(self, query: RerankQuery) -> None:
        """Raise `ModelNotAllowed`, counted, when `query`'s named caller may not use its model;
        the servicer asks it of requests it answers alone, too."""
        caller = query.caller
        if caller is not None and not caller.may_use(query.model):
            refused = errors.ModelNotAllowed(
                f"caller {caller.name!r} may not use model {query.model!r}; "
                f"it may use {', '.join(caller.models)}",
                caller=caller.name,
                model=query.model,
            )
            self._metrics.caller_refused(refused.caller, refused.reason)
            raise refused

    async def usage(self, caller: Caller) -> DailyUsage:
        return await self._store.usage(caller.name, now=self._clock())

    async def aclose(self) -> None:
        await self._inner.aclose()
        await self._store.aclose()


def _refusal(caller: Caller, refused: Refused) -> errors.CallerRefused:
    limits = caller.limits
    if refused.reason == "CALLER_BUDGET_EXHAUSTED":
        return errors.CallerBudgetExhausted(
            f"caller {caller.name!r} has spent its daily budget of "
            f"{limits.daily_budget_usd} USD; it renews at 00:00 UTC",
            caller=caller.name,
            retry_after=refused.retry_after,
            daily_budget_usd=str(limits.daily_budget_usd),
        )
    rules = []
    if limits.requests_per_second is not None:
        rules.append(f"{limits.requests_per_second:g} calls per second")
    if limits.max_concurrent_calls is not None:
        count = limits.max_concurrent_calls
        rules.append(f"{count} call{'' if count == 1 else 's'} in flight")
    return errors.CallerRateLimited(
        f"caller {caller.name!r} is over its limit of {' and '.join(rules)}; "
        f"retry in {refused.retry_after:.3g} s",
        caller=caller.name,
        retry_after=refused.retry_after,
    )
