"""The server's settings: built once in `__main__` from flags and environment, then passed down.

Nothing below `__main__` reads the environment; everything it needs arrives in `Settings`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum
from urllib.parse import urlsplit

from rerank.contract import MAX_MESSAGE_BYTES
from rerank.server.windows import DEFAULT_WINDOW_SIZES

DEFAULT_GATEWAY_URL = "https://ai-gateway.vercel.sh/v4/ai"
DEFAULT_MODEL = "cohere/rerank-v3.5"


class GatewayProtocol(Enum):
    """The version of the gateway's reranking protocol spoken upstream.

    `v3` is what `@ai-sdk/gateway` 3.x (`ai` 6) speaks, `v4` what 4.x (`ai` 7) speaks. What
    differs between them is one table, `rerank.server.gateway.PROTOCOL_FACTS`.
    """

    V3 = "v3"
    V4 = "v4"

    @classmethod
    def of_base_url(cls, base_url: str) -> GatewayProtocol:
        """The version a base URL names: v3 when its path ends in `/v3/ai`, else v4 (the
        current one; a proxy with another path says otherwise with `--gateway-protocol`)."""
        path = urlsplit(base_url).path.rstrip("/")
        return cls.V3 if path.endswith("/v3/ai") else cls.V4

    def base_url_at(self, origin: str) -> str:
        """This version's base URL on a gateway at `origin` (`scheme://host:port`), as the
        SDK builds it: `{origin}/v4/ai`."""
        return f"{origin.rstrip('/')}/{self.value}/ai"


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

    gateway_protocol: GatewayProtocol | None = None
    """Protocol version to speak to the gateway (and to the embedded mock), when set
    (`--gateway-protocol`, `RERANK_GATEWAY_PROTOCOL`); None speaks what `gateway_url` names.
    Read `protocol`, not this."""

    gateway_team: str | None = None
    """Team id or slug sent as `x-vercel-ai-gateway-team` on every gateway request, like the
    SDK's `createGateway({teamIdOrSlug})` (`RERANK_GATEWAY_TEAM`); None sends no such header."""

    api_key: str | None = field(default=None, repr=False)
    """Credential for the gateway (`AI_GATEWAY_API_KEY`, else `VERCEL_OIDC_TOKEN`). Never logged."""

    auth_method: str = "api-key"
    """`api-key` or `oidc`: sent as `ai-gateway-auth-method`, after where `api_key` came from."""

    oidc_token_file: str | None = None
    """A file holding a short-lived OIDC token, read again when it changes and before the token
    expires (`RERANK_OIDC_TOKEN_FILE`); used instead of `api_key` when set. Never logged."""

    default_model: str = DEFAULT_MODEL
    """Model used when a request leaves `model` empty (`RERANK_DEFAULT_MODEL`)."""

    upstream_timeout: float = 30.0
    """Seconds one gateway call may take at most; a caller's shorter deadline wins
    (`RERANK_UPSTREAM_TIMEOUT`)."""

    max_connections: int = 100
    """Size of the pooled HTTP connections to the gateway (`RERANK_MAX_CONNECTIONS`)."""

    max_documents: int = 10_000
    """Most documents one request may hold (`RERANK_MAX_DOCUMENTS`); Cohere's hard limit.
    Requests over a model's window are split across several upstream calls."""

    max_document_bytes: int = 64 * 1024
    """Largest single document, in UTF-8 bytes of its text or JSON (`RERANK_MAX_DOCUMENT_BYTES`)."""

    max_query_bytes: int = 32 * 1024
    """Longest query, in UTF-8 bytes (`RERANK_MAX_QUERY_BYTES`)."""

    max_message_bytes: int = MAX_MESSAGE_BYTES
    """Largest gRPC message accepted (`RERANK_MAX_MESSAGE_BYTES`). gRPC's own default of 4 MiB
    is too small for 1,000 documents of 4 KB; 64 MiB takes 10,000 of them."""

    window_sizes: Mapping[str, int] = field(default_factory=lambda: dict(DEFAULT_WINDOW_SIZES))
    """Documents per upstream call, by model slug or provider; larger requests are split
    (`RERANK_WINDOW_SIZES`, e.g. `cohere=1000,voyage/rerank-2.5-lite=500`)."""

    default_window_size: int = 1000
    """Documents per upstream call for models not in `window_sizes` (`RERANK_WINDOW_SIZE`)."""

    window_parallelism: int = 4
    """Windows of one request in flight at once (`RERANK_WINDOW_PARALLELISM`)."""

    batch_parallelism: int = 8
    """Requests of one BatchRerank answered at once, 1 to 64 (`RERANK_BATCH_PARALLELISM`); each
    holds its own admission place while it runs."""

    batch_max_requests: int = 100
    """Most requests one BatchRerank may hold, 1 to 1,000 (`RERANK_BATCH_MAX_REQUESTS`); more is
    INVALID_ARGUMENT for the whole call. The bytes of them all are bounded by
    `max_message_bytes`."""

    cache_ttl: float = 600.0
    """Seconds a cached ranking stays valid (`RERANK_CACHE_TTL`)."""

    cache_max_bytes: int = 64 * 1024 * 1024
    """Memory bound of the result cache; 0 turns it off (`RERANK_CACHE_MAX_BYTES`)."""

    max_concurrent_calls: int = 512
    """Rerank calls in flight at most; more are refused at once with RESOURCE_EXHAUSTED
    (`RERANK_MAX_CONCURRENT_CALLS`)."""

    max_inflight_bytes: int = 256 * 1024 * 1024
    """Bytes of requests in flight at most; more are refused at once with RESOURCE_EXHAUSTED
    (`RERANK_MAX_INFLIGHT_BYTES`). Keeps memory bounded under a flood of large requests."""

    max_retries: int = 2
    """Retries of a retryable gateway failure (429, 5xx, 408, 409, connection errors); the AI
    SDK's default (`RERANK_MAX_RETRIES`)."""

    retry_initial_backoff: float = 0.5
    """Upper bound of the first jittered retry delay, seconds, doubling per retry, when the
    gateway sent no retry-after (`RERANK_RETRY_INITIAL_BACKOFF`)."""

    retry_max_backoff: float = 8.0
    """Upper bound of any jittered retry delay, seconds (`RERANK_RETRY_MAX_BACKOFF`)."""

    retry_budget_ratio: float = 0.2
    """Retries allowed per first attempt, over time (`RERANK_RETRY_BUDGET_RATIO`)."""

    breaker_failure_rate: float = 0.5
    """Share of the last `breaker_window` gateway attempts that must have found it down for the
    circuit to open (`RERANK_BREAKER_FAILURE_RATE`)."""

    breaker_window: int = 100
    """Gateway attempts the circuit breaker judges (`RERANK_BREAKER_WINDOW`)."""

    breaker_cooldown: float = 5.0
    """Seconds the open circuit fails fast before letting a probe through
    (`RERANK_BREAKER_COOLDOWN`)."""

    auth_tokens: frozenset[str] = field(default=frozenset(), repr=False)
    """Bearer tokens callers must present (`authorization: Bearer <token>`); empty turns
    caller authentication off (`RERANK_AUTH_TOKENS`, comma-separated, or
    `RERANK_AUTH_TOKENS_FILE`, one per line). Never logged."""

    auth_health: bool = False
    """Whether health checks need a token too (`--auth-health`, `RERANK_AUTH_HEALTH=1`). Off by
    default so load balancers and orchestrators can probe without a secret."""

    tls_cert_file: str | None = None
    """PEM certificate chain of the server; with `tls_key_file` turns TLS on (`--tls-cert`,
    `RERANK_TLS_CERT`)."""

    tls_key_file: str | None = None
    """PEM private key of the server (`--tls-key`, `RERANK_TLS_KEY`)."""

    tls_client_ca_file: str | None = None
    """PEM CA bundle; when set, callers must present a certificate it signed: mutual TLS
    (`--tls-client-ca`, `RERANK_TLS_CLIENT_CA`)."""

    grace_period: float = 10.0
    """Seconds in-flight calls get to finish after SIGTERM/SIGINT (`RERANK_GRACE_PERIOD`)."""

    workers: int = 1
    """Server processes sharing the port through SO_REUSEPORT (`--workers`, `RERANK_WORKERS`);
    `__main__` defaults it to one per core. Limits and the cache are per process."""

    log_level: str = "INFO"
    """Python logging level (`--log-level`, `RERANK_LOG_LEVEL`)."""

    @property
    def protocol(self) -> GatewayProtocol:
        """The protocol version spoken upstream: `gateway_protocol` when set, else the one
        `gateway_url` names (v3 for a path ending in `/v3/ai`, else v4)."""
        return self.gateway_protocol or GatewayProtocol.of_base_url(self.gateway_url)
