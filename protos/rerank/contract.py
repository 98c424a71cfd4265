"""What both sides of `rerank.v1` share beyond the generated messages: the one codec between
`google.protobuf.Struct` and JSON values, the one mapping between `ErrorReason` and the
`ErrorInfo.reason` strings on the wire, and the limits the client and the server both apply.

It lives beside the contract, not in the server, so that the client can use it without
depending on the server, and so that both read a Struct (and a reason) the same way.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from google.protobuf import struct_pb2

from rerank.v1.rerank_service_pb2 import ErrorReason

MAX_SAFE_INTEGER: Final = 2**53
"""Integral doubles up to this are exact; JavaScript's JSON.stringify prints them as integers.
A Struct number beyond it is left a float: no longer an integer anyone meant."""

MAX_MESSAGE_BYTES: Final = 64 * 1024 * 1024
"""The largest request message the server receives, and the client sends, by default (64 MiB).
The server accepts 1,000 documents of 64 KiB, so gRPC's 4 MiB default is too small."""

MAX_DOCUMENTS: Final = 10_000
"""The most documents one request may hold by default (Cohere's hard limit)."""

RANKED_DOCUMENT_OVERHEAD: Final = 21
"""Bytes one `RankedDocument` of a response adds, at most, to its document's own encoding in
the request: the entry's tag (1) and length (at most 5), `original_index` (1 + at most 5) and
`score` (1 + 8). The document's bytes (tag, length, content) are the same in both messages."""

RESPONSE_EXTRAS_BYTES: Final = 1024 * 1024
"""The most a `RerankResponse` holds besides its ranking: the model, the id, the usage, and the
gateway's warnings and provider metadata (an answer whose own are larger is refused as the
gateway's protocol error rather than sent)."""

_GRPC_MAX_MESSAGE_BYTES: Final = 2**31 - 1


BATCH_RESULT_OVERHEAD: Final = 12
"""Bytes a `BatchRerankResult` adds around its `RerankResponse` in a `BatchRerankResponse`: the
result's tag and length (at most 1 + 5) and the response's (at most 1 + 5)."""


def max_response_bytes(
    max_request_bytes: int, max_documents: int, max_batch_requests: int = 1
) -> int:
    """The largest answer a request the server accepted can produce: a `RerankResponse` with
    every document of the request echoed (at most `max_request_bytes` of them), each with its
    ranked entry's overhead, and the extras; or a `BatchRerankResponse` of up to
    `max_batch_requests` such answers, whose documents together are still at most
    `max_request_bytes`. The server's send limit is this, so an answer is never refused on the
    way back after the gateway has been paid for it; a client's receive limit must be too."""
    per_answer = max_documents * RANKED_DOCUMENT_OVERHEAD + RESPONSE_EXTRAS_BYTES
    if max_batch_requests > 1:
        per_answer += BATCH_RESULT_OVERHEAD
    return min(_GRPC_MAX_MESSAGE_BYTES, max_request_bytes + max_batch_requests * per_answer)


MAX_BATCH_REQUESTS: Final = 100
"""The most requests one BatchRerank may hold by default."""


MAX_RESPONSE_BYTES: Final = max_response_bytes(MAX_MESSAGE_BYTES, MAX_DOCUMENTS, MAX_BATCH_REQUESTS)
"""The largest answer of a server with the default limits, a BatchRerank's (184 MiB; a Rerank's
is at most 65.2 MiB): what the client receives."""


ERROR_DOMAIN: Final = "rerank.v1"
"""The `ErrorInfo.domain` of every error this service sends."""

_REASON_PREFIX: Final = "ERROR_REASON_"


def wire_reason(reason: ErrorReason.ValueType) -> str:
    """The `ErrorInfo.reason` string of `reason`: its name without the `ERROR_REASON_` prefix
    that buf's lint asks of enum values, e.g. `OVERLOADED` (the strings the service sent
    before the enum existed, unchanged)."""
    return ErrorReason.Name(reason).removeprefix(_REASON_PREFIX)


def error_reason(wire: str) -> ErrorReason.ValueType:
    """The `ErrorReason` an `ErrorInfo.reason` string names; ERROR_REASON_UNSPECIFIED for one
    the contract does not define (another domain's, or a newer server's)."""
    try:
        return ErrorReason.Value(_REASON_PREFIX + wire)
    except ValueError:
        return ErrorReason.ERROR_REASON_UNSPECIFIED


