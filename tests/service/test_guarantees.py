"""What callers can count on under faults, overload and hostile callers: retries, the circuit
breaker, admission limits, cancellation reaching the upstream, caller authentication, TLS."""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from pathlib import Path
from typing import Any

import grpc
import pytest
import trustme
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from rerank.client import (
    AsyncRerankClient,
    OverloadedError,
    RateLimitedError,
    UnavailableError,
    UpstreamRateLimitedError,
)
from rerank.server._admission import HELD_PER_REQUEST_BYTE
from rerank.server._app import RunningServer
from rerank.server._config import Settings, Upstream
from rerank.v1 import rerank_service_pb2 as pb
from rerank.v1 import rerank_service_pb2_grpc as pb_grpc
from tests.conftest import SEED_DOCUMENTS, SEED_MODEL, SEED_QUERY
from tests.scripted_http import Fail, Reply, Request, ScriptedServer
from tests.service.calls import fault, seed_request, unpacked
from tests.service.conftest import StartServer
from tests.service.gateways import HeldGateway

# Quick retries keep the tests fast; the policy is the same.
FAST = Settings(port=0, grace_period=2, retry_initial_backoff=0.01, retry_max_backoff=0.05)


@pytest.fixture
def serve(servers: StartServer) -> StartServer:
    """`servers`, with FAST settings unless told otherwise."""
    return lambda settings=FAST, **kwargs: servers(settings, **kwargs)


def stub_for(running: RunningServer, channel_list: list[grpc.aio.Channel]) -> Any:
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{running.port}")
    channel_list.append(channel)
    return pb_grpc.RerankServiceStub(channel)


def failing_first(times: int, **spec: Any) -> pb.RerankRequest:
    """A seed request whose first `times` upstream attempts fail as `spec` says."""
    return seed_request(provider_options=fault(times=times, key=uuid.uuid4().hex, **spec))


async def test_retryable_failures_are_retried(serve: Any, channels: list[Any]) -> None:
    stub = stub_for(await serve(), channels)
    # Two failures, then success: the default two retries absorb them.
    for spec in (
        {"fault": "error", "status": 503, "type": "internal_server_error"},
        {"fault": "status_only", "status": 502},
        {"fault": "rate_limit", "retryAfterMs": 20},
    ):
        response = await stub.Rerank(failing_first(2, **spec), timeout=10)
        assert response.ranking[0].original_index == 0, spec
    # Three failures exhaust them: the caller sees the last one.
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.Rerank(failing_first(3, fault="error", status=503), timeout=10)
    assert caught.value.code() is grpc.StatusCode.UNAVAILABLE


async def test_non_retryable_failures_are_not_retried(serve: Any, channels: list[Any]) -> None:
    stub = stub_for(await serve(), channels)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.Rerank(failing_first(1, fault="error", status=403, type="forbidden"), timeout=10)
    assert caught.value.code() is grpc.StatusCode.PERMISSION_DENIED


async def test_the_breaker_fails_fast_once_the_gateway_is_down(
    serve: Any, channels: list[Any]
) -> None:
    settings = dataclasses.replace(
        FAST, max_retries=0, breaker_failure_rate=1.0, breaker_window=2, breaker_cooldown=30
    )
    stub = stub_for(await serve(settings), channels)
    for _ in range(2):
        with pytest.raises(grpc.aio.AioRpcError):
            await stub.Rerank(failing_first(1, fault="error", status=503), timeout=10)
    # A good call now is refused without going upstream, and told when to come back.
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.Rerank(seed_request(), timeout=10)
    assert caught.value.code() is grpc.StatusCode.UNAVAILABLE
    assert "circuit open" in (caught.value.details() or "")
    retry = unpacked(caught.value, error_details_pb2.RetryInfo)
    assert 25 < retry.retry_delay.seconds <= 30


