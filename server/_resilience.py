"""Retries, a retry budget and a circuit breaker around any `Reranker` (docs/design/retries.md).

Retried: `RETRYABLE`, the failures the AI SDK retries, unless the delay would end past the
call's deadline. The budget keeps retries to about `ratio` of traffic. The breaker fails fast
once the upstream is found down; health stays SERVING meanwhile, since every replica shares
the gateway and a balancer without replicas answers worse than one clear error.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import random
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, TypeVar

from opentelemetry import context as otel_context
from opentelemetry import trace

from rerank.server._breaker import CircuitBreaker, CircuitOpen, Clock
from rerank.server._calls import current_call
from rerank.server._domain import (
    ModelInfo,
    Reranker,
    RerankerLayer,
    RerankOutcome,
    RerankQuery,
    Usage,
)
from rerank.server._errors import (
    UpstreamError,
    UpstreamRateLimited,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from rerank.server._metrics import Metrics
from rerank.server._tracing import RESEND_COUNT_KEY

logger = logging.getLogger(__name__)

T = TypeVar("T")
Sleep = Callable[[float], Awaitable[None]]

RETRYABLE: tuple[type[UpstreamError], ...] = (UpstreamUnavailable, UpstreamRateLimited)


def found_down(error: UpstreamError | None) -> bool | None:
    """What an attempt's outcome (None: an answer) tells the breaker: a timeout nothing (the
    deadline may have been short); any answer, even a 4xx, that the upstream is up."""
    if isinstance(error, UpstreamTimeout):
        return None
    return isinstance(error, UpstreamUnavailable)


@dataclass(frozen=True)
class RetryPolicy:
    """Retries after the first attempt; the first jittered delay at most (seconds, doubling
    per retry), and any delay at most."""

    max_retries: int = 2
    initial_backoff: float = 0.5
    max_backoff: float = 8.0

    def backoff(self, retry: int, rng: random.Random) -> float:
        return rng.uniform(0, min(self.max_backoff, self.initial_backoff * 2**retry))


class RetryBudget:
    """A token bucket: first attempts earn `ratio` of a token, retries spend one."""

    def __init__(self, ratio: float = 0.2, capacity: float = 10.0) -> None:
        self._ratio = ratio
        self._capacity = capacity
        self._tokens = capacity

    def record_attempt(self) -> None:
        self._tokens = min(self._capacity, self._tokens + self._ratio)

    def try_spend(self) -> bool:
        if self._tokens < 1:
            return False
        self._tokens -= 1
        return True

    def reset(self) -> None:
        self._tokens = self._capacity


class ResilientReranker(RerankerLayer):
    def __init__(
        self,
        inner: Reranker,
        *,
        policy: RetryPolicy,
        budget: RetryBudget,
        breaker: CircuitBreaker,
        clock: Clock = time.monotonic,
        sleep: Sleep = asyncio.sleep,
        rng: random.Random | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        super().__init__(inner)
        self._metrics = metrics or Metrics.disabled()
        self._policy = policy
        self._budget = budget
        self._breaker = breaker
        self._clock = clock
        self._sleep = sleep
        self._rng = rng or random.Random()
        self._probes: set[asyncio.Task[Any]] = set()  # half-open probes in flight

    async def rerank(self, query: RerankQuery, *, timeout: float) -> RerankOutcome:
        attempts = 0

        def attempt(left: float) -> Coroutine[Any, Any, RerankOutcome]:
            nonlocal attempts
            attempts += 1
            return self._inner.rerank(query, timeout=left)

        outcome = await self._call(attempt, timeout)
        if attempts == 1:
            return outcome
        # The attempts that failed before the answer were gateway calls too, without a cost.
        failed = Usage(cost=Decimal(0), upstream_calls=attempts - 1)
        return dataclasses.replace(outcome, usage=outcome.usage + failed)

    async def list_models(self, *, timeout: float) -> tuple[ModelInfo, ...]:
        return await self._call(lambda left: self._inner.list_models(timeout=left), timeout)

    async def _call(self, attempt: Callable[[float], Awaitable[T]], timeout: float) -> T:
        deadline = self._clock() + timeout
        self._budget.record_attempt()
        call = current_call()
        retry = 0
        while True:
            try:
                probe = self._breaker.before_call()
            except CircuitOpen as closed:
                raise UpstreamUnavailable(
                    "the gateway is failing; calls are paused for a cool-down (circuit open)",
                    retry_after=max(closed.retry_after, 0.1),
                ) from None
            if call is not None:
                call.upstream_attempts += 1
            left = deadline - self._clock()  # the first attempt without a frame of its own
            judged = self._judged(
                attempt(left) if retry == 0 else _resent(attempt, left, retry), probe=probe
            )
            try:
                result = await (self._outliving_its_caller(judged) if probe else judged)
            except UpstreamError as error:
                delay = self._retry_delay(error, retry, deadline)
                if delay is None:
                    raise
                retry += 1
                logger.info("retrying after %s (retry %d in %.3f s)", error.reason, retry, delay)
                self._metrics.retry(error.reason)
                said: dict[str, str | int | float] = {
                    "rerank.retry": retry,
                    "error.type": error.reason,
                    "rerank.delay_s": delay,
                }
                trace.get_current_span().add_event("retry", said)
                await self._sleep(delay)
                continue
            return result

    async def _judged(self, attempt: Awaitable[T], *, probe: bool) -> T:
        """`attempt`, its outcome reported to the breaker."""
        try:
            result = await attempt
        except UpstreamError as error:
            self._breaker.record(found_down(error), probe=probe)
            raise
        except BaseException:
            # Cancellation and bugs say nothing about the upstream.
            self._breaker.record(None, probe=probe)
            raise
        self._breaker.record(found_down(None), probe=probe)
        return result

    async def _outliving_its_caller(self, probe: Awaitable[T]) -> T:
        """Run the half-open probe to its verdict even when its caller leaves: the first window
        of a large request takes the probe slot, the others are refused, which cancels the
        first; freeing the slot then, the circuit would never close under large requests."""
        task = asyncio.ensure_future(probe)
        self._probes.add(task)
        task.add_done_callback(self._probes.discard)
        return await asyncio.shield(task)

    async def reset(self) -> None:
        """Forget every past attempt (the testing kit, between tests)."""
        await self._cancel_probes()
        self._breaker.reset()
        self._budget.reset()

    async def aclose(self) -> None:
        await self._cancel_probes()
        await super().aclose()

    async def _cancel_probes(self) -> None:
        for task in list(self._probes):
            task.cancel()
        await asyncio.gather(*self._probes, return_exceptions=True)

    def _retry_delay(self, error: UpstreamError, retry: int, deadline: float) -> float | None:
        """Seconds to wait before retrying `error`, or None when it must not be retried."""
        if not isinstance(error, RETRYABLE) or retry >= self._policy.max_retries:
            return None
        delay = error.retry_after
        if delay is None:
            delay = self._policy.backoff(retry, self._rng)
        if self._clock() + delay >= deadline:
            return None
        if not self._budget.try_spend():
            logger.warning("retry budget exhausted: not retrying %s", error.reason)
            self._metrics.retry_budget_exhausted()
            return None
        return delay


async def _resent(attempt: Callable[[float], Awaitable[T]], timeout: float, retry: int) -> T:
    """A retry, with its number in the OpenTelemetry context (`resend_count`)."""
    token = otel_context.attach(otel_context.set_value(RESEND_COUNT_KEY, retry))
    try:
        return await attempt(timeout)
    finally:
        otel_context.detach(token)
