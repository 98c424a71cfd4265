"""What a real server records, call by call: gRPC's A66 metrics for every method and status
(refusals and streams included), and the service's own as calls pass the cache, the windows,
the retries and the gateway."""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from collections.abc import AsyncIterator, Callable
from decimal import Decimal
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from rerank.server._app import RunningServer
from rerank.server._config import Settings
from rerank.server._metrics import Metrics
from rerank.server._prometheus import PrometheusRecorder
from rerank.v1 import rerank_service_pb2 as pb
from rerank.v1 import rerank_service_pb2_grpc as pb_grpc
from tests.conftest import SEED_MODEL
from tests.scrapes import Scrape, ended, scrape_until
from tests.service.calls import fault, seed_request
from tests.service.conftest import StartServer

FAST = Settings(port=0, grace_period=2, retry_initial_backoff=0.01, retry_max_backoff=0.05)
RERANK = "rerank.v1.RerankService/Rerank"
CHECK = "grpc.health.v1.Health/Check"
WATCH = "grpc.health.v1.Health/Watch"
REFLECTION = "grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"


@pytest.fixture
def recorder() -> PrometheusRecorder:
    return PrometheusRecorder()


@pytest.fixture
def serve(servers: StartServer, recorder: PrometheusRecorder) -> StartServer:
    """Start a server recording metrics into `recorder` (FAST unless told otherwise)."""
    return lambda settings=FAST, **kwargs: servers(settings, metrics=Metrics(recorder), **kwargs)


@pytest.fixture
async def channel_to() -> AsyncIterator[Callable[[RunningServer], grpc.aio.Channel]]:
    opened: list[grpc.aio.Channel] = []

    def open_channel(running: RunningServer) -> grpc.aio.Channel:
        opened.append(grpc.aio.insecure_channel(f"127.0.0.1:{running.port}"))
        return opened[-1]

    yield open_channel
    for channel in opened:
        await channel.close()


async def test_every_call_is_counted_by_method_and_status(
    serve: Any, channel_to: Any, recorder: PrometheusRecorder
) -> None:
    channel = channel_to(await serve())
    stub = pb_grpc.RerankServiceStub(channel)
    request = seed_request()
    response = await stub.Rerank(request, timeout=10)
    with pytest.raises(grpc.aio.AioRpcError):
        await stub.Rerank(seed_request(query=""), timeout=10)
    await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
    reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
    asked = reflection_pb2.ServerReflectionRequest(list_services="")
    answers = [a async for a in reflection.ServerReflectionInfo(iter([asked, asked]), timeout=10)]
    unknown = channel.unary_unary("/rerank.v1.RerankService/NoSuchMethod")
    with pytest.raises(grpc.aio.AioRpcError) as unimplemented:
        await unknown(b"", timeout=10)
    assert unimplemented.value.code() is grpc.StatusCode.UNIMPLEMENTED
    # Bytes that are not the method's request: unary methods answer INVALID_ARGUMENT; for a
    # streaming one grpc answers UNKNOWN before any handler runs, and our deserializer counts it.
    with pytest.raises(grpc.aio.AioRpcError) as undecodable:
        await channel.unary_unary(f"/{RERANK}")(b"\xff\xff\xff", timeout=10)
    assert undecodable.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.aio.AioRpcError) as undecodable:
        await channel.unary_stream(f"/{WATCH}")(b"\xff\xff\xff", timeout=10).read()
    assert undecodable.value.code() is grpc.StatusCode.UNKNOWN

    result = await scrape_until(recorder, lambda s: ended(s, REFLECTION, "OK") == 1)
    assert result.total("grpc_server_call_started_total", grpc_method=RERANK) == 3
    assert ended(result, RERANK, "OK") == 1
    assert ended(result, RERANK, "INVALID_ARGUMENT") == 2
    assert ended(result, CHECK, "OK") == 1
    assert ended(result, WATCH, "UNKNOWN") == 1
    assert ended(result, "other", "UNIMPLEMENTED") == 1
    assert result.total("grpc_server_call_started_total", grpc_method="other") == 1
    # Sizes are the serialized messages; a stream's are its messages' sum.
    ok = {"grpc_method": RERANK, "grpc_status": "OK"}
    rcvd = "grpc_server_call_rcvd_total_compressed_message_size_bytes_sum"
    sent = "grpc_server_call_sent_total_compressed_message_size_bytes_sum"
    assert result.total(rcvd, **ok) == request.ByteSize()
    assert result.total(sent, **ok) == response.ByteSize()
    assert result.total(rcvd, grpc_method=REFLECTION) == 2 * asked.ByteSize()
    assert result.total(sent, grpc_method=REFLECTION) == sum(a.ByteSize() for a in answers)
    assert result.total(rcvd, grpc_method=WATCH, grpc_status="UNKNOWN") == 3
    # Every registered method is there from the start, at zero.
    listing = "grpc.health.v1.Health/List"
    assert result.total("grpc_server_call_started_total", grpc_method=listing) == 0
    assert f'grpc_method="{listing}"' in result.text