async def test_large_requests_alone_close_the_circuit_once_the_gateway_is_back(
    serve: Any, channels: list[Any]
) -> None:
    """Through the real chain: after the cool-down only large requests come
    (three windows each). The first window of one takes the probe, the other two are refused
    and cancel it; the circuit must close all the same, and large requests pass again."""
    settings = dataclasses.replace(
        FAST, max_retries=0, breaker_failure_rate=1.0, breaker_window=1, breaker_cooldown=0.2
    )
    stub = stub_for(await serve(settings), channels)
    with pytest.raises(grpc.aio.AioRpcError):
        await stub.Rerank(failing_first(1, fault="error", status=503), timeout=10)
    large = seed_request(documents=[pb.Document(text=f"document {i}") for i in range(2500)])
    refused = 0
    loop = asyncio.get_running_loop()
    give_up = loop.time() + 10
    while loop.time() < give_up:  # poll: the cool-down passes, then the probe decides
        try:
            response = await stub.Rerank(large, timeout=10)
        except grpc.aio.AioRpcError as error:
            assert error.code() is grpc.StatusCode.UNAVAILABLE, error.details()
            refused += 1
            await asyncio.sleep(0.05)
            continue
        assert len(response.ranking) == 2
        break
    else:
        pytest.fail(f"{refused} large requests in a row were refused: the circuit never closed")


def pushback(error: grpc.aio.AioRpcError) -> str | None:
    """The `grpc-retry-pushback-ms` trailer, as gRPC clients read it."""
    for key, value in error.trailing_metadata() or ():
        if key == "grpc-retry-pushback-ms":
            return str(value)
    return None


async def test_over_the_call_limit_is_refused_at_once(serve: Any, channels: list[Any]) -> None:
    gateway = HeldGateway()
    async with gateway.server:
        settings = gateway.settings(dataclasses.replace(FAST, max_concurrent_calls=2))
        stub = stub_for(await serve(settings), channels)
        held = seed_request(bypass_cache=True)
        in_flight = [asyncio.ensure_future(stub.Rerank(held, timeout=10)) for _ in range(2)]
        await gateway.holding(2)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.Rerank(seed_request(), timeout=10)
        assert caught.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
        assert unpacked(caught.value, error_details_pb2.ErrorInfo).reason == "OVERLOADED"
        retry = unpacked(caught.value, error_details_pb2.RetryInfo)
        # No gateway call was made: a gRPC client may retry after the delay, and is told so.
        assert pushback(caught.value) == str(retry.retry_delay.ToMilliseconds()) == "1000"
        gateway.release.set()
        for call in in_flight:
            assert (await call).ranking
        assert (await stub.Rerank(seed_request(), timeout=10)).ranking  # room again
        assert len(gateway.server.requests) == 3  # the refused call never reached the gateway


async def test_over_the_byte_limit_is_refused_at_once(serve: Any, channels: list[Any]) -> None:
    """The limit counts what a call holds, HELD_PER_REQUEST_BYTE times its request: room for
    one of these requests and a half is room for one call."""
    gateway = HeldGateway()
    big = [pb.Document(text="Paris " * 10_000)]
    first, second = seed_request(documents=big), seed_request(documents=big, query="another")
    limit = int(1.5 * HELD_PER_REQUEST_BYTE * first.ByteSize())
    assert 2 * first.ByteSize() < limit  # counted by request bytes, both would have fit
    async with gateway.server:
        settings = gateway.settings(dataclasses.replace(FAST, max_inflight_bytes=limit))
        stub = stub_for(await serve(settings), channels)
        in_flight = asyncio.ensure_future(stub.Rerank(first, timeout=10))
        await gateway.holding(1)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.Rerank(second, timeout=10)
        assert caught.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "bytes held by calls in flight" in (caught.value.details() or "")
        assert unpacked(caught.value, error_details_pb2.ErrorInfo).reason == "OVERLOADED"
        gateway.release.set()
        assert (await in_flight).ranking
        assert len(gateway.server.requests) == 1  # the refused call never reached the gateway


