"""Settings from flags and environment: every bad value is a usage error naming it, and the
one model (`Settings`) refuses every value outside its stated range, however it was built."""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import pytest

from rerank.server.__main__ import settings_from
from rerank.server._config import (
    CacheBackend,
    GatewayProtocol,
    SettingError,
    Settings,
    Upstream,
    fields,
    names,
    range_of,
)
from rerank.server._redis_client import RedisUrl


def test_defaults_serve_the_embedded_mock() -> None:
    settings = settings_from([], {})
    assert settings.upstream is Upstream.EMBEDDED_MOCK
    assert settings.port == Settings().port
    assert settings.workers >= 1


def test_flags_win_over_the_environment() -> None:
    settings = settings_from(["--port", "7000"], {"RERANK_PORT": "6000", "RERANK_WORKERS": "3"})
    assert (settings.port, settings.workers) == (7000, 3)


def test_a_key_selects_the_gateway_and_is_never_in_the_repr() -> None:
    settings = settings_from([], {"AI_GATEWAY_API_KEY": "sk-secret"})
    assert settings.upstream is Upstream.GATEWAY
    assert settings.gateway_url == "https://ai-gateway.vercel.sh/v4/ai"
    assert settings.protocol is GatewayProtocol.V4
    assert "sk-secret" not in repr(settings)
    oidc = settings_from([], {"VERCEL_OIDC_TOKEN": "oidc-token"})
    assert (oidc.api_key, oidc.auth_method) == ("oidc-token", "oidc")


def test_drain_delay_and_port_overlap() -> None:
    defaults = settings_from([], {})
    assert (defaults.drain_delay, defaults.allow_port_overlap) == (5.0, False)
    assert settings_from([], {"RERANK_DRAIN_DELAY": "0"}).drain_delay == 0.0
    assert settings_from(["--allow-port-overlap"], {}).allow_port_overlap
    assert settings_from([], {"RERANK_ALLOW_PORT_OVERLAP": "1"}).allow_port_overlap


KEY = {"AI_GATEWAY_API_KEY": "k"}


@pytest.mark.parametrize(
    ("url", "protocol"),
    [
        ("https://ai-gateway.vercel.sh/v3/ai", GatewayProtocol.V3),
        ("http://127.0.0.1:8080/v3/ai/", GatewayProtocol.V3),
        ("https://ai-gateway.vercel.sh/v4/ai", GatewayProtocol.V4),
        ("https://proxy.internal/gateway", GatewayProtocol.V4),
        ("https://proxy.internal/v3/ai-proxy", GatewayProtocol.V4),
        ("https://v3/ai.example", GatewayProtocol.V4),  # the host is not the path
    ],
)
def test_the_base_urls_path_chooses_the_protocol(url: str, protocol: GatewayProtocol) -> None:
    settings = settings_from(["--gateway-url", url], KEY)
    assert settings.protocol is protocol
    assert settings.gateway_url == url.rstrip("/")


def test_settings_built_in_code_speak_what_their_url_names() -> None:
    assert Settings().protocol is GatewayProtocol.V4
    assert Settings(gateway_url="http://127.0.0.1:1/v3/ai").protocol is GatewayProtocol.V3
    told = Settings(gateway_url="http://127.0.0.1:1/v3/ai", gateway_protocol=GatewayProtocol.V4)
    assert told.protocol is GatewayProtocol.V4


def test_the_embedded_mock_speaks_v4_unless_told() -> None:
    assert settings_from([], {}).protocol is GatewayProtocol.V4
    told = settings_from([], {"RERANK_GATEWAY_PROTOCOL": "v3"})
    assert (told.upstream, told.protocol) == (Upstream.EMBEDDED_MOCK, GatewayProtocol.V3)


@pytest.mark.parametrize(
    ("argv", "environ", "protocol"),
    [
        (["--gateway-protocol", "v3"], {"RERANK_GATEWAY_URL": "https://proxy/x"}, "v3"),
        ([], {"RERANK_GATEWAY_URL": "https://proxy/x", "RERANK_GATEWAY_PROTOCOL": "v3"}, "v3"),
        ([], {"RERANK_GATEWAY_URL": "https://p/v3/ai", "RERANK_GATEWAY_PROTOCOL": "V4"}, "v4"),
        (["--gateway-protocol", "v4"], {"RERANK_GATEWAY_PROTOCOL": "v3"}, "v4"),
    ],
)
def test_the_protocol_setting_overrides_the_url(
    argv: list[str], environ: dict[str, str], protocol: str
) -> None:
    assert settings_from(argv, {**KEY, **environ}).protocol is GatewayProtocol(protocol)


