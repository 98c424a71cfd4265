"""`rerank --batch FILE` as a separate process against a real server (the embedded mock): one
line per query, each as `rerank` alone would have printed or reported it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import SEED_DOCUMENTS, SEED_MODEL, SEED_QUERY
from tests.e2e.processes import run_cli, start_server
from tools.processes import Process

pytestmark = pytest.mark.e2e


def test_a_batch_of_good_and_bad_queries(processes: list[Process], tmp_path: Path) -> None:
    target = start_server(processes, "--mock", "--workers", "1")
    rate_limit = {"mockGateway": {"fault": "rate_limit", "retryAfterMs": 10}}
    lines = [
        {"query": SEED_QUERY, "documents": list(SEED_DOCUMENTS), "topN": 2},
        {"query": " ", "documents": list(SEED_DOCUMENTS)},
        {"query": "Berlin", "documents": list(SEED_DOCUMENTS), "providerOptions": rate_limit},
        {"query": "capital of Spain", "documents": [{"text": d} for d in SEED_DOCUMENTS]},
    ]
    batch = tmp_path / "batch.jsonl"
    batch.write_text("".join(json.dumps(line) + "\n" for line in lines))

    completed = run_cli("--target", target, "--model", SEED_MODEL, "--batch", str(batch))
    assert completed.returncode == 1  # two of the queries failed
    seed, blank, limited, objects = (json.loads(out) for out in completed.stdout.splitlines())
    assert seed["rerankedDocuments"] == list(SEED_DOCUMENTS[:2])
    assert seed["model"] == SEED_MODEL  # --model applies to every line
    assert blank["error"]["code"] == "INVALID_ARGUMENT"
    assert blank["error"]["fieldViolations"] == [
        {"field": "query", "description": "must not be empty"}
    ]
    assert limited["error"]["reason"] == "UPSTREAM_RATE_LIMITED"
    assert objects["ranking"][0]["document"] == {"text": SEED_DOCUMENTS[2]}
    assert completed.stderr.startswith("rerank: 2 of 4 requests failed: requests[1]: ")

    # Lean: --no-documents applies to every line; each entry prints its index and score.
    lean = run_cli("--target", target, "--batch", str(batch), "--no-documents")
    lean_seed = json.loads(lean.stdout.splitlines()[0])
    assert [set(entry) for entry in lean_seed["ranking"]] == [{"originalIndex", "score"}] * 2
    assert [e["originalIndex"] for e in lean_seed["ranking"]] == [
        e["originalIndex"] for e in seed["ranking"]
    ]

    # The blank query alone: the same status and message, reported the single call's way.
    alone = run_cli("--target", target, " ", *SEED_DOCUMENTS)
    assert alone.returncode == 2
    assert alone.stderr == f"rerank: INVALID_ARGUMENT: {blank['error']['message']}\n"
