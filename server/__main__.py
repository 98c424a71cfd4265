"""`python -m rerank.server` / `rerank-server`: read flags and environment once, then serve.

This is the only module that reads the environment. Flags win over `RERANK_*` variables, which
win over the defaults in `rerank.server.config.Settings`. With metrics on, it also sets
prometheus-client's storage for this process and its workers (`rerank.server._prometheus`): the
library reads it once, when first imported, so nothing imported at the top here imports it,
and the modules that do are imported once it is set.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import sys
import tempfile
from collections.abc import Iterator, Mapping, MutableMapping, Sequence
from dataclasses import fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from rerank.server.callers import CallersFileError, load_directory
from rerank.server.config import DEFAULT_GATEWAY_URL, About, SettingError, Settings, Upstream, parse
from rerank.server.credentials import TokenFileError, read_token
from rerank.server.logs import configure_logging
from rerank.server.tracing import SAMPLERS

if TYPE_CHECKING:
    from rerank.server._prometheus import MetricsDirectory, MetricsEndpoint

logger = logging.getLogger("rerank.server")


class _Parser(argparse.ArgumentParser):
    """argparse, with every usage error one line (the rule for every bad setting)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n")


def settings_from(argv: Sequence[str] | None, environ: Mapping[str, str]) -> Settings:
    """Build `Settings` from command-line flags and an environment mapping.

    Every field that names a flag or a variable (`rerank.server.config.About`) is read the
    same way: the flag's text, else the variable's, parsed and range-checked by the field's
    rule. A bad value exits 2 with one line naming it and its range.
    """
    parser = _Parser(
        prog="rerank-server",
        description="gRPC reranking service in front of the AI Gateway. With no "
        "AI_GATEWAY_API_KEY and no gateway URL it serves from the bundled mock gateway.",
    )
    # Flags default to None: a flag not given leaves the variable, then the default, to speak.
    parser.add_argument("--host", dest="host")
    parser.add_argument("--port", dest="port")
    parser.add_argument(
        "--metrics-port",
        dest="metrics_port",
        help="serve Prometheus metrics at http://HOST:PORT/metrics (0: a free port); "
        "default: no metrics",
    )
    parser.add_argument(
        "--gateway-url",
        dest="gateway_url",
        help=f"gateway base URL (default with a key: {DEFAULT_GATEWAY_URL})",
    )
    parser.add_argument(
        "--gateway-protocol",
        dest="gateway_protocol",
        metavar="v3|v4",
        help="protocol version spoken to the gateway (default: v3 for a base URL ending in "
        "/v3/ai, else v4)",
    )
    parser.add_argument(
        "--mock",
        action="store_true",
        help="serve from the bundled mock gateway even when a key is set",
    )
    parser.add_argument("--default-model", dest="default_model")
    parser.add_argument("--log-level", dest="log_level")
    parser.add_argument(
        "--log-format",
        dest="log_format",
        metavar="text|json",
        help="text (default) or json: one object per line, for every log record",
    )
    parser.add_argument("--tls-cert", dest="tls_cert_file", help="PEM chain")
    parser.add_argument("--tls-key", dest="tls_key_file", help="PEM key")
    parser.add_argument(
        "--tls-client-ca",
        dest="tls_client_ca_file",
        help="PEM CA bundle: require client certificates it signed (mutual TLS)",
    )
    parser.add_argument(
        "--workers",
        dest="workers",
        help="server processes sharing the port (SO_REUSEPORT); default one per core",
    )
    parser.add_argument(
        "--auth-health",
        dest="auth_health",
        action="store_const",
        const="1",
        help="require a caller token for health checks too",
    )
    parser.add_argument(
        "--allow-port-overlap",
        dest="allow_port_overlap",
        action="store_const",
        const="1",
        help="share the port with another server started with this flag too (a zero-downtime "
        "restart); without it a port another server serves is refused",
    )
    args = parser.parse_args(argv)

    try:
        values: dict[str, Any] = {}
        for each in fields(Settings):
            info: About = each.metadata["about"]
            text = getattr(args, each.name, None) if info.flag else None
            if text is None and info.env:
                text = environ.get(info.env, "").strip() or None  # blank is unset
            if text is not None:
                values[each.name] = parse(each.name, text)
        values.setdefault("workers", len(os.sched_getaffinity(0)))
        if "gateway_url" in values:
            values["gateway_url"] = values["gateway_url"].rstrip("/")
        values |= secrets_from(environ, parser)
        values |= tracing_from(environ)
        has_credential = "api_key" in values or "oidc_token_file" in values
        if args.mock or (not has_credential and "gateway_url" not in values):
            values["upstream"] = Upstream.EMBEDDED_MOCK
        else:
            values["upstream"] = Upstream.GATEWAY
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


