"""Wiring: the grpc.aio server, its error interceptor, health, reflection, and shutdown."""

from __future__ import annotations

import asyncio
import logging
import signal
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import grpc
import httpx
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio  # type: ignore[attr-defined]  # re-exported at run time
from grpc_reflection.v1alpha import reflection

from rerank.v1 import rerank_service_pb2 as pb
from rerank.v1 import rerank_service_pb2_grpc as pb_grpc
from server.config import Settings, Upstream
from server.domain import Limits, Reranker
from server.errors import RerankError
from server.gateway import GatewayReranker
from server.service import RerankServicer
from server.status import rich_status

logger = logging.getLogger(__name__)

SERVICE_NAME: str = pb.DESCRIPTOR.services_by_name["RerankService"].full_name
# The embedded mock is reached through httpx's ASGI transport: this host never resolves.
EMBEDDED_MOCK_URL = "http://embedded-mock-gateway.invalid/v3/ai"


if TYPE_CHECKING:
    # grpc's stubs make the interceptor generic; the runtime class is not subscriptable.
    _ServerInterceptor = grpc.aio.ServerInterceptor[Any, Any]
else:
    _ServerInterceptor = grpc.aio.ServerInterceptor


class ErrorInterceptor(_ServerInterceptor):
    """Turns `RerankError`s into statuses through the one table in `server.status`.

    Anything else is a bug: it is logged with its traceback under an incident id and the
    caller gets INTERNAL with that id, never the exception's text.
    """

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any]]
        ],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any]:
        handler = await continuation(handler_call_details)
        if handler is None or handler.unary_unary is None:
            return handler
        # grpc's stubs type handlers as sync; under grpc.aio the behaviour is a coroutine.
        behaviour: Any = handler.unary_unary
        method = handler_call_details.method

        async def guarded(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            try:
                return await behaviour(request, context)
            except RerankError as error:
                code, status = rich_status(error)
                logger.warning("%s failed: %s %s", method, code.name, error.reason)
                await context.abort(
                    code,
                    status.message,
                    trailing_metadata=(("grpc-status-details-bin", status.SerializeToString()),),
                )
            except (asyncio.CancelledError, grpc.aio.AbortError):
                raise
            except Exception:
                incident = uuid.uuid4().hex[:12]
                logger.exception("%s failed unexpectedly (incident %s)", method, incident)
                await context.abort(
                    grpc.StatusCode.INTERNAL, f"internal error (incident {incident})"
                )

        return grpc.unary_unary_rpc_method_handler(
            guarded,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )


@dataclass
class RunningServer:
    """A started server and what must be closed with it."""

    server: grpc.aio.Server
    port: int
    health: health_aio.HealthServicer
    reranker: Reranker
    grace_period: float

    async def stop(self) -> None:
        """Graceful stop: NOT_SERVING first (so balancers drain us), then let in-flight
        calls finish within the grace period, then close the HTTP pool."""
        await self.health.enter_graceful_shutdown()
        await self.server.stop(self.grace_period)
        await self.reranker.aclose()


def build_reranker(settings: Settings) -> GatewayReranker:
    """The gateway adapter over one pooled client: to the gateway, or to the bundled mock."""
    limits = httpx.Limits(
        max_connections=settings.max_connections,
        max_keepalive_connections=settings.max_connections,
    )
    if settings.upstream is Upstream.EMBEDDED_MOCK:
        # Composition root: only here does the server know the mock exists. The mock runs
        # in-process behind the real adapter, so the same JSON contract is exercised.
        from mock_gateway import create_app

        http = httpx.AsyncClient(transport=httpx.ASGITransport(app=create_app()), limits=limits)
        return GatewayReranker(http, base_url=EMBEDDED_MOCK_URL, api_key="embedded-mock")
    if settings.api_key is None:
        raise ValueError("a gateway upstream needs an API key")
    return GatewayReranker(
        httpx.AsyncClient(limits=limits),
        base_url=settings.gateway_url,
        api_key=settings.api_key,
        auth_method=settings.auth_method,
    )


async def start_server(settings: Settings, reranker: Reranker | None = None) -> RunningServer:
    """Build and start the server on `settings.host:settings.port`; return once listening.

    `reranker` replaces the one `settings` describe (tests use it for failures no gateway
    can be made to produce).
    """
    reranker = reranker or build_reranker(settings)
    message_limit = settings.max_message_bytes
    server = grpc.aio.server(
        interceptors=[ErrorInterceptor()],
        options=[
            ("grpc.max_receive_message_length", message_limit),
            ("grpc.max_send_message_length", message_limit),
        ],
    )
    servicer = RerankServicer(
        reranker,
        limits=Limits(
            max_documents=settings.max_documents,
            max_document_bytes=settings.max_document_bytes,
            max_query_bytes=settings.max_query_bytes,
        ),
        default_model=settings.default_model,
        upstream_timeout=settings.upstream_timeout,
    )
    pb_grpc.add_RerankServiceServicer_to_server(servicer, server)
    health_servicer = health_aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), server
    )
    port = server.add_insecure_port(f"{settings.host}:{settings.port}")
    await server.start()
    for name in ("", SERVICE_NAME):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    return RunningServer(server, port, health_servicer, reranker, settings.grace_period)


async def serve(settings: Settings, ready: Callable[[RunningServer], None]) -> None:
    """Run until SIGTERM or SIGINT, then stop gracefully."""
    running = await start_server(settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    ready(running)
    await stop.wait()
    logger.info("stopping: in-flight calls get %.3g s to finish", settings.grace_period)
    await running.stop()
    logger.info("stopped")
