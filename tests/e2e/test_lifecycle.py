"""A server's life as separate processes: the port it may take, the drain before it stops, and
the parent that keeps its workers alive (replaced when they die, killed when they hang)."""

from __future__ import annotations

import os
import re
import signal
from collections.abc import Callable, Collection
from pathlib import Path

import grpc
import pytest
import trustme
from grpc_health.v1 import health_pb2, health_pb2_grpc

from rerank.v1 import rerank_service_pb2 as pb
from rerank.v1 import rerank_service_pb2_grpc as pb_grpc
from tests.conftest import SEED_DOCUMENTS, SEED_QUERY
from tests.e2e.processes import RERANK_SERVER, start
from tools.processes import Process
from tools.waiting import until

pytestmark = pytest.mark.e2e

READY = r"rerank server listening on (\S+):(\d+)"
#: A served call's access-log record (INFO, the text format), with the serving process's PID.
SERVED = r"(\d+) INFO rerank\.access: rerank\.v1\.RerankService/Rerank OK"
SEED = pb.RerankRequest(
    query=SEED_QUERY, documents=[pb.Document(text=d) for d in SEED_DOCUMENTS], bypass_cache=True
)


def server(
    processes: list[Process], *args: str, env: dict[str, str] | None = None
) -> tuple[Process, str]:
    """A started `rerank-server` and the port it serves, once it says it listens."""
    process = start(processes, [RERANK_SERVER, *args], env)
    return process, process.wait_for(READY).group(2)


def rerank_on_a_new_connection(port: str) -> pb.RerankResponse:
    # A channel of its own (no shared subchannel): a new connection, which the kernel gives to
    # whichever process it picks among those listening.
    options = [("grpc.use_local_subchannel_pool", 1)]
    with grpc.insecure_channel(f"127.0.0.1:{port}", options=options) as channel:
        return pb_grpc.RerankServiceStub(channel).Rerank(SEED, timeout=10)


def serve_until(port: str, done: Callable[[], object], attempts: int = 200) -> None:
    """Call on new connections until `done()` (bounded: the kernel spreads them at random)."""
    for _ in range(attempts):
        if done():
            return
        assert rerank_on_a_new_connection(port).ranking
    raise AssertionError("not served as expected")


def children(parent: int) -> set[int]:
    """The PIDs whose parent is `parent`, from /proc (what `ps --ppid` reads)."""
    found = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            # The command name (2nd field) is in parentheses and may hold spaces: split after it.
            fields = stat.read_text().rpartition(")")[2].split()
        except OSError:
            continue  # it exited in between
        if int(fields[1]) == parent and fields[0] != "Z":
            found.add(int(stat.parent.name))
    return found


def workers_of(process: Process, count: int, unlike: Collection[int] = ()) -> list[int]:
    """The parent's `count` live workers, none of them in `unlike` (polled: a replacement takes
    a moment to be forked), in the order the parent's log names them (`worker N (pid P)`)."""

    def live() -> set[int] | None:
        pids = children(process.popen.pid) - set(unlike)
        return pids if len(pids) == count else None

    pids = until(live, f"{count} workers", timeout=30)  # polling /proc: nothing announces them
    order = re.findall(r"worker \d+ \(pid (\d+)\)", process.output)
    return sorted(pids, key=lambda pid: order.index(str(pid)) if str(pid) in order else len(order))


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


# -- the port ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("first", "second"), [("1", "1"), ("1", "2"), ("2", "1"), ("2", "2")])
def test_a_second_server_on_a_served_port_is_refused(
    processes: list[Process], first: str, second: str
) -> None:
    """Before, both listened (gRPC sets SO_REUSEPORT) and the kernel split connections."""
    _, port = server(processes, "--port", "0", "--workers", first)
    refused = start(processes, [RERANK_SERVER, "--port", port, "--workers", second])
    assert refused.wait(timeout=30) == 1
    line = (
        f"ERROR rerank.server: cannot serve on 127.0.0.1:{port}: another server already serves it"
    )
    assert line in refused.output
    assert refused.output.count(" ERROR ") == 1
    assert "Traceback" not in refused.output
    assert rerank_on_a_new_connection(port).ranking  # the first one still serves


