"""The mock gateway over a real socket, as ``python -m rerank.mock_gateway --port 0`` serves it.

Replays the requests each AI SDK generation was seen sending (``tests/wire``: gateway 3.0.232
and 4.0.146), byte for byte, and checks each answer the
way the SDK's response schema does; then the things only a real connection shows: the ``drop``
fault, the ready line, the control API, and a clean exit on signals.
"""

from __future__ import annotations

import json
import math
import re
import signal
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

import httpx
import orjson
import pytest

from tests.e2e.processes import RERANK_MOCK_GATEWAY
from tests.wire import captured_requests
from tools.processes import Process

pytestmark = pytest.mark.contract

REPO = Path(__file__).resolve().parents[2]
READY_PREFIX = "mock gateway listening on "


class MockProcess:
    """A running ``python -m rerank.mock_gateway`` and the (v4) base URL it announced."""

    def __init__(self, process: Process, ready_line: str, log: Path) -> None:
        self.process = process
        self.ready_line = ready_line
        self.base_url = ready_line.removeprefix(READY_PREFIX).strip()
        self.origin = self.base_url.removesuffix("/v4/ai")
        self.log = log


@contextmanager
def mock_process(log: Path, *flags: str) -> Iterator[MockProcess]:
    with log.open("wb") as stderr:
        process = Process(
            [RERANK_MOCK_GATEWAY, "--host", "127.0.0.1", "--port", "0", *flags],
            stderr=stderr,
            cwd=REPO,
        )
    with process:
        line = process.wait_for(".*", timeout=30).string
        assert line.startswith(READY_PREFIX + "http://127.0.0.1:"), (line, log.read_text())
        yield MockProcess(process, line, log)


@pytest.fixture(scope="module")
def mock(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MockProcess]:
    with mock_process(tmp_path_factory.mktemp("mock") / "stderr.log") as running:
        yield running


@pytest.fixture
def client() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=10) as c:
        yield c


def _captures(version: Literal["v3", "v4"]) -> list[Any]:
    # The model-list capture (GET /config) has no body to replay as a rerank.
    return [
        pytest.param(request, id=request["name"])
        for request in captured_requests(version)
        if request["method"] == "POST"
    ]


V3_REQUESTS = _captures("v3")
V4_REQUESTS = _captures("v4")
_V4_HEADERS: dict[str, str] = V4_REQUESTS[0].values[0]["headers"]


def replay(client: httpx.Client, mock: MockProcess, request: dict[str, Any]) -> httpx.Response:
    return client.request(
        request["method"],
        mock.origin + request["path"],
        headers=request["headers"],
        content=request["body"].encode("utf-8"),
    )


def check_as_the_sdk_does(
    payload: Any, document_count: int, top_n: int | None, *, v4: bool = False
) -> None:
    """The AI SDK's response schema and index check (spec §3), plus the gateway's duties."""
    assert isinstance(payload, dict)
    ranking = payload["ranking"]
    assert isinstance(ranking, list)
    for item in ranking:
        index, value = item["index"], item["relevanceScore"]
        assert isinstance(index, int) and not isinstance(index, bool)  # noqa: PT018
        assert 0 <= index < document_count
        assert isinstance(value, int | float) and not isinstance(value, bool)  # noqa: PT018
        assert math.isfinite(value)
    for warning in payload.get("warnings", []):
        if warning["type"] in ("unsupported", "compatibility"):
            assert isinstance(warning["feature"], str)
            assert isinstance(warning.get("details", ""), str)
        elif v4 and warning["type"] == "deprecated":
            assert isinstance(warning["setting"], str)
            assert isinstance(warning["message"], str)
        else:
            assert warning["type"] == "other"
            assert isinstance(warning["message"], str)
    for metadata in payload.get("providerMetadata", {}).values():
        assert isinstance(metadata, dict)
    # The SDK neither sorts nor cuts, so the gateway must have.
    scores = [item["relevanceScore"] for item in ranking]
    assert scores == sorted(scores, reverse=True)
    assert len({item["index"] for item in ranking}) == len(ranking)
    assert len(ranking) == (document_count if top_n is None else min(top_n, document_count))


@pytest.mark.parametrize("request_", V3_REQUESTS)
def test_sdk_requests_are_answered_as_the_sdk_expects(
    mock: MockProcess, client: httpx.Client, request_: dict[str, Any]
) -> None:
    response = replay(client, mock, request_)

    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    sent = json.loads(request_["body"])
    check_as_the_sdk_does(response.json(), len(sent["documents"]["values"]), sent.get("topN"))
    assert replay(client, mock, request_).content == response.content


