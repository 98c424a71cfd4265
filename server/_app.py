"""Wiring: the reranker chain, the grpc.aio server with the call pipeline, health, reflection,
and shutdown. The only module that knows every part."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gc
import logging
import signal
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio  # type: ignore[attr-defined]  # re-exported at run time
from grpc_reflection.v1alpha import reflection, reflection_pb2_grpc
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider

from rerank.contract import max_response_bytes
from rerank.server._admission import Admission, return_large_blocks_when_freed
from rerank.server._breaker import BreakerState, CircuitBreaker
from rerank.server._cache import CachingReranker
from rerank.server._caller_limits import CallerLimitsReranker
from rerank.server._callers import CallerRegistry
from rerank.server._config import CacheBackend, Settings, Upstream
from rerank.server._credentials import (
    CallersFileError,
    Credential,
    OidcTokenFile,
    StaticCredential,
    TokenFileError,
)
from rerank.server._domain import Limits, Reranker
from rerank.server._gateway import GatewayReranker
from rerank.server._grpc_door import GrpcDoor
from rerank.server._limits import InMemoryLimitStore, LimitStore
from rerank.server._listening import StartupError, refuse_taken_port, server_credentials
from rerank.server._logs import AccessLog
from rerank.server._metrics import MeteredUpstream, Metrics
from rerank.server._pipeline import Pipeline
from rerank.server._prometheus import PrometheusRecorder
from rerank.server._redis_client import RedisClient
from rerank.server._redis_store import FailOpenLimitStore, RedisCacheEntries, RedisLimitStore
from rerank.server._resilience import ResilientReranker, RetryBudget, RetryPolicy
from rerank.server._service import SERVICE_NAME, BatchLimits, RerankServicer
from rerank.server._tracing import TRACER_NAME, tracer_provider
from rerank.server._windows import WindowedReranker, WindowPolicy

if TYPE_CHECKING:
    from rerank.server._http_door import HttpPort

logger = logging.getLogger(__name__)


#: Calls in flight beyond the admission limit (ListModels, reflection, calls whose message is
#: still arriving): a backstop, so slow senders cannot hold memory admission has not seen yet.
BACKSTOP_CALLS = 64
#: Health checks in flight at most, counted apart, so a flood of calls never refuses a probe.
HEALTH_CALLS = 64


@dataclass
class RunningServer:
    server: grpc.aio.Server
    port: int
    health: health_aio.HealthServicer
    reranker: Reranker  # below the caller limits, the layer the servicer calls
    grace_period: float
    callers: CallerRegistry
    #: Closes the chain, the embedded mock, the metrics and the tracer, last first.
    closing: contextlib.AsyncExitStack
    tracer_provider: TracerProvider
    #: Connect, gRPC-Web and the Cohere API, when `http_port` is set.
    http: HttpPort | None = None

    async def drain(self, delay: float, cut_short: asyncio.Event | None = None) -> None:
        """NOT_SERVING, then keep serving for `delay` seconds (or until `cut_short`): a balancer
        learns that we leave only at its next health check, and sends calls until then."""
        await self.health.enter_graceful_shutdown()
        if self.http is not None:
            self.http.drain()
        if delay <= 0:
            return
        logger.info("draining: health is NOT_SERVING, calls still served for %.3g s", delay)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for((cut_short or asyncio.Event()).wait(), delay)

    async def stop(self) -> None:
        """NOT_SERVING, close the listener, let calls finish within the grace period, then close
        everything else (`closing`)."""
        await self.health.enter_graceful_shutdown()
        logger.info("stopping: in-flight calls get %.3g s to finish", self.grace_period)
        if self.http is None:
            await self.server.stop(self.grace_period)
        else:  # both ports answer their calls in flight, then close
            await asyncio.gather(self.server.stop(self.grace_period), self.http.stop())
        await self.closing.aclose()


@dataclass(frozen=True)
class RerankerChain:
    """The reranker chain around a gateway (`reranker`, its outermost layer), and the parts of
    it that remember past calls."""

    reranker: Reranker
    cache: CachingReranker
    resilience: ResilientReranker

    async def reset(self) -> None:
        """Forget every past call (the testing kit does, between tests)."""
        await self.cache.clear()
        await self.resilience.reset()


def build_chain(
    settings: Settings,
    gateway: Reranker,
    metrics: Metrics | None = None,
    tracer: trace.Tracer | None = None,
) -> RerankerChain:
    """The chain around `gateway`, outermost first: cache, windows, resilience, metering."""
    metrics = metrics or Metrics.disabled()

    def circuit_changed(state: BreakerState) -> None:
        logger.warning("gateway circuit %s", state.value)
        metrics.breaker_transition(state.value)

    retries = RetryPolicy(
        settings.max_retries, settings.retry_initial_backoff, settings.retry_max_backoff
    )
    breaker = CircuitBreaker(
        settings.breaker_failure_rate,
        settings.breaker_window,
        settings.breaker_cooldown,
        on_change=circuit_changed,
    )
    resilient = ResilientReranker(
        MeteredUpstream(gateway, metrics),
        policy=retries,
        budget=RetryBudget(ratio=settings.retry_budget_ratio),
        breaker=breaker,
        metrics=metrics,
    )
    windows = WindowPolicy(
        settings.window_sizes, settings.default_window_size, settings.window_parallelism
    )
    windowed = WindowedReranker(resilient, windows, metrics, tracer=tracer)
    cache = CachingReranker(
        windowed,
        ttl=settings.cache_ttl,
        max_bytes=settings.cache_max_bytes,
        upstream_timeout=settings.upstream_timeout,
        metrics=metrics,
        entries=redis_cache_entries(settings, metrics),
        tracer=tracer,
    )
    return RerankerChain(cache, cache, resilient)


def redis_cache_entries(settings: Settings, metrics: Metrics) -> RedisCacheEntries | None:
    """The result cache's entries in Redis (None: in memory): `cache_redis_url`'s, else the
    limits' own, which must then never evict (`RedisCacheEntries` checks)."""
    if settings.cache_backend is not CacheBackend.REDIS:
        return None
    url = settings.cache_redis_url or settings.redis_url
    assert url is not None, "Settings require a URL for the Redis cache"
    limits = settings.redis_url
    shares_limits = limits is not None and (url.host, url.port) == (limits.host, limits.port)
    client = RedisClient(
        url,
        timeout=settings.redis_timeout,
        purpose="the result cache",
        when_down="calls go on uncached until it is back",
        on_state=metrics.redis_state("cache"),
    )
    return RedisCacheEntries(client, ttl=settings.cache_ttl, shares_limits=shares_limits)


