"""The pipeline names a call's caller from what it presented: a named token's caller, nobody
for an unnamed token, a refusal for anything else."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from opentelemetry import trace

from rerank.server._callers import CallerRegistry
from rerank.server._errors import Unauthenticated
from rerank.server._logs import AccessLog
from rerank.server._pipeline import Pipeline

RERANK = "rerank.v1.RerankService/Rerank"


class NoCertificate:
    def auth_context(self) -> dict[str, list[bytes]]:
        return {}


def pipeline(tmp_path: Path) -> Pipeline:
    path = tmp_path / "callers.toml"
    path.write_text('[callers.a]\ntoken = "tok-a"\n[callers.b]\ntoken = "tok-b"\n')
    registry = CallerRegistry(str(path), ["legacy"])
    return Pipeline(trace.NoOpTracer(), AccessLog(), registry)


def caller_of(calls: Pipeline, token: str | None) -> Any:
    authorization = None if token is None else f"Bearer {token}"
    caller = calls.identify(RERANK, authorization, NoCertificate())
    return None if caller is None else caller.name


def test_a_token_names_its_caller_or_nobody_and_anything_else_is_refused(
    tmp_path: Path,
) -> None:
    calls = pipeline(tmp_path)
    assert [caller_of(calls, token) for token in ("tok-a", "tok-b", "tok-a")] == ["a", "b", "a"]
    # A caller without a name runs as nobody.
    assert caller_of(calls, "legacy") is None
    # Refusals, whatever was presented.
    for token in (None, "nope", "tok-"):
        with pytest.raises(Unauthenticated):
            caller_of(calls, token)
    with pytest.raises(Unauthenticated):  # another scheme than Bearer
        calls.identify(RERANK, "Basic tok-a", NoCertificate())