async def test_a_watch_is_one_call_that_ends_when_the_caller_leaves(
    serve: Any, channel_to: Any, recorder: PrometheusRecorder
) -> None:
    channel = channel_to(await serve())
    watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest())
    first = await watch.read()
    assert first.status == health_pb2.HealthCheckResponse.SERVING
    assert Scrape.of(recorder).total("grpc_server_call_started_total", grpc_method=WATCH) == 1
    watch.cancel()
    result = await scrape_until(recorder, lambda s: ended(s, WATCH, "CANCELLED") == 1)
    sent = "grpc_server_call_sent_total_compressed_message_size_bytes_sum"
    assert result.total(sent, grpc_method=WATCH) == first.ByteSize()


async def test_calls_refused_for_want_of_a_token_are_counted(
    serve: Any, channel_to: Any, recorder: PrometheusRecorder
) -> None:
    running = await serve(dataclasses.replace(FAST, auth_tokens=frozenset({"sesame"})))
    channel = channel_to(running)
    stub = pb_grpc.RerankServiceStub(channel)
    for _ in range(3):  # the refusal, and the real handler after it, each wrapped once
        with pytest.raises(grpc.aio.AioRpcError):
            await stub.Rerank(seed_request(), timeout=10)
        await stub.Rerank(seed_request(), metadata=(("authorization", "Bearer sesame"),))
    reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
    asked = reflection_pb2.ServerReflectionRequest(list_services="")
    with pytest.raises(grpc.aio.AioRpcError):
        [a async for a in reflection.ServerReflectionInfo(iter([asked]), timeout=10)]
    result = await scrape_until(recorder, lambda s: ended(s, REFLECTION, "UNAUTHENTICATED") == 1)
    assert ended(result, RERANK, "UNAUTHENTICATED") == 3
    assert ended(result, RERANK, "OK") == 3


async def test_upstream_attempts_retries_and_cost(
    serve: Any, channel_to: Any, recorder: PrometheusRecorder
) -> None:
    stub = pb_grpc.RerankServiceStub(channel_to(await serve()))
    await stub.Rerank(seed_request(query="the gateway answers for this model"), timeout=10)
    twice_limited = fault(fault="rate_limit", retryAfterMs=10, times=2, key=uuid.uuid4().hex)
    response = await stub.Rerank(seed_request(provider_options=twice_limited), timeout=10)
    cost = Decimal(response.provider_metadata["gateway"]["cost"])
    again = await stub.Rerank(seed_request(provider_options=twice_limited), timeout=10)
    assert again.cached  # a hit costs nothing
    unauthenticated = fault(fault="error", status=401, type="authentication_error")
    with pytest.raises(grpc.aio.AioRpcError):
        await stub.Rerank(seed_request(provider_options=unauthenticated), timeout=10)
    with pytest.raises(grpc.aio.AioRpcError):
        await stub.Rerank(seed_request(model="made/up-model"), timeout=10)
    await stub.ListModels(pb.ListModelsRequest(), timeout=10)

    result = Scrape.of(recorder)
    attempts = "rerank_upstream_attempts_total"
    assert result.total(attempts, model=SEED_MODEL, outcome="UPSTREAM_RATE_LIMITED") == 2
    assert result.total(attempts, model=SEED_MODEL, outcome="OK") == 2
    assert result.total(attempts, model=SEED_MODEL, outcome="UPSTREAM_AUTHENTICATION") == 1
    assert result.total(attempts, model="other", outcome="MODEL_NOT_FOUND") == 1
    assert result.total(attempts, operation="list_models", outcome="OK") == 1
    assert "made/up-model" not in result.text
    assert result.total("rerank_upstream_retries_total", reason="UPSTREAM_RATE_LIMITED") == 2
    assert result.total("rerank_upstream_attempt_duration_seconds_count", outcome="OK") == 3
    shown = result.line("rerank_gateway_cost_usd_total", model=SEED_MODEL, caller="").split()[-1]
    assert Decimal(shown) == 2 * cost  # the seed call and the retried one, each once
    assert result.total("rerank_cache_requests_total", result="hit") == 1
    assert result.total("rerank_cache_requests_total", result="miss") == 4
    assert result.total("rerank_cache_entries") == 2
    assert result.total("rerank_cache_bytes") > 0
    assert result.total("rerank_documents_per_request_count") == 5


