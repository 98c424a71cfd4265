"""The server's settings: one model, built once in `__main__` from flags and environment, then
passed down, and checked whole when it is made.

Nothing below `__main__` reads the environment; everything it needs arrives in `Settings`.
Every field states the values it may take (its `Rule`) and the names a user sets it by;
`Settings.__post_init__` checks every field against its rule, so a value out of range stops
the server at start with one line naming the setting and its range (`SettingError`), whoever
built the settings: `__main__`, the testing kit or a test.
"""

from __future__ import annotations

import math
import string
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from enum import Enum
from typing import Protocol, TypeVar
from urllib.parse import urlsplit

from rerank.contract import MAX_BATCH_REQUESTS, MAX_DOCUMENTS, MAX_MESSAGE_BYTES
from rerank.server.domain import is_model_slug
from rerank.server.redis_client import RedisUrl
from rerank.server.tracing import SAMPLERS
from rerank.server.windows import DEFAULT_WINDOW_SIZES

DEFAULT_GATEWAY_URL = "https://ai-gateway.vercel.sh/v4/ai"
DEFAULT_MODEL = "cohere/rerank-v3.5"

#: Python's logging levels, by name.
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
#: `--log-format`'s values (`rerank.server.logs`).
LOG_FORMATS = ("text", "json")

#: The largest length gRPC can carry for one message (a signed 32-bit int).
GRPC_MAX_MESSAGE_BYTES = 2**31 - 1

T = TypeVar("T")


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


class CacheBackend(Enum):
    """Where the result cache keeps its answers."""

    #: This process's memory, bounded by `Settings.cache_max_bytes`.
    MEMORY = "memory"
    #: A Redis every replica shares, bounded by `Settings.cache_ttl`.
    REDIS = "redis"


class Upstream(Enum):
    """Where reranking calls go."""

    #: The bundled mock gateway, in-process, through the real adapter (no network).
    EMBEDDED_MOCK = "embedded-mock"
    #: An AI Gateway (the real one, or a mock gateway process) at `Settings.gateway_url`.
    GATEWAY = "gateway"


class SettingError(ValueError):
    """A setting outside its range (or two that do not go together). The message is one line
    that names the setting as a user sets it and says what it may be."""


class Rule(Protocol):
    """The values one setting may take. `str()` says them, in the error and in the README."""

    def allows(self, value: object) -> bool: ...

    def parse(self, text: str) -> object:
        """The value `text` (from a flag or a variable) stands for; ValueError if none."""
        ...


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


@dataclass(frozen=True)
class Between:
    """A number from `low` to `high` (both included, unless `low_excluded`), finite; None too
    when `optional`."""

    low: float
    high: float = math.inf
    integer: bool = False
    low_excluded: bool = False
    optional: bool = False

    def allows(self, value: object) -> bool:
        if value is None:
            return self.optional
        if isinstance(value, bool) or not isinstance(value, int if self.integer else (int, float)):
            return False
        if not math.isfinite(value) or value > self.high:
            return False
        return value > self.low if self.low_excluded else value >= self.low

    def parse(self, text: str) -> object:
        return int(text) if self.integer else float(text)

    def __str__(self) -> str:
        kind = "an integer" if self.integer else "a number"
        low = f"{'(' if self.low_excluded else '['}{_number(self.low)}"
        high = "∞)" if self.high == math.inf else f"{_number(self.high)}]"
        return f"{kind} in {low}, {high}" + (", or unset" if self.optional else "")


@dataclass(frozen=True)
class OneOf:
    """One of a few names (an enum's values, or words matched regardless of case)."""

    choices: tuple[object, ...]
    optional: bool = False
    """None too (unset)."""

    def _names(self) -> list[str]:
        return [str(getattr(choice, "value", choice)) for choice in self.choices]

    def allows(self, value: object) -> bool:
        return value in self.choices or (self.optional and value is None)

    def parse(self, text: str) -> object:
        for choice, name in zip(self.choices, self._names(), strict=True):
            if text.strip().upper() == name.upper():
                return choice
        raise ValueError(text)

    def __str__(self) -> str:
        return "one of " + ", ".join(self._names()) + (", or unset" if self.optional else "")


