"""The mock gateway behind a real uvicorn, and a rerank server, each on its own thread and loop.

Both bind 127.0.0.1 port 0 and report the port the kernel chose, so parallel runs never
collide. Each runs `asyncio.run` on a daemon thread of its own: the caller's thread stays free
for synchronous clients, and an asyncio test's event loop is never shared with them.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Mapping
from concurrent.futures import Future
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self

import uvicorn

from rerank.mock_gateway import (
    PROTOCOL_V3,
    PROTOCOL_V4,
    MockGateway,
    MockScript,
    MockSettings,
    create_app,
)

if TYPE_CHECKING:
    from rerank.server._app import RerankerChain

__all__ = ["DEFAULT_API_KEY", "TESTING_DEFAULTS", "MockGatewayServer", "RerankServerThread"]

DEFAULT_API_KEY = "rerank-testing"
"""The credential the rerank server sends to the mock gateway (which accepts any)."""

STARTUP_TIMEOUT = 30.0
"""Seconds a server may take to start or stop before the harness gives up."""


class _Announcing(uvicorn.Server):
    """A uvicorn server that tells a waiting thread when start-up is over, either way."""

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self.startup_done = threading.Event()

    async def startup(self, sockets: Any = None) -> None:
        try:
            await super().startup(sockets=sockets)
        finally:
            self.startup_done.set()


class MockGatewayServer:
    """The mock gateway (`mock_gateway`) served by a real uvicorn on a free loopback port.

    Use it as a context manager (or `start()` / `stop()`). It serves both protocol versions
    on one port: `url` is the v4 base URL a gateway client is given (`http://127.0.0.1:PORT/v4/ai`,
    what `ai` 7 / `@ai-sdk/gateway` 4 speak), the same as `v4_url`; `v3_url` is the v3 one
    (`.../v3/ai`, for `ai` 6 / gateway 3). The scripting methods act on this app's `MockScript`
    (calls of either version); see `rerank.mock_gateway._script` for their exact meaning.
    """

    def __init__(self, settings: MockSettings | None = None, *, host: str = "127.0.0.1") -> None:
        self.app: MockGateway = create_app(settings or MockSettings())
        self._host = host
        self._server: _Announcing | None = None
        self._thread: threading.Thread | None = None
        self._address: tuple[str, int] | None = None

    @property
    def url(self) -> str:
        """The v4 base URL, `http://HOST:PORT/v4/ai`: the same as `v4_url` (once started)."""
        return self.v4_url

    @property
    def v4_url(self) -> str:
        """`http://HOST:PORT/v4/ai`, protocol v4 (`@ai-sdk/gateway` 4.x), once started."""
        return PROTOCOL_V4.base_url(*self._running_address())

    @property
    def v3_url(self) -> str:
        """`http://HOST:PORT/v3/ai`, protocol v3 (`@ai-sdk/gateway` 3.x), once started."""
        return PROTOCOL_V3.base_url(*self._running_address())

    def _running_address(self) -> tuple[str, int]:
        if self._address is None:
            raise RuntimeError("the mock gateway is not running: call start() first")
        return self._address

    @property
    def script(self) -> MockScript:
        """The app's script: what the next rerank calls answer."""
        return self.app.script

    def fail_next(self, fault: str, /, *, times: int = 1, **params: Any) -> None:
        """Answer the next `times` rerank calls with `fault`, exactly as a request carrying
        `providerOptions.mockGateway = {"fault": fault, **params}` would be answered.

        Faults: `rate_limit` (`retryAfterMs`, `message`), `error` (`status`, `type`,
        `message`, `param`, `code`, `generationId`), `slow` (`delayMs`), `malformed`
        (`variant`), `drop` (`variant`), `status_only` (`status`, `body`, `contentType`),
        `warning` (`type`, and that type's fields), `not_found` (`message`, `param`; v4 only).

        Raises:
            ValueError: an unknown fault or parameter, at once rather than at the call.
        """
        self.app.script.fail_next(fault, times=times, **params)

    def set_scores(self, scores: Mapping[str, float]) -> None:
        """Give the text documents equal to a key that score; others are scored as usual."""
        self.app.script.set_scores(scores)

    def reset(self) -> None:
        """Forget every scripted fault and fixed score."""
        self.app.script.reset()

    def start(self) -> Self:
        """Start serving; return once the port accepts connections."""
        if self._thread is not None:
            raise RuntimeError("the mock gateway is already running")
        config = uvicorn.Config(
            self.app,
            host=self._host,
            port=0,
            http="h11",  # the mock's `drop` fault is written against h11 (see its README)
            ws="none",
            lifespan="on",
            log_config=None,  # leave the test suite's logging alone
            access_log=False,
            timeout_graceful_shutdown=5,
        )
        server = _Announcing(config)
        thread = threading.Thread(
            target=lambda: asyncio.run(server.serve()), name="rerank-mock-gateway", daemon=True
        )
        thread.start()
        if not server.startup_done.wait(STARTUP_TIMEOUT) or not server.started:
            server.should_exit = True
            thread.join(STARTUP_TIMEOUT)
            raise RuntimeError("the mock gateway did not start (see the uvicorn log)")
        self._server, self._thread = server, thread
        host, port = server.servers[0].sockets[0].getsockname()[:2]
        self._address = (host, port)
        return self

    def stop(self) -> None:
        """Stop serving and wait for the thread to end. Idempotent."""
        server, thread = self._server, self._thread
        self._server = self._thread = None
        self._address = None
        if server is None or thread is None:
            return
        server.should_exit = True
        thread.join(STARTUP_TIMEOUT)
        if thread.is_alive():
            raise RuntimeError("the mock gateway did not stop in time")

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()


