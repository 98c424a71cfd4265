"""Chaos, in short form: a mock gateway that is slow and fails, several concurrent clients for a
bounded time, then SIGTERM in the middle of the load.

Every call must end OK or with a documented status within its deadline; nothing hangs; the
server's memory stays flat; it leaves no task behind and exits within its grace period.
"""

from __future__ import annotations

import asyncio
import random
import signal
import time
from pathlib import Path

import grpc
import pytest

from rerank.v1 import rerank_service_pb2 as pb
from rerank.v1 import rerank_service_pb2_grpc as pb_grpc
from tests.conftest import SEED_DOCUMENTS, SEED_QUERY
from tests.e2e.processes import RERANK_SERVER, start, start_mock_gateway
from tools.processes import Process
from tools.waiting import until_async

pytestmark = pytest.mark.e2e

DOCUMENTED = {
    grpc.StatusCode.OK,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
}
CLIENTS = 12
GRACE = 3.0
DEADLINE = 1.0
# How late past its deadline a call may end: scheduling on a loaded 2-core machine.
SLACK = 1.0


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def chaos_request(rng: random.Random) -> pb.RerankRequest:
    request = pb.RerankRequest(
        query=SEED_QUERY,
        documents=[pb.Document(text=d) for d in SEED_DOCUMENTS] * rng.randint(1, 30),
        top_n=rng.randint(1, 5),
        bypass_cache=True,  # chaos is about the upstream: every call goes there
    )
    roll = rng.random()
    if roll < 0.1:
        request.query = ""  # invalid
    elif roll < 0.2:
        request.provider_options.update({"mockGateway": {"fault": "slow", "delayMs": 1500}})
    elif roll < 0.25:
        request.provider_options.update({"mockGateway": {"fault": "drop"}})
    return request


class Tally:
    def __init__(self) -> None:
        self.codes: dict[grpc.StatusCode, int] = {}
        self.late: list[float] = []
        #: Set as calls end.
        self.added = asyncio.Event()

    def add(self, code: grpc.StatusCode, elapsed: float) -> None:
        self.codes[code] = self.codes.get(code, 0) + 1
        if elapsed > DEADLINE + SLACK:
            self.late.append(elapsed)
        self.added.set()


async def client(target: str, seed: int, until: float, tally: Tally) -> None:
    rng = random.Random(seed)
    async with grpc.aio.insecure_channel(target) as channel:
        stub = pb_grpc.RerankServiceStub(channel)
        while time.monotonic() < until:
            started = time.monotonic()
            try:
                await stub.Rerank(chaos_request(rng), timeout=DEADLINE)
                code = grpc.StatusCode.OK
            except grpc.aio.AioRpcError as error:
                code = error.code()
            tally.add(code, time.monotonic() - started)
            if code in (grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.UNAVAILABLE):
                await asyncio.sleep(0.05)  # a polite client backs off when told to


async def load(target: str, seconds: float, tally: Tally, first_seed: int) -> None:
    until = time.monotonic() + seconds
    workers = [client(target, first_seed + i, until, tally) for i in range(CLIENTS)]
    # A hang anywhere fails here rather than at the suite's timeout.
    await asyncio.wait_for(asyncio.gather(*workers), seconds + DEADLINE + 10)


def test_chaos_then_sigterm(processes: list[Process]) -> None:
    gateway_url = start_mock_gateway(processes, "--latency-ms", "20", "--error-rate", "0.2")
    server = start(
        processes,
        # One worker: its PID is the process whose memory and tasks are watched.
        [
            RERANK_SERVER,
            "--port",
            "0",
            "--workers",
            "1",
            "--gateway-url",
            gateway_url,
        ],
        {
            "AI_GATEWAY_API_KEY": "chaos",
            "RERANK_GRACE_PERIOD": str(GRACE),
            "RERANK_MAX_CONCURRENT_CALLS": "8",  # below the client count: overload on purpose
            "RERANK_RETRY_INITIAL_BACKOFF": "0.05",
        },
    )
    target = server.wait_for(r"rerank server listening on (\S+:\d+)").group(1)
    pid = server.popen.pid

    warm = Tally()
    asyncio.run(load(target, 2, warm, first_seed=0))
    rss_after_warm_up = rss_kib(pid)
    tally = Tally()
    asyncio.run(load(target, 6, tally, first_seed=100))
    rss_after_load = rss_kib(pid)

    for counts in (warm, tally):
        assert set(counts.codes) <= DOCUMENTED, counts.codes
        assert counts.late == [], f"calls ended past their deadline: {counts.late}"
    # The load really was chaotic: successes, injected failures, overload and deadlines.
    assert tally.codes.get(grpc.StatusCode.OK, 0) > 10, tally.codes
    assert tally.codes.get(grpc.StatusCode.INVALID_ARGUMENT, 0) > 0, tally.codes
    upstream_trouble = (grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.UNAVAILABLE)
    assert sum(tally.codes.get(code, 0) for code in upstream_trouble) > 0, tally.codes
    # Flat memory: six seconds of chaos may not grow the server by more than 20 MiB.
    assert rss_after_load - rss_after_warm_up < 20 * 1024, (rss_after_warm_up, rss_after_load)

    # SIGTERM under load: in-flight calls finish, then the process exits within the grace period.
    async def sigterm_under_load() -> tuple[Tally, float]:
        during = Tally()
        running = asyncio.ensure_future(load(target, 3, during, first_seed=200))
        # Calls have been ending and starting again: the load is on, calls are in flight.
        await until_async(
            lambda: sum(during.codes.values()) >= 2 * CLIENTS,
            "the load running",
            timeout=3,
            changed=during.added,
        )
        server.signal(signal.SIGTERM)
        signalled = time.monotonic()
        await running
        return during, signalled

    during, signalled = asyncio.run(sigterm_under_load())
    # A call that reaches the server while it closes is refused (UNAVAILABLE) or, when grpc had
    # already accepted it but no handler had started, cancelled as the server stops (CANCELLED).
    assert set(during.codes) <= DOCUMENTED | {grpc.StatusCode.CANCELLED}, during.codes
    assert during.late == []
    assert server.popen.wait(timeout=GRACE + 10) == 0
    assert time.monotonic() - signalled < GRACE + 5
    server.wait_for(r"stopped \(0 tasks left\)", timeout=5)