@dataclass(frozen=True)
class Switch:
    """On or off."""

    on: tuple[str, ...] = ("1", "true", "yes", "on")
    off: tuple[str, ...] = ("", "0", "false", "no", "off")

    def allows(self, value: object) -> bool:
        return isinstance(value, bool)

    def parse(self, text: str) -> object:
        word = text.strip().lower()
        if word in self.on or word in self.off:
            return word in self.on
        raise ValueError(text)

    def __str__(self) -> str:
        return f"on ({', '.join(self.on)}) or off ({', '.join(w or 'empty' for w in self.off)})"


@dataclass(frozen=True)
class Text:
    """A string that passes `test`; None too when `optional`."""

    description: str
    test: Callable[[str], bool]
    optional: bool = False

    def allows(self, value: object) -> bool:
        if value is None:
            return self.optional
        return isinstance(value, str) and self.test(value)

    def parse(self, text: str) -> object:
        return text.strip()

    def __str__(self) -> str:
        return f"{self.description}, or unset" if self.optional else self.description


@dataclass(frozen=True)
class Each:
    """A set of strings, each passing `member`; as text, comma-separated."""

    member: Rule
    description: str

    def allows(self, value: object) -> bool:
        return isinstance(value, frozenset) and all(self.member.allows(item) for item in value)

    def parse(self, text: str) -> object:
        return frozenset(item.strip() for item in text.split(",")) - {""}

    def __str__(self) -> str:
        return f"{self.description}, each {self.member}"


@dataclass(frozen=True)
class ByName:
    """A mapping of names to values, each passing `member`; as text, `name=value` pairs,
    comma-separated, over `base`."""

    member: Rule
    description: str
    base: Mapping[str, object] = field(default_factory=dict)

    def allows(self, value: object) -> bool:
        return isinstance(value, Mapping) and all(
            isinstance(name, str) and name and self.member.allows(item)
            for name, item in value.items()
        )

    def parse(self, text: str) -> object:
        pairs = dict(self.base)
        for entry in filter(None, (e.strip() for e in text.split(","))):
            name, equals, value = entry.partition("=")
            if not equals or not name.strip():
                raise ValueError(entry)
            pairs[name.strip()] = self.member.parse(value)
        return pairs

    def __str__(self) -> str:
        return f"{self.description}, each {self.member}"


@dataclass(frozen=True)
class RedisAddress:
    """Where a Redis is (`rerank.server.redis_client.RedisUrl`), or unset."""

    def allows(self, value: object) -> bool:
        return value is None or isinstance(value, RedisUrl)

    def parse(self, text: str) -> object:
        return RedisUrl.parse(text.strip())

    def __str__(self) -> str:
        return (
            "a redis://[[user]:password@]host[:port][/db] URL, or rediss://… for TLS "
            "(?ssl_ca_certs=FILE for a private CA), or unset"
        )


def _visible_ascii(text: str) -> bool:
    """Header-safe: printable ASCII without spaces (what a bearer token or API key is)."""
    return bool(text) and all(c in string.printable and not c.isspace() for c in text)


def _http_url(text: str) -> bool:
    parts = urlsplit(text)
    return parts.scheme in ("http", "https") and bool(parts.hostname)


def _host(text: str) -> bool:
    return bool(text) and not any(c.isspace() for c in text)


def _path(text: str) -> bool:
    return bool(text) and "\0" not in text


