"""`python -m bench.loadgen CONFIG_JSON`: one closed-loop load cell, in its own process.

`concurrency` workers each issue calls back to back, so exactly that many calls are in flight.
Calls completing during the warm-up are not recorded; the measured window then lasts
`duration_s` or until `max_calls` calls have completed, whichever comes first. CPU time of
the watched processes (the server, the mock) is read from /proc at the window's edges, so the
per-call figures cover exactly the calls counted. Then no new call starts; calls still in
flight get a bounded drain and are cancelled after it.

The generator runs in its own process so that its CPU is not the server's: on a 2-core box
they still contend for the cores, which is why the report prefers ratios.

The result is one JSON object on stdout.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import json
import math
import resource
import secrets
import sys
import time
import urllib.parse
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import grpc
import orjson

from bench import _workload
from bench._procfs import cpu_seconds
from rerank.v1 import rerank_service_pb2 as pb

#: gRPC channels (one HTTP/2 connection each) the workers share, round robin. More than one,
#: as real clients fan out; not one per worker: HTTP/2 multiplexes calls on a connection.
MAX_CHANNELS = 8
#: Calls still in flight when the window closes get this long to finish, then are cancelled.
MAX_DRAIN_S = 10.0


@dataclass(frozen=True)
class CellConfig:
    """One cell. `path` is "direct" (HTTP to the mock), "proxied", "bare" or "echo" (gRPC).

    "bare" sends the proxied call's bytes to `bench.bare_proxy`, which answers the mock's JSON
    for its own prebuilt 20-document request: run it with `documents` 20.
    """

    path: str
    target: str
    documents: int
    concurrency: int
    warmup_s: float
    duration_s: float
    max_calls: int | None
    call_timeout_s: float
    watch_pids: dict[str, int]
    api_key: str = "bench"
    #: A named caller's token, sent as `authorization: Bearer …` on every gRPC call.
    bearer_token: str | None = None

    @classmethod
    def from_json(cls, text: str) -> CellConfig:
        return cls(**json.loads(text))


@dataclass
class _Recorder:
    max_calls: int | None
    workers: int
    #: Set when the warm-up ends; until then nothing is recorded.
    window_start: float = math.inf
    latencies: list[float] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    #: Workers that have completed at least one call, and the event when all have.
    warmed: set[int] = field(default_factory=set)
    first_round: asyncio.Event = field(default_factory=asyncio.Event)
    done: asyncio.Event = field(default_factory=asyncio.Event)
    stop_issuing: bool = False

    def record(self, worker: int, finished: float, latency: float, error: str | None) -> None:
        if not self.first_round.is_set():
            self.warmed.add(worker)
            if len(self.warmed) == self.workers:
                self.first_round.set()
        # A call counts when it completes inside the window (closed-loop throughput).
        if self.done.is_set() or finished < self.window_start:
            return
        if error is None:
            self.latencies.append(latency)
        else:
            self.errors[error] += 1
        if self.max_calls is not None and len(self.latencies) + sum(self.errors.values()) >= (
            self.max_calls
        ):
            self.done.set()


Call = Callable[[], Awaitable[bytes]]


def _percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile: a value that was actually measured, no interpolation."""
    if not sorted_values:
        return float("nan")
    rank = max(1, round(q * len(sorted_values) + 0.5))
    return sorted_values[min(rank, len(sorted_values)) - 1]


def _check_response(config: CellConfig, request: bytes, response: bytes) -> None:
    """Fail the cell loudly if the first answer is not what the path should answer."""
    expected = _workload.top_n(config.documents)
    if config.path == "echo":
        ok = response == request
    elif config.path == "proxied":
        ok = len(pb.RerankResponse.FromString(response).ranking) == expected
    else:  # direct and bare: the mock's JSON answer
        ok = len(orjson.loads(response).get("ranking", ())) == expected
    if not ok:
        raise RuntimeError(f"{config.path}: unexpected answer {response[:200]!r}")


