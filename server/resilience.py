"""Retries, a retry budget and a circuit breaker around any `Reranker`.

Policy, in one place:

- Retried: `UpstreamUnavailable` (5xx, 408, 409, refused/reset/dropped connections) and
  `UpstreamRateLimited` (429) — the failures the AI SDK retries. Nothing else: a 4xx will fail
  the same way again, a protocol error means a broken upstream, and a timeout means the
  caller's deadline is spent.
- At most `max_retries` retries (default 2, three attempts, like the AI SDK). The delay is
  the gateway's `retry-after-ms`/`retry-after` when it gave one (0-60 s), else exponential
  backoff with full jitter. A retry whose delay would end past the call's deadline is not
  made: the caller gets the last error at once instead of a wasted wait.
- A retry budget keeps a failing gateway from being hammered: every first attempt deposits
  `ratio` of a token, every retry withdraws one; with the bucket empty, failures are not
  retried. Retries are therefore at most about `ratio` of traffic, plus a small burst.
- A circuit breaker fails fast after `failure_threshold` consecutive failures that say the
  upstream is down (`UpstreamUnavailable`), for `cooldown` seconds; then one probe call at a
  time goes through, and the first success closes it again. While open, callers get
  UNAVAILABLE with a RetryInfo of the time left. Health stays SERVING meanwhile (see
  README, "Guarantees"): the gateway is shared by every replica, so taking them all out of a
  load balancer at once would turn one clear error into "no healthy upstream".
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from enum import Enum
from typing import TypeVar

from server.domain import ModelInfo, Reranker, RerankOutcome, RerankQuery
from server.errors import UpstreamError, UpstreamRateLimited, UpstreamTimeout, UpstreamUnavailable

logger = logging.getLogger(__name__)

T = TypeVar("T")
Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]

RETRYABLE: tuple[type[UpstreamError], ...] = (UpstreamUnavailable, UpstreamRateLimited)


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently to retry a retryable failure."""

    max_retries: int = 2
    """Retries after the first attempt (the AI SDK's default is 2)."""

    initial_backoff: float = 0.5
    """Upper bound of the first jittered delay, seconds; doubles per retry."""

    max_backoff: float = 8.0
    """Upper bound of any jittered delay, seconds."""

    def backoff(self, retry: int, rng: random.Random) -> float:
        """Full jitter: uniform in [0, min(max, initial * 2**retry)]."""
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


class BreakerState(Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half-open"


class CircuitBreaker:
    """Opens after consecutive upstream-down failures; lets one probe through after a cool-down."""

    def __init__(
        self,
        failure_threshold: int = 5,
        cooldown: float = 5.0,
        clock: Clock = time.monotonic,
        on_change: Callable[[BreakerState], None] | None = None,
    ) -> None:
        self._threshold = failure_threshold
        self._cooldown = cooldown
        self._clock = clock
        self._on_change = on_change
        self._state = BreakerState.CLOSED
        self._failures = 0
        self._opened_at = 0.0
        self._probe_in_flight = False

    @property
    def state(self) -> BreakerState:
        return self._state

    def before_call(self) -> None:
        """Raise `UpstreamUnavailable` when calls must not go upstream now."""
        if self._state is BreakerState.CLOSED:
            return
        remaining = self._opened_at + self._cooldown - self._clock()
        if self._state is BreakerState.OPEN and remaining <= 0:
            self._set(BreakerState.HALF_OPEN)
        if self._state is BreakerState.HALF_OPEN and not self._probe_in_flight:
            self._probe_in_flight = True
            return
        raise UpstreamUnavailable(
            "the gateway is failing; calls are paused for a cool-down (circuit open)",
            retry_after=max(remaining, 0.1),
        )

    def record(self, error: UpstreamError | None) -> None:
        """Report how a call that `before_call` let through ended: None for success."""
        was_probe, self._probe_in_flight = self._probe_in_flight, False
        if isinstance(error, UpstreamUnavailable):
            self._failures += 1
            if was_probe or self._failures >= self._threshold:
                self._opened_at = self._clock()
                self._set(BreakerState.OPEN)
        elif not isinstance(error, UpstreamTimeout):
            # Any answer the upstream gave (even a 4xx) shows it is up. A timeout says
            # nothing: the caller's deadline may simply have been short.
            self._failures = 0
            if self._state is not BreakerState.CLOSED:
                self._set(BreakerState.CLOSED)

    def release(self) -> None:
        """A call ended without an answer worth judging (cancelled): free its probe slot."""
        self._probe_in_flight = False

    def _set(self, state: BreakerState) -> None:
        if state is not self._state:
            logger.warning("gateway circuit %s -> %s", self._state.value, state.value)
            self._state = state
            if self._on_change is not None:
                self._on_change(state)


class ResilientReranker:
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
    ) -> None:
        self._inner = inner
        self._policy = policy
        self._budget = budget
        self._breaker = breaker
        self._clock = clock
        self._sleep = sleep
        self._rng = rng or random.Random()

    async def rerank(self, query: RerankQuery, *, timeout: float) -> RerankOutcome:
        return await self._call(lambda left: self._inner.rerank(query, timeout=left), timeout)

    async def list_models(self, *, timeout: float) -> tuple[ModelInfo, ...]:
        return await self._call(lambda left: self._inner.list_models(timeout=left), timeout)

    async def aclose(self) -> None:
        await self._inner.aclose()

    async def _call(self, attempt: Callable[[float], Awaitable[T]], timeout: float) -> T:
        deadline = self._clock() + timeout
        self._budget.record_attempt()
        retry = 0
        while True:
            self._breaker.before_call()
            try:
                result = await attempt(deadline - self._clock())
            except UpstreamError as error:
                self._breaker.record(error)
                delay = self._retry_delay(error, retry, deadline)
                if delay is None:
                    raise
                logger.info(
                    "retrying after %s (retry %d in %.3f s)", error.reason, retry + 1, delay
                )
                await self._sleep(delay)
                retry += 1
                continue
            except BaseException:
                # Cancellation and bugs say nothing about the upstream.
                self._breaker.release()
                raise
            self._breaker.record(None)
            return result

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
            return None
        return delay
