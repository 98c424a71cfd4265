"""The orchestrator: start the processes under test, run the matrix, probe the server's event
loop, compute the ratios, write `bench/results/NAME.{json,md,png}`.

Every process is a child of this one, started with Popen and stopped by its PID; every wait is
bounded. The load of each cell comes from a separate `bench.loadgen` process. What the
figures mean: docs/performance.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import itertools
import json
import os
import platform
import re
import statistics
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from bench import against, bare_proxy, http_path, memory, redis_cost, report
from bench import batch as batch_cell
from bench._procfs import cpu_seconds, memory_kib
from bench._services import Service, mock_gateway, run_json, v3_url
from bench._workload import BENCH_CALLER_TOKEN, BENCH_CALLERS
from bench.loadgen import CellConfig
from tools.redis_server import INSTALL_HINT, RedisServer, redis_server_binary

RESULTS = Path(__file__).resolve().parent / "results"
API_KEY = "bench"
CALL_TIMEOUT_S = 30.0
#: How often the event-loop probe asks the server's health service, and its own deadline.
PROBE_INTERVAL_S = 0.05
PROBE_TIMEOUT_S = 5.0
#: Bound on one load generator process beyond its configured time (start-up, warm-up, drain).
LOADGEN_SLACK_S = 90.0


@dataclass(frozen=True)
class Plan:
    """What to run. The full plan is the matrix docs/performance.md describes; quick and smoke
    trim it."""

    name: str
    concurrencies: tuple[int, ...]
    documents: tuple[int, ...]
    echo_concurrencies: tuple[int, ...]
    warmup_s: float
    duration_s: float
    #: Cells of 1,000 documents stop after this many calls if that comes before the duration.
    max_calls_1000: int
    #: Concurrencies at which proxied 20-document calls are run without limits, with a named
    #: caller's limits counted in the process, and with them in Redis on loopback...
    limit_concurrencies: tuple[int, ...] = ()
    #: ...this many times each, alternating, so that the difference is taken within a round.
    limit_rounds: int = 1
    #: Calls per measurement of the caller-limits layer on its own (`bench.limits_cost`).
    limit_layer_calls: int = 20_000
    #: Alternating pairs of the observability comparison (off, on; then on, off; ...).
    observability_pairs: int = 7
    #: Calls of 1,000 documents held in flight at once for the memory figures (bench/memory.py).
    memory_calls: tuple[int, ...] = (64, 128)
    #: BatchRerank calls of 32 such requests held in flight at once, for the batch's figure.
    memory_batches: tuple[int, ...] = (4, 8)
    #: Rounds of the batch cell (bench.batch): each one BatchRerank and 32 Rerank calls.
    batch_rounds: int = 20
    #: Alternating pairs of `--against REF` (this server, REF's; then REF's, this one; ...).
    against_pairs: int = 7
    #: The Redis client cell (`bench.redis_cost`): ours against redis-py's, alternating.
    redis_cell: redis_cost.RedisCell = field(default_factory=redis_cost.RedisCell)


FULL = Plan(
    "latest",
    (1, 8, 64, 256),
    (1, 20, 100, 1000),
    (1, 8, 64, 256),
    1.0,
    4.0,
    300,
    limit_concurrencies=(1, 8, 64),
    limit_rounds=3,
)
#: `--workers` compared: (documents, concurrency) cells run against one worker and against one
#: per core, back to back. The machine's cores also run the mock and the load generator.
WORKER_CELLS = ((20, 64), (100, 64))
#: Bound on one `bench.limits_cost` process.
LIMITS_COST_TIMEOUT_S = 300.0
QUICK = Plan(
    "quick",
    (1, 64),
    (20, 1000),
    (1, 64),
    0.5,
    1.5,
    150,
    observability_pairs=3,
    limit_concurrencies=(8, 64),
    limit_rounds=3,
    redis_cell=redis_cost.RedisCell(warmup_s=0.5, duration_s=1.5, layer_calls=2_000),
    memory_calls=(64,),
    memory_batches=(4,),
    batch_rounds=8,
)
SMOKE = Plan(
    "smoke",
    (8,),
    (20,),
    (8,),
    0.3,
    1.0,
    50,
    observability_pairs=1,
    limit_concurrencies=(8,),
    limit_rounds=1,
    limit_layer_calls=2_000,
    redis_cell=redis_cost.RedisCell(rounds=1, warmup_s=0.3, duration_s=1.0, layer_calls=500),
    memory_calls=(8,),
    memory_batches=(1,),
    batch_rounds=2,
    against_pairs=1,
)
#: The observability comparison: the proxied 20-document cell at this concurrency, on a server
#: with everything off and one with it on, as below.
OBSERVABILITY_CELL = (20, 8)
#: "On": metrics served on a port, and tracing (on but unsampled: nothing exported) and access
#: logs at their defaults. "Off": no metrics, the OpenTelemetry SDK disabled, successes not
#: logged (docs/design/observability.md says what was measured).
OBSERVABILITY_ON_ARGS = ("--metrics-port", "0")
OBSERVABILITY_ON_ENV: dict[str, str] = {}
OBSERVABILITY_OFF_ENV = {"OTEL_SDK_DISABLED": "true", "RERANK_ACCESS_LOG_SUCCESS_SAMPLE": "0"}
#: Bound on the `bench.recording_cost` process.
RECORDING_COST_TIMEOUT_S = 120.0
#: Scrapes timed, after the pairs, to tell what one costs the server.
SCRAPES = 20


def _machine() -> dict[str, Any]:
    model = ""
    with contextlib.suppress(OSError), open("/proc/cpuinfo", encoding="ascii") as cpuinfo:
        for line in cpuinfo:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {
        "cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)),
        "cpu_model": model,
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "system": f"{platform.system()} {platform.release()}",
        "grpcio": grpc.__version__,
        "load_average_at_start": list(os.getloadavg()),
    }


class LoopProbe:
    """Times `grpc.health.v1.Health/Check` on the server every PROBE_INTERVAL_S.

    The check does no work of its own, so under load its extra latency over the unloaded one
    is how long a ready callback waits for the server's event loop (plus the 2-core box's
    scheduling: this process competes for the cores too). It runs in this process, which is
    otherwise idle during a cell, on its own connection; the server's code is unchanged.
    """

    def __init__(self, target: str) -> None:
        self._channel = grpc.aio.insecure_channel(
            target, options=[("grpc.use_local_subchannel_pool", 1)]
        )
        self._stub = health_pb2_grpc.HealthStub(self._channel)
        self.samples: list[tuple[float, float]] = []  # (monotonic time sent, latency in ms)

    async def close(self) -> None:
        await self._channel.close(None)

    async def check_once(self) -> float:
        began = time.perf_counter()
        try:
            await self._stub.Check(health_pb2.HealthCheckRequest(), timeout=PROBE_TIMEOUT_S)
        except grpc.aio.AioRpcError:
            return PROBE_TIMEOUT_S * 1000  # counted as the longest lag we can tell
        return (time.perf_counter() - began) * 1000

    async def run(self) -> None:
        """Probe until cancelled."""
        while True:
            sent = time.monotonic()
            self.samples.append((sent, await self.check_once()))
            await asyncio.sleep(max(0.0, PROBE_INTERVAL_S - (time.monotonic() - sent)))

    def window(self, start: float, end: float) -> list[float]:
        return [latency for sent, latency in self.samples if start <= sent < end]


async def _loadgen(config: CellConfig) -> dict[str, Any]:
    """Run one cell in a `bench.loadgen` process; bounded, killed by PID if it overruns."""
    bound = config.warmup_s + config.duration_s + 2 * config.call_timeout_s + LOADGEN_SLACK_S
    result: dict[str, Any] = await run_json(
        "bench.loadgen", json.dumps(asdict(config)), timeout=bound, what=f"load generator {config}"
    )
    return result


def _percentiles(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    if not ordered:
        return {"p50": float("nan"), "p99": float("nan"), "max": float("nan"), "samples": 0}

    def rank(q: float) -> float:
        return ordered[min(len(ordered), max(1, round(q * len(ordered) + 0.5))) - 1]

    return {"p50": rank(0.5), "p99": rank(0.99), "max": ordered[-1], "samples": len(ordered)}


def _cells(plan: Plan) -> Iterator[tuple[str, int, int]]:
    """(path, documents, concurrency) in run order: echo first (the floor), then for each
    cell direct and proxied back to back, and after a proxied cell of the bare proxy's size
    the bare proxy, so that the compared figures see the same noise."""
    for concurrency in plan.echo_concurrencies:
        yield "echo", 20, concurrency
    for documents in plan.documents:
        for concurrency in plan.concurrencies:
            yield "direct", documents, concurrency
            yield "proxied", documents, concurrency
            if documents == bare_proxy.DOCUMENTS:
                yield "bare", documents, concurrency


def _bare_proxy(log: Path, mock_url: str) -> Service:
    return Service(
        "bare proxy",
        "bench.bare_proxy",
        ["--host", "127.0.0.1", "--port", "0", "--upstream", mock_url, "--api-key", API_KEY],
        r"bare proxy listening on (\S+:\d+)",
        log,
    )


def _proxied_server_env(cache: bool = True) -> dict[str, str]:
    """The environment of a server under measurement: the server's defaults otherwise, so
    that its CPU per call is what it costs as shipped. `cache` False: the result cache off
    (`RERANK_CACHE_MAX_BYTES=0`), so that no part of it runs for a call."""
    env = {"AI_GATEWAY_API_KEY": API_KEY, "RERANK_GRACE_PERIOD": "2", "RERANK_DRAIN_DELAY": "0"}
    return env if cache else env | {"RERANK_CACHE_MAX_BYTES": "0"}


async def _run(plan: Plan, out: Path) -> dict[str, Any]:
    started = time.monotonic()
    started_at = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    machine = _machine()
    cells: list[dict[str, Any]] = []
    # Starting and stopping the services blocks this loop on purpose: nothing else runs yet.
    with contextlib.ExitStack() as stack:
        mock = stack.enter_context(mock_gateway(out / f"{plan.name}-mock.log"))
        mock_url = v3_url(mock)
        server = stack.enter_context(
            Service(
                "rerank server",
                "rerank.server",
                # One worker: CPU per call and RSS are read from this one PID.
                [
                    "--host",
                    "127.0.0.1",
                    "--port",
                    "0",
                    "--workers",
                    "1",
                    "--gateway-url",
                    mock_url,
                ],
                r"rerank server listening on (\S+:\d+)",
                out / f"{plan.name}-server.log",
                env=_proxied_server_env(),
            )
        )
        echo = stack.enter_context(
            Service(
                "echo server",
                "bench.echo_server",
                ["--host", "127.0.0.1", "--port", "0"],
                r"echo server listening on (\S+:\d+)",
                out / f"{plan.name}-echo.log",
            )
        )
        bare = stack.enter_context(_bare_proxy(out / f"{plan.name}-bare.log", mock_url))
        targets = {
            "direct": (mock_url, {"mock": mock.pid}),
            "proxied": (server.address, {"server": server.pid, "mock": mock.pid}),
            "bare": (bare.address, {"bare": bare.pid, "mock": mock.pid}),
            "echo": (echo.address, {"echo": echo.pid}),
        }
        pids = {"mock": mock.pid, "server": server.pid, "bare": bare.pid, "echo": echo.pid}

        probe = LoopProbe(server.address)
        try:
            # The unloaded latency of the probe, against which lag under load is measured.
            for _ in range(5):
                await probe.check_once()  # connect and warm up
            unloaded = _percentiles([await probe.check_once() for _ in range(40)])
            for path, documents, concurrency in _cells(plan):
                target, watch = targets[path]
                config = CellConfig(
                    path=path,
                    target=target,
                    documents=documents,
                    concurrency=concurrency,
                    warmup_s=plan.warmup_s,
                    duration_s=plan.duration_s,
                    max_calls=plan.max_calls_1000 if documents >= 1000 else None,
                    call_timeout_s=CALL_TIMEOUT_S,
                    watch_pids=watch,
                    api_key=API_KEY,
                )
                probing = asyncio.create_task(probe.run()) if path == "proxied" else None
                try:
                    result = await _loadgen(config)
                finally:
                    if probing is not None:
                        probing.cancel()
                        with contextlib.suppress(asyncio.CancelledError):
                            await probing
                cells.append(_cell(result, pids, probe, unloaded["p50"]))
                probe.samples.clear()
                _progress(cells[-1])
        finally:
            await probe.close()
        workers = await _compare_workers(plan, out, stack, mock_url, server.address)
        limits = await _compare_limits(plan, out, stack, mock_url, server)
        redis_clients = await _compare_redis_clients(plan, out, stack, mock_url)
        observability = await _compare_observability(plan, out, stack, mock_url)
        batch = await batch_cell.compare(
            plan.name,
            plan.batch_rounds,
            out,
            stack,
            (server.address, {"server": server.pid, "mock": mock.pid}),
            CALL_TIMEOUT_S,
            API_KEY,
        )
    # Its own processes: a mock that holds every call, a fresh server per measurement.
    memory_rows = await memory.measure(plan.memory_calls, plan.memory_batches, out, plan.name)
    http = await http_path.compare(out, plan.observability_pairs)  # HTTP beside gRPC
    machine["load_average_at_end"] = list(os.getloadavg())
    results: dict[str, Any] = {
        "plan": asdict(plan),
        "started_at": started_at,
        "wall_s": time.monotonic() - started,
        "machine": machine,
        "probe_unloaded_ms": unloaded,
        "call_timeout_s": CALL_TIMEOUT_S,
        "cells": cells,
        "workers": workers,
        "limits": limits,
        "redis_clients": redis_clients,
        "batch": batch,
        "observability": observability,
        "memory": memory_rows,
        "http_path": http,
    }
    results["ratios"] = _ratios(results)
    return results


async def _compare_workers(
    plan: Plan, out: Path, stack: contextlib.ExitStack, gateway_url: str, one_worker: str
) -> list[dict[str, Any]]:
    """Throughput of the same proxied cells on one worker and on one worker per core."""
    if plan is SMOKE:
        return []
    cores = len(os.sched_getaffinity(0))
    many = stack.enter_context(
        Service(
            "rerank server (workers)",
            "rerank.server",
            [
                *("--host", "127.0.0.1", "--port", "0"),
                *("--workers", str(cores), "--gateway-url", gateway_url),
            ],
            r"rerank server listening on (\S+:\d+)",
            out / f"{plan.name}-server-workers.log",
            env=_proxied_server_env(),
        )
    )
    rows = []
    for documents, concurrency in WORKER_CELLS:
        for count, target in ((1, one_worker), (cores, many.address)):
            result = await _loadgen(
                CellConfig(
                    path="proxied",
                    target=target,
                    documents=documents,
                    concurrency=concurrency,
                    warmup_s=plan.warmup_s,
                    duration_s=plan.duration_s,
                    max_calls=None,
                    call_timeout_s=CALL_TIMEOUT_S,
                    watch_pids={},
                    api_key=API_KEY,
                )
            )
            row = {
                "workers": count,
                "documents": documents,
                "concurrency": concurrency,
                "throughput": result["throughput"],
                "latency_ms": result["latency_ms"],
                "errors": result["errors"],
            }
            rows.append(row)
            print(
                f"workers={count} docs={documents:>4} c={concurrency:>3} "
                f"{row['throughput']:8.1f} calls/s  p50={row['latency_ms']['p50']:8.2f} ms  "
                f"errors={row['errors']}",
                flush=True,
            )
    return rows


async def _compare_limits(
    plan: Plan, out: Path, stack: contextlib.ExitStack, gateway_url: str, plain: Service
) -> dict[str, Any]:
    """The server CPU a named caller's limits cost per call, two ways. `cells`: the same
    proxied cells on the server without callers, on one whose limits are counted in the
    process, and on one whose limits are in a redis-server on loopback (two scripted round
    trips per call), back to back at each concurrency. `layer`: the caller-limits layer on its
    own, in one process (`bench.limits_cost`), whose CPU per call does not drown in a whole
    call's noise."""
    if not plan.limit_concurrencies:
        return {}
    if redis_server_binary() is None:
        print(f"bench: limits cells skipped: {INSTALL_HINT}", flush=True)
        return {}
    redis_dir = out / f"{plan.name}-redis"
    redis_dir.mkdir(exist_ok=True)
    redis = stack.enter_context(RedisServer(redis_dir))
    callers = out / f"{plan.name}-callers.toml"
    callers.write_text(BENCH_CALLERS)
    servers = {"none": plain}
    for store, extra in (("memory", {}), ("redis", {"RERANK_REDIS_URL": redis.url})):
        servers[store] = stack.enter_context(
            Service(
                f"rerank server (limits: {store})",
                "rerank.server",
                [
                    *("--host", "127.0.0.1", "--port", "0", "--workers", "1"),
                    *("--gateway-url", gateway_url),
                ],
                r"rerank server listening on (\S+:\d+)",
                out / f"{plan.name}-server-limits-{store}.log",
                env={
                    "AI_GATEWAY_API_KEY": API_KEY,
                    "RERANK_GRACE_PERIOD": "2",
                    "RERANK_CALLERS_FILE": str(callers),
                    **extra,
                },
            )
        )
    rows = []
    for concurrency, round_ in itertools.product(
        plan.limit_concurrencies, range(plan.limit_rounds)
    ):
        for store, server in servers.items():
            watch = {"server": server.pid}
            if store == "redis":
                watch["redis"] = redis.pid
            result = await _loadgen(
                CellConfig(
                    path="proxied",
                    target=server.address,
                    documents=20,
                    concurrency=concurrency,
                    warmup_s=plan.warmup_s,
                    duration_s=plan.duration_s,
                    max_calls=None,
                    call_timeout_s=CALL_TIMEOUT_S,
                    watch_pids=watch,
                    api_key=API_KEY,
                    bearer_token=None if store == "none" else BENCH_CALLER_TOKEN,
                )
            )
            completed = max(1, result["calls"] + result["errors"])
            row = {
                "limits": store,
                "round": round_,
                "documents": 20,
                "concurrency": concurrency,
                "throughput": result["throughput"],
                "latency_ms": result["latency_ms"],
                "errors": result["errors"],
                "error_kinds": result["error_kinds"],
                "cpu_ms_per_call": {
                    name: 1000 * seconds / completed for name, seconds in result["cpu_s"].items()
                },
            }
            rows.append(row)
            cpu = " ".join(f"{k}={v:.3f}" for k, v in row["cpu_ms_per_call"].items())
            print(
                f"limits={store:>6} docs=  20 c={concurrency:>3} {row['throughput']:8.1f} calls/s"
                f"  p50={row['latency_ms']['p50']:8.2f} ms  errors={row['errors']}  "
                f"cpu ms/call: {cpu}",
                flush=True,
            )
    layer = await _limits_cost(plan, redis.url)
    for row in layer:
        added = " ".join(f"{k}=+{v:.1f}" for k, v in row["added_cpu_us_per_call"].items())
        print(
            f"limits layer alone c={row['concurrency']:>3}: CPU µs/call added {added}", flush=True
        )
    return {"cells": rows, "layer": layer}


