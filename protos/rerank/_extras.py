"""What each optional part of the package needs, and the one line when it is not installed.

A plain `pip install rerank-service` holds the client, the CLI and the contract. The server
and the mock gateway come with `rerank-service[server]`, the pytest plugin's servers with
`rerank-service[testing]`; the console scripts `rerank-server` and `rerank-mock-gateway`
start here, so that a missing extra is one line naming it rather than a traceback.

Only a missing module of the extra is turned into that line: any other `ModuleNotFoundError`
(our own import gone wrong) keeps its traceback. `EXTRA_MODULES` names the top-level modules the
extras' distributions provide, which `[project.optional-dependencies]` in `pyproject.toml` lists
by distribution name (tests/packaging/test_extras.py holds the two together).
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping
from typing import Final

_SERVER_MODULES: Final = frozenset(
    {
        "aiohttp",
        "connectrpc",
        "grpc_health",
        "grpc_reflection",
        "hiredis",
        "httptools",
        "msgspec",
        "opentelemetry",
        "orjson",
        "prometheus_client",
        "protobuf",
        "pydantic",
        "pyqwest",
        "uvicorn",
        "uvloop",
    }
)

EXTRA_MODULES: Final[Mapping[str, frozenset[str]]] = {
    "server": _SERVER_MODULES,
    # The kit runs the mock gateway and the server in the test process: the same modules.
    "testing": _SERVER_MODULES,
}
"""Extra → the top-level modules its distributions provide (beyond the base install)."""


def missing_extra(error: ModuleNotFoundError, extra: str) -> str | None:
    """What to install, with `error`'s own words, when `error` is one of `extra`'s modules
    missing: "rerank-service[server] (pip install 'rerank-service[server]'): No module named
    'aiohttp'". None when it is any other module: that error must be raised as it is."""
    top_level = (error.name or "").partition(".")[0]
    if top_level not in EXTRA_MODULES[extra]:
        return None
    return f"rerank-service[{extra}] (pip install 'rerank-service[{extra}]'): {error}"


def launch(prog: str, extra: str, module: str) -> int:
    """Import `module` and run its `main()`; when `extra` is missing, say so in one line on
    stderr and return 2 (the status of a usage error)."""
    try:
        main: Callable[[], int] = importlib.import_module(module).main
    except ModuleNotFoundError as error:
        needed = missing_extra(error, extra)
        if needed is None:
            raise
        print(f"{prog}: error: this command needs {needed}", file=sys.stderr)
        return 2
    return main()


def rerank_server() -> int:
    """The `rerank-server` console script."""
    return launch("rerank-server", "server", "rerank.server.__main__")


def rerank_mock_gateway() -> int:
    """The `rerank-mock-gateway` console script."""
    return launch("rerank-mock-gateway", "server", "rerank.mock_gateway.__main__")
