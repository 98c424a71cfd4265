"""Named callers on a real server with a callers file: each refusal with its details, the name
the gateway sees, GetUsage, the cache's scope per caller, reload, and callers named by their
client certificate over mutual TLS."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable
from decimal import Decimal
from pathlib import Path
from typing import Any

import grpc
import orjson
import pytest
import trustme
from cryptography import x509
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from rerank.client import AsyncRerankClient, CallerUsage, ServerError, UnauthenticatedError
from rerank.server._app import start_server
from rerank.server._config import Settings, Upstream
from rerank.server._limits import seconds_to_next_utc_midnight
from rerank.server._metrics import Metrics
from rerank.server._prometheus import PrometheusRecorder
from rerank.v1 import rerank_service_pb2 as pb
from rerank.v1 import rerank_service_pb2_grpc as pb_grpc
from tests.conftest import SEED_DOCUMENTS, SEED_QUERY
from tests.scrapes import Scrape
from tests.scripted_http import Reply, Request, ScriptedServer
from tests.service.calls import fault, seed_request, unpacked
from tests.service.conftest import StartServer
from tools.waiting import until_async

SEARCH = "search-api-token-9f2c"
BUDGETED = "budgeted-token-41aa"
NARROW = "narrow-token-77d0"
ALONE_A, ALONE_B, SHARED_C, SHARED_D = "alone-a-tok", "alone-b-tok", "shared-c-tok", "shared-d-tok"
LEGACY = "legacy-token-0001"
TOKENS = (SEARCH, BUDGETED, NARROW, ALONE_A, ALONE_B, SHARED_C, SHARED_D, LEGACY)
# The mock gateway bills this model 0.001 USD per search unit, one unit per 100 documents.
CHEAP_MODEL = "cohere/rerank-v4-fast"


def sha256(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


CALLERS = f"""
[callers.search-api]
token_sha256 = "{sha256(SEARCH)}"
requests_per_second = 0.01   # one token per 100 s: after the burst, refused for long enough
burst = 3
models = ["cohere/*"]

[callers.budgeted]
token = "{BUDGETED}"
daily_budget_usd = 0.0025

[callers.narrow]
token_sha256 = "{sha256(NARROW)}"
max_concurrent_calls = 1

[callers.alone-a]
token = "{ALONE_A}"

[callers.alone-b]
token = "{ALONE_B}"

[callers.shared-c]
token = "{SHARED_C}"
cache_scope = "shared"