async def _compare_redis_clients(
    plan: Plan, out: Path, stack: contextlib.ExitStack, gateway_url: str
) -> dict[str, Any]:
    """The Redis client cell (`bench.redis_cost`), against a redis-server of its own."""
    if redis_server_binary() is None:
        print(f"bench: Redis client cell skipped: {INSTALL_HINT}", flush=True)
        return {}
    redis_dir = out / f"{plan.name}-redis-clients"
    redis_dir.mkdir(exist_ok=True)
    redis = stack.enter_context(RedisServer(redis_dir))
    return await redis_cost.compare(plan.redis_cell, redis_dir, stack, gateway_url, redis)


async def _limits_cost(plan: Plan, redis_url: str) -> list[dict[str, Any]]:
    """Run `bench.limits_cost` in a process of its own; bounded, killed by PID if it overruns."""
    concurrencies = [arg for c in plan.limit_concurrencies for arg in ("--concurrency", str(c))]
    rows: list[dict[str, Any]] = await run_json(
        "bench.limits_cost",
        *("--redis-url", redis_url, "--calls", str(plan.limit_layer_calls)),
        *("--rounds", str(plan.limit_rounds), *concurrencies),
        timeout=LIMITS_COST_TIMEOUT_S,
        what="bench.limits_cost",
    )
    return rows


