"""`python -m rerank.server` / `rerank-server`: read flags and environment once, then serve.

This is the only module that reads the environment. Flags win over `RERANK_*` variables, which
win over the defaults in `rerank.server.config.Settings`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import math
import os
import sys
from collections.abc import Mapping, Sequence

from rerank.server.app import StartupError, serve
from rerank.server.config import DEFAULT_GATEWAY_URL, GatewayProtocol, Settings, Upstream
from rerank.server.credentials import TokenFileError, read_token
from rerank.server.workers import run_workers

logger = logging.getLogger("rerank.server")


def settings_from(argv: Sequence[str] | None, environ: Mapping[str, str]) -> Settings:
    """Build `Settings` from command-line flags and an environment mapping."""
    defaults = Settings()

    def env(name: str, default: object) -> str:
        return environ.get(f"RERANK_{name}", str(default))

    parser = argparse.ArgumentParser(
        prog="rerank-server",
        description="gRPC reranking service in front of the AI Gateway. With no "
        "AI_GATEWAY_API_KEY and no gateway URL it serves from the bundled mock gateway.",
    )
    parser.add_argument("--host", default=env("HOST", defaults.host))
    # String defaults go through `type` too, so a bad RERANK_PORT is a usage error, not a crash.
    parser.add_argument("--port", type=int, default=env("PORT", defaults.port))
    parser.add_argument(
        "--gateway-url",
        default=environ.get("RERANK_GATEWAY_URL"),
        help=f"gateway base URL (default with a key: {DEFAULT_GATEWAY_URL})",
    )
    parser.add_argument(
        "--gateway-protocol",
        metavar="v3|v4",
        default=environ.get("RERANK_GATEWAY_PROTOCOL") or None,
        help="protocol version spoken to the gateway (default: v3 for a base URL ending in "
        "/v3/ai, else v4)",
    )
    parser.add_argument(
        "--mock",
        action="store_true",
        help="serve from the bundled mock gateway even when a key is set",
    )
    parser.add_argument("--default-model", default=env("DEFAULT_MODEL", defaults.default_model))
    parser.add_argument("--log-level", default=env("LOG_LEVEL", defaults.log_level))
    parser.add_argument("--tls-cert", default=environ.get("RERANK_TLS_CERT"), help="PEM chain")
    parser.add_argument("--tls-key", default=environ.get("RERANK_TLS_KEY"), help="PEM key")
    parser.add_argument(
        "--tls-client-ca",
        default=environ.get("RERANK_TLS_CLIENT_CA"),
        help="PEM CA bundle: require client certificates it signed (mutual TLS)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=environ.get("RERANK_WORKERS"),
        help="server processes sharing the port (SO_REUSEPORT); default one per core",
    )
    parser.add_argument(
        "--auth-health",
        action="store_true",
        default=environ.get("RERANK_AUTH_HEALTH", "") in ("1", "true", "yes"),
        help="require a caller token for health checks too",
    )
    args = parser.parse_args(argv)
    if args.workers is not None and args.workers < 1:
        parser.error("--workers must be at least 1")
    if bool(args.tls_cert) != bool(args.tls_key):
        parser.error("--tls-cert and --tls-key go together")
    if args.tls_client_ca and not args.tls_cert:
        parser.error("--tls-client-ca needs --tls-cert and --tls-key")

    tokens = {t.strip() for t in environ.get("RERANK_AUTH_TOKENS", "").split(",")}
    if tokens_file := environ.get("RERANK_AUTH_TOKENS_FILE"):
        try:
            with open(tokens_file, encoding="utf-8") as lines:
                tokens |= {line.strip() for line in lines}
        except OSError as exc:
            parser.error(f"cannot read RERANK_AUTH_TOKENS_FILE: {exc.strerror}")
    tokens.discard("")

    # The gateway credential, as the AI SDK picks it: a key first, else an OIDC token. A token
    # file is re-read while the server runs; VERCEL_OIDC_TOKEN is only what it was at start.
    api_key = environ.get("AI_GATEWAY_API_KEY") or None
    auth_method = "api-key"
    oidc_token_file = None
    if api_key is None and (token_file := environ.get("RERANK_OIDC_TOKEN_FILE")):
        try:
            read_token(token_file)
        except TokenFileError as exc:
            parser.error(f"RERANK_OIDC_TOKEN_FILE: {exc}")
        oidc_token_file, auth_method = token_file, "oidc"
    elif api_key is None and environ.get("VERCEL_OIDC_TOKEN"):
        api_key, auth_method = environ["VERCEL_OIDC_TOKEN"], "oidc"
    has_credential = api_key is not None or oidc_token_file is not None
    if args.mock or (not has_credential and args.gateway_url is None):
        upstream = Upstream.EMBEDDED_MOCK
    elif not has_credential:
        parser.error(
            "--gateway-url needs a credential: set AI_GATEWAY_API_KEY (any non-empty value "
            "for a mock gateway process) or RERANK_OIDC_TOKEN_FILE"
        )
    else:
        upstream = Upstream.GATEWAY

    protocol = None  # as the base URL names it
    if args.gateway_protocol is not None:
        try:
            protocol = GatewayProtocol(args.gateway_protocol.strip().lower())
        except ValueError:
            parser.error(
                "--gateway-protocol / RERANK_GATEWAY_PROTOCOL must be "
                f"{' or '.join(p.value for p in GatewayProtocol)}, got {args.gateway_protocol!r}"
            )

    window_sizes = dict(defaults.window_sizes)
    for entry in filter(
        None, (e.strip() for e in environ.get("RERANK_WINDOW_SIZES", "").split(","))
    ):
        name, _, size = entry.partition("=")
        if not size.strip().isdigit() or int(size) < 1:
            parser.error(f"RERANK_WINDOW_SIZES: {entry!r} is not 'model-or-provider=size'")
        window_sizes[name.strip()] = int(size)

    def number(name: str, default: float) -> float:
        raw = env(name, default)
        try:
            value = float(raw)
        except ValueError:
            parser.error(f"RERANK_{name} must be a number, got {raw!r}")
        if not math.isfinite(value) or value < 0:
            parser.error(f"RERANK_{name} must be a finite number ≥ 0, got {raw!r}")
        return value

    def within(name: str, default: int, low: int, high: int) -> int:
        value = number(name, default)
        if not value.is_integer() or not low <= value <= high:
            parser.error(f"RERANK_{name} must be an integer from {low} to {high}, got {value:g}")
        return int(value)

    return Settings(
        host=args.host,
        port=args.port,
        upstream=upstream,
        gateway_url=(args.gateway_url or DEFAULT_GATEWAY_URL).rstrip("/"),
        gateway_protocol=protocol,
        gateway_team=environ.get("RERANK_GATEWAY_TEAM", "").strip() or None,
        api_key=api_key,
        auth_method=auth_method,
        oidc_token_file=oidc_token_file,
        default_model=args.default_model,
        upstream_timeout=number("UPSTREAM_TIMEOUT", defaults.upstream_timeout),
        max_connections=int(number("MAX_CONNECTIONS", defaults.max_connections)),
        max_documents=int(number("MAX_DOCUMENTS", defaults.max_documents)),
        max_document_bytes=int(number("MAX_DOCUMENT_BYTES", defaults.max_document_bytes)),
        max_query_bytes=int(number("MAX_QUERY_BYTES", defaults.max_query_bytes)),
        max_message_bytes=int(number("MAX_MESSAGE_BYTES", defaults.max_message_bytes)),
        max_concurrent_calls=int(number("MAX_CONCURRENT_CALLS", defaults.max_concurrent_calls)),
        max_inflight_bytes=int(number("MAX_INFLIGHT_BYTES", defaults.max_inflight_bytes)),
        max_retries=int(number("MAX_RETRIES", defaults.max_retries)),
        retry_initial_backoff=number("RETRY_INITIAL_BACKOFF", defaults.retry_initial_backoff),
        retry_max_backoff=number("RETRY_MAX_BACKOFF", defaults.retry_max_backoff),
        retry_budget_ratio=number("RETRY_BUDGET_RATIO", defaults.retry_budget_ratio),
        breaker_failure_rate=number("BREAKER_FAILURE_RATE", defaults.breaker_failure_rate),
        breaker_window=int(number("BREAKER_WINDOW", defaults.breaker_window)),
        breaker_cooldown=number("BREAKER_COOLDOWN", defaults.breaker_cooldown),
        auth_tokens=frozenset(tokens),
        auth_health=args.auth_health,
        tls_cert_file=args.tls_cert,
        tls_key_file=args.tls_key,
        tls_client_ca_file=args.tls_client_ca,
        window_sizes=window_sizes,
        default_window_size=int(number("WINDOW_SIZE", defaults.default_window_size)),
        window_parallelism=int(number("WINDOW_PARALLELISM", defaults.window_parallelism)),
        batch_parallelism=within("BATCH_PARALLELISM", defaults.batch_parallelism, 1, 64),
        batch_max_requests=within("BATCH_MAX_REQUESTS", defaults.batch_max_requests, 1, 1000),
        cache_ttl=number("CACHE_TTL", defaults.cache_ttl),
        cache_max_bytes=int(number("CACHE_MAX_BYTES", defaults.cache_max_bytes)),
        grace_period=number("GRACE_PERIOD", defaults.grace_period),
        workers=args.workers or len(os.sched_getaffinity(0)),
        log_level=args.log_level.upper(),
    )


def main(argv: Sequence[str] | None = None) -> int:
    settings = settings_from(argv, os.environ)
    logging.basicConfig(
        level=settings.log_level,
        format="%(asctime)s %(process)d %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # uvicorn (the embedded mock gateway) logs each start and stop at INFO: noise here.
    logging.getLogger("uvicorn.error").setLevel(
        max(logging.WARNING, logging.getLevelName(settings.log_level))
    )

    def ready(port: int) -> None:
        if settings.upstream is Upstream.EMBEDDED_MOCK:
            logger.warning(
                "no AI_GATEWAY_API_KEY and no gateway URL: answering from the bundled "
                "deterministic mock gateway (scores are lexical, not a real model)"
            )
        else:
            logger.info(
                "forwarding to the gateway at %s (protocol %s)",
                settings.gateway_url,
                settings.protocol.value,
            )
        logger.info(
            "caller authentication %s; TLS %s",
            "on" if settings.auth_tokens else "off",
            "mutual" if settings.tls_client_ca_file else "on" if settings.tls_cert_file else "off",
        )
        logger.info("%d worker process(es)", settings.workers)
        # One line on stdout, so scripts and other test suites can wait for it.
        print(f"rerank server listening on {settings.host}:{port}", flush=True)

    try:
        if settings.workers > 1:
            return run_workers(settings, settings.workers, ready)
        # SIGINT before the handlers are installed (during start-up) must not print a traceback.
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(serve(settings, lambda running: ready(running.port)))
    except StartupError as exc:
        logger.error("%s", exc)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
