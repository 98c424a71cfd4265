"""`python -m rerank.server` / `rerank-server`: read flags and environment once, then serve.

The only module that reads the environment. With metrics on and workers, it sets
prometheus-client's storage first: the library reads it once, when imported, so what
imports it is imported only after.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import math
import os
import sys
import tempfile
from collections.abc import Iterator, Mapping, MutableMapping, Sequence
from importlib.metadata import version
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import uvloop

from rerank.server import _config as config
from rerank.server._callers import CallerRegistry
from rerank.server._config import SettingError, Settings, Upstream
from rerank.server._credentials import CallersFileError, TokenFileError, read_token
from rerank.server._logs import configure_logging
from rerank.server._tracing import traces_exported

if TYPE_CHECKING:
    from rerank.server._prometheus import MetricsDirectory, MetricsEndpoint

logger = logging.getLogger("rerank.server")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one line, as for every bad setting
        self.exit(2, f"{self.prog}: error: {message}\n")


def default_workers(cgroup: Path) -> int:
    """A worker per core this process may run on, but no more than its cgroup's CPU quota
    (v2 `cpu.max`, v1 `cpu/cpu.cfs_quota_us` over `cfs_period_us`), rounded up: a container
    limited to 2 CPUs on a 64-core node runs 2, not 64."""
    cores = len(os.sched_getaffinity(0))
    v1 = [cgroup / "cpu" / f"cpu.cfs_{part}_us" for part in ("quota", "period")]
    with contextlib.suppress(OSError, ValueError):
        v2 = cgroup / "cpu.max"
        quota, period = v2.read_text().split() if v2.exists() else [f.read_text() for f in v1]
        if quota.strip() not in ("max", "-1"):
            return max(1, min(cores, math.ceil(int(quota) / int(period))))
    return cores


def settings_from(argv: Sequence[str] | None, environ: Mapping[str, str]) -> Settings:
    """`Settings` from flags, else variables (blank is unset), else the defaults; a bad value
    exits 2 with one line naming it. Not pydantic-settings: it makes every field a flag, and
    reads `os.environ` itself where this reads a mapping."""
    parser = _Parser(
        prog="rerank-server",
        description="gRPC reranking service in front of the AI Gateway. With no "
        "AI_GATEWAY_API_KEY and no gateway URL it serves from the bundled mock gateway.",
    )
    for name, field in config.fields().items():
        if flag := config.names(name).flag:
            about = f"{field.description}: {config.range_of(field)}"
            if field.annotation is bool:  # a switch: the flag alone turns it on
                parser.add_argument(flag, dest=name, action="store_const", const="1", help=about)
            else:  # None when not given: the variable, then the default, speak
                parser.add_argument(flag, dest=name, help=about)
    mock = "serve from the bundled mock gateway even with a key"
    parser.add_argument("--mock", action="store_true", help=mock)
    args = parser.parse_args(argv)
    values: dict[str, Any] = {"workers": default_workers(Path("/sys/fs/cgroup"))}
    for name, field in config.fields().items():
        text = getattr(args, name, None)
        if text is None and (env := config.names(name).env):
            text = environ.get(env, "").strip() or None
        if text is not None:
            folded = {choice.upper(): choice for choice in config.choices(field)}
            values[name] = folded.get(text.strip().upper(), text.strip())
    if "gateway_url" in values:
        values["gateway_url"] = values["gateway_url"].rstrip("/")
    try:
        values |= _secrets(environ)
        gateway = {"api_key", "oidc_token_file", "gateway_url"} & values.keys()
        values["upstream"] = (
            Upstream.GATEWAY if gateway and not args.mock else Upstream.EMBEDDED_MOCK
        )
        values["export_traces"] = traces_exported(environ)
        settings = Settings(**values)
        # Read once here, so that a bad file stops the start with one line, not every worker.
        directory = CallerRegistry(settings.callers_file, settings.auth_tokens).directory
    except (SettingError, CallersFileError) as exc:
        parser.error(str(exc))
    if directory.names_by_certificate and settings.tls_client_ca_file is None:
        parser.error(
            f"RERANK_CALLERS_FILE {settings.callers_file}: caller "
            f"{directory.certificate_callers[0]!r} is named by 'subject' or 'san', which "
            "needs mutual TLS (--tls-client-ca)"
        )
    return settings


def _secrets(environ: Mapping[str, str]) -> dict[str, Any]:
    """The settings read from several variables or a file: the gateway credential, as the AI SDK
    picks it (a key, else an OIDC token: a file, re-read as it changes, before a one-shot one),
    and the callers' tokens."""
    found: dict[str, Any] = {}
    if api_key := environ.get("AI_GATEWAY_API_KEY"):
        found["api_key"] = api_key
    elif token_file := environ.get("RERANK_OIDC_TOKEN_FILE", "").strip():
        try:
            read_token(token_file)  # a file without a token stops the start, not the first call
        except TokenFileError as exc:
            raise SettingError(f"RERANK_OIDC_TOKEN_FILE: {exc}") from None
        found["oidc_token_file"], found["auth_method"] = token_file, "oidc"
    elif oidc := environ.get("VERCEL_OIDC_TOKEN"):
        found["api_key"], found["auth_method"] = oidc, "oidc"
    tokens = {t.strip() for t in environ.get("RERANK_AUTH_TOKENS", "").split(",")}
    if tokens_file := environ.get("RERANK_AUTH_TOKENS_FILE"):
        try:
            tokens |= {line.strip() for line in Path(tokens_file).read_text("utf-8").splitlines()}
        except OSError as exc:
            raise SettingError(f"cannot read RERANK_AUTH_TOKENS_FILE: {exc.strerror}") from None
    found["auth_tokens"] = frozenset(tokens - {""})
    return found