[callers.shared-d]
token = "{SHARED_D}"
cache_scope = "shared"
"""


def bearer(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


def callers_file(tmp_path: Path, text: str = CALLERS) -> Path:
    path = tmp_path / "callers.toml"
    path.write_text(text)
    return path


def settings_for(path: Path, **changes: Any) -> Settings:
    base = Settings(port=0, grace_period=1, callers_file=str(path), auth_tokens=frozenset({LEGACY}))
    return dataclasses.replace(base, **changes)


@pytest.fixture
async def stub(servers: StartServer, tmp_path: Path) -> AsyncIterator[pb_grpc.RerankServiceStub]:
    running = await servers(settings_for(callers_file(tmp_path)))
    async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
        yield pb_grpc.RerankServiceStub(channel)


async def refusal(call: Awaitable[Any]) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    return caught.value


def reason(error: grpc.aio.AioRpcError) -> tuple[grpc.StatusCode, str, dict[str, str]]:
    info = unpacked(error, error_details_pb2.ErrorInfo)
    return error.code(), info.reason, dict(info.metadata)


def pushback_ms(error: grpc.aio.AioRpcError) -> int | None:
    for key, value in error.trailing_metadata() or ():
        if key == "grpc-retry-pushback-ms":
            return int(value)
    return None


def retry_seconds(error: grpc.aio.AioRpcError) -> float | None:
    info = unpacked(error, error_details_pb2.RetryInfo)
    return None if info is None else info.retry_delay.ToNanoseconds() / 1e9


async def usage_of(stub: pb_grpc.RerankServiceStub, token: str) -> pb.GetUsageResponse:
    answer: pb.GetUsageResponse = await stub.GetUsage(
        pb.GetUsageRequest(), metadata=bearer(token), timeout=5
    )
    return answer


# --- refusals ------------------------------------------------------------------------------


async def test_over_the_rate_is_caller_rate_limited_with_when_to_retry(
    stub: pb_grpc.RerankServiceStub,
) -> None:
    for _ in range(3):  # the burst
        assert (await stub.Rerank(seed_request(), metadata=bearer(SEARCH), timeout=5)).ranking
    error = await refusal(stub.Rerank(seed_request(), metadata=bearer(SEARCH), timeout=5))
    assert reason(error) == (
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "CALLER_RATE_LIMITED",
        {"caller": "search-api"},
    )
    assert "0.01 calls per second" in (error.details() or "")
    # One token at 0.01/s is 100 s away, less what has refilled since.
    delay = retry_seconds(error)
    assert delay is not None
    assert 90 < delay <= 100
    # Refused before any gateway call: a gRPC client's own retry policy may wait and retry.
    assert pushback_ms(error) == round(delay * 1000)
    # Another caller is not held back by this one.
    assert (await stub.Rerank(seed_request(), metadata=bearer(ALONE_A), timeout=5)).ranking
    usage = await usage_of(stub, SEARCH)
    assert (usage.calls, usage.refused) == (3, 1)


async def test_over_the_concurrent_calls_is_caller_rate_limited(
    stub: pb_grpc.RerankServiceStub,
) -> None:
    slow = seed_request(provider_options=fault(fault="slow", delayMs=1500))
    first = stub.Rerank(slow, metadata=bearer(NARROW), timeout=10)

    # The first call holds the caller's one slot once it is counted.
    async def admitted() -> bool:
        return (await usage_of(stub, NARROW)).calls >= 1

    await until_async(admitted, "the first call admitted", timeout=5)
    error = await refusal(stub.Rerank(seed_request(), metadata=bearer(NARROW), timeout=5))
    code, why, _ = reason(error)
    assert (code, why) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "CALLER_RATE_LIMITED")
    assert "1 call in flight" in (error.details() or "")
    assert retry_seconds(error) is not None
    assert (await first).ranking
    assert (await stub.Rerank(seed_request(), metadata=bearer(NARROW), timeout=5)).ranking


async def test_the_budget_allows_exactly_what_it_covers_then_waits_for_midnight(
    stub: pb_grpc.RerankServiceStub,
) -> None:
    # 0.0025 USD at 0.001 a call: the fourth call finds 0.003 spent and is refused.
    request = seed_request(model=CHEAP_MODEL, bypass_cache=True)
    for _ in range(3):
        response = await stub.Rerank(request, metadata=bearer(BUDGETED), timeout=5)
        assert response.provider_metadata["gateway"]["cost"] == "0.001"
    error = await refusal(stub.Rerank(request, metadata=bearer(BUDGETED), timeout=5))
    assert reason(error) == (
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "CALLER_BUDGET_EXHAUSTED",
        {"caller": "budgeted", "daily_budget_usd": "0.0025"},
    )
    delay = retry_seconds(error)
    assert delay is not None
    assert abs(delay - seconds_to_next_utc_midnight(time.time())) < 60
    assert pushback_ms(error) == round(delay * 1000)
    usage = await usage_of(stub, BUDGETED)
    assert usage.caller == "budgeted"
    assert (usage.spent_usd, usage.daily_budget_usd) == ("0.003", "0.0025")
    assert (usage.calls, usage.refused) == (3, 1)
    assert usage.day == time.strftime("%Y-%m-%d", time.gmtime())


async def test_a_windowed_call_is_charged_for_every_window(
    servers: StartServer, tmp_path: Path
) -> None:
    running = await servers(settings_for(callers_file(tmp_path), window_sizes={"cohere": 2}))
    async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
        stub = pb_grpc.RerankServiceStub(channel)
        # Three documents in windows of two: two gateway calls at 0.001 each.
        request = seed_request(model=CHEAP_MODEL, top_n=None)
        response = await stub.Rerank(request, metadata=bearer(BUDGETED), timeout=5)
        assert len(response.ranking) == 3
        usage = await usage_of(stub, BUDGETED)
    assert (usage.spent_usd, usage.calls) == ("0.002", 1)


async def test_a_model_outside_the_callers_list_is_not_allowed(
    stub: pb_grpc.RerankServiceStub,
) -> None:
    request = seed_request(model="voyage/rerank-2.5")
    error = await refusal(stub.Rerank(request, metadata=bearer(SEARCH), timeout=5))
    assert reason(error) == (
        grpc.StatusCode.PERMISSION_DENIED,
        "MODEL_NOT_ALLOWED",
        {"caller": "search-api", "model": "voyage/rerank-2.5"},
    )
    assert retry_seconds(error) is None  # waiting does not help
    assert pushback_ms(error) is None
    # A request without documents, which the gateway never sees, is refused all the same.
    empty = seed_request(model="voyage/rerank-2.5", documents=[])
    error = await refusal(stub.Rerank(empty, metadata=bearer(SEARCH), timeout=5))
    assert reason(error)[1] == "MODEL_NOT_ALLOWED"
    # Nor does it see the model listed; other callers see every model.
    own = await stub.ListModels(pb.ListModelsRequest(), metadata=bearer(SEARCH), timeout=5)
    assert own.models
    assert all(model.id.startswith("cohere/") for model in own.models)
    every = await stub.ListModels(pb.ListModelsRequest(), metadata=bearer(ALONE_A), timeout=5)
    assert any(model.id.startswith("voyage/") for model in every.models)


async def test_an_unknown_token_is_unauthenticated_with_its_reason(
    stub: pb_grpc.RerankServiceStub,
) -> None:
    for metadata in ((), bearer("nope"), bearer(sha256(SEARCH)), (("authorization", SEARCH),)):
        error = await refusal(stub.Rerank(seed_request(), metadata=metadata, timeout=5))
        code, why, _ = reason(error)
        assert (code, why) == (grpc.StatusCode.UNAUTHENTICATED, "UNAUTHENTICATED")
        assert "nope" not in (error.details() or "")


async def test_tokens_of_rerank_auth_tokens_are_callers_without_a_name_or_limits(
    stub: pb_grpc.RerankServiceStub,
) -> None:
    for _ in range(5):
        assert (await stub.Rerank(seed_request(), metadata=bearer(LEGACY), timeout=5)).ranking
    error = await refusal(stub.GetUsage(pb.GetUsageRequest(), metadata=bearer(LEGACY), timeout=5))
    code, why, _ = reason(error)
    assert (code, why) == (grpc.StatusCode.FAILED_PRECONDITION, "NOT_A_NAMED_CALLER")


# --- what the gateway sees -----------------------------------------------------------------


async def test_the_callers_name_reaches_the_gateway_as_its_user(
    servers: StartServer, tmp_path: Path
) -> None:
    async def gateway(request: Request) -> Reply:
        ranking = [{"index": 0, "relevanceScore": 0.9}, {"index": 1, "relevanceScore": 0.2}]
        return Reply(body=orjson.dumps({"ranking": ranking}))

    async with ScriptedServer(gateway) as upstream:
        running = await servers(
            settings_for(
                callers_file(tmp_path),
                upstream=Upstream.GATEWAY,
                gateway_url=upstream.url,
                api_key="k",
            )
        )
        options = {"gateway": {"user": "mallory", "order": ["cohere", "bedrock"]}}
        async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            stub = pb_grpc.RerankServiceStub(channel)
            for token in (ALONE_A, LEGACY):
                request = seed_request(documents=[pb.Document(text=d) for d in SEED_DOCUMENTS[:2]])
                request.provider_options.update(options)
                await stub.Rerank(request, metadata=bearer(token), timeout=5)
    sent = [orjson.loads(r.body)["providerOptions"]["gateway"] for r in upstream.requests]
    # A named caller cannot spend under another's name; an unnamed one sends what it sends.
    assert sent == [
        {"user": "alone-a", "order": ["cohere", "bedrock"]},
        {"user": "mallory", "order": ["cohere", "bedrock"]},
    ]


# --- metrics ---------------------------------------------------------------------------


async def test_metrics_tell_calls_refusals_and_spend_by_caller(tmp_path: Path) -> None:
    recorder = PrometheusRecorder()
    running = await start_server(settings_for(callers_file(tmp_path)), metrics=Metrics(recorder))
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            stub = pb_grpc.RerankServiceStub(channel)
            for _ in range(3):
                await stub.Rerank(seed_request(), metadata=bearer(SEARCH), timeout=5)
            await refusal(stub.Rerank(seed_request(), metadata=bearer(SEARCH), timeout=5))
            other_model = seed_request(model="voyage/rerank-2.5")
            await refusal(stub.Rerank(other_model, metadata=bearer(SEARCH), timeout=5))
            cheap = seed_request(model=CHEAP_MODEL, bypass_cache=True)
            for _ in range(4):  # the fourth is over the budget
                with contextlib.suppress(grpc.aio.AioRpcError):
                    await stub.Rerank(cheap, metadata=bearer(BUDGETED), timeout=5)
            await stub.Rerank(cheap, metadata=bearer(LEGACY), timeout=5)
        seen = Scrape.of(recorder)
    finally:
        await running.stop()
    calls, refusals = "rerank_caller_calls_total", "rerank_caller_refusals_total"
    # Three calls let through, the first one went upstream, two came from its cache.
    assert seen.total(calls, caller="search-api") == 3
    assert seen.total(refusals, caller="search-api", reason="CALLER_RATE_LIMITED") == 1
    assert seen.total(refusals, caller="search-api", reason="MODEL_NOT_ALLOWED") == 1
    assert seen.total(calls, caller="budgeted") == 3
    assert seen.total(refusals, caller="budgeted", reason="CALLER_BUDGET_EXHAUSTED") == 1
    cost = "rerank_gateway_cost_usd_total"
    assert seen.line(cost, model=CHEAP_MODEL, caller="budgeted").split()[-1] == "0.003"
    assert seen.line(cost, model=CHEAP_MODEL, caller="").split()[-1] == "0.001"
    assert seen.total(cost, caller="search-api") == 0.002  # one call of 0.002 upstream
    assert seen.labels(calls, "caller") == {"search-api", "budgeted"}  # unnamed: not counted


# --- the cache's scope ---------------------------------------------------------------------


async def test_the_cache_is_each_callers_own_unless_it_opts_into_sharing(
    stub: pb_grpc.RerankServiceStub,
) -> None:
    request = seed_request(query="a question asked by several callers")

    async def cached(token: str) -> bool:
        response = await stub.Rerank(request, metadata=bearer(token), timeout=5)
        return response.cached

    assert [await cached(t) for t in (ALONE_A, ALONE_B, ALONE_A, ALONE_B)] == [
        False,
        False,
        True,
        True,
    ]
    # Two callers sharing the cache share answers with each other, and with nobody else.
    assert [await cached(t) for t in (SHARED_C, SHARED_D, SHARED_C)] == [False, True, True]
    assert await cached(LEGACY) is False


# --- GetUsage through the client -----------------------------------------------------------


async def test_get_usage_tells_a_caller_its_own_standing_and_limits(
    stub: pb_grpc.RerankServiceStub,
) -> None:
    await stub.Rerank(seed_request(), metadata=bearer(SEARCH), timeout=5)
    await stub.Rerank(seed_request(model=CHEAP_MODEL), metadata=bearer(BUDGETED), timeout=5)
    search = await usage_of(stub, SEARCH)
    assert (search.caller, search.spent_usd, search.calls, search.refused) == (
        "search-api",
        "0.002",  # cohere/rerank-v3.5 at the mock's 0.002 per call
        1,
        0,
    )
    assert (search.requests_per_second, search.burst) == (0.01, 3)
    assert list(search.models) == ["cohere/*"]
    assert not search.HasField("daily_budget_usd")
    assert not search.HasField("max_concurrent_calls")
    # The other caller's spend is its own, and invisible from here.
    budgeted = await usage_of(stub, BUDGETED)
    assert (budgeted.caller, budgeted.spent_usd, budgeted.calls) == ("budgeted", "0.001", 1)


async def test_the_client_reads_the_standing(servers: StartServer, tmp_path: Path) -> None:
    running = await servers(settings_for(callers_file(tmp_path)))
    target = f"127.0.0.1:{running.port}"
    async with AsyncRerankClient(target, metadata=dict(bearer(NARROW)), timeout=5) as client:
        await client.rerank(SEED_QUERY, list(SEED_DOCUMENTS), model=CHEAP_MODEL)
        usage = await client.get_usage()
    assert usage == CallerUsage(
        caller="narrow",
        day=usage.day,
        spent_usd=Decimal("0.001"),
        calls=1,
        refused=0,
        max_concurrent_calls=1,
    )
    async with AsyncRerankClient(target, metadata=dict(bearer(LEGACY)), timeout=5) as client:
        with pytest.raises(ServerError) as caught:
            await client.get_usage()
        assert caught.value.error_info is not None
        assert caught.value.error_info.reason == "NOT_A_NAMED_CALLER"


# --- reload --------------------------------------------------------------------------------


async def test_a_reload_applies_the_new_file_at_once_and_a_bad_one_changes_nothing(
    servers: StartServer, tmp_path: Path
) -> None:
    path = callers_file(tmp_path, f'[callers.a]\ntoken = "{ALONE_A}"\n')
    running = await servers(settings_for(path))
    async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
        stub = pb_grpc.RerankServiceStub(channel)
        assert (await usage_of(stub, ALONE_A)).caller == "a"
        path.write_text(f'[callers.a]\ntoken = "{ALONE_A}"\nburst = -1\n')
        assert not running.callers.reload()
        assert (await usage_of(stub, ALONE_A)).caller == "a"
        # Renamed, limited, and another token added: all at once, on the same connection.
        path.write_text(
            f'[callers.a2]\ntoken = "{ALONE_A}"\nrequests_per_second = 0.01\nburst = 1\n'
            f'[callers.b]\ntoken = "{ALONE_B}"\n'
        )
        assert running.callers.reload()
        assert (await usage_of(stub, ALONE_A)).caller == "a2"
        assert (await usage_of(stub, ALONE_B)).caller == "b"
        await stub.Rerank(seed_request(), metadata=bearer(ALONE_A), timeout=5)
        error = await refusal(stub.Rerank(seed_request(), metadata=bearer(ALONE_A), timeout=5))
        assert reason(error)[1] == "CALLER_RATE_LIMITED"
        path.write_text(f'[callers.b]\ntoken = "{ALONE_B}"\n')
        assert running.callers.reload()
        error = await refusal(usage_of(stub, ALONE_A))
        assert error.code() is grpc.StatusCode.UNAUTHENTICATED


# --- secrets -------------------------------------------------------------------------------


async def test_no_token_nor_its_digest_is_ever_logged(
    servers: StartServer,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    running = await servers(settings_for(callers_file(tmp_path)))
    async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
        stub = pb_grpc.RerankServiceStub(channel)
        answers: list[str] = []
        for token in (*TOKENS, "wrong-token-x"):
            for call in (
                stub.Rerank(seed_request(), metadata=bearer(token), timeout=5),
                stub.Rerank(seed_request(model="voyage/rerank-2.5"), metadata=bearer(token)),
                stub.GetUsage(pb.GetUsageRequest(), metadata=bearer(token), timeout=5),
            ):
                try:
                    answers.append(str(await call))
                except grpc.aio.AioRpcError as error:
                    answers.append(f"{error.details()} {error.trailing_metadata()}")
        callers_file(tmp_path, CALLERS + "\n[callers.broken]\nburst = -1\n")
        running.callers.reload()
    seen = caplog.text + "\n".join(answers)
    assert "callers not reloaded" in caplog.text
    for token in (*TOKENS, "wrong-token-x"):
        for secret in (token, sha256(token), sha256(token).upper()):
            assert secret not in seen


# --- mutual TLS ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A CA, a server certificate, and client certificates: one named by its subject, one by
    a subject alternative name, one naming nobody."""
    folder = tmp_path_factory.mktemp("callers-pki")
    authority = trustme.CA()
    files: dict[str, Any] = {"ca": authority.cert_pem.bytes()}
    issued = {
        "server": authority.issue_cert("127.0.0.1", "localhost"),
        "by_subject": authority.issue_cert(
            "somewhere.internal", common_name="edge-subject", organization_name="Example"
        ),
        "by_san": authority.issue_cert("other.internal", "edge.internal"),
        "stranger": authority.issue_cert("stranger.internal"),
    }
    for name, cert in issued.items():
        files[name] = (
            cert.private_key_pem.bytes(),
            b"".join(b.bytes() for b in cert.cert_chain_pems),
        )
    leaf = x509.load_pem_x509_certificate(issued["by_subject"].cert_chain_pems[0].bytes())
    # RFC 4514, as `openssl x509 -noout -subject -nameopt RFC2253` prints it.
    files["subject"] = leaf.subject.rfc4514_string()
    for name in ("server",):
        key, chain = files[name]
        (folder / f"{name}-key.pem").write_bytes(key)
        (folder / f"{name}-chain.pem").write_bytes(chain)
    (folder / "ca.pem").write_bytes(files["ca"])
    files["folder"] = folder
    return files


