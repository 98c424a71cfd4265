"""End to end, as separate processes: the README's `make run`, the `rerank` CLI, the server in
front of a mock gateway process over real HTTP, and graceful shutdown on SIGTERM."""

from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import time
from pathlib import Path

import grpc
import pytest

from rerank.v1 import rerank_service_pb2 as pb
from rerank.v1 import rerank_service_pb2_grpc as pb_grpc
from tests.conftest import SEED_DOCUMENTS, SEED_MODEL, SEED_QUERY
from tests.docs.test_readme import SHELL, commands
from tests.e2e.processes import RERANK_SERVER, run_cli, start, start_mock_gateway, start_server
from tests.scrapes import Scrape
from tools.processes import Process
from tools.waiting import until

pytestmark = pytest.mark.e2e

#: Where the README's `curl` calls `make run`'s HTTP port.
README_HTTP = "http://127.0.0.1:8000"


def seed_cli_args(target: str) -> list[str]:
    return ["--target", target, "--model", SEED_MODEL, "--top-n", "2", SEED_QUERY, *SEED_DOCUMENTS]


def assert_seed_result(stdout: str) -> None:
    result = json.loads(stdout)
    assert result["ranking"][0]["originalIndex"] == 0
    assert len(result["ranking"]) == 2
    assert result["rerankedDocuments"][0] == "Paris is the capital of France."


