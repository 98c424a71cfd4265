"""Connect and gRPC-Web on the HTTP port: `buf curl` (a client nobody here wrote) in each
protocol, Connect's JSON and binary bodies, and errors with the same details as gRPC's."""

from __future__ import annotations

import base64
import json
import sys
from pathlib import Path

import httpx
from google.rpc import error_details_pb2

from rerank.v1 import rerank_service_pb2 as pb
from tests.conftest import REPO_ROOT, SEED_DOCUMENTS, SEED_QUERY
from tests.http.conftest import base_url, settings
from tests.service.calls import seed_request
from tests.service.conftest import StartServer
from tools.processes import run

BUF = Path(sys.executable).parent / "buf"
RERANK = "rerank.v1.RerankService/Rerank"
REQUEST = {
    "model": "cohere/rerank-v3.5",
    "query": SEED_QUERY,
    "documents": [{"text": text} for text in SEED_DOCUMENTS],
    "topN": 2,
}


async def buf_curl(url: str, protocol: str, body: object, *headers: str) -> dict[str, object]:
    """`buf curl` in `protocol` with the contract as its schema: its JSON output."""
    flags = [f"--header={header}" for header in headers]
    finished = await run(
        [
            BUF,
            "curl",
            "--schema",
            "protos",
            "--protocol",
            protocol,
            *flags,
            "-d",
            json.dumps(body),
            url,
        ],
        timeout=60,
        cwd=REPO_ROOT,
    )
    output: dict[str, object] = json.loads(finished.stdout or finished.stderr)
    return output


async def test_buf_curl_reranks_in_connect_and_grpc_web(serve: StartServer) -> None:
    running = await serve()
    for protocol in ("connect", "grpcweb"):
        answer = await buf_curl(f"{base_url(running)}/{RERANK}", protocol, REQUEST)
        ranking = answer["ranking"]
        assert isinstance(ranking, list)
        assert [r.get("originalIndex", 0) for r in ranking] == [0, 1], protocol
        assert answer["model"] == "cohere/rerank-v3.5"


async def test_errors_carry_the_details_grpc_sends(serve: StartServer) -> None:
    running = await serve()
    for protocol in ("connect", "grpcweb"):
        answer = await buf_curl(f"{base_url(running)}/{RERANK}", protocol, {"query": ""})
        assert answer["code"] == "invalid_argument", protocol
        details = answer["details"]
        assert isinstance(details, list)
        bad = [d for d in details if d["type"] == "google.rpc.BadRequest"]
        value = bad[0]["value"]
        violations = error_details_pb2.BadRequest.FromString(
            base64.b64decode(value + "=" * (-len(value) % 4))
        ).field_violations
        assert [v.field for v in violations] == ["query"]
        info = [d for d in details if d["type"] == "google.rpc.ErrorInfo"]
        assert len(info) == 1


async def test_binary_bodies_and_list_models(serve: StartServer, client: httpx.AsyncClient) -> None:
    running = await serve()
    request = seed_request()
    answer = await client.post(
        f"{base_url(running)}/{RERANK}",
        content=request.SerializeToString(),
        headers={"content-type": "application/proto"},
    )
    assert answer.status_code == 200
    assert answer.headers["content-type"] == "application/proto"
    ranked = pb.RerankResponse.FromString(answer.content).ranking
    assert [r.original_index for r in ranked] == [0, 1]
    listed = await client.post(f"{base_url(running)}/rerank.v1.RerankService/ListModels", json={})
    assert "cohere/rerank-v3.5" in [m["id"] for m in listed.json()["models"]]


async def test_without_a_known_token_each_protocol_says_unauthenticated(
    serve: StartServer, client: httpx.AsyncClient
) -> None:
    running = await serve(settings(auth_tokens=frozenset({"good-token"})))
    url = f"{base_url(running)}/{RERANK}"
    refused = await client.post(url, json=REQUEST, headers={"authorization": "Bearer bad"})
    assert refused.status_code == 401
    assert refused.json()["code"] == "unauthenticated"
    grpc_web = await buf_curl(url, "grpcweb", REQUEST)
    assert grpc_web["code"] == "unauthenticated"
    allowed = await buf_curl(url, "connect", REQUEST, "authorization: Bearer good-token")
    assert "ranking" in allowed
