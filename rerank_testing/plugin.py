"""The pytest plugin (entry point `pytest11: rerank`): contract-test fixtures for rerank.v1.

Fixtures (all but the session-wide servers are per test):

``rerank_mock_gateway``
    A `MockGatewayServer`: the deterministic mock gateway behind a real uvicorn on
    127.0.0.1:<free port>, serving both protocol versions. `.url` is the v4 base URL
    (`http://127.0.0.1:PORT/v4/ai`, for `ai` 7 / `@ai-sdk/gateway` 4), equal to `.v4_url`;
    `.v3_url` is the v3 one (`.../v3/ai`, for `ai` 6 / gateway 3).
    `.fail_next(fault, times=1, **params)`, `.set_scores({text: score})` and `.reset()` script
    it for the current test.
``rerank_server``
    A `RerankServerThread` forwarding to that mock through the production chain (cache,
    windows, circuit breaker; no retries by default); `.target` is `127.0.0.1:PORT`.
``rerank_server_settings``
    Session-wide: a mapping of `rerank.server._config.Settings` fields the server starts with,
    over `TESTING_DEFAULTS` (empty by default). Override it in a `conftest.py`, e.g.
    ``return {"max_retries": 2}`` to test through the server's retries.
``rerank_client``
    A `rerank.client.RerankClient` connected to `rerank_server`, closed after the test.
``async_rerank_client``
    A `rerank.client.AsyncRerankClient`, for asyncio tests; only when pytest-asyncio is installed.

The mock gateway and the server start once per session (per xdist worker) and stop at its
end. The script is emptied before and after every test that uses any of these fixtures, and
the server forgets its cached answers, its circuit breaker's state and its retry budget
(`RerankServerThread.reset`), so nothing one test does reaches another, even when it fails.

Every install of the package registers this plugin, a plain one too: it loads without the
servers' dependencies, so a suite that uses none of these fixtures runs as before. The servers
are imported when a test first asks for them; without `rerank-service[testing]` that test fails
with one line naming it.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator, Mapping
from typing import TYPE_CHECKING, Any

import pytest

from rerank._extras import missing_extra

if TYPE_CHECKING:
    from rerank.client import AsyncRerankClient, RerankClient

    from ._servers import MockGatewayServer, RerankServerThread


@contextlib.contextmanager
def _the_testing_extra() -> Iterator[None]:
    """Around the import of `_servers`, which every install registers this plugin without: a
    missing `rerank-service[testing]` fails the test that asked for a server in one line (the
    session's other tests still run)."""
    try:
        yield
    except ModuleNotFoundError as error:
        needed = missing_extra(error, "testing")
        if needed is None:
            raise
        # `pytest.fail`'s exception, without the ImportError as its context (pytest would print
        # that too, over the one line).
        message = f"the rerank.testing fixtures need {needed}"
        raise pytest.fail.Exception(message, pytrace=False) from None


@pytest.fixture(scope="session")
def _rerank_mock_gateway_session() -> Iterator[MockGatewayServer]:
    with _the_testing_extra():
        from ._servers import MockGatewayServer
    with MockGatewayServer() as gateway:
        yield gateway


@pytest.fixture(scope="session")
def rerank_server_settings() -> Mapping[str, Any]:
    """`Settings` fields for the session's rerank server, over `TESTING_DEFAULTS`; override
    this fixture (session-scoped) in a conftest.py to change them."""
    return {}


@pytest.fixture(scope="session")
def _rerank_server_session(
    _rerank_mock_gateway_session: MockGatewayServer, rerank_server_settings: Mapping[str, Any]
) -> Iterator[RerankServerThread]:
    with _the_testing_extra():
        from ._servers import RerankServerThread
    # The rerank server's gateway adapter speaks v3 (spec version header "3").
    with RerankServerThread(
        _rerank_mock_gateway_session.v3_url, **rerank_server_settings
    ) as server:
        yield server


@pytest.fixture
def rerank_mock_gateway(
    _rerank_mock_gateway_session: MockGatewayServer,
) -> Iterator[MockGatewayServer]:
    """The session's mock gateway, with an empty script for this test."""
    gateway = _rerank_mock_gateway_session
    gateway.reset()
    try:
        yield gateway
    finally:
        gateway.reset()


@pytest.fixture
def rerank_server(
    _rerank_server_session: RerankServerThread, rerank_mock_gateway: MockGatewayServer
) -> Iterator[RerankServerThread]:
    """The session's rerank server, in front of `rerank_mock_gateway` (script emptied), with
    nothing cached and its circuit closed."""
    server = _rerank_server_session
    server.reset()
    try:
        yield server
    finally:
        server.reset()


@pytest.fixture
def rerank_client(rerank_server: RerankServerThread) -> Iterator[RerankClient]:
    """A `rerank.client.RerankClient` connected to `rerank_server`."""
    from rerank.client import RerankClient

    with RerankClient(rerank_server.target, timeout=30) as client:
        yield client


try:
    import pytest_asyncio
except ImportError:  # pragma: no cover - pytest-asyncio is optional for consumers
    pass
else:

    @pytest_asyncio.fixture(loop_scope="function")
    async def async_rerank_client(
        rerank_server: RerankServerThread,
    ) -> AsyncIterator[AsyncRerankClient]:
        """A `rerank.client.AsyncRerankClient` connected to `rerank_server`, on the test's loop."""
        from rerank.client import AsyncRerankClient

        async with AsyncRerankClient(rerank_server.target, timeout=30) as client:
            yield client