async def test_mutual_tls_callers_are_named_by_their_certificate(
    servers: StartServer, tmp_path: Path, pki: dict[str, Any]
) -> None:
    path = callers_file(
        tmp_path,
        f'[callers.edge-subject]\nsubject = "{pki["subject"]}"\nmax_concurrent_calls = 4\n'
        '[callers.edge]\nsan = ["edge.internal"]\n'
        f'[callers.search-api]\ntoken = "{SEARCH}"\n',
    )
    folder = pki["folder"]
    running = await servers(
        settings_for(
            path,
            tls_cert_file=str(folder / "server-chain.pem"),
            tls_key_file=str(folder / "server-key.pem"),
            tls_client_ca_file=str(folder / "ca.pem"),
            auth_health=True,
        )
    )
    target = f"127.0.0.1:{running.port}"

    async def who(certificate: str, metadata: tuple[tuple[str, str], ...] = ()) -> str:
        key, chain = pki[certificate]
        credentials = grpc.ssl_channel_credentials(
            root_certificates=pki["ca"], private_key=key, certificate_chain=chain
        )
        async with grpc.aio.secure_channel(target, credentials) as channel:
            stub = pb_grpc.RerankServiceStub(channel)
            assert (await stub.Rerank(seed_request(), metadata=metadata, timeout=5)).ranking
            usage = await stub.GetUsage(pb.GetUsageRequest(), metadata=metadata, timeout=5)
            return str(usage.caller)

    assert await who("by_subject") == "edge-subject"
    assert await who("by_san") == "edge"
    # A token, when sent, decides: a known one names its caller, an unknown one is refused.
    assert await who("by_san", bearer(SEARCH)) == "search-api"
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await who("by_san", bearer("nope"))
    assert caught.value.code() is grpc.StatusCode.UNAUTHENTICATED
    # A certificate the CA signed but no table names: not a caller.
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await who("stranger")
    assert caught.value.code() is grpc.StatusCode.UNAUTHENTICATED
    assert reason(caught.value)[1] == "UNAUTHENTICATED"
    # Streaming methods too: reflection lets in a certificate that names a caller, only.
    for certificate, allowed in (("by_san", True), ("stranger", False)):
        key, chain = pki[certificate]
        credentials = grpc.ssl_channel_credentials(
            root_certificates=pki["ca"], private_key=key, certificate_chain=chain
        )
        async with grpc.aio.secure_channel(target, credentials) as channel:
            stream = reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(
                iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5
            )
            if allowed:
                (answer,) = [message async for message in stream]
                names = [s.name for s in answer.list_services_response.service]
                assert "rerank.v1.RerankService" in names
            else:
                with pytest.raises(grpc.aio.AioRpcError) as caught:
                    _ = [message async for message in stream]
                assert caught.value.code() is grpc.StatusCode.UNAUTHENTICATED
    # And health, when it needs a caller too: a unary check, and a watch's first answer.
    for certificate, allowed in (("by_san", True), ("stranger", False)):
        key, chain = pki[certificate]
        credentials = grpc.ssl_channel_credentials(
            root_certificates=pki["ca"], private_key=key, certificate_chain=chain
        )
        async with grpc.aio.secure_channel(target, credentials) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            request = health_pb2.HealthCheckRequest()
            if allowed:
                checked = await health.Check(request, timeout=5)
                watch = health.Watch(request, timeout=5)
                watched = await watch.read()
                watch.cancel()
                serving = health_pb2.HealthCheckResponse.SERVING
                assert checked.status == watched.status == serving
            else:
                for call in (
                    health.Check(request, timeout=5),
                    health.Watch(request, timeout=5).read(),
                ):
                    with pytest.raises(grpc.aio.AioRpcError) as caught:
                        await call
                    assert caught.value.code() is grpc.StatusCode.UNAUTHENTICATED
    # The client library's view of the same refusal.
    key, chain = pki["stranger"]
    credentials = grpc.ssl_channel_credentials(
        root_certificates=pki["ca"], private_key=key, certificate_chain=chain
    )
    async with AsyncRerankClient(target, credentials=credentials, timeout=5) as client:
        with pytest.raises(UnauthenticatedError):
            await client.get_usage()
