"""A clock that moves only when a test moves it, for the code that takes a `clock` (and a
`sleep`) to be given one: call it for the time, `advance` it, await its `sleep`."""

from __future__ import annotations


class FakeClock:
    def __init__(self, now: float = 0.0) -> None:
        self.now = now
        #: What `sleep` was asked for, in order.
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds

    async def sleep(self, seconds: float) -> None:
        """Returns at once, the clock moved on by `seconds`."""
        self.slept.append(seconds)
        self.advance(seconds)
