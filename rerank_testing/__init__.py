"""Contract-test kit for services that call the rerank service: a pytest plugin and its parts.

Installed with the `rerank-service` package, the plugin (`rerank.testing.plugin`, entry point
`pytest11: rerank`) gives every test suite these fixtures:

    rerank_mock_gateway   the deterministic mock gateway on a real loopback port, scriptable
    rerank_server         a rerank server wired to it (`.target` is "127.0.0.1:PORT"): the
                          production chain, without retries; nothing cached between tests
    rerank_client         a connected `rerank.client.RerankClient`
    async_rerank_client   a connected `rerank.client.AsyncRerankClient` (with pytest-asyncio)

    def test_search_ranks_paris_first(rerank_client):
        result = rerank_client.rerank("capital of France?", ["Berlin ...", "Paris ..."])
        assert result.ranking[0].original_index == 1

    def test_search_degrades_when_rate_limited(rerank_mock_gateway, rerank_server):
        rerank_mock_gateway.fail_next("rate_limit", retryAfterMs=500)
        ...  # your code, pointed at rerank_server.target, sees RESOURCE_EXHAUSTED once

The servers start once per test session; every test starts with an empty script. The same
servers are usable without pytest: `MockGatewayServer` and `RerankServerThread` are context
managers.

The plugin is registered by every install of the package, so it loads without the servers'
dependencies; the fixtures that start servers, and the names below, need
`rerank-service[testing]`. They are imported on first use, and a missing extra is one line
naming it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from rerank._extras import missing_extra

if TYPE_CHECKING:
    from ._servers import DEFAULT_API_KEY, TESTING_DEFAULTS, MockGatewayServer, RerankServerThread

__all__ = ["DEFAULT_API_KEY", "TESTING_DEFAULTS", "MockGatewayServer", "RerankServerThread"]


def __getattr__(name: str) -> Any:
    # Imported here, not above: `_servers` imports uvicorn, the mock gateway and the server,
    # which a plain install does not have, and pytest imports this package for the plugin.
    if name not in __all__:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    try:
        from . import _servers
    except ModuleNotFoundError as error:
        needed = missing_extra(error, "testing")
        if needed is None:
            raise
        raise ModuleNotFoundError(
            f"rerank.testing.{name} needs {needed}", name=error.name
        ) from error
    return getattr(_servers, name)
