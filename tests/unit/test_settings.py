"""Settings from flags and environment: every bad value is a usage error naming it."""

from __future__ import annotations

import pytest

from rerank.server.__main__ import settings_from
from rerank.server.config import Settings, Upstream


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
    assert settings.gateway_url == "https://ai-gateway.vercel.sh/v3/ai"
    assert "sk-secret" not in repr(settings)
    oidc = settings_from([], {"VERCEL_OIDC_TOKEN": "oidc-token"})
    assert (oidc.api_key, oidc.auth_method) == ("oidc-token", "oidc")


def test_drain_delay_and_port_overlap() -> None:
    defaults = settings_from([], {})
    assert (defaults.drain_delay, defaults.allow_port_overlap) == (5.0, False)
    assert settings_from([], {"RERANK_DRAIN_DELAY": "0"}).drain_delay == 0.0
    assert settings_from(["--allow-port-overlap"], {}).allow_port_overlap
    assert settings_from([], {"RERANK_ALLOW_PORT_OVERLAP": "1"}).allow_port_overlap


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
        ([], {"RERANK_WORKERS": "0"}, "--workers"),
        ([], {"RERANK_GRACE_PERIOD": "soon"}, "RERANK_GRACE_PERIOD"),
        ([], {"RERANK_MAX_DOCUMENTS": "-3"}, "RERANK_MAX_DOCUMENTS"),
        ([], {"RERANK_CACHE_TTL": "nan"}, "RERANK_CACHE_TTL"),
        ([], {"RERANK_WINDOW_SIZES": "cohere"}, "RERANK_WINDOW_SIZES"),
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
    assert named in capsys.readouterr().err