def test_make_run_then_the_cli(processes: list[Process]) -> None:
    """The README's first command, then the CLI against it, as a newcomer would, and the
    README's `curl` to the HTTP port; `make run` serves metrics too (on 9464, HTTP on 8000;
    here each on a free port) and says where."""
    env = {"AI_GATEWAY_API_KEY": "", "VERCEL_OIDC_TOKEN": ""}
    make = start(processes, ["make", "run", "PORT=0", "HTTP_PORT=0", "METRICS_PORT=0"], env)
    target = make.wait_for(r"rerank server listening on (\S+:\d+)").group(1)
    metrics_url = make.wait_for(r"rerank metrics on (http://\S+/metrics)").group(1)
    http_url = make.wait_for(r"rerank http listening on (http://\S+)").group(1)
    make.wait_for("bundled deterministic mock gateway")
    completed = run_cli(*seed_cli_args(target))
    assert completed.returncode == 0, completed.stderr
    assert_seed_result(completed.stdout)

    (curl,) = [c for b in SHELL for c in commands(b.body) if c.startswith("curl ")]
    assert README_HTTP in curl
    answered = subprocess.run(
        ["bash", "-c", curl.replace(README_HTTP, http_url)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert answered.returncode == 0, answered.stderr
    results = json.loads(answered.stdout)["results"]
    assert [r["index"] for r in results] == [0, 1]  # Paris, then Berlin, as the CLI ranks them

    # A call is counted once its answer is on its way, so the client may read the answer
    # first: wait for both counts, then check that each call counted once.
    rerank = {"grpc_method": "rerank.v1.RerankService/Rerank", "grpc_status": "OK"}
    cohere = {"grpc_method": "/v2/rerank", "grpc_status": "OK"}

    def counted() -> Scrape | None:
        scrape = Scrape.at(metrics_url)
        calls = "grpc_server_call_duration_seconds_count"
        return scrape if scrape.total(calls, **rerank) and scrape.total(calls, **cohere) else None

    scrape = until(counted, "both calls counted")
    assert scrape.total("grpc_server_call_duration_seconds_count", **rerank) == 1
    assert scrape.total("grpc_server_call_duration_seconds_count", **cohere) == 1


def test_the_server_in_front_of_a_mock_gateway_process(processes: list[Process]) -> None:
    gateway_url = start_mock_gateway(processes, "--api-key", "e2e-key")
    target = start_server(
        processes, "--gateway-url", gateway_url, env={"AI_GATEWAY_API_KEY": "e2e-key"}
    )
    completed = run_cli(*seed_cli_args(target))
    assert completed.returncode == 0, completed.stderr
    assert_seed_result(completed.stdout)

    with grpc.insecure_channel(target) as channel:
        stub = pb_grpc.RerankServiceStub(channel)
        request = pb.RerankRequest(
            query=SEED_QUERY, documents=[pb.Document(text=d) for d in SEED_DOCUMENTS]
        )
        # A connection dropped mid-answer is a transport failure: UNAVAILABLE.
        request.provider_options.update({"mockGateway": {"fault": "drop"}})
        with pytest.raises(grpc.RpcError) as caught:
            stub.Rerank(request, timeout=10)
        assert caught.value.code() is grpc.StatusCode.UNAVAILABLE  # type: ignore[attr-defined]
        # A slow gateway and a short deadline: the caller's deadline wins, quickly.
        request.provider_options.update({"mockGateway": {"fault": "slow", "delayMs": 10_000}})
        started = time.monotonic()
        with pytest.raises(grpc.RpcError) as caught:
            stub.Rerank(request, timeout=0.5)
        assert caught.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED  # type: ignore[attr-defined]
        assert time.monotonic() - started < 5
        models = stub.ListModels(pb.ListModelsRequest(), timeout=10)
        assert "cohere/rerank-v3.5" in [m.id for m in models.models]


def test_a_wrong_gateway_key_is_internal_and_never_echoed(processes: list[Process]) -> None:
    gateway_url = start_mock_gateway(processes, "--api-key", "the-right-key")
    target = start_server(
        processes, "--gateway-url", gateway_url, env={"AI_GATEWAY_API_KEY": "sk-wrong-key-42"}
    )
    completed = run_cli(*seed_cli_args(target))
    assert completed.returncode == 1
    assert "INTERNAL" in completed.stderr
    assert "sk-wrong-key-42" not in completed.stderr + completed.stdout
    assert "sk-wrong-key-42" not in processes[-1].output


def test_an_unreachable_gateway_is_unavailable(processes: list[Process]) -> None:
    # Port 9 (discard) on loopback: nothing listens there on these machines.
    target = start_server(
        processes, "--gateway-url", "http://127.0.0.1:9/v3/ai", env={"AI_GATEWAY_API_KEY": "k"}
    )
    completed = run_cli(*seed_cli_args(target))
    assert completed.returncode == 1
    assert "UNAVAILABLE" in completed.stderr


def test_a_gateway_url_without_a_key_is_refused_at_start(processes: list[Process]) -> None:
    server = start(
        processes,
        [
            RERANK_SERVER,
            "--port",
            "0",
            "--gateway-url",
            "http://127.0.0.1:9",
        ],
        {"AI_GATEWAY_API_KEY": "", "VERCEL_OIDC_TOKEN": ""},
    )
    assert server.popen.wait(timeout=30) == 2
    assert "AI_GATEWAY_API_KEY" in server.output


def test_a_bad_gateway_protocol_stops_the_server_with_one_line(processes: list[Process]) -> None:
    server = start(processes, [RERANK_SERVER, "--port", "0"], {"RERANK_GATEWAY_PROTOCOL": "v9"})
    assert server.popen.wait(timeout=30) == 2
    (line,) = [line for line in server.output.splitlines() if "error:" in line]
    assert "RERANK_GATEWAY_PROTOCOL" in line
    assert "'v9'" in line
    assert "Traceback" not in server.output


def test_sigterm_finishes_in_flight_calls_then_exits(processes: list[Process]) -> None:
    server = start(processes, [RERANK_SERVER, "--port", "0", "--metrics-port", "0"])
    target = server.wait_for(r"rerank server listening on (\S+:\d+)").group(1)
    metrics_url = server.wait_for(r"rerank metrics on (http://\S+/metrics)").group(1)
    with grpc.insecure_channel(target) as channel:
        stub = pb_grpc.RerankServiceStub(channel)
        request = pb.RerankRequest(query=SEED_QUERY, documents=[pb.Document(text="Paris")])
        request.provider_options.update({"mockGateway": {"fault": "slow", "delayMs": 1500}})
        in_flight = stub.Rerank.future(request, timeout=20)
        # SIGTERM once the server holds the call: its gauge says so.
        until(
            lambda: Scrape.at(metrics_url).total("rerank_calls_in_flight") == 1,
            "the call in flight at the server",
        )
        server.signal(signal.SIGTERM)
        assert in_flight.result().ranking[0].original_index == 0
    assert server.popen.wait(timeout=15) == 0
    assert "stopped" in server.output


def test_workers_share_one_port_and_stop_together(processes: list[Process]) -> None:
    server = start(
        processes,
        [
            RERANK_SERVER,
            "--port",
            "0",
            "--workers",
            "2",
            "--log-level",
            "DEBUG",
        ],
    )
    target = server.wait_for(r"rerank server listening on (\S+:\d+)").group(1)
    request = pb.RerankRequest(
        query=SEED_QUERY, documents=[pb.Document(text=d) for d in SEED_DOCUMENTS], bypass_cache=True
    )
    for _ in range(16):  # a new connection each time: the kernel spreads connections
        options = [("grpc.use_local_subchannel_pool", 1)]
        with grpc.insecure_channel(target, options=options) as channel:
            assert pb_grpc.RerankServiceStub(channel).Rerank(request, timeout=10).ranking
    server.wait_for(r"rerank\.access: rerank\.v1\.RerankService/Rerank OK")
    serving = set(
        re.findall(r"(\d+) INFO rerank\.access: rerank\.v1\.RerankService/Rerank OK", server.output)
    )
    assert len(serving) == 2, server.output
    server.signal(signal.SIGTERM)
    assert server.popen.wait(timeout=30) == 0
    assert server.output.count("stopped (0 tasks left)") == 2


def test_ten_thousand_documents_from_a_file_through_the_cli(
    processes: list[Process], tmp_path: Path
) -> None:
    target = start_server(processes, "--workers", "1")
    documents = tmp_path / "documents.txt"
    documents.write_text(
        "".join(
            f"passage {i} on {'the capital of France' if i == 7777 else 'rivers'}\n"
            for i in range(10_000)
        )
    )
    completed = run_cli(
        "--target", target, "--top-n", "3", "--file", str(documents), "capital of France"
    )
    assert completed.returncode == 0, completed.stderr
    result = json.loads(completed.stdout)
    assert [r["originalIndex"] for r in result["ranking"]][:1] == [7777]
    assert len(result["ranking"]) == 3


@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_taken_port_is_one_clear_line(processes: list[Process], workers: str) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        server = start(processes, [RERANK_SERVER, "--port", port, "--workers", workers])
        assert server.popen.wait(timeout=30) == 1
    server.wait_for(rf"ERROR rerank.server: cannot serve on 127.0.0.1:{port}")
    assert "Traceback" not in server.output


@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_taken_metrics_port_is_one_clear_line(processes: list[Process], workers: str) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        server = start(
            processes,
            [RERANK_SERVER, "--port", "0", "--metrics-port", port, "--workers", workers],
        )
        assert server.popen.wait(timeout=30) == 1
    server.wait_for(rf"ERROR rerank.server: cannot serve metrics on 127.0.0.1:{port}: .*in use")
    assert "Traceback" not in server.output
    assert "listening" not in server.output
