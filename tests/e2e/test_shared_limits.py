"""Two replicas behind the checked-in Envoy share one Redis: one rate limit and one budget for
both, an unlimited caller beside them loses nothing, and with Redis stopped mid-run calls still
succeed (fail open) until, restarted on the same port, it holds the limits again.

Everything is a real process: redis-server, the mock gateway (`--cost-usd 0.001`, so each call
costs exactly that), two `rerank-server` replicas and Envoy. The Redis saves on SIGTERM and
loads on restart, as a Redis that persists would, so the day's spend outlives the outage.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc

from rerank.v1 import rerank_service_pb2 as pb
from rerank.v1 import rerank_service_pb2_grpc as pb_grpc
from tests.conftest import SEED_DOCUMENTS, SEED_QUERY, needs_redis_server
from tests.e2e.processes import RERANK_SERVER, start, start_mock_gateway
from tests.e2e.test_envoy import CHANNEL_OPTIONS, served, start_envoy
from tests.service.calls import unpacked
from tools.processes import Process
from tools.redis_server import RedisServer
from tools.waiting import until_async

pytestmark = pytest.mark.e2e

LIMITED, UNLIMITED, BUDGETED = "limited-token-5ps", "unlimited-token", "budgeted-token"
CALLERS = f"""
[callers.limited]
token = "{LIMITED}"
requests_per_second = 5

[callers.unlimited]
token = "{UNLIMITED}"

