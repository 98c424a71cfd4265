"""Fixtures of the service tests: real servers on loopback, and channels to them, all closed
at the end of the test."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
import pytest

from rerank.server._app import RunningServer, start_server
from rerank.server._config import Settings

#: `servers`: start a server as `start_server(settings, **kwargs)` does.
StartServer = Callable[..., Awaitable[RunningServer]]


@pytest.fixture
async def servers() -> AsyncIterator[StartServer]:
    """Start servers (`start_server`'s arguments); every one started is stopped at the end."""
    started: list[RunningServer] = []

    async def start(settings: Settings, **kwargs: Any) -> RunningServer:
        running = await start_server(settings, **kwargs)
        started.append(running)
        return running

    yield start
    for running in started:
        await running.stop()


@pytest.fixture
async def channels() -> AsyncIterator[list[grpc.aio.Channel]]:
    """A list a test adds its channels to; each is closed at the end."""
    opened: list[grpc.aio.Channel] = []
    yield opened
    for channel in opened:
        await channel.close()
