"""Wire fidelity: our gateway adapter sends what the AI SDK itself sends, for the same call.

A recording HTTP server on loopback (tests/scripted_http.py) takes one call from the SDK (a Node
process, tests/sdk) and then the same call from `rerank.server._gateway.GatewayReranker`, built
with the matching `protocol=` and, through the server's own request translator, from a
`rerank.v1.RerankRequest` as a gRPC caller would send it. Compared: the method and path; every
header the SDK sends, by value (but user-agent, and the three that fetch itself adds, listed
below); the headers only we send, listed per case; the body byte for byte, except what passes
through a protobuf Struct (object documents, providerOptions), whose key order the Struct does
not keep: those parts are compared as JSON values.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import pytest

from rerank.server._config import GatewayProtocol, Settings
from rerank.server._domain import Limits
from rerank.server._gateway import GatewayReranker
from rerank.server._translate import query_from_proto
from rerank.v1 import rerank_service_pb2 as pb
from tests.conftest import SEED_DOCUMENTS, SEED_MODEL, SEED_QUERY
from tests.scripted_http import Reply, Request, ScriptedServer
from tests.sdk.conftest import AI_6, AI_7, GENERATIONS, TEST_SECONDS, Generation, arun_script

# The first test also waits for the session's `npm ci` (sdk_scripts): a budget that covers it.
pytestmark = [
    pytest.mark.e2e,
    pytest.mark.usefixtures("sdk_scripts"),
    pytest.mark.timeout(TEST_SECONDS),
]

API_KEY = "test-key-123"
TEAM = "team_abc123"
TEAM_HEADER = "x-vercel-ai-gateway-team"

# Free text on both sides.
FREE_HEADERS = frozenset({"user-agent"})
# Added by Node's fetch (undici, after the WHATWG fetch standard), not by the SDK, and meaningless
# to the gateway: HTTP/1.1 keeps the connection alive without saying so (as aiohttp does), and
# accept-language / sec-fetch-mode are a browser's. Their values are still checked.
FETCH_ONLY_HEADERS = {"connection": "keep-alive", "accept-language": "*", "sec-fetch-mode": "cors"}


@dataclass(frozen=True)
class Call:
    """One rerank call, as SDK arguments and as the rerank.v1 request a gRPC caller sends."""

    name: str
    documents: list[Any]
    top_n: int | None = None
    provider_options: dict[str, Any] | None = None
    team: str | None = None

    def sdk_args(self, generation: Generation) -> list[str]:
        args = ["--documents", json.dumps(self.documents)]
        args += ["--top-n", "none" if self.top_n is None else str(self.top_n)]
        if self.provider_options is not None:
            args += ["--provider-options", json.dumps(self.provider_options)]
        if self.team is not None and generation is AI_7:
            args += ["--team", self.team]
        return args

    def ours_only(self, generation: Generation) -> frozenset[str]:
        """The headers only our adapter sends: gateway 3 has no teamIdOrSlug setting, so on v3
        only our `team=` sends the team header."""
        return frozenset({TEAM_HEADER}) if self.team and generation is AI_6 else frozenset()

    def request(self) -> pb.RerankRequest:
        request = pb.RerankRequest(model=SEED_MODEL, query=SEED_QUERY)
        for document in self.documents:
            if isinstance(document, str):
                request.documents.add(text=document)
            else:
                request.documents.add().object.update(document)
        if self.top_n is not None:
            request.top_n = self.top_n
        if self.provider_options is not None:
            request.provider_options.update(self.provider_options)
        return request


CALLS = [
    Call("text documents, topN 2", list(SEED_DOCUMENTS), top_n=2),
    Call(
        "text documents, no topN, providerOptions",
        list(SEED_DOCUMENTS),
        provider_options={
            "gateway": {"order": ["cohere", "bedrock"]},
            "cohere": {"maxTokensPerDoc": 512},
        },
    ),
    Call(
        "object documents, topN 1",
        [
            {"title": "a", "text": "Paris", "year": 2024},
            {"title": "b", "text": "Berlin", "tags": ["de"]},
            {"title": "c", "text": "Madrid", "nested": {"z": 1, "a": None}},
        ],
        top_n=1,
    ),
    Call(
        "text escaped as JSON.stringify escapes it",
        [
            'Zürich "quoted" back\\slash',
            "tab\tnew\nline \x01 \x7f",
            "emoji 😀 and \u2028 separator",
        ],
        top_n=3,
    ),
]


TEAM_CALL = Call("text documents, topN 2, team", list(SEED_DOCUMENTS), top_n=2, team=TEAM)


async def answer(request: Request) -> Reply:
    """A valid answer for both SDKs, so that each call completes."""
    if request.path.endswith("/config"):
        return Reply(200, b'{"models":[]}')
    return Reply(200, b'{"ranking":[{"index":0,"relevanceScore":0.5}]}')


def origin_of(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def adapter(generation: Generation, base_url: str, team: str | None) -> GatewayReranker:
    return GatewayReranker(
        base_url=base_url,
        api_key=API_KEY,
        protocol=GatewayProtocol(generation.protocol),
        team=team,
    )


def assert_same_headers(sdk: Request, ours: Request, ours_only: frozenset[str]) -> None:
    for name, value in sdk.headers.items():
        if name in FREE_HEADERS:
            continue
        if name in FETCH_ONLY_HEADERS:
            assert value == FETCH_ONLY_HEADERS[name], name
            assert ours.headers.get(name, value) == value, name
            continue
        assert ours.headers.get(name) == value, f"{name}: ours {ours.headers.get(name)!r}"
    ours_extra = set(ours.headers) - set(sdk.headers)
    assert ours_extra == ours_only, f"headers only we send: {sorted(ours_extra)}"


def split_at(body: str, key: str) -> tuple[str, Any, str]:
    """`body` as the text before the value of `key`, that value (parsed), and the text after."""
    marker = json.dumps(key) + ":"
    start = body.index(marker) + len(marker)
    value, end = json.JSONDecoder().raw_decode(body, start)
    return body[:start], value, body[end:]


def assert_same_body(sdk: bytes, ours: bytes, call: Call) -> None:
    """Byte for byte, but the parts that crossed a Struct: equal as JSON values."""
    sdk_text, ours_text = sdk.decode(), ours.decode()
    struct_valued = []
    if call.provider_options is not None:
        struct_valued.append("providerOptions")
    if not all(isinstance(document, str) for document in call.documents):
        struct_valued.append("values")
    for key in struct_valued:
        sdk_head, sdk_value, sdk_text = split_at(sdk_text, key)
        ours_head, ours_value, ours_text = split_at(ours_text, key)
        assert ours_head == sdk_head
        assert ours_value == sdk_value, key
    assert ours_text == sdk_text


@pytest.mark.parametrize("generation", GENERATIONS)
@pytest.mark.parametrize("call", CALLS, ids=[call.name for call in CALLS])
async def test_rerank_requests_are_the_sdks(generation: Generation, call: Call) -> None:
    await assert_same_rerank_request(generation, call)


@pytest.mark.parametrize("generation", GENERATIONS)
async def test_the_team_header_is_the_sdks(generation: Generation) -> None:
    """v4: createGateway({teamIdOrSlug}) and our `team=` send the same header. v3: the SDK has
    no team setting, and our `team=` adds only that header."""
    await assert_same_rerank_request(generation, TEAM_CALL)


async def assert_same_rerank_request(generation: Generation, call: Call) -> None:
    settings = Settings()
    limits = Limits(
        max_documents=settings.max_documents,
        max_document_bytes=settings.max_document_bytes,
        max_query_bytes=settings.max_query_bytes,
    )
    async with ScriptedServer(answer) as recorder:
        base_url = generation.base_url(origin_of(recorder.url))
        args = ["--base-url", base_url, "--api-key", API_KEY, "--query", SEED_QUERY]
        (await arun_script("rerank.mjs", generation, *args, *call.sdk_args(generation))).ok()
        (sdk,) = recorder.requests
        recorder.requests.clear()

        reranker = adapter(generation, base_url, call.team)
        try:
            await reranker.rerank(query_from_proto(call.request(), SEED_MODEL, limits), timeout=10)
        finally:
            await reranker.aclose()
        (ours,) = recorder.requests

    assert (
        (ours.method, ours.path)
        == (sdk.method, sdk.path)
        == ("POST", f"/{generation.protocol}/ai/reranking-model")
    )
    assert_same_headers(sdk, ours, call.ours_only(generation))
    assert_same_body(sdk.body, ours.body, call)


@pytest.mark.parametrize(
    ("generation", "team"),
    [
        pytest.param(AI_6, None, id="ai@6"),
        pytest.param(AI_7, None, id="ai@7"),
        pytest.param(AI_7, TEAM, id="ai@7-team"),
    ],
)
async def test_model_list_requests_are_the_sdks(generation: Generation, team: str | None) -> None:
    """getAvailableModels() and our list_models(): the same GET of `{base}/config`."""
    async with ScriptedServer(answer) as recorder:
        base_url = generation.base_url(origin_of(recorder.url))
        args = ["--base-url", base_url, "--api-key", API_KEY]
        if team is not None:
            args += ["--team", team]
        (await arun_script("models.mjs", generation, *args)).ok()
        (sdk,) = recorder.requests
        recorder.requests.clear()

        reranker = adapter(generation, base_url, team)
        try:
            assert await reranker.list_models(timeout=10) == ()
        finally:
            await reranker.aclose()
        (ours,) = recorder.requests

    assert (
        (ours.method, ours.path)
        == (sdk.method, sdk.path)
        == ("GET", f"/{generation.protocol}/ai/config")
    )
    assert_same_headers(sdk, ours, frozenset())
    assert ours.body == sdk.body == b""
