"""The call limit against a real server: it refuses calls beyond it before reading their
message, and health checks, counted apart, still answer while every other place is taken."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from rerank.server._app import BACKSTOP_CALLS, HEALTH_CALLS, SERVICE_NAME, start_server
from rerank.server._config import Settings
from rerank.v1 import rerank_service_pb2 as pb
from rerank.v1 import rerank_service_pb2_grpc as pb_grpc
from tests.service.calls import fault, seed_request

ADMITTED = 2
LIMIT = ADMITTED + BACKSTOP_CALLS
RERANK = "/rerank.v1.RerankService/Rerank"


async def never_sends(forever: asyncio.Event) -> AsyncIterator[pb.RerankRequest]:
    """A caller that opens the call and never sends its message (a slow sender)."""
    await forever.wait()
    yield pb.RerankRequest()  # pragma: no cover - the event is never set


async def refusal(call: Any) -> grpc.aio.AioRpcError | None:
    try:
        await call
    except grpc.aio.AioRpcError as error:
        return error
    return None


async def hold(
    calls: list[Any],
    make: Callable[[], Any],
    count: int,
    stub: pb_grpc.RerankServiceStub,
    full: Callable[[str], bool],
) -> str:
    """Keep `count` calls from `make` in flight until ListModels is refused with a message
    that is `full`, while all of them still are; return that message. A poll, bounded, never
    a sleep standing in for an event; a held call refused because a poll took its place in
    between is made again."""
    held: list[Any] = []
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        held = [call for call in held if not call.done()]
        while len(held) < count:
            held.append(make())
        error = await refusal(stub.ListModels(pb.ListModelsRequest(), timeout=5))
        refused = error is not None and error.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
        details = (error.details() or "") if error is not None else ""
        if refused and full(details) and not any(call.done() for call in held):
            calls += held
            return details
        await asyncio.sleep(0.02)
    calls += held
    raise AssertionError("the server never refused as expected")


async def test_health_answers_while_every_call_place_is_taken() -> None:
    running = await start_server(Settings(port=0, grace_period=1, max_concurrent_calls=ADMITTED))
    forever = asyncio.Event()
    calls: list[Any] = []
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            stub = pb_grpc.RerankServiceStub(channel)
            health = health_pb2_grpc.HealthStub(channel)
            # Slow gateway calls fill admission...
            slow = seed_request(
                provider_options=fault(fault="slow", delayMs=60_000), bypass_cache=True
            )
            await hold(
                calls,
                lambda: stub.Rerank(slow, timeout=60),
                ADMITTED,
                stub,
                lambda details: f"limit of {ADMITTED} concurrent calls" in details,
            )
            # ...and slow senders, which admission never sees, the backstop above it.
            open_without_message = channel.stream_unary(
                RERANK,
                request_serializer=pb.RerankRequest.SerializeToString,
                response_deserializer=pb.RerankResponse.FromString,
            )
            # Refused now, but not by admission: the limit above it is reached.
            details = await hold(
                calls,
                lambda: open_without_message(never_sends(forever)),
                BACKSTOP_CALLS,
                stub,
                lambda details: "concurrent calls" not in details,
            )
            assert all(not call.done() for call in calls)  # the slow gateway calls too

            # One more slow sender is refused at once, though its message never comes: the
            # refusal does not read it.
            error = await refusal(open_without_message(never_sends(forever), timeout=10))
            assert error is not None
            assert error.code() is grpc.StatusCode.RESOURCE_EXHAUSTED

            for service in ("", SERVICE_NAME):  # (grpc's own limit refused these)
                answer = await health.Check(
                    health_pb2.HealthCheckRequest(service=service), timeout=5
                )
                assert answer.status == health_pb2.HealthCheckResponse.SERVING
            watch = health.Watch(health_pb2.HealthCheckRequest(service=SERVICE_NAME), timeout=5)
            first = await watch.read()
            assert first.status == health_pb2.HealthCheckResponse.SERVING
            watch.cancel()
            # The refusal is ours, from the one error table, naming the limit.
            assert f"limit of {LIMIT} calls in flight" in details
    finally:
        for call in calls:
            call.cancel()
        await running.stop()


async def test_health_checks_have_a_bound_of_their_own() -> None:
    """A flood of Watch streams cannot grow without bound: past HEALTH_CALLS a check is
    refused, while calls, counted apart, still go through."""
    running = await start_server(Settings(port=0, grace_period=1))
    watches: list[Any] = []
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            health = health_pb2_grpc.HealthStub(channel)
            for _ in range(HEALTH_CALLS):
                watch = health.Watch(health_pb2.HealthCheckRequest(), timeout=30)
                await watch.read()  # its first answer: the stream holds its place now
                watches.append(watch)
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await health.Check(health_pb2.HealthCheckRequest(), timeout=5)
            assert refused.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
            response = await pb_grpc.RerankServiceStub(channel).Rerank(seed_request(), timeout=10)
            assert response.ranking
    finally:
        for watch in watches:
            watch.cancel()
        await running.stop()
