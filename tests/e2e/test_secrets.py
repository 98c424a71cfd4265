"""Secrets never leak: the whole flow runs with known keys, at DEBUG, with JSON logs, metrics
served and every call traced to a real OTLP receiver, and every log line of every process, every
field of every JSON log record, every metric label, every span (names, attributes, events,
status) and every answer a caller gets is searched for them. Spans and metric labels are also
searched for the query's and the documents' text."""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path

import grpc
import pytest

from rerank.server._credentials import CHECK_INTERVAL
from rerank.v1 import rerank_service_pb2 as pb
from rerank.v1 import rerank_service_pb2_grpc as pb_grpc
from tests.conftest import SEED_DOCUMENTS, SEED_QUERY
from tests.e2e.processes import RERANK_SERVER, start, start_mock_gateway
from tests.otlp_receiver import OtlpReceiver
from tests.scrapes import Scrape
from tools.processes import Process
from tools.waiting import until

pytestmark = pytest.mark.e2e


def test_no_secret_in_any_log_span_or_answer(processes: list[Process]) -> None:
    with OtlpReceiver() as receiver:
        check_the_whole_flow(processes, receiver)


def check_the_whole_flow(processes: list[Process], receiver: OtlpReceiver) -> None:
    gateway_key = f"sk-gateway-{secrets.token_hex(8)}"
    wrong_gateway_key = f"sk-wrong-{secrets.token_hex(8)}"
    caller_token = f"tok-caller-{secrets.token_hex(8)}"
    collector_token = f"otlp-{secrets.token_hex(8)}"
    gateway_url = start_mock_gateway(processes, "--api-key", gateway_key, "--log-level", "debug")
    servers = {}
    server_processes = []
    metrics_urls: list[str] = []
    for name, key in (("good", gateway_key), ("wrong", wrong_gateway_key)):
        server = start(
            processes,
            [RERANK_SERVER, "--port", "0", "--metrics-port", "0", "--gateway-url", gateway_url],
            {
                "AI_GATEWAY_API_KEY": key,
                "RERANK_AUTH_TOKENS": f"other-token,{caller_token}",
                "RERANK_LOG_LEVEL": "DEBUG",
                "RERANK_LOG_FORMAT": "json",
                "RERANK_RETRY_INITIAL_BACKOFF": "0.01",
                # Every call traced (the default sampler when exporting), every span exported.
                "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.origin,
                "OTEL_EXPORTER_OTLP_HEADERS": f"authorization=Bearer {collector_token}",
            },
        )
        servers[name] = server.wait_for(r"rerank server listening on (\S+:\d+)").group(1)
        metrics_urls.append(server.wait_for(r"rerank metrics on (http://\S+/metrics)").group(1))
        server_processes.append(server)

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
    # Every label of every metric, scraped while the servers still run.
    labels: list[str] = []
    for url in metrics_urls:
        samples = Scrape.at(url).samples
        labels.extend(f"{k}={v}" for _, have, _ in samples for k, v in have.items())
    assert any(label.startswith("grpc_method=") for label in labels)
    assert any("UNAUTHENTICATED" in a for a in answers)
    assert any("INTERNAL" in a for a in answers)
    for process in processes:
        process.stop()  # flush every log line (and, on the servers' way out, every span)
    everything = "\n".join(answers + [p.output for p in processes])
    for secret in (gateway_key, wrong_gateway_key, caller_token, collector_token):
        assert secret not in everything

    # Every record a server wrote is one JSON object; no field of any holds a secret.
    fields: list[str] = []
    for server in server_processes:
        for line in server.output.splitlines():
            if line.startswith(("rerank server listening on ", "rerank metrics on ")):
                continue  # the ready lines, on stdout by design
            assert line.startswith("{"), line
            record = json.loads(line)
            fields.extend(f"{key}={value}" for key, value in record.items())
    assert any(f == "logger=rerank.access" for f in fields)
    assert any(f.startswith("reason=UPSTREAM_AUTHENTICATION") for f in fields)

    # Spans: the calls ran traced, and nothing of a secret or of the caller's text is there.
    with receiver.changed:
        spans = list(receiver.spans)
    assert {s.kind for s in spans} >= {"SERVER", "CLIENT"}
    texts = [s.every_text() for s in spans]
    for secret in (gateway_key, wrong_gateway_key, caller_token, collector_token):
        assert not [f for f in fields if secret in f]
        assert not [t for t in texts if secret in t]
        assert not [label for label in labels if secret in label]
    for text in (SEED_QUERY, *SEED_DOCUMENTS):
        assert not [t for t in texts if text in t]
        assert not [label for label in labels if text in label]


@pytest.mark.timeout(60)
def test_a_rotated_token_file_is_picked_up_without_a_restart(
    processes: list[Process], tmp_path: Path
) -> None:
    """A server started with a stale token in RERANK_OIDC_TOKEN_FILE gets the gateway's 401
    (INTERNAL); once the platform renames a fresh token over the file, calls succeed again,
    within the file-check interval, and neither token is ever logged."""
    fresh_token = f"oidc-fresh-{secrets.token_hex(8)}"
    stale_token = f"oidc-stale-{secrets.token_hex(8)}"
    token_file = tmp_path / "oidc-token"
    token_file.write_text(stale_token + "\n")
    gateway_url = start_mock_gateway(processes, "--api-key", fresh_token)
    server = start(
        processes,
        [RERANK_SERVER, "--port", "0", "--workers", "1", "--gateway-url", gateway_url],
        {"RERANK_OIDC_TOKEN_FILE": str(token_file), "RERANK_LOG_LEVEL": "DEBUG"},
    )
    target = server.wait_for(r"rerank server listening on (\S+:\d+)").group(1)
    seed = pb.RerankRequest(
        query=SEED_QUERY, documents=[pb.Document(text=d) for d in SEED_DOCUMENTS]
    )
    with grpc.insecure_channel(target) as channel:
        stub = pb_grpc.RerankServiceStub(channel)
        with pytest.raises(grpc.RpcError) as caught:
            stub.Rerank(seed, timeout=10)
        assert caught.value.code() is grpc.StatusCode.INTERNAL  # type: ignore[attr-defined]

        rotated = tmp_path / "oidc-token.new"
        rotated.write_text(fresh_token + "\n")
        os.replace(rotated, token_file)

        def answered() -> pb.RerankResponse | None:
            try:
                return stub.Rerank(seed, timeout=10)  # type: ignore[no-any-return]
            except grpc.RpcError as error:
                assert error.code() is grpc.StatusCode.INTERNAL  # type: ignore[attr-defined]
                return None

        # Polls: the server looks at the file once per CHECK_INTERVAL.
        answer = until(answered, "the fresh token used", timeout=2 * CHECK_INTERVAL + 5, every=0.2)
        assert answer.ranking[0].document.text == SEED_DOCUMENTS[0]
    for process in processes:
        process.stop()
    logs = "\n".join(p.output for p in processes)
    assert "OIDC token file" in logs  # the server did notice the change
    for secret in (fresh_token, stale_token):
        assert secret not in logs
