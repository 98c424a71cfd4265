"""Both AI SDK generations against the mock gateway process, each at its own base URL.

`ai` 6 with `@ai-sdk/gateway` 3 speaks protocol v3 (`/v3/ai`), `ai` 7 with `@ai-sdk/gateway` 4
speaks v4 (`/v4/ai`). Every case is the SDK's own `createGateway` + `rerank()` (or
`getAvailableModels()`) in a Node process, as a team on that SDK would contract-test against
`rerank-mock-gateway`; the answers are judged by the SDK's own error classes and result.
"""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from rerank.mock_gateway import RERANKING_MODEL_IDS
from tests.conftest import SEED_DOCUMENTS, SEED_MODEL, SEED_QUERY
from tests.e2e.processes import RERANK_MOCK_GATEWAY
from tests.sdk.conftest import (
    AI_7,
    GENERATIONS,
    TEST_SECONDS,
    Generation,
    assert_rate_limited_to_the_end,
    run_script,
)
from tools import node
from tools.processes import Process

# The first test also waits for the session's `npm ci` (sdk_scripts): a budget that covers it.
pytestmark = [
    pytest.mark.e2e,
    pytest.mark.usefixtures("sdk_scripts"),
    pytest.mark.timeout(TEST_SECONDS),
]

API_KEY = "test-key-123"
READY = r"mock gateway listening on (http://\S+)/v4/ai\s*$"


def start_mock(*flags: str) -> Iterator[str]:
    """A `rerank-mock-gateway --port 0` process; yields its origin (`http://127.0.0.1:PORT`)."""
    with Process([RERANK_MOCK_GATEWAY, "--port", "0", *flags]) as process:
        yield process.wait_for(READY).group(1)


@pytest.fixture(scope="module")
def mock() -> Iterator[str]:
    """The mock as docs/contract-testing.md starts it: any bearer key is accepted."""
    yield from start_mock()


@pytest.fixture(scope="module")
def keyed_mock() -> Iterator[str]:
    """A mock that accepts one key only."""
    yield from start_mock("--api-key", API_KEY)


def rerank(generation: Generation, origin: str, *args: str, api_key: str = API_KEY) -> Any:
    return run_script(
        "rerank.mjs",
        generation,
        "--base-url",
        generation.base_url(origin),
        "--api-key",
        api_key,
        *args,
    )


def faulted(fault: dict[str, Any]) -> str:
    return json.dumps({"mockGateway": fault})


def test_the_node_and_the_sdk_releases_are_the_pinned_ones(sdk_scripts: Path) -> None:
    """The Node is the dev install's and satisfies every engine range the lockfile records;
    each `ai` imports exactly the `@ai-sdk/gateway` release pinned beside it."""
    run = run_script("versions.mjs", None).ok()
    assert run["node"] == node_version()
    lock = json.loads((sdk_scripts / "package-lock.json").read_text())
    for name, package in lock["packages"].items():
        if minimum := package.get("engines", {}).get("node"):
            assert satisfies(run["node"], minimum), (name, minimum)
    pinned = json.loads((sdk_scripts / "package.json").read_text())["dependencies"]
    for generation, release in run["sdk"].items():
        ai, gateway = pinned[f"ai-v{generation}"], pinned[f"gateway-v{int(generation) - 3}"]
        assert ai == f"npm:ai@{release['ai']}"
        assert gateway == f"npm:@ai-sdk/gateway@{release['gateway']}"
        assert release["aiImportsGateway"] == release["gateway"]


def node_version() -> str:
    completed = subprocess.run(
        node.command("node", "--version"), capture_output=True, text=True, check=True, timeout=30
    )
    return completed.stdout.strip().removeprefix("v")


def satisfies(version: str, minimum: str) -> bool:
    """`minimum` as npm writes the ranges found here: `>=22`, `>= 20`, `>=18.17`, `>=8.0.0`."""
    match = re.fullmatch(r">=\s*(\d+(?:\.\d+)*)", minimum)
    assert match is not None, f"an engine range this check does not read: {minimum}"
    have = [int(part) for part in version.split(".")]
    need = [int(part) for part in match.group(1).split(".")]
    return have >= need + [0] * (3 - len(need))


@pytest.mark.parametrize("generation", GENERATIONS)
def test_the_seed_example(mock: str, generation: Generation) -> None:
    """rerank.mjs without options is the seed example; the SDK's ranking is the mock's answer
    on the wire, mapped as the SDK maps it."""
    result = rerank(generation, mock).ok()

    wire = httpx.post(
        generation.base_url(mock) + "/reranking-model",
        headers={
            "authorization": f"Bearer {API_KEY}",
            "ai-gateway-protocol-version": "0.0.1",
            "ai-reranking-model-specification-version": generation.protocol.removeprefix("v"),
            "ai-model-id": SEED_MODEL,
        },
        json={
            "documents": {"type": "text", "values": list(SEED_DOCUMENTS)},
            "query": SEED_QUERY,
            "topN": 2,
        },
        timeout=10,
    ).json()
    assert result["ranking"] == [
        {
            "originalIndex": item["index"],
            "score": item["relevanceScore"],
            "document": SEED_DOCUMENTS[item["index"]],
        }
        for item in wire["ranking"]
    ]
    assert len(result["ranking"]) == 2
    assert result["ranking"][0]["document"] == SEED_DOCUMENTS[0]  # Paris answers the query
    assert result["rerankedDocuments"] == [item["document"] for item in result["ranking"]]
    assert result["providerMetadata"] == wire["providerMetadata"]
    assert result["modelId"] == SEED_MODEL
    assert result["warnings"] == []


