"""Credentials both ways, never logged. The gateway's, asked for on every call: a fixed key
(`StaticCredential`), or a short-lived token in a file the platform rotates (`OidcTokenFile`;
docs/configuration.md). The callers': `CallerDirectory`, who presents which token or certificate.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import logging
import math
import os
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import orjson

from rerank.server._domain import Caller

logger = logging.getLogger(__name__)

CHECK_INTERVAL = 5.0  # seconds between looks at a token file, however many calls go out
REFRESH_AHEAD = 60.0  # seconds before a token's `exp` its file is read even if unchanged


class Credential(Protocol):
    """Where a gateway request's bearer token (asked for on every request: cheap) and its
    `ai-gateway-auth-method` (`api-key` or `oidc`) come from."""

    @property
    def auth_method(self) -> str: ...

    def bearer_token(self) -> str: ...


@dataclass(frozen=True)
class StaticCredential:
    token: str = field(repr=False)
    auth_method: str = "api-key"

    def bearer_token(self) -> str:
        return self.token


class TokenFileError(Exception):
    """The token file cannot be read, or holds no token (never said)."""


def read_token(path: str) -> str:
    try:
        token = Path(path).read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise TokenFileError(f"cannot read {path}: {exc.strerror}") from exc
    except UnicodeDecodeError as exc:
        raise TokenFileError(f"{path} is not UTF-8 text") from exc
    if not token:
        raise TokenFileError(f"{path} is empty")
    return token


def jwt_expiry(token: str) -> float | None:
    """The `exp` claim of a JWT, unverified (only the gateway can), to know when to look for the
    next token; None when there is none."""
    parts = token.split(".")
    if len(parts) != 3:
        return None
    payload = parts[1]
    try:
        claims = orjson.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (binascii.Error, ValueError):
        return None
    exp = claims.get("exp") if isinstance(claims, dict) else None
    if isinstance(exp, bool) or not isinstance(exp, int | float) or not math.isfinite(exp):
        return None
    return float(exp)


class OidcTokenFile:
    """A token file the platform rewrites, read again when it changed (inode, size or mtime:
    a rename over it, or a write in place), or when its token expires within `refresh_ahead`.
    Unreadable later, the token held stays, with a warning; at construction, `TokenFileError`."""

    auth_method = "oidc"

    def __init__(
        self,
        path: str,
        *,
        check_interval: float = CHECK_INTERVAL,
        refresh_ahead: float = REFRESH_AHEAD,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._path = path
        self._check_interval = check_interval
        self._refresh_ahead = refresh_ahead
        self._clock = clock  # wall-clock time, as `exp` is
        self._identity = self._stat()
        self._token = read_token(path)
        self._expires_at = jwt_expiry(self._token)
        self._warned_about: str | None = None
        self._next_check = clock() + check_interval

    def __repr__(self) -> str:
        return f"OidcTokenFile({self._path!r})"

    def bearer_token(self) -> str:
        now = self._clock()
        if now >= self._next_check:
            self._next_check = now + self._check_interval
            self._refresh(now)
        return self._token

    def _refresh(self, now: float) -> None:
        expiring = self._expires_at is not None and now >= self._expires_at - self._refresh_ahead
        try:
            identity = self._stat()
            if identity == self._identity and not expiring:
                return
            # A small file, rarely read: on the event loop costs less than a thread.
            token = read_token(self._path)
        except TokenFileError as exc:
            logger.warning("OIDC token file: %s; keeping the token read before", exc)
            return
        self._identity = identity
        if token != self._token:
            self._token, self._expires_at = token, jwt_expiry(token)
            logger.info("OIDC token file %s changed: using its new token", self._path)
        elif expiring and self._warned_about != token:
            self._warned_about = token
            assert self._expires_at is not None
            logger.warning(
                "the OIDC token in %s expires in %.0f s and the file holds no newer one",
                self._path,
                self._expires_at - now,
            )

    def _stat(self) -> tuple[int, int, int]:
        try:
            found = os.stat(self._path)
        except OSError as exc:
            raise TokenFileError(f"cannot read {self._path}: {exc.strerror}") from exc
        return found.st_ino, found.st_size, found.st_mtime_ns


@dataclass(frozen=True)
class CallerDirectory:
    """Who is who: bearer-token digests and certificate names to callers (None: a token of
    `RERANK_AUTH_TOKENS`, without a name or limits); `callers` by name."""

    _tokens: tuple[tuple[bytes, Caller | None], ...] = ()
    _subjects: Mapping[str, Caller] = field(default_factory=dict)
    _sans: Mapping[str, Caller] = field(default_factory=dict)
    callers: Mapping[str, Caller] = field(default_factory=dict)

    @property
    def names_by_certificate(self) -> bool:
        return bool(self._subjects or self._sans)

    @property
    def certificate_callers(self) -> tuple[str, ...]:
        named = [*self._subjects.values(), *self._sans.values()]
        return tuple(sorted({caller.name for caller in named}))

    def for_token(self, token: bytes) -> tuple[bool, Caller | None]:
        """(known, caller) for a bearer token. Every digest is compared, in constant time, so
        the time taken tells nothing about which token came close."""
        digest = hashlib.sha256(token).digest()
        known = False
        found: Caller | None = None
        for expected, caller in self._tokens:
            if hmac.compare_digest(digest, expected):
                known, found = True, caller
        return known, found

    def for_certificate(self, subject: str | None, sans: Sequence[str]) -> Caller | None:
        """The caller a client certificate names: by its subject, else its first listed SAN."""
        if subject is not None and (caller := self._subjects.get(subject)) is not None:
            return caller
        for san in sans:
            if (caller := self._sans.get(san)) is not None:
                return caller
        return None


class CallersFileError(Exception):
    """The callers file cannot be used: one line naming the file, the caller and the key."""


@dataclass(frozen=True)
class CallerEntry:
    """A caller of the callers file, with the token digest, subject and SANs that name it."""

    caller: Caller
    token_digest: bytes | None
    subject: str | None
    sans: tuple[str, ...]


def directory_of(
    named: Iterable[CallerEntry], unnamed_tokens: Iterable[str] = (), *, source: str = ""
) -> CallerDirectory:
    """The directory of the callers file's callers (`source` names the file) plus
    `RERANK_AUTH_TOKENS`: the one maker of its lookups. A token, subject or SAN held twice is
    an error naming both holders (never the token)."""
    held: dict[str, dict[Any, Caller]] = {"token": {}, "subject": {}, "san": {}}
    callers: dict[str, Caller] = {}
    for entry in named:
        callers[entry.caller.name] = caller = entry.caller
        keys = [("token", entry.token_digest), ("subject", entry.subject)]
        for key, value in [*keys, *(("san", san) for san in entry.sans)]:
            if value is None or (holder := held[key].setdefault(value, caller)) is caller:
                continue
            said = {"token": "is the same token as", "subject": "is also the subject of"}
            problem = f"{said.get(key, f'{value!r} is also a san of')} caller {holder.name!r}"
            where = f"RERANK_CALLERS_FILE {source}".rstrip()
            raise CallersFileError(f"{where}: caller {caller.name!r}, key {key!r} {problem}")
    unnamed = {hashlib.sha256(token.encode()).digest(): None for token in unnamed_tokens}
    for digest in unnamed.keys() & held["token"].keys():
        raise CallersFileError(
            f"RERANK_AUTH_TOKENS holds the token of caller {held['token'][digest].name!r} of "
            f"{source or 'the file'}: a token names one caller"
        )
    tokens: dict[bytes, Caller | None] = {**held["token"], **unnamed}
    return CallerDirectory(tuple(tokens.items()), held["subject"], held["san"], callers)