#: What the testing kit's server changes from a deployed one's defaults (`Settings`).
TESTING_DEFAULTS: Mapping[str, Any] = {
    # A fault scripted `times=1` reaches the caller once, not absorbed by the server's retries.
    "max_retries": 0,
    # Stop quickly at the end of the session.
    "grace_period": 1.0,
}


class RerankServerThread:
    """A rerank server (`rerank.server._app.start_server`) on a free loopback port, in a thread.

    It forwards to the gateway at `gateway_url` (a `MockGatewayServer.v3_url`, or any gateway)
    with `api_key`, through the chain a deployed server runs (`rerank.server._app.build_chain`:
    the result cache, windows for large requests, the circuit breaker, retries), with the
    deployed defaults but `TESTING_DEFAULTS`: it does not retry gateway failures, so a fault
    scripted for the next call reaches the caller exactly once, and a contract test sees what
    the gateway did, not how the server's resilience hid it. `settings` are any other
    `rerank.server._config.Settings` fields, by name (e.g. `max_retries=2` to test through the
    server's retries); a value outside its range raises `SettingError` here, at once.
    `reset()` forgets what earlier calls left behind.
    """

    def __init__(
        self,
        gateway_url: str,
        *,
        api_key: str = DEFAULT_API_KEY,
        host: str = "127.0.0.1",
        **settings: Any,
    ) -> None:
        # Imported here: a test suite that only uses the mock gateway never loads the server.
        from rerank.server._config import Settings, Upstream

        self._settings = Settings(
            **{
                **TESTING_DEFAULTS,
                **settings,
                "host": host,
                "port": 0,
                "upstream": Upstream.GATEWAY,
                "gateway_url": gateway_url.rstrip("/"),
                "api_key": api_key,
            }
        )
        self._host = host
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._chain: RerankerChain | None = None
        self._port: int | None = None

    @property
    def port(self) -> int:
        """The gRPC port (only once started)."""
        if self._port is None:
            raise RuntimeError("the rerank server is not running: call start() first")
        return self._port

    @property
    def target(self) -> str:
        """The address a client dials, `HOST:PORT`."""
        return f"{self._host}:{self.port}"

    def start(self) -> Self:
        """Start serving; return once the port accepts connections."""
        if self._thread is not None:
            raise RuntimeError("the rerank server is already running")
        ready: Future[int] = Future()
        thread = threading.Thread(
            target=lambda: asyncio.run(self._serve(ready)), name="rerank-server", daemon=True
        )
        thread.start()
        try:
            self._port = ready.result(STARTUP_TIMEOUT)
        except BaseException:
            self._signal_stop()
            thread.join(STARTUP_TIMEOUT)
            raise
        self._thread = thread
        return self

    async def _serve(self, ready: Future[int]) -> None:
        # Imported here: a test suite that only uses the mock gateway never loads grpc.
        from rerank.server._app import build_chain, build_gateway, start_server

        self._loop = asyncio.get_running_loop()
        self._stopping = asyncio.Event()
        # The builder the server itself uses, kept by hand so `reset()` can reach its parts.
        chain = build_chain(self._settings, build_gateway(self._settings))
        try:
            running = await start_server(self._settings, reranker=chain.reranker)
        except BaseException as exc:
            await chain.reranker.aclose()
            ready.set_exception(exc)
            return
        self._chain = chain
        ready.set_result(running.port)
        try:
            await self._stopping.wait()
        finally:
            await running.stop()

    def reset(self) -> None:
        """Forget what earlier calls left behind: cached answers, the circuit breaker's state
        (closed again), the retry budget. Returns once done; the plugin calls it around every
        test."""
        loop, chain = self._loop, self._chain
        if loop is None or chain is None or self._thread is None:
            raise RuntimeError("the rerank server is not running: call start() first")
        # On the server's own loop: the cache and the breaker belong to it.
        asyncio.run_coroutine_threadsafe(chain.reset(), loop).result(STARTUP_TIMEOUT)

    def _signal_stop(self) -> None:
        loop, stopping = self._loop, self._stopping
        if loop is not None and stopping is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop ended in between
                loop.call_soon_threadsafe(stopping.set)

    def stop(self) -> None:
        """Stop gracefully (calls in flight get the grace period, a second by default) and wait
        for the thread. Idempotent."""
        thread, self._thread, self._port, self._chain = self._thread, None, None, None
        if thread is None:
            return
        self._signal_stop()
        thread.join(STARTUP_TIMEOUT)
        if thread.is_alive():
            raise RuntimeError("the rerank server did not stop in time")

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()