[callers.budgeted]
token = "{BUDGETED}"
daily_budget_usd = 0.0025
"""
RATE = 5
BURST = 5
SEQUENTIAL_CALLS = 30
DEADLINE = 10.0


def start_replica(
    processes: list[Process], gateway_url: str, callers: Path, redis: RedisServer
) -> tuple[Process, str]:
    replica = start(
        processes,
        # Each call served has its access-log record, so each replica's share is counted.
        [RERANK_SERVER, "--port", "0", "--workers", "1", "--log-level", "DEBUG"],
        {
            "AI_GATEWAY_API_KEY": "any",
            "RERANK_GATEWAY_URL": gateway_url,
            "RERANK_CALLERS_FILE": str(callers),
            "RERANK_REDIS_URL": redis.url,
            # A loaded test machine must not pass for an outage: this test's outage is real.
            "RERANK_REDIS_TIMEOUT": "2",
            "RERANK_GRACE_PERIOD": "2",
        },
    )
    return replica, replica.wait_for(r"rerank server listening on (\S+:\d+)").group(1)


@dataclass
class Run:
    """Calls one after another, as fast as they come back."""

    codes: list[str]
    seconds: float

    @property
    def ok(self) -> int:
        return self.codes.count("OK")


def code_of(error: grpc.aio.AioRpcError) -> str:
    info = unpacked(error, error_details_pb2.ErrorInfo)
    return info.reason if info is not None else error.code().name


async def sequential(stub: pb_grpc.RerankServiceStub, token: str, calls: int, tag: str) -> Run:
    codes = []
    begun = time.monotonic()
    for n in range(calls):
        request = pb.RerankRequest(
            query=f"{SEED_QUERY} {tag} #{n}",
            documents=[pb.Document(text=d) for d in SEED_DOCUMENTS],
            top_n=2,
        )
        try:
            await stub.Rerank(
                request, metadata=(("authorization", f"Bearer {token}"),), timeout=DEADLINE
            )
            codes.append("OK")
        except grpc.aio.AioRpcError as error:
            codes.append(code_of(error))
    return Run(codes, time.monotonic() - begun)


def assert_one_shared_rate_limit(run: Run, what: str) -> None:
    """About `BURST + RATE·t` of the calls went through, across both replicas, the rest
    refused for the rate; one bucket per replica would have let through about twice as many."""
    allowed = BURST + RATE * run.seconds
    refused = set(run.codes) - {"OK"}
    assert refused <= {"CALLER_RATE_LIMITED"}, (what, run.codes)
    # One call may be in the bucket's refill while the clock is read: +1 of slack.
    assert run.ok <= allowed + 1, (what, run.ok, allowed, run.codes)
    assert run.ok >= min(BURST, SEQUENTIAL_CALLS), (what, run.ok, run.codes)


async def usage(stub: pb_grpc.RerankServiceStub, token: str) -> pb.GetUsageResponse:
    response: pb.GetUsageResponse = await stub.GetUsage(
        pb.GetUsageRequest(), metadata=(("authorization", f"Bearer {token}"),), timeout=DEADLINE
    )
    return response


async def probe_until_shared_again(
    stub: pb_grpc.RerankServiceStub, replicas: list[Process], figures: list[str]
) -> None:
    """Unlimited calls until both replicas have found Redis back (each says so once)."""
    begun = time.monotonic()

    async def back() -> bool:
        if all("is back after" in replica.output for replica in replicas):
            return True
        await sequential(stub, UNLIMITED, 1, "probe")
        return False

    await until_async(back, "the replicas found Redis back", timeout=60, every=0.05)
    figures.append(f"both replicas shared limits again {time.monotonic() - begun:.1f} s")


@pytest.mark.timeout(240)
def test_two_replicas_share_one_limit_and_one_budget_through_an_outage(
    processes: list[Process], tmp_path: Path
) -> None:
    needs_redis_server()
    redis = RedisServer(tmp_path, "--save", "3600 1").start()
    try:
        run_replicas(processes, tmp_path, redis)
    finally:
        redis.stop()


def run_replicas(processes: list[Process], tmp_path: Path, redis: RedisServer) -> None:
    gateway_url = start_mock_gateway(processes, "--cost-usd", "0.001")
    callers = tmp_path / "callers.toml"
    callers.write_text(CALLERS)
    one, one_address = start_replica(processes, gateway_url, callers, redis)
    two, two_address = start_replica(processes, gateway_url, callers, redis)
    admin = start_envoy(processes, tmp_path, [one_address, two_address])
    envoy = processes[-1]
    admin.wait_healthy([one_address, two_address], envoy)
    target = f"127.0.0.1:{admin.listener_port()}"
    figures = asyncio.run(exercise(target, redis, [one, two], [one_address, two_address]))
    print("\n".join(figures))
    hosts = admin.hosts()
    assert all(host["health_flags"] == "healthy" for host in hosts.values()), hosts
    for replica in (one, two):
        # One line for the outage and one for the return, however many calls each saw.
        assert replica.output.count("cannot be used") == 1, replica.output[-3000:]
        assert replica.output.count("is back after") == 1, replica.output[-3000:]


async def exercise(
    target: str, redis: RedisServer, replicas: list[Process], addresses: list[str]
) -> list[str]:
    figures: list[str] = []
    # One channel, one HTTP/2 connection to Envoy: the spread over replicas is Envoy's.
    async with grpc.aio.insecure_channel(target, options=CHANNEL_OPTIONS) as channel:
        stub = pb_grpc.RerankServiceStub(channel)
        health = health_pb2_grpc.HealthStub(channel)

        # A caller limited to 5/s sends 30 calls as fast as it can; an unlimited one beside it.
        before = [served(replica) for replica in replicas]
        limited, unlimited = await asyncio.gather(
            sequential(stub, LIMITED, SEQUENTIAL_CALLS, "rate"),
            sequential(stub, UNLIMITED, SEQUENTIAL_CALLS, "beside"),
        )
        shares = [served(replica) - count for replica, count in zip(replicas, before, strict=True)]
        figures.append(
            f"rate: {limited.ok} of {SEQUENTIAL_CALLS} through in {limited.seconds:.2f} s "
            f"(5 + 5·t = {BURST + RATE * limited.seconds:.1f}), the rest CALLER_RATE_LIMITED; "
            f"unlimited beside it: {unlimited.ok} of {SEQUENTIAL_CALLS}; "
            f"calls served per replica: {shares}"
        )
        assert_one_shared_rate_limit(limited, "both replicas, one Redis")
        assert unlimited.codes == ["OK"] * SEQUENTIAL_CALLS
        assert all(share > 0 for share in shares), shares

        # A budget of 0.0025 USD at 0.001 USD a call: exactly 3 calls through Envoy; then
        # each replica, asked directly (whether Envoy sent it any of the 3 or not), refuses.
        before = [served(replica) for replica in replicas]
        budgeted = await sequential(stub, BUDGETED, 4, "budget")
        shares = [served(replica) - count for replica, count in zip(replicas, before, strict=True)]
        direct = []
        for address in addresses:
            async with grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS) as own:
                run = await sequential(pb_grpc.RerankServiceStub(own), BUDGETED, 1, address)
                direct += run.codes
        standing = await usage(stub, BUDGETED)
        figures.append(
            f"budget: {budgeted.codes} (calls served per replica: {shares}), then each replica "
            f"directly: {direct}; usage: spent {standing.spent_usd} USD, {standing.calls} "
            f"calls, {standing.refused} refused"
        )
        assert budgeted.codes == ["OK"] * 3 + ["CALLER_BUDGET_EXHAUSTED"]
        assert direct == ["CALLER_BUDGET_EXHAUSTED"] * 2
        assert (Decimal(standing.spent_usd), standing.calls, standing.refused) == (
            Decimal("0.003"),
            3,
            3,
        )

        # Redis stopped mid-run: calls go on, decided in each replica; health stays SERVING.
        redis.stop()
        during = await sequential(stub, UNLIMITED, 20, "outage")
        limited_during = await sequential(stub, LIMITED, SEQUENTIAL_CALLS, "outage rate")
        checked = await health.Check(health_pb2.HealthCheckRequest(service=""), timeout=DEADLINE)
        figures.append(
            f"Redis stopped: unlimited {during.ok} of 20 OK; limited {limited_during.ok} of "
            f"{SEQUENTIAL_CALLS} in {limited_during.seconds:.2f} s (a bucket per replica); "
            f"health {health_pb2.HealthCheckResponse.ServingStatus.Name(checked.status)}"
        )
        assert during.codes == ["OK"] * 20
        assert limited_during.ok >= BURST
        assert set(limited_during.codes) <= {"OK", "CALLER_RATE_LIMITED"}
        assert checked.status == health_pb2.HealthCheckResponse.SERVING
        # The spend Redis reported holds in each replica: the budget stays spent.
        budget_during = await sequential(stub, BUDGETED, 2, "outage budget")
        assert budget_during.codes == ["CALLER_BUDGET_EXHAUSTED"] * 2

        # Back on the same port, with what it saved: one limit for both replicas again.
        redis.restart()
        await probe_until_shared_again(stub, replicas, figures)
        again = await sequential(stub, LIMITED, SEQUENTIAL_CALLS, "after")
        budget_after = await sequential(stub, BUDGETED, 2, "after budget")
        standing = await usage(stub, BUDGETED)
        figures.append(
            f"Redis back: limited {again.ok} of {SEQUENTIAL_CALLS} in {again.seconds:.2f} s "
            f"(at most 5 + 5·t = {BURST + RATE * again.seconds:.1f}); budgeted "
            f"{budget_after.codes}; usage: spent {standing.spent_usd} USD, {standing.calls} "
            f"calls, {standing.refused} refused"
        )
        assert_one_shared_rate_limit(again, "after the outage")
        assert budget_after.codes == ["CALLER_BUDGET_EXHAUSTED"] * 2
        # The refusals counted in the replicas while Redis was away were handed back.
        assert (Decimal(standing.spent_usd), standing.calls, standing.refused) == (
            Decimal("0.003"),
            3,
            3 + 2 + 2,
        )
    return figures
