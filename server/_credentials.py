"""The gateway credential, asked for on every call: a fixed key (`StaticCredential`), or a
short-lived token in a file the platform rotates (`OidcTokenFile`; README, "OIDC tokens").
Tokens are never logged.
"""

from __future__ import annotations

import base64
import binascii
import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import orjson

logger = logging.getLogger(__name__)

#: How often an `OidcTokenFile` looks at its file at most, in seconds: one `stat` per interval,
#: however many calls go out.
CHECK_INTERVAL = 5.0
#: How long before a token's `exp` its file is read again even if it looks unchanged.
REFRESH_AHEAD = 60.0


class Credential(Protocol):
    """Where a gateway request's `authorization: Bearer ...` comes from."""

    @property
    def auth_method(self) -> str:
        """Sent as `ai-gateway-auth-method`: `api-key` or `oidc`."""
        ...

    def bearer_token(self) -> str:
        """The token for the request about to be sent. Called on every request: cheap."""
        ...


@dataclass(frozen=True)
class StaticCredential:
    """A credential fixed at start: an API key, or an OIDC token from the environment."""

    token: str = field(repr=False)
    auth_method: str = "api-key"

    def bearer_token(self) -> str:
        return self.token


class TokenFileError(Exception):
    """The token file cannot be read, or holds no token. The message never holds the token."""


def read_token(path: str) -> str:
    """The token in `path`: its text, surrounding whitespace removed."""
    try:
        with open(path, encoding="utf-8") as file:
            token = file.read().strip()
    except OSError as exc:
        raise TokenFileError(f"cannot read {path}: {exc.strerror}") from exc
    except UnicodeDecodeError as exc:
        raise TokenFileError(f"{path} is not UTF-8 text") from exc
    if not token:
        raise TokenFileError(f"{path} is empty")
    return token


def jwt_expiry(token: str) -> float | None:
    """The `exp` claim of a JWT (seconds since the epoch), read without verifying anything (only
    the gateway can), to know when to look for the next token; None when there is none."""
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
    """A token file the platform rewrites, read again when it changed (inode, size or
    modification time: a rename over it, as Kubernetes does, or a write in place), or when the
    token held expires within `refresh_ahead` seconds (in case the new token came without a
    visible change). A file that cannot be read then keeps the token held, with a warning; at
    construction it raises `TokenFileError`.
    """

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
        # Wall-clock time, because `exp` is: one clock for the interval and the expiry.
        self._clock = clock
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
            # A small file, read only when it changed or its token is expiring: reading it on
            # the event loop costs less than handing it to a thread.
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
