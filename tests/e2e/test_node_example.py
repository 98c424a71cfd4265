"""The Node example (examples/node) against the server, as separate processes: `make stubs`
(npm ci + buf generate), then the command of docs/other-languages.md, its errors, and its retry
policy. Node is the dev install's (tools/node.py), so nothing here depends on the machine having
one."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import grpc
import pytest

from rerank.v1 import rerank_service_pb2 as pb
from tests.conftest import REPO_ROOT, SEED_DOCUMENTS, SEED_MODEL, SEED_QUERY
from tests.e2e.processes import start_server
from tests.unit.client_fakes import Abort, FakeRerankService, serve
from tools import node
from tools.processes import Process

# `make stubs` may run `npm ci` (the registry, or its local cache): a generous budget.
pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

EXAMPLE = REPO_ROOT / "examples" / "node"
STUBS_SECONDS = 540


@pytest.fixture(scope="module")
def stubs() -> Path:
    """Runs `make stubs` once for the module, on the Node of the dev install (tools/node.py)."""
    completed = subprocess.run(
        ["make", "stubs"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=STUBS_SECONDS,
        check=False,
    )
    assert completed.returncode == 0, completed.stdout + completed.stderr
    return EXAMPLE


def run_example(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        node.command("node", "--import", "tsx", "src/rerank.ts", *args),
        cwd=EXAMPLE,
        env=node.environment(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_make_stubs_writes_typescript_and_python(stubs: Path) -> None:
    assert (stubs / "src/gen/rerank/v1/rerank_service_pb.ts").is_file()
    python = REPO_ROOT / "gen/python/rerank/v1"
    for name in ("rerank_service_pb2.py", "rerank_service_pb2.pyi", "rerank_service_pb2_grpc.py"):
        assert (python / name).is_file(), name
    # The example type-checks against what the generator wrote (catches a generator API change).
    tsc = subprocess.run(
        node.command("node", "node_modules/typescript/bin/tsc", "--noEmit", "-p", "."),
        cwd=stubs,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert tsc.returncode == 0, tsc.stdout + tsc.stderr


def test_the_seed_example(stubs: Path, processes: list[Process]) -> None:
    target = start_server(processes, "--mock")
    completed = run_example("--target", target)
    assert completed.returncode == 0, completed.stderr
    result = json.loads(completed.stdout)
    ranking = result["ranking"]
    assert len(ranking) == 2
    assert ranking[0]["originalIndex"] == 0
    assert ranking[0]["document"] == SEED_DOCUMENTS[0]
    assert [entry["document"] for entry in ranking] == [
        SEED_DOCUMENTS[entry["originalIndex"]] for entry in ranking
    ]
    scores = [entry["score"] for entry in ranking]
    assert scores == sorted(scores, reverse=True)
    assert result["rerankedDocuments"] == [entry["document"] for entry in ranking]
    assert result["model"] == SEED_MODEL
    # The typed usage, as the mock gateway reports it.
    assert result["usage"] == {"cost": "0.002", "upstreamCalls": 1}


def test_no_documents_asks_for_none_and_fills_them_in(stubs: Path) -> None:
    """`--no-documents` sends `returnDocuments: false` (a fake server records it and sends
    indices and scores only); the example fills the documents in from the ones it sent."""
    service = FakeRerankService()
    with serve(service) as fake:
        completed = run_example("--target", fake, "--no-documents", *SEED_DOCUMENTS)
    assert completed.returncode == 0, completed.stderr
    (request,) = service.requests
    assert isinstance(request, pb.RerankRequest)
    assert request.HasField("return_documents")
    assert not request.return_documents
    result = json.loads(completed.stdout)
    # The fake ranks last-first, cut to top_n 2: Madrid, then Berlin.
    assert [(e["originalIndex"], e["document"]) for e in result["ranking"]] == [
        (2, SEED_DOCUMENTS[2]),
        (1, SEED_DOCUMENTS[1]),
    ]
    assert result["rerankedDocuments"] == [SEED_DOCUMENTS[2], SEED_DOCUMENTS[1]]


def test_a_deprecated_warning_in_the_ai_sdks_shape(stubs: Path, processes: list[Process]) -> None:
    """The embedded mock speaks v4 (the server's default): its deprecated warning reaches Node
    as the AI SDK shows one, with its setting."""
    target = start_server(processes, "--mock")
    warning = {"type": "deprecated", "setting": "topN", "message": "topN is going away"}
    options = json.dumps({"mockGateway": {"fault": "warning", **warning}})
    completed = run_example("--target", target, "--provider-options", options)
    assert completed.returncode == 0, completed.stderr
    result = json.loads(completed.stdout)
    assert result["warnings"] == [warning]
    assert result["ranking"][0]["originalIndex"] == 0


def test_a_batch_call(stubs: Path, processes: list[Process], tmp_path: Path) -> None:
    """One BatchRerank: a line per query, in order, the failed ones as their own status, as
    the Python `rerank --batch` prints them (tests/e2e/test_batch_cli.py)."""
    target = start_server(processes, "--mock")
    lines = [
        {"query": SEED_QUERY, "documents": list(SEED_DOCUMENTS), "topN": 2},
        {"query": "", "documents": list(SEED_DOCUMENTS)},
        {"query": "Berlin", "documents": [{"text": d} for d in SEED_DOCUMENTS], "topN": 1},
        {"query": "q", "documents": ["a"], "model": "cohere/no-such-model"},
    ]
    batch = tmp_path / "batch.jsonl"
    batch.write_text("".join(json.dumps(line) + "\n" for line in lines))
    completed = run_example("--target", target, "--batch", str(batch))
    assert completed.returncode == 1, completed.stderr
    seed, empty, objects, unknown = (json.loads(line) for line in completed.stdout.splitlines())
    assert seed["rerankedDocuments"] == list(SEED_DOCUMENTS[:2])
    assert seed["model"] == SEED_MODEL  # the example's --model default fills it in
    assert empty == {
        "error": {
            "code": "INVALID_ARGUMENT",
            "message": "query: must not be empty",
            "details": ["google.rpc.ErrorInfo", "google.rpc.BadRequest"],
        }
    }
    assert objects["rerankedDocuments"] == [{"text": SEED_DOCUMENTS[1]}]
    assert unknown["error"]["code"] == "NOT_FOUND"
    assert completed.stderr.startswith(
        "rerank-example: 2 of 4 requests failed: requests[1]: INVALID_ARGUMENT: query: must "
        "not be empty; requests[3]: NOT_FOUND: "
    )

    # Lean: the answers carry no documents; the example fills them in from each line's own,
    # and each query's usage is its own.
    good = tmp_path / "good.jsonl"
    good.write_text("".join(json.dumps(line) + "\n" for line in (lines[0], lines[2])))
    lean = run_example("--target", target, "--batch", str(good), "--no-documents")
    assert lean.returncode == 0, lean.stderr
    lean_seed, lean_objects = (json.loads(line) for line in lean.stdout.splitlines())
    assert lean_seed["rerankedDocuments"] == seed["rerankedDocuments"]
    assert lean_objects["rerankedDocuments"] == objects["rerankedDocuments"]
    assert seed["usage"] == {"cost": "0.002", "upstreamCalls": 1}

    missing = run_example("--target", target, "--batch", str(tmp_path / "missing.jsonl"))
    assert missing.returncode == 2
    assert missing.stderr.startswith("rerank-example: error: cannot read ")


def test_an_error_status_exits_non_zero(stubs: Path, processes: list[Process]) -> None:
    target = start_server(processes, "--mock")
    completed = run_example("--target", target, "--query", "", *SEED_DOCUMENTS)
    assert completed.returncode != 0
    assert completed.stdout == ""
    assert "INVALID_ARGUMENT" in completed.stderr
    assert "query" in completed.stderr


def test_the_service_config_retry_policy(
    stubs: Path,
    processes: list[Process],
    tmp_path: Path,
) -> None:
    """The example's 3 attempts (the shipped service config, applied by src/retry.ts) absorb two
    UNAVAILABLEs without a pushback, the kind a proxy or a restarting server answers (a fake
    server plays them), and surface without it. An UNAVAILABLE the rerank server sends about
    the gateway carries `grpc-retry-pushback-ms: -1` and is not retried: the server's own
    retry layer owns that hop (here turned off, so one failure is all there is)."""
    unavailable = Abort(grpc.StatusCode.UNAVAILABLE, "restarting")
    service = FakeRerankService(script=[unavailable, unavailable])
    no_retries = tmp_path / "service_config.json"
    no_retries.write_text(json.dumps({"methodConfig": []}))
    with serve(service) as fake:
        completed = run_example("--target", fake)
        assert completed.returncode == 0, completed.stderr
        assert json.loads(completed.stdout)["ranking"]
        assert len(service.requests) == 3

        service.script.extend([unavailable, unavailable])
        completed = run_example("--target", fake, "--service-config", str(no_retries))
        assert completed.returncode != 0
        assert "UNAVAILABLE: restarting" in completed.stderr
        assert len(service.requests) == 4

    target = start_server(processes, "--mock", env={"RERANK_MAX_RETRIES": "0"})
    once = {"mockGateway": {"fault": "error", "status": 503, "times": 1, "key": "a"}}
    completed = run_example("--target", target, "--provider-options", json.dumps(once))
    # One retry would have succeeded (the fault strikes once): none was made.
    assert completed.returncode != 0
    assert "UNAVAILABLE" in completed.stderr


def test_the_query_is_the_seed_query() -> None:
    """The example's built-in seed is the project's (tests/conftest.py)."""
    source = (EXAMPLE / "src/rerank.ts").read_text()
    assert json.dumps(SEED_QUERY) in source
    assert all(json.dumps(document) in source for document in SEED_DOCUMENTS)
    assert json.dumps(SEED_MODEL) in source
