"""Retries, a retry budget and a circuit breaker around any `Reranker` (README, "Guarantees").

- Retried: `RETRYABLE`, the failures the AI SDK retries; a 4xx would fail the same way again, a
  protocol error means a broken upstream, and a timeout means the caller's deadline is spent.
  A retry whose delay would end past the call's deadline is not made: the caller gets the last
  error at once instead of a wasted wait.
- A retry budget keeps a failing gateway from being hammered: retries are at most about `ratio`
  of traffic, plus a small burst.
- The circuit breaker (`_breaker`) fails fast once the upstream is found down (`found_down`).
  Health stays SERVING meanwhile: the gateway is shared by every replica, so taking them all out
  of a load balancer at once would turn one clear error into "no healthy upstream".
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import random
import time
from collections.abc import Awaitable, Callable
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
    """What an attempt's outcome (None: an answer) tells the breaker: a timeout says nothing,
    as the caller's deadline may simply have been short; any answer, even a 4xx, shows the
    upstream up."""
    if isinstance(error, UpstreamTimeout):
        return None
    return isinstance(error, UpstreamUnavailable)


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently to retry a retryable failure."""

    #: Retries after the first attempt (the AI SDK's default is 2).
    max_retries: int = 2
    #: Upper bound of the first jittered delay, seconds; doubles per retry.
    initial_backoff: float = 0.5
    #: Upper bound of any jittered delay, seconds.
    max_backoff: float = 8.0

    def backoff(self, retry: int, rng: random.Random) -> float:
        """Full jitter."""
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
        """Full again, as at start."""
        self._tokens = self._capacity


class ResilientReranker(RerankerLayer):
    """A `Reranker` that retries, budgets retries and breaks the circuit around another."""

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

        async def attempt(left: float) -> RerankOutcome:
            nonlocal attempts
            attempts += 1
            return await self._inner.rerank(query, timeout=left)

        outcome = await self._call(attempt, timeout)
        # Usage: the answer counts its own gateway call; the attempts that failed before it
        # were gateway calls too (their errors carry no cost).
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
            judged = self._judged(_attempt(attempt, deadline - self._clock(), retry), probe=probe)
            try:
                result = await (self._outliving_its_caller(judged) if probe else judged)
            except UpstreamError as error:
                delay = self._retry_delay(error, retry, deadline)
                if delay is None:
                    raise
                logger.info(
                    "retrying after %s (retry %d in %.3f s)", error.reason, retry + 1, delay
                )
                self._metrics.retry(error.reason)
                trace.get_current_span().add_event(
                    "retry",
                    {
                        "rerank.retry": retry + 1,
                        "error.type": error.reason,
                        "rerank.delay_s": delay,
                    },
                )
                await self._sleep(delay)
                retry += 1
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
            self._breaker.release(probe=probe)
            raise
        self._breaker.record(found_down(None), probe=probe)
        return result

    async def _outliving_its_caller(self, probe: Awaitable[T]) -> T:
        """Run the half-open probe to its verdict even when its caller leaves.

        Its caller is often cancelled for reasons that say nothing about the gateway: the first
        window of a large request takes the probe slot, the others are refused, and that
        cancels the first; freeing the slot then, the circuit would never close while only
        large requests come. (Windows sharing a probe would teach them about the breaker;
        refused calls waiting for the verdict would all hit the gateway the moment it closes.)
        """
        task = asyncio.ensure_future(probe)
        self._probes.add(task)
        task.add_done_callback(self._probes.discard)
        # shield: the caller's cancellation stops its wait, not the probe.
        return await asyncio.shield(task)

    async def reset(self) -> None:
        """Forget every past attempt: no probe left running, the circuit closed, the retry
        budget full (the testing kit, between tests)."""
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
        # Waiting past the deadline only to fail anyway helps nobody.
        if self._clock() + delay >= deadline:
            return None
        if not self._budget.try_spend():
            logger.warning("retry budget exhausted: not retrying %s", error.reason)
            self._metrics.retry_budget_exhausted()
            return None
        return delay


async def _attempt(attempt: Callable[[float], Awaitable[T]], timeout: float, retry: int) -> T:
    """One attempt; a retry runs with its number in the OpenTelemetry context, for the gateway
    adapter's `http.request.resend_count` (first attempts, nearly all of them, skip that)."""
    if retry == 0:
        return await attempt(timeout)
    token = otel_context.attach(otel_context.set_value(RESEND_COUNT_KEY, retry))
    try:
        return await attempt(timeout)
    finally:
        otel_context.detach(token)