@dataclass(frozen=True)
class About:
    """What `Settings` knows of one field: its rule and the names a user sets it by."""

    rule: Rule
    env: str | None = None
    """The variable `__main__` reads it from, as text parsed by `rule`."""
    flag: str | None = None
    """The command-line flag, which wins over `env`."""
    label: str | None = None
    """How errors name it when not simply `flag / env` (derived or specially read ones)."""
    secret: bool = False
    """Never echo the value."""
    derived: bool = False
    """Set by `__main__` from other settings; no name of its own."""

    @property
    def names(self) -> str:
        return self.label or " / ".join(name for name in (self.flag, self.env) if name)


def setting(default: T, info: About) -> T:
    """A `Settings` field: its default and what `info` says of it. A secret stays out of the
    settings' repr (and so out of logs)."""
    return field(default=default, repr=not info.secret, metadata={"about": info})


def setting_made(factory: Callable[[], T], info: About) -> T:
    """A `Settings` field whose default is made afresh (a mutable one)."""
    return field(default_factory=factory, repr=not info.secret, metadata={"about": info})


def about(name: str) -> About:
    """The rule and names of the `Settings` field `name`."""
    for each in fields(Settings):
        if each.name == name:
            found: About = each.metadata["about"]
            return found
    raise KeyError(name)


def parse(name: str, text: str) -> object:
    """The value of field `name` that `text` (a flag's or a variable's) stands for.

    Raises:
        SettingError: `text` means no value in the field's range.
    """
    info = about(name)
    try:
        value = info.rule.parse(text)
    except ValueError:
        raise _out_of_range(info, text) from None
    if not info.rule.allows(value):
        raise _out_of_range(info, text)
    return value


def _out_of_range(info: About, shown: object) -> SettingError:
    got = "" if info.secret else f", got {shown!r}"
    return SettingError(f"{info.names} must be {info.rule}{got}")


_BYTES = Between(1, GRPC_MAX_MESSAGE_BYTES, integer=True)
_WINDOW_SIZE = Between(1, 10_000, integer=True)


