"""A deterministic stand-in for the Vercel AI Gateway's reranking API, as an ASGI app.

It speaks ``POST /v3/ai/reranking-model`` and ``GET /v3/ai/config`` exactly as the AI SDK
expects, plus the gateway's Cohere-compatible ``POST /v1/rerank`` and ``/v2/rerank``. Scores
come from ``score`` (lexical, pure); faults are requested per call through
``providerOptions.mockGateway`` (see ``rerank.mock_gateway._faults``). Serve it with
``python -m rerank.mock_gateway --port 0`` or mount ``create_app()`` in ``httpx.ASGITransport``.
"""

from ._app import ConnectionDropped, MockGateway, create_app
from ._catalogue import RERANKING_MODEL_IDS
from ._embedded import LoopbackMockGateway
from ._faults import DROP_VARIANTS, FAULT_OPTION, MALFORMED_VARIANTS
from ._scoring import score
from ._script import MockScript
from ._settings import MockSettings

__all__ = [
    "DROP_VARIANTS",
    "FAULT_OPTION",
    "MALFORMED_VARIANTS",
    "RERANKING_MODEL_IDS",
    "ConnectionDropped",
    "LoopbackMockGateway",
    "MockGateway",
    "MockScript",
    "MockSettings",
    "create_app",
    "score",
]
