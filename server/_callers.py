"""`RERANK_CALLERS_FILE` (docs/callers.md) read by pydantic models into a
`CallerDirectory`. Every mistake is one line naming the caller and the key, never a token or a
digest."""

from __future__ import annotations

import hashlib
import logging
import re
import tomllib
from collections.abc import Iterable, Mapping
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, model_validator

from rerank.server._credentials import CallerDirectory, CallerEntry, CallersFileError, directory_of
from rerank.server._domain import Caller
from rerank.server._limits import CallerLimits

logger = logging.getLogger(__name__)

#: A name reaches the gateway (`gateway.user`), logs and metric labels: kept plain.
_NAME = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
_TABLE_HEADER = re.compile(r"^\s*\[\s*callers\s*\.\s*\"?([^\]\"]+)\"?\s*\]")
# Only the key of a line is ever read for a message, never what follows its `=`.
_LINE_KEY = re.compile(r"^\s*([A-Za-z0-9_-]+)\s*=")


def load_directory(path: str | None, unnamed_tokens: Iterable[str] = ()) -> CallerDirectory:
    """Read `path` (when set) and build the directory with `unnamed_tokens` beside it."""
    if path is None:
        return directory_of((), unnamed_tokens)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise CallersFileError(f"{_where(path)}: cannot read it: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise CallersFileError(f"{_where(path)}: is not UTF-8 text") from None
    return directory_of(parse_callers(text, path), unnamed_tokens, source=path)


def _number(value: object) -> object:
    """Only what TOML writes as a number (a Decimal here, or an int), never a string."""
    if isinstance(value, bool) or not isinstance(value, int | Decimal):
        raise ValueError(value)
    return value


Number = Annotated[Decimal, BeforeValidator(_number)]
Text = Annotated[str, Field(strict=True, pattern=r"\S")]
Texts = Annotated[tuple[Text, ...], BeforeValidator(lambda v: [v] if isinstance(v, str) else v)]


class _Mistake(ValueError):
    """Keys of a caller's table that do not go together; `key` None names the whole table."""

    def __init__(self, key: str | None, problem: str) -> None:
        super().__init__(problem)
        self.key = key


class _Caller(BaseModel):
    """One `[callers.NAME]` table; each key's doc is what it must be."""

    model_config = ConfigDict(
        extra="forbid", frozen=True, allow_inf_nan=False, use_attribute_docstrings=True
    )

    token_sha256: Annotated[str | None, Field(strict=True, pattern="^[0-9a-fA-F]{64}$")] = None
    """64 hex digits (sha256sum of the token)"""
    token: Annotated[str | None, Field(strict=True, pattern=r"^\S(.*\S)?$")] = None
    """a non-empty string, without white space at either end"""
    requests_per_second: Annotated[Number | None, Field(gt=0)] = None
    """a number > 0"""
    burst: Annotated[Number | None, Field(ge=1)] = None
    """a number ≥ 1"""
    max_concurrent_calls: Annotated[int | None, Field(strict=True, ge=1)] = None
    """a whole number ≥ 1"""
    daily_budget_usd: Annotated[Decimal | None, Field(ge=0)] = None
    """a number of US dollars ≥ 0"""
    models: Texts = ()
    """a list of non-empty strings"""
    cache_scope: Literal["caller", "shared"] = "caller"
    """'caller' or 'shared'"""
    subject: Text | None = None
    """a non-empty string"""
    san: Texts = ()
    """a list of non-empty strings"""

    @model_validator(mode="after")
    def _together(self) -> _Caller:
        if self.token is not None and self.token_sha256 is not None:
            raise _Mistake("token", "set token_sha256 or token, not both")
        if self.token is None and self.token_sha256 is None and not self.subject and not self.san:
            raise _Mistake(None, "cannot be recognised: set token_sha256, token, subject or san")
        if self.burst is not None and self.requests_per_second is None:
            raise _Mistake("burst", "needs requests_per_second (the bucket's refill rate)")
        return self

    def entry(self, name: str) -> CallerEntry:
        rate, burst = self.requests_per_second, self.burst
        limits = CallerLimits(
            requests_per_second=None if rate is None else float(rate),
            burst=None if burst is None else float(burst),
            max_concurrent_calls=self.max_concurrent_calls,
            daily_budget_usd=self.daily_budget_usd,
        )
        plain = None if self.token is None else hashlib.sha256(self.token.encode()).digest()
        return CallerEntry(
            caller=Caller(name, limits, self.models, shared_cache=self.cache_scope == "shared"),
            token_digest=bytes.fromhex(self.token_sha256) if self.token_sha256 else plain,
            subject=self.subject,
            sans=self.san,
        )


class _File(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    callers: Mapping[Annotated[str, Field(pattern=_NAME)], _Caller] = Field(default_factory=dict)


def parse_callers(text: str, source: str = "") -> list[CallerEntry]:
    """The callers of a callers file's text; `source` names the file in errors."""
    try:
        # Decimals for every float, so a budget of 0.0025 is 0.0025, not its binary neighbour.
        document = tomllib.loads(text, parse_float=Decimal)
    except tomllib.TOMLDecodeError as exc:
        within = _within(text, exc)
        raise CallersFileError(f"{_where(source)}: is not valid TOML{within}: {exc}") from None
    try:
        callers = _File.model_validate(document).callers
    except ValidationError as exc:
        raise CallersFileError(f"{_where(source)}: {_one_line(exc)}") from None
    return [table.entry(name) for name, table in callers.items()]


def _one_line(exc: ValidationError) -> str:
    """pydantic's first error as one line naming the caller and the key; never a token."""
    error = exc.errors()[0]
    where = error["loc"]
    if where[0] != "callers":
        return f"unknown top-level key {where[0]!r}; callers go in [callers.NAME]"
    if len(where) == 1:
        return "'callers' must be a table of callers"
    caller, key = f"caller {where[1]!r}", str(where[2]) if len(where) > 2 else None
    mistake = (error.get("ctx") or {}).get("error")
    if key == "[key]":
        rule = "1 to 64 letters, digits, '.', '_' or '-', first a letter or digit"
        return f"{caller} is not a name: {rule}"
    if isinstance(mistake, _Mistake):
        return f"{caller}{'' if mistake.key is None else f', key {mistake.key!r}'} {mistake}"
    if key is None:
        return f"{caller} must be a table ([callers.NAME])"
    if key not in _Caller.model_fields:
        known = ", ".join(_Caller.model_fields)
        return f"{caller}, key {key!r} is not a caller setting; known: {known}"
    given = error["input"]
    shown = given if isinstance(given, int | Decimal) else repr(given)
    shown = "" if key.startswith("token") else f", got {shown}"  # a near-miss is still a secret
    return f"{caller}, key {key!r} must be {_Caller.model_fields[key].description}{shown}"


def _where(source: str) -> str:
    return f"RERANK_CALLERS_FILE {source}" if source else "RERANK_CALLERS_FILE"


def _within(text: str, exc: tomllib.TOMLDecodeError) -> str:
    """The caller (and key) whose table the line tomllib names falls in; never the text."""
    position = re.search(r"at line (\d+)", str(exc))
    lines = text.splitlines()[: int(position.group(1)) if position else 0]
    callers = [found.group(1).strip() for line in lines if (found := _TABLE_HEADER.match(line))]
    key = _LINE_KEY.match(lines[-1]) if lines else None
    if not callers:
        return ""
    return f" in caller {callers[-1]!r}" + (f", key {key.group(1)!r}" if key else "")


class CallerRegistry:
    """The directory in force, and its reload from the file (SIGHUP), swapped whole: a call
    already past authentication keeps the `Caller` it was given."""

    def __init__(self, path: str | None, unnamed_tokens: Iterable[str] = ()) -> None:
        self._path, self._unnamed = path, frozenset(unnamed_tokens)
        self.directory = load_directory(path, self._unnamed)

    def reload(self) -> bool:
        """Re-read the file; True when the new directory is in force."""
        if self._path is None:
            return False
        try:
            self.directory = load_directory(self._path, self._unnamed)
        except CallersFileError as exc:
            logger.error("callers not reloaded, the previous ones stay: %s", exc)
            return False
        count = len(self.directory.callers)
        logger.info("callers reloaded from %s: %d named caller(s)", self._path, count)
        return True
