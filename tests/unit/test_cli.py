"""The `rerank` command, called as `main([...])` against the scripted fake RerankService."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from rerank.client.cli import main
from rerank.v1 import rerank_service_pb2 as pb

from .client_fakes import Abort, Delay, FakeRerankService, bad_request, serve


@pytest.fixture
def service() -> FakeRerankService:
    return FakeRerankService()


@pytest.fixture
def target(service: FakeRerankService, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    # The CLI reads RERANK_TARGET; a value from the developer's shell must not leak in.
    monkeypatch.delenv("RERANK_TARGET", raising=False)
    with serve(service) as address:
        yield address


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def last_request(service: FakeRerankService) -> pb.RerankRequest:
    request = service.requests[-1]
    assert isinstance(request, pb.RerankRequest)
    return request


def test_query_and_documents_from_arguments(
    target: str, service: FakeRerankService, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(
        capsys,
        "--target", target,
        "--model", "cohere/rerank-v3.5",
        "--top-n", "2",
        "What is the capital of France?",
        "Paris is the capital of France.",
        "Berlin is the capital of Germany.",
        "Madrid is the capital of Spain.",
    )  # fmt: skip
    assert (code, err) == (0, "")
    assert out.count("\n") == 1  # one line without --pretty
    result = json.loads(out)
    assert result == {
        "ranking": [
            {"originalIndex": 2, "score": 1.0, "document": "Madrid is the capital of Spain."},
            {"originalIndex": 1, "score": 0.9, "document": "Berlin is the capital of Germany."},
        ],
        "rerankedDocuments": [
            "Madrid is the capital of Spain.",
            "Berlin is the capital of Germany.",
        ],
        "model": "cohere/rerank-v3.5",
        "id": "rr-test",
        "warnings": [],
        "providerMetadata": None,
        "cached": False,
        "usage": None,
    }
    request = last_request(service)
    assert not request.HasField("return_documents")
    assert request.query == "What is the capital of France?"
    assert request.model == "cohere/rerank-v3.5"
    assert request.top_n == 2
    assert len(request.documents) == 3


def test_target_from_environment(
    target: str,
    service: FakeRerankService,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("RERANK_TARGET", target)
    code, _, _ = run(capsys, "q", "a")
    assert code == 0
    assert len(service.requests) == 1


def test_documents_from_file_after_arguments(
    target: str, service: FakeRerankService, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "docs.txt"
    path.write_text("first line\n\n   \nsecond line\r\nthird line", encoding="utf-8")
    code, out, _ = run(capsys, "--target", target, "--file", str(path), "q", "from argv")
    assert code == 0
    request = last_request(service)
    assert not request.HasField("top_n")
    assert [d.text for d in request.documents] == [
        "from argv",
        "first line",
        "second line",
        "third line",
    ]
    assert len(json.loads(out)["ranking"]) == 4


def test_documents_from_stdin(
    target: str,
    service: FakeRerankService,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO("alpha\nbeta\n"))
    code, out, _ = run(capsys, "--target", target, "--file", "-", "q")
    assert code == 0
    assert [d.text for d in last_request(service).documents] == ["alpha", "beta"]
    assert json.loads(out)["rerankedDocuments"] == ["beta", "alpha"]


def test_jsonl_objects_and_strings(
    target: str,
    service: FakeRerankService,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    lines = ['{"title": "Paris", "year": 2020}', "", '{"title": "Berlin", "tags": [1, 2.5]}']
    monkeypatch.setattr("sys.stdin", io.StringIO("\n".join(lines) + "\n"))
    code, out, _ = run(capsys, "--target", target, "--jsonl", "--file", "-", "q")
    assert code == 0
    documents = last_request(service).documents
    assert [d.WhichOneof("content") for d in documents] == ["object", "object"]
    # Printed as JSON.stringify would: 2020, not 2020.0.
    assert '"year":2020' in out
    assert json.loads(out)["rerankedDocuments"] == [
        {"title": "Berlin", "tags": [1, 2.5]},
        {"title": "Paris", "year": 2020},
    ]


def test_jsonl_strings_are_text_documents(
    target: str, service: FakeRerankService, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "docs.jsonl"
    path.write_text('"one"\n"two \\"quoted\\""\n', encoding="utf-8")
    code, _, _ = run(capsys, "--target", target, "--jsonl", "--file", str(path), "q")
    assert code == 0
    assert [d.text for d in last_request(service).documents] == ["one", 'two "quoted"']


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"ok": 1}\n{not json}\n', "<stdin>:2: invalid JSON"),
        ('{"ok": 1}\n\n42\n', "<stdin>:3: expected a JSON object or string, got int"),
        ("[1, 2]\n", "<stdin>:1: expected a JSON object or string, got list"),
    ],
)
def test_bad_jsonl_is_one_line_and_exit_2(
    target: str,
    service: FakeRerankService,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    content: str,
    message: str,
) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO(content))
    code, out, err = run(capsys, "--target", target, "--jsonl", "--file", "-", "q")
    assert code == 2
    assert out == ""
    assert err.startswith(f"rerank: error: {message}")
    assert err.count("\n") == 1
    assert "Traceback" not in err
    assert service.requests == []


def test_missing_file_is_one_line_and_exit_2(
    target: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "nope.txt"
    code, _, err = run(capsys, "--target", target, "--file", str(missing), "q")
    assert code == 2
    assert err.startswith(f"rerank: error: cannot read {missing}")
    assert err.count("\n") == 1


def test_pretty_output(target: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "--target", target, "--pretty", "q", "a", "b")
    assert code == 0
    assert out.startswith('{\n  "ranking": [\n')
    assert json.loads(out)["rerankedDocuments"] == ["b", "a"]


def test_provider_options(
    target: str, service: FakeRerankService, capsys: pytest.CaptureFixture[str]
) -> None:
    options = '{"cohere": {"maxTokensPerDoc": 512}}'
    code, _, _ = run(capsys, "--target", target, "--provider-options", options, "q", "a")
    assert code == 0
    fields = last_request(service).provider_options.fields
    assert fields["cohere"].struct_value.fields["maxTokensPerDoc"].number_value == 512


@pytest.mark.parametrize(
    ("value", "message"),
    [("{bad", "invalid JSON"), ("[1]", "expected a JSON object")],
)
def test_bad_provider_options_exit_2(
    target: str,
    service: FakeRerankService,
    capsys: pytest.CaptureFixture[str],
    value: str,
    message: str,
) -> None:
    code, _, err = run(capsys, "--target", target, "--provider-options", value, "q", "a")
    assert code == 2
    assert err.startswith(f"rerank: error: --provider-options: {message}")
    assert service.requests == []


def test_warnings_are_printed_as_the_sdk_shows_them(
    target: str, service: FakeRerankService, capsys: pytest.CaptureFixture[str]
) -> None:
    service.script.append(
        pb.RerankResponse(
            ranking=[
                pb.RankedDocument(original_index=0, score=0.5, document=pb.Document(text="a"))
            ],
            model="cohere/rerank-v3.5",
            id="rr-w",
            warnings=[
                pb.Warning(type=pb.Warning.TYPE_DEPRECATED, setting="topN", message="use top_k"),
                pb.Warning(type=pb.Warning.TYPE_OTHER, message="unknown warning type 'shiny'"),
            ],
        )
    )
    code, out, _ = run(capsys, "--target", target, "q", "a")
    assert code == 0
    assert json.loads(out)["warnings"] == [
        {"type": "deprecated", "setting": "topN", "message": "use top_k"},
        {"type": "other", "message": "unknown warning type 'shiny'"},
    ]


def test_no_documents_is_a_query_like_any_other(
    target: str, service: FakeRerankService, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run(capsys, "--target", target, "q")
    assert (code, err) == (0, "")
    assert list(last_request(service).documents) == []


def test_list_models(target: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "--target", target, "--list-models")
    assert code == 0
    models: list[dict[str, Any]] = json.loads(out)
    assert models[0] == {
        "id": "cohere/rerank-v3.5",
        "name": "Rerank 3.5",
        "description": "Cohere's reranker",
        "provider": "cohere",
        "pricing": {"input": "0.002"},
        "documentsPerUpstreamCall": 0,
    }
    assert [m["id"] for m in models] == ["cohere/rerank-v3.5", "voyage/rerank-2"]


def test_no_documents_asks_for_none_and_prints_indices_and_scores(
    target: str, service: FakeRerankService, capsys: pytest.CaptureFixture[str]
) -> None:
    service.script.append(
        pb.RerankResponse(
            ranking=[pb.RankedDocument(original_index=1, score=0.5)],
            model="cohere/rerank-v3.5",
            id="rr-1",
            usage=pb.Usage(cost="0.002", upstream_calls=1),
        )
    )
    code, out, err = run(capsys, "--target", target, "--no-documents", "q", "a", "b")
    assert (code, err) == (0, "")
    request = last_request(service)
    assert request.HasField("return_documents")
    assert not request.return_documents
    result = json.loads(out)
    assert result["ranking"] == [{"originalIndex": 1, "score": 0.5}]
    assert "rerankedDocuments" not in result
    assert result["usage"] == {"cost": "0.002", "upstreamCalls": 1}


def test_usage_prints_the_callers_standing_with_its_token(
    target: str,
    service: FakeRerankService,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("RERANK_TOKEN", "t0ken")
    code, out, err = run(capsys, "--target", target, "--usage")
    assert (code, err) == (0, "")
    assert isinstance(service.requests[-1], pb.GetUsageRequest)
    assert service.metadata[-1]["authorization"] == "Bearer t0ken"
    usage = json.loads(out)
    assert usage["caller"] == "search-api"
    assert (usage["spentUsd"], usage["dailyBudgetUsd"]) == ("0.003", "0.0025")
    assert (usage["calls"], usage["refused"]) == (3, 1)


def test_without_rerank_token_no_authorization_is_sent(
    target: str,
    service: FakeRerankService,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("RERANK_TOKEN", raising=False)
    code, _, _ = run(capsys, "--target", target, "q", "a")
    assert code == 0
    assert "authorization" not in service.metadata[-1]


def test_invalid_argument_exits_2_with_field_violations(
    target: str, service: FakeRerankService, capsys: pytest.CaptureFixture[str]
) -> None:
    service.script.append(
        Abort(
            grpc.StatusCode.INVALID_ARGUMENT,
            "invalid request",
            [bad_request(("documents[1]", "must not be empty"), ("top_n", "must be >= 1"))],
        )
    )
    code, out, err = run(capsys, "--target", target, "--top-n", "0", "q", "a", "")
    assert code == 2
    assert out == ""
    assert err == (
        "rerank: INVALID_ARGUMENT: invalid request "
        "(documents[1]: must not be empty; top_n: must be >= 1)\n"
    )


@pytest.mark.parametrize(
    ("code", "name"),
    [
        (grpc.StatusCode.NOT_FOUND, "NOT_FOUND"),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, "RESOURCE_EXHAUSTED"),
        (grpc.StatusCode.INTERNAL, "INTERNAL"),
    ],
)
def test_other_rpc_errors_exit_1(
    target: str,
    service: FakeRerankService,
    capsys: pytest.CaptureFixture[str],
    code: grpc.StatusCode,
    name: str,
) -> None:
    service.script.append(Abort(code, "it failed"))
    exit_code, out, err = run(capsys, "--target", target, "--model", "x/y", "q", "a")
    assert exit_code == 1
    assert out == ""
    assert err == f"rerank: {name}: it failed\n"


def test_list_models_error_exits_1(
    target: str, service: FakeRerankService, capsys: pytest.CaptureFixture[str]
) -> None:
    service.script.append(Abort(grpc.StatusCode.PERMISSION_DENIED, "not for you"))
    code, _, err = run(capsys, "--target", target, "--list-models")
    assert code == 1
    assert err == "rerank: PERMISSION_DENIED: not for you\n"


def test_timeout_exits_1_with_deadline_exceeded(
    target: str, service: FakeRerankService, capsys: pytest.CaptureFixture[str]
) -> None:
    service.script.append(Delay(5))
    code, _, err = run(capsys, "--target", target, "--timeout", "0.1", "q", "a")
    assert code == 1
    assert err.startswith("rerank: DEADLINE_EXCEEDED: ")
    assert err.count("\n") == 1


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ([], "the query is required"),
        (["--list-models", "q"], "--list-models takes no query"),
        (["--usage", "q"], "--usage takes no query"),
        (["--usage", "--list-models"], "--list-models and --usage go alone"),
        (["--jsonl", "q", "a"], "--jsonl needs --file"),
        (["--top-n", "two", "q", "a"], "invalid int value"),
        (["--no-such-flag", "q"], "unrecognized arguments"),
    ],
)
def test_usage_errors_exit_2(
    target: str,
    service: FakeRerankService,
    capsys: pytest.CaptureFixture[str],
    argv: list[str],
    message: str,
) -> None:
    code, out, err = run(capsys, "--target", target, *argv)
    assert code == 2
    assert out == ""
    assert message in err
    assert "Traceback" not in err
    assert service.requests == []


def test_unbuildable_request_exits_2(
    target: str, service: FakeRerankService, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run(capsys, "--target", target, "--top-n", str(2**40), "q", "a")
    assert code == 2
    assert err.startswith("rerank: error: ")
    assert service.requests == []


def test_help_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "--help")
    assert code == 0
    assert "--list-models" in out


def test_no_cache_asks_the_server_to_bypass_its_cache(
    service: Any, target: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--target", target, "--no-cache", "q", "a"]) == 0
    assert last_request(service).bypass_cache
    assert main(["--target", target, "q", "a"]) == 0
    assert not last_request(service).bypass_cache