async def _run(config: CellConfig) -> dict[str, Any]:
    closers: list[Callable[[], Awaitable[None]]] = []
    calls: list[Call]
    # Every proxied (and, alike, direct) call carries its own query: the server caches
    # identical requests, and a benchmark of cache hits would not measure the proxy.
    nonce = secrets.token_hex(4)
    serial = itertools.count()

    def next_query() -> str:
        return f"{_workload.QUERY} [{nonce}-{next(serial)}]"

    if config.path == "direct":
        prefix, suffix = _workload.http_body_parts(config.documents)
        url = urllib.parse.urlsplit(config.target.rstrip("/") + "/reranking-model")
        headers = _workload.http_headers(config.api_key)
        # One keep-alive connection per worker, as a pooled proxy holds under HTTP/1.1.
        connections = [
            _Http1Connection(url, headers, prefix, suffix, next_query)
            for _ in range(config.concurrency)
        ]
        closers.extend(connection.close for connection in connections)
        calls = [connection.call for connection in connections]
        request = prefix + orjson.dumps(_workload.QUERY) + suffix  # for _check_response
    else:
        if config.path == "echo":
            echo_request = _workload.grpc_request(_workload.ECHO_DOCUMENTS)

            def make_request() -> bytes:
                return echo_request  # no cache: the same bytes every time
        else:
            # "bare" too: the proxied call's bytes, so what crosses the wire matches the
            # proxied call it is compared with.
            _, with_query = _workload.grpc_request_parts(config.documents)

            def make_request() -> bytes:
                return with_query(next_query())

        request = make_request()
        method = {
            "proxied": _workload.RERANK_METHOD,
            "bare": _workload.BARE_METHOD,
            "echo": _workload.ECHO_METHOD,
        }[config.path]
        metadata = (
            (("authorization", f"Bearer {config.bearer_token}"),) if config.bearer_token else None
        )
        calls = []
        for _ in range(min(config.concurrency, MAX_CHANNELS)):
            channel = grpc.aio.insecure_channel(
                config.target,
                options=[
                    # Without it, channels with equal arguments share one connection.
                    ("grpc.use_local_subchannel_pool", 1),
                    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
                ],
            )
            closers.append(functools.partial(channel.close, None))
            # No (de)serializers: bytes in, bytes out, so the generator spends no CPU on
            # protobuf; the first answer is parsed once, by _check_response.
            stub = channel.unary_unary(method, None, None)

            def grpc_call(stub: Any = stub) -> Awaitable[bytes]:
                result: Awaitable[bytes] = stub(
                    make_request(), timeout=config.call_timeout_s, metadata=metadata
                )
                return result

            calls.append(grpc_call)

    # The first call outside the measurement checks the path works and answers right.
    _check_response(config, request, await calls[0]())

    recorder = _Recorder(max_calls=config.max_calls, workers=config.concurrency)

    async def worker(number: int, call: Call) -> None:
        while not recorder.stop_issuing:
            begin = time.perf_counter()
            error: str | None = None
            try:
                await call()
            except grpc.aio.AioRpcError as exc:
                error = exc.code().name
            except _HttpStatus as exc:
                error = f"HTTP {exc.status}"
            except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
                error = type(exc).__name__
            recorder.record(number, time.monotonic(), time.perf_counter() - begin, error)

    started = time.monotonic()
    tasks = [
        asyncio.create_task(worker(number, calls[number % len(calls)]))
        for number in range(config.concurrency)
    ]
    # The warm-up lasts `warmup_s` and until every worker has completed a call: at 256 calls
    # of 1,000 documents the first round alone takes seconds, and its latencies (a queue
    # filling up) are not the steady state's.
    await asyncio.sleep(config.warmup_s)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(recorder.first_round.wait(), timeout=config.call_timeout_s)
    window_end = time.monotonic() + config.duration_s
    cpu_before = {name: cpu_seconds(pid) for name, pid in config.watch_pids.items()}
    self_before = _own_cpu()
    window_start = recorder.window_start = time.monotonic()
    # The window closes by time, or earlier once `max_calls` calls have completed.
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(
            recorder.done.wait(), timeout=max(0.0, window_end - time.monotonic())
        )
    recorder.done.set()  # later completions are no longer recorded
    window_end = time.monotonic()
    cpu_after = {name: cpu_seconds(pid) for name, pid in config.watch_pids.items()}
    self_after = _own_cpu()

    recorder.stop_issuing = True
    _, pending = await asyncio.wait(tasks, timeout=min(MAX_DRAIN_S, config.call_timeout_s))
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    for close in closers:
        await close()

    latencies = sorted(recorder.latencies)
    window = window_end - window_start
    completed = len(latencies) + sum(recorder.errors.values())
    return {
        "path": config.path,
        "documents": config.documents,
        "concurrency": config.concurrency,
        "warmup_s": window_start - started,
        "window_s": window,
        "window_start": window_start,
        "window_end": window_end,
        "calls": len(latencies),
        "errors": sum(recorder.errors.values()),
        "error_kinds": dict(recorder.errors),
        "cancelled_at_end": len(pending),
        "throughput": completed / window if window > 0 else 0.0,
        "latency_ms": {
            name: 1000 * _percentile(latencies, q)
            for name, q in (("p50", 0.5), ("p90", 0.9), ("p99", 0.99), ("max", 1.0))
        }
        | {"mean": 1000 * sum(latencies) / len(latencies) if latencies else float("nan")},
        "cpu_s": {name: cpu_after[name] - cpu_before[name] for name in cpu_before},
        "generator_cpu_s": self_after - self_before,
        "request_bytes": len(request),
    }