async def test_the_client_tells_our_overload_from_the_gateways_rate_limit(serve: Any) -> None:
    """Both are RESOURCE_EXHAUSTED; the ErrorInfo reason makes them two exceptions."""
    gateway = HeldGateway()
    async with gateway.server:
        settings = gateway.settings(dataclasses.replace(FAST, max_concurrent_calls=1))
        running = await serve(settings)
        async with AsyncRerankClient(f"127.0.0.1:{running.port}", timeout=10) as client:
            held = asyncio.ensure_future(client.rerank(SEED_QUERY, list(SEED_DOCUMENTS)))
            await gateway.holding(1)
            with pytest.raises(OverloadedError) as overloaded:
                await client.rerank(SEED_QUERY, list(SEED_DOCUMENTS))
            gateway.release.set()
            await held
    assert overloaded.value.retry_delay == 1.0

    rate_limited = await serve()  # the bundled mock, told to answer 429
    async with AsyncRerankClient(f"127.0.0.1:{rate_limited.port}", timeout=10) as client:
        with pytest.raises(UpstreamRateLimitedError) as limited:
            await client.rerank(
                SEED_QUERY,
                list(SEED_DOCUMENTS),
                model=SEED_MODEL,
                provider_options=fault(fault="rate_limit", retryAfterMs=20),
            )
    assert isinstance(limited.value, RateLimitedError)  # the common base catches both
    assert limited.value.retry_delay == pytest.approx(0.02)


async def test_client_retries_do_not_multiply_the_servers_gateway_attempts(serve: Any) -> None:
    """The shipped service config retries UNAVAILABLE; the server retries the gateway. A gateway
    that stays down sees the server's three attempts per call, not three times three."""

    async def down(request: Request) -> Reply:
        return Reply(
            status=503,
            body=b'{"error":{"message":"down","type":"internal_server_error"}}',
        )

    async with ScriptedServer(down) as upstream:
        settings = dataclasses.replace(
            FAST, upstream=Upstream.GATEWAY, gateway_url=upstream.url, api_key="k"
        )
        running = await serve(settings)
        async with AsyncRerankClient(f"127.0.0.1:{running.port}", timeout=10) as client:
            with pytest.raises(UnavailableError) as caught:
                await client.rerank(SEED_QUERY, list(SEED_DOCUMENTS), bypass_cache=True)
    assert len(upstream.requests) == 1 + FAST.max_retries
    assert caught.value.retry_delay is not None  # the caller's own code may still wait and retry


@pytest.mark.parametrize("how", ["deadline", "cancel"])
async def test_the_callers_end_cancels_the_upstream_request(
    serve: Any, channels: list[Any], how: str
) -> None:
    """Seen from a real HTTP upstream that never answers: the server hangs up on it."""

    async def never_answer(request: Request) -> str:
        return Fail.HANG

    async with ScriptedServer(never_answer) as upstream:
        settings = dataclasses.replace(
            FAST, upstream=Upstream.GATEWAY, gateway_url=upstream.url, api_key="k"
        )
        stub = stub_for(await serve(settings), channels)
        call = stub.Rerank(seed_request(), timeout=0.5 if how == "deadline" else 30)
        await asyncio.wait_for(upstream.request_arrived.wait(), 5)
        if how == "cancel":
            call.cancel()
        with pytest.raises((grpc.aio.AioRpcError, asyncio.CancelledError)):
            await call
        await asyncio.wait_for(upstream.client_went_away.wait(), 5)


# --- caller authentication -------------------------------------------------------------

AUTHED = dataclasses.replace(FAST, auth_tokens=frozenset({"token-one", "token-two"}))


async def test_calls_need_a_known_bearer_token(serve: Any, channels: list[Any]) -> None:
    stub = stub_for(await serve(AUTHED), channels)
    for metadata in ((), (("authorization", "Bearer nope"),), (("authorization", "token-two"),)):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.Rerank(seed_request(), timeout=5, metadata=metadata)
        assert caught.value.code() is grpc.StatusCode.UNAUTHENTICATED
        assert "nope" not in (caught.value.details() or "")
    response = await stub.Rerank(
        seed_request(), timeout=5, metadata=(("authorization", "Bearer token-two"),)
    )
    assert response.ranking


async def test_without_a_token_nobody_learns_which_methods_exist(
    serve: Any, channels: list[Any]
) -> None:
    running = await serve(AUTHED)
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{running.port}")
    channels.append(channel)
    for method in ("/rerank.v1.RerankService/NoSuchMethod", "/no.such.Service/Method"):
        unknown = channel.unary_unary(method)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await unknown(b"", timeout=5)
        assert caught.value.code() is grpc.StatusCode.UNAUTHENTICATED
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await unknown(b"", timeout=5, metadata=(("authorization", "Bearer token-one"),))
        assert caught.value.code() is grpc.StatusCode.UNIMPLEMENTED