async def _compare_observability(
    plan: Plan, out: Path, stack: contextlib.ExitStack, gateway_url: str
) -> dict[str, Any]:
    """Server CPU per call with observability on ÷ all off, on the same proxied cell, the two
    servers alternated pair after pair (off-on, on-off, ...) so drift and noise on the shared
    box fall on both; the median of the pairs' ratios is the figure."""
    off = stack.enter_context(
        Service(
            "rerank server (observability off)",
            "rerank.server",
            [
                *("--host", "127.0.0.1", "--port", "0", "--workers", "1"),
                *("--gateway-url", gateway_url),
            ],
            r"rerank server listening on (\S+:\d+)",
            out / f"{plan.name}-server-observability-off.log",
            env={"AI_GATEWAY_API_KEY": API_KEY, "RERANK_GRACE_PERIOD": "2"} | OBSERVABILITY_OFF_ENV,
        )
    )
    on = stack.enter_context(
        Service(
            "rerank server (observability on)",
            "rerank.server",
            [
                *("--host", "127.0.0.1", "--port", "0", "--workers", "1"),
                *("--gateway-url", gateway_url, *OBSERVABILITY_ON_ARGS),
            ],
            r"rerank server listening on (\S+:\d+)",
            out / f"{plan.name}-server-observability.log",
            env={"AI_GATEWAY_API_KEY": API_KEY, "RERANK_GRACE_PERIOD": "2"} | OBSERVABILITY_ON_ENV,
        )
    )
    documents, concurrency = OBSERVABILITY_CELL

    async def cpu_per_call(server: Service) -> float:
        result = await _loadgen(
            CellConfig(
                path="proxied",
                target=server.address,
                documents=documents,
                concurrency=concurrency,
                warmup_s=plan.warmup_s,
                duration_s=plan.duration_s,
                max_calls=None,
                call_timeout_s=CALL_TIMEOUT_S,
                watch_pids={"server": server.pid},
                api_key=API_KEY,
            )
        )
        cpu: float = 1000 * result["cpu_s"]["server"] / max(1, result["calls"] + result["errors"])
        return cpu

    pairs = []
    for number in range(plan.observability_pairs):
        order = (off, on) if number % 2 == 0 else (on, off)
        measured = {id(server): await cpu_per_call(server) for server in order}
        pair = {"off_ms": measured[id(off)], "on_ms": measured[id(on)]}
        pair["ratio"] = pair["on_ms"] / pair["off_ms"]
        pairs.append(pair)
        print(
            f"observability pair {number + 1}: server CPU ms/call off={pair['off_ms']:.3f} "
            f"on={pair['on_ms']:.3f} ratio={pair['ratio']:.3f}",
            flush=True,
        )
    scrape = _time_scrapes(on)
    with tempfile.TemporaryDirectory(prefix="rerank-bench-metrics-") as metrics_files:
        recording: float = await run_json(
            "bench.recording_cost",
            timeout=RECORDING_COST_TIMEOUT_S,
            what="bench.recording_cost",
            # The server's storage: prometheus-client's files, chosen when it is imported.
            env={"PROMETHEUS_MULTIPROC_DIR": metrics_files},
        )
    print(f"metrics recorded by one proxied call: {recording:.1f} µs", flush=True)
    return {
        "documents": documents,
        "concurrency": concurrency,
        "on": {"args": list(OBSERVABILITY_ON_ARGS), "env": OBSERVABILITY_ON_ENV},
        "pairs": pairs,
        "median_ratio": statistics.median(p["ratio"] for p in pairs),
        "scrape": scrape,
        "recording_us": recording,
    }


