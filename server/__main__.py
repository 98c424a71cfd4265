"""`python -m server` / `rerank-server`: read flags and environment once, then serve.

This is the only module that reads the environment. Flags win over `RERANK_*` variables, which
win over the defaults in `server.config.Settings`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import sys
from collections.abc import Mapping, Sequence

from server.app import RunningServer, serve
from server.config import DEFAULT_GATEWAY_URL, Settings, Upstream

logger = logging.getLogger("server")


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
    parser.add_argument("--port", type=int, default=int(env("PORT", defaults.port)))
    parser.add_argument(
        "--gateway-url",
        default=environ.get("RERANK_GATEWAY_URL"),
        help=f"gateway base URL (default with a key: {DEFAULT_GATEWAY_URL})",
    )
    parser.add_argument(
        "--mock",
        action="store_true",
        help="serve from the bundled mock gateway even when a key is set",
    )
    parser.add_argument("--default-model", default=env("DEFAULT_MODEL", defaults.default_model))
    parser.add_argument("--log-level", default=env("LOG_LEVEL", defaults.log_level))
    args = parser.parse_args(argv)

    api_key = environ.get("AI_GATEWAY_API_KEY") or None
    auth_method = "api-key"
    if api_key is None and environ.get("VERCEL_OIDC_TOKEN"):
        api_key, auth_method = environ["VERCEL_OIDC_TOKEN"], "oidc"
    if args.mock or (api_key is None and args.gateway_url is None):
        upstream = Upstream.EMBEDDED_MOCK
    elif api_key is None:
        parser.error(
            "--gateway-url needs a credential: set AI_GATEWAY_API_KEY (any non-empty value "
            "for a mock gateway process)"
        )
    else:
        upstream = Upstream.GATEWAY

    def number(name: str, default: float) -> float:
        raw = env(name, default)
        try:
            return float(raw)
        except ValueError:
            parser.error(f"RERANK_{name} must be a number, got {raw!r}")

    return Settings(
        host=args.host,
        port=args.port,
        upstream=upstream,
        gateway_url=(args.gateway_url or DEFAULT_GATEWAY_URL).rstrip("/"),
        api_key=api_key,
        auth_method=auth_method,
        default_model=args.default_model,
        upstream_timeout=number("UPSTREAM_TIMEOUT", defaults.upstream_timeout),
        max_connections=int(number("MAX_CONNECTIONS", defaults.max_connections)),
        max_documents=int(number("MAX_DOCUMENTS", defaults.max_documents)),
        max_document_bytes=int(number("MAX_DOCUMENT_BYTES", defaults.max_document_bytes)),
        max_query_bytes=int(number("MAX_QUERY_BYTES", defaults.max_query_bytes)),
        max_message_bytes=int(number("MAX_MESSAGE_BYTES", defaults.max_message_bytes)),
        grace_period=number("GRACE_PERIOD", defaults.grace_period),
        log_level=args.log_level.upper(),
    )


def main(argv: Sequence[str] | None = None) -> None:
    settings = settings_from(argv, os.environ)
    logging.basicConfig(
        level=settings.log_level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )

    def ready(running: RunningServer) -> None:
        if settings.upstream is Upstream.EMBEDDED_MOCK:
            logger.warning(
                "no AI_GATEWAY_API_KEY and no gateway URL: answering from the bundled "
                "deterministic mock gateway (scores are lexical, not a real model)"
            )
        else:
            logger.info("forwarding to the gateway at %s", settings.gateway_url)
        # One line on stdout, so scripts and other test suites can wait for it.
        print(f"rerank server listening on {settings.host}:{running.port}", flush=True)

    # SIGINT before the handlers are installed (during start-up) must not print a traceback.
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(settings, ready))


if __name__ == "__main__":
    main()