def say(line: str) -> None:
    """`line` on stdout in one write: `print` writes the newline apart, and, unbuffered, a
    worker's log line on the same pipe could land between them, glued to the port."""
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def main(argv: Sequence[str] | None = None) -> int:
    settings = settings_from(argv, os.environ)
    configure_logging(settings.log_level, settings.log_format)
    # uvicorn (the embedded mock gateway) logs each start and stop at INFO: noise here.
    logging.getLogger("uvicorn.error").setLevel(max(logging.WARNING, logger.getEffectiveLevel()))
    if settings.metrics_port is None:
        return _run(settings, None)
    # One process keeps its metrics in memory; workers share the library's files.
    one = settings.workers == 1
    with contextlib.nullcontext(None) if one else metrics_storage(os.environ) as path:
        from rerank.server._prometheus import serving_metrics  # once the storage is set

        info = {"version": version("rerank-service"), "gateway_protocol": settings.protocol.value}
        try:  # info: the labels of `rerank_build_info`
            with serving_metrics(path, settings.host, settings.metrics_port, info) as metrics:
                return _run(settings, metrics)
        except OSError as exc:  # binding the metrics port
            where = f"{settings.host}:{settings.metrics_port}"
            logger.error("cannot serve metrics on %s: %s", where, exc.strerror or exc)
            return 1


@contextlib.contextmanager
def metrics_storage(environ: MutableMapping[str, str]) -> Iterator[Path]:
    """A fresh private directory (0700, so no stale file of an earlier run is read), made
    prometheus-client's storage in `environ` for this process and its workers."""
    with tempfile.TemporaryDirectory(prefix="rerank-metrics-", ignore_cleanup_errors=True) as path:
        environ["PROMETHEUS_MULTIPROC_DIR"] = path
        yield Path(path)


def _run(settings: Settings, metrics: tuple[MetricsDirectory, MetricsEndpoint] | None) -> int:
    from rerank.server._app import serve  # they import prometheus-client
    from rerank.server._listening import StartupError
    from rerank.server._workers import run_workers

    def ready(port: int, http_port: int | None = None) -> None:
        if settings.upstream is Upstream.EMBEDDED_MOCK:
            logger.warning(
                "no AI_GATEWAY_API_KEY and no gateway URL: answering from the bundled "
                "deterministic mock gateway (scores are lexical, not a real model)"
            )
        else:
            url, protocol = settings.gateway_url, settings.protocol.value
            logger.info("forwarding to the gateway at %s (protocol %s)", url, protocol)
        logger.info(
            "caller authentication %s; TLS %s",
            "on" if settings.auth_tokens or settings.callers_file else "off",
            "mutual" if settings.tls_client_ca_file else "on" if settings.tls_cert_file else "off",
        )
        logger.info("%d worker process(es)", settings.workers)
        # For scripts to wait for: where metrics are first, so it is there with the port.
        if metrics is not None:
            say(f"rerank metrics on {metrics[1].url}")
        if http_port is not None:  # before the gRPC line, which scripts wait for last
            say(f"rerank http listening on http://{settings.host}:{http_port}")
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
            uvloop.run(serve(settings, ready, recorder))
    except StartupError as exc:
        logger.error("%s", exc)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
