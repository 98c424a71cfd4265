"""The one translator between the contract's protos and `_domain` values: protos stop here."""

from __future__ import annotations

import base64
import dataclasses
import functools
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import TypeVar, cast

import msgspec
from google.protobuf import struct_pb2
from google.protobuf.message import DecodeError

from rerank.contract import RESPONSE_EXTRAS_BYTES, NotJsonError, from_struct
from rerank.server._calls import CallRecord
from rerank.server._domain import (
    Caller,
    DocumentKind,
    JsonObject,
    Limits,
    ModelInfo,
    Ranked,
    RerankOutcome,
    RerankQuery,
    Usage,
    Warning,
    caller_metadata,
    cost_text,
)
from rerank.server._errors import (
    FieldViolation,
    InvalidRequest,
    MalformedRequest,
    UpstreamProtocolError,
)
from rerank.server._limits import DailyUsage, bucket_size
from rerank.v1 import rerank_service_pb2 as pb

#: A request message `decoded` makes from the bytes gRPC received.
Decoded = TypeVar(
    "Decoded", pb.RerankRequest, pb.BatchRerankRequest, pb.ListModelsRequest, pb.GetUsageRequest
)


def decoded(kind: type[Decoded], data: bytes) -> Decoded:
    """The message of type `kind` in `data`, or `MalformedRequest` saying what was wrong."""
    try:
        return kind.FromString(data)
    except DecodeError as exc:
        raise MalformedRequest.of(exc) from None


def query_from_bytes(
    data: bytes, default_model: str, limits: Limits, call: CallRecord | None = None
) -> tuple[RerankQuery, bool]:
    """The query a serialized RerankRequest asks, and whether its answer echoes the documents;
    `call` notes the document count and `top_n` as sent. The decoded message lives only in
    here, so its memory is freed while the call goes on for seconds."""
    request = decoded(pb.RerankRequest, data)
    if call is not None:
        call.documents = len(request.documents)
        call.top_n = request.top_n if request.HasField("top_n") else None
    echo = not request.HasField("return_documents") or request.return_documents
    return query_from_proto(request, default_model, limits), echo


def sent_documents(query: RerankQuery, data: bytes) -> tuple[str, ...] | Sequence[pb.Document]:
    """The request's documents exactly as sent: texts, the query's own strings; objects, the
    request decoded again (a Struct's -0.0 or empty Value would not survive the JSON the query
    holds)."""
    if query.kind == "text":
        return cast(tuple[str, ...], query.documents)
    return decoded(pb.RerankRequest, data).documents


def query_from_proto(request: pb.RerankRequest, default_model: str, limits: Limits) -> RerankQuery:
    """A RerankRequest's query, or `InvalidRequest` naming every field that cannot be one."""
    violations: list[FieldViolation] = []
    objects: list[JsonObject] = []
    texts = [document.text for document in request.documents]
    # Most requests hold texts, none empty (an object's text is), and are smaller than the
    # limit of one document (each of theirs then is too): no document needs a look of its own.
    unchecked = all(texts) and request.ByteSize() <= limits.max_document_bytes
    kind: DocumentKind | None = "text" if unchecked and texts else None
    if not unchecked:
        texts = []
    for position, document in enumerate(() if unchecked else request.documents):
        field = f"documents[{position}]"
        which = document.WhichOneof("content")
        if which is None:
            violations.append(FieldViolation(field, "must set 'text' or 'object'"))
            continue
        if kind is None:
            kind = which
        elif which != kind:
            mixed = f"is {which!r} but documents[0] is {kind!r}; one request holds one kind"
            violations.append(FieldViolation(field, mixed))
            continue
        if document.ByteSize() > limits.max_document_bytes:
            violations.append(
                FieldViolation(field, f"must be at most {limits.max_document_bytes} bytes")
            )
        elif which == "text":
            if not document.text:
                violations.append(FieldViolation(field, "must not be empty"))
            texts.append(document.text)
        else:
            objects.append(_json_object(document.object, f"{field}.object", violations))
    provider_options = None
    if request.HasField("provider_options"):
        provider_options = _json_object(request.provider_options, "provider_options", violations)
        for name, value in provider_options.items():
            if not isinstance(value, dict):
                violations.append(FieldViolation(f"provider_options.{name}", "must be an object"))
    if violations:
        raise InvalidRequest(violations)
    return RerankQuery(
        model=request.model or default_model,
        query=request.query,
        kind=kind or "text",
        documents=tuple(objects) if kind == "object" else tuple(texts),
        top_n=request.top_n if request.HasField("top_n") else None,
        provider_options=provider_options,
        cacheable=not request.bypass_cache,
    )