def test_port_overlap_on_purpose_for_a_zero_downtime_restart(processes: list[Process]) -> None:
    """Old and new both opt in: both serve the port for a while, then the old one leaves and
    the new one serves every call."""
    old, port = server(
        processes,
        "--port",
        "0",
        "--workers",
        "1",
        "--log-level",
        "DEBUG",
        env={"RERANK_ALLOW_PORT_OVERLAP": "1"},
    )
    new, _ = server(
        processes,
        "--port",
        port,
        "--workers",
        "2",
        "--allow-port-overlap",
        "--log-level",
        "DEBUG",
    )
    serve_until(port, lambda: re.search(SERVED, old.output) and re.search(SERVED, new.output))
    old.signal(signal.SIGTERM)
    assert old.wait() == 0
    served_before = len(re.findall(SERVED, new.output))
    for _ in range(8):
        assert rerank_on_a_new_connection(port).ranking
    new.wait_for_count(SERVED, served_before + 8, timeout=5)


@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_restart_on_the_same_port_is_not_refused(processes: list[Process], workers: str) -> None:
    """The stopped server's connections linger in TIME_WAIT; they are no server."""
    first, port = server(processes, "--port", "0", "--workers", "1")
    for _ in range(4):
        assert rerank_on_a_new_connection(port).ranking
    first.signal(signal.SIGTERM)
    assert first.wait() == 0
    _, again = server(processes, "--port", port, "--workers", workers)
    assert again == port
    assert rerank_on_a_new_connection(port).ranking


# -- the drain ---------------------------------------------------------------------------------


def test_sigterm_turns_health_not_serving_while_calls_are_still_served(
    processes: list[Process],
) -> None:
    """Before, NOT_SERVING and the closed listener came in the same instant: a balancer had
    no time to see the one before it met the other."""
    process, port = server(
        processes, "--port", "0", "--workers", "1", env={"RERANK_DRAIN_DELAY": "60"}
    )
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        health = health_pb2_grpc.HealthStub(channel)
        check = health_pb2.HealthCheckRequest(service="rerank.v1.RerankService")
        assert health.Check(check, timeout=5).status == health_pb2.HealthCheckResponse.SERVING
        process.signal(signal.SIGTERM)
        until(  # polling the health check: the server announces nothing to a client
            lambda: health.Check(check, timeout=5).status != health_pb2.HealthCheckResponse.SERVING,
            "health turned NOT_SERVING",
            timeout=20,
        )
    # The listener is still open: a new connection is accepted and its call served.
    assert rerank_on_a_new_connection(port).ranking
    process.wait_for(r"draining: health is NOT_SERVING, calls still served for 60 s")
    assert "stopping:" not in process.output
    # Ctrl-C (SIGINT) cuts the drain short; the stop is as graceful as ever.
    process.signal(signal.SIGINT)
    assert process.wait(timeout=30) == 0
    assert "stopped (0 tasks left)" in process.output


def test_the_drain_delay_ends_by_itself_then_the_listener_closes(
    processes: list[Process],
) -> None:
    process, _ = server(processes, "--port", "0", "--workers", "2", env={"RERANK_DRAIN_DELAY": "1"})
    pids = workers_of(process, 2)
    os.kill(process.popen.pid, signal.SIGTERM)  # the parent only, as an orchestrator would
    assert process.wait() == 0
    for pid in pids:
        drained = process.output.index(f"{pid} INFO rerank.server._app: draining")
        stopping = process.output.index(f"{pid} INFO rerank.server._app: stopping")
        assert drained < stopping
    assert process.output.count("stopped (0 tasks left)") == 2


# -- the workers -------------------------------------------------------------------------------


