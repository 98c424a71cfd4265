"""AuthInterceptor hands back the same handler object on every call (an interceptor outside it
may keep its own wrapping of each), whoever calls: named, unnamed or refused."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from rerank.server.callers import CallerRegistry
from rerank.server.interceptors import HEALTH_METHODS, AuthInterceptor

RERANK = "/rerank.v1.RerankService/Rerank"


@dataclass(frozen=True)
class Details:
    method: str
    invocation_metadata: tuple[tuple[str, str], ...]


async def behaviour(request: Any, context: Any) -> Any:
    return None


HANDLER = grpc.unary_unary_rpc_method_handler(behaviour)


async def continuation(details: Any) -> Any:
    return HANDLER


def interceptor(tmp_path: Path) -> AuthInterceptor:
    path = tmp_path / "callers.toml"
    path.write_text('[callers.a]\ntoken = "tok-a"\n[callers.b]\ntoken = "tok-b"\n')
    return AuthInterceptor(CallerRegistry(str(path), ["legacy"]), HEALTH_METHODS)


async def handler_for(auth: AuthInterceptor, method: str, token: str | None) -> Any:
    metadata = () if token is None else (("authorization", f"Bearer {token}"),)
    return await auth.intercept_service(continuation, Details(method, metadata))  # type: ignore[arg-type]


async def test_every_call_of_a_method_gets_the_same_handler(tmp_path: Path) -> None:
    auth = interceptor(tmp_path)
    named = {await handler_for(auth, RERANK, token) for token in ("tok-a", "tok-b", "tok-a")}
    assert len(named) == 1
    (wrapper,) = named
    assert wrapper is not HANDLER  # it names the caller, from the call's own context
    # A caller without a name runs the handler as it is.
    assert await handler_for(auth, RERANK, "legacy") is HANDLER
    # Refusals too: one per shape, whatever was presented.
    refusals = {await handler_for(auth, RERANK, token) for token in (None, "nope", "tok-")}
    assert len(refusals) == 1
    assert refusals != named
    reflection = "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"
    assert await handler_for(auth, reflection, "x") is await handler_for(auth, reflection, None)
    # Open methods pass untouched.
    assert await handler_for(auth, "/grpc.health.v1.Health/Check", None) is HANDLER