def _json_object(
    struct: struct_pb2.Struct, path: str, violations: list[FieldViolation]
) -> JsonObject:
    """`struct` as JSON; what JSON cannot hold joins `violations`."""
    try:
        return from_struct(struct, path)
    except NotJsonError as error:
        violations.extend(FieldViolation(v.path, v.description) for v in error.violations)
        return {}


def metadata_wire(metadata: JsonObject) -> bytes:
    """A RerankResponse holding only `metadata` as its provider metadata, serialized; a number
    no double holds is the gateway's `UpstreamProtocolError`."""
    response = pb.RerankResponse()
    try:
        response.provider_metadata.update(metadata)
    except OverflowError:
        raise UpstreamProtocolError(
            "the gateway's provider metadata holds a number beyond a double's range"
        ) from None
    return response.SerializeToString()


class RememberedMetadata:
    """`metadata_wire` remembered for the last `size` distinct provider metadata: the gateway
    sends few (its routing, a cost per size of call). Protobuf fills a Struct from a dict in
    Python (`Struct.update`, ~10 µs for the usual metadata); merging remembered bytes costs a
    sixth of that (0.970x the server CPU per call: docs/performance.md, "A sixth pass").
    Metadata larger than `MAX_REMEMBERED_BYTES` as JSON is converted each time: remembered,
    odd large metadata would hold memory for nothing."""

    MAX_REMEMBERED_BYTES = 1024

    def __init__(self, size: int = 256) -> None:
        self._from_json = functools.lru_cache(maxsize=size)(self._convert)

    def __call__(self, metadata: JsonObject) -> bytes:
        # JSON is the key: a dict is not hashable, and the metadata came from JSON.
        key = msgspec.json.encode(metadata)
        if len(key) > self.MAX_REMEMBERED_BYTES:
            return metadata_wire(metadata)
        return self._from_json(key)

    @staticmethod
    def _convert(key: bytes) -> bytes:
        return metadata_wire(msgspec.json.decode(key))


def response_to_proto(
    model: str,
    ranking: Sequence[Ranked],
    outcome: RerankOutcome,
    sent: tuple[str, ...] | Sequence[pb.Document] | None,
    metadata_to_wire: Callable[[JsonObject], bytes] = metadata_wire,
) -> pb.RerankResponse:
    """The RerankResponse, each ranked document echoed from `sent` (None: none), its provider
    metadata serialized by `metadata_to_wire`. Extras beyond `RESPONSE_EXTRAS_BYTES`, the
    allowance the send limit is sized with, are the gateway's `UpstreamProtocolError`."""
    response = pb.RerankResponse(
        model=model,
        id=f"rr_{random.randbytes(16).hex()}",  # as a request id is made (`Pipeline.arrive`)
        warnings=[warning_to_proto(w) for w in outcome.warnings],
        cached=outcome.cached,
        usage=call_usage_to_proto(outcome.usage),
    )
    metadata = caller_metadata(outcome)
    if metadata is not None:
        response.MergeFromString(metadata_to_wire(metadata))
    extras = response.ByteSize()
    if extras > RESPONSE_EXTRAS_BYTES:
        raise UpstreamProtocolError(
            f"the gateway's warnings and metadata take {extras} bytes; an answer carries at "
            f"most {RESPONSE_EXTRAS_BYTES} besides its ranking"
        )
    if isinstance(sent, tuple):  # texts, written into each entry: no message made and copied
        for item in ranking:
            entry = response.ranking.add(original_index=item.index, score=item.score)
            entry.document.text = sent[item.index]
        return response
    # Each entry built whole, then added: an object copied into an entry in place did not
    # always keep its Struct's fields in the order they came.
    response.ranking.extend(
        pb.RankedDocument(
            original_index=item.index,
            score=item.score,
            document=None if sent is None else sent[item.index],
        )
        for item in ranking
    )
    return response