class _Http1Connection:
    """A minimal keep-alive HTTP/1.1 client for one pre-built request, like wrk's.

    httpx costs the generator several times the mock's own CPU per call, so with it the
    "direct" path measured the generator, not the mock; this writes fixed bytes and reads a
    `content-length` framed answer (what uvicorn sends for the mock's replies).
    """

    def __init__(
        self,
        url: urllib.parse.SplitResult,
        headers: dict[str, str],
        prefix: bytes,
        suffix: bytes,
        next_query: Callable[[], str],
    ) -> None:
        self._host = url.hostname or "127.0.0.1"
        self._port = url.port or 80
        self._head = [f"POST {url.path} HTTP/1.1", f"host: {url.netloc}"]
        self._head += [f"{name}: {value}" for name, value in headers.items()]
        self._prefix = prefix
        self._suffix = suffix
        self._next_query = next_query
        self._streams: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None

    def _request(self) -> bytes:
        body = self._prefix + orjson.dumps(self._next_query()) + self._suffix
        head = "\r\n".join([*self._head, f"content-length: {len(body)}"]) + "\r\n\r\n"
        return head.encode("latin-1") + body

    async def call(self) -> bytes:
        if self._streams is None:
            self._streams = await asyncio.open_connection(self._host, self._port)
        reader, writer = self._streams
        try:
            writer.write(self._request())
            head = await reader.readuntil(b"\r\n\r\n")
            status_line, _, header_block = head.partition(b"\r\n")
            status = int(status_line.split(b" ", 2)[1])
            headers = {}
            for line in header_block.split(b"\r\n"):
                name, _, value = line.partition(b":")
                headers[name.strip().lower()] = value.strip()
            if b"content-length" not in headers:
                raise ValueError("the answer is not content-length framed")
            body = await reader.readexactly(int(headers[b"content-length"]))
        except BaseException:
            await self.close()  # a half-read answer leaves the connection unusable
            raise
        if headers.get(b"connection", b"").lower() == b"close":
            await self.close()
        if status != 200:
            raise _HttpStatus(status)
        return body

    async def close(self) -> None:
        if self._streams is not None:
            writer = self._streams[1]
            self._streams = None
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()


class _HttpStatus(Exception):
    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status


def _own_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def main() -> None:
    config = CellConfig.from_json(sys.argv[1])
    result = asyncio.run(_run(config))
    sys.stdout.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
