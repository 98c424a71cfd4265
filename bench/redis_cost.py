"""The Redis client cell: a named caller's calls with our Redis client and with redis-py's,
side by side. `python -m bench.redis_cost` runs it on its own; `make bench` runs it too
(`compare`, from `bench.run`).

Our client (`rerank.server._redis_client`) is kept only while redis-py's asyncio client (with
hiredis, its parser when installed) costs the server more than `KEEP_OURS_ABOVE_US` µs of CPU
per named-caller call more than ours. Both are measured in one run, in alternating rounds (each
round runs both, in turn first; the difference is taken within the round, the figure is the
median of the rounds'), two ways:

- whole calls: proxied 20-document calls of a named caller whose limits are in a redis-server
  on loopback (two scripted round trips per call), on two servers alike but for their client:
  `rerank.server`, and `bench.redis_py_server` (redis-py's client behind ours' interface,
  `bench.redis_py`). The server's CPU per call is read from /proc. The figure the rule reads.
- the layer alone: the caller-limits layer over each client in one process
  (`bench.limits_cost`), where a call's CPU does not drown in a whole call's noise.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import re
import statistics
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bench._services import Service, mock_gateway, run_json, v3_url
from bench._workload import BENCH_CALLER_TOKEN, BENCH_CALLERS
from bench.loadgen import CellConfig
from tools.redis_server import INSTALL_HINT, RedisServer, redis_server_binary

#: The rule: redis-py costing more than this much server CPU per call more than ours keeps ours.
KEEP_OURS_ABOVE_US = 25.0
#: Each client's server module: ours, as shipped; redis-py's, swapped in.
SERVERS = {"ours": "rerank.server", "redis-py": "bench.redis_py_server"}
API_KEY = "bench"
CALL_TIMEOUT_S = 30.0
#: Bound on one load generator, beyond its cell's time; and on the layer's process.
SLACK_S = 90.0
LAYER_TIMEOUT_S = 300.0


@dataclass(frozen=True)
class RedisCell:
    """How much of the cell to run."""

    rounds: int = 7
    concurrency: int = 8
    warmup_s: float = 1.0
    duration_s: float = 4.0
    #: Calls per measurement of the layer alone.
    layer_calls: int = 5_000


async def compare(
    cell: RedisCell, out: Path, stack: contextlib.ExitStack, gateway_url: str, redis: RedisServer
) -> dict[str, Any]:
    """Both measurements (see the module doc) against the gateway and Redis given; the
    servers, one per client, are started in `stack`, their logs in `out`."""
    callers = out / "redis-cost-callers.toml"
    callers.write_text(BENCH_CALLERS)
    servers = {
        client: stack.enter_context(
            Service(
                f"rerank server (Redis client: {client})",
                module,
                [
                    *("--host", "127.0.0.1", "--port", "0", "--workers", "1"),
                    *("--gateway-url", gateway_url),
                ],
                r"rerank server listening on (\S+:\d+)",
                out / f"redis-cost-server-{client}.log",
                env={
                    "AI_GATEWAY_API_KEY": API_KEY,
                    "RERANK_GRACE_PERIOD": "2",
                    "RERANK_DRAIN_DELAY": "0",
                    "RERANK_CALLERS_FILE": str(callers),
                    "RERANK_REDIS_URL": redis.url,
                },
            )
        )
        for client, module in SERVERS.items()
    }
    # A first cell each, not counted: a fresh server's first calls cost more than its next.
    for client, server in servers.items():
        await _server_cpu_us(cell, client, server, redis)
    rows = []
    for round_ in range(cell.rounds):
        order = list(servers) if round_ % 2 == 0 else list(reversed(servers))
        cpu_us = {
            client: await _server_cpu_us(cell, client, servers[client], redis) for client in order
        }
        rows.append({"round": round_, "first": order[0], "server_cpu_us_per_call": cpu_us})
        print(
            f"redis client c={cell.concurrency} round {round_ + 1}: server CPU µs/call "
            f"ours={cpu_us['ours']:.0f} redis-py={cpu_us['redis-py']:.0f} "
            f"({cpu_us['redis-py'] - cpu_us['ours']:+.0f})",
            flush=True,
        )
    layer: list[dict[str, Any]] = await run_json(
        "bench.limits_cost",
        *("--redis-url", redis.url, "--store", "redis", "--store", "redis-py"),
        *("--calls", str(cell.layer_calls), "--rounds", str(cell.rounds)),
        *("--concurrency", str(cell.concurrency)),
        timeout=LAYER_TIMEOUT_S,
        what="bench.limits_cost (Redis clients)",
    )
    result = {"cell": asdict(cell), "rounds": rows, "layer": layer, **summarize(rows, layer)}
    print(
        f"redis client: redis-py costs the server {result['whole_added_us']:+.0f} µs/call "
        f"(whole calls, median of {cell.rounds}) and {result['layer_added_us']:+.0f} µs/call "
        f"(the layer alone) more than ours; {result['kept']} stays "
        f"(ours only above +{KEEP_OURS_ABOVE_US:g} µs)",
        flush=True,
    )
    return result


async def _server_cpu_us(
    cell: RedisCell, client: str, server: Service, redis: RedisServer
) -> float:
    """One cell of named-caller calls on `server`: its CPU µs per call."""
    scripts_before = _scripts_run(redis)
    config = CellConfig(
        path="proxied",
        target=server.address,
        documents=20,
        concurrency=cell.concurrency,
        warmup_s=cell.warmup_s,
        duration_s=cell.duration_s,
        max_calls=None,
        call_timeout_s=CALL_TIMEOUT_S,
        watch_pids={"server": server.pid},
        api_key=API_KEY,
        bearer_token=BENCH_CALLER_TOKEN,
    )
    result = await run_json(
        "bench.loadgen",
        json.dumps(asdict(config)),
        timeout=cell.warmup_s + cell.duration_s + 2 * CALL_TIMEOUT_S + SLACK_S,
        what=f"load generator (Redis client: {client})",
    )
    if result["errors"]:
        raise RuntimeError(f"{client}: {result['errors']} calls failed: {result}")
    # Two scripts a call, or the server decided calls itself (Redis away, failing open).
    if _scripts_run(redis) - scripts_before < 2 * result["calls"]:
        raise RuntimeError(f"{client}: calls were decided without Redis; see its log")
    cpu_us: float = 1e6 * result["cpu_s"]["server"] / max(1, result["calls"])
    return cpu_us


def _scripts_run(redis: RedisServer) -> int:
    """How many scripts Redis has run (EVALSHA, and EVAL when it did not have one)."""
    stats: bytes = redis.command("INFO", "commandstats")
    found = re.findall(rb"cmdstat_eval(?:sha)?:calls=(\d+)", stats)
    return sum(int(calls) for calls in found)


def summarize(rows: list[dict[str, Any]], layer: list[dict[str, Any]]) -> dict[str, Any]:
    """redis-py's CPU per call over ours: whole calls' and the layer's median of the rounds'
    differences, and the client the rule keeps."""
    whole = statistics.median(
        r["server_cpu_us_per_call"]["redis-py"] - r["server_cpu_us_per_call"]["ours"] for r in rows
    )
    by_round = layer[0]["added_cpu_us_by_round"]
    layer_added = statistics.median(
        theirs - ours for theirs, ours in zip(by_round["redis-py"], by_round["redis"], strict=True)
    )
    return {
        "whole_added_us": whole,
        "layer_added_us": layer_added,
        "kept": "ours" if whole > KEEP_OURS_ABOVE_US else "redis-py",
    }


async def _main(cell: RedisCell, out: Path) -> dict[str, Any]:
    with contextlib.ExitStack() as stack:
        mock = stack.enter_context(mock_gateway(out / "redis-cost-mock.log"))
        redis = stack.enter_context(RedisServer(out / "redis"))
        return await compare(cell, out, stack, v3_url(mock), redis)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.redis_cost", description=__doc__)
    parser.add_argument("--rounds", type=int, default=RedisCell.rounds)
    parser.add_argument("--concurrency", type=int, default=RedisCell.concurrency)
    parser.add_argument("--duration", type=float, default=RedisCell.duration_s)
    parser.add_argument("--layer-calls", type=int, default=RedisCell.layer_calls)
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args(argv)
    if redis_server_binary() is None:
        parser.error(INSTALL_HINT)
    cell = RedisCell(
        rounds=args.rounds,
        concurrency=args.concurrency,
        duration_s=args.duration,
        layer_calls=args.layer_calls,
    )
    with tempfile.TemporaryDirectory(prefix="redis-cost-") as logs:
        (Path(logs) / "redis").mkdir()
        result = asyncio.run(_main(cell, Path(logs)))
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
