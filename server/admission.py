"""Admission control: refuse work at once when the server is full, instead of queueing it.

Two limits, both checked on arrival: calls in flight, and bytes of requests in flight. A call
over either gets `Overloaded` (RESOURCE_EXHAUSTED with a RetryInfo) immediately, so memory
stays bounded by `max_bytes` (plus one gRPC message per call gRPC itself is still reading, capped
by the call limit in `interceptors.CallLimitInterceptor`) however large the flood.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from rerank.server.errors import Overloaded
from rerank.server.metrics import Metrics


class Admission:
    """Counts calls and request bytes in flight; single-threaded (one event loop)."""

    def __init__(self, max_calls: int, max_bytes: int, metrics: Metrics | None = None) -> None:
        self._max_calls = max_calls
        self._max_bytes = max_bytes
        self._metrics = metrics or Metrics.disabled()
        self.calls = 0
        self.bytes = 0

    @contextmanager
    def admit(self, size: int) -> Iterator[None]:
        """Hold a place for a call of `size` bytes, or raise `Overloaded`."""
        if self.calls >= self._max_calls:
            self._metrics.refused("concurrent_calls")
            raise Overloaded(
                f"the server is at its limit of {self._max_calls} concurrent calls; retry later"
            )
        if self.bytes + size > self._max_bytes:
            self._metrics.refused("inflight_bytes")
            raise Overloaded(
                f"the server is at its limit of {self._max_bytes} bytes of requests in flight; "
                "retry later"
            )
        self.calls += 1
        self.bytes += size
        self._metrics.admitted(1)
        try:
            yield
        finally:
            self.calls -= 1
            self.bytes -= size
            self._metrics.admitted(-1)
