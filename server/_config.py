"""The server's settings: `Settings`, built once in `__main__` from flags and environment. Each
field's declaration makes its flag, its check, its one-line error and its row of the settings
table of docs/configuration.md, which the docs build makes from it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from enum import Enum
from types import NoneType, UnionType
from typing import Annotated, Any, Literal, Union, get_args, get_origin
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    BeforeValidator,
    ConfigDict,
    Field,
    ModelWrapValidatorHandler,
    ValidationError,
    model_validator,
)
from pydantic.dataclasses import dataclass as checked_dataclass
from pydantic.dataclasses import is_pydantic_dataclass
from pydantic.fields import FieldInfo

from rerank.contract import MAX_BATCH_REQUESTS, MAX_DOCUMENTS, MAX_MESSAGE_BYTES
from rerank.server._domain import is_model_slug
from rerank.server._redis_client import RedisUrl
from rerank.server._windows import DEFAULT_WINDOW_SIZES

DEFAULT_GATEWAY_URL = "https://ai-gateway.vercel.sh/v4/ai"
GRPC_MAX_MESSAGE_BYTES = 2**31 - 1  # a signed 32-bit length


class GatewayProtocol(Enum):
    """The gateway's reranking protocol: v3 as `ai` 6 speaks it, v4 as `ai` 7 does."""

    V3 = "v3"
    V4 = "v4"

    def base_url_at(self, origin: str) -> str:
        """This version's base URL on a gateway at `origin` (`scheme://host:port`)."""
        return f"{origin.rstrip('/')}/{self.value}/ai"


class CacheBackend(Enum):
    MEMORY = "memory"
    REDIS = "redis"


class Upstream(Enum):
    """The bundled mock gateway in-process, or a gateway's URL."""

    EMBEDDED_MOCK = "embedded-mock"
    GATEWAY = "gateway"


class SettingError(Exception):
    """One line naming a bad setting as a user sets it. Not a ValueError, which pydantic
    would wrap."""


@dataclass(frozen=True)
class Names:
    """How a user sets a field: its flag (which wins) and its variable (by default `RERANK_` and
    the name in capitals; None: none), or the `label` of a value read otherwise; no names at
    all: derived by `__main__`. `shown_default`: the table's default, when not the field's."""

    flag: str | None = None
    env: str | None = ""
    label: str | None = None
    shown_default: str | None = None

    def __str__(self) -> str:
        return self.label or " / ".join(name for name in (self.flag, self.env) if name)


@dataclass(frozen=True)
class Says:
    """A type's values in words, where its constraints do not say them."""

    words: str


def _must(test: Callable[[str], bool]) -> AfterValidator:
    def check(text: str) -> str:
        if not test(text):
            raise ValueError(text)
        return text

    return AfterValidator(check)


def _window_sizes(value: object) -> object:
    """`model-or-provider=size` pairs, comma-separated, over the defaults."""
    if not isinstance(value, str):
        return value
    pairs: dict[str, object] = dict(DEFAULT_WINDOW_SIZES)
    for entry in filter(None, (e.strip() for e in value.split(","))):
        name, equals, size = entry.partition("=")
        if not equals or not name.strip():
            raise ValueError(entry)
        pairs[name.strip()] = size.strip()
    return pairs


def _comma_set(value: object) -> object:
    """Comma-separated text as a set of its non-empty entries."""
    if not isinstance(value, str):
        return value
    return frozenset(filter(None, (entry.strip() for entry in value.split(","))))


def _n(low: float | None = None, high: float | None = None, *, above: float | None = None) -> Any:
    return Field(ge=low, gt=above, le=high)


def is_http_url(text: str) -> bool:
    return urlsplit(text).scheme in ("http", "https") and bool(urlsplit(text).hostname)


Host = Annotated[str, Says("a host name or address"), _must(lambda t: t.split() == [t])]
Url = Annotated[str, Says("an http:// or https:// URL"), _must(is_http_url)]
Visible = Annotated[str, Says("visible ASCII without spaces"), Field(pattern="^[!-~]+$")]
Team = Annotated[Visible, Says("a team id or slug: visible ASCII without spaces")]
Path = Annotated[str, Says("a file path"), Field(pattern="^[^\\x00]+$")]
Slug = Annotated[str, Says("a model slug 'provider/model'"), _must(is_model_slug)]
Redis = Annotated[
    RedisUrl,
    BeforeValidator(lambda v: RedisUrl.parse(v.strip()) if isinstance(v, str) else v),
    Says(
        "a redis://[[user]:password@]host[:port][/db] URL, or rediss://… for TLS "
        "(?ssl_ca_certs=FILE for a private CA)"
    ),
]
Port = Annotated[int, _n(0, 65535)]
Bytes = Annotated[int, _n(1, GRPC_MAX_MESSAGE_BYTES)]
Windows = Annotated[
    Mapping[str, Annotated[int, _n(1, 10_000)]],
    BeforeValidator(_window_sizes),
    Says("model-or-provider=size pairs, each an integer in [1, 10000]"),
]
Tokens = Annotated[frozenset[Visible], Says("tokens, each visible ASCII without spaces")]
Origins = Annotated[
    frozenset[Annotated[str, Field(pattern="^(\\*|https?://[!-~]+)$")]],
    BeforeValidator(_comma_set),
    Says("origins such as https://app.example, comma-separated, or *"),
]
LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]
DERIVED = Names(env=None)