@dataclass(frozen=True)
class Settings:
    """Everything the server can be told. Defaults are the documented ones; each field's rule
    is its range, checked when the settings are made."""

    host: str = setting(
        "127.0.0.1", About(Text("a host name or address", _host), flag="--host", env="RERANK_HOST")
    )
    """Interface the gRPC server listens on."""

    port: int = setting(
        50051, About(Between(0, 65535, integer=True), flag="--port", env="RERANK_PORT")
    )
    """gRPC port; 0 picks a free one and logs it."""

    metrics_port: int | None = setting(
        None,
        About(
            Between(0, 65535, integer=True, optional=True),
            flag="--metrics-port",
            env="RERANK_METRICS_PORT",
        ),
    )
    """Port of the Prometheus `GET /metrics` listener on `host`; 0 picks a free one, None
    (unset) serves no metrics at all."""

    upstream: Upstream = setting(
        Upstream.EMBEDDED_MOCK,
        About(
            OneOf(tuple(Upstream)),
            label="the upstream (from --mock, the credential and --gateway-url)",
            derived=True,
        ),
    )
    """Where calls go; derived in `__main__` from the key and the gateway URL."""

    gateway_url: str = setting(
        DEFAULT_GATEWAY_URL,
        About(
            Text("an http:// or https:// URL", _http_url),
            flag="--gateway-url",
            env="RERANK_GATEWAY_URL",
        ),
    )
    """Base URL of the gateway, no trailing slash."""

    gateway_protocol: GatewayProtocol | None = setting(
        None,
        About(
            OneOf(tuple(GatewayProtocol), optional=True),
            flag="--gateway-protocol",
            env="RERANK_GATEWAY_PROTOCOL",
        ),
    )
    """Protocol version to speak to the gateway (and to the embedded mock), when set; None
    speaks what `gateway_url` names. Read `protocol`, not this."""

    gateway_team: str | None = setting(
        None,
        About(
            Text("a team id or slug: visible ASCII without spaces", _visible_ascii, optional=True),
            env="RERANK_GATEWAY_TEAM",
        ),
    )
    """Team id or slug sent as `x-vercel-ai-gateway-team` on every gateway request, like the
    SDK's `createGateway({teamIdOrSlug})`; None sends no such header."""

    api_key: str | None = setting(
        None,
        About(
            Text("visible ASCII without spaces", _visible_ascii, optional=True),
            label="AI_GATEWAY_API_KEY / VERCEL_OIDC_TOKEN",
            secret=True,
        ),
    )
    """Credential for the gateway (`AI_GATEWAY_API_KEY`, else `VERCEL_OIDC_TOKEN`). Never logged."""

    auth_method: str = setting(
        "api-key", About(OneOf(("api-key", "oidc")), label="the gateway auth method", derived=True)
    )
    """`api-key` or `oidc`: sent as `ai-gateway-auth-method`, after where `api_key` came from."""

    oidc_token_file: str | None = setting(
        None,
        About(Text("a file path", _path, optional=True), label="RERANK_OIDC_TOKEN_FILE"),
    )
    """A file holding a short-lived OIDC token, read again when it changes and before the token
    expires (`RERANK_OIDC_TOKEN_FILE`); used instead of `api_key` when set. `__main__` reads it
    with the other credentials (a key wins over it; it wins over `VERCEL_OIDC_TOKEN`) and
    refuses a file without a token. The token is never logged; the path may be."""

    default_model: str = setting(
        DEFAULT_MODEL,
        About(
            Text("a model slug 'provider/model'", is_model_slug),
            flag="--default-model",
            env="RERANK_DEFAULT_MODEL",
        ),
    )
    """Model used when a request leaves `model` empty."""

    upstream_timeout: float = setting(
        30.0, About(Between(0, 600, low_excluded=True), env="RERANK_UPSTREAM_TIMEOUT")
    )
    """Seconds one gateway call may take at most; a caller's shorter deadline wins."""

    max_connections: int = setting(
        100, About(Between(1, 10_000, integer=True), env="RERANK_MAX_CONNECTIONS")
    )
    """Size of the pooled HTTP connections to the gateway."""

    max_documents: int = setting(
        MAX_DOCUMENTS, About(Between(1, 100_000, integer=True), env="RERANK_MAX_DOCUMENTS")
    )
    """Most documents one request may hold; Cohere's hard limit by default. Requests over a
    model's window are split across several upstream calls."""

    max_document_bytes: int = setting(64 * 1024, About(_BYTES, env="RERANK_MAX_DOCUMENT_BYTES"))
    """Largest single document, in UTF-8 bytes of its text or JSON."""

    max_query_bytes: int = setting(32 * 1024, About(_BYTES, env="RERANK_MAX_QUERY_BYTES"))
    """Longest query, in UTF-8 bytes."""

    max_message_bytes: int = setting(
        MAX_MESSAGE_BYTES,
        About(Between(1024, GRPC_MAX_MESSAGE_BYTES, integer=True), env="RERANK_MAX_MESSAGE_BYTES"),
    )
    """Largest gRPC message accepted. gRPC's own default of 4 MiB is too small for 1,000
    documents of 4 KB; 64 MiB takes 10,000 of them. The send limit follows from it,
    `max_documents` and `batch_max_requests` (`rerank.contract.max_response_bytes`): the
    largest answer an accepted request or batch can produce."""

    window_sizes: Mapping[str, int] = setting_made(
        lambda: dict(DEFAULT_WINDOW_SIZES),
        About(
            ByName(_WINDOW_SIZE, "model-or-provider=size pairs", DEFAULT_WINDOW_SIZES),
            env="RERANK_WINDOW_SIZES",
        ),
    )
    """Documents per upstream call, by model slug or provider; larger requests are split
    (e.g. `cohere=1000,voyage/rerank-2.5-lite=500`, over the defaults)."""

    default_window_size: int = setting(1000, About(_WINDOW_SIZE, env="RERANK_WINDOW_SIZE"))
    """Documents per upstream call for models not in `window_sizes`."""

    window_parallelism: int = setting(
        4, About(Between(1, 64, integer=True), env="RERANK_WINDOW_PARALLELISM")
    )
    """Windows of one request in flight at once."""

    batch_parallelism: int = setting(
        8, About(Between(1, 64, integer=True), env="RERANK_BATCH_PARALLELISM")
    )
    """Requests of one BatchRerank answered at once; each holds its own call place while it
    runs (the batch's memory is counted once, for the whole call)."""

    batch_max_requests: int = setting(
        MAX_BATCH_REQUESTS, About(Between(1, 1000, integer=True), env="RERANK_BATCH_MAX_REQUESTS")
    )
    """Most requests one BatchRerank may hold; more is INVALID_ARGUMENT for the whole call. The
    bytes of them all are bounded by `max_message_bytes`."""

    cache_ttl: float = setting(
        600.0, About(Between(0, 86_400, low_excluded=True), env="RERANK_CACHE_TTL")
    )
    """Seconds a cached ranking stays valid."""

    cache_max_bytes: int = setting(
        64 * 1024 * 1024, About(Between(0, integer=True), env="RERANK_CACHE_MAX_BYTES")
    )
    """Memory bound of the result cache; 0 turns it off."""

    cache_backend: CacheBackend = setting(
        CacheBackend.MEMORY, About(OneOf(tuple(CacheBackend)), env="RERANK_CACHE_BACKEND")
    )
    """Where the result cache lives: this process, or Redis (`cache_redis_url`, else
    `redis_url`), where entries expire after `cache_ttl`."""

    cache_redis_url: RedisUrl | None = setting(
        None, About(RedisAddress(), env="RERANK_CACHE_REDIS_URL", secret=True)
    )
    """The Redis of the result cache, when it is not `redis_url`'s: recommended, since a Redis
    that may evict must hold no limits. Never logged with its password."""

    redis_url: RedisUrl | None = setting(
        None, About(RedisAddress(), env="RERANK_REDIS_URL", secret=True)
    )
    """The Redis where callers' limits, concurrency, spend and usage live, shared by every
    replica; None keeps them in each process. Never logged with its password."""

    redis_timeout: float = setting(
        0.2, About(Between(0, 60, low_excluded=True), env="RERANK_REDIS_TIMEOUT")
    )
    """Seconds one call to Redis may take, connecting included; past it, Redis counts as
    away."""

    limits_fail_closed: bool = setting(False, About(Switch(), env="RERANK_LIMITS_FAIL_CLOSED"))
    """Whether to refuse calls of named callers (UNAVAILABLE, LIMITS_UNAVAILABLE) while the
    limits' Redis is away, instead of deciding them in this process."""

    max_concurrent_calls: int = setting(
        512, About(Between(1, 100_000, integer=True), env="RERANK_MAX_CONCURRENT_CALLS")
    )
    """Rerank calls in flight at most; more are refused at once with RESOURCE_EXHAUSTED."""

    max_inflight_bytes: int = setting(
        256 * 1024 * 1024, About(Between(1, integer=True), env="RERANK_MAX_INFLIGHT_BYTES")
    )
    """Bytes of memory calls in flight may hold, each counted as its request's bytes times
    `admission.HELD_PER_REQUEST_BYTE` (3, measured); more are refused at once with
    RESOURCE_EXHAUSTED. Keeps memory bounded under a flood of large requests."""

    max_retries: int = setting(2, About(Between(0, 10, integer=True), env="RERANK_MAX_RETRIES"))
    """Retries of a retryable gateway failure (429, 5xx, 408, 409, connection errors); the AI
    SDK's default."""

    retry_initial_backoff: float = setting(
        0.5, About(Between(0, 60), env="RERANK_RETRY_INITIAL_BACKOFF")
    )
    """Upper bound of the first jittered retry delay, seconds, doubling per retry, when the
    gateway sent no retry-after."""

    retry_max_backoff: float = setting(8.0, About(Between(0, 300), env="RERANK_RETRY_MAX_BACKOFF"))
    """Upper bound of any jittered retry delay, seconds."""

    retry_budget_ratio: float = setting(0.2, About(Between(0, 1), env="RERANK_RETRY_BUDGET_RATIO"))
    """Retries allowed per first attempt, over time."""

    breaker_failure_rate: float = setting(
        0.5, About(Between(0, 1, low_excluded=True), env="RERANK_BREAKER_FAILURE_RATE")
    )
    """Share of the last `breaker_window` gateway attempts that must have found it down for the
    circuit to open. 0 would open it with no failure at all; above 1, never."""

    breaker_window: int = setting(
        100, About(Between(1, 10_000, integer=True), env="RERANK_BREAKER_WINDOW")
    )
    """Gateway attempts the circuit breaker judges."""

    breaker_cooldown: float = setting(
        5.0, About(Between(0, 600, low_excluded=True), env="RERANK_BREAKER_COOLDOWN")
    )
    """Seconds the open circuit fails fast before letting a probe through."""

    auth_tokens: frozenset[str] = setting(
        frozenset(),
        About(
            Each(Text("visible ASCII without spaces", _visible_ascii), "tokens"),
            label="RERANK_AUTH_TOKENS / RERANK_AUTH_TOKENS_FILE",
            secret=True,
        ),
    )
    """Bearer tokens callers must present (`authorization: Bearer <token>`); empty turns
    caller authentication off (`RERANK_AUTH_TOKENS`, comma-separated, or
    `RERANK_AUTH_TOKENS_FILE`, one per line). Never logged."""

    callers_file: str | None = setting(
        None, About(Text("a file path", _path, optional=True), env="RERANK_CALLERS_FILE")
    )
    """TOML file of named callers: their tokens or certificate names, limits, budgets, models
    and cache scope (`rerank.server.callers`). Re-read on SIGHUP. Without it, every caller of
    `auth_tokens` is an unnamed caller without limits."""

    auth_health: bool = setting(
        False, About(Switch(), flag="--auth-health", env="RERANK_AUTH_HEALTH")
    )
    """Whether health checks need a token too. Off by default so load balancers and
    orchestrators can probe without a secret."""

    tls_cert_file: str | None = setting(
        None,
        About(Text("a file path", _path, optional=True), flag="--tls-cert", env="RERANK_TLS_CERT"),
    )
    """PEM certificate chain of the server; with `tls_key_file` turns TLS on."""

    tls_key_file: str | None = setting(
        None,
        About(Text("a file path", _path, optional=True), flag="--tls-key", env="RERANK_TLS_KEY"),
    )
    """PEM private key of the server."""

    tls_client_ca_file: str | None = setting(
        None,
        About(
            Text("a file path", _path, optional=True),
            flag="--tls-client-ca",
            env="RERANK_TLS_CLIENT_CA",
        ),
    )
    """PEM CA bundle; when set, callers must present a certificate it signed: mutual TLS."""

    grace_period: float = setting(10.0, About(Between(0, 3600), env="RERANK_GRACE_PERIOD"))
    """Seconds in-flight calls get to finish after SIGTERM/SIGINT, once the listener has
    closed."""

    drain_delay: float = setting(5.0, About(Between(0, 600), env="RERANK_DRAIN_DELAY"))
    """Seconds between SIGTERM and closing the listener, health `NOT_SERVING` meanwhile and
    calls still served, so balancers stop sending calls first. SIGINT skips it;
    `rerank.server.app.RunningServer.stop` alone does not drain."""

    allow_port_overlap: bool = setting(
        False,
        About(Switch(), flag="--allow-port-overlap", env="RERANK_ALLOW_PORT_OVERLAP"),
    )
    """Share the port with another server that allows it too, for a zero-downtime restart.
    Off: a port another server serves is refused at start, and this server's port cannot be
    taken by a later one."""

    workers: int = setting(
        1, About(Between(1, 1024, integer=True), flag="--workers", env="RERANK_WORKERS")
    )
    """Server processes sharing the port through SO_REUSEPORT; `__main__` defaults it to one
    per core. Limits and the cache are per process, unless they live in Redis (`redis_url`,
    `cache_backend`). A worker that dies is replaced (see `rerank.server.workers`)."""

    log_level: str = setting(
        "INFO", About(OneOf(LOG_LEVELS), flag="--log-level", env="RERANK_LOG_LEVEL")
    )
    """Python logging level."""

    def __post_init__(self) -> None:
        for each in fields(self):
            info: About = each.metadata["about"]
            value = getattr(self, each.name)
            if not info.rule.allows(value):
                raise _out_of_range(info, value)
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise SettingError("--tls-cert and --tls-key go together")
        if self.tls_client_ca_file is not None and self.tls_cert_file is None:
            raise SettingError("--tls-client-ca needs --tls-cert and --tls-key")
        if self.cache_backend is CacheBackend.REDIS and not (
            self.cache_redis_url or self.redis_url
        ):
            raise SettingError(
                "RERANK_CACHE_BACKEND=redis needs RERANK_CACHE_REDIS_URL or RERANK_REDIS_URL"
            )
        if self.cache_redis_url is not None and self.cache_backend is not CacheBackend.REDIS:
            raise SettingError(
                "RERANK_CACHE_REDIS_URL is set but RERANK_CACHE_BACKEND is not redis"
            )
        credential = self.api_key or self.oidc_token_file
        if self.upstream is Upstream.GATEWAY and credential is None:
            raise SettingError(
                "--gateway-url needs a credential: set AI_GATEWAY_API_KEY (any non-empty "
                "value for a mock gateway process) or RERANK_OIDC_TOKEN_FILE"
            )

    log_format: str = setting(
        "text", About(OneOf(LOG_FORMATS), flag="--log-format", env="RERANK_LOG_FORMAT")
    )
    """`text` (for a terminal) or `json`, one object per line, for every log record."""

    access_log_success_sample: float = setting(
        1.0, About(Between(0, 1), env="RERANK_ACCESS_LOG_SUCCESS_SAMPLE")
    )
    """Share of successful calls that write an access-log record; failures always do."""

    otlp_traces_endpoint: str | None = setting(
        None,
        About(
            Text("an http:// or https:// URL", _http_url, optional=True),
            label="OTEL_EXPORTER_OTLP_ENDPOINT / OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
            derived=True,
        ),
    )
    """Where spans are exported, OTLP over HTTP/protobuf: `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`,
    or `OTEL_EXPORTER_OTLP_ENDPOINT` + `/v1/traces` (`__main__` reads them); None exports
    nothing."""

    trace_sampler: str | None = setting(
        None,
        About(OneOf(tuple(SAMPLERS), optional=True), label="OTEL_TRACES_SAMPLER", derived=True),
    )
    """A standard sampler's name; unset, the default (`rerank.server.tracing.sampler_for`)."""

    trace_sampler_ratio: float = setting(
        1.0, About(Between(0, 1), label="OTEL_TRACES_SAMPLER_ARG", derived=True)
    )
    """The ratio of the ratio samplers (`traceidratio`, `parentbased_traceidratio`)."""

    @property
    def protocol(self) -> GatewayProtocol:
        """The protocol version spoken upstream: `gateway_protocol` when set, else the one
        `gateway_url` names (v3 for a path ending in `/v3/ai`, else v4)."""
        return self.gateway_protocol or GatewayProtocol.of_base_url(self.gateway_url)
