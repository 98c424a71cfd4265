"""Secrets never leak: the whole flow runs with known keys, at DEBUG, and every log line of
every process and every answer a caller gets is searched for them."""

from __future__ import annotations

import secrets

import grpc
import pytest

from rerank.v1 import rerank_service_pb2 as pb
from rerank.v1 import rerank_service_pb2_grpc as pb_grpc
from tests.conftest import SEED_DOCUMENTS, SEED_QUERY
from tests.e2e.processes import RERANK_SERVER, Process, start, start_mock_gateway

pytestmark = pytest.mark.e2e


def test_no_secret_in_any_log_or_answer(processes: list[Process]) -> None:
    gateway_key = f"sk-gateway-{secrets.token_hex(8)}"
    wrong_gateway_key = f"sk-wrong-{secrets.token_hex(8)}"
    caller_token = f"tok-caller-{secrets.token_hex(8)}"
    gateway_url = start_mock_gateway(processes, "--api-key", gateway_key, "--log-level", "debug")
    servers = {}
    for name, key in (("good", gateway_key), ("wrong", wrong_gateway_key)):
        server = start(
            processes,
            [RERANK_SERVER, "--port", "0", "--gateway-url", gateway_url],
            {
                "AI_GATEWAY_API_KEY": key,
                "RERANK_AUTH_TOKENS": f"other-token,{caller_token}",
                "RERANK_LOG_LEVEL": "DEBUG",
                "RERANK_RETRY_INITIAL_BACKOFF": "0.01",
            },
        )
        servers[name] = server.wait_for(r"rerank server listening on (\S+:\d+)").group(1)

    answers: list[str] = []

    def call(target: str, request: pb.RerankRequest, token: str | None) -> None:
        metadata = () if token is None else (("authorization", f"Bearer {token}"),)
        with grpc.insecure_channel(target) as channel:
            stub = pb_grpc.RerankServiceStub(channel)
            try:
                answers.append(str(stub.Rerank(request, timeout=10, metadata=metadata)))
                answers.append(str(stub.ListModels(pb.ListModelsRequest(), metadata=metadata)))
            except grpc.RpcError as error:
                answers.append(repr(error))
                answers.append(str(error.trailing_metadata()))  # type: ignore[attr-defined]

    seed = pb.RerankRequest(
        query=SEED_QUERY, documents=[pb.Document(text=d) for d in SEED_DOCUMENTS]
    )
    faults = [
        {"fault": "error", "status": 401, "type": "authentication_error"},
        {"fault": "error", "status": 500, "type": "internal_server_error"},
        {"fault": "rate_limit", "retryAfterMs": 10},
        {"fault": "malformed", "variant": "error_envelope"},
        {"fault": "drop"},
    ]
    for target in servers.values():
        call(target, seed, caller_token)  # OK on the good server, INTERNAL on the wrong one
        call(target, seed, None)  # no token
        call(target, seed, caller_token + "x")  # a near miss, which must not be echoed either
        call(target, pb.RerankRequest(query="", documents=[]), caller_token)
        for spec in faults:
            faulty = pb.RerankRequest()
            faulty.CopyFrom(seed)
            faulty.provider_options.update({"mockGateway": spec})
            call(target, faulty, caller_token)

    assert "Paris is the capital of France." in "".join(answers)  # the flow really ran
    assert any("UNAUTHENTICATED" in a for a in answers)
    assert any("INTERNAL" in a for a in answers)
    for process in processes:
        process.stop()  # flush every log line before searching them
    everything = "\n".join(answers + [p.output for p in processes])
    for secret in (gateway_key, wrong_gateway_key, caller_token):
        assert secret not in everything
