"""Admission control: refuse work at once when the server is full, instead of queueing it.

Two limits, both checked on arrival: calls in flight, and the memory they hold. A call over
either gets `Overloaded` (RESOURCE_EXHAUSTED with a RetryInfo) immediately, so memory stays
bounded by `max_bytes` (plus one gRPC message per call gRPC itself is still reading, capped
by the transport's `CallPlaces`) however large the flood.

What a call holds is counted as its request's bytes times `HELD_PER_REQUEST_BYTE`, the factor
`make bench` measures (bench/memory.py), not as the request's bytes alone: those were a third
of it, so a limit of 256 MiB had let calls hold about 1.5 GB.
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
"""Bytes of memory an in-flight Rerank call holds per byte of its request: the measured 2.4-2.5
(README, "Memory per call in flight"; 3.0-3.5 where the C library is not glibc, whose large
blocks `return_large_blocks_when_freed` returns) rounded up for what the measurement leaves
out, such as the answer being sent."""


class Admission:
    """Counts calls, and the bytes they hold, in flight; single-threaded (one event loop)."""

    def __init__(self, max_calls: int, max_bytes: int, metrics: Metrics | None = None) -> None:
        self._max_calls = max_calls
        self._max_bytes = max_bytes
        self._metrics = metrics or Metrics.disabled()
        self.calls = 0
        self.bytes = 0

    @contextmanager
    def admit(self, request_bytes: int) -> Iterator[None]:
        """Hold a place for a call whose request has `request_bytes` bytes, or raise
        `Overloaded`.

        The call counts as `request_bytes * HELD_PER_REQUEST_BYTE` (see `hold`); 0 for a call
        whose bytes are counted already, a BatchRerank's request, which then only the call
        limit can refuse.
        """
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
        """Count what a call whose request has `request_bytes` bytes holds, without a call
        place, or raise `Overloaded`: a BatchRerank's, for all its requests at once (each of
        them then takes a call place with `admit(0)`).

        One heavier than the whole limit still runs when no other call holds any (alone, or it
        could never run): memory is then bounded by that one call.
        """
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
    """Places for calls of one kind in flight at the transport, taken before a call's message
    is read: a call beyond `limit` is refused without it (the backstop above `Admission`, which
    sees a call only once its message is read)."""

    __slots__ = ("calls", "limit")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.calls = 0

    def take(self) -> Overloaded | None:
        """Take a place (give it back with `give`); or, when none is left, the refusal."""
        if self.calls >= self.limit:
            return Overloaded(
                f"the server is at its limit of {self.limit} calls in flight; retry later"
            )
        self.calls += 1
        return None

    def give(self) -> None:
        self.calls -= 1


#: glibc's `mallopt` parameter for the size from which an allocation gets its own mapping.
_M_MMAP_THRESHOLD = -3
#: That size for the server. The blocks that stayed resident are of 64 KiB and a little more
#: (transport buffers): thresholds of 72, 96, 128 or 256 KiB left them in the heaps (measured).
LARGE_BLOCK_BYTES = 64 * 1024


def return_large_blocks_when_freed() -> None:
    """Have glibc give every allocation of `LARGE_BLOCK_BYTES` or more its own mapping, which
    goes back to the system when freed; by default glibc raises that threshold as such mappings
    are freed, and a call's large transient blocks then stay resident after use. The numbers,
    and the price (a mapping per block), are in README, "Memory per call in flight". Nothing
    happens where the C library has no `mallopt` (not glibc)."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    if not mallopt(_M_MMAP_THRESHOLD, LARGE_BLOCK_BYTES):
        logger.info("mallopt(M_MMAP_THRESHOLD) refused: freed large blocks stay in the heap")