@pytest.mark.parametrize("request_", V4_REQUESTS)
def test_v4_sdk_requests_are_answered_as_the_v4_sdk_expects(
    mock: MockProcess, client: httpx.Client, request_: dict[str, Any]
) -> None:
    response = replay(client, mock, request_)

    assert mock.base_url.endswith("/v4/ai")  # the announced URL is the v4 one
    assert response.status_code == 200, response.text
    sent = json.loads(request_["body"])
    payload = response.json()
    check_as_the_sdk_does(payload, len(sent["documents"]["values"]), sent.get("topN"), v4=True)
    team = request_["headers"].get("x-vercel-ai-gateway-team")
    assert payload["providerMetadata"]["mock"].get("team") == team


def test_a_v4_client_at_the_v3_url_is_told_where_v4_is(
    mock: MockProcess, client: httpx.Client
) -> None:
    response = replay(client, mock, {**V4_REQUESTS[0].values[0], "path": "/v3/ai/reranking-model"})

    assert response.status_code == 400
    assert "served under /v4/ai" in response.json()["error"]["message"]


@pytest.mark.parametrize(("path", "literal"), [("/v4/ai", "v4"), ("/v3/ai", "v3")])
def test_config_of_each_version_over_the_wire(
    mock: MockProcess, client: httpx.Client, path: str, literal: str
) -> None:
    # getAvailableModels() as gateway 4.0.146 sends it (GET, no model headers).
    headers = {k: v for k, v in _V4_HEADERS.items() if not k.startswith(("ai-model", "ai-rerank"))}
    response = client.get(mock.origin + path + "/config", headers=headers)

    assert response.status_code == 200
    models = response.json()["models"]
    assert {m["specification"]["specificationVersion"] for m in models} == {literal}


@pytest.mark.parametrize(
    "header",
    [
        "authorization",
        "ai-gateway-protocol-version",
        "ai-reranking-model-specification-version",
        "ai-model-id",
        "content-type",
    ],
)
@pytest.mark.parametrize(
    "request_", [V3_REQUESTS[0], pytest.param(V4_REQUESTS[0].values[0], id="v4")]
)
def test_each_required_header_of_the_sdk_is_checked(
    mock: MockProcess, client: httpx.Client, request_: dict[str, Any], header: str
) -> None:
    headers = {k: v for k, v in request_["headers"].items() if k != header}
    response = replay(client, mock, {**request_, "headers": headers})

    assert response.status_code == (401 if header == "authorization" else 400)
    assert list(response.json()) == ["error", "generationId"]


def rerank_with(options: dict[str, Any], *, version: str = "3") -> dict[str, Any]:
    body = {
        "documents": {"type": "text", "values": ["Paris is the capital of France.", "Berlin."]},
        "query": "capital of France",
        "providerOptions": options,
    }
    return {
        "method": "POST",
        "path": f"/v{version}/ai/reranking-model",
        "headers": {
            "authorization": "Bearer k",
            "ai-gateway-protocol-version": "0.0.1",
            "ai-reranking-model-specification-version": version,
            "ai-model-id": "cohere/rerank-v3.5",
            "content-type": "application/json",
        },
        "body": orjson.dumps(body).decode(),
    }


@pytest.mark.parametrize(
    ("variant", "message"),
    [("mid_body", "peer closed connection"), ("before_headers", "without sending a response")],
)
def test_drop_fault_closes_the_connection(
    mock: MockProcess, client: httpx.Client, variant: str, message: str
) -> None:
    request = rerank_with({"mockGateway": {"fault": "drop", "variant": variant}})

    with pytest.raises(httpx.RemoteProtocolError, match=message):
        replay(client, mock, request)
    assert replay(client, mock, rerank_with({})).status_code == 200  # the mock lives on


def test_rate_limit_headers_cross_the_wire(mock: MockProcess, client: httpx.Client) -> None:
    request = rerank_with({"mockGateway": {"fault": "rate_limit", "retryAfterMs": 2500}})
    response = replay(client, mock, request)

    assert response.status_code == 429
    assert (response.headers["retry-after-ms"], response.headers["retry-after"]) == ("2500", "3")


def test_a_deprecated_warning_crosses_the_wire_on_v4_only(
    mock: MockProcess, client: httpx.Client
) -> None:
    options = {"mockGateway": {"fault": "warning", "type": "deprecated", "setting": "topN"}}
    v4 = replay(client, mock, rerank_with(options, version="4"))
    v3 = replay(client, mock, rerank_with(options))

    assert v4.status_code == 200
    check_as_the_sdk_does(v4.json(), 2, None, v4=True)
    assert v4.json()["warnings"][-1]["type"] == "deprecated"
    assert v3.status_code == 400


