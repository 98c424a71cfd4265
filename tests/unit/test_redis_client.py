"""The Redis client against a real redis-server: URLs, AUTH and SELECT, TLS, pipelining, the
per-call deadline, and one log line per outage."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme

from rerank.server._redis_client import RedisClient, RedisError, RedisUrl, Script
from tests.conftest import needs_redis_server
from tools.redis_server import RedisServer, Tls


def client(url: str, *, timeout: float = 5.0, retry_interval: float = 0.0) -> RedisClient:
    return RedisClient(
        RedisUrl.parse(url),
        timeout=timeout,
        purpose="the tests",
        when_down="the test goes on without it",
        retry_interval=retry_interval,
    )


def test_urls_parse_into_host_port_database_credentials_and_tls() -> None:
    assert RedisUrl.parse("redis://cache.internal") == RedisUrl("cache.internal", 6379, 0)
    url = RedisUrl.parse("rediss://app:s%3Acret@10.0.0.7:6380/3?ssl_ca_certs=/etc/ca.pem")
    assert url == RedisUrl(
        "10.0.0.7", 6380, 3, tls=True, username="app", password="s:cret", ca_file="/etc/ca.pem"
    )
    assert RedisUrl.parse("redis://:only-a-password@h").password == "only-a-password"
    # Shown in logs without its credentials.
    assert str(url) == "rediss://10.0.0.7:6380/3"
    assert "cret" not in repr(url)
    assert str(RedisUrl.parse("redis://[::1]:7000")) == "redis://[::1]:7000/0"


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("http://h", "must start with redis:// or rediss://"),
        ("redis://", "names no host"),
        ("redis://h:99999", "port"),
        ("redis://h/cache", "only a database number"),
        ("redis://h/0?timeout=1", "unknown parameter 'timeout'"),
        ("redis://h/0?ssl_ca_certs=/ca.pem", "only a rediss://"),
    ],
)
def test_a_bad_url_is_named_without_echoing_a_password(url: str, says: str) -> None:
    with pytest.raises(ValueError, match=says) as caught:
        RedisUrl.parse(url.replace("://", "://user:hunter2@", 1) if "//h" in url else url)
    assert "hunter2" not in str(caught.value)


async def test_commands_and_scripts_answer_over_one_connection(redis: RedisServer) -> None:
    redis_client = client(redis.url)
    try:
        assert await redis_client.call("SET", "k", b"\x00binary\xff") == b"OK"
        assert await redis_client.call("GET", "k") == b"\x00binary\xff"
        script = Script("return {KEYS[1], tonumber(ARGV[1]) + 1}")
        assert await redis_client.run(script, ["key"], [41]) == [b"key", 42]
        # Concurrent calls share the one connection, each answered with its own reply.
        replies = await asyncio.gather(*(redis_client.call("INCR", "n") for _ in range(200)))
        assert sorted(replies) == list(range(1, 201))
        clients = redis.command("CLIENT", "LIST").decode().strip().splitlines()
        assert len(clients) == 2  # ours, and the one that asked
        with pytest.raises(RedisError, match="WRONGTYPE"):
            await redis_client.call("HGET", "k", "field")
    finally:
        await redis_client.aclose()


@pytest.fixture
def guarded_redis(tmp_path: Path) -> Iterator[RedisServer]:
    needs_redis_server()
    with RedisServer(tmp_path, "--requirepass", "s3cret", "--databases", "4") as server:
        yield server


async def test_a_password_and_a_database_come_from_the_url(guarded_redis: RedisServer) -> None:
    url = f"redis://:s3cret@127.0.0.1:{guarded_redis.port}/2"
    redis_client = client(url)
    try:
        assert await redis_client.call("SET", "where", "db2") == b"OK"
    finally:
        await redis_client.aclose()
    wrong = client(f"redis://:wrong@127.0.0.1:{guarded_redis.port}/0")
    try:
        with pytest.raises(RedisError, match="refused the connection") as caught:
            await wrong.call("PING")
        assert "wrong" not in str(caught.value).replace("WRONGPASS", "")
    finally:
        await wrong.aclose()


async def test_rediss_speaks_tls_and_checks_the_certificate(tmp_path: Path) -> None:
    needs_redis_server()
    authority = trustme.CA()
    certificate = authority.issue_cert("127.0.0.1")
    files = Tls(tmp_path / "cert.pem", tmp_path / "key.pem", tmp_path / "ca.pem")
    certificate.private_key_pem.write_to_path(str(files.key_file))
    certificate.cert_chain_pems[0].write_to_path(str(files.cert_file))
    authority.cert_pem.write_to_path(str(files.ca_file))
    with RedisServer(tmp_path, tls=files) as server:
        assert server.url.startswith("rediss://")
        redis_client = client(server.url)
        try:
            assert await redis_client.call("PING") == b"PONG"
        finally:
            await redis_client.aclose()
        # Another CA's word is not enough.
        stranger = tmp_path / "other-ca.pem"
        trustme.CA().cert_pem.write_to_path(str(stranger))
        untrusting = client(server.url.replace(str(files.ca_file), str(stranger)))
        try:
            with pytest.raises(RedisError, match="certificate verify failed"):
                await untrusting.call("PING")
        finally:
            await untrusting.aclose()


async def test_an_outage_is_one_line_and_calls_fail_fast_until_the_retry(
    own_redis: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="rerank.server._redis_client")
    states: list[bool] = []
    redis_client = RedisClient(
        RedisUrl.parse(own_redis.url),
        timeout=5.0,
        purpose="the tests",
        when_down="the test goes on without it",
        retry_interval=3600,
        on_state=states.append,
    )
    try:
        assert await redis_client.call("PING") == b"PONG"
        own_redis.stop()
        for _ in range(50):
            with pytest.raises(RedisError):
                await redis_client.call("PING")
        assert not redis_client.up
        assert states == [False]
        lines = [r.getMessage() for r in caplog.records]
        assert len(lines) == 1, lines
        assert lines[0].startswith(f"Redis for the tests at {own_redis.url} cannot be used: ")
        assert lines[0].endswith("; the test goes on without it")
    finally:
        await redis_client.aclose()


async def test_a_redis_back_is_used_again_and_said_once(
    own_redis: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="rerank.server._redis_client")
    states: list[bool] = []
    redis_client = RedisClient(
        RedisUrl.parse(own_redis.url),
        timeout=5.0,
        purpose="the tests",
        when_down="the test goes on without it",
        retry_interval=0,  # every call may try
        on_state=states.append,
    )
    try:
        own_redis.stop()
        with pytest.raises(RedisError):
            await redis_client.call("PING")
        own_redis.restart()
        assert await redis_client.call("PING") == b"PONG"
        assert await redis_client.call("PING") == b"PONG"
        assert redis_client.up
        assert states == [False, True]
        back = [r.getMessage() for r in caplog.records if "is back after" in r.getMessage()]
        assert len(back) == 1
    finally:
        await redis_client.aclose()


async def test_a_hung_redis_fails_each_call_at_its_deadline(own_redis: RedisServer) -> None:
    redis_client = client(own_redis.url, timeout=0.2)
    try:
        assert await redis_client.call("PING") == b"PONG"
        own_redis.pause()
        try:
            with pytest.raises(RedisError, match=r"no answer within 0\.2 s"):
                await redis_client.call("PING")
        finally:
            own_redis.resume()
        # The connection that timed out was dropped; a new one answers.
        assert await redis_client.call("PING") == b"PONG"
    finally:
        await redis_client.aclose()