def limit_store(settings: Settings, metrics: Metrics) -> LimitStore:
    """Where callers' limits and spend are counted: `redis_url`'s Redis, shared by every replica
    (failing open unless told not to), else this process."""
    if settings.redis_url is None:
        return InMemoryLimitStore()
    if settings.limits_fail_closed:
        when_down = "calls of named callers are refused (LIMITS_UNAVAILABLE) until it is back"
    else:
        when_down = "limits are counted in this process until it is back"
    # Our own client, not redis-py's asyncio one: redis-py costs the server over 25 µs more CPU
    # per named-caller call (docs/design/clients.md; python -m bench.redis_cost).
    client = RedisClient(
        settings.redis_url,
        timeout=settings.redis_timeout,
        purpose="limits",
        when_down=when_down,
        on_state=metrics.redis_state("limits"),
    )
    # Twice the longest a call may take: a lease outlives any call, yet a replica that died
    # holding it frees the slot within a minute (by default).
    store = RedisLimitStore(client, lease_seconds=2 * settings.upstream_timeout)
    if settings.limits_fail_closed:
        return store
    return FailOpenLimitStore(store, on_local_decision=metrics.limits_decided_locally())


def build_gateway(settings: Settings, tracer: trace.Tracer | None = None) -> GatewayReranker:
    """The gateway adapter, its credential the token file when there is one, else the key."""
    credential: Credential
    if settings.oidc_token_file is not None:
        try:
            credential = OidcTokenFile(settings.oidc_token_file)
        except TokenFileError as exc:
            raise StartupError(f"RERANK_OIDC_TOKEN_FILE: {exc}") from exc
    else:
        assert settings.api_key is not None, "Settings require a key or a token file"
        credential = StaticCredential(settings.api_key, settings.auth_method)
    return GatewayReranker(
        base_url=settings.gateway_url,
        credential=credential,
        max_connections=settings.max_connections,
        tracer=tracer,
        protocol=settings.protocol,
        team=settings.gateway_team,
    )


