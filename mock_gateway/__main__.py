"""``python -m rerank.mock_gateway`` (console script ``rerank-mock-gateway``): serve the mock.

The socket is bound here, before uvicorn starts, so that ``--port 0`` works: once uvicorn
serves, exactly one line goes to stdout, ``mock gateway listening on http://HOST:PORT/v4/ai``,
which is how a parent process learns the port. It names the v4 base URL (today's SDK); v3 is
served on the same host and port under ``/v3/ai``. ``--control`` adds the control API under
``/_control/`` (``rerank.mock_gateway._control``), announced on stderr. Logs go to stderr;
request logs only at ``--log-level debug`` or ``trace``. SIGTERM and SIGINT shut down
gracefully with exit status 0.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import socket
import sys
from collections.abc import Sequence
from decimal import Decimal, InvalidOperation
from typing import Any

import uvicorn

from ._app import ConnectionDropped, create_app
from ._control import CONTROL_PREFIX
from ._settings import MockSettings
from ._versions import DEFAULT_PROTOCOL, http_origin

LOG_LEVELS = ("critical", "error", "warning", "info", "debug", "trace")


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m rerank.mock_gateway",
        description="A deterministic mock of the AI Gateway's reranking API.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (127.0.0.1)")
    parser.add_argument("--port", type=int, default=0, help="port to bind; 0 picks a free one")
    parser.add_argument("--api-key", help="the only bearer token accepted (default: any)")
    parser.add_argument("--latency-ms", type=float, default=0.0, help="delay per rerank call")
    parser.add_argument(
        "--error-rate", type=float, default=0.0, help="fraction of rerank calls answered 503"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the error-rate draws")
    parser.add_argument(
        "--cost-usd",
        type=_decimal,
        help="the cost every rerank call reports, in USD (default: the model's price per "
        "search unit times the search units)",
    )
    parser.add_argument(
        "--control",
        action="store_true",
        help="serve the control API (POST /_control/fail_next, set_scores, reset) for scripting",
    )
    parser.add_argument("--log-level", choices=LOG_LEVELS, default="info")
    return parser.parse_args(argv)


def _decimal(text: str) -> Decimal:
    try:
        return Decimal(text)
    except InvalidOperation:
        raise argparse.ArgumentTypeError(f"not a decimal number: {text!r}") from None


def _bind(host: str, port: int) -> socket.socket:
    family, kind, proto, _, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(address)
    return sock


def _log_config(level: str) -> dict[str, Any]:
    # uvicorn's default config writes request logs to stdout, which belongs to the ready line.
    handler = {"class": "logging.StreamHandler", "formatter": "plain", "stream": "ext://sys.stderr"}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
        "handlers": {"stderr": handler},
        "loggers": {
            name: {"handlers": ["stderr"], "level": level.upper(), "propagate": False}
            for name in ("uvicorn", "uvicorn.error", "uvicorn.access")
        },
    }


class _QuietDrops(logging.Filter):
    """Log a deliberate ``drop`` fault as one line instead of an error with a traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], ConnectionDropped):
            record.levelno, record.levelname = logging.INFO, "INFO"
            record.msg, record.args = "drop fault: %s", (record.exc_info[1],)
            record.exc_info = None
        return True


class _Server(uvicorn.Server):
    """A uvicorn server that announces its URL once it accepts connections."""

    def __init__(self, config: uvicorn.Config, host: str, port: int, control: bool) -> None:
        super().__init__(config)
        self._url = DEFAULT_PROTOCOL.base_url(host, port)
        self._control_url = http_origin(host, port) + CONTROL_PREFIX if control else None

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=sockets)
        if self.should_exit:  # uvicorn sets it when start-up failed
            return
        print(f"mock gateway listening on {self._url}", flush=True)
        if self._control_url is not None:
            logging.getLogger("uvicorn.error").info(
                "control API on: POST %s/{fail_next,set_scores,reset}", self._control_url
            )


def main(argv: Sequence[str] | None = None) -> int:
    """Run the mock gateway until SIGTERM or SIGINT; return the exit status."""
    args = _parse_args(argv)
    try:
        settings = MockSettings(
            api_key=args.api_key,
            latency_ms=args.latency_ms,
            error_rate=args.error_rate,
            seed=args.seed,
            cost_usd=args.cost_usd,
            control=args.control,
        )
    except ValueError as exc:
        print(f"python -m rerank.mock_gateway: error: {exc}", file=sys.stderr)
        return 2
    try:
        sock = _bind(args.host, args.port)
    except OSError as exc:
        print(
            f"python -m rerank.mock_gateway: cannot bind {args.host}:{args.port}: {exc}",
            file=sys.stderr,
        )
        return 1
    config = uvicorn.Config(
        create_app(settings),
        http="h11",  # the behaviour of the drop fault depends on the protocol implementation
        lifespan="on",
        log_config=_log_config(args.log_level),
        log_level=args.log_level,
        access_log=args.log_level in ("debug", "trace"),
        # A test mock must stop promptly: answers still sleeping in a `slow` fault are
        # abandoned after this long rather than awaited to the end.
        timeout_graceful_shutdown=1,
    )
    logging.getLogger("uvicorn.error").addFilter(_QuietDrops())
    server = _Server(config, args.host, sock.getsockname()[1], args.control)
    # uvicorn handles SIGTERM/SIGINT while serving, then re-raises the signal once it has shut
    # down. Raising KeyboardInterrupt for both turns that re-raise into a clean exit.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        asyncio.run(server.serve(sockets=[sock]))
    except KeyboardInterrupt:
        pass
    finally:
        sock.close()
    return 0 if server.started or not server.should_exit else 1


if __name__ == "__main__":
    sys.exit(main())