@pytest.mark.parametrize(
    ("argv", "environ"),
    [(["--gateway-protocol", "v5"], {}), ([], {"RERANK_GATEWAY_PROTOCOL": "3"})],
)
def test_a_bad_protocol_is_one_line_naming_it(
    argv: list[str], environ: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        settings_from(argv, environ)
    assert exited.value.code == 2
    err = capsys.readouterr().err
    (error_line,) = [line for line in err.splitlines() if "error:" in line]
    assert "RERANK_GATEWAY_PROTOCOL" in error_line
    assert "--gateway-protocol" in error_line
    assert "one of v3, v4" in error_line
    assert "Traceback" not in err


def test_the_metrics_port_is_unset_unless_given() -> None:
    assert settings_from([], {}).metrics_port is None
    assert settings_from([], {"RERANK_METRICS_PORT": " "}).metrics_port is None
    assert settings_from([], {"RERANK_METRICS_PORT": "9464"}).metrics_port == 9464
    given = settings_from(["--metrics-port", "0"], {"RERANK_METRICS_PORT": "9464"})
    assert given.metrics_port == 0


def test_the_team_setting() -> None:
    assert settings_from([], KEY).gateway_team is None
    assert settings_from([], {**KEY, "RERANK_GATEWAY_TEAM": "  "}).gateway_team is None
    team = settings_from([], {**KEY, "RERANK_GATEWAY_TEAM": "team_abc123"})
    assert team.gateway_team == "team_abc123"
    assert "team_abc123" in repr(team)  # not a secret: it names a team, it opens nothing


def test_window_sizes_and_tokens() -> None:
    settings = settings_from(
        [],
        {
            "RERANK_WINDOW_SIZES": "voyage/rerank-2.5-lite=500, jina=64",
            "RERANK_AUTH_TOKENS": "a, b,,",
        },
    )
    assert settings.window_sizes["voyage/rerank-2.5-lite"] == 500
    assert settings.window_sizes["jina"] == 64
    assert settings.window_sizes["cohere"] == 1000
    assert settings.auth_tokens == frozenset({"a", "b"})


@pytest.mark.parametrize(
    ("argv", "environ", "named"),
    [
        ([], {"RERANK_PORT": "abc"}, "--port"),
        ([], {"RERANK_PORT": "65536"}, "--port / RERANK_PORT must be an integer in [0, 65535]"),
        ([], {"RERANK_WORKERS": "0"}, "--workers"),
        (
            [],
            {"RERANK_METRICS_PORT": "65536"},
            "--metrics-port / RERANK_METRICS_PORT must be an integer in [0, 65535], or unset",
        ),
        (["--metrics-port", "ninety"], {}, "--metrics-port"),
        ([], {"RERANK_MAX_RETRIES": "2.5"}, "RERANK_MAX_RETRIES must be an integer"),
        ([], {"RERANK_AUTH_HEALTH": "maybe"}, "RERANK_AUTH_HEALTH must be on"),
        ([], {"RERANK_DEFAULT_MODEL": "rerank-v3.5"}, "RERANK_DEFAULT_MODEL must be a model slug"),
        ([], {"RERANK_WINDOW_SIZES": "cohere=0"}, "RERANK_WINDOW_SIZES"),
        (["--gateway-url", "ai-gateway"], {"AI_GATEWAY_API_KEY": "k"}, "--gateway-url"),
        ([], {"RERANK_AUTH_TOKENS": "one, two words"}, "RERANK_AUTH_TOKENS"),
        (["--no-such-flag"], {}, "--no-such-flag"),
        ([], {"RERANK_GRACE_PERIOD": "soon"}, "RERANK_GRACE_PERIOD"),
        ([], {"RERANK_MAX_DOCUMENTS": "-3"}, "RERANK_MAX_DOCUMENTS"),
        ([], {"RERANK_CACHE_TTL": "nan"}, "RERANK_CACHE_TTL"),
        ([], {"RERANK_WINDOW_SIZES": "cohere"}, "RERANK_WINDOW_SIZES"),
        ([], {"RERANK_BATCH_PARALLELISM": "0"}, "RERANK_BATCH_PARALLELISM"),
        ([], {"RERANK_BATCH_PARALLELISM": "65"}, "RERANK_BATCH_PARALLELISM"),
        ([], {"RERANK_BATCH_PARALLELISM": "2.5"}, "RERANK_BATCH_PARALLELISM"),
        ([], {"RERANK_BATCH_MAX_REQUESTS": "1001"}, "RERANK_BATCH_MAX_REQUESTS"),
        (["--gateway-url", "http://127.0.0.1:9"], {}, "AI_GATEWAY_API_KEY"),
        (["--tls-cert", "c.pem"], {}, "--tls-key"),
        (["--tls-client-ca", "ca.pem"], {}, "--tls-cert"),
        ([], {"RERANK_AUTH_TOKENS_FILE": "/nonexistent/tokens"}, "RERANK_AUTH_TOKENS_FILE"),
        ([], {"RERANK_DRAIN_DELAY": "601"}, "RERANK_DRAIN_DELAY"),
        ([], {"RERANK_DRAIN_DELAY": "-1"}, "RERANK_DRAIN_DELAY"),
    ],
)
def test_bad_values_are_usage_errors(
    argv: list[str], environ: dict[str, str], named: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        settings_from(argv, environ)
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert named in err
    assert err.count("\n") == 1, err  # one line


# Each of these would otherwise start a server that then misbehaves (the same, as a real
# process, no traceback: tests/e2e/test_settings_at_start.py).
@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        # hung every large call (a semaphore of 0 slots)
        ("RERANK_WINDOW_PARALLELISM", "0", "an integer in [1, 64]"),
        # made every large call INTERNAL (range() with a step of 0)
        ("RERANK_WINDOW_SIZE", "0", "an integer in [1, 10000]"),
        # opened the circuit with no failure at all, or never
        ("RERANK_BREAKER_FAILURE_RATE", "0", "a number in (0, 1]"),
        ("RERANK_BREAKER_FAILURE_RATE", "1.5", "a number in (0, 1]"),
        # printed a traceback from logging.basicConfig
        ("RERANK_LOG_LEVEL", "LOUD", "one of DEBUG, INFO, WARNING, ERROR, CRITICAL"),
    ],
)
def test_out_of_range_stops_the_server_with_one_line(
    variable: str,
    value: str,
    message: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as exited:
        settings_from([], {variable: value})
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("rerank-server: error: ")
    assert err.endswith(f"{variable} must be {message}, got {value!r}\n")
    assert err.count("\n") == 1, err


def test_the_log_level_is_read_regardless_of_case() -> None:
    assert settings_from(["--log-level", "debug"], {}).log_level == "DEBUG"


def ranges() -> list[tuple[str, dict[str, float], bool]]:
    """Each number field's ends, as declared (`ge`, `gt`, `le`), and whether it is an integer."""
    found = []
    for name, field in fields().items():
        ends = {
            k: getattr(m, k) for m in field.metadata for k in ("ge", "gt", "le") if hasattr(m, k)
        }
        if ends and field.annotation in (int, float):
            found.append((name, ends, field.annotation is int))
    return found


@pytest.mark.parametrize(("name", "ends", "integer"), ranges())
def test_the_model_refuses_every_number_outside_its_range(
    name: str, ends: dict[str, float], integer: bool
) -> None:
    """However `Settings` is made (by `__main__`, the testing kit, a test), each number field
    takes its range's ends (unless excluded) and nothing past them."""
    step = 1 if integer else 0.001
    low = ends.get("gt", ends.get("ge"))
    assert low is not None
    inside: list[Any] = [low + step if "gt" in ends else low]
    outside: list[Any] = [low if "gt" in ends else low - step, math.nan, None]
    if "le" in ends:
        inside.append(ends["le"])
        outside.append(ends["le"] + step)
    if integer:
        outside.append(float(inside[0]) + 0.5)
    for value in inside:
        assert getattr(Settings(**{name: value}), name) == value
    said = f"{names(name)} must be {range_of(fields()[name])}"
    for value in outside:
        with pytest.raises(SettingError, match=re.escape(said)):
            Settings(**{name: value})


def test_the_model_checks_the_settings_that_go_together() -> None:
    with pytest.raises(SettingError, match="--tls-key"):
        Settings(tls_cert_file="c.pem")
    with pytest.raises(SettingError, match="--tls-cert"):
        Settings(tls_client_ca_file="ca.pem")
    with pytest.raises(SettingError, match="AI_GATEWAY_API_KEY"):
        Settings(upstream=Upstream.GATEWAY)
    with pytest.raises(SettingError, match="one of DEBUG"):
        Settings(log_level="info")  # the model holds the canonical name; `__main__` folds case


def test_secrets_are_never_echoed_in_an_error() -> None:
    with pytest.raises(SettingError) as caught:
        Settings(api_key="sk-secret with a space")
    assert "sk-secret" not in str(caught.value)
    assert "AI_GATEWAY_API_KEY" in str(caught.value)
    with pytest.raises(SettingError) as caught:
        Settings(auth_tokens=frozenset({"tok secret"}))
    assert "secret" not in str(caught.value)


def test_the_batch_settings_and_their_ranges(capsys: pytest.CaptureFixture[str]) -> None:
    defaults = settings_from([], {})
    assert (defaults.batch_parallelism, defaults.batch_max_requests) == (8, 100)
    edges = settings_from([], {"RERANK_BATCH_PARALLELISM": "64", "RERANK_BATCH_MAX_REQUESTS": "1"})
    assert (edges.batch_parallelism, edges.batch_max_requests) == (64, 1)
    with pytest.raises(SystemExit):
        settings_from([], {"RERANK_BATCH_MAX_REQUESTS": "0"})
    (line,) = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    assert line.endswith("RERANK_BATCH_MAX_REQUESTS must be an integer in [1, 1000], got '0'")


def test_redis_settings() -> None:
    plain = settings_from([], {})
    assert (plain.redis_url, plain.cache_backend, plain.limits_fail_closed) == (
        None,
        CacheBackend.MEMORY,
        False,
    )
    settings = settings_from(
        [],
        {
            "RERANK_REDIS_URL": "rediss://:pw-secret@redis.internal:6380/2",
            "RERANK_REDIS_TIMEOUT": "0.05",
            "RERANK_LIMITS_FAIL_CLOSED": "1",
            "RERANK_CACHE_BACKEND": "Redis",
            "RERANK_CACHE_REDIS_URL": "redis://cache.internal",
        },
    )
    assert settings.redis_url == RedisUrl("redis.internal", 6380, 2, tls=True, password="pw-secret")
    assert settings.cache_redis_url == RedisUrl("cache.internal")
    assert settings.redis_timeout == 0.05
    assert settings.limits_fail_closed
    assert settings.cache_backend is CacheBackend.REDIS
    assert "pw-secret" not in repr(settings)
    # The cache may share the limits' Redis.
    shared = {"RERANK_REDIS_URL": "redis://r", "RERANK_CACHE_BACKEND": "redis"}
    assert settings_from([], shared).cache_redis_url is None


@pytest.mark.parametrize(
    ("environ", "says"),
    [
        ({"RERANK_REDIS_URL": "http://r"}, "RERANK_REDIS_URL must be a redis://"),
        ({"RERANK_REDIS_URL": "redis://:pw-secret@r:x"}, "RERANK_REDIS_URL must be a redis://"),
        ({"RERANK_CACHE_REDIS_URL": "redis://c/x"}, "RERANK_CACHE_REDIS_URL must be a redis://"),
        ({"RERANK_CACHE_BACKEND": "disk"}, "RERANK_CACHE_BACKEND must be one of memory, redis"),
        ({"RERANK_CACHE_BACKEND": "redis"}, "needs RERANK_CACHE_REDIS_URL or RERANK_REDIS_URL"),
        ({"RERANK_CACHE_REDIS_URL": "redis://c"}, "RERANK_CACHE_BACKEND is not redis"),
        ({"RERANK_REDIS_TIMEOUT": "0"}, "RERANK_REDIS_TIMEOUT must be a number in (0, 60]"),
        ({"RERANK_LIMITS_FAIL_CLOSED": "sometimes"}, "RERANK_LIMITS_FAIL_CLOSED must be on (1,"),
    ],
)
def test_a_bad_redis_setting_is_one_line_naming_it(
    environ: dict[str, str], says: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        settings_from([], environ)
    assert exited.value.code == 2
    err = capsys.readouterr().err
    (error_line,) = [line for line in err.splitlines() if "error:" in line]
    assert says in error_line
    assert "pw-secret" not in err


def test_a_token_file_is_the_credential_unless_a_key_is_set(tmp_path: Path) -> None:
    token = tmp_path / "oidc-token"
    token.write_text("oidc-from-a-file\n")
    environ = {"RERANK_OIDC_TOKEN_FILE": str(token), "VERCEL_OIDC_TOKEN": "one-shot"}
    settings = settings_from([], environ)
    assert settings.upstream is Upstream.GATEWAY
    assert (settings.oidc_token_file, settings.auth_method) == (str(token), "oidc")
    assert settings.api_key is None  # the file, re-read as it changes, beats the one-shot
    keyed = settings_from([], {**environ, "AI_GATEWAY_API_KEY": "sk-secret"})
    assert (keyed.api_key, keyed.auth_method) == ("sk-secret", "api-key")
    assert keyed.oidc_token_file is None


@pytest.mark.parametrize("content", [None, " \n"], ids=["missing", "empty"])
def test_a_token_file_without_a_token_stops_the_start(
    tmp_path: Path, content: str | None, capsys: pytest.CaptureFixture[str]
) -> None:
    token = tmp_path / "oidc-token"
    if content is not None:
        token.write_text(content)
    with pytest.raises(SystemExit) as exited:
        settings_from([], {"RERANK_OIDC_TOKEN_FILE": str(token)})
    assert exited.value.code == 2
    (line,) = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    assert "RERANK_OIDC_TOKEN_FILE" in line
