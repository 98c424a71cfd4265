"""Wiring: the reranker chain, the grpc.aio server with the call pipeline, health, reflection,
the port it may take, and shutdown. The only module that knows every part; the embedded mock
is imported only on the path that uses it."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gc
import logging
import signal
from collections.abc import Callable
from dataclasses import dataclass, field
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
from rerank.server._callers import CallerRegistry, CallersFileError
from rerank.server._config import CacheBackend, Settings, Upstream
from rerank.server._credentials import (
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
    from rerank.mock_gateway import LoopbackMockGateway

logger = logging.getLogger(__name__)


#: Calls in flight beyond the admission limit that the call limit still lets in (ListModels,
#: reflection, and calls whose message is still arriving): a hard backstop, so a flood of
#: slow senders cannot hold memory without bound while admission has not seen them yet.
BACKSTOP_CALLS = 64
#: Health checks in flight at most. Counted apart from every other call, so a flood of calls
#: never refuses a balancer's probe; bounded, so a flood of Watch streams cannot grow forever.
HEALTH_CALLS = 64


@dataclass
class RunningServer:
    """A started server and what must be closed with it."""

    server: grpc.aio.Server
    port: int
    health: health_aio.HealthServicer
    #: The chain the servicer calls, below the caller-limits layer.
    reranker: Reranker
    grace_period: float
    #: The caller-limits layer around `reranker`, with the store it counts in.
    caller_limits: CallerLimitsReranker
    #: The named callers in force; `reload()` re-reads the callers file (SIGHUP).
    callers: CallerRegistry
    embedded_mock: LoopbackMockGateway | None = None
    metrics: Metrics = field(default_factory=Metrics.disabled)
    tracer_provider: TracerProvider | None = None

    async def drain(self, delay: float, cut_short: asyncio.Event | None = None) -> None:
        """NOT_SERVING, then keep serving for `delay` seconds (or until `cut_short` is set).

        A balancer only learns that we are leaving at its next health check: until then it
        still sends calls, and a listener closed in the same instant would refuse them.
        """
        await self.health.enter_graceful_shutdown()
        if delay <= 0:
            return
        logger.info("draining: health is NOT_SERVING, calls still served for %.3g s", delay)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for((cut_short or asyncio.Event()).wait(), delay)

    async def stop(self) -> None:
        """Graceful stop: NOT_SERVING (when `drain` has not already said so), close the
        listener and let in-flight calls finish within the grace period, then close the HTTP
        pool (and the embedded mock gateway, when there is one), then export the spans still
        buffered."""
        await self.health.enter_graceful_shutdown()
        logger.info("stopping: in-flight calls get %.3g s to finish", self.grace_period)
        await self.server.stop(self.grace_period)
        await self.caller_limits.aclose()  # and the chain within it
        if self.embedded_mock is not None:
            await self.embedded_mock.stop()
        self.metrics.close()
        if self.tracer_provider is not None:
            # Blocking (the exporter's last batch over HTTP): off the event loop.
            await asyncio.to_thread(self.tracer_provider.shutdown)


@dataclass(frozen=True)
class RerankerChain:
    """The reranker chain around a gateway, and the parts of it that remember past calls."""

    reranker: Reranker
    """The outermost layer: what the servicer calls."""
    cache: CachingReranker
    resilience: ResilientReranker

    async def reset(self) -> None:
        """Forget every past call: cached answers, the circuit's state, the retry budget (the
        testing kit does this between tests, so nothing one test does reaches the next)."""
        await self.cache.clear()
        await self.resilience.reset()


def build_chain(
    settings: Settings,
    gateway: Reranker,
    metrics: Metrics | None = None,
    tracer: trace.Tracer | None = None,
) -> RerankerChain:
    """The whole chain around `gateway`, outermost first: the result cache, windows for large
    requests, retries with a budget and a circuit breaker, and the metrics of every call that
    reaches the gateway."""
    metrics = metrics or Metrics.disabled()

    def circuit_changed(state: BreakerState) -> None:
        logger.warning("gateway circuit %s", state.value)
        metrics.breaker_transition(state.value)

    resilient = ResilientReranker(
        MeteredUpstream(gateway, metrics),
        policy=RetryPolicy(
            max_retries=settings.max_retries,
            initial_backoff=settings.retry_initial_backoff,
            max_backoff=settings.retry_max_backoff,
        ),
        budget=RetryBudget(ratio=settings.retry_budget_ratio),
        breaker=CircuitBreaker(
            failure_rate=settings.breaker_failure_rate,
            window=settings.breaker_window,
            cooldown=settings.breaker_cooldown,
            on_change=circuit_changed,
        ),
        metrics=metrics,
    )
    windowed = WindowedReranker(
        resilient,
        WindowPolicy(
            sizes=settings.window_sizes,
            default_size=settings.default_window_size,
            parallelism=settings.window_parallelism,
        ),
        metrics,
        tracer=tracer,
    )
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
    """The result cache's entries in Redis with `RERANK_CACHE_BACKEND=redis` (None: in
    memory): in `cache_redis_url`'s Redis, else in the limits' own, which must then never
    evict (`RedisCacheEntries` checks)."""
    if settings.cache_backend is not CacheBackend.REDIS:
        return None
    url = settings.cache_redis_url or settings.redis_url
    assert url is not None, "__main__ requires a URL for the Redis cache"
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
    """Where callers' limits and spend are counted: in `redis_url`'s Redis, shared by every
    replica (failing open, unless told to fail closed), else in this process (so per worker
    and per replica)."""
    if settings.redis_url is None:
        return InMemoryLimitStore()
    if settings.limits_fail_closed:
        when_down = "calls of named callers are refused (LIMITS_UNAVAILABLE) until it is back"
    else:
        when_down = "limits are counted in this process until it is back"
    # Our own client, not redis-py's asyncio client: redis-py costs the server more CPU per
    # named-caller call than the 25 µs that would let it replace ours (README, "Which Redis
    # client"; python -m bench.redis_cost).
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
    """The gateway adapter for `settings.gateway_url`, over one pooled HTTP session; its
    credential the token file when there is one (read again as it changes), else the key."""
    credential: Credential
    if settings.oidc_token_file is not None:
        try:
            credential = OidcTokenFile(settings.oidc_token_file)
        except TokenFileError as exc:
            raise StartupError(f"RERANK_OIDC_TOKEN_FILE: {exc}") from exc
    elif settings.api_key is None:
        raise ValueError("a gateway upstream needs an API key or a token file")
    else:
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
    """Build and start the server on `settings.host:settings.port`; return once listening.

    `reranker` replaces the one `settings` describe (tests use it for failures no gateway
    can be made to produce). `metrics` records what happens (nothing by default); the running
    server closes it when it stops.
    """
    try:
        callers = CallerRegistry(settings.callers_file, settings.auth_tokens)
    except CallersFileError as exc:
        raise StartupError(str(exc)) from exc
    metrics = metrics or Metrics.disabled()
    address = f"{settings.host}:{settings.port}"
    if settings.port != 0 and not settings.allow_port_overlap:
        try:
            refuse_taken_port(settings.host, settings.port)
        except StartupError:
            metrics.close()
            raise
    # Made here, per server (so per worker process, after the fork), never at import.
    provider = tracer_provider(settings)
    tracer = provider.get_tracer(TRACER_NAME)
    embedded_mock = None
    if reranker is None:
        if settings.upstream is Upstream.EMBEDDED_MOCK:
            # Composition root: only here does the server know the mock exists. It serves on
            # a loopback port in this process, so the real adapter and HTTP client are used.
            # Imported here, not at the top: a production server never loads the mock or
            # uvicorn.
            from rerank.mock_gateway import LoopbackMockGateway

            embedded_mock = LoopbackMockGateway()
            # The mock serves every protocol version on one port, each under its own base
            # path, as the gateway does: speaking the configured one is choosing its path.
            origin = urlsplit(await embedded_mock.start())
            protocol = settings.protocol
            settings = dataclasses.replace(
                settings,
                upstream=Upstream.GATEWAY,
                gateway_url=protocol.base_url_at(f"{origin.scheme}://{origin.netloc}"),
                gateway_protocol=protocol,
                api_key="embedded-mock",
                oidc_token_file=None,
            )
        reranker = build_chain(settings, build_gateway(settings, tracer), metrics, tracer).reranker
    # Outermost, so that every call of a named caller meets its limits first.
    limited = CallerLimitsReranker(reranker, limit_store(settings, metrics), metrics=metrics)
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", settings.max_message_bytes),
            # An answer echoes the request's documents: sized for the largest an accepted
            # request (or batch of them) can produce, so none is refused after the gateway
            # was paid for it.
            (
                "grpc.max_send_message_length",
                max_response_bytes(
                    settings.max_message_bytes, settings.max_documents, settings.batch_max_requests
                ),
            ),
            # gRPC sets SO_REUSEPORT by default, and with it a second server on this port
            # would start silently and take half the connections. Without it the kernel
            # refuses every later bind here (refuse_taken_port explains the rest).
            ("grpc.so_reuseport", 1 if settings.allow_port_overlap else 0),
        ],
    )
    servicer = RerankServicer(
        limited,
        limits=Limits(
            max_documents=settings.max_documents,
            max_document_bytes=settings.max_document_bytes,
            max_query_bytes=settings.max_query_bytes,
        ),
        admission=Admission(
            settings.max_concurrent_calls, settings.max_inflight_bytes, metrics=metrics
        ),
        default_model=settings.default_model,
        upstream_timeout=settings.upstream_timeout,
        batch=BatchLimits(
            max_requests=settings.batch_max_requests, parallelism=settings.batch_parallelism
        ),
        metrics=metrics,
        tracer=tracer,
    )
    authenticating = callers if settings.auth_tokens or settings.callers_file else None
    door = GrpcDoor(
        Pipeline(tracer, AccessLog(settings.access_log_success_sample), authenticating),
        metrics,
        limit=settings.max_concurrent_calls + BACKSTOP_CALLS,
        health_limit=HEALTH_CALLS,
        auth_health=settings.auth_health,
    )
    door.add_service(server, SERVICE_NAME, servicer.methods())
    health_servicer = health_aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, door.registrar(server))
    reflection_pb2_grpc.add_ServerReflectionServicer_to_server(
        # `reflection.aio` is public (its `__all__`); its stubs take `aio` for grpc's.
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
        await limited.aclose()
        if embedded_mock is not None:
            await embedded_mock.stop()
        metrics.close()
        provider.shutdown()
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
    for name in ("", SERVICE_NAME):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    return RunningServer(
        server,
        port,
        health_servicer,
        reranker,
        settings.grace_period,
        limited,
        callers,
        embedded_mock,
        metrics,
        provider,
    )


async def serve(
    settings: Settings,
    ready: Callable[[RunningServer], None],
    recorder: PrometheusRecorder | None = None,
) -> None:
    """Run until SIGTERM (drain, then grace) or SIGINT (a person at a terminal, no balancer
    to tell: no drain), then stop; re-read the callers file on SIGHUP. With a `recorder`,
    record into it (prometheus-client's storage, which the server's entry chose)."""
    metrics = Metrics(recorder)
    return_large_blocks_when_freed()
    running = await start_server(settings, metrics=metrics)
    # Everything alive now (modules, descriptors, the wiring) lives as long as the process:
    # moved out of the collector's sight, full collections under load stay short (a gen-2
    # pause measured 20 ms before, 7.5 ms after, at 64 calls in flight).
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
    ready(running)
    await stop.wait()
    await running.drain(0 if interrupted.is_set() else settings.drain_delay, interrupted)
    await running.stop()
    # Every call's task should be gone now. grpc's stop() returns while the tasks it cancelled
    # are still unwinding, so give those a moment; whatever remains after it is a leak.
    others = {t for t in asyncio.all_tasks() if t is not asyncio.current_task()}
    if others:
        await asyncio.wait(others, timeout=1)
    leftover = [t for t in others if not t.done()]
    logger.info("stopped (%d tasks left)", len(leftover))
    for task in leftover:
        logger.warning("task left after shutdown: %r", task)