@dataclass(frozen=True)
class AgainstCell:
    """The proxied cell `--against` runs on both servers."""

    documents: int = 20
    concurrency: int = 32
    #: The result cache on (every call a miss: each query is new) or off (`--cache-off`).
    cache: bool = True


async def _run_against(
    plan: Plan,
    ref: against.Ref,
    ref_python: Path | None,
    cell: AgainstCell,
    pairs: int,
    out: Path,
) -> dict[str, Any]:
    """This checkout's server and REF's, each one worker in front of one mock, the same proxied
    cell run on each in alternating pairs (this, REF; then REF, this; ...) so that the noise and
    drift of the shared machine fall on both; each pair gives this ÷ REF of each figure.
    `ref_python` None: REF is the bare proxy (`--floor`), sent the same calls."""
    started = time.monotonic()
    started_at = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    machine = _machine()
    stem = f"against-{ref.short}" + ("" if cell.cache else "-cache-off")
    runs: list[dict[str, Any]] = []
    pair_rows: list[dict[str, Any]] = []
    with contextlib.ExitStack() as stack:
        mock = stack.enter_context(mock_gateway(out / f"{stem}-mock.log"))
        servers = {
            side: stack.enter_context(
                Service(
                    f"rerank server ({side})",
                    "rerank.server",
                    [
                        *("--workers", "1", "--metrics-port", "0"),
                        *("--host", "127.0.0.1", "--port", "0", "--gateway-url", v3_url(mock)),
                    ],
                    r"rerank server listening on (\S+:\d+)",
                    out / f"{stem}-server-{side}.log",
                    env=_proxied_server_env(cell.cache),
                    python=python,
                )
                if python is not None
                else _bare_proxy(out / f"{stem}-bare.log", v3_url(mock))
            )
            for side, python in ((against.THIS, Path(sys.executable)), (against.REF, ref_python))
        }
        paths = {against.THIS: "proxied", against.REF: "proxied" if ref_python else "bare"}
        for number in range(pairs):
            measured: dict[str, dict[str, Any]] = {}
            for position, side in enumerate(against.pair_order(number)):
                server = servers[side]
                result = await _loadgen(
                    CellConfig(
                        path=paths[side],
                        target=server.address,
                        documents=cell.documents,
                        concurrency=cell.concurrency,
                        warmup_s=plan.warmup_s,
                        duration_s=plan.duration_s,
                        max_calls=None,
                        call_timeout_s=CALL_TIMEOUT_S,
                        watch_pids={"server": server.pid, "mock": mock.pid},
                        api_key=API_KEY,
                    )
                )
                completed = max(1, result["calls"] + result["errors"])
                measured[side] = {
                    "pair": number,
                    "position": position,
                    "server": side,
                    "calls": result["calls"],
                    "errors": result["errors"],
                    "error_kinds": result["error_kinds"],
                    "throughput": result["throughput"],
                    "latency_ms": result["latency_ms"],
                    "window_s": result["window_s"],
                    "cpu_ms_per_call": {
                        name: 1000 * seconds / completed
                        for name, seconds in result["cpu_s"].items()
                    },
                }
                runs.append(measured[side])
            row = against.pair_ratios(number, measured[against.THIS], measured[against.REF])
            pair_rows.append(row)
            print(report.against_pair_line(row), flush=True)
    machine["load_average_at_end"] = list(os.getloadavg())
    return {
        "plan": asdict(plan),
        "started_at": started_at,
        "wall_s": time.monotonic() - started,
        "machine": machine,
        "this": against.describe_checkout(),
        "ref": {"name": ref.name, "sha": ref.sha},
        "cell": {"path": "proxied", **asdict(cell)},
        "call_timeout_s": CALL_TIMEOUT_S,
        "quartiles": against.QUARTILES,
        "runs": runs,
        "pairs": pair_rows,
        "summary": against.summarize(pair_rows),
    }


