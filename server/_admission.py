"""Admission control: refuse work at once when the server is full, instead of queueing it.

Two limits, checked on arrival: calls in flight, and the memory they hold (each counted as
its request's bytes times `HELD_PER_REQUEST_BYTE`). A call over either gets `Overloaded` at
once, so memory stays bounded however large the flood.

How much a call in flight holds, and how that was measured: docs/design/memory.md.
"""

from __future__ import annotations

import ctypes
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Final

from rerank.server._errors import Overloaded
from rerank.server._metrics import Metrics

logger = logging.getLogger(__name__)

HELD_PER_REQUEST_BYTE: Final = 3
"""Bytes an in-flight Rerank call holds per byte of its request: the 2.4-2.5 measured with glibc
(docs/design/memory.md; bench/memory.py) rounded up for the answer being sent."""


class Admission:
    """Counts calls, and the bytes they hold, in flight."""

    def __init__(self, max_calls: int, max_bytes: int, metrics: Metrics | None = None) -> None:
        self._max_calls = max_calls
        self._max_bytes = max_bytes
        self._metrics = metrics or Metrics.disabled()
        self.calls = 0
        self.bytes = 0

    @contextmanager
    def admit(self, request_bytes: int) -> Iterator[None]:
        """Hold a place for a call of `request_bytes` (0 for a BatchRerank's request: `hold`
        counted them), or raise `Overloaded`."""
        if self.calls >= self._max_calls:
            self._metrics.refused("concurrent_calls")
            raise Overloaded(
                f"the server is at its limit of {self._max_calls} concurrent calls; retry later"
            )
        with self.hold(request_bytes):
            self.calls += 1
            self._metrics.admitted(1)
            try:
                yield
            finally:
                self.calls -= 1
                self._metrics.admitted(-1)

    @contextmanager
    def hold(self, request_bytes: int) -> Iterator[None]:
        """Count what a call of `request_bytes` holds, without a place (a BatchRerank's, for
        all its requests), or raise `Overloaded`. One heavier than the limit runs alone."""
        size = request_bytes * HELD_PER_REQUEST_BYTE
        if size and self.bytes and self.bytes + size > self._max_bytes:
            self._metrics.refused("inflight_bytes")
            raise Overloaded(
                f"the server is at its limit of {self._max_bytes} bytes held by calls in flight "
                f"(a call holds about {HELD_PER_REQUEST_BYTE}x its request's bytes); retry later"
            )
        self.bytes += size
        try:
            yield
        finally:
            self.bytes -= size


class CallPlaces:
    """Places for calls of one kind in flight, taken before a call's message is read: the
    backstop above `Admission`, which sees a call only once its message is read."""

    __slots__ = ("calls", "limit")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.calls = 0

    def take(self) -> Overloaded | None:
        """Take a place (`give` it back), or the refusal when none is left."""
        if self.calls >= self.limit:
            return Overloaded(
                f"the server is at its limit of {self.limit} calls in flight; retry later"
            )
        self.calls += 1
        return None

    def give(self) -> None:
        self.calls -= 1


_M_MMAP_THRESHOLD = -3  # glibc's `mallopt` parameter
#: The blocks that stayed resident are transport buffers of 64 KiB and a little more: higher
#: thresholds (72 to 256 KiB, measured) left them in the heaps.
LARGE_BLOCK_BYTES = 64 * 1024


def return_large_blocks_when_freed() -> None:
    """Have glibc give every allocation of `LARGE_BLOCK_BYTES` or more its own mapping, returned
    when freed (by default glibc raises that threshold as they are freed, and a call's large
    blocks stay resident); docs/design/memory.md. Not glibc: nothing."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    if not mallopt(_M_MMAP_THRESHOLD, LARGE_BLOCK_BYTES):
        logger.info("mallopt(M_MMAP_THRESHOLD) refused: freed large blocks stay in the heap")
