"""Fixtures of the HTTP port's tests: in-process servers (gRPC and HTTP on loopback, the
bundled mock gateway behind them), and a client of the HTTP port."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from rerank.server._app import RunningServer
from rerank.server._config import Settings
from tests.service.conftest import StartServer
from tests.service.conftest import servers as servers  # the service tests' fixture, shared

#: A server with an HTTP port; bad traffic is timed out after `HEADER_TIMEOUT` seconds.
HEADER_TIMEOUT = 0.5
HTTP = Settings(port=0, http_port=0, http_header_timeout=HEADER_TIMEOUT, grace_period=2)


def settings(**changes: Any) -> Settings:
    return dataclasses.replace(HTTP, **changes)


def base_url(running: RunningServer) -> str:
    assert running.http is not None
    return f"http://127.0.0.1:{running.http.port}"


@pytest.fixture
async def serve(servers: StartServer) -> StartServer:
    """Start a server with an HTTP port (`HTTP` unless told otherwise)."""
    return lambda given=HTTP, **kwargs: servers(given, **kwargs)


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=10) as opened:
        yield opened