@dataclass(frozen=True)
class JsonViolation:
    """One place in a value that JSON cannot hold."""

    path: str
    """Where, e.g. `documents[2].object.when`."""
    description: str
    """What is wrong there, e.g. `must be a finite number`."""


class NotJsonError(TypeError):
    """A value JSON cannot hold, listing every place that is wrong (not only the first)."""

    def __init__(self, violations: Iterable[JsonViolation]) -> None:
        self.violations = tuple(violations)
        super().__init__("; ".join(f"{v.path}: {v.description}" for v in self.violations))


def to_struct(mapping: Mapping[str, Any], path: str = "value") -> struct_pb2.Struct:
    """Build a Struct from a JSON-like mapping.

    Raises:
        NotJsonError: for non-string keys, values JSON has no form for (sets, bytes, objects)
            and non-finite numbers, each named by its path.
    """
    violations: list[JsonViolation] = []
    out = _struct_from(mapping, path, violations)
    if violations:
        raise NotJsonError(violations)
    return out


def from_struct(struct: struct_pb2.Struct, path: str = "value") -> dict[str, Any]:
    """A Struct as the JSON object a JavaScript caller would have sent: integral numbers up to
    `MAX_SAFE_INTEGER` become ints (the gateway is JavaScript; JSON.stringify writes `2020`).

    Raises:
        NotJsonError: for NaN or an infinity, which a Struct can carry and JSON cannot.
    """
    violations: list[JsonViolation] = []
    out = _dict_from(struct, path, violations)
    if violations:
        raise NotJsonError(violations)
    return out


def from_value(value: struct_pb2.Value, path: str = "value") -> Any:
    """One `google.protobuf.Value` as plain Python (see `from_struct`)."""
    violations: list[JsonViolation] = []
    out = _python_from(value, path, violations)
    if violations:
        raise NotJsonError(violations)
    return out


def _struct_from(
    mapping: Mapping[Any, Any], path: str, violations: list[JsonViolation]
) -> struct_pb2.Struct:
    out = struct_pb2.Struct()
    for key, value in mapping.items():
        if not isinstance(key, str):
            violations.append(JsonViolation(path, f"key {key!r} is not a string"))
            continue
        out.fields[key].CopyFrom(_value_from(value, f"{path}.{key}", violations))
    return out


def _value_from(value: Any, path: str, violations: list[JsonViolation]) -> struct_pb2.Value:
    out = struct_pb2.Value()
    # bool before int and float: bool is an int in Python but a JSON boolean on the wire.
    if value is None:
        out.null_value = struct_pb2.NULL_VALUE
    elif isinstance(value, bool):
        out.bool_value = value
    elif isinstance(value, int | float):
        if not math.isfinite(value):
            violations.append(JsonViolation(path, "must be a finite number"))
        else:
            out.number_value = float(value)
    elif isinstance(value, str):
        out.string_value = value
    elif isinstance(value, Mapping):
        out.struct_value.CopyFrom(_struct_from(value, path, violations))
    elif isinstance(value, Sequence) and not isinstance(value, bytes | bytearray):
        out.list_value.values.extend(
            _value_from(item, f"{path}[{i}]", violations) for i, item in enumerate(value)
        )
    else:
        violations.append(JsonViolation(path, f"{type(value).__name__} is not a JSON value"))
    return out


def _dict_from(
    struct: struct_pb2.Struct, path: str, violations: list[JsonViolation]
) -> dict[str, Any]:
    return {
        key: _python_from(value, f"{path}.{key}", violations)
        for key, value in struct.fields.items()
    }


def _python_from(value: struct_pb2.Value, path: str, violations: list[JsonViolation]) -> Any:
    kind = value.WhichOneof("kind")
    if kind == "string_value":
        return value.string_value
    if kind == "number_value":
        number = value.number_value
        if not math.isfinite(number):
            violations.append(JsonViolation(path, "must be a finite number"))
            return None
        if number.is_integer() and abs(number) <= MAX_SAFE_INTEGER:
            return int(number)
        return number
    if kind == "bool_value":
        return value.bool_value
    if kind == "struct_value":
        return _dict_from(value.struct_value, path, violations)
    if kind == "list_value":
        return [
            _python_from(item, f"{path}[{i}]", violations)
            for i, item in enumerate(value.list_value.values)
        ]
    # null_value, or a Value with nothing set: both mean JSON null.
    return None