async def start_server(
    settings: Settings, reranker: Reranker | None = None, metrics: Metrics | None = None
) -> RunningServer:
    """Start the server; return once listening. `reranker` replaces the chain `settings`
    describe (for failures no gateway can be made to produce); the server closes `metrics`."""
    try:
        callers = CallerRegistry(settings.callers_file, settings.auth_tokens)
    except CallersFileError as exc:
        raise StartupError(str(exc)) from exc
    metrics = metrics or Metrics.disabled()
    address = f"{settings.host}:{settings.port}"
    # What is opened here closes when the start fails, else when the server stops, last first.
    closing = contextlib.AsyncExitStack()
    closing.callback(metrics.close)
    try:
        if settings.port != 0 and not settings.allow_port_overlap:
            refuse_taken_port(settings.host, settings.port)
        provider = tracer_provider(settings)
        # Blocking (the exporter's last batch over HTTP): off the event loop.
        closing.push_async_callback(asyncio.to_thread, provider.shutdown)
        tracer = provider.get_tracer(TRACER_NAME)
        if reranker is None:
            if settings.upstream is Upstream.EMBEDDED_MOCK:
                # On a loopback port, so the real adapter and HTTP client are used; imported
                # here, so a production server never loads the mock or uvicorn. It serves every
                # protocol version under its own base path, as the gateway does.
                from rerank.mock_gateway import LoopbackMockGateway

                embedded_mock = LoopbackMockGateway()
                origin = urlsplit(await embedded_mock.start())
                closing.push_async_callback(embedded_mock.stop)
                protocol = settings.protocol
                settings = dataclasses.replace(
                    settings,
                    upstream=Upstream.GATEWAY,
                    gateway_url=protocol.base_url_at(f"{origin.scheme}://{origin.netloc}"),
                    gateway_protocol=protocol,
                    api_key="embedded-mock",
                    oidc_token_file=None,
                )
            gateway = build_gateway(settings, tracer)
            reranker = build_chain(settings, gateway, metrics, tracer).reranker
        # Outermost, so that every call of a named caller meets its limits first.
        limited = CallerLimitsReranker(reranker, limit_store(settings, metrics), metrics=metrics)
        closing.push_async_callback(limited.aclose)  # and the chain within it
        # An answer echoes the request's documents: sized for the largest an accepted request
        # can produce, so none is refused after the gateway was paid for it.
        sent = max_response_bytes(
            settings.max_message_bytes, settings.max_documents, settings.batch_max_requests
        )
        server = grpc.aio.server(
            options=[
                ("grpc.max_receive_message_length", settings.max_message_bytes),
                ("grpc.max_send_message_length", sent),
                # gRPC's default SO_REUSEPORT would let a second server here start silently and
                # take half the connections (refuse_taken_port explains the rest).
                ("grpc.so_reuseport", 1 if settings.allow_port_overlap else 0),
            ]
        )
        servicer = RerankServicer(
            limited,
            limits=Limits(
                settings.max_documents, settings.max_document_bytes, settings.max_query_bytes
            ),
            admission=Admission(
                settings.max_concurrent_calls, settings.max_inflight_bytes, metrics
            ),
            default_model=settings.default_model,
            upstream_timeout=settings.upstream_timeout,
            batch=BatchLimits(settings.batch_max_requests, settings.batch_parallelism),
            metrics=metrics,
            tracer=tracer,
        )
        authenticating = callers if settings.auth_tokens or settings.callers_file else None
        access_log = AccessLog(settings.access_log_success_sample)
        pipeline = Pipeline(
            tracer, access_log, authenticating, traces_exported=settings.export_traces
        )
        door = GrpcDoor(
            pipeline,
            metrics,
            limit=settings.max_concurrent_calls + BACKSTOP_CALLS,
            health_limit=HEALTH_CALLS,
            auth_health=settings.auth_health,
        )
        door.add_service(server, SERVICE_NAME, servicer.methods())
        health_servicer = health_aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, door.registrar(server))
        reflection_pb2_grpc.add_ServerReflectionServicer_to_server(
            # `reflection.aio` is public (its `__all__`); its stubs mistake it for grpc's.
            reflection.aio.ReflectionServicer(  # type: ignore[attr-defined]
                (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME)
            ),
            door.registrar(server),
        )
        door.answer_unknown_methods(server)
        try:
            credentials = server_credentials(settings)
            if credentials is None:
                port = server.add_insecure_port(address)
            else:
                port = server.add_secure_port(address, credentials)
        except (OSError, RuntimeError) as exc:
            # grpc says only "Failed to bind"; the usual cause is worth naming.
            if isinstance(exc, OSError):
                reason = f"{exc.strerror}: {exc.filename}" if exc.filename else str(exc.strerror)
            else:
                refuse_taken_port(
                    settings.host, settings.port, overlap_failed=settings.allow_port_overlap
                )
                reason = "not an address here"
            raise StartupError(f"cannot serve on {address}: {reason}") from exc
        await server.start()
        http = None
        if settings.http_port is not None:
            # Imported here: without an HTTP port the server never loads uvicorn nor connectrpc.
            from rerank.server._http_door import open_http_port

            try:
                http = await open_http_port(
                    settings,
                    pipeline,
                    servicer.methods(),
                    metrics,
                    limit=settings.max_concurrent_calls + BACKSTOP_CALLS,
                    grpc_port=port,
                )
            except StartupError:
                await server.stop(None)
                raise
        for name in ("", SERVICE_NAME):
            await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    except BaseException:
        await closing.aclose()
        raise
    return RunningServer(
        server,
        port,
        health_servicer,
        reranker,
        settings.grace_period,
        callers,
        closing,
        provider,
        http,
    )


