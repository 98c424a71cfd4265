"""`python -m rerank.server` / `rerank-server`: read flags and environment once, then serve.

The only module that reads the environment: flags win over variables, which win over the
defaults, as each field of `Settings` declares. With metrics on and workers, it sets
prometheus-client's storage first: the library reads it once, when imported, so the modules that
import it are imported only after (in the functions below).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
import tempfile
from collections.abc import Iterator, Mapping, MutableMapping, Sequence
from importlib.metadata import version
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn
from urllib.parse import urlsplit

import uvloop

from rerank.server._callers import CallersFileError, load_directory
from rerank.server._config import SettingError, Settings, Upstream, choices, fields, names, range_of
from rerank.server._credentials import TokenFileError, read_token
from rerank.server._logs import configure_logging
from rerank.server._tracing import SAMPLERS

if TYPE_CHECKING:
    from rerank.server._prometheus import MetricsDirectory, MetricsEndpoint

logger = logging.getLogger("rerank.server")


class _Parser(argparse.ArgumentParser):
    """argparse, with every usage error one line (the rule for every bad setting)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n")


def command_line() -> _Parser:
    """The flags of the fields that have one, and `--mock`. Not pydantic-settings: it makes
    every field a flag, and reads `os.environ` itself where `settings_from` reads a mapping."""
    parser = _Parser(
        prog="rerank-server",
        description="gRPC reranking service in front of the AI Gateway. With no "
        "AI_GATEWAY_API_KEY and no gateway URL it serves from the bundled mock gateway.",
    )
    for name, field in fields().items():
        if (flag := names(name).flag) is None:
            continue
        about = f"{field.description}: {range_of(field)}"
        if field.annotation is bool:  # a switch: the flag alone turns it on
            parser.add_argument(flag, dest=name, action="store_const", const="1", help=about)
        else:  # None when not given: the variable, then the default, speak
            parser.add_argument(flag, dest=name, help=about)
    parser.add_argument(
        "--mock", action="store_true", help="serve from the bundled mock gateway even with a key"
    )
    return parser


def settings_from(argv: Sequence[str] | None, environ: Mapping[str, str]) -> Settings:
    """Build `Settings` from command-line flags and an environment mapping: each field's flag,
    else its variable (blank is unset), as text the model reads (choices in any case). A bad
    value exits 2 with one line naming it and its range."""
    parser = command_line()
    args = parser.parse_args(argv)
    values: dict[str, Any] = {}
    for name, field in fields().items():
        named = names(name)
        text = getattr(args, name, None)
        if text is None and named.env:
            text = environ.get(named.env, "").strip() or None
        if text is not None:
            folded = {choice.upper(): choice for choice in choices(field)}
            values[name] = folded.get(text.strip().upper(), text.strip())
    values.setdefault("workers", len(os.sched_getaffinity(0)))
    if "gateway_url" in values:
        values["gateway_url"] = values["gateway_url"].rstrip("/")
    values |= secrets_from(environ, parser)
    has_credential = "api_key" in values or "oidc_token_file" in values
    gateway = has_credential or "gateway_url" in values
    values["upstream"] = Upstream.GATEWAY if gateway and not args.mock else Upstream.EMBEDDED_MOCK
    try:
        values["export_traces"] = traces_exported(environ)
        settings = Settings(**values)
    except SettingError as exc:
        parser.error(str(exc))
    check_callers(settings, parser)
    return settings


def check_callers(settings: Settings, parser: argparse.ArgumentParser) -> None:
    """Read the callers file once at start, so that a bad one stops the server with its one
    line (exit 2) rather than in every worker."""
    try:
        directory = load_directory(settings.callers_file, settings.auth_tokens)
    except CallersFileError as exc:
        parser.error(str(exc))
    if directory.names_by_certificate and settings.tls_client_ca_file is None:
        parser.error(
            f"RERANK_CALLERS_FILE {settings.callers_file}: caller "
            f"{directory.certificate_callers[0]!r} is named by 'subject' or 'san', which "
            "needs mutual TLS (--tls-client-ca)"
        )


def secrets_from(environ: Mapping[str, str], parser: argparse.ArgumentParser) -> dict[str, Any]:
    """The gateway credential (a key, or a token file, and how it was found) and the callers'
    tokens: the settings read from several variables, or a file."""
    found: dict[str, Any] = {}
    # The gateway credential, as the AI SDK picks it: a key first, else an OIDC token. A token
    # file is re-read while the server runs; VERCEL_OIDC_TOKEN is only what it was at start.
    if api_key := environ.get("AI_GATEWAY_API_KEY"):
        found["api_key"] = api_key
    elif token_file := environ.get("RERANK_OIDC_TOKEN_FILE", "").strip():
        try:
            read_token(token_file)  # a file without a token stops the start, not the first call
        except TokenFileError as exc:
            parser.error(f"RERANK_OIDC_TOKEN_FILE: {exc}")
        found["oidc_token_file"], found["auth_method"] = token_file, "oidc"
    elif oidc := environ.get("VERCEL_OIDC_TOKEN"):
        found["api_key"], found["auth_method"] = oidc, "oidc"
    tokens = {t.strip() for t in environ.get("RERANK_AUTH_TOKENS", "").split(",")}
    if tokens_file := environ.get("RERANK_AUTH_TOKENS_FILE"):
        try:
            with open(tokens_file, encoding="utf-8") as lines:
                tokens |= {line.strip() for line in lines}
        except OSError as exc:
            parser.error(f"cannot read RERANK_AUTH_TOKENS_FILE: {exc.strerror}")
    found["auth_tokens"] = frozenset(tokens - {""})
    return found


