"""Waiting for something to hold, for the tests, the bench and the tools: always bounded, and
on timeout an AssertionError naming what was awaited.

Given what signals a change (`changed`: a `threading.Condition` notified, an `asyncio.Event`
set), the condition is asked again on each signal; without one, it is polled every `every`
seconds, for states nothing announces (a child process's /proc entry, a server's counters).
"""

from __future__ import annotations

import asyncio
import inspect
import threading
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")

#: What a description of the awaited is: text, or a function that writes it at timeout (to
#: show the state that fell short, such as a process's output so far).
What = str | Callable[[], str]


def _timed_out(what: What, timeout: float) -> AssertionError:
    described = what() if callable(what) else what
    return AssertionError(f"not within {timeout:g} s: {described}")


def until(
    condition: Callable[[], T],
    what: What,
    *,
    timeout: float = 10,
    changed: threading.Condition | None = None,
    every: float = 0.02,
) -> T:
    """`condition()` once it is truthy. With `changed`, it is asked holding that condition's
    lock, again whenever it is notified."""
    deadline = time.monotonic() + timeout
    if changed is None:
        while not (value := condition()):
            if time.monotonic() >= deadline:
                raise _timed_out(what, timeout)
            time.sleep(every)
        return value
    with changed:
        while not (value := condition()):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise _timed_out(what, timeout)
            changed.wait(remaining)
        return value


async def until_async(
    condition: Callable[[], T | Awaitable[T]],
    what: What,
    *,
    timeout: float = 10,
    changed: asyncio.Event | None = None,
    every: float = 0.02,
) -> T:
    """`until` on the event loop; `condition` may be a coroutine function. With `changed`, it
    is asked again each time that event is set (whoever changes what it looks at sets it)."""
    try:
        async with asyncio.timeout(timeout):
            while True:
                if changed is not None:
                    changed.clear()  # before the look: a change during it is not lost
                value = condition()
                if inspect.isawaitable(value):
                    value = await value
                if value:
                    return value  # type: ignore[return-value]
                await (asyncio.sleep(every) if changed is None else changed.wait())
    except TimeoutError:
        raise _timed_out(what, timeout) from None
