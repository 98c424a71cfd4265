"""Per-caller limits and the day's spend: the values, the store's shape, the in-process store.

This process's store and Redis's (`_redis_store`) follow these rules: the bucket holds
`bucket_size` tokens, starts full, and a call takes one; a budget refuses once the day's spend
has reached it (a call may overshoot it by its own cost); days are UTC days of the wall clock;
costs are integer nano-dollars, so sums are exact.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import ROUND_CEILING, Decimal
from typing import Literal, Protocol

NANOS_PER_USD = 1_000_000_000

#: The wait told a caller refused for its concurrency: about a rerank call's length.
CONCURRENCY_RETRY_AFTER = 0.1

RefusalReason = Literal["CALLER_RATE_LIMITED", "CALLER_BUDGET_EXHAUSTED"]


@dataclass(frozen=True)
class CallerLimits:
    """What one caller may do; `None` means unlimited (`burst`: see `bucket_size`)."""

    requests_per_second: float | None = None
    burst: float | None = None
    max_concurrent_calls: int | None = None
    daily_budget_usd: Decimal | None = None


UNLIMITED = CallerLimits()


@dataclass(frozen=True)
class Granted:
    """The call may go on; `finish` it with `lease` ("" without a concurrency limit)."""

    lease: str


@dataclass(frozen=True)
class Refused:
    reason: RefusalReason
    retry_after: float  # seconds until trying again can help


@dataclass(frozen=True)
class DailyUsage:
    """A caller's standing on one UTC day ("YYYY-MM-DD")."""

    day: str
    spent_usd: Decimal
    calls: int
    refused: int


class LimitStore(Protocol):
    """Where limits are counted, one round trip per question: may this caller start a call now
    (`admit`, counted as a call or a refusal), and what did it cost (`finish`)."""

    async def admit(
        self, caller: str, limits: CallerLimits, *, now: float
    ) -> Granted | Refused: ...

    async def finish(
        self, caller: str, lease: str, cost: Decimal | None, *, now: float
    ) -> None: ...

    async def usage(self, caller: str, *, now: float) -> DailyUsage: ...

    async def aclose(self) -> None: ...


def utc_day(now: float) -> str:
    return datetime.fromtimestamp(now, UTC).date().isoformat()


def seconds_to_next_utc_midnight(now: float) -> float:
    today = datetime.fromtimestamp(now, UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    return (today + timedelta(days=1)).timestamp() - now


def bucket_size(limits: CallerLimits) -> float:
    """The rate bucket's capacity: `burst`, else `requests_per_second`; at least one token."""
    if limits.requests_per_second is None:
        return math.inf
    size = limits.burst if limits.burst is not None else limits.requests_per_second
    return max(size, 1.0)


def to_nanos(usd: Decimal) -> int:
    """`usd` as whole nano-dollars, rounded up: a fraction of a nano-dollar still counts."""
    return int((usd * NANOS_PER_USD).to_integral_value(rounding=ROUND_CEILING))


def from_nanos(nanos: int) -> Decimal:
    return Decimal(nanos).scaleb(-9)


def charged_nanos(cost: Decimal | None) -> int:
    return to_nanos(cost) if cost is not None and cost > 0 else 0


def refusal(limit: str, now: float, wait: float = 0.0) -> Refused:
    """The refusal for the limit a call met: "budget" (until the next UTC day), "slots" (the
    concurrency limit) or "rate" (`wait` seconds, until a token is back)."""
    if limit == "budget":
        return Refused("CALLER_BUDGET_EXHAUSTED", seconds_to_next_utc_midnight(now))
    return Refused("CALLER_RATE_LIMITED", CONCURRENCY_RETRY_AFTER if limit == "slots" else wait)


@dataclass
class _CallerState:
    tokens: float
    refilled_at: float
    leases: set[str] = field(default_factory=set)
    day: str = ""
    spent_nanos: int = 0
    calls: int = 0
    refused: int = 0

    def roll_to(self, day: str) -> None:
        if day != self.day:
            self.day = day
            self.spent_nanos = self.calls = self.refused = 0


class InMemoryLimitStore:
    """A `LimitStore` in this process: no awaits inside, so each method is atomic. Changed
    limits apply at the caller's next call."""

    def __init__(self) -> None:
        self._callers: dict[str, _CallerState] = {}
        self._lease_ids = itertools.count(1)

    def _state(self, caller: str, limits: CallerLimits, now: float) -> _CallerState:
        state = self._callers.get(caller)
        if state is None:
            state = _CallerState(tokens=bucket_size(limits), refilled_at=now)
            self._callers[caller] = state
        state.roll_to(utc_day(now))
        return state

    async def admit(self, caller: str, limits: CallerLimits, *, now: float) -> Granted | Refused:
        state = self._state(caller, limits, now)
        refusal = self._refusal(state, limits, now)
        if refusal is not None:
            state.refused += 1
            return refusal
        state.calls += 1
        if limits.requests_per_second is not None:
            state.tokens -= 1.0
        if limits.max_concurrent_calls is None:
            return Granted(lease="")
        lease = str(next(self._lease_ids))
        state.leases.add(lease)
        return Granted(lease=lease)

    @staticmethod
    def _refusal(state: _CallerState, limits: CallerLimits, now: float) -> Refused | None:
        """Why `state` may not start a call now (refilling its bucket first), or None."""
        budget = limits.daily_budget_usd
        if budget is not None and state.spent_nanos >= to_nanos(budget):
            return refusal("budget", now)
        rate = limits.requests_per_second
        if rate is not None:
            # A clock that steps back refills nothing rather than draining the bucket.
            elapsed = max(0.0, now - state.refilled_at)
            state.tokens = min(bucket_size(limits), state.tokens + elapsed * rate)
        state.refilled_at = now
        if len(state.leases) >= (limits.max_concurrent_calls or math.inf):
            return refusal("slots", now)
        if rate is not None and state.tokens < 1.0:
            return refusal("rate", now, (1.0 - state.tokens) / rate)
        return None

    async def finish(self, caller: str, lease: str, cost: Decimal | None, *, now: float) -> None:
        state = self._callers.get(caller)
        if state is None:
            return
        state.leases.discard(lease)
        if spent := charged_nanos(cost):
            state.roll_to(utc_day(now))
            state.spent_nanos += spent

    async def usage(self, caller: str, *, now: float) -> DailyUsage:
        day = utc_day(now)
        state = self._callers.get(caller)
        if state is None or state.day != day:
            return DailyUsage(day, Decimal(0), 0, 0)
        return DailyUsage(day, from_nanos(state.spent_nanos), state.calls, state.refused)

    async def aclose(self) -> None:
        self._callers.clear()