# A pydantic dataclass rather than a BaseModel: `dataclasses.replace` makes a changed copy,
# checked whole again, as the workers, the embedded mock and the tests do.
@checked_dataclass(
    frozen=True,
    config=ConfigDict(
        extra="forbid",
        allow_inf_nan=False,
        arbitrary_types_allowed=True,  # RedisUrl
        use_attribute_docstrings=True,  # each field's docstring is its one-line doc
    ),
)
class Settings:
    """Everything the server can be told; the defaults are the documented ones."""

    host: Annotated[Host, Names("--host")] = "127.0.0.1"
    """listen address"""
    port: Annotated[Port, Names("--port")] = 50051
    """port (0 = any free one, printed)"""
    metrics_port: Annotated[Port | None, Names("--metrics-port", shown_default="no metrics")] = None
    """Prometheus `GET /metrics` on the listen address (0 = any free one, printed)"""
    http_port: Annotated[Port | None, Names("--http-port", shown_default="no HTTP")] = None
    """HTTP port: Connect, gRPC-Web, the Cohere API, the AI Gateway protocol (0 = any free one)"""
    http_header_timeout: Annotated[float, _n(above=0, high=600)] = 10.0
    """HTTP: seconds for a request's headers, a stalled body's next bytes, an idle connection"""
    http_cors_origins: Annotated[Origins, Names(shown_default="none")] = frozenset()
    """HTTP: origins browsers may call from, comma-separated (`*`: any)"""
    upstream: Annotated[Upstream, DERIVED] = Upstream.EMBEDDED_MOCK
    """where calls go, from `--mock`, the credential and the gateway URL"""
    api_key: Annotated[
        Visible | None, Names(env=None, label="AI_GATEWAY_API_KEY / VERCEL_OIDC_TOKEN")
    ] = Field(default=None, repr=False)
    """gateway credential: a key, else a one-shot OIDC token; none: the bundled mock"""
    auth_method: Annotated[Literal["api-key", "oidc"], DERIVED] = "api-key"
    """sent as `ai-gateway-auth-method`, after where the credential came from"""
    oidc_token_file: Annotated[Path | None, Names(env=None, label="RERANK_OIDC_TOKEN_FILE")] = None
    """gateway OIDC token from a file, re-read as it changes; must hold a token at start"""
    gateway_url: Annotated[Url, Names("--gateway-url")] = DEFAULT_GATEWAY_URL
    """gateway base URL (needs a credential)"""
    gateway_protocol: Annotated[
        GatewayProtocol | None, Names("--gateway-protocol", shown_default="the URL's")
    ] = None
    """gateway protocol version: unset, v3 for a base URL ending in `/v3/ai`, else v4"""
    gateway_team: Team | None = None
    """gateway team (id or slug), `x-vercel-ai-gateway-team` unless a caller names its own"""
    default_model: Annotated[Slug, Names("--default-model")] = "cohere/rerank-v3.5"
    """model for an empty `model`"""
    upstream_timeout: Annotated[float, _n(above=0, high=600)] = 30.0
    """upstream timeout, seconds (a caller's nearer deadline wins)"""
    max_connections: Annotated[int, _n(1, 10_000)] = 100
    """pooled HTTP connections to the gateway"""
    max_documents: Annotated[int, _n(1, 100_000)] = MAX_DOCUMENTS
    """most documents per request"""
    max_document_bytes: Bytes = 64 * 1024
    """largest document (bytes, encoded)"""
    max_query_bytes: Bytes = 32 * 1024
    """longest query (UTF-8 bytes)"""
    max_message_bytes: Annotated[int, _n(1024, GRPC_MAX_MESSAGE_BYTES)] = MAX_MESSAGE_BYTES
    """largest gRPC message received (bytes); the send limit follows from it"""
    window_sizes: Annotated[Windows, Names(shown_default="cohere=1000,voyage=1000")] = Field(
        default_factory=lambda: dict(DEFAULT_WINDOW_SIZES)
    )
    """documents per upstream call, by model or provider, over the defaults"""
    default_window_size: Annotated[int, _n(1, 10_000), Names(env="RERANK_WINDOW_SIZE")] = 1000
    """documents per upstream call for the other models"""
    window_parallelism: Annotated[int, _n(1, 64)] = 4
    """windows of one request in flight at once"""
    batch_parallelism: Annotated[int, _n(1, 64)] = 8
    """requests of one `BatchRerank` answered at once (each holds its own call place)"""
    batch_max_requests: Annotated[int, _n(1, 1000)] = MAX_BATCH_REQUESTS
    """most requests in one `BatchRerank` (more: `INVALID_ARGUMENT` for the call)"""
    cache_ttl: Annotated[float, _n(above=0, high=86_400)] = 600.0
    """result cache lifetime, seconds"""
    cache_max_bytes: Annotated[int, _n(0)] = 64 * 1024 * 1024
    """result cache memory bound, bytes (0 = no cache)"""
    cache_backend: CacheBackend = CacheBackend.MEMORY
    """where the result cache lives: `memory` (per process) or `redis` (needs a Redis URL)"""
    cache_redis_url: Annotated[Redis | None, Names(shown_default="the limits'")] = Field(
        default=None, repr=False
    )
    """the result cache's own Redis, only with `RERANK_CACHE_BACKEND=redis`"""
    redis_url: Redis | None = Field(default=None, repr=False)
    """Redis holding callers' rates, calls, spend and usage for every replica"""
    redis_timeout: Annotated[float, _n(above=0, high=60)] = 0.2
    """deadline of one call to Redis, connecting included, seconds"""
    limits_fail_closed: bool = False
    """refuse named callers' calls while the limits' Redis is away"""
    max_concurrent_calls: Annotated[int, _n(1, 100_000)] = 512
    """Rerank calls in flight at most"""
    max_inflight_bytes: Annotated[int, _n(1)] = 256 * 1024 * 1024
    """bytes of memory calls in flight hold at most, each counted as 3 × its request's"""
    max_retries: Annotated[int, _n(0, 10)] = 2
    """retries of a retryable gateway failure"""
    retry_initial_backoff: Annotated[float, _n(0, 60)] = 0.5
    """first jittered retry delay at most, seconds"""
    retry_max_backoff: Annotated[float, _n(0, 300)] = 8.0
    """any jittered retry delay at most, seconds"""
    retry_budget_ratio: Annotated[float, _n(0, 1)] = 0.2
    """retries allowed per call, over time (retry budget)"""
    breaker_failure_rate: Annotated[float, _n(above=0, high=1)] = 0.5
    """share of the last gateway attempts found down that opens the circuit"""
    breaker_window: Annotated[int, _n(1, 10_000)] = 100
    """gateway attempts the circuit breaker judges"""
    breaker_cooldown: Annotated[float, _n(above=0, high=600)] = 5.0
    """open-circuit cool-down, seconds"""
    auth_tokens: Annotated[
        Tokens, Names(env=None, label="RERANK_AUTH_TOKENS / RERANK_AUTH_TOKENS_FILE")
    ] = Field(default=frozenset(), repr=False)
    """caller bearer tokens, comma-separated or one per line in a file; none: no authentication"""
    callers_file: Path | None = None
    """named callers (a TOML file, re-read on SIGHUP); a bad one stops the start"""
    auth_health: Annotated[bool, Names("--auth-health")] = False
    """health checks need a token too"""
    tls_cert_file: Annotated[Path | None, Names("--tls-cert", "RERANK_TLS_CERT")] = None
    """TLS certificate chain (PEM), with the key"""
    tls_key_file: Annotated[Path | None, Names("--tls-key", "RERANK_TLS_KEY")] = None
    """TLS private key (PEM), with the certificate"""
    tls_client_ca_file: Annotated[Path | None, Names("--tls-client-ca", "RERANK_TLS_CLIENT_CA")] = (
        None
    )
    """client CA (PEM): callers need a certificate it signed (mutual TLS)"""
    grace_period: Annotated[float, _n(0, 3600)] = 10.0
    """shutdown grace period, seconds: in-flight calls finish after the listener closed"""
    drain_delay: Annotated[float, _n(0, 600)] = 5.0
    """drain delay after SIGTERM, seconds: health `NOT_SERVING`, calls still served"""
    allow_port_overlap: Annotated[bool, Names("--allow-port-overlap")] = False
    """share the port with another server that shares it too (zero-downtime restart)"""
    workers: Annotated[int, _n(1, 1024), Names("--workers", shown_default="one per core")] = 1
    """server processes sharing the port (SO_REUSEPORT)"""
    log_level: Annotated[LogLevel, Names("--log-level")] = "INFO"
    """log level"""
    log_format: Annotated[Literal["text", "json"], Names("--log-format")] = "text"
    """log format: `json` is one object per line, for every record"""
    access_log_success_sample: Annotated[float, _n(0, 1)] = 1.0
    """share of successful calls that write an access-log record (failures always do)"""
    export_traces: Annotated[bool, DERIVED] = False
    """whether spans are exported (the OpenTelemetry SDK reads where to, and how, itself)"""

    @property
    def protocol(self) -> GatewayProtocol:
        """The version spoken upstream: `gateway_protocol`, else v3 for a URL ending `/v3/ai`."""
        v3 = urlsplit(self.gateway_url).path.rstrip("/").endswith("/v3/ai")
        return self.gateway_protocol or (GatewayProtocol.V3 if v3 else GatewayProtocol.V4)

    @model_validator(mode="after")
    def _together(self) -> Settings:
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError("--tls-cert and --tls-key go together")
        if self.tls_client_ca_file is not None and self.tls_cert_file is None:
            raise ValueError("--tls-client-ca needs --tls-cert and --tls-key")
        redis = self.cache_backend is CacheBackend.REDIS
        if redis and not (self.cache_redis_url or self.redis_url):
            raise ValueError(
                "RERANK_CACHE_BACKEND=redis needs RERANK_CACHE_REDIS_URL or RERANK_REDIS_URL"
            )
        if self.cache_redis_url is not None and not redis:
            raise ValueError("RERANK_CACHE_REDIS_URL is set but RERANK_CACHE_BACKEND is not redis")
        if self.upstream is Upstream.GATEWAY and not (self.api_key or self.oidc_token_file):
            raise ValueError(
                "--gateway-url needs a credential: set AI_GATEWAY_API_KEY (any non-empty "
                "value for a mock gateway process) or RERANK_OIDC_TOKEN_FILE"
            )
        return self

    # Defined last, so that it is outermost: every error of the model, the checks above too.
    @model_validator(mode="wrap")
    @classmethod
    def _one_line(cls, data: Any, handler: ModelWrapValidatorHandler[Settings]) -> Settings:
        try:
            return handler(data)
        except ValidationError as exc:
            raise SettingError(one_line(exc, data)) from None


