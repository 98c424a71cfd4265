"""The gateway adapter's HTTP exchanges (`rerank.server._gateway`): one pooled session, one
deadline per exchange, an OpenTelemetry client span whose context the request carries as
`traceparent` (so the gateway's spans join the caller's trace), an answer read up to a bound,
and a request body let go of once written.

The HTTP client is aiohttp: on `make bench` it cost half the server CPU per proxied call of a
tuned httpx (docs/design/clients.md). This module is the only code that knows it, and the only
place a failed exchange (a deadline passed, a connection refused, reset or cut, too large an
answer) becomes a `rerank.server._errors` error; the adapter reads the answers (with
`parse_retry_after`, the delay an answer asks for).
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import math
import platform
import time
import urllib.parse
from collections.abc import Callable, Mapping

import aiohttp
from aiohttp.abc import AbstractStreamWriter
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import Span, SpanKind, Status, StatusCode, Tracer

from rerank.server._errors import UpstreamProtocolError, UpstreamTimeout, UpstreamUnavailable
from rerank.server._tracing import RESEND_COUNT_KEY, child_span, inject_trace_context

USER_AGENT = (
    f"rerank-service/0.1.0 aiohttp/{aiohttp.__version__} runtime/python/{platform.python_version()}"
)
#: The largest body we read from the gateway. A ranking of 10,000 documents is under 1 MiB;
#: anything far beyond is not a ranking, and reading it whole would let the upstream spend
#: our memory.
MAX_RESPONSE_BYTES = 8 * 1024 * 1024
#: A request body is written this much at a time (aiohttp's own chunk for file bodies).
_WRITE_CHUNK = 64 * 1024


class GatewayHttp:
    """Exchanges with the gateway at `base_url`, over at most `max_connections`."""

    def __init__(self, base_url: str, max_connections: int, tracer: Tracer | None) -> None:
        self._base_url = base_url = base_url.rstrip("/")
        self._max_connections = max_connections
        self._tracer = tracer or trace.NoOpTracer()
        self._session: aiohttp.ClientSession | None = None
        # The client span's fixed attributes: where, never the URL itself (a base URL could
        # carry a query or user info).
        url = urllib.parse.urlsplit(base_url)
        self._span_attributes: dict[str, str | int] = {
            "server.address": url.hostname or "",
            "server.port": url.port or (443 if url.scheme == "https" else 80),
            "url.scheme": url.scheme,
        }

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def exchange(
        self,
        method: str,
        path: str,
        headers: dict[str, str],
        data: JsonBody | None,
        timeout: float,
    ) -> tuple[int, Mapping[str, str], bytes]:
        """One exchange under one deadline: the answer's status, headers and body, or an
        `UpstreamError` when there is no answer to read. Its span follows OpenTelemetry's HTTP
        client conventions: any 4xx or 5xx is an error, named by its status."""
        if timeout <= 0:
            raise UpstreamTimeout("the call's deadline passed before the gateway was asked")
        span = child_span(self._tracer, method, SpanKind.CLIENT)
        if recording := span.is_recording():
            span.set_attributes(self._span_attributes)
            span.set_attribute("http.request.method", method)
            if resend := otel_context.get_value(RESEND_COUNT_KEY):
                span.set_attribute("http.request.resend_count", resend)  # type: ignore[arg-type]
        inject_trace_context(headers, span.get_span_context())
        try:
            async with (
                asyncio.timeout(timeout),
                self._pool().request(
                    method, self._base_url + path, headers=headers, data=data
                ) as response,
            ):
                body = await _read_bounded(response)
        except TimeoutError as exc:
            _failed(span, "timeout")
            raise UpstreamTimeout(f"the gateway did not answer within {timeout:.3g} s") from exc
        except aiohttp.ClientError as exc:
            _failed(span, type(exc).__name__)
            # Refused, reset or dropped connections, truncated bodies, unparsable HTTP.
            raise UpstreamUnavailable(f"cannot reach the gateway: {type(exc).__name__}") from exc
        except BaseException as exc:  # too large an answer, or the call was cancelled
            _failed(span, getattr(exc, "reason", None) or type(exc).__name__)
            raise
        if recording:
            span.set_attribute("http.response.status_code", response.status)
        if 200 <= response.status < 300:
            span.end()
        else:
            _failed(span, str(response.status))
        return response.status, response.headers, body

    def _pool(self) -> aiohttp.ClientSession:
        # Created on first use, inside the event loop that will run it (aiohttp's rule).
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self._max_connections),
                # Deadlines are ours (one asyncio.timeout per exchange), not aiohttp's 5 min.
                timeout=aiohttp.ClientTimeout(total=None),
                # The SDK sends no cookies; neither may a shared client carry one caller's
                # cookie into another caller's request.
                cookie_jar=aiohttp.DummyCookieJar(),
            )
        return self._session


class JsonBody(aiohttp.Payload):
    """A request body let go of once written: `encode` makes it.

    aiohttp keeps a request's payload until the answer's headers arrive, and a rerank body is
    a copy of the call's documents: kept, every call waiting on a slow gateway would hold its
    documents twice for as long as it waits. So the body is made once (its length goes out as
    the content-length, as the SDK sends one), written in chunks of 64 KiB with the event loop
    served in between, and dropped; should aiohttp write it again (a 307 redirect), it is made
    again from `encode`.
    """

    def __init__(self, encode: Callable[[], bytes]) -> None:
        body = encode()
        super().__init__(None, content_type="application/json")
        self._encode = encode
        self._body: bytes | None = body
        self._size = len(body)

    def decode(self, encoding: str = "utf-8", errors: str = "strict") -> str:
        return (self._body or self._encode()).decode(encoding, errors)

    async def write(self, writer: AbstractStreamWriter) -> None:
        await self.write_with_length(writer, None)

    async def write_with_length(
        self, writer: AbstractStreamWriter, content_length: int | None
    ) -> None:
        body, self._body = memoryview(self._body or self._encode()), None
        end = len(body) if content_length is None else min(content_length, len(body))
        for start in range(0, end, _WRITE_CHUNK):
            await writer.write(body[start : min(start + _WRITE_CHUNK, end)])


def _failed(span: Span, error_type: str) -> None:
    """End an attempt's span as failed, with `error.type` (a status, or what went wrong)."""
    if span.is_recording():
        span.set_attribute("error.type", error_type)
        span.set_status(Status(StatusCode.ERROR, error_type))
    span.end()


