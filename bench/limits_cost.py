"""`python -m bench.limits_cost`: the CPU a named caller's limits cost per call, on their own.

A whole proxied call costs the server about a millisecond of CPU, and on a shared 2-core machine
that figure moves by more than the limits cost, from one cell to the next. So the limits are
also measured where they run: in this one process, the production caller-limits layer
(`CallerLimitsReranker`) over a reranker that answers at once, with its store in Redis on
loopback, in this process, or no layer at all, `concurrency` calls in flight, alternating in
rounds. The figure is this process's CPU time (user + system: the loopback sockets' kernel work
included) per call, less that of the same calls without the layer, so it is the CPU the limits
add to a server's call: two scripted round trips and the layer's own Python. The Redis store is
run twice, over our client ("redis") and over redis-py's asyncio client ("redis-py",
`bench.redis_py`): the difference is what keeping our own client saves. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from decimal import Decimal
from typing import Any, cast

from bench.redis_py import RedisPyClient
from rerank.server._caller_limits import CallerLimitsReranker
from rerank.server._domain import Caller, ModelInfo, Ranked, RerankOutcome, RerankQuery, Usage
from rerank.server._limits import CallerLimits, InMemoryLimitStore, LimitStore
from rerank.server._redis_client import RedisClient, RedisUrl
from rerank.server._redis_store import RedisLimitStore

#: Every limit set, so every check runs; none reached.
LIMITS = CallerLimits(
    requests_per_second=1e9,
    max_concurrent_calls=1_000_000,
    daily_budget_usd=Decimal(1_000_000),
)
CALLER = Caller(name="bench", limits=LIMITS)
ANSWER = RerankOutcome(
    ranking=(Ranked(0, 0.9),), usage=Usage(cost=Decimal("0.002"), upstream_calls=1)
)


class _Instant:
    """A reranker that answers at once: what is left is the layer's cost."""

    async def rerank(self, query: RerankQuery, *, timeout: float) -> RerankOutcome:
        return ANSWER

    async def list_models(self, *, timeout: float) -> tuple[ModelInfo, ...]:
        return ()

    async def aclose(self) -> None:
        return None


async def _cpu_us_per_call(reranker: Any, calls: int, concurrency: int) -> float:
    query = RerankQuery(
        model="cohere/rerank-v3.5",
        query="q",
        kind="text",
        documents=("a",),
        provider_options={"gateway": {"user": CALLER.name}},
        caller=CALLER,
    )
    per_worker = calls // concurrency

    async def worker() -> None:
        for _ in range(per_worker):
            await reranker.rerank(query, timeout=30.0)

    await asyncio.gather(*(worker() for _ in range(concurrency)))  # warm-up: connect, load
    began = time.process_time()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return (time.process_time() - began) / (per_worker * concurrency) * 1e6


#: The stores `--store` may name: "redis" over our client, "redis-py" over redis-py's.
STORES = ("memory", "redis", "redis-py")


def _store(name: str, redis_url: str) -> LimitStore:
    if name == "memory":
        return InMemoryLimitStore()
    url = RedisUrl.parse(redis_url)
    options: dict[str, Any] = {
        "timeout": 5.0,
        "purpose": "limits",
        "when_down": "the measurement is void",
    }
    client = (
        RedisClient(url, **options)
        # The same interface, as the store uses it (`bench.redis_py`).
        if name == "redis"
        else cast(RedisClient, RedisPyClient(url, **options))
    )
    return RedisLimitStore(client, lease_seconds=60)


async def _run(
    redis_url: str, stores: list[str], calls: int, concurrencies: list[int], rounds: int
) -> Any:
    layers = {name: CallerLimitsReranker(_Instant(), _store(name, redis_url)) for name in stores}
    rows = []
    try:
        for concurrency in concurrencies:
            samples: dict[str, list[float]] = {"none": [], **{name: [] for name in layers}}
            for round_ in range(rounds):
                samples["none"].append(await _cpu_us_per_call(_Instant(), calls, concurrency))
                # Every other round the other way round: no store always follows the same one.
                order = list(layers) if round_ % 2 == 0 else list(reversed(layers))
                for name in order:
                    samples[name].append(await _cpu_us_per_call(layers[name], calls, concurrency))
            added = {
                name: [v - n for v, n in zip(samples[name], samples["none"], strict=True)]
                for name in layers
            }
            rows.append(
                {
                    "concurrency": concurrency,
                    "calls": calls,
                    "rounds": rounds,
                    "cpu_us_per_call": {k: statistics.median(v) for k, v in samples.items()},
                    "added_cpu_us_per_call": {k: statistics.median(v) for k, v in added.items()},
                    "added_cpu_us_by_round": added,
                    "none_us": statistics.median(samples["none"]),
                }
            )
    finally:
        for layer in layers.values():
            await layer.aclose()
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.limits_cost", description=__doc__)
    parser.add_argument("--redis-url", required=True)
    parser.add_argument("--calls", type=int, default=20_000)
    parser.add_argument("--concurrency", type=int, action="append", required=True)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--store",
        choices=STORES,
        action="append",
        help="a store to measure, in this order (default: memory, redis)",
    )
    args = parser.parse_args(argv)
    stores = args.store or ["memory", "redis"]
    rows = asyncio.run(_run(args.redis_url, stores, args.calls, args.concurrency, args.rounds))
    print(json.dumps(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