def traces_exported(environ: Mapping[str, str]) -> bool:
    """Whether spans are exported (an OTLP endpoint, an exporter not `none`). The SDK reads
    these variables itself: a `SettingError` here only refuses, at start, what it cannot honour."""

    def read(name: str) -> str:
        return environ.get(name, "").strip()

    exporter = read("OTEL_TRACES_EXPORTER").lower() or "otlp"
    if exporter not in ("otlp", "none"):
        raise SettingError(f"OTEL_TRACES_EXPORTER must be otlp or none, got {exporter!r}")
    protocol = read("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or read("OTEL_EXPORTER_OTLP_PROTOCOL")
    if protocol not in ("", "http/protobuf"):
        raise SettingError(
            f"OTEL_EXPORTER_OTLP_PROTOCOL: only http/protobuf is supported, got {protocol!r}"
        )
    endpoints = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")
    for name in filter(read, endpoints):
        parts = urlsplit(read(name))
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise SettingError(f"{name} must be an http:// or https:// URL, got {read(name)!r}")
    sampler = read("OTEL_TRACES_SAMPLER").lower()
    if sampler and sampler not in SAMPLERS:
        raise SettingError(
            f"OTEL_TRACES_SAMPLER must be one of {', '.join(SAMPLERS)}, got {sampler!r}"
        )
    if SAMPLERS.get(sampler) and (ratio := read("OTEL_TRACES_SAMPLER_ARG")):
        try:
            in_range = 0 <= float(ratio) <= 1
        except ValueError:
            in_range = False
        if not in_range:
            raise SettingError(f"OTEL_TRACES_SAMPLER_ARG must be a number in [0, 1], got {ratio!r}")
    return exporter == "otlp" and any(map(read, endpoints))


def say(line: str) -> None:
    """Print `line` on stdout in one write. `print` writes the text and its newline apart,
    which, unbuffered (PYTHONUNBUFFERED), lets a worker's log line on the same pipe land
    between them and glue itself to the port a script reads."""
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def main(argv: Sequence[str] | None = None) -> int:
    settings = settings_from(argv, os.environ)
    configure_logging(settings.log_level, settings.log_format)
    # uvicorn (the embedded mock gateway) logs each start and stop at INFO: noise here.
    logging.getLogger("uvicorn.error").setLevel(
        max(logging.WARNING, logging.getLevelNamesMapping()[settings.log_level])
    )

    if settings.metrics_port is None:
        return _run(settings, None)
    # One process keeps its metrics in memory; workers share the library's files.
    one = settings.workers == 1
    with contextlib.nullcontext(None) if one else metrics_storage(os.environ) as path:
        from rerank.server._prometheus import serving_metrics  # once the storage is set

        port = settings.metrics_port
        info = {"version": version("rerank-service"), "gateway_protocol": settings.protocol.value}
        try:  # info: the labels of `rerank_build_info`
            with serving_metrics(path, settings.host, port, info) as metrics:
                return _run(settings, metrics)
        except OSError as exc:  # binding the metrics port
            logger.error(
                "cannot serve metrics on %s:%d: %s", settings.host, port, exc.strerror or exc
            )
            return 1


@contextlib.contextmanager
def metrics_storage(environ: MutableMapping[str, str]) -> Iterator[Path]:
    """A fresh private directory (0700; a new name, so no stale file of an earlier run is read),
    made prometheus-client's storage in `environ` for this process and its workers."""
    with tempfile.TemporaryDirectory(prefix="rerank-metrics-", ignore_cleanup_errors=True) as path:
        environ["PROMETHEUS_MULTIPROC_DIR"] = path
        yield Path(path)


def _run(settings: Settings, metrics: tuple[MetricsDirectory, MetricsEndpoint] | None) -> int:
    # Imported here, once the storage is set: they import prometheus-client.
    from rerank.server._app import serve
    from rerank.server._listening import StartupError
    from rerank.server._workers import run_workers

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
            "on" if settings.auth_tokens or settings.callers_file else "off",
            "mutual" if settings.tls_client_ca_file else "on" if settings.tls_cert_file else "off",
        )
        logger.info("%d worker process(es)", settings.workers)
        # Lines on stdout, for scripts to wait for; where metrics are comes first, so it is there
        # once the listening line is.
        if metrics is not None:
            say(f"rerank metrics on {metrics[1].url}")
        say(f"rerank server listening on {settings.host}:{port}")

    try:
        if settings.workers > 1:
            return run_workers(settings, ready, metrics)
        if metrics is not None:
            metrics[1].start()
        # SIGINT before the handlers are installed (during start-up) must not print a traceback.
        with contextlib.suppress(KeyboardInterrupt):
            # libuv's event loop: about a tenth less CPU per proxied call (docs/performance.md).
            recorder = None if metrics is None else metrics[0].recorder()
            uvloop.run(serve(settings, lambda running: ready(running.port), recorder))
    except StartupError as exc:
        logger.error("%s", exc)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
