"""The server's settings: built once in `__main__` from flags and environment, then passed down.

Nothing below `__main__` reads the environment; everything it needs arrives in `Settings`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

DEFAULT_GATEWAY_URL = "https://ai-gateway.vercel.sh/v3/ai"
DEFAULT_MODEL = "cohere/rerank-v3.5"


class Upstream(Enum):
    """Where reranking calls go."""

    #: The bundled mock gateway, in-process, through the real adapter (no network).
    EMBEDDED_MOCK = "embedded-mock"
    #: An AI Gateway (the real one, or a mock gateway process) at `Settings.gateway_url`.
    GATEWAY = "gateway"


@dataclass(frozen=True)
class Settings:
    """Everything the server can be told. Defaults are the documented ones."""

    host: str = "127.0.0.1"
    """Interface the gRPC server listens on (`--host`, `RERANK_HOST`)."""

    port: int = 50051
    """gRPC port (`--port`, `RERANK_PORT`); 0 picks a free one and logs it."""

    upstream: Upstream = Upstream.EMBEDDED_MOCK
    """Where calls go; derived in `__main__` from the key and the gateway URL."""

    gateway_url: str = DEFAULT_GATEWAY_URL
    """Base URL of the gateway, no trailing slash (`--gateway-url`, `RERANK_GATEWAY_URL`)."""

    api_key: str | None = field(default=None, repr=False)
    """Credential for the gateway (`AI_GATEWAY_API_KEY`, else `VERCEL_OIDC_TOKEN`). Never logged."""

    auth_method: str = "api-key"
    """`api-key` or `oidc`: sent as `ai-gateway-auth-method`, after where `api_key` came from."""

    default_model: str = DEFAULT_MODEL
    """Model used when a request leaves `model` empty (`RERANK_DEFAULT_MODEL`)."""

    upstream_timeout: float = 30.0
    """Seconds one gateway call may take at most; a caller's shorter deadline wins
    (`RERANK_UPSTREAM_TIMEOUT`)."""

    max_connections: int = 100
    """Size of the pooled HTTP connections to the gateway (`RERANK_MAX_CONNECTIONS`)."""

    max_documents: int = 1000
    """Most documents one request may hold (`RERANK_MAX_DOCUMENTS`); Cohere's recommended limit."""

    max_document_bytes: int = 64 * 1024
    """Largest single document, in UTF-8 bytes of its text or JSON (`RERANK_MAX_DOCUMENT_BYTES`)."""

    max_query_bytes: int = 32 * 1024
    """Longest query, in UTF-8 bytes (`RERANK_MAX_QUERY_BYTES`)."""

    max_message_bytes: int = 16 * 1024 * 1024
    """Largest gRPC message accepted (`RERANK_MAX_MESSAGE_BYTES`). gRPC's own default of 4 MiB
    is too small for 1,000 documents of 4 KB."""

    grace_period: float = 10.0
    """Seconds in-flight calls get to finish after SIGTERM/SIGINT (`RERANK_GRACE_PERIOD`)."""

    log_level: str = "INFO"
    """Python logging level (`--log-level`, `RERANK_LOG_LEVEL`)."""
