"""The gateway credential from a token file: re-read when the file changes and before the token
expires, looked at no more than once per interval, never lost to a file that is briefly gone."""

from __future__ import annotations

import base64
import json
import logging
import os
from pathlib import Path

import pytest

from rerank.server._credentials import (
    OidcTokenFile,
    StaticCredential,
    TokenFileError,
    jwt_expiry,
    read_token,
)
from tests.fake_clock import FakeClock

NOW = 1_900_000_000.0


def jwt(exp: float | None, subject: str = "owner:team:project") -> str:
    """An unsigned JWT with these claims: the credential never verifies, only reads `exp`."""

    def part(value: dict[str, object]) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()

    claims: dict[str, object] = {"sub": subject}
    if exp is not None:
        claims["exp"] = exp
    return f"{part({'alg': 'RS256', 'typ': 'JWT'})}.{part(claims)}.c2lnbmF0dXJl"


def replace_file(path: Path, text: str) -> None:
    """Rewrite `path` the way platforms rotate a mounted token: a new file renamed over it."""
    fresh = path.with_suffix(".new")
    fresh.write_text(text)
    os.replace(fresh, path)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(NOW)


@pytest.fixture
def token_path(tmp_path: Path) -> Path:
    path = tmp_path / "token"
    path.write_text(jwt(NOW + 3600) + "\n")
    return path


def test_the_expiry_is_read_from_the_jwt_without_verifying_it() -> None:
    assert jwt_expiry(jwt(NOW + 60)) == NOW + 60
    assert jwt_expiry(jwt(None)) is None
    assert jwt_expiry("an-opaque-api-key") is None
    assert jwt_expiry("a.!!!not base64!!!.c") is None
    assert jwt_expiry("a." + base64.urlsafe_b64encode(b"[1, 2]").decode() + ".c") is None


def test_the_file_is_looked_at_once_per_interval_at_most(
    token_path: Path, clock: FakeClock
) -> None:
    credential = OidcTokenFile(str(token_path), check_interval=5, clock=clock)
    first = credential.bearer_token()
    assert first == jwt(NOW + 3600)
    replace_file(token_path, jwt(NOW + 7200))
    clock.advance(4.9)
    assert credential.bearer_token() == first  # no stat yet: calls cost a clock read
    clock.advance(0.1)
    assert credential.bearer_token() == jwt(NOW + 7200)


@pytest.mark.parametrize("how", ["renamed over", "written in place", "grown"])
def test_any_change_of_the_file_is_seen(token_path: Path, clock: FakeClock, how: str) -> None:
    credential = OidcTokenFile(str(token_path), check_interval=1, clock=clock)
    new = jwt(NOW + 7200, subject="owner:team:other")
    if how == "renamed over":
        replace_file(token_path, new)
    elif how == "written in place":
        stat = token_path.stat()
        token_path.write_text(new + "\n")
        # Even with the old modification time, the size tells it apart.
        os.utime(token_path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    else:
        token_path.write_text(new + "\n\n")
    clock.advance(1)
    assert credential.bearer_token() == new


def test_an_unchanged_looking_file_is_read_again_before_the_token_expires(
    token_path: Path, clock: FakeClock
) -> None:
    old = jwt(NOW + 100)
    token_path.write_text(old)
    credential = OidcTokenFile(str(token_path), check_interval=1, refresh_ahead=60, clock=clock)
    # The platform writes the new token in place with the same size and modification time:
    # only the coming expiry makes the file worth reading again.
    stat = token_path.stat()
    new = jwt(NOW + 999)
    assert len(new) == len(old)
    token_path.write_text(new)
    os.utime(token_path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    clock.advance(30)  # 70 s left: not yet
    assert credential.bearer_token() == old
    clock.advance(15)  # 55 s left: read it again
    assert credential.bearer_token() == new


def test_an_expiring_token_with_no_newer_one_is_kept_and_warned_about_once(
    token_path: Path, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    token = jwt(NOW + 30)
    token_path.write_text(token)
    credential = OidcTokenFile(str(token_path), check_interval=1, refresh_ahead=60, clock=clock)
    with caplog.at_level(logging.WARNING, logger="rerank.server._credentials"):
        for _ in range(5):
            clock.advance(1)
            assert credential.bearer_token() == token
    (warning,) = caplog.records
    assert "expires in" in warning.getMessage()
    assert token not in caplog.text


def test_a_file_briefly_gone_keeps_the_token_held(
    token_path: Path, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    credential = OidcTokenFile(str(token_path), check_interval=1, clock=clock)
    token = credential.bearer_token()
    token_path.unlink()
    clock.advance(1)
    with caplog.at_level(logging.WARNING, logger="rerank.server._credentials"):
        assert credential.bearer_token() == token
    assert "keeping the token read before" in caplog.text
    token_path.write_text("")  # back, but empty: still not a token
    clock.advance(1)
    assert credential.bearer_token() == token
    replace_file(token_path, "the-next-token")
    clock.advance(1)
    assert credential.bearer_token() == "the-next-token"


def test_a_file_without_a_token_is_refused_at_start(tmp_path: Path) -> None:
    with pytest.raises(TokenFileError, match="cannot read"):
        OidcTokenFile(str(tmp_path / "missing"))
    (tmp_path / "empty").write_text(" \n")
    with pytest.raises(TokenFileError, match="is empty"):
        read_token(str(tmp_path / "empty"))


def test_credentials_never_show_their_token(token_path: Path) -> None:
    assert "sk-" not in repr(StaticCredential("sk-secret"))
    credential = OidcTokenFile(str(token_path))
    assert credential.auth_method == "oidc"
    assert credential.bearer_token() not in repr(credential)
