"""What a Rerank call holds while in flight: gRPC's bytes and the domain values, never a decoded
message besides, with the documents echoed exactly all the same. (How much memory that is,
per call, is `make bench`'s to measure: bench/memory.py.)"""

from __future__ import annotations

import asyncio
import dataclasses
import gc
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest

from rerank.server._app import RunningServer, start_server
from rerank.server._config import Settings
from rerank.v1 import rerank_service_pb2 as pb
from tests.service.calls import MESSAGE_LIMIT, seed_request, struct
from tests.service.gateways import HeldGateway

SETTINGS = Settings(port=0, grace_period=2, cache_max_bytes=0)
RERANK = "/rerank.v1.RerankService/Rerank"


@pytest.fixture
async def held() -> AsyncIterator[tuple[HeldGateway, RunningServer]]:
    gateway = HeldGateway()
    async with gateway.server:
        running = await start_server(gateway.settings(SETTINGS))
        try:
            yield gateway, running
        finally:
            gateway.release.set()
            await running.stop()


def live(kind: type) -> int:
    gc.collect()
    return sum(1 for o in gc.get_objects() if type(o) is kind)


@pytest.mark.parametrize("return_documents", [None, False], ids=["echoed", "lean"])
async def test_no_decoded_request_is_held_while_the_gateway_answers(
    held: tuple[HeldGateway, RunningServer], return_documents: bool | None
) -> None:
    """The test sends bytes (its own message is gone before the call), so any RerankRequest
    or Document alive while the gateway holds the calls, beyond those alive before (other
    tests' module constants), would be the server's."""
    gateway, running = held
    fields: dict[str, Any] = {"top_n": None}
    if return_documents is not None:
        fields["return_documents"] = return_documents
    bodies = [seed_request(query=f"query {i}", **fields).SerializeToString() for i in range(3)]
    before = (live(pb.RerankRequest), live(pb.Document))
    async with grpc.aio.insecure_channel(
        f"127.0.0.1:{running.port}", options=MESSAGE_LIMIT
    ) as channel:
        rerank = channel.unary_unary(RERANK)
        calls = [asyncio.ensure_future(rerank(body, timeout=10)) for body in bodies]
        await gateway.holding(3)
        assert (live(pb.RerankRequest), live(pb.Document)) == before
        gateway.release.set()
        answers = [pb.RerankResponse.FromString(a) for a in await asyncio.gather(*calls)]
    for answer in answers:
        assert len(answer.ranking) == 3
        assert all(r.HasField("document") == (return_documents is None) for r in answer.ranking)


async def test_the_check_would_see_a_held_message(held: tuple[HeldGateway, RunningServer]) -> None:
    """Not vacuous: a message kept alive during the hold is counted."""
    before = (live(pb.RerankRequest), live(pb.Document))
    kept = seed_request()
    # Submessages are wrapped only while used: the message alone is counted.
    assert (live(pb.RerankRequest), live(pb.Document)) == (before[0] + 1, before[1])
    del kept


async def test_echoed_documents_are_exactly_the_bytes_sent() -> None:
    """Echoed from the request as received, not rebuilt from the values sent upstream: a
    Struct's -0.0, a number beyond 2^53 and an empty Value come back bit for bit."""
    objects = [
        {"title": "Paris", "n": -0.0, "big": 2.0**60, "nested": {"list": [1, "two", None]}},
        {"title": "Berlin", "n": 1.5},
    ]
    documents = [pb.Document(object=struct(o)) for o in objects]
    documents[1].object.fields["unset"].Clear()  # a Value with no kind: JSON null upstream
    request = pb.RerankRequest(query="Paris", documents=documents)
    running = await start_server(dataclasses.replace(SETTINGS))
    try:
        async with grpc.aio.insecure_channel(
            f"127.0.0.1:{running.port}", options=MESSAGE_LIMIT
        ) as channel:
            answer = pb.RerankResponse.FromString(
                await channel.unary_unary(RERANK)(request.SerializeToString(), timeout=10)
            )
    finally:
        await running.stop()
    for ranked in answer.ranking:
        sent = request.documents[ranked.original_index]
        assert ranked.document.SerializeToString() == sent.SerializeToString()


async def test_every_method_of_the_service_is_answered() -> None:
    """The service is registered by hand (Rerank takes its request as bytes): no method of
    the contract may be left out, as a new one would be answered UNIMPLEMENTED."""
    running = await start_server(SETTINGS)
    codes = {}
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            for method in pb.DESCRIPTOR.services_by_name["RerankService"].methods:
                call = channel.unary_unary(f"/rerank.v1.RerankService/{method.name}")
                try:
                    await call(b"", timeout=10)
                    codes[method.name] = grpc.StatusCode.OK
                except grpc.aio.AioRpcError as error:
                    codes[method.name] = error.code()
    finally:
        await running.stop()
    assert grpc.StatusCode.UNIMPLEMENTED not in codes.values(), codes
    assert codes["Rerank"] is grpc.StatusCode.INVALID_ARGUMENT  # an empty query
