"""The conformance suite: golden request/response cases run against a rerank server.

Every `cases/*.json` is one call: `rpc` (`Rerank`, `BatchRerank` or `ListModels`), `request`
(the proto request as `google.protobuf.json_format` writes it), and `expect`, what must hold
for ANY backend (see `EXPECT_KEYS`; a BatchRerank's `results` hold one such expectation per
request). Invariants are checked on every successful Rerank, and every successful request of a
batch, whether or not a case states them: ranking length `min(topN, len(documents))`, each
`original_index` in range and unique, descending score with ties by ascending index, documents
echoed as sent, `model` filled in, a non-empty `id` unique within the run; a batch answers
with one result per request. Mock-only knowledge (`mockOrder`, the
golden `expected_mock_response`, the `mockOnly` fault cases) is checked only when the backend
is the bundled mock gateway: never the mock's scores elsewhere.

Where the server runs (environment variables; see docs/contract-testing.md, "The conformance
suite"):

- default: in-process, `start_server(Settings(port=0))`, over the embedded mock gateway;
- `RERANK_CONFORMANCE_GATEWAY_URL` and `AI_GATEWAY_API_KEY` both set: in-process, pointed at
  that gateway (mock-only cases skipped);
- `RERANK_CONFORMANCE_TARGET=host:port`: an already running server; mock-only cases and
  `mockOrder` run only with `RERANK_CONFORMANCE_MOCK=1` (that server answers from the bundled
  mock). The golden responses are compared only against a server the suite started itself.

`RERANK_CONFORMANCE_UPDATE=1` rewrites each successful case's `expected_mock_response` from
what the mock-backed server answered, instead of comparing against it.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import json_format
from google.protobuf.message import Message
from google.rpc import error_details_pb2, status_pb2

from rerank.contract import MAX_MESSAGE_BYTES, MAX_RESPONSE_BYTES
from rerank.server._app import start_server
from rerank.server._config import Settings, Upstream
from rerank.v1 import rerank_service_pb2 as pb
from rerank.v1 import rerank_service_pb2_grpc as pb_grpc

pytestmark = pytest.mark.contract

CASES_DIR = Path(__file__).resolve().parent / "cases"
TARGET_ENV = "RERANK_CONFORMANCE_TARGET"
TARGET_IS_MOCK_ENV = "RERANK_CONFORMANCE_MOCK"
GATEWAY_URL_ENV = "RERANK_CONFORMANCE_GATEWAY_URL"
API_KEY_ENV = "AI_GATEWAY_API_KEY"
UPDATE_ENV = "RERANK_CONFORMANCE_UPDATE"
REGENERATE = f"{UPDATE_ENV}=1 make test PYTEST_ARGS=tests/conformance"

CALL_TIMEOUT = 30.0
MASKED_ID = "<masked>"
MODEL_SLUG = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.:-]+")
DECIMAL = re.compile(r"\d+(\.\d+)?")
MESSAGE_LIMIT = [
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_RESPONSE_BYTES),
]

CASE_KEYS = {
    "name",
    "description",
    "rpc",
    "mockOnly",
    "request",
    "expect",
    "expected_mock_response",
}
EXPECT_KEYS = {
    "code": "the status code name, OK for success",
    "field": "INVALID_ARGUMENT: a BadRequest field violation, also named in the message",
    "reason": "errors: the ErrorInfo reason",
    "retryInfo": "errors: true when a RetryInfo must be attached",
    "rankingLength": "Rerank: how many ranked documents come back",
    "bestIndex": "Rerank: the original_index ranked first",
    "mockOrder": "Rerank, bundled mock only: the original_index order",
    "upstreamCalls": "Rerank: usage.upstreamCalls of an answer not from the cache",
    "includesModels": "ListModels: ids that must be listed",
    "modelsCount": "ListModels: how many models this page holds",
    "morePages": "ListModels: whether next_page_token is set",
    "results": "BatchRerank: one expectation per request, in order, with the keys above",
}
REQUESTS: Mapping[str, type[Message]] = {
    "Rerank": pb.RerankRequest,
    "ListModels": pb.ListModelsRequest,
    "BatchRerank": pb.BatchRerankRequest,
}


@dataclass(frozen=True)
class Case:
    path: Path
    data: dict[str, Any]

    @property
    def name(self) -> str:
        return str(self.data["name"])

    @property
    def expect(self) -> dict[str, Any]:
        return dict(self.data["expect"])

    @property
    def mock_only(self) -> bool:
        return bool(self.data.get("mockOnly", False))

    def request(self) -> Message:
        return json_format.ParseDict(self.data["request"], REQUESTS[self.data["rpc"]]())


def load_cases() -> list[Case]:
    return [
        Case(path, json.loads(path.read_text(encoding="utf-8")))
        for path in sorted(CASES_DIR.glob("*.json"))
    ]


CASES = load_cases()


@dataclass(frozen=True)
class Backend:
    """Where the cases run, read once from the environment."""

    target: str | None
    """An already running server, or None to start one in-process."""
    gateway_url: str | None
    api_key: str | None
    mock: bool
    """Whether the bundled mock answers: mock-only cases and checks apply."""

    @classmethod
    def from_environment(cls, environ: Mapping[str, str]) -> Backend:
        target = environ.get(TARGET_ENV) or None
        if target is not None:
            return cls(target, None, None, mock=environ.get(TARGET_IS_MOCK_ENV) == "1")
        url, key = environ.get(GATEWAY_URL_ENV) or None, environ.get(API_KEY_ENV) or None
        if url is not None and key is not None:
            return cls(None, url.rstrip("/"), key, mock=False)
        return cls(None, None, None, mock=True)

    @property
    def golden(self) -> bool:
        """Whether answers must equal the golden ones: only from a fresh server of our own
        over the embedded mock (a long-running one may answer from its cache, `cached`)."""
        return self.mock and self.target is None and self.gateway_url is None

    def settings(self) -> Settings:
        if self.gateway_url is None:
            return Settings(port=0, grace_period=1.0)
        return Settings(
            port=0,
            upstream=Upstream.GATEWAY,
            gateway_url=self.gateway_url,
            api_key=self.api_key,
            grace_period=1.0,
        )


@dataclass
class Seen:
    """Response ids seen in this session: every one must be new."""

    ids: set[str] = field(default_factory=set)


@pytest.fixture(scope="session")
def backend() -> Backend:
    return Backend.from_environment(os.environ)


@pytest.fixture(scope="session")
def seen() -> Seen:
    return Seen()


@pytest.fixture
async def target(backend: Backend) -> AsyncIterator[str]:
    # A fresh server per case: the server's circuit breaker and retry budget must not carry
    # one case's gateway failures into the next.
    if backend.target is not None:
        yield backend.target
        return
    running = await start_server(backend.settings())
    try:
        yield f"127.0.0.1:{running.port}"
    finally:
        await running.stop()


@dataclass(frozen=True)
class Outcome:
    response: Message | None = None
    error: grpc.aio.AioRpcError | None = None

    @property
    def code(self) -> str:
        return "OK" if self.error is None else self.error.code().name

    def status_details(self) -> list[Any]:
        """The unpacked `google.rpc` detail messages of the error (ErrorInfo, BadRequest, ...)."""
        assert self.error is not None
        # grpc's stubs type the metadata as `_Metadatum`s; at run time they are pairs.
        metadata: Any = self.error.trailing_metadata() or ()
        for key, value in metadata:
            if key == "grpc-status-details-bin":
                assert isinstance(value, bytes)
                return unpacked_details(status_pb2.Status.FromString(value))
        return []


def unpacked_details(status: status_pb2.Status) -> list[Any]:
    """The `google.rpc` detail messages a status carries (ErrorInfo, BadRequest, RetryInfo)."""
    details: list[Any] = []
    for packed in status.details:
        for kind in (
            error_details_pb2.ErrorInfo,
            error_details_pb2.BadRequest,
            error_details_pb2.RetryInfo,
        ):
            if packed.Is(kind.DESCRIPTOR):
                detail = kind()
                packed.Unpack(detail)
                details.append(detail)
    return details


async def call(target: str, case: Case) -> Outcome:
    async with grpc.aio.insecure_channel(target, options=MESSAGE_LIMIT) as channel:
        stub = pb_grpc.RerankServiceStub(channel)
        request = case.request()
        try:
            if isinstance(request, pb.RerankRequest):
                response: Message = await stub.Rerank(request, timeout=CALL_TIMEOUT)
            elif isinstance(request, pb.BatchRerankRequest):
                response = await stub.BatchRerank(request, timeout=CALL_TIMEOUT)
            else:
                assert isinstance(request, pb.ListModelsRequest)
                response = await stub.ListModels(request, timeout=CALL_TIMEOUT)
        except grpc.aio.AioRpcError as error:
            return Outcome(error=error)
        return Outcome(response=response)


# --- the checks ---------------------------------------------------------------------------


def check_error(outcome: Outcome, expect: Mapping[str, Any]) -> None:
    assert outcome.error is not None
    check_status_details(outcome.error.details() or "", outcome.status_details(), expect)


def check_status_details(message: str, details: list[Any], expect: Mapping[str, Any]) -> None:
    infos = [d for d in details if isinstance(d, error_details_pb2.ErrorInfo)]
    violations = [
        v.field
        for d in details
        if isinstance(d, error_details_pb2.BadRequest)
        for v in d.field_violations
    ]
    if "field" in expect:
        assert expect["field"] in violations, (violations, message)
        assert expect["field"] in message, message
    if "reason" in expect:
        assert [info.reason for info in infos] == [expect["reason"]], (infos, message)
        assert infos[0].domain == "rerank.v1"
    if expect.get("retryInfo"):
        assert any(isinstance(d, error_details_pb2.RetryInfo) for d in details), details


def check_rerank(
    request: pb.RerankRequest,
    response: pb.RerankResponse,
    expect: Mapping[str, Any],
    backend: Backend,
) -> None:
    ranking = list(response.ranking)
    count = len(request.documents)
    wanted = min(request.top_n, count) if request.HasField("top_n") else count
    indices = [item.original_index for item in ranking]
    assert len(ranking) == wanted, indices
    if "rankingLength" in expect:
        assert len(ranking) == expect["rankingLength"], indices
    assert all(0 <= index < count for index in indices), indices
    assert len(set(indices)) == len(indices), f"repeated indices: {indices}"
    keys = [(-item.score, item.original_index) for item in ranking]
    assert keys == sorted(keys), f"not by descending score, ties by index: {keys}"
    echo = not request.HasField("return_documents") or request.return_documents
    for item in ranking:
        if echo:
            assert item.document == request.documents[item.original_index], item.original_index
        else:
            assert not item.HasField("document"), f"{item.original_index} echoed nonetheless"
    check_usage(request, response, expect)
    assert response.model, "model must be filled in"
    if request.model:
        assert response.model == request.model
    if "bestIndex" in expect:
        assert indices[0] == expect["bestIndex"], indices
    if backend.mock and "mockOrder" in expect:
        assert indices == expect["mockOrder"]


def check_usage(
    request: pb.RerankRequest, response: pb.RerankResponse, expect: Mapping[str, Any]
) -> None:
    assert response.HasField("usage"), "usage must be set"
    usage = response.usage
    if usage.cost:
        assert DECIMAL.fullmatch(usage.cost), f"cost {usage.cost!r} is not a positional decimal"
    if response.cached or not request.documents:
        assert (usage.cost, usage.upstream_calls) == ("0", 0), usage
    else:
        assert usage.upstream_calls >= 1, usage
    # A long-running server may answer from its cache, with no call: the figure is a fresh one's.
    if "upstreamCalls" in expect and not response.cached:
        assert usage.upstream_calls == expect["upstreamCalls"], usage


def check_batch(
    request: pb.BatchRerankRequest,
    response: pb.BatchRerankResponse,
    expect: Mapping[str, Any],
    backend: Backend,
    seen: Seen,
) -> None:
    """One result per request, in order, each as its expectation says: a response passing
    every Rerank check, or the error with the code and details a Rerank would have got."""
    expected = expect.get("results", [])
    assert len(response.results) == len(request.requests), "one result per request"
    assert len(expected) == len(request.requests), "the case states every request's outcome"
    for position, (item, result, wanted) in enumerate(
        zip(request.requests, response.results, expected, strict=True)
    ):
        where = f"results[{position}]"
        if wanted["code"] == "OK":
            assert result.WhichOneof("result") == "response", (where, result.error)
            check_rerank(item, result.response, wanted, backend)
            check_new_id(result.response, seen)
            continue
        assert result.WhichOneof("result") == "error", where
        assert result.error.code == grpc.StatusCode[wanted["code"]].value[0], (where, result)
        check_status_details(result.error.message, unpacked_details(result.error), wanted)


def check_new_id(response: pb.RerankResponse, seen: Seen) -> None:
    assert response.id, "id must be set"
    assert response.id not in seen.ids, f"id {response.id!r} was already given"
    seen.ids.add(response.id)


def check_list_models(
    request: pb.ListModelsRequest, response: pb.ListModelsResponse, expect: Mapping[str, Any]
) -> None:
    ids = [model.id for model in response.models]
    assert ids, "no reranking models listed"
    assert len(set(ids)) == len(ids), f"repeated model ids: {ids}"
    assert all(MODEL_SLUG.fullmatch(model_id) for model_id in ids), ids
    assert all(model.documents_per_upstream_call >= 1 for model in response.models)
    if request.page_size:
        assert len(ids) <= request.page_size, ids
    else:
        assert not response.next_page_token, "the default page holds every model"
    for model_id in expect.get("includesModels", []):
        assert model_id in ids
    if "modelsCount" in expect:
        assert len(ids) == expect["modelsCount"], ids
    if "morePages" in expect:
        assert bool(response.next_page_token) == expect["morePages"]


def masked_json(response: Message) -> dict[str, Any]:
    # Fields at their default are written too (`originalIndex: 0`, `warnings: []`): a golden
    # should show them.
    data = json_format.MessageToDict(response, always_print_fields_with_no_presence=True)
    for answer in [data, *(result.get("response", {}) for result in data.get("results", []))]:
        if "id" in answer:
            answer["id"] = MASKED_ID
    # Through JSON with sorted keys: json_format's key order is not stable.
    ordered: dict[str, Any] = json.loads(json.dumps(data, sort_keys=True))
    return ordered


def check_golden(case: Case, response: Message) -> None:
    actual = masked_json(response)
    if os.environ.get(UPDATE_ENV) == "1":
        updated = {k: v for k, v in case.data.items() if k != "expected_mock_response"}
        updated["expected_mock_response"] = actual
        text = json.dumps(updated, indent=2, ensure_ascii=False) + "\n"
        case.path.write_text(text, encoding="utf-8")
        return
    assert "expected_mock_response" in case.data, (
        f"{case.path.name} has no golden response: regenerate with `{REGENERATE}`"
    )
    assert actual == case.data["expected_mock_response"], (
        f"the mock-backed answer changed; if that is intended, regenerate with `{REGENERATE}`"
    )


# --- the tests ----------------------------------------------------------------------------


def test_the_cases_are_well_formed() -> None:
    """A typo in a case must fail here rather than silently check nothing."""
    assert CASES, f"no cases in {CASES_DIR}"
    for case in CASES:
        data = case.data
        assert set(data) <= CASE_KEYS, (case.path.name, set(data) - CASE_KEYS)
        assert data["name"] == case.path.stem, case.path.name
        assert data["description"], case.path.name
        assert data["rpc"] in REQUESTS, case.path.name
        case.request()  # parses as the proto request
        expect = case.expect
        for each in [expect, *expect.get("results", [])]:
            assert set(each) <= set(EXPECT_KEYS), (case.path.name, set(each) - set(EXPECT_KEYS))
            assert each["code"] in grpc.StatusCode.__members__, case.path.name
        assert ("results" in expect) == (data["rpc"] == "BatchRerank" and expect["code"] == "OK")
        if expect["code"] != "OK" or data.get("mockOnly"):
            assert "expected_mock_response" not in data, case.path.name
        if data.get("mockOnly"):
            requests = data["request"].get("requests", [data["request"]])
            assert any("mockGateway" in r.get("providerOptions", {}) for r in requests), (
                case.path.name
            )


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
async def test_case(case: Case, backend: Backend, target: str, seen: Seen) -> None:
    if case.mock_only and not backend.mock:
        pytest.skip("mock-only: a real gateway cannot be made to fail on demand")
    expect = case.expect
    outcome = await call(target, case)
    message = "" if outcome.error is None else outcome.error.details()
    assert outcome.code == expect["code"], message
    if outcome.error is not None:
        check_error(outcome, expect)
        return
    response = outcome.response
    if isinstance(response, pb.RerankResponse):
        request = case.request()
        assert isinstance(request, pb.RerankRequest)
        check_rerank(request, response, expect, backend)
        check_new_id(response, seen)
    elif isinstance(response, pb.BatchRerankResponse):
        request = case.request()
        assert isinstance(request, pb.BatchRerankRequest)
        check_batch(request, response, expect, backend, seen)
    else:
        assert isinstance(response, pb.ListModelsResponse)
        request = case.request()
        assert isinstance(request, pb.ListModelsRequest)
        check_list_models(request, response, expect)
    # A fault case's answer names the gateway's generation ids, which hash the request body,
    # whose provider options come in no fixed order: it has no golden to compare.
    if backend.golden and not case.mock_only:
        check_golden(case, response)


def _seed_pair() -> tuple[pb.RerankRequest, pb.RerankResponse]:
    request = json_format.ParseDict(
        next(c for c in CASES if c.name == "rerank_seed_example").data["request"],
        pb.RerankRequest(),
    )
    response = pb.RerankResponse(
        model=request.model, id="rr_1", usage=pb.Usage(cost="0.002", upstream_calls=1)
    )
    for index, score in ((0, 0.9), (1, 0.5)):
        response.ranking.add(original_index=index, score=score, document=request.documents[index])
    return request, response


@pytest.mark.parametrize(
    "breakage",
    [
        "unsorted",
        "repeated",
        "out_of_range",
        "not_echoed",
        "too_long",
        "no_model",
        "ties",
        "echoed_when_refused",
        "no_usage",
        "exponent_cost",
        "calls_on_a_hit",
    ],
)
def test_the_checks_catch_a_broken_server(breakage: str) -> None:
    """The invariants are not vacuous: each breakage of a good answer is caught."""
    request, response = _seed_pair()
    mock = Backend(None, None, None, mock=False)
    check_rerank(request, response, {"rankingLength": 2}, mock)  # the good answer passes
    first, second = response.ranking
    if breakage == "unsorted":
        first.score, second.score = second.score, first.score
    elif breakage == "repeated":
        second.original_index = 0
        second.document.CopyFrom(request.documents[0])
    elif breakage == "out_of_range":
        second.original_index = 3
    elif breakage == "not_echoed":
        second.document.text = "Berlin"
    elif breakage == "too_long":
        response.ranking.add(original_index=2, score=0.1, document=request.documents[2])
    elif breakage == "no_model":
        response.model = ""
    elif breakage == "echoed_when_refused":
        request.return_documents = False
    elif breakage == "no_usage":
        response.ClearField("usage")
    elif breakage == "exponent_cost":
        response.usage.cost = "2E-3"
    elif breakage == "calls_on_a_hit":
        response.cached = True
    else:  # equal scores must come by ascending index
        first.score = second.score
        first.original_index, second.original_index = 1, 0
        first.document.CopyFrom(request.documents[1])
        second.document.CopyFrom(request.documents[0])
    with pytest.raises(AssertionError):
        check_rerank(request, response, {}, mock)


@pytest.mark.parametrize("breakage", ["missing", "reordered", "error_for_ok", "wrong_code"])
def test_the_batch_checks_catch_a_broken_server(breakage: str) -> None:
    """A batch answer is checked result by result, against its own request."""
    request, answer = _seed_pair()
    refused = status_pb2.Status(code=grpc.StatusCode.INVALID_ARGUMENT.value[0])
    refused.message = "query: must not be empty"
    refused.details.add().Pack(
        error_details_pb2.ErrorInfo(reason="INVALID_REQUEST", domain="rerank.v1")
    )
    refused.details.add().Pack(
        error_details_pb2.BadRequest(
            field_violations=[
                error_details_pb2.BadRequest.FieldViolation(
                    field="query", description="must not be empty"
                )
            ]
        )
    )
    batch = pb.BatchRerankRequest(requests=[request, pb.RerankRequest(query="")])
    response = pb.BatchRerankResponse(
        results=[pb.BatchRerankResult(response=answer), pb.BatchRerankResult(error=refused)]
    )
    expect = {
        "code": "OK",
        "results": [
            {"code": "OK", "rankingLength": 2},
            {"code": "INVALID_ARGUMENT", "field": "query", "reason": "INVALID_REQUEST"},
        ],
    }
    mock = Backend(None, None, None, mock=False)
    check_batch(batch, response, expect, mock, Seen())  # the good answer passes
    if breakage == "missing":
        del response.results[1]
    elif breakage == "reordered":
        response.results.reverse()
    elif breakage == "error_for_ok":
        response.results[0].error.CopyFrom(refused)
    else:
        response.results[1].error.code = grpc.StatusCode.INTERNAL.value[0]
    with pytest.raises(AssertionError):
        check_batch(batch, response, expect, mock, Seen())