async def _read_bounded(response: aiohttp.ClientResponse) -> bytes:
    if (declared := response.content_length or 0) > MAX_RESPONSE_BYTES:
        raise UpstreamProtocolError(
            f"the gateway's answer of {declared} bytes exceeds {MAX_RESPONSE_BYTES} bytes"
        )
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.content.iter_any():
        chunks.append(chunk)
        if (size := size + len(chunk)) > MAX_RESPONSE_BYTES:
            raise UpstreamProtocolError(f"the gateway's answer exceeds {MAX_RESPONSE_BYTES} bytes")
    return b"".join(chunks)  # one chunk (most answers): that chunk itself, not a copy


def parse_retry_after(headers: Mapping[str, str], now: float | None = None) -> float | None:
    """Seconds to wait from `retry-after-ms` (wins) or `retry-after` (seconds or HTTP date).

    As in the AI SDK, a delay outside 0–60 s is ignored rather than obeyed.
    """
    delay = _float_or_none(headers.get("retry-after-ms", ""))
    delay = None if delay is None else delay / 1000
    if delay is None and (seconds := headers.get("retry-after")) is not None:
        delay = _float_or_none(seconds)
        if delay is None:
            with contextlib.suppress(TypeError, ValueError):
                when = email.utils.parsedate_to_datetime(seconds).timestamp()
                delay = when - (time.time() if now is None else now)
    return delay if delay is not None and 0 <= delay <= 60 else None


def _float_or_none(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None
