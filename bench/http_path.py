"""The HTTP paths beside the gRPC path: server CPU per call of a Cohere-shaped `POST /v2/rerank`
and of the AI Gateway protocol's `POST /v4/ai/reranking-model` (20 documents, 32 calls in
flight) against per gRPC `Rerank` call of the same documents, on one server (one worker, both
ports) proxying to the mock gateway.

The paths are measured in alternating rounds (gRPC, Cohere, gateway; then the reverse, ...), so
that each ratio is taken within one round, under the same noise; the figures are the median
ratios and their interquartile ranges. Every call carries a query of its own, so none is a
cache hit.

    python -m bench.http_path [--pairs 7] [--calls 2000]

prints one JSON object; `python -m bench` runs it after its cells (`compare`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import re
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

import grpc
import orjson

from bench import _workload
from bench._procfs import cpu_seconds
from bench._services import Service, mock_gateway, v3_url

DOCUMENTS = 20
CONCURRENCY = 32
API_KEY = "bench"
COHERE_HEAD = b"POST /v2/rerank HTTP/1.1\r\nhost: bench\r\ncontent-type: application/json\r\n"
#: The headers `createGateway` of `ai` 7 sends (less the user agent).
GATEWAY_HEAD = (
    b"POST /v4/ai/reranking-model HTTP/1.1\r\nhost: bench\r\ncontent-type: application/json\r\n"
    b"authorization: Bearer bench\r\nai-gateway-protocol-version: 0.0.1\r\n"
    b"ai-gateway-auth-method: api-key\r\nai-reranking-model-specification-version: 4\r\n"
    b"ai-model-id: %s\r\n" % _workload.MODEL.encode()
)


class _KeptConnection:
    """One keep-alive HTTP/1.1 connection posting JSON bodies after a request head; answers are
    content-length framed (as the server sends them). Cheap on the generator's side, like wrk."""

    def __init__(self, host: str, port: int) -> None:
        self._host, self._port = host, port
        self._streams: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None

    async def post(self, head: bytes, body: bytes) -> None:
        if self._streams is None:
            self._streams = await asyncio.open_connection(self._host, self._port)
        reader, writer = self._streams
        writer.write(head + b"content-length: %d\r\n\r\n%s" % (len(body), body))
        head = await reader.readuntil(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 200"):
            raise RuntimeError(f"the HTTP path answered {head.splitlines()[0]!r}")
        length = re.search(rb"content-length: (\d+)", head, re.IGNORECASE)
        assert length is not None, "the server frames its answers with content-length"
        await reader.readexactly(int(length.group(1)))

    async def close(self) -> None:
        if self._streams is not None:
            writer, self._streams = self._streams[1], None
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()


async def _run_calls(calls: int, call: Any) -> None:
    """`calls` calls, `CONCURRENCY` at a time, each worker calling `call(worker)`."""
    serial = itertools.count()

    async def worker(number: int) -> None:
        while next(serial) < calls:
            await call(number)

    await asyncio.gather(*(worker(n) for n in range(CONCURRENCY)))


async def measure(
    grpc_address: str, http_url: str, pid: int, pairs: int, calls: int
) -> dict[str, Any]:
    """Server CPU µs per call on each path, and their ratios, over `pairs` alternating pairs."""
    documents = _workload.documents(DOCUMENTS)
    top_n = _workload.top_n(DOCUMENTS)
    base, with_query = _workload.grpc_request_parts(DOCUMENTS)
    queries = (f"{_workload.QUERY} [{n}]" for n in itertools.count())
    host, port = http_url.removeprefix("http://").rsplit(":", 1)
    connections = [_KeptConnection(host, int(port)) for _ in range(CONCURRENCY)]
    channel = grpc.aio.insecure_channel(grpc_address)
    # A generic stub: it sends the prepared bytes as they are.
    stub = channel.unary_unary("/rerank.v1.RerankService/Rerank")

    async def grpc_call(_worker: int) -> None:
        await stub(with_query(next(queries)), timeout=30)

    async def http_call(worker: int) -> None:
        body = {"model": _workload.MODEL, "query": next(queries), "documents": documents}
        await connections[worker].post(COHERE_HEAD, orjson.dumps({**body, "top_n": top_n}))

    async def gateway_call(worker: int) -> None:
        body = {"documents": {"type": "text", "values": documents}, "query": next(queries)}
        await connections[worker].post(GATEWAY_HEAD, orjson.dumps({**body, "topN": top_n}))

    paths = {"grpc": grpc_call, "http": http_call, "gateway": gateway_call}

    async def cpu_per_call(path: str) -> float:
        before = cpu_seconds(pid)
        await _run_calls(calls, paths[path])
        spent = (cpu_seconds(pid) - before) / calls * 1e6
        # The server closes connections left idle (RERANK_HTTP_HEADER_TIMEOUT) while the gRPC
        # path runs: each HTTP measurement opens its own.
        for connection in connections:
            await connection.close()
        return spent

    try:
        for path in paths:  # warm both up: connections, caches of code and allocator
            await _run_calls(CONCURRENCY * 4, paths[path])
        figures: dict[str, list[float]] = {path: [] for path in paths}
        for pair in range(pairs):
            order = list(paths) if pair % 2 == 0 else list(reversed(paths))
            for path in order:
                figures[path].append(await cpu_per_call(path))
    finally:
        for connection in connections:
            await connection.close()
        await channel.close()
    return {
        "documents": DOCUMENTS,
        "concurrency": CONCURRENCY,
        "calls_per_measurement": calls,
        "server_cpu_us_per_call": figures,
        "http_over_grpc": _over(figures["http"], figures["grpc"]),
        "gateway_over_grpc": _over(figures["gateway"], figures["grpc"]),
        "base_request_bytes": len(base),
    }


def _over(path: list[float], grpc_path: list[float]) -> dict[str, Any]:
    """The ratios of `path`'s figures to gRPC's, round by round: median and IQR."""
    ratios = sorted(p / g for p, g in zip(path, grpc_path, strict=True))
    quartiles = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else [ratios[0]] * 3
    return {
        "median": statistics.median(ratios),
        "iqr": quartiles[2] - quartiles[0],
        "ratios": ratios,
    }


async def compare(out: Path, pairs: int = 7, calls: int = 2000) -> dict[str, Any]:
    """Start the mock gateway and a server with both ports (logs in `out`), and measure.
    Starting and stopping them blocks the loop on purpose: nothing else runs yet."""
    with (
        mock_gateway(out / "http-path-mock.log") as mock,
        Service(
            "rerank server",
            "rerank.server",
            [
                *("--host", "127.0.0.1", "--port", "0", "--http-port", "0", "--workers", "1"),
                *("--gateway-url", v3_url(mock)),
            ],
            r"rerank server listening on (\S+:\d+)",
            out / "http-path-server.log",
            env={"AI_GATEWAY_API_KEY": API_KEY, "RERANK_DRAIN_DELAY": "0"},
        ) as server,
    ):
        http_url = server.wait_for(r"rerank http listening on (http://\S+)").group(1)
        result = await measure(server.address, http_url, server.pid, pairs, calls)
    ratio = result["http_over_grpc"]
    print(
        f"http path: server CPU per call HTTP/gRPC = {ratio['median']:.2f} "
        f"(IQR {ratio['iqr']:.2f}, {pairs} pairs of {calls} calls)",
        file=sys.stderr,
        flush=True,
    )
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.http_path", description=__doc__)
    parser.add_argument("--pairs", type=int, default=7, help="alternating pairs (default 7)")
    parser.add_argument("--calls", type=int, default=2000, help="calls per measurement")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="rerank-bench-http-") as logs:
        result = asyncio.run(compare(Path(logs), args.pairs, args.calls))
    json.dump(result, sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