def _time_scrapes(server: Service) -> dict[str, float]:
    """Server CPU per scrape of its `/metrics` (the scrapes are not in the pairs' windows: a
    scrape every 15 s costs per scrape, not per call)."""
    found = re.search(r"rerank metrics on (http://\S+)", server.output)
    assert found, server.output
    before = cpu_seconds(server.pid)
    size = 0
    for _ in range(SCRAPES):
        with urllib.request.urlopen(found.group(1), timeout=30) as response:
            size = len(response.read())
    return {"cpu_ms": 1000 * (cpu_seconds(server.pid) - before) / SCRAPES, "bytes": size}


def _cell(
    result: dict[str, Any], pids: dict[str, int], probe: LoopProbe, unloaded_p50: float
) -> dict[str, Any]:
    completed = max(1, result["calls"] + result["errors"])
    cell = dict(result)
    cell["cpu_ms_per_call"] = {
        name: 1000 * seconds / completed for name, seconds in result["cpu_s"].items()
    }
    cell["generator_cpu_ms_per_call"] = 1000 * result["generator_cpu_s"] / completed
    # VmHWM is the peak over the process's life so far, i.e. up to and including this cell.
    cell["memory_kib"] = {
        name: dict(zip(("rss", "hwm"), memory_kib(pid), strict=True))
        for name, pid in pids.items()
        if name in result["cpu_s"]
    }
    if result["path"] == "proxied":
        lag = _percentiles(probe.window(result["window_start"], result["window_end"]))
        cell["loop_lag_ms"] = {
            key: (value - unloaded_p50 if key != "samples" else value) for key, value in lag.items()
        }
    return cell