def tracing_from(environ: Mapping[str, str]) -> dict[str, Any]:
    """The standard OpenTelemetry variables that decide whether and what to export: the OTLP
    traces endpoint (unset: export nothing), the sampler and its ratio. The SDK reads the others
    itself (README, "Operating it").

    Raises:
        SettingError: a value the server cannot honour (another exporter or protocol, an
            unknown sampler, a ratio outside 0-1, an endpoint that is not an HTTP URL).
    """
    found: dict[str, Any] = {}
    exporter = environ.get("OTEL_TRACES_EXPORTER", "otlp").strip().lower()
    if exporter not in ("otlp", "none"):
        raise SettingError(f"OTEL_TRACES_EXPORTER must be otlp or none, got {exporter!r}")
    protocol = environ.get(
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", environ.get("OTEL_EXPORTER_OTLP_PROTOCOL", "")
    ).strip()
    if protocol not in ("", "http/protobuf"):
        raise SettingError(
            f"OTEL_EXPORTER_OTLP_PROTOCOL: only http/protobuf is supported, got {protocol!r}"
        )
    endpoint = environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "").strip()
    if not endpoint and (base := environ.get("OTEL_EXPORTER_OTLP_ENDPOINT", "").strip()):
        # The specification's rule: the base endpoint gets the signal's path appended.
        endpoint = base.rstrip("/") + "/v1/traces"
    if endpoint and exporter == "otlp":
        found["otlp_traces_endpoint"] = parse("otlp_traces_endpoint", endpoint)
    if sampler := environ.get("OTEL_TRACES_SAMPLER", "").strip().lower():
        found["trace_sampler"] = parse("trace_sampler", sampler)
    ratio = environ.get("OTEL_TRACES_SAMPLER_ARG", "").strip()
    if ratio and SAMPLERS.get(sampler):  # the SDK too ignores the argument of the others
        found["trace_sampler_ratio"] = parse("trace_sampler_ratio", ratio)
    return found


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
    with metrics_storage(os.environ) as path:
        return _serve_metrics(settings, path, settings.metrics_port)


@contextlib.contextmanager
def metrics_storage(environ: MutableMapping[str, str]) -> Iterator[Path]:
    """A fresh private directory (mode 0700, a new name: no stale file of an earlier run is
    read), made prometheus-client's storage in `environ` for this process and the workers it
    forks (they inherit it); removed at exit."""
    with tempfile.TemporaryDirectory(prefix="rerank-metrics-", ignore_cleanup_errors=True) as path:
        environ["PROMETHEUS_MULTIPROC_DIR"] = path
        yield Path(path)


def _serve_metrics(settings: Settings, path: Path, port: int) -> int:
    # Imported here, once the storage is set: they import prometheus-client.
    from rerank.server._prometheus import serving_metrics
    from rerank.server.app import build_info

    try:
        with serving_metrics(path, settings.host, port, build_info(settings)) as metrics:
            return _run(settings, metrics)
    except OSError as exc:  # binding the metrics port
        logger.error(
            "cannot serve metrics on %s:%d: %s",
            settings.host,
            port,
            exc.strerror or exc,
        )
        return 1


def _run(settings: Settings, metrics: tuple[MetricsDirectory, MetricsEndpoint] | None) -> int:
    # Imported here, once the storage is set: they import prometheus-client.
    from rerank.server.app import StartupError, serve
    from rerank.server.workers import run_workers

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
        # Lines on stdout, so scripts and other test suites can wait for them; the one saying
        # where metrics are comes first, so it is there once the listening line is. Each is one
        # write (`say`).
        if metrics is not None:
            say(f"rerank metrics on {metrics[1].url}")
        say(f"rerank server listening on {settings.host}:{port}")

    try:
        if settings.workers > 1:
            return run_workers(settings, settings.workers, ready, metrics)
        if metrics is not None:
            metrics[1].start()
        # SIGINT before the handlers are installed (during start-up) must not print a traceback.
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(serve(settings, lambda running: ready(running.port), metrics is not None))
    except StartupError as exc:
        logger.error("%s", exc)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
