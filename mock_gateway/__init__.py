"""A deterministic stand-in for the Vercel AI Gateway's reranking API, as an ASGI app.

It speaks both versions of the protocol the AI SDK uses, each exactly: v4 (``ai`` 7,
``@ai-sdk/gateway`` 4) under ``/v4/ai`` and v3 (``ai`` 6, gateway 3) under ``/v3/ai``, each with
``POST .../reranking-model`` and ``GET .../config``; what differs between them is one
``ProtocolVersion`` each (``PROTOCOL_V3``, ``PROTOCOL_V4``). Plus the gateway's Cohere-compatible
``POST /v1/rerank`` and ``/v2/rerank``. Scores come from ``score`` (lexical, pure); faults are
requested per call through ``providerOptions.mockGateway`` (see ``rerank.mock_gateway._faults``).
Serve it with ``python -m rerank.mock_gateway --port 0`` or mount ``create_app()`` in
``httpx.ASGITransport``.
"""

from rerank.server._gateway_protocol import TEAM_HEADER

from ._app import ConnectionDropped, MockGateway, create_app
from ._catalogue import RERANKING_MODEL_IDS
from ._embedded import LoopbackMockGateway
from ._faults import DROP_VARIANTS, FAULT_OPTION
from ._malformed import MALFORMED_VARIANTS
from ._scoring import score
from ._script import MockScript
from ._settings import MockSettings
from ._versions import (
    DEFAULT_PROTOCOL,
    PROTOCOL_V3,
    PROTOCOL_V4,
    PROTOCOL_VERSIONS,
    ProtocolVersion,
)

__all__ = [
    "DEFAULT_PROTOCOL",
    "DROP_VARIANTS",
    "FAULT_OPTION",
    "MALFORMED_VARIANTS",
    "PROTOCOL_V3",
    "PROTOCOL_V4",
    "PROTOCOL_VERSIONS",
    "RERANKING_MODEL_IDS",
    "TEAM_HEADER",
    "ConnectionDropped",
    "LoopbackMockGateway",
    "MockGateway",
    "MockScript",
    "MockSettings",
    "ProtocolVersion",
    "create_app",
    "score",
]
