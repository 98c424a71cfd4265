"""Named callers: `RERANK_CALLERS_FILE`, read into a `CallerDirectory` that recognises them.

The file is TOML, one table per caller:

```toml
[callers.search-api]
token_sha256 = "…"          # hex SHA-256 of its bearer token (preferred), or `token = "…"`
requests_per_second = 5     # token bucket refill rate       (optional; default unlimited)
burst = 5                   # bucket size                    (optional; default the rate)
max_concurrent_calls = 16   # calls in flight at once        (optional; default unlimited)
daily_budget_usd = 20.0     # the gateway's cost per UTC day (optional; default unlimited)
models = ["cohere/*"]       # model slugs it may use, globs  (optional; default all)
cache_scope = "shared"      # share the result cache with others (optional; default "caller")
subject = "CN=search-api,O=Example"   # with mutual TLS: its certificate's subject, and/or
san = ["search-api.internal"]         # entries of its subject alternative names
```

Every mistake is a `CallersFileError` of one line naming the caller and the key. Tokens and
their digests never appear in one: the directory keeps only SHA-256 digests, compared in
constant time.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import math
import re
import tomllib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from rerank.server.domain import Caller
from rerank.server.limits import CallerLimits

logger = logging.getLogger(__name__)

#: A name reaches the gateway (`gateway.user`), logs and metric labels: kept plain.
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_SHA256_HEX = re.compile(r"[0-9a-fA-F]{64}")
_CACHE_SCOPES = ("caller", "shared")
_KEYS = (
    "token_sha256",
    "token",
    "requests_per_second",
    "burst",
    "max_concurrent_calls",
    "daily_budget_usd",
    "models",
    "cache_scope",
    "subject",
    "san",
)
_PARSE_POSITION = re.compile(r"at line (\d+)")
_TABLE_HEADER = re.compile(r"^\s*\[\s*callers\s*\.\s*\"?([^\]\"]+)\"?\s*\]")
# Only the key of a line is ever read for a message, never what follows its `=`.
_LINE_KEY = re.compile(r"^\s*([A-Za-z0-9_-]+)\s*=")


class CallersFileError(Exception):
    """The callers file cannot be used: one line naming the file, the caller and the key."""


@dataclass(frozen=True)
class CallerEntry:
    """One way to recognise a caller: the digest of its token (or None), as parsed."""

    caller: Caller
    token_digest: bytes | None
    subject: str | None
    sans: tuple[str, ...]


@dataclass(frozen=True)
class CallerDirectory:
    """Who is who: bearer-token digests and certificate names to callers.

    A digest maps to a named `Caller`, or to None for a token of `RERANK_AUTH_TOKENS` (a
    caller without a name or limits).
    """

    _tokens: tuple[tuple[bytes, Caller | None], ...] = ()
    _subjects: Mapping[str, Caller] = field(default_factory=dict)
    _sans: Mapping[str, Caller] = field(default_factory=dict)
    #: The named callers, by name.
    callers: Mapping[str, Caller] = field(default_factory=dict)

    @property
    def names_by_certificate(self) -> bool:
        """Whether some caller is recognised by its client certificate."""
        return bool(self._subjects or self._sans)

    @property
    def certificate_callers(self) -> tuple[str, ...]:
        """The names of the callers recognised by a client certificate, sorted."""
        named = [*self._subjects.values(), *self._sans.values()]
        return tuple(sorted({caller.name for caller in named}))

    def for_token(self, token: bytes) -> tuple[bool, Caller | None]:
        """(known, caller) for a presented bearer token; `caller` is None for an unnamed one.

        Every digest is compared, in constant time, so the time taken tells nothing about
        which token (if any) came close.
        """
        digest = hashlib.sha256(token).digest()
        known = False
        found: Caller | None = None
        for expected, caller in self._tokens:
            if hmac.compare_digest(digest, expected):
                known, found = True, caller
        return known, found

    def for_certificate(self, subject: str | None, sans: Sequence[str]) -> Caller | None:
        """The caller a client certificate names: by its subject first, else by the first
        of its subject alternative names (in the certificate's order) that a table lists."""
        if subject is not None and (caller := self._subjects.get(subject)) is not None:
            return caller
        for san in sans:
            if (caller := self._sans.get(san)) is not None:
                return caller
        return None


def directory_of(
    named: Iterable[CallerEntry], unnamed_tokens: Iterable[str] = (), *, source: str = ""
) -> CallerDirectory:
    """The directory of parsed callers plus `RERANK_AUTH_TOKENS`; a token, subject or SAN
    held twice is an error naming both holders (never the token)."""
    tokens: dict[bytes, tuple[str, Caller | None]] = {}
    subjects: dict[str, Caller] = {}
    sans: dict[str, Caller] = {}
    callers: dict[str, Caller] = {}
    for entry in named:
        name = entry.caller.name
        callers[name] = entry.caller
        if entry.token_digest is not None:
            if (holder := tokens.get(entry.token_digest)) is not None:
                raise _error(source, name, "token", f"is the same token as {holder[0]}")
            tokens[entry.token_digest] = (f"caller {name!r}", entry.caller)
        if entry.subject is not None:
            if (other := subjects.get(entry.subject)) is not None:
                also = f"is also the subject of caller {other.name!r}"
                raise _error(source, name, "subject", also)
            subjects[entry.subject] = entry.caller
        for san in entry.sans:
            if (other := sans.get(san)) is not None:
                raise _error(source, name, "san", f"{san!r} is also a san of caller {other.name!r}")
            sans[san] = entry.caller
    for token in unnamed_tokens:
        digest = hashlib.sha256(token.encode()).digest()
        if (holder := tokens.get(digest)) is not None and holder[1] is not None:
            raise CallersFileError(
                f"RERANK_AUTH_TOKENS holds the token of {holder[0]} of {source or 'the file'}: "
                "a token names one caller"
            )
        tokens[digest] = ("RERANK_AUTH_TOKENS", None)
    return CallerDirectory(
        _tokens=tuple((digest, caller) for digest, (_, caller) in tokens.items()),
        _subjects=subjects,
        _sans=sans,
        callers=callers,
    )


def load_directory(path: str | None, unnamed_tokens: Iterable[str] = ()) -> CallerDirectory:
    """Read `path` (when set) and build the directory with `unnamed_tokens` beside it."""
    if path is None:
        return directory_of((), unnamed_tokens)
    try:
        with open(path, encoding="utf-8") as file:
            text = file.read()
    except OSError as exc:
        raise CallersFileError(
            f"RERANK_CALLERS_FILE {path}: cannot read it: {exc.strerror}"
        ) from exc
    except UnicodeDecodeError as exc:
        raise CallersFileError(f"{_where(path)}: is not UTF-8 text") from exc
    return directory_of(parse_callers(text, path), unnamed_tokens, source=path)


def parse_callers(text: str, source: str = "") -> list[CallerEntry]:
    """The callers of a callers file's text; `source` names the file in errors."""
    try:
        # Decimals for every float, so a budget of 0.0025 is 0.0025, not its binary neighbour.
        document = tomllib.loads(text, parse_float=Decimal)
    except tomllib.TOMLDecodeError as exc:
        raise _parse_error(source, text, exc) from None
    for key in document:
        if key != "callers":
            raise CallersFileError(
                f"{_where(source)}: unknown top-level key {key!r}; callers go in [callers.NAME]"
            )
    tables = document.get("callers", {})
    if not isinstance(tables, dict):
        raise CallersFileError(f"{_where(source)}: 'callers' must be a table of callers")
    return [_entry(source, name, table) for name, table in tables.items()]


def _entry(source: str, name: str, table: object) -> CallerEntry:
    if not _NAME.fullmatch(name):
        raise _error(
            source,
            name,
            None,
            "is not a name: 1 to 64 letters, digits, '.', '_' or '-', first a letter or digit",
        )
    if not isinstance(table, dict):
        raise _error(source, name, None, "must be a table ([callers.NAME])")
    for key in table:
        if key not in _KEYS:
            raise _error(source, name, key, f"is not a caller setting; known: {', '.join(_KEYS)}")
    reader = _TableReader(source, name, table)
    digest = reader.token_digest()
    subject = reader.text("subject")
    sans = reader.texts("san")
    if digest is None and subject is None and not sans:
        raise _error(
            source,
            name,
            None,
            "cannot be recognised: set token_sha256, token, subject or san",
        )
    rate = reader.number("requests_per_second", minimum=0, inclusive=False)
    burst = reader.number("burst", minimum=1, inclusive=True)
    if burst is not None and rate is None:
        raise _error(source, name, "burst", "needs requests_per_second (the bucket's refill rate)")
    concurrent = reader.number("max_concurrent_calls", minimum=1, inclusive=True, integer=True)
    budget = reader.decimal("daily_budget_usd")
    scope = reader.text("cache_scope") or "caller"
    if scope not in _CACHE_SCOPES:
        raise _error(source, name, "cache_scope", f"must be 'caller' or 'shared', got {scope!r}")
    caller = Caller(
        name=name,
        limits=CallerLimits(
            requests_per_second=rate,
            burst=burst,
            max_concurrent_calls=None if concurrent is None else int(concurrent),
            daily_budget_usd=budget,
        ),
        models=reader.texts("models"),
        shared_cache=scope == "shared",
    )
    return CallerEntry(caller=caller, token_digest=digest, subject=subject, sans=sans)


@dataclass(frozen=True)
class _TableReader:
    """Typed reads of one caller's table; each mistake names the caller and the key."""

    source: str
    name: str
    table: Mapping[str, Any]

    def fail(self, key: str, problem: str) -> CallersFileError:
        return _error(self.source, self.name, key, problem)

    def token_digest(self) -> bytes | None:
        hashed, plain = self.table.get("token_sha256"), self.table.get("token")
        if hashed is not None and plain is not None:
            raise self.fail("token", "set token_sha256 or token, not both")
        # Neither value is ever shown: a near-miss of a secret is still a secret.
        if hashed is not None:
            if not isinstance(hashed, str) or not _SHA256_HEX.fullmatch(hashed):
                raise self.fail("token_sha256", "must be 64 hex digits (sha256sum of the token)")
            return bytes.fromhex(hashed)
        if plain is not None:
            if not isinstance(plain, str) or not plain.strip():
                raise self.fail("token", "must be a non-empty string")
            if plain != plain.strip():
                raise self.fail("token", "must not start or end with white space")
            return hashlib.sha256(plain.encode()).digest()
        return None

    def text(self, key: str) -> str | None:
        value = self.table.get(key)
        if value is None:
            return None
        if not isinstance(value, str) or not value.strip():
            raise self.fail(key, "must be a non-empty string")
        return value

    def texts(self, key: str) -> tuple[str, ...]:
        value = self.table.get(key)
        if value is None:
            return ()
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not all(
            isinstance(item, str) and item.strip() for item in value
        ):
            raise self.fail(key, "must be a list of non-empty strings")
        return tuple(value)

    def number(
        self, key: str, *, minimum: float, inclusive: bool, integer: bool = False
    ) -> float | None:
        value = self.table.get(key)
        if value is None:
            return None
        kind = "a whole number" if integer else "a number"
        bound = f"{'≥' if inclusive else '>'} {minimum:g}"
        if isinstance(value, bool) or not isinstance(value, int | Decimal):
            raise self.fail(key, f"must be {kind} {bound}, got {type(value).__name__}")
        if integer and not isinstance(value, int):
            raise self.fail(key, f"must be {kind} {bound}, got {value}")
        number = float(value)
        if not math.isfinite(number) or number < minimum or (not inclusive and number == minimum):
            raise self.fail(key, f"must be {kind} {bound}, got {value}")
        return number

    def decimal(self, key: str) -> Decimal | None:
        value = self.table.get(key)
        if value is None:
            return None
        # A string keeps every digit as written ("0.0025"), like a TOML float does here.
        if isinstance(value, str):
            try:
                value = Decimal(value.strip())
            except ArithmeticError:
                raise self.fail(key, f"must be a number of US dollars ≥ 0, got {value!r}") from None
        if isinstance(value, bool) or not isinstance(value, int | Decimal):
            raise self.fail(key, f"must be a number of US dollars ≥ 0, got {type(value).__name__}")
        amount = Decimal(value)
        if not amount.is_finite() or amount < 0:
            raise self.fail(key, f"must be a number of US dollars ≥ 0, got {value}")
        return amount


def _where(source: str) -> str:
    return f"RERANK_CALLERS_FILE {source}" if source else "RERANK_CALLERS_FILE"


def _error(source: str, name: str, key: str | None, problem: str) -> CallersFileError:
    subject = f"caller {name!r}" if key is None else f"caller {name!r}, key {key!r}"
    return CallersFileError(f"{_where(source)}: {subject} {problem}")


def _parse_error(source: str, text: str, exc: tomllib.TOMLDecodeError) -> CallersFileError:
    """tomllib's message (which has the line and column, never the text) plus the caller
    whose table the line falls in, when it falls in one."""
    message = str(exc)
    position = _PARSE_POSITION.search(message)
    caller = key = None
    if position is not None:
        lines = text.splitlines()[: int(position.group(1))]
        for line in lines:
            if header := _TABLE_HEADER.match(line):
                caller = header.group(1).strip()
        if lines and (assignment := _LINE_KEY.match(lines[-1])):
            key = assignment.group(1)
    within = ""
    if caller:
        within = f" in caller {caller!r}" + (f", key {key!r}" if key else "")
    return CallersFileError(f"{_where(source)}: is not valid TOML{within}: {message}")


class CallerRegistry:
    """The directory in force, and its reload from the file (on SIGHUP).

    A reload swaps the whole directory at once; a call already past authentication keeps the
    `Caller` it was given. A file that cannot be used on reload is logged and the directory
    in force stays.
    """

    def __init__(self, path: str | None, unnamed_tokens: Iterable[str] = ()) -> None:
        self._path = path
        self._unnamed = frozenset(unnamed_tokens)
        self.directory = load_directory(path, self._unnamed)

    def reload(self) -> bool:
        """Re-read the file; True when the new directory is in force."""
        if self._path is None:
            return False
        try:
            directory = load_directory(self._path, self._unnamed)
        except CallersFileError as exc:
            logger.error("callers not reloaded, the previous ones stay: %s", exc)
            return False
        self.directory = directory
        logger.info(
            "callers reloaded from %s: %d named caller(s)", self._path, len(directory.callers)
        )
        return True