def test_a_worker_killed_is_replaced_and_the_new_one_serves(processes: list[Process]) -> None:
    process, port = server(processes, "--port", "0", "--workers", "2", "--log-level", "DEBUG")
    killed, kept = workers_of(process, 2)
    os.kill(killed, signal.SIGKILL)
    (replacement,) = workers_of(process, 1, unlike={killed, kept})
    process.wait_for(rf"worker \d \(pid {killed}\) died \(killed by SIGKILL\).*replacing it")
    process.wait_for(rf"worker \d \(pid {replacement}\) listening")
    assert gone(killed)
    serve_until(port, lambda: str(replacement) in re.findall(SERVED, process.output))
    process.signal(signal.SIGTERM)
    assert process.wait() == 0
    assert process.output.count("stopped (0 tasks left)") == 2


def tls_files(directory: Path) -> tuple[Path, Path]:
    authority = trustme.CA()
    certificate = authority.issue_cert("127.0.0.1")
    cert, key = directory / "server.pem", directory / "server.key"
    certificate.private_key_pem.write_to_path(str(key))
    certificate.cert_chain_pems[0].write_to_path(str(cert))
    return cert, key


def test_a_worker_that_cannot_start_at_first_stops_the_server_with_its_reason(
    processes: list[Process], tmp_path: Path
) -> None:
    """Before, the parent waited on and said 'not every worker started'."""
    cert, _ = tls_files(tmp_path)
    missing = tmp_path / "missing.key"
    tls = ["--tls-cert", str(cert), "--tls-key", str(missing)]
    process = start(processes, [RERANK_SERVER, "--port", "0", "--workers", "2", *tls])
    assert process.wait(timeout=30) == 1
    reason = f"No such file or directory: {missing}"
    assert re.search(
        rf"ERROR rerank.server: cannot serve on 127.0.0.1:\d+: {reason}", process.output
    )
    assert process.output.count(" ERROR ") == 1
    assert "Traceback" not in process.output


def test_a_worker_that_keeps_dying_at_start_stops_the_server(
    processes: list[Process], tmp_path: Path
) -> None:
    """A real cause: the key file is gone from disk (say, a rotation gone wrong) after the
    server started, so every replacement worker fails to read it. The parent tries a few
    times with a back-off, then stops the server with the reason instead of looping."""
    cert, key = tls_files(tmp_path)
    process, port = server(
        processes,
        "--port",
        "0",
        "--workers",
        "2",
        "--tls-cert",
        str(cert),
        "--tls-key",
        str(key),
    )
    key.unlink()
    killed = workers_of(process, 2)[0]
    number = process.wait_for(rf"worker (\d) \(pid {killed}\) listening").group(1)
    os.kill(killed, signal.SIGKILL)
    assert process.wait() == 1
    reason = f"cannot serve on 127.0.0.1:{port}: No such file or directory: {key}"
    assert (
        f"worker {number} could not start 3 times in a row ({reason}); stopping the server"
        in process.output
    )
    assert process.output.count(f"could not start ({reason}); trying again in") == 2
    assert process.output.count("stopped (0 tasks left)") == 1  # worker 2, gracefully
    assert "Traceback" not in process.output


def test_a_worker_that_ignores_sigterm_is_killed(processes: list[Process]) -> None:
    """A real cause, no hook: a stopped worker (SIGSTOP), like a worker whose event loop is
    stuck, does not act on SIGTERM. After drain + grace + the margin the parent kills it."""
    process, _ = server(
        processes, "--port", "0", "--workers", "2", env={"RERANK_GRACE_PERIOD": "1"}
    )
    stuck = workers_of(process, 2)[1]
    os.kill(stuck, signal.SIGSTOP)
    try:
        os.kill(process.popen.pid, signal.SIGTERM)
        assert process.wait() == 1
        assert gone(stuck)
    finally:
        if not gone(stuck):  # the old code never killed it
            os.kill(stuck, signal.SIGKILL)
    assert re.search(
        rf"worker \d \(pid {stuck}\) still runs 6 s after it was told to stop", process.output
    )
    assert process.output.count("stopped (0 tasks left)") == 1  # worker 1 stopped on its own
