"""`rerank --batch FILE`, called as `main([...])` against the scripted fake RerankService."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from rerank.v1 import rerank_service_pb2 as pb

from .client_fakes import Abort, FakeRerankService, bad_request, error_info, retry_info, serve
from .test_cli import run


@pytest.fixture
def service() -> FakeRerankService:
    return FakeRerankService()


@pytest.fixture
def target(service: FakeRerankService, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    # The CLI reads RERANK_TARGET; a value from the developer's shell must not leak in.
    monkeypatch.delenv("RERANK_TARGET", raising=False)
    with serve(service) as address:
        yield address


def batch_file(tmp_path: Path, *lines: object) -> str:
    path = tmp_path / "batch.jsonl"
    text = (line if isinstance(line, str) else json.dumps(line) for line in lines)
    path.write_text("\n".join(text))
    return str(path)


def sent(service: FakeRerankService) -> pb.BatchRerankRequest:
    (request,) = service.requests
    assert isinstance(request, pb.BatchRerankRequest)
    return request


def test_one_json_line_per_query_in_order(
    target: str, service: FakeRerankService, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = batch_file(
        tmp_path,
        {"query": "capital of France?", "documents": ["Paris", "Berlin"]},
        "",  # blank lines are skipped
        {"query": "which", "documents": [{"title": "A"}], "model": "voyage/rerank-2", "topN": 1},
    )
    code, out, err = run(capsys, "--target", target, "--batch", path)
    assert (code, err) == (0, "")
    first, second = (json.loads(line) for line in out.splitlines())
    assert first["rerankedDocuments"] == ["Berlin", "Paris"]  # the fake ranks last-first
    assert second["rerankedDocuments"] == [{"title": "A"}]
    assert second["model"] == "voyage/rerank-2"
    request = sent(service)
    assert [r.query for r in request.requests] == ["capital of France?", "which"]
    assert not request.requests[0].HasField("top_n")
    assert request.requests[1].top_n == 1


def test_flags_are_the_defaults_of_the_lines(
    target: str, service: FakeRerankService, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = batch_file(
        tmp_path,
        {"query": "a", "documents": ["x"]},
        {"query": "b", "documents": ["y"], "model": "voyage/rerank-2", "topN": 3},
        {"query": "c", "documents": ["z"], "providerOptions": {}, "bypassCache": False},
    )
    argv = ["--target", target, "--model", "cohere/rerank-v3.5", "--top-n", "2", "--no-cache"]
    options = ["--provider-options", '{"cohere": {"maxTokensPerDoc": 512}}']
    code, _, err = run(capsys, *argv, *options, "--batch", path)
    assert (code, err) == (0, "")
    first, second, third = sent(service).requests
    assert (first.model, first.top_n, first.bypass_cache) == ("cohere/rerank-v3.5", 2, True)
    assert first.provider_options.fields["cohere"].struct_value.fields["maxTokensPerDoc"]
    assert (second.model, second.top_n) == ("voyage/rerank-2", 3)
    assert (third.bypass_cache, dict(third.provider_options.fields)) == (False, {})


def test_a_failed_query_is_its_own_line_and_exit_1(
    target: str, service: FakeRerankService, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    overloaded = pb.BatchRerankResult()
    overloaded.error.code = grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]
    overloaded.error.message = "full"
    overloaded.error.details.add().Pack(error_info("OVERLOADED"))
    overloaded.error.details.add().Pack(retry_info(1))
    empty = pb.BatchRerankResult()
    empty.error.code = grpc.StatusCode.INVALID_ARGUMENT.value[0]
    empty.error.message = "query: must not be empty"
    empty.error.details.add().Pack(bad_request(("query", "must not be empty")))
    good = pb.BatchRerankResult(response=pb.RerankResponse(model="m", id="rr_1"))
    service.script.append(pb.BatchRerankResponse(results=[good, empty, overloaded]))
    path = batch_file(tmp_path, *({"query": q, "documents": ["x"]} for q in ("a", "", "c")))
    code, out, err = run(capsys, "--target", target, "--batch", path)
    assert code == 1
    lines = [json.loads(line) for line in out.splitlines()]
    assert lines[0]["id"] == "rr_1"
    assert lines[1] == {
        "error": {
            "code": "INVALID_ARGUMENT",
            "message": "query: must not be empty",
            "reason": None,
            "fieldViolations": [{"field": "query", "description": "must not be empty"}],
            "retryDelay": None,
        }
    }
    assert lines[2]["error"]["reason"] == "OVERLOADED"
    assert lines[2]["error"]["retryDelay"] == 1.0
    assert err == (
        "rerank: 2 of 3 requests failed: requests[1]: INVALID_ARGUMENT: query: must not be "
        "empty; requests[2]: RESOURCE_EXHAUSTED: full\n"
    )


def test_a_failure_of_the_whole_call_is_one_line(
    target: str, service: FakeRerankService, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    service.script.append(
        Abort(
            grpc.StatusCode.INVALID_ARGUMENT,
            "requests: holds 2 requests; at most 1 allowed",
            [bad_request(("requests", "holds 2 requests; at most 1 allowed"))],
        )
    )
    path = batch_file(tmp_path, *({"query": q, "documents": ["x"]} for q in ("a", "b")))
    code, out, err = run(capsys, "--target", target, "--batch", path)
    assert (code, out) == (2, "")
    assert err == "rerank: INVALID_ARGUMENT: requests: holds 2 requests; at most 1 allowed\n"


def test_the_batch_from_stdin(
    target: str,
    service: FakeRerankService,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO('{"query": "q", "documents": []}\n'))
    code, out, _ = run(capsys, "--target", target, "--batch", "-")
    assert code == 0
    assert json.loads(out)["ranking"] == []
    assert len(sent(service).requests) == 1


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("{not json", "invalid JSON"),
        ('["q", ["a"]]', "expected a JSON object, got list"),
        ('{"query": "q", "documents": [], "top_n": 1}', "unknown key 'top_n'"),
        ('{"documents": ["a"]}', "'query' must be a string"),
        ('{"query": "q", "documents": "a"}', "'documents' must be a list"),
        ('{"query": "q", "documents": ["a", 3]}', "documents[1] must be a string or an object"),
        ('{"query": "q", "documents": [], "topN": "2"}', "'topN' must be an integer"),
        ('{"query": "q", "documents": [], "topN": true}', "'topN' must be an integer"),
        ('{"query": "q", "documents": [], "model": 1}', "'model' must be a string"),
        ('{"query": "q", "documents": [], "providerOptions": []}', "must be an object"),
        ('{"query": "q", "documents": [], "bypassCache": "yes"}', "must be true or false"),
    ],
)
def test_a_bad_line_is_named_with_its_number_before_any_call(
    target: str,
    service: FakeRerankService,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    line: str,
    message: str,
) -> None:
    path = batch_file(tmp_path, {"query": "fine", "documents": ["a"]}, "", line)
    code, out, err = run(capsys, "--target", target, "--batch", path)
    assert (code, out) == (2, "")
    assert err.startswith(f"rerank: error: {path}:3: ")
    assert message in err
    assert err.count("\n") == 1
    assert service.requests == []


@pytest.mark.parametrize(
    "extra",
    [["query"], ["--file", "docs.txt"], ["--pretty"], ["--list-models"]],
    ids=["query", "file", "pretty", "list-models"],
)
def test_batch_goes_alone(
    target: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str]
) -> None:
    path = batch_file(tmp_path, {"query": "q", "documents": []})
    code, out, err = run(capsys, "--target", target, "--batch", path, *extra)
    assert (code, out) == (2, "")
    assert "error:" in err


def test_an_unreadable_batch_file_exits_2(
    target: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run(capsys, "--target", target, "--batch", str(tmp_path / "missing.jsonl"))
    assert code == 2
    assert "cannot read" in err
