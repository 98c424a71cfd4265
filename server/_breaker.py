"""One circuit breaker, for the gateway and Redis.

Once the last `window` attempts are in and at least `failure_rate` of them failed, it opens: for
`cooldown` seconds nothing goes through (`CircuitOpen`); then one probe at a time, whose outcome
closes or opens it again. A share, not a run, so a gateway dropping one request in five shuts
nobody out; a window of one with a rate of 1 opens at the first failure, as Redis wants.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from enum import Enum

Clock = Callable[[], float]


class BreakerState(Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class CircuitOpen(Exception):
    """Nothing may go through for `retry_after` seconds (0 while a probe is out)."""

    def __init__(self, retry_after: float) -> None:
        super().__init__(f"circuit open for another {retry_after:.3g} s")
        self.retry_after = retry_after


class CircuitBreaker:
    """`on_change` hears every change of state."""

    def __init__(
        self,
        failure_rate: float = 0.5,
        window: int = 100,
        cooldown: float = 5.0,
        clock: Clock = time.monotonic,
        on_change: Callable[[BreakerState], None] | None = None,
    ) -> None:
        self._failure_rate = failure_rate
        self._recent: deque[bool] = deque(maxlen=window)  # True: that attempt failed
        self._cooldown = cooldown
        self._clock = clock
        self._on_change = on_change
        self._state = BreakerState.CLOSED
        self._opened_at = 0.0
        self._probe_in_flight = False

    @property
    def state(self) -> BreakerState:
        return self._state

    def before_call(self) -> bool:
        """`CircuitOpen`, or whether this attempt is the probe (for `record` or `release`)."""
        if self._state is BreakerState.CLOSED:
            return False
        remaining = self._opened_at + self._cooldown - self._clock()
        if self._state is BreakerState.OPEN and remaining <= 0:
            self._set(BreakerState.HALF_OPEN)
        if self._state is BreakerState.HALF_OPEN and not self._probe_in_flight:
            self._probe_in_flight = True
            return True
        raise CircuitOpen(max(remaining, 0.0))

    def record(self, failed: bool | None, *, probe: bool) -> None:
        """How an attempt ended: failed, or not, or None when that says nothing (cancelled: it
        frees the probe slot all the same)."""
        if probe:
            self._probe_in_flight = False
        if failed is None:
            return
        if probe:
            self._recent.clear()
            self._open() if failed else self._set(BreakerState.CLOSED)
            return
        if self._state is not BreakerState.CLOSED:
            return  # attempts let through before the circuit opened: too late to count
        self._recent.append(failed)
        window = self._recent.maxlen or 1
        if len(self._recent) == window and sum(self._recent) >= self._failure_rate * window:
            self._recent.clear()
            self._open()

    def reset(self) -> None:
        self._recent.clear()
        self._probe_in_flight = False
        self._set(BreakerState.CLOSED)

    def _open(self) -> None:
        self._opened_at = self._clock()
        self._set(BreakerState.OPEN)

    def _set(self, state: BreakerState) -> None:
        if state is not self._state:
            self._state = state
            if self._on_change is not None:
                self._on_change(state)