async def test_identical_calls_in_flight_share_one_upstream_call(
    serve: Any, channel_to: Any, recorder: PrometheusRecorder
) -> None:
    stub = pb_grpc.RerankServiceStub(channel_to(await serve()))
    slow = seed_request(provider_options=fault(fault="slow", delayMs=500))
    answers = await asyncio.gather(*(stub.Rerank(slow, timeout=10) for _ in range(3)))
    assert sum(a.cached for a in answers) == 2
    result = Scrape.of(recorder)
    assert result.total("rerank_cache_requests_total", result="miss") == 1
    assert result.total("rerank_cache_requests_total", result="coalesced") == 2
    assert result.total("rerank_upstream_attempts_total", outcome="OK") == 1


async def test_windows_and_the_breaker(
    serve: Any, channel_to: Any, recorder: PrometheusRecorder
) -> None:
    settings = dataclasses.replace(
        FAST,
        window_sizes={"cohere": 2},
        max_retries=0,
        breaker_failure_rate=1.0,
        breaker_window=2,
        breaker_cooldown=30,
    )
    stub = pb_grpc.RerankServiceStub(channel_to(await serve(settings)))
    await stub.Rerank(seed_request(top_n=None), timeout=10)  # 3 documents in windows of 2
    down = fault(fault="error", status=503, type="internal_server_error")
    one_document = [pb.Document(text="Paris")]
    for _ in range(2):
        with pytest.raises(grpc.aio.AioRpcError):
            await stub.Rerank(seed_request(documents=one_document, provider_options=down))
    with pytest.raises(grpc.aio.AioRpcError):  # refused by the open circuit: no attempt
        await stub.Rerank(seed_request(query="another"), timeout=10)
    result = Scrape.of(recorder)
    assert result.total("rerank_windows_per_request_bucket", le="1.0") == 2
    assert result.total("rerank_windows_per_request_bucket", le="2.0") == 4
    assert result.total("rerank_windows_per_request_sum") == 2 + 1 + 1 + 2
    assert result.total("rerank_circuit_breaker_state", state="open") == 1
    assert result.total("rerank_circuit_breaker_state", state="closed") == 0
    assert result.total("rerank_circuit_breaker_transitions_total", to="open") == 1
    assert result.total("rerank_upstream_attempts_total", outcome="OK") == 2
    assert result.total("rerank_upstream_attempts_total", outcome="UPSTREAM_UNAVAILABLE") == 2
    assert result.total("rerank_upstream_attempts_total") == 4


async def test_calls_in_flight_and_refusals(
    serve: Any, channel_to: Any, recorder: PrometheusRecorder
) -> None:
    stub = pb_grpc.RerankServiceStub(
        channel_to(await serve(dataclasses.replace(FAST, max_concurrent_calls=1)))
    )
    slow = seed_request(query="slow", provider_options=fault(fault="slow", delayMs=1000))
    in_flight = asyncio.ensure_future(stub.Rerank(slow, timeout=10))
    await scrape_until(recorder, lambda s: s.total("rerank_calls_in_flight") == 1)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await stub.Rerank(seed_request(query="refused"), timeout=10)
    assert refused.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert (await in_flight).ranking
    result = Scrape.of(recorder)
    assert result.total("rerank_admission_refusals_total", reason="concurrent_calls") == 1
    assert result.total("rerank_admission_refusals_total", reason="inflight_bytes") == 0
    assert result.total("rerank_calls_in_flight") == 0
    assert ended(result, RERANK, "RESOURCE_EXHAUSTED") == 1
