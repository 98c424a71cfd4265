"""Metrics end to end: `--workers 2` under a real Prometheus (Debian's binary), a worker killed
without losing its counts, our exposition through `promtool check metrics`, and the alert rules
through `promtool test rules`."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import threading
import urllib.parse
import urllib.request
from decimal import Decimal
from pathlib import Path
from typing import Any

import grpc
import pytest

from rerank.v1 import rerank_service_pb2 as pb
from rerank.v1 import rerank_service_pb2_grpc as pb_grpc
from tests.conftest import REPO_ROOT, SEED_DOCUMENTS, SEED_MODEL, SEED_QUERY, missing_tool
from tests.dashboard import dashboard_expressions
from tests.e2e.processes import RERANK_SERVER, start
from tests.scrapes import Scrape
from tools.processes import Process
from tools.waiting import until

pytestmark = pytest.mark.e2e

RERANK = "rerank.v1.RerankService/Rerank"
RULES = REPO_ROOT / "deploy" / "prometheus"


def debian_tool(name: str) -> str:
    """The path of `name` from Debian's `prometheus` package; a missing one says what to
    install (and fails under CI, which installs it: nothing may skip there)."""
    found = shutil.which(name)
    if found is None:
        missing_tool(
            f"{name} not found: apt-get install prometheus (Debian's package; .ci/run does)"
        )
    return found


def start_metrics_server(processes: list[Process], *args: str) -> tuple[Process, str, str]:
    """A server with metrics on a free port: the process, its gRPC target, its metrics URL."""
    server = start(
        processes,
        [RERANK_SERVER, "--port", "0", "--metrics-port", "0", *args],
        {"RERANK_GRACE_PERIOD": "1"},
    )
    target = server.wait_for(r"rerank server listening on (\S+:\d+)").group(1)
    url = server.wait_for(r"rerank metrics on (http://\S+/metrics)").group(1)
    return server, target, url


def rerank_calls(target: str, queries: list[str], connections: int) -> list[Decimal]:
    """One call per query, over `connections` connections at once (the kernel spreads new
    connections over the workers); the cost the gateway reported for each."""
    costs: list[Decimal] = []
    lock = threading.Lock()

    def connection(share: list[str]) -> None:
        options = [("grpc.use_local_subchannel_pool", 1)]
        with grpc.insecure_channel(target, options=options) as channel:
            stub = pb_grpc.RerankServiceStub(channel)
            for query in share:
                request = pb.RerankRequest(
                    model=SEED_MODEL,
                    query=query,
                    documents=[pb.Document(text=d) for d in SEED_DOCUMENTS],
                )
                response = stub.Rerank(request, timeout=30)
                with lock:
                    costs.append(Decimal(response.provider_metadata["gateway"]["cost"]))

    threads = [
        threading.Thread(target=connection, args=(queries[n::connections],))
        for n in range(connections)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert len(costs) == len(queries)
    return costs


def workers_of(server: Process) -> list[int]:
    pid = server.popen.pid
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return [int(child) for child in children]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def test_a_killed_worker_keeps_its_counts(processes: list[Process]) -> None:
    server, target, url = start_metrics_server(processes, "--workers", "2", "--log-level", "DEBUG")
    rerank_calls(target, [f"{SEED_QUERY} {n}" for n in range(24)], connections=24)
    served = re.findall(
        r"(\d+) INFO rerank\.access: rerank\.v1\.RerankService/Rerank OK", server.output
    )
    by_worker = {int(pid): served.count(pid) for pid in set(served)}
    assert set(by_worker) == set(workers_of(server)), by_worker  # both served some

    victim = min(by_worker)
    os.kill(victim, signal.SIGKILL)
    # Once the parent has seen it die, its live gauges drop out; the parent then replaces it,
    # so two circuits are left (the survivor's and the replacement's), not three.
    slot = server.wait_for(rf"worker (\d) \(pid {victim}\) died").group(1)
    server.wait_for(rf"worker {slot} \(pid (?!{victim}\b)\d+\) listening")
    until(
        lambda: Scrape.at(url).total("rerank_circuit_breaker_state", state="closed") == 2,
        "live workers' circuits",
        timeout=30,
        every=0.1,
    )
    rerank_calls(target, [f"{SEED_QUERY} after {n}" for n in range(6)], connections=2)
    after = Scrape.at(url)
    assert after.total("grpc_server_call_started_total", grpc_method=RERANK) == 24 + 6
    assert after.total("rerank_cache_requests_total", result="miss") == 24 + 6
    # The cache of the dead worker is gone with it; the survivor's (and the replacement's, new)
    # is all that is left.
    assert after.total("rerank_cache_entries") == by_worker[max(by_worker)] + 6


def test_a_real_prometheus_scrapes_every_worker(processes: list[Process], tmp_path: Path) -> None:
    prometheus = debian_tool("prometheus")
    _, target, url = start_metrics_server(processes, "--workers", "2")
    metrics = urllib.parse.urlsplit(url)
    config = tmp_path / "prometheus.yml"
    config.write_text(
        json.dumps(  # JSON is YAML
            {
                "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                "rule_files": [str(RULES / "alerts.yml")],
                "scrape_configs": [
                    {
                        "job_name": "rerank",
                        "metrics_path": metrics.path,
                        "static_configs": [{"targets": [metrics.netloc]}],
                    }
                ],
            }
        )
    )
    web = f"127.0.0.1:{free_port()}"
    start(
        processes,
        [
            prometheus,
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp_path / 'data'}",
            f"--web.listen-address={web}",
            "--log.level=warn",
        ],
    )

    def api(path: str, **query: str) -> Any:
        address = f"http://{web}/api/v1/{path}?{urllib.parse.urlencode(query)}"
        try:
            with urllib.request.urlopen(address, timeout=5) as response:
                return json.load(response)["data"]
        except OSError:
            return None  # not up yet

    def value(expression: str) -> float | None:
        data = api("query", query=expression)
        if not data or not data["result"]:
            return None
        return float(data["result"][0]["value"][1])

    until(lambda: value('up{job="rerank"}') == 1, "prometheus up", timeout=30, every=0.1)
    queries = [f"{SEED_QUERY} {n}" for n in range(400)]
    costs = rerank_calls(target, queries, connections=8)  # scraped every second meanwhile

    started = f'sum(grpc_server_call_started_total{{grpc_method="{RERANK}"}})'
    until(lambda: value(started) == len(queries), started, timeout=30, every=0.1)
    done = f'grpc_server_call_duration_seconds_count{{grpc_method="{RERANK}",grpc_status="OK"}}'
    ok = f"sum({done})"
    assert value(ok) == len(queries)
    assert value("sum(rerank_gateway_cost_usd_total)") == float(sum(costs))
    assert value('sum(rerank_circuit_breaker_state{state="closed"})') == 2  # both workers
    # A rate needs two samples of its series: when the calls end within one scrape interval,
    # the series they made have one until the next scrape, which this waits for.
    rated = f"sum(rate({done}[1m]))"
    until(lambda: value(rated) is not None, rated, timeout=30, every=0.1)

    # Every alert rule evaluates against the real series without an error, and none fires
    # (the cost alert may be pending: 400 calls in seconds is a high rate of spend per hour).
    def rules() -> list[dict[str, Any]]:
        groups = (api("rules") or {}).get("groups", [])
        return [rule for group in groups for rule in group["rules"]]

    def evaluated() -> list[dict[str, Any]]:
        found = rules()
        never = "0001-01-01"  # Prometheus's zero time
        return found if found and all(r["lastEvaluation"] > never for r in found) else []

    checked = until(evaluated, "every rule evaluated", timeout=30, every=0.1)
    assert len(checked) == 5
    for rule in checked:
        assert rule["health"] == "ok", rule
        assert rule["state"] != "firing", rule
    # Every query of the Grafana dashboard is one Prometheus accepts; most have data by now.
    answered = 0
    for expression in dashboard_expressions():
        concrete = expression.replace("$job", "rerank").replace("$__rate_interval", "1m")
        data = api("query", query=concrete)
        assert data is not None, f"Prometheus refused the dashboard's query {concrete}"
        answered += bool(data["result"])
    assert answered >= len(dashboard_expressions()) // 2


def test_the_exposition_passes_promtool_check_metrics(processes: list[Process]) -> None:
    promtool = debian_tool("promtool")
    _, target, url = start_metrics_server(processes, "--workers", "2")
    rerank_calls(target, [SEED_QUERY, SEED_QUERY, "another question"], connections=1)
    with grpc.insecure_channel(target) as channel, pytest.raises(grpc.RpcError):
        pb_grpc.RerankServiceStub(channel).Rerank(pb.RerankRequest(), timeout=10)
    text = Scrape.at(url).text
    assert "rerank_gateway_cost_usd_total" in text
    checked = subprocess.run(
        [promtool, "check", "metrics"],
        input=text,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert checked.stdout + checked.stderr == ""


def test_the_alert_rules_pass_their_unit_tests() -> None:
    promtool = debian_tool("promtool")
    for args in (["check", "rules", "alerts.yml"], ["test", "rules", "alerts.test.yml"]):
        done = subprocess.run(
            [promtool, *args], cwd=RULES, capture_output=True, text=True, timeout=60, check=False
        )
        assert done.returncode == 0, done.stdout + done.stderr
        assert "SUCCESS" in done.stdout