@pytest.mark.parametrize("generation", GENERATIONS)
def test_object_documents(mock: str, generation: Generation) -> None:
    documents = [
        {"title": "Germany", "text": "Berlin is the capital of Germany."},
        {"title": "France", "text": "Paris is the capital of France.", "population": 2102650},
        {"title": "Spain", "text": "Madrid is the capital of Spain.", "tags": ["es", "eu"]},
    ]
    result = rerank(generation, mock, "--documents", json.dumps(documents), "--top-n", "3").ok()

    ranking = result["ranking"]
    assert sorted(item["originalIndex"] for item in ranking) == [0, 1, 2]
    assert all(item["document"] == documents[item["originalIndex"]] for item in ranking)
    assert ranking[0]["document"]["title"] == "France"
    scores = [item["score"] for item in ranking]
    assert scores == sorted(scores, reverse=True)


@pytest.mark.parametrize("generation", GENERATIONS)
def test_an_unknown_model_is_gateway_model_not_found(mock: str, generation: Generation) -> None:
    error = rerank(generation, mock, "--model", "cohere/rerank-v0").error

    assert error["class"] == "GatewayModelNotFoundError"
    assert error["statusCode"] == 404
    assert error["modelId"] == "cohere/rerank-v0"
    assert error["isRetryable"] is False


@pytest.mark.parametrize("generation", GENERATIONS)
def test_no_bearer_header_is_gateway_authentication(mock: str, generation: Generation) -> None:
    """The custom fetch drops `authorization`; the mock accepts any key but none."""
    assert rerank(generation, mock).returncode == 0  # the same call with the header passes
    error = rerank(generation, mock, "--drop-authorization").error

    assert error["class"] == "GatewayAuthenticationError"
    assert error["statusCode"] == 401


@pytest.mark.parametrize("generation", GENERATIONS)
def test_a_wrong_key_is_gateway_authentication(keyed_mock: str, generation: Generation) -> None:
    assert rerank(generation, keyed_mock).returncode == 0  # the mock's own key passes
    error = rerank(generation, keyed_mock, api_key="not-" + API_KEY).error

    assert error["class"] == "GatewayAuthenticationError"
    assert error["statusCode"] == 401
    assert error["isRetryable"] is False


@pytest.mark.parametrize("generation", GENERATIONS)
def test_a_rate_limit_is_retried_then_a_retry_error(mock: str, generation: Generation) -> None:
    """Every attempt is answered 429 with `retry-after-ms: 0` (so the SDK does not wait its
    2 s and 4 s); after its 3 attempts the SDK throws RetryError, lastError the rate limit."""
    fault = faulted({"fault": "rate_limit", "retryAfterMs": 0})
    error = rerank(generation, mock, "--provider-options", fault).error

    assert_rate_limited_to_the_end(error)


@pytest.mark.parametrize("generation", GENERATIONS)
def test_get_available_models_lists_the_reranking_models(mock: str, generation: Generation) -> None:
    run = run_script(
        "models.mjs",
        generation,
        "--base-url",
        generation.base_url(mock),
        "--api-key",
        API_KEY,
    )
    models = run.ok()["models"]

    reranking = [model["id"] for model in models if model["modelType"] == "reranking"]
    assert sorted(reranking) == sorted(RERANKING_MODEL_IDS)
    assert {model["specificationVersion"] for model in models} == {generation.protocol}


def test_a_deprecated_warning_reaches_the_result(mock: str) -> None:
    """v4 only: the SDK accepts a `deprecated` warning and hands it on with the ranking."""
    warning = {"type": "deprecated", "setting": "topN", "message": "topN is going away"}
    fault = faulted({"fault": "warning", **warning})
    result = rerank(AI_7, mock, "--provider-options", fault).ok()

    assert len(result["ranking"]) == 2
    assert result["warnings"] == [warning]


def test_not_found_is_gateway_not_found(mock: str) -> None:
    """v4 only: a missing resource other than a model has its own class."""
    error = rerank(AI_7, mock, "--provider-options", faulted({"fault": "not_found"})).error

    assert error["class"] == "GatewayNotFoundError"
    assert error["statusCode"] == 404


def test_the_team_reaches_the_mock(mock: str) -> None:
    """v4 only (gateway 3 has no such setting): createGateway({teamIdOrSlug}) sends
    x-vercel-ai-gateway-team, and the mock shows it back in providerMetadata."""
    result = rerank(AI_7, mock, "--team", "team_abc123").ok()

    assert result["providerMetadata"]["mock"]["team"] == "team_abc123"
    assert "team" not in rerank(AI_7, mock).ok()["providerMetadata"]["mock"]
