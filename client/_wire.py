"""The one translator between Python values and the rerank.v1 protobuf messages."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from google.protobuf import struct_pb2

from rerank.v1 import rerank_service_pb2 as pb

from ._models import Document, ModelInfo, RankedDocument, RerankResult, Warning, WarningType

# JSON numbers travel as doubles in a Struct; integers up to 2**53 are exact there, which is
# also where JavaScript's JSON.stringify stops printing them as integers.
_MAX_SAFE_INTEGER = 2**53

_WARNING_TYPES: dict[int, WarningType] = {
    pb.Warning.TYPE_UNSUPPORTED: "unsupported",
    pb.Warning.TYPE_COMPATIBILITY: "compatibility",
    pb.Warning.TYPE_OTHER: "other",
}


def _to_value(value: Any, path: str) -> struct_pb2.Value:
    out = struct_pb2.Value()
    # bool before int and float: bool is an int in Python but a JSON boolean on the wire.
    if value is None:
        out.null_value = struct_pb2.NULL_VALUE
    elif isinstance(value, bool):
        out.bool_value = value
    elif isinstance(value, int | float):
        out.number_value = float(value)
    elif isinstance(value, str):
        out.string_value = value
    elif isinstance(value, Mapping):
        out.struct_value.CopyFrom(to_struct(value, path))
    elif isinstance(value, Sequence) and not isinstance(value, bytes | bytearray):
        out.list_value.values.extend(
            _to_value(item, f"{path}[{i}]") for i, item in enumerate(value)
        )
    else:
        raise TypeError(f"{path}: {type(value).__name__} is not a JSON value")
    return out


def to_struct(mapping: Mapping[str, Any], path: str = "value") -> struct_pb2.Struct:
    """Build a `google.protobuf.Struct` from a JSON-like mapping.

    Raises:
        TypeError: for a non-string key or a value JSON cannot hold, naming where it is.
    """
    out = struct_pb2.Struct()
    for key, value in mapping.items():
        if not isinstance(key, str):
            raise TypeError(f"{path}: key {key!r} is not a string")
        out.fields[key].CopyFrom(_to_value(value, f"{path}.{key}"))
    return out


def from_value(value: struct_pb2.Value) -> Any:
    """Turn a `google.protobuf.Value` into plain Python, integral numbers back into `int`."""
    kind = value.WhichOneof("kind")
    if kind == "number_value":
        number = value.number_value
        if number.is_integer() and abs(number) <= _MAX_SAFE_INTEGER:
            return int(number)
        return number
    if kind == "string_value":
        return value.string_value
    if kind == "bool_value":
        return value.bool_value
    if kind == "struct_value":
        return from_struct(value.struct_value)
    if kind == "list_value":
        return [from_value(item) for item in value.list_value.values]
    return None  # null_value, or unset (which JSON can only say as null)


def from_struct(struct: struct_pb2.Struct) -> dict[str, Any]:
    """Turn a `google.protobuf.Struct` into a dict (see `from_value` for numbers)."""
    return {key: from_value(value) for key, value in struct.fields.items()}


def _to_document(document: object, index: int) -> pb.Document:
    if isinstance(document, str):
        return pb.Document(text=document)
    if isinstance(document, Mapping):
        return pb.Document(object=to_struct(document, f"documents[{index}]"))
    raise TypeError(f"documents[{index}]: expected str or mapping, got {type(document).__name__}")


def build_rerank_request(
    query: str,
    documents: Sequence[str] | Sequence[Mapping[str, Any]],
    *,
    model: str,
    top_n: int | None,
    provider_options: Mapping[str, Any] | None,
    bypass_cache: bool = False,
) -> pb.RerankRequest:
    """Build a `RerankRequest`; the server, not this function, validates its content.

    Raises:
        TypeError: for something that cannot be put into the message at all (a document that
            is neither text nor a mapping, a non-JSON value inside one, a bare string as
            `documents`).
    """
    # A str is itself a Sequence[str]: without this check "abc" would become three documents.
    if isinstance(documents, str | bytes):
        raise TypeError("documents must be a sequence of documents, not a single string")
    request = pb.RerankRequest(
        model=model,
        query=query,
        documents=[_to_document(document, i) for i, document in enumerate(documents)],
        bypass_cache=bypass_cache,
    )
    if top_n is not None:
        request.top_n = top_n
    if provider_options is not None:
        request.provider_options.CopyFrom(to_struct(provider_options, "provider_options"))
    return request


def _from_document(document: pb.Document) -> Document:
    if document.WhichOneof("content") == "object":
        return from_struct(document.object)
    return document.text


def parse_rerank_response(response: pb.RerankResponse) -> RerankResult:
    """Turn a `RerankResponse` into a `RerankResult`."""
    return RerankResult(
        ranking=tuple(
            RankedDocument(
                original_index=entry.original_index,
                score=entry.score,
                document=_from_document(entry.document),
            )
            for entry in response.ranking
        ),
        model=response.model,
        id=response.id,
        cached=response.cached,
        warnings=tuple(
            Warning(
                # TYPE_UNSPECIFIED is never sent; a newer server's unknown type is still a
                # remark, so both read as "other" rather than failing the whole call.
                type=_WARNING_TYPES.get(warning.type, "other"),
                feature=warning.feature,
                details=warning.details,
                message=warning.message,
            )
            for warning in response.warnings
        ),
        provider_metadata=(
            from_struct(response.provider_metadata)
            if response.HasField("provider_metadata")
            else None
        ),
    )


def parse_list_models_response(response: pb.ListModelsResponse) -> list[ModelInfo]:
    """Turn a `ListModelsResponse` into `ModelInfo`s, in the gateway's order."""
    return [
        ModelInfo(
            id=model.id,
            name=model.name,
            description=model.description,
            provider=model.provider,
            pricing=dict(model.pricing),
        )
        for model in response.models
    ]