async def test_health_is_open_unless_configured(serve: Any) -> None:
    for settings, open_ in ((AUTHED, True), (dataclasses.replace(AUTHED, auth_health=True), False)):
        running = await serve(settings)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            health = health_pb2_grpc.HealthStub(channel)
            if open_:
                answer = await health.Check(health_pb2.HealthCheckRequest(), timeout=5)
                assert answer.status == health_pb2.HealthCheckResponse.SERVING
            else:
                with pytest.raises(grpc.aio.AioRpcError) as caught:
                    await health.Check(health_pb2.HealthCheckRequest(), timeout=5)
                assert caught.value.code() is grpc.StatusCode.UNAUTHENTICATED
            # Reflection tells what the service is: it needs a token either way.
            reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
            stream = reflection.ServerReflectionInfo(
                iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5
            )
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                async for _ in stream:
                    pass
            assert caught.value.code() is grpc.StatusCode.UNAUTHENTICATED


# --- TLS ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A real CA, a server certificate for 127.0.0.1 and localhost, and a client certificate."""
    folder = tmp_path_factory.mktemp("pki")
    authority = trustme.CA()
    server_cert = authority.issue_cert("127.0.0.1", "localhost")
    client_cert = authority.issue_cert("client@rerank.test")
    files: dict[str, Any] = {"ca": folder / "ca.pem"}
    authority.cert_pem.write_to_path(str(files["ca"]))
    for name, cert in (("server", server_cert), ("client", client_cert)):
        files[f"{name}_chain"] = folder / f"{name}-chain.pem"
        files[f"{name}_key"] = folder / f"{name}-key.pem"
        cert.private_key_pem.write_to_path(str(files[f"{name}_key"]))
        with open(files[f"{name}_chain"], "wb") as chain:
            for blob in cert.cert_chain_pems:
                chain.write(blob.bytes())
    return files


def tls_settings(pki: dict[str, Path], mutual: bool) -> Settings:
    return dataclasses.replace(
        FAST,
        tls_cert_file=str(pki["server_chain"]),
        tls_key_file=str(pki["server_key"]),
        tls_client_ca_file=str(pki["ca"]) if mutual else None,
    )


async def rerank_over(
    target: str, credentials: grpc.ChannelCredentials | None
) -> pb.RerankResponse:
    channel = (
        grpc.aio.insecure_channel(target)
        if credentials is None
        else grpc.aio.secure_channel(target, credentials)
    )
    async with channel:
        response: pb.RerankResponse = await pb_grpc.RerankServiceStub(channel).Rerank(
            seed_request(), timeout=5
        )
        return response


async def test_tls(serve: Any, pki: dict[str, Path]) -> None:
    running = await serve(tls_settings(pki, mutual=False))
    target = f"127.0.0.1:{running.port}"
    trusted = grpc.ssl_channel_credentials(root_certificates=pki["ca"].read_bytes())
    assert (await rerank_over(target, trusted)).ranking
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await rerank_over(target, None)  # plaintext to a TLS port
    assert caught.value.code() is grpc.StatusCode.UNAVAILABLE
    untrusted = grpc.ssl_channel_credentials(root_certificates=trustme.CA().cert_pem.bytes())
    with pytest.raises(grpc.aio.AioRpcError):
        await rerank_over(target, untrusted)


async def test_mutual_tls(serve: Any, pki: dict[str, Path]) -> None:
    running = await serve(tls_settings(pki, mutual=True))
    target = f"127.0.0.1:{running.port}"
    root = pki["ca"].read_bytes()
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await rerank_over(target, grpc.ssl_channel_credentials(root_certificates=root))
    assert caught.value.code() is grpc.StatusCode.UNAVAILABLE
    with_client_cert = grpc.ssl_channel_credentials(
        root_certificates=root,
        private_key=pki["client_key"].read_bytes(),
        certificate_chain=pki["client_chain"].read_bytes(),
    )
    assert (await rerank_over(target, with_client_cert)).ranking