def call_usage_to_proto(usage: Usage) -> pb.Usage:
    """A call's usage as the contract types it: an unknown cost is the empty string."""
    return pb.Usage(
        cost="" if usage.cost is None else cost_text(usage.cost),
        upstream_calls=usage.upstream_calls,
    )


def usage_to_proto(caller: Caller, usage: DailyUsage) -> pb.GetUsageResponse:
    limits = caller.limits
    response = pb.GetUsageResponse(
        caller=caller.name,
        day=usage.day,
        spent_usd=_dollars(usage.spent_usd),
        calls=usage.calls,
        refused=usage.refused,
        models=caller.models,
    )
    if limits.daily_budget_usd is not None:
        response.daily_budget_usd = _dollars(limits.daily_budget_usd)
    if limits.requests_per_second is not None:
        response.requests_per_second = limits.requests_per_second
        response.burst = bucket_size(limits)
    if limits.max_concurrent_calls is not None:
        response.max_concurrent_calls = limits.max_concurrent_calls
    return response


def _dollars(amount: Decimal) -> str:
    """An exact decimal string without an exponent or trailing zeros: "0.003", "20", "0"."""
    return format(amount.normalize(), "f")


def warning_to_proto(warning: Warning) -> pb.Warning:
    kind = pb.Warning.Type.Value(f"TYPE_{warning.type.upper()}")
    return pb.Warning(**{**dataclasses.asdict(warning), "type": kind})


def model_to_proto(model: ModelInfo) -> pb.Model:
    return pb.Model(
        id=model.id,
        name=model.name,
        description=model.description,
        provider=model.provider,
        pricing=dict(model.pricing or {}),
        documents_per_upstream_call=model.documents_per_upstream_call or 0,
    )


@dataclass(frozen=True)
class Page:
    """Which models a ListModels call asks for (AIP-158): at most `size` (0: all), after the
    model its token names. The token, opaque to callers, is URL-safe base64 of `{offset}:{id}`:
    the next page starts after that model wherever it now is (so models added or removed
    before it neither repeat nor skip one), or, when it is gone, at the offset."""

    size: int
    offset: int = 0
    after: str | None = None

    @classmethod
    def of(cls, request: pb.ListModelsRequest) -> Page:
        size, token = request.page_size, request.page_token
        if size < 0:
            raise InvalidRequest([FieldViolation("page_size", f"must not be negative, got {size}")])
        if not token:
            return cls(size)
        try:
            text = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
            offset_text, _, after = text.partition(":")
            offset = int(offset_text)
        except ValueError:  # not base64 (binascii.Error), not UTF-8, not a number
            offset = -1
        if offset < 1 or not after:
            unknown = FieldViolation("page_token", "is not a next_page_token this service gave")
            raise InvalidRequest([unknown])
        return cls(size, offset, after)

    def cut(self, models: Sequence[ModelInfo]) -> tuple[Sequence[ModelInfo], str]:
        """This page of `models`, and the token of the next page ("" after the last one)."""
        start = min(self.offset, len(models))
        if self.after is not None:
            found = next((i for i, m in enumerate(models) if m.id == self.after), None)
            if found is not None:
                start = found + 1
        end = len(models) if self.size == 0 else min(len(models), start + self.size)
        listed = models[start:end]
        if end >= len(models) or not listed:
            return listed, ""
        token = f"{end}:{listed[-1].id}".encode()
        return listed, base64.urlsafe_b64encode(token).decode().rstrip("=")
