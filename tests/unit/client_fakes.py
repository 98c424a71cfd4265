"""A scripted fake `RerankService` for the client and CLI tests (this module has no tests).

There is no real server to test against (and the client must not depend on one): the fake
records every request and its metadata, then plays its script, one step per call: a response,
an abort with a status and `google.rpc` details, or a delay. With the script used up it answers
with `default_rerank_response`, which ranks the documents in reverse order and echoes them (a
BatchRerank: each of its requests so).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator, Sequence
from concurrent import futures
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import grpc
from google.protobuf import duration_pb2
from google.protobuf.message import Message
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from rerank.v1 import rerank_service_pb2 as pb
from rerank.v1 import rerank_service_pb2_grpc as pb_grpc

# The fake must accept what the real server accepts (1,000 documents of 4 KiB and more).
SERVER_OPTIONS = [
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
    ("grpc.max_send_message_length", 64 * 1024 * 1024),
]

MODELS = pb.ListModelsResponse(
    models=[
        pb.Model(
            id="cohere/rerank-v3.5",
            name="Rerank 3.5",
            description="Cohere's reranker",
            provider="cohere",
            pricing={"input": "0.002"},
        ),
        pb.Model(id="voyage/rerank-2"),
    ]
)

USAGE = pb.GetUsageResponse(
    caller="search-api",
    day="2026-03-14",
    spent_usd="0.003",
    daily_budget_usd="0.0025",
    calls=3,
    refused=1,
    requests_per_second=5,
    burst=5,
    models=["cohere/*"],
)


@dataclass(frozen=True)
class Abort:
    """Fail the call with `code`, `message` and these `google.rpc` detail messages."""

    code: grpc.StatusCode
    message: str
    details: Sequence[Message] = ()

    def status(self) -> grpc.Status:
        proto = status_pb2.Status(code=self.code.value[0], message=self.message)
        for detail in self.details:
            proto.details.add().Pack(detail)
        return rpc_status.to_status(proto)


@dataclass(frozen=True)
class Delay:
    """Answer (with the default response) only after `seconds`."""

    seconds: float


AioContext = Any  # grpc.aio.ServicerContext, whose stub is generic over the messages

Step = (
    pb.RerankResponse
    | pb.ListModelsResponse
    | pb.GetUsageResponse
    | pb.BatchRerankResponse
    | Abort
    | Delay
)


def bad_request(*violations: tuple[str, str]) -> error_details_pb2.BadRequest:
    return error_details_pb2.BadRequest(
        field_violations=[
            error_details_pb2.BadRequest.FieldViolation(field=f, description=d)
            for f, d in violations
        ]
    )


def retry_info(seconds: float) -> error_details_pb2.RetryInfo:
    delay = duration_pb2.Duration()
    delay.FromNanoseconds(int(seconds * 1e9))
    return error_details_pb2.RetryInfo(retry_delay=delay)


def error_info(reason: str, **metadata: str) -> error_details_pb2.ErrorInfo:
    return error_details_pb2.ErrorInfo(reason=reason, domain="rerank.v1", metadata=metadata)


def default_rerank_response(request: pb.RerankRequest) -> pb.RerankResponse:
    """Rank the documents last-first with falling scores, cut to top_n, echoing them unless
    the request's `return_documents` is false."""
    order = list(reversed(range(len(request.documents))))
    if request.HasField("top_n"):
        order = order[: request.top_n]
    echo = not request.HasField("return_documents") or request.return_documents
    return pb.RerankResponse(
        ranking=[
            pb.RankedDocument(
                original_index=i,
                score=1.0 - rank / 10,
                document=request.documents[i] if echo else None,
            )
            for rank, i in enumerate(order)
        ],
        model=request.model or "cohere/rerank-v3.5",
        id="rr-test",
    )


@dataclass
class FakeRerankService(pb_grpc.RerankServiceServicer):
    """The sync fake: `script` steps are played first-in first-out, one per call."""

    script: list[Step] = field(default_factory=list)
    requests: list[Message] = field(default_factory=list)
    metadata: list[dict[str, str | bytes]] = field(default_factory=list)
    # Set at teardown so a delayed handler thread does not outlive its test.
    released: threading.Event = field(default_factory=threading.Event)

    def _record(self, request: Message, context: Any) -> Step | None:
        self.requests.append(request)
        self.metadata.append(dict(context.invocation_metadata()))
        return self.script.pop(0) if self.script else None

    def _answer(self, request: Message, step: Step | None) -> Message:
        if isinstance(
            step,
            pb.RerankResponse
            | pb.ListModelsResponse
            | pb.GetUsageResponse
            | pb.BatchRerankResponse,
        ):
            return step
        if isinstance(request, pb.RerankRequest):
            return default_rerank_response(request)
        if isinstance(request, pb.GetUsageRequest):
            return USAGE
        if isinstance(request, pb.BatchRerankRequest):
            return pb.BatchRerankResponse(
                results=[
                    pb.BatchRerankResult(response=default_rerank_response(r))
                    for r in request.requests
                ]
            )
        return MODELS

    def Rerank(self, request: pb.RerankRequest, context: grpc.ServicerContext) -> Message:
        return self._handle(request, context)

    def ListModels(self, request: pb.ListModelsRequest, context: grpc.ServicerContext) -> Message:
        return self._handle(request, context)

    def GetUsage(self, request: pb.GetUsageRequest, context: grpc.ServicerContext) -> Message:
        return self._handle(request, context)

    def BatchRerank(self, request: pb.BatchRerankRequest, context: grpc.ServicerContext) -> Message:
        return self._handle(request, context)

    def _handle(self, request: Message, context: grpc.ServicerContext) -> Message:
        step = self._record(request, context)
        if isinstance(step, Abort):
            context.abort_with_status(step.status())
        if isinstance(step, Delay):
            self.released.wait(step.seconds)
        return self._answer(request, step)


class AsyncFakeRerankService(FakeRerankService):
    """The same fake for a `grpc.aio` server."""

    async def Rerank(self, request: pb.RerankRequest, context: AioContext) -> Message:
        return await self._handle_async(request, context)

    async def ListModels(self, request: pb.ListModelsRequest, context: AioContext) -> Message:
        return await self._handle_async(request, context)

    async def GetUsage(self, request: pb.GetUsageRequest, context: AioContext) -> Message:
        return await self._handle_async(request, context)

    async def BatchRerank(self, request: pb.BatchRerankRequest, context: AioContext) -> Message:
        return await self._handle_async(request, context)

    async def _handle_async(self, request: Message, context: AioContext) -> Message:
        step = self._record(request, context)
        if isinstance(step, Abort):
            status = step.status()
            await context.abort(status.code, status.details, status.trailing_metadata)
        if isinstance(step, Delay):
            await asyncio.sleep(step.seconds)
        return self._answer(request, step)


@contextmanager
def serve(servicer: FakeRerankService) -> Iterator[str]:
    """Run `servicer` on a sync `grpc.server` at 127.0.0.1:<free port>; yield the target."""
    pool = futures.ThreadPoolExecutor(max_workers=4)
    server = grpc.server(pool, options=SERVER_OPTIONS)
    pb_grpc.add_RerankServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        servicer.released.set()
        server.stop(grace=None).wait()
        pool.shutdown(wait=True)


__all__ = [
    "MODELS",
    "SERVER_OPTIONS",
    "USAGE",
    "Abort",
    "AsyncFakeRerankService",
    "Delay",
    "FakeRerankService",
    "bad_request",
    "default_rerank_response",
    "error_info",
    "retry_info",
    "serve",
]