def _find(results: dict[str, Any], path: str, documents: int, concurrency: int) -> Any:
    for cell in results["cells"]:
        if (cell["path"], cell["documents"], cell["concurrency"]) == (
            path,
            documents,
            concurrency,
        ):
            return cell
    return None


def _ratios(results: dict[str, Any]) -> dict[str, Any]:
    """The goals, each from figures of this one run."""
    ratios: dict[str, Any] = {}
    # The headline: the server's own work per call, over the least a Python proxy does.
    for concurrency in results["plan"]["concurrencies"]:
        proxied = _find(results, "proxied", bare_proxy.DOCUMENTS, concurrency)
        bare = _find(results, "bare", bare_proxy.DOCUMENTS, concurrency)
        if proxied and bare:
            ratios[f"cpu_proxied20_over_bare_c{concurrency}"] = (
                proxied["cpu_ms_per_call"]["server"] / bare["cpu_ms_per_call"]["bare"]
            )
    for concurrency in (1, 64, 8):
        proxied = _find(results, "proxied", 20, concurrency)
        echo = _find(results, "echo", 20, concurrency)
        if proxied and echo:
            ratios[f"cpu_proxied20_over_echo_c{concurrency}"] = (
                proxied["cpu_ms_per_call"]["server"] / echo["cpu_ms_per_call"]["echo"]
            )
    for concurrency in (1, 8):
        proxied = _find(results, "proxied", 20, concurrency)
        direct = _find(results, "direct", 20, concurrency)
        if proxied and direct:
            ratios[f"added_p50_ms_c{concurrency}_20docs"] = (
                proxied["latency_ms"]["p50"] - direct["latency_ms"]["p50"]
            )
    for concurrency in (64, 8):
        proxied = _find(results, "proxied", 20, concurrency)
        if proxied:
            ratios[f"loop_lag_ms_c{concurrency}_20docs"] = proxied["loop_lag_ms"]
    limits = results.get("limits") or {}
    # Whole calls: the median over rounds of the difference within each round (the machine's
    # noise moves both figures of a round alike).
    cpu = {
        (r["limits"], r["concurrency"], r["round"]): r["cpu_ms_per_call"]["server"]
        for r in limits.get("cells", [])
    }
    added: dict[tuple[str, int], list[float]] = {}
    for (store, concurrency, round_), value in cpu.items():
        plain = cpu.get(("none", concurrency, round_))
        if store != "none" and plain is not None:
            added.setdefault((store, concurrency), []).append(value - plain)
    for (store, concurrency), differences in added.items():
        ratios[f"limits_{store}_added_server_cpu_ms_c{concurrency}"] = statistics.median(
            differences
        )
    # The layer alone: the goal's figure.
    for row in limits.get("layer", []):
        for store, microseconds in row["added_cpu_us_per_call"].items():
            ratios[f"limits_{store}_added_cpu_ms_c{row['concurrency']}"] = microseconds / 1000
    # Memory: the most calls held, where one call's share is measured best.
    for row in results.get("memory", []):
        key = f"memory_per_request_byte_{row['mode']}"
        if row["calls"] >= ratios.get(f"{key}_calls", 0):
            ratios[key] = row["held_per_request_byte"]
            ratios[f"{key}_calls"] = row["calls"]
    return ratios


