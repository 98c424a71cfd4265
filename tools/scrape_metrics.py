"""Print one `/metrics` scrape of a real server to stdout, for `make metrics-lint`
(`| promtool check metrics`).

It starts `python -m rerank.server --workers 2 --metrics-port 0` on loopback (the bundled mock
gateway), makes calls that touch every metric family (a success, a cache hit, a caller's mistake,
an unknown model, a retried gateway failure, a model list, a health check), scrapes once, and
stops the server by its PID. Every wait is bounded.
"""

from __future__ import annotations

import contextlib
import os
import re
import selectors
import signal
import subprocess
import sys
import time
import urllib.request

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from rerank.v1 import rerank_service_pb2 as pb
from rerank.v1 import rerank_service_pb2_grpc as pb_grpc

START_TIMEOUT_S = 60.0


def _wait_for_lines(server: subprocess.Popen[bytes]) -> tuple[str, str]:
    """The gRPC target and the metrics URL from the server's ready lines."""
    assert server.stdout is not None
    deadline = time.monotonic() + START_TIMEOUT_S
    seen = ""
    with selectors.DefaultSelector() as selector:
        selector.register(server.stdout, selectors.EVENT_READ)
        while (left := deadline - time.monotonic()) > 0:
            if selector.select(left):
                chunk = os.read(server.stdout.fileno(), 4096)
                if not chunk:
                    break
                seen += chunk.decode()
            target = re.search(r"rerank server listening on (\S+:\d+)", seen)
            url = re.search(r"rerank metrics on (http://\S+)", seen)
            if target and url:
                return target.group(1), url.group(1)
    raise SystemExit(f"the server did not start within {START_TIMEOUT_S:.0f} s:\n{seen}")


def _calls(target: str) -> None:
    request = pb.RerankRequest(
        model="cohere/rerank-v3.5",
        query="What is the capital of France?",
        documents=[pb.Document(text=t) for t in ("Paris is in France.", "Berlin is in Germany.")],
        top_n=1,
    )
    retried = pb.RerankRequest()
    retried.CopyFrom(request)
    retried.provider_options.update(
        {"mockGateway": {"fault": "rate_limit", "retryAfterMs": 10, "times": 1, "key": "lint"}}
    )
    unknown_model = pb.RerankRequest()
    unknown_model.CopyFrom(request)
    unknown_model.model = "nobody/no-such-model"
    with grpc.insecure_channel(target) as channel:
        stub = pb_grpc.RerankServiceStub(channel)
        for call in (request, request, retried, unknown_model, pb.RerankRequest(query="")):
            with contextlib.suppress(grpc.RpcError):  # the failures are what is counted
                stub.Rerank(call, timeout=10)
        stub.ListModels(pb.ListModelsRequest(), timeout=10)
        health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)


def main() -> int:
    server = subprocess.Popen(
        [
            *(sys.executable, "-m", "rerank.server", "--port", "0", "--metrics-port", "0"),
            *("--workers", "2", "--mock", "--log-level", "WARNING"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "RERANK_GRACE_PERIOD": "1"},
    )
    try:
        target, url = _wait_for_lines(server)
        _calls(target)
        with urllib.request.urlopen(url, timeout=10) as response:
            sys.stdout.write(response.read().decode())
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(timeout=10)
    return 0


if __name__ == "__main__":
    sys.exit(main())
