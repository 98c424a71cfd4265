"""Named callers as separate processes: SIGHUP re-reads the callers file in every worker while
the parent lives on, a bad file at start is one line (exit 2), and `rerank --usage`."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

import grpc
import pytest

from rerank.v1 import rerank_service_pb2 as pb
from rerank.v1 import rerank_service_pb2_grpc as pb_grpc
from tests.conftest import SEED_DOCUMENTS, SEED_QUERY
from tests.e2e.processes import BIN, RERANK_SERVER, start
from tools.processes import Process

pytestmark = pytest.mark.e2e

OLD, NEW = "old-caller-token-5e1", "new-caller-token-c07"
REQUEST = pb.RerankRequest(
    query=SEED_QUERY, documents=[pb.Document(text=d) for d in SEED_DOCUMENTS], bypass_cache=True
)


def call(target: str, token: str) -> grpc.StatusCode:
    """One Rerank on a connection of its own (so the kernel picks a worker afresh)."""
    options = [("grpc.use_local_subchannel_pool", 1)]
    with grpc.insecure_channel(target, options=options) as channel:
        try:
            pb_grpc.RerankServiceStub(channel).Rerank(
                REQUEST, metadata=(("authorization", f"Bearer {token}"),), timeout=10
            )
        except grpc.RpcError as error:
            return error.code()  # type: ignore[attr-defined, no-any-return]
    return grpc.StatusCode.OK


def test_sighup_reloads_the_callers_in_every_worker_and_the_parent_survives(
    processes: list[Process], tmp_path: Path
) -> None:
    callers = tmp_path / "callers.toml"
    callers.write_text(f'[callers.old]\ntoken = "{OLD}"\n')
    server = start(
        processes,
        [RERANK_SERVER, "--port", "0", "--workers", "2", "--log-level", "DEBUG"],
        {"RERANK_CALLERS_FILE": str(callers)},
    )
    target = server.wait_for(r"rerank server listening on (\S+:\d+)").group(1)
    parent = server.popen.pid
    assert call(target, OLD) is grpc.StatusCode.OK
    assert call(target, NEW) is grpc.StatusCode.UNAUTHENTICATED

    callers.write_text(f'[callers.new]\ntoken = "{NEW}"\n')
    os.kill(parent, signal.SIGHUP)  # the parent alone: it must pass it on
    reloaded = server.wait_for_count(r"(\d+) INFO rerank.server._callers: callers reloaded", 2)
    assert len(set(reloaded)) == 2, server.output
    assert parent not in {int(pid) for pid in reloaded}
    answers = [call(target, NEW) for _ in range(16)]
    assert answers == [grpc.StatusCode.OK] * 16
    assert call(target, OLD) is grpc.StatusCode.UNAUTHENTICATED
    # Both workers served the new caller (connections are spread over them by the kernel), as
    # their access-log records say.
    served = server.wait_for_count(
        r"(\d+) INFO rerank\.access: rerank\.v1\.RerankService/Rerank OK .* caller=new ", 16
    )
    assert set(served) == set(reloaded), server.output

    # A bad file on reload: each worker says so, and keeps the callers it has.
    callers.write_text(f'[callers.new]\ntoken = "{NEW}"\nburst = -1\n')
    os.kill(parent, signal.SIGHUP)
    refused = server.wait_for_count(r"(\d+) ERROR rerank.server._callers: callers not reloaded", 2)
    assert set(refused) == set(reloaded)
    assert "caller 'new', key 'burst'" in server.output
    assert call(target, NEW) is grpc.StatusCode.OK
    assert server.popen.poll() is None  # the parent is alive
    assert NEW not in server.output
    assert OLD not in server.output

    server.signal(signal.SIGTERM)
    assert server.popen.wait(timeout=30) == 0
    assert server.output.count("stopped (0 tasks left)") == 2


def test_a_bad_callers_file_stops_the_server_with_one_line(
    processes: list[Process], tmp_path: Path
) -> None:
    callers = tmp_path / "callers.toml"
    callers.write_text(f'[callers.search-api]\ntoken = "{OLD}"\nmax_concurrent_calls = -4\n')
    server = start(processes, [RERANK_SERVER, "--port", "0"], {"RERANK_CALLERS_FILE": str(callers)})
    assert server.popen.wait(timeout=30) == 2
    (line,) = [line for line in server.output.splitlines() if "error:" in line]
    assert "caller 'search-api', key 'max_concurrent_calls'" in line
    assert "Traceback" not in server.output
    assert OLD not in server.output


def test_the_cli_shows_a_callers_usage(processes: list[Process], tmp_path: Path) -> None:
    callers = tmp_path / "callers.toml"
    callers.write_text(f'[callers.cli]\ntoken = "{OLD}"\ndaily_budget_usd = "1.50"\n')
    server = start(
        processes,
        [RERANK_SERVER, "--port", "0", "--workers", "1"],
        {"RERANK_CALLERS_FILE": str(callers)},
    )
    target = server.wait_for(r"rerank server listening on (\S+:\d+)").group(1)
    assert call(target, OLD) is grpc.StatusCode.OK
    completed = subprocess.run(
        [str(BIN / "rerank"), "--target", target, "--usage"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, "RERANK_TOKEN": OLD},
    )
    assert completed.returncode == 0, completed.stderr
    usage = json.loads(completed.stdout)
    assert (usage["caller"], usage["calls"], usage["refused"]) == ("cli", 1, 0)
    assert (usage["spentUsd"], usage["dailyBudgetUsd"]) == ("0.002", "1.5")
