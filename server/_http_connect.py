"""The Connect and gRPC-Web dialect: the service connectrpc's generated app calls, and the
service's errors as Connect's (the codes are gRPC's; the details the same `google.rpc`
messages, each handed to connectrpc as an `Any` of its own runtime)."""

from __future__ import annotations

from typing import Any, Protocol

import grpc
from connectrpc.code import Code
from connectrpc.errors import ConnectError, ErrorDetail
from protobuf.wkt import Any as AnyDetail

from rerank.server._errors import RerankError
from rerank.server._status import ErrorAnswer, rich_status


def connect_code(code: grpc.StatusCode) -> str:
    """Connect's name of a gRPC status code (the same codes, spelled in lower case)."""
    return "canceled" if code is grpc.StatusCode.CANCELLED else code.name.lower()


def connect_error(
    answer: RerankError | ErrorAnswer, code: grpc.StatusCode, message: str
) -> ConnectError:
    """The ConnectError that answers `answer` (`code` and `message` from the one table), with
    the ErrorInfo, BadRequest and RetryInfo a gRPC caller gets."""
    details: list[ErrorDetail] = []
    if isinstance(answer, RerankError):
        # connectrpc packs only its own runtime's messages: a google.protobuf one, as an Any.
        details = [
            ErrorDetail(AnyDetail(type_url=d.type_url, value=d.value))
            for d in rich_status(answer)[1].details
        ]
    return ConnectError(Code(connect_code(code)), message, details)


class Calls(Protocol):
    """Where the Connect service hands each call: the HTTP door."""

    async def connect_call(self, name: str, request: Any, ctx: Any) -> Any: ...


class ConnectService:
    """The service connectrpc's app calls: each method handed, by its name, to the door."""

    def __init__(self, door: Calls) -> None:
        self._door = door

    async def _call(self, request: Any, ctx: Any) -> Any:
        return await self._door.connect_call(ctx.method.name, request, ctx)

    rerank = batch_rerank = list_models = get_usage = _call
