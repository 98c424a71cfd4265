"""The batch cell: `compare` runs it from the orchestrator (bench.run), and
`python -m bench.batch CONFIG_JSON` is its load generator, in its own process.

`queries` queries of `documents` documents each, answered two ways in alternating rounds: as
`queries` Rerank calls one after another (each waits for the one before, as a caller looping
over its queries does), and as one BatchRerank of them all. Every query of every round is new
(the server caches identical requests). The server's CPU time (and the mock's) is read from
/proc at each round's edges, so each way's figure covers exactly its own calls; wall time is
per round, from the first request sent to the last answer in.

Requests are bytes built by concatenation, as in `bench.loadgen`, so the generator spends no
CPU on protobuf. The result is one JSON object on stdout.

It runs twice: against the bench's mock, which answers at once, so that the server's CPU is
all there is to see; and against a mock that waits `GATEWAY_LATENCY_MS` per call, a fast
gateway's latency, which is what the batch's fan-out saves a caller's wall time on (with the
mock answering at once, each of this 2-core box's cores is busy either way: the mock's own CPU
for 32 calls bounds the batch's wall time from below).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import grpc

from bench import _workload
from bench._procfs import cpu_seconds
from bench._services import Service, run_json
from rerank.v1 import rerank_service_pb2 as pb

BATCH_METHOD = "/rerank.v1.RerankService/BatchRerank"
MODES = ("sequential", "batch")
#: The cell: 32 queries of 20 documents.
QUERIES = 32
DOCUMENTS = 20
#: The latency per call of the second run's mock: a fast gateway (a real one takes longer).
GATEWAY_LATENCY_MS = 20.0
#: Bound on one generator process beyond its calls' own deadlines.
SLACK_S = 90.0


@dataclass(frozen=True)
class BatchCellConfig:
    """One batch cell against the server at `target`."""

    target: str
    queries: int
    documents: int
    rounds: int
    call_timeout_s: float
    watch_pids: dict[str, int]
    #: The mock gateway's own latency per call, as it was started: a label of the cell.
    gateway_latency_ms: float = 0.0

    @classmethod
    def from_json(cls, text: str) -> BatchCellConfig:
        return cls(**json.loads(text))


def batch_bytes(requests: list[bytes]) -> bytes:
    """A serialized BatchRerankRequest of serialized RerankRequests (field 1, repeated)."""
    return b"".join(b"\x0a" + _workload._varint(len(r)) + r for r in requests)


def _check(mode: str, answers: list[bytes], expected: int, top_n: int) -> None:
    """Fail the cell loudly unless every query was answered with `top_n` documents."""
    if mode == "batch":
        results = pb.BatchRerankResponse.FromString(answers[0]).results
        rankings = [len(r.response.ranking) for r in results if r.HasField("response")]
    else:
        rankings = [len(pb.RerankResponse.FromString(a).ranking) for a in answers]
    if rankings != [top_n] * expected:
        raise RuntimeError(f"{mode}: not every query was answered: {rankings}")


async def _run(config: BatchCellConfig) -> dict[str, Any]:
    _, with_query = _workload.grpc_request_parts(config.documents)
    nonce = secrets.token_hex(4)
    serial = iter(range(1 << 62))

    def fresh_queries() -> list[bytes]:
        return [
            with_query(f"{_workload.QUERY} [{nonce}-{next(serial)}]") for _ in range(config.queries)
        ]

    channel = grpc.aio.insecure_channel(
        config.target, options=[("grpc.max_receive_message_length", 64 * 1024 * 1024)]
    )
    rerank = channel.unary_unary(_workload.RERANK_METHOD, None, None)
    batch = channel.unary_unary(BATCH_METHOD, None, None)

    async def sequential(requests: list[bytes]) -> list[bytes]:
        return [await rerank(r, timeout=config.call_timeout_s) for r in requests]

    async def batched(requests: list[bytes]) -> list[bytes]:
        return [await batch(batch_bytes(requests), timeout=config.call_timeout_s)]

    ways: dict[str, Callable[[list[bytes]], Awaitable[list[bytes]]]] = {
        "sequential": sequential,
        "batch": batched,
    }
    top_n = _workload.top_n(config.documents)
    wall: dict[str, list[float]] = {mode: [] for mode in MODES}
    cpu: dict[str, dict[str, float]] = {
        mode: dict.fromkeys(config.watch_pids, 0.0) for mode in MODES
    }
    try:
        # One round of each first, unmeasured: connections, the server's first calls.
        for mode in MODES:
            _check(mode, await ways[mode](fresh_queries()), config.queries, top_n)
        for _ in range(config.rounds):
            for mode in MODES:
                requests = fresh_queries()
                before = {name: cpu_seconds(pid) for name, pid in config.watch_pids.items()}
                began = time.perf_counter()
                answers = await ways[mode](requests)
                wall[mode].append(time.perf_counter() - began)
                for name, pid in config.watch_pids.items():
                    cpu[mode][name] += cpu_seconds(pid) - before[name]
                _check(mode, answers, config.queries, top_n)
    finally:
        await channel.close(None)

    queries = config.rounds * config.queries
    return {
        "queries": config.queries,
        "documents": config.documents,
        "rounds": config.rounds,
        "gateway_latency_ms": config.gateway_latency_ms,
        "modes": {
            mode: {
                "wall_ms": {
                    "median": 1000 * statistics.median(wall[mode]),
                    "min": 1000 * min(wall[mode]),
                    "max": 1000 * max(wall[mode]),
                },
                "cpu_ms_per_query": {
                    name: 1000 * seconds / queries for name, seconds in cpu[mode].items()
                },
            }
            for mode in MODES
        },
    }


async def generate(config: BatchCellConfig) -> dict[str, Any]:
    """Run one cell in a `bench.batch` process; bounded, killed by PID if it overruns."""
    # Every round makes `queries` + 1 calls, each within its deadline.
    bound = (config.rounds + 1) * (config.queries + 1) * config.call_timeout_s + SLACK_S
    result: dict[str, Any] = await run_json(
        "bench.batch", json.dumps(asdict(config)), timeout=bound, what=f"batch generator {config}"
    )
    return result


def summarize(cell: dict[str, Any]) -> dict[str, float]:
    """The two goals' figures: server CPU per query, sequential ÷ batch (goal ≥ 2), and the
    batch's median wall time ÷ the sequential calls' (goal ≤ 0.25)."""
    sequential, batch = cell["modes"]["sequential"], cell["modes"]["batch"]
    return {
        "cpu_gain": sequential["cpu_ms_per_query"]["server"]
        / max(batch["cpu_ms_per_query"]["server"], 1e-9),
        "wall_share": batch["wall_ms"]["median"] / sequential["wall_ms"]["median"],
    }


async def compare(
    plan_name: str,
    rounds: int,
    out: Path,
    stack: contextlib.ExitStack,
    at_once: tuple[str, dict[str, int]],
    call_timeout_s: float,
    api_key: str,
) -> list[dict[str, Any]]:
    """The cell against `at_once` (the bench's server address and the PIDs to watch, in front
    of its mock), then against a server of its own in front of a mock with latency."""
    mock = stack.enter_context(
        Service(
            "mock gateway (latency)",
            "rerank.mock_gateway",
            [
                *("--host", "127.0.0.1", "--port", "0", "--log-level", "warning"),
                *("--latency-ms", str(GATEWAY_LATENCY_MS)),
            ],
            r"mock gateway listening on (http://\S+)/v4/ai",
            out / f"{plan_name}-mock-latency.log",
        )
    )
    server = stack.enter_context(
        Service(
            "rerank server (latency)",
            "rerank.server",
            [
                *("--host", "127.0.0.1", "--port", "0", "--workers", "1"),
                *("--gateway-url", f"{mock.address}/v3/ai"),
            ],
            r"rerank server listening on (\S+:\d+)",
            out / f"{plan_name}-server-latency.log",
            env={"AI_GATEWAY_API_KEY": api_key, "RERANK_GRACE_PERIOD": "2"},
        )
    )
    runs = [
        (0.0, at_once),
        (GATEWAY_LATENCY_MS, (server.address, {"server": server.pid, "mock": mock.pid})),
    ]
    cells = []
    for latency, (target, pids) in runs:
        cell = await generate(
            BatchCellConfig(
                target=target,
                queries=QUERIES,
                documents=DOCUMENTS,
                rounds=rounds,
                call_timeout_s=call_timeout_s,
                watch_pids=pids,
                gateway_latency_ms=latency,
            )
        )
        cell |= summarize(cell)
        cells.append(cell)
        modes = cell["modes"]
        print(
            f"batch {QUERIES}×{DOCUMENTS} gateway latency {latency:g} ms: server CPU ms/query "
            f"sequential={modes['sequential']['cpu_ms_per_query']['server']:.3f} "
            f"batch={modes['batch']['cpu_ms_per_query']['server']:.3f} "
            f"({cell['cpu_gain']:.2f}×); wall ms sequential="
            f"{modes['sequential']['wall_ms']['median']:.1f} "
            f"batch={modes['batch']['wall_ms']['median']:.1f} ({cell['wall_share']:.2f})",
            flush=True,
        )
    return cells


def main() -> None:
    config = BatchCellConfig.from_json(sys.argv[1])
    result = asyncio.run(_run(config))
    sys.stdout.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