def fields() -> Mapping[str, FieldInfo]:
    assert is_pydantic_dataclass(Settings)
    return Settings.__pydantic_fields__


def names(name: str) -> Names:
    """How a user sets the field `name`, its variable's name filled in."""
    found = next((m for m in fields()[name].metadata if isinstance(m, Names)), Names())
    return replace(found, env=f"RERANK_{name.upper()}") if found.env == "" else found


def _parts(field: FieldInfo) -> tuple[Any, list[Any]]:
    """The type under the field's annotation (None's arm left out), and every constraint."""
    kind = field.annotation
    if get_origin(kind) not in (Union, UnionType):
        return kind, field.metadata
    inner = FieldInfo.from_annotation(next(a for a in get_args(kind) if a is not NoneType))
    return inner.annotation, [*field.metadata, *inner.metadata]


def choices(field: FieldInfo) -> tuple[str, ...]:
    """The names an enum or `Literal` field takes (empty for the others)."""
    kind = _parts(field)[0]
    if isinstance(kind, type) and issubclass(kind, Enum):
        return tuple(str(member.value) for member in kind)
    return tuple(map(str, get_args(kind))) if get_origin(kind) is Literal else ()


def range_of(field: FieldInfo) -> str:
    """The values `field` takes, in words: the table's range column, and the error's."""
    kind, metadata = _parts(field)
    said = [m.words for m in metadata if isinstance(m, Says)]
    if said:
        words = said[-1]
    elif kind is bool:
        words = "on (1, true, yes, on) or off (empty, 0, false, no, off)"
    elif choices(field):
        words = "one of " + ", ".join(choices(field))
    else:
        end = {k: getattr(m, k) for m in metadata for k in ("ge", "gt", "le") if hasattr(m, k)}
        end = {k: str(v).removesuffix(".0") for k, v in end.items()}
        low = f"({end['gt']}" if "gt" in end else f"[{end['ge']}"
        high = f"{end['le']}]" if "le" in end else "∞)"
        words = f"{'an integer' if kind is int else 'a number'} in {low}, {high}"
    return words + (", or unset" if field.default is None else "")


def one_line(exc: ValidationError, data: Any) -> str:
    """pydantic's first error as one line: the setting as a user names it, and its range."""
    error = exc.errors()[0]
    if not error["loc"]:
        return str(error["ctx"]["error"])
    name = str(error["loc"][0])
    if name not in fields():
        return f"{name} is not a setting"
    given = getattr(data, "kwargs", None) or {}  # the dataclass's keyword arguments
    got = f", got {given.get(name)!r}" if fields()[name].repr else ""
    return f"{names(name)} must be {range_of(fields()[name])}{got}"