async def serve(
    settings: Settings,
    ready: Callable[[int, int | None], None],
    recorder: PrometheusRecorder | None = None,
) -> None:
    """Run until SIGTERM (drain, then grace) or SIGINT (no balancer to tell: no drain); re-read
    the callers file on SIGHUP. `ready` hears the gRPC port and the HTTP one (None: none), as
    from `run_workers`; with a `recorder`, record into it (the storage `__main__` chose)."""
    metrics = Metrics(recorder)
    return_large_blocks_when_freed()
    running = await start_server(settings, metrics=metrics)
    # What is alive now lives as long as the process: out of the collector's sight, full
    # collections under load stay short (a gen-2 pause: 20 ms → 7.5 ms at 64 calls in flight).
    gc.freeze()
    stop = asyncio.Event()
    interrupted = asyncio.Event()

    def interrupt() -> None:
        interrupted.set()
        stop.set()

    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, interrupt)
    loop.add_signal_handler(signal.SIGHUP, running.callers.reload)
    ready(running.port, running.http.port if running.http else None)
    await stop.wait()
    await running.drain(0 if interrupted.is_set() else settings.drain_delay, interrupted)
    await running.stop()
    # grpc's stop() returns while the tasks it cancelled still unwind: a moment for those; what
    # remains after it is a leak.
    others = {t for t in asyncio.all_tasks() if t is not asyncio.current_task()}
    if others:
        await asyncio.wait(others, timeout=1)
    leftover = [t for t in others if not t.done()]
    logger.info("stopped (%d tasks left)", len(leftover))
    for task in leftover:
        logger.warning("task left after shutdown: %r", task)
