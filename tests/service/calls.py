"""What the service tests send and read back: the seed request and its variations, the mock
gateway's faults, the rich error details of a failed call, and the access records of calls."""

from __future__ import annotations

from typing import Any

import grpc
import pytest
from google.protobuf import struct_pb2
from google.rpc import status_pb2

from rerank.server._logs import ACCESS_LOGGER
from rerank.v1 import rerank_service_pb2 as pb
from tests.conftest import SEED_DOCUMENTS, SEED_MODEL, SEED_QUERY

MESSAGE_LIMIT = [
    ("grpc.max_send_message_length", 64 * 1024 * 1024),
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
]


def struct(value: dict[str, Any]) -> struct_pb2.Struct:
    message = struct_pb2.Struct()
    message.update(value)
    return message


def seed_request(**changes: Any) -> pb.RerankRequest:
    request = pb.RerankRequest(
        model=SEED_MODEL,
        query=SEED_QUERY,
        documents=[pb.Document(text=text) for text in SEED_DOCUMENTS],
        top_n=2,
    )
    for name, value in changes.items():
        if value is None:
            request.ClearField(name)
        elif name == "provider_options":
            request.provider_options.CopyFrom(struct(value))
        elif name == "documents":
            del request.documents[:]
            request.documents.extend(value)
        else:
            setattr(request, name, value)
    return request


def fault(**spec: Any) -> dict[str, Any]:
    """providerOptions that make the mock gateway inject a fault (see mock_gateway)."""
    return {"mockGateway": spec}


def status_details(error: grpc.aio.AioRpcError) -> status_pb2.Status:
    for key, value in error.trailing_metadata() or ():
        if key == "grpc-status-details-bin":
            return status_pb2.Status.FromString(value)
    raise AssertionError("no rich status details")


def unpacked(error: grpc.aio.AioRpcError, kind: type) -> Any:
    for holder in status_details(error).details:
        if holder.Is(kind.DESCRIPTOR):
            message = kind()
            holder.Unpack(message)
            return message
    return None


def access_records(caplog: pytest.LogCaptureFixture) -> list[dict[str, Any]]:
    return [r.fields for r in caplog.records if r.name == ACCESS_LOGGER]  # type: ignore[attr-defined]