def test_the_ready_line_names_the_v4_base_url_and_v3_shares_its_port(
    mock: MockProcess, client: httpx.Client
) -> None:
    # The shape other languages' suites parse: "mock gateway listening on URL", one line.
    match = re.fullmatch(
        r"mock gateway listening on (http://127\.0\.0\.1:[1-9]\d*)/v4/ai\n", mock.ready_line
    )
    assert match is not None, mock.ready_line
    v3 = replay(client, mock, rerank_with({}))

    assert v3.request.url.path == "/v3/ai/reranking-model"
    assert str(v3.request.url).startswith(match.group(1))
    assert v3.status_code == 200


def test_config_over_the_wire(mock: MockProcess, client: httpx.Client) -> None:
    response = client.get(mock.base_url + "/config", headers={"authorization": "Bearer k"})

    assert response.status_code == 200
    assert any(m["modelType"] == "reranking" for m in response.json()["models"])


def test_the_control_api_is_off_without_the_flag(mock: MockProcess, client: httpx.Client) -> None:
    response = client.post(
        mock.origin + "/_control/fail_next",
        json={"fault": "rate_limit"},
        headers={"authorization": "Bearer k"},
    )

    assert response.status_code == 404
    assert replay(client, mock, rerank_with({})).status_code == 200


def test_the_control_api_scripts_the_next_calls_over_http(
    tmp_path: Path, client: httpx.Client
) -> None:
    log = tmp_path / "stderr.log"
    with mock_process(log, "--control", "--api-key", "s3cret") as running:
        base = running.origin + "/_control"
        auth = {"authorization": "Bearer s3cret"}

        def call(version: str = "4") -> httpx.Response:
            request = rerank_with({}, version=version)
            return replay(client, running, {**request, "headers": {**request["headers"], **auth}})

        unauthorised = client.post(base + "/reset")
        scripted = client.post(
            base + "/fail_next", json={"fault": "rate_limit", "retryAfterMs": 2500}, headers=auth
        )
        limited, after = call(), call("3")
        scores = {"Berlin.": 0.99, "Paris is the capital of France.": 0.01}
        fixed = client.post(base + "/set_scores", json={"scores": scores}, headers=auth)
        reordered = call()
        client.post(base + "/fail_next", json={"fault": "error", "times": 3}, headers=auth)
        reset = client.post(base + "/reset", headers=auth)
        clean = call()
        announced = running.log.read_text()

    assert unauthorised.status_code == 401
    assert (scripted.status_code, scripted.json()) == (200, {"pendingFaults": 1})
    assert (limited.status_code, limited.headers["retry-after-ms"]) == (429, "2500")
    assert after.status_code == 200
    assert fixed.status_code == 200
    assert [item["index"] for item in reordered.json()["ranking"]] == [1, 0]
    assert (reset.status_code, reset.json()) == (200, {"pendingFaults": 0})
    assert clean.status_code == 200
    assert [item["index"] for item in clean.json()["ranking"]] == [0, 1]
    assert f"control API on: POST {base}/" in announced


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_the_process_announces_itself_once_and_exits_cleanly(
    tmp_path: Path, client: httpx.Client, sig: signal.Signals
) -> None:
    with mock_process(tmp_path / "stderr.log", "--api-key", "s3cret") as running:
        good = client.get(running.base_url + "/config", headers={"authorization": "Bearer s3cret"})
        bad = client.get(running.base_url + "/config", headers={"authorization": "Bearer nope"})
        running.process.signal(sig)
        assert running.process.wait(timeout=15) == 0, running.log.read_text()
        rest_of_stdout = "".join(running.process.lines[1:])

    assert (good.status_code, bad.status_code) == (200, 401)
    assert rest_of_stdout == ""  # the ready line was the only line; logs go to stderr


def test_settings_flags_reach_the_app(tmp_path: Path, client: httpx.Client) -> None:
    with mock_process(tmp_path / "stderr.log", "--error-rate", "1", "--seed", "3") as running:
        response = replay(client, running, rerank_with({}))

    assert response.status_code == 503
    assert response.json()["error"]["type"] == "internal_server_error"


def test_bad_flags_and_busy_ports_fail_fast(mock: MockProcess) -> None:
    nonsense = subprocess.run(
        [RERANK_MOCK_GATEWAY, "--error-rate", "2"],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=30,
        check=False,
    )
    port = mock.origin.rsplit(":", 1)[1]
    busy = subprocess.run(
        [RERANK_MOCK_GATEWAY, "--host", "127.0.0.1", "--port", port],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=30,
        check=False,
    )

    assert (nonsense.returncode, nonsense.stdout) == (2, "")
    assert "error_rate" in nonsense.stderr
    assert (busy.returncode, busy.stdout) == (1, "")
    assert "cannot bind" in busy.stderr
