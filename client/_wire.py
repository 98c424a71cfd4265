"""The one translator between Python values and the rerank.v1 protobuf messages."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from decimal import Decimal, InvalidOperation
from typing import Any

import grpc

from rerank.contract import from_struct, to_struct
from rerank.v1 import rerank_service_pb2 as pb

from ._exceptions import ServerError, from_status
from ._models import (
    BatchItem,
    CallerUsage,
    Document,
    ModelInfo,
    RankedDocument,
    RerankRequest,
    RerankResult,
    Usage,
    Warning,
    WarningType,
)

_WARNING_TYPES: dict[int, WarningType] = {
    pb.Warning.TYPE_UNSUPPORTED: "unsupported",
    pb.Warning.TYPE_COMPATIBILITY: "compatibility",
    pb.Warning.TYPE_OTHER: "other",
    pb.Warning.TYPE_DEPRECATED: "deprecated",
}


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
    return_documents: bool = True,
) -> pb.RerankRequest:
    """Build a `RerankRequest`; the server, not this function, validates its content.

    Raises:
        TypeError: for something that cannot be put into the message at all (a document that
            is neither text nor a mapping, a bare string as `documents`; a non-JSON value
            inside one is `rerank.contract.NotJsonError`, a TypeError naming every place).
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
    if not return_documents:
        # Only when asked: a request as before this field existed, byte for byte, otherwise.
        request.return_documents = False
    if provider_options is not None:
        request.provider_options.CopyFrom(to_struct(provider_options, "provider_options"))
    return request


def build_batch_request(requests: Iterable[RerankRequest]) -> pb.BatchRerankRequest:
    """Build a `BatchRerankRequest`, each request as `build_rerank_request` builds it.

    Raises:
        TypeError: as `build_rerank_request`, the message prefixed with `requests[i]`; or for
            an element that is not a `RerankRequest`.
    """
    batch = pb.BatchRerankRequest()
    for position, request in enumerate(requests):
        if not isinstance(request, RerankRequest):
            raise TypeError(
                f"requests[{position}]: expected a RerankRequest, got {type(request).__name__}"
            )
        try:
            built = build_rerank_request(
                request.query,
                request.documents,
                model=request.model,
                top_n=request.top_n,
                provider_options=request.provider_options,
                bypass_cache=request.bypass_cache,
                return_documents=request.return_documents,
            )
        except TypeError as exc:
            raise TypeError(f"requests[{position}]: {exc}") from exc
        batch.requests.append(built)
    return batch


def parse_batch_response(
    response: pb.BatchRerankResponse, batch: pb.BatchRerankRequest
) -> list[BatchItem]:
    """Turn the `BatchRerankResponse` to `batch` into one `BatchItem` per request, in order.

    Raises:
        ServerError: when the server answered another number of results than the requests
            sent: which answers which could not be told.
    """
    expected = len(batch.requests)
    if len(response.results) != expected:
        raise ServerError(
            grpc.StatusCode.UNKNOWN,
            f"the server answered {len(response.results)} results to {expected} requests",
        )
    items = []
    for result, request in zip(response.results, batch.requests, strict=True):
        which = result.WhichOneof("result")
        if which == "response":
            try:
                items.append(BatchItem(result=parse_rerank_response(result.response, request)))
            except ServerError as error:  # this answer broke the contract; the others stand
                items.append(BatchItem(error=error))
        elif which == "error":
            items.append(BatchItem(error=from_status(result.error)))
        else:
            # Neither (a newer server's kind of result, or a broken one): this request's
            # answer is unknown, the others still stand.
            items.append(
                BatchItem(
                    error=ServerError(
                        grpc.StatusCode.UNKNOWN, "the server sent neither a response nor an error"
                    )
                )
            )
    return items


def _from_document(document: pb.Document) -> Document:
    if document.WhichOneof("content") == "object":
        return from_struct(document.object)
    return document.text


def parse_rerank_response(response: pb.RerankResponse, request: pb.RerankRequest) -> RerankResult:
    """Turn the `RerankResponse` to `request` into a `RerankResult`.

    An entry without its document (the request said `return_documents` false) gets it from
    `request`: the same value the server would have echoed, which never crossed the wire.

    Raises:
        ServerError: for an entry without its document whose `original_index` is not one of
            the request's documents (a server breaking the contract).
    """
    return RerankResult(
        ranking=tuple(
            RankedDocument(
                original_index=entry.original_index,
                score=entry.score,
                document=_from_document(
                    entry.document
                    if entry.HasField("document")
                    else _sent(request, entry.original_index)
                ),
            )
            for entry in response.ranking
        ),
        model=response.model,
        id=response.id,
        cached=response.cached,
        usage=_usage(response.usage) if response.HasField("usage") else None,
        warnings=tuple(
            Warning(
                # TYPE_UNSPECIFIED is never sent; a newer server's unknown type is still a
                # remark, so both read as "other" rather than failing the whole call.
                type=_WARNING_TYPES.get(warning.type, "other"),
                feature=warning.feature,
                details=warning.details,
                message=warning.message,
                setting=warning.setting,
            )
            for warning in response.warnings
        ),
        provider_metadata=(
            from_struct(response.provider_metadata)
            if response.HasField("provider_metadata")
            else None
        ),
    )


def _sent(request: pb.RerankRequest, index: int) -> pb.Document:
    if not 0 <= index < len(request.documents):
        raise ServerError(
            grpc.StatusCode.UNKNOWN,
            f"the server ranked original_index {index}, outside the "
            f"{len(request.documents)} documents sent",
        )
    return request.documents[index]


def _usage(usage: pb.Usage) -> Usage:
    """The typed usage; an empty or unreadable cost is unknown (None), never zero."""
    try:
        cost = Decimal(usage.cost) if usage.cost else None
    except InvalidOperation:
        cost = None
    return Usage(cost=cost, upstream_calls=usage.upstream_calls)


def parse_list_models_response(response: pb.ListModelsResponse) -> list[ModelInfo]:
    """Turn a `ListModelsResponse` (one page) into `ModelInfo`s, in the gateway's order."""
    return [
        ModelInfo(
            id=model.id,
            name=model.name,
            description=model.description,
            provider=model.provider,
            pricing=dict(model.pricing),
            documents_per_upstream_call=model.documents_per_upstream_call,
        )
        for model in response.models
    ]


def parse_get_usage_response(response: pb.GetUsageResponse) -> CallerUsage:
    """Turn a `GetUsageResponse` into a `CallerUsage`; unset limits are None."""
    return CallerUsage(
        caller=response.caller,
        day=response.day,
        spent_usd=Decimal(response.spent_usd or "0"),
        calls=response.calls,
        refused=response.refused,
        daily_budget_usd=(
            Decimal(response.daily_budget_usd) if response.HasField("daily_budget_usd") else None
        ),
        requests_per_second=(
            response.requests_per_second if response.HasField("requests_per_second") else None
        ),
        burst=response.burst if response.HasField("burst") else None,
        max_concurrent_calls=(
            response.max_concurrent_calls if response.HasField("max_concurrent_calls") else None
        ),
        models=tuple(response.models),
    )