def _progress(cell: dict[str, Any]) -> None:
    cpu = " ".join(f"{k}={v:.2f}" for k, v in cell["cpu_ms_per_call"].items())
    lag = cell.get("loop_lag_ms")
    print(
        f"{cell['path']:>7} docs={cell['documents']:>4} c={cell['concurrency']:>3} "
        f"{cell['throughput']:8.1f} calls/s  p50={cell['latency_ms']['p50']:8.2f} "
        f"p99={cell['latency_ms']['p99']:8.2f} ms  errors={cell['errors']}  cpu ms/call: {cpu}"
        + (f"  lag p50={lag['p50']:.1f} p99={lag['p99']:.1f} ms" if lag else ""),
        flush=True,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--smoke", action="store_true", help="one tiny cell per path, ~10 s")
    mode.add_argument(
        "--quick", action="store_true", help="half durations, trimmed matrix (or BENCH_QUICK=1)"
    )
    parser.add_argument("--out", type=Path, default=RESULTS, help="results folder")
    parser.add_argument(
        "--against",
        metavar="REF",
        help="instead of the matrix: this checkout's server against REF's (a commit, tag or "
        "branch, built in a virtualenv of its own), the same proxied cell in alternating pairs",
    )
    parser.add_argument(
        "--floor",
        action="store_true",
        help="instead of the matrix: this checkout's proxied cell against the bare proxy "
        "(bench.bare_proxy) in alternating pairs: the headline ratio with its IQR",
    )
    parser.add_argument(
        "--pairs",
        type=int,
        help=f"--against: alternating pairs (default {FULL.against_pairs}; "
        f"{SMOKE.against_pairs} with --smoke)",
    )
    parser.add_argument(
        "--documents",
        type=int,
        help=f"--against: documents per call (default {AgainstCell.documents})",
    )
    parser.add_argument(
        "--concurrency",
        type=int,
        help=f"--against: calls in flight (default {AgainstCell.concurrency})",
    )
    parser.add_argument(
        "--cache-off",
        action="store_true",
        help="--against, --floor: servers with the result cache off (RERANK_CACHE_MAX_BYTES=0) "
        "instead of on with every call a miss",
    )
    args = parser.parse_args(argv)
    if args.floor and args.against is not None:
        parser.error("--floor and --against each choose what the pairs compare: one of them")
    if args.floor and args.documents not in (None, bare_proxy.DOCUMENTS):
        parser.error(f"--floor: the bare proxy forwards {bare_proxy.DOCUMENTS} documents")
    if (
        args.against is None
        and not args.floor
        and ((args.pairs, args.documents, args.concurrency) != (None,) * 3 or args.cache_off)
    ):
        parser.error(
            "--pairs, --documents, --concurrency and --cache-off apply to --against and --floor"
            " only"
        )
    if any(
        value is not None and value < 1 for value in (args.pairs, args.documents, args.concurrency)
    ):
        parser.error("--pairs, --documents and --concurrency take a whole number from 1")
    if args.smoke:
        plan = SMOKE
    elif args.quick or os.environ.get("BENCH_QUICK", "") not in ("", "0"):
        plan = QUICK
    else:
        plan = FULL
    if args.floor:
        return _main_against(plan, against.Ref("the bare proxy", "bare"), args)
    if args.against is not None:
        try:
            ref = against.resolve(args.against)
        except against.UnknownRefError as error:
            print(f"bench: {error}", file=sys.stderr)
            return 2
        return _main_against(plan, ref, args)
    print(f"bench: plan {plan.name}, writing {plan.name}.{{json,md,png}}", flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    results = asyncio.run(_run(plan, args.out))
    report.write(results, args.out / plan.name)
    print(report.summary(results), flush=True)
    print(f"bench: done in {results['wall_s']:.0f} s", flush=True)
    return 0


def _main_against(plan: Plan, ref: against.Ref, args: argparse.Namespace) -> int:
    cell = AgainstCell(
        documents=args.documents or AgainstCell.documents,
        concurrency=args.concurrency or AgainstCell.concurrency,
        cache=not args.cache_off,
    )
    pairs = args.pairs or plan.against_pairs
    stem = f"against-{ref.short}" + ("" if cell.cache else "-cache-off")
    print(
        f"bench: plan {plan.name}, this checkout against {ref.name} ({ref.short}), "
        f"{pairs} pair(s), writing {stem}.{{json,md}}",
        flush=True,
    )
    args.out.mkdir(parents=True, exist_ok=True)
    ref_python = None if args.floor else against.installed_python(ref, args.out / "against")
    results = asyncio.run(_run_against(plan, ref, ref_python, cell, pairs, args.out))
    report.write_against(results, args.out / stem)
    print(report.against_summary(results), flush=True)
    print(f"bench: done in {results['wall_s']:.0f} s", flush=True)
    return 0
