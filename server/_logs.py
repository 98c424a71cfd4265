"""Logs: the two formats every record is written in, and the access log, one record per call
(the formats, the fields and when a record is written: docs/operating.md#logs).
"""

from __future__ import annotations

import logging
import random
import sys
import time
from collections.abc import Mapping
from typing import Any

import grpc
import orjson
from opentelemetry import trace
from opentelemetry.trace import SpanContext

from rerank.server._calls import CallRecord, current_call

ACCESS_LOGGER = "rerank.access"
TEXT_FORMAT = "%(asctime)s %(process)d %(levelname)s %(name)s: %(message)s"


def configure_logging(level: str, log_format: str) -> None:
    """Send every record to stderr in `log_format` (`text` or `json`) from `level` up."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter(TEXT_FORMAT))
    logging.basicConfig(level=level, handlers=[handler], force=True)


class JsonFormatter(logging.Formatter):
    """One JSON object per record; one written during a call carries the call's ids, so that it
    can be found from the call's access-log record."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": _utc(record.created),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "process": record.process,
        }
        fields: Mapping[str, Any] | None = getattr(record, "fields", None)
        if fields is not None:
            entry.update(fields)
        else:
            entry.update(_call_ids())
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            entry["exception"] = record.exc_text
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        # `default=str`: a field no JSON type holds (a Decimal, a path) still prints.
        return orjson.dumps(entry, default=str).decode()


class TextFormatter(logging.Formatter):
    """The classic line; an access-log record's fields follow its message as `key=value`.
    The time's text (`datefmt` unused) is made once per second: a call's line costs less."""

    _second: tuple[int, str] = (-1, "")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        fields: Mapping[str, Any] | None = getattr(record, "fields", None)
        if fields is None:
            return line
        # Each value as its text (`-` for none, JSON's booleans), inline: this runs per call.
        texts = [
            "-" if v is None else ("true" if v else "false") if v is True or v is False else str(v)
            for v in fields.values()
        ]
        return " ".join([line, *map("=".join, zip(fields, texts, strict=True))])

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        second = int(record.created)
        if second != self._second[0]:
            self._second = (second, time.strftime(self.default_time_format, self.converter(second)))
        return f"{self._second[1]},{int(record.msecs):03d}"  # as default_msec_format


def _sole_stream_handler(logger: logging.Logger) -> logging.Handler | None:
    """The handler that alone takes `logger`'s INFO records, unfiltered, when it is a plain
    `StreamHandler` (`configure_logging`'s, which keeps nothing of a record); else None."""
    handlers: list[logging.Handler] = []
    current: logging.Logger | None = logger
    while current is not None:
        handlers += current.handlers
        current = current.parent if current.propagate else None
    sole = handlers[0] if len(handlers) == 1 else None
    if type(sole) is logging.StreamHandler and sole.level <= logging.INFO:
        return None if logger.filters or sole.filters else sole
    return None


def _utc(created: float) -> str:
    seconds = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created))
    return f"{seconds}.{int(created * 1000) % 1000:03d}Z"


def _call_ids() -> dict[str, str]:
    ids: dict[str, str] = {}
    call = current_call()
    if call is not None:
        ids["request_id"] = call.request_id
    span_context = trace.get_current_span().get_span_context()
    if span_context.is_valid:
        ids["trace_id"] = f"{span_context.trace_id:032x}"
        ids["span_id"] = f"{span_context.span_id:016x}"
    return ids


class AccessLog:
    """Writes the access-log record of each call (`rerank.access`). A plain stream handler that
    alone takes them is handed one record, made once and changed for each line (lines come from
    the event loop's thread only): one made per line would double the line's cost."""

    def __init__(self, success_sample: float = 1.0, rng: random.Random | None = None) -> None:
        self._logger = logging.getLogger(ACCESS_LOGGER)
        self._success_sample = success_sample
        self._rng = rng or random.Random()
        self._record = logging.LogRecord(ACCESS_LOGGER, logging.INFO, "", 0, "", (), None)

    def write(
        self,
        method: str,
        call: CallRecord,
        code: grpc.StatusCode,
        span_context: SpanContext,
        seconds: float,
    ) -> None:
        """Log the call that just ended with `code` after `seconds`; `method` as gRPC names
        it, without the leading slash (`rerank.v1.RerankService/Rerank`)."""
        if code is grpc.StatusCode.OK and (
            self._success_sample < 1 and self._rng.random() >= self._success_sample
        ):
            return
        logger = self._logger
        if not logger.isEnabledFor(logging.INFO):
            return
        valid = span_context.is_valid
        fields = {
            "request_id": call.request_id,
            "trace_id": f"{span_context.trace_id:032x}" if valid else None,
            "span_id": f"{span_context.span_id:016x}" if valid else None,
            "caller": None if call.caller is None else call.caller.name,
            "method": method,
            "model": call.model,
            "documents": call.documents,
            "top_n": call.top_n,
            "status": code.name,
            "reason": call.reason,
            "incident": call.incident,
            "duration_ms": round(seconds * 1000, 3),
            "upstream_attempts": call.upstream_attempts,
            "windows": call.windows,
            "cached": call.cached,
            # A string: the exact decimal, which a JSON number would not keep.
            "cost": None if call.cost is None else str(call.cost),
        }
        message = f"{method} {code.name} {seconds * 1000:.1f} ms"
        handler = _sole_stream_handler(logger)
        if handler is None:  # handlers that may keep the record (a test's): one of its own
            record = logging.LogRecord(ACCESS_LOGGER, logging.INFO, "", 0, message, (), None)
        else:
            record = self._record
            record.created = created = time.time()
            record.msecs = int((created - int(created)) * 1000) + 0.0  # as LogRecord's own
            record.msg = message  # its process: this one, made here (after any fork)
        # No source line (pathname "", line 0): the record is the call's, not this line's.
        record.fields = fields
        (logger if handler is None else handler).handle(record)
