"""The RerankService servicer and its one translator between protos and domain values.

Proto messages stop here: below this module there are only `rerank.server.domain` values.
Errors are raised as `rerank.server.errors` and turned into statuses by the interceptor in
`rerank.server.interceptors`; a BatchRerank's requests each fail alone, so there the servicer
turns each one's error into its `google.rpc.Status` through the same table
(`rerank.server.status.rich_status`).
"""

from __future__ import annotations

import asyncio
import math
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import grpc
from google.protobuf import struct_pb2
from google.rpc import code_pb2, status_pb2

from rerank.contract import NotJsonError, from_struct
from rerank.server.admission import Admission
from rerank.server.caller_limits import CallerLimitsReranker
from rerank.server.calls import CallRecord, close_call, current_call, note_batch, open_call
from rerank.server.domain import (
    FREE,
    Caller,
    DocumentKind,
    JsonObject,
    Limits,
    ModelInfo,
    Ranked,
    RerankOutcome,
    RerankQuery,
    Warning,
    caller_metadata,
    check_request,
    final_ranking,
    on_behalf_of,
)
from rerank.server.errors import (
    FieldViolation,
    InvalidRequest,
    NotANamedCaller,
    RerankError,
    UpstreamTimeout,
)
from rerank.server.interceptors import current_caller, log_failure, report_incident
from rerank.server.limits import DailyUsage, bucket_size
from rerank.server.metrics import Metrics
from rerank.server.status import rich_status
from rerank.v1 import rerank_service_pb2 as pb
from rerank.v1 import rerank_service_pb2_grpc as pb_grpc

_WARNING_TYPE_TO_PROTO = {
    "unsupported": pb.Warning.TYPE_UNSUPPORTED,
    "compatibility": pb.Warning.TYPE_COMPATIBILITY,
    "other": pb.Warning.TYPE_OTHER,
    "deprecated": pb.Warning.TYPE_DEPRECATED,
}
# The answer to a request without documents: nothing ranked, nothing asked, nothing billed.
_NOTHING_TO_RANK = RerankOutcome(ranking=(), usage=FREE)
# A batch's requests stop this share of the call's time before its deadline (at most
# _MAX_ANSWER_RESERVE seconds), so that the answer, with the requests already done, still
# reaches the caller in time; past the deadline gRPC would deliver nothing at all.
_ANSWER_SHARE = 0.1
_MAX_ANSWER_RESERVE = 1.0


@dataclass(frozen=True)
class BatchLimits:
    """How BatchRerank runs, from `Settings`."""

    max_requests: int
    """Most requests one batch may hold."""
    parallelism: int
    """Requests of one batch answered at once."""


class RerankServicer(pb_grpc.RerankServiceServicer):
    """Validates each call, hands it to a `Reranker` on behalf of its caller, and answers in
    proto. `reranker` is the caller-limits layer, which also answers GetUsage."""

    def __init__(
        self,
        reranker: CallerLimitsReranker,
        *,
        limits: Limits,
        admission: Admission,
        default_model: str,
        upstream_timeout: float,
        batch: BatchLimits,
        metrics: Metrics | None = None,
    ) -> None:
        self._metrics = metrics or Metrics.disabled()
        self._reranker = reranker
        self._limits = limits
        self._admission = admission
        self._default_model = default_model
        self._upstream_timeout = upstream_timeout
        self._batch = batch

    async def Rerank(
        self, request: pb.RerankRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.RerankResponse:
        return await self._answer(request, self._timeout(context))

    async def BatchRerank(
        self, request: pb.BatchRerankRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.BatchRerankResponse:
        requests = request.requests
        if len(requests) > self._batch.max_requests:
            raise InvalidRequest(
                [
                    FieldViolation(
                        "requests",
                        f"holds {len(requests)} requests; at most {self._batch.max_requests} "
                        "allowed",
                    )
                ]
            )
        loop = asyncio.get_running_loop()
        stop_at = loop.time() + self._batch_time(context)
        results: list[pb.BatchRerankResult] = [pb.BatchRerankResult() for _ in requests]
        # A few workers take the requests in turn: at most `parallelism` in flight, without a
        # task per request waiting for its turn.
        turns = iter(enumerate(requests))

        # Each request is noted as a call of its own (the parts below note into the record in
        # their context), and the batch's record sums them when all are answered.
        call = current_call()
        notes = [
            CallRecord(call.request_id if call else "", caller=call.caller if call else None)
            for _ in requests
        ]

        async def worker() -> None:
            for position, item in turns:
                noting = open_call(notes[position])
                try:
                    left = stop_at - loop.time()
                    await self._answer_into(results[position], position, item, left)
                finally:
                    close_call(noting)

        async with asyncio.TaskGroup() as workers:
            for _ in range(min(self._batch.parallelism, len(requests))):
                workers.create_task(worker())
        if call is not None:
            note_batch(call, notes)
        return pb.BatchRerankResponse(results=results)

    async def _answer_into(
        self, result: pb.BatchRerankResult, position: int, request: pb.RerankRequest, left: float
    ) -> None:
        """Answer one request of a batch into `result`: its response, or the status a Rerank
        would have failed with (the same table, the same details)."""
        what = f"BatchRerank requests[{position}]"
        code = grpc.StatusCode.OK
        try:
            if left <= 0:
                raise UpstreamTimeout("the call's deadline came before this request's turn")
            result.response.CopyFrom(await self._answer(request, min(self._upstream_timeout, left)))
        except RerankError as error:
            code, status = rich_status(error)
            log_failure(what, code, error)
            result.error.CopyFrom(status)
        except Exception:
            code = grpc.StatusCode.INTERNAL
            result.error.CopyFrom(
                status_pb2.Status(code=code_pb2.INTERNAL, message=report_incident(what))
            )
        self._metrics.batch_request(code)

    async def _answer(self, request: pb.RerankRequest, timeout: float) -> pb.RerankResponse:
        """Answer one RerankRequest within `timeout` seconds, holding an admission place, and
        note what it did in the current call's record."""
        call = current_call()
        if call is not None:
            call.documents = len(request.documents)
            call.top_n = request.top_n if request.HasField("top_n") else None
        with self._admission.admit(request.ByteSize()):
            query = query_from_proto(request, self._default_model, self._limits)
            check_request(query, self._limits)
            if call is not None:
                call.model = query.model  # once valid: a slug of at most 128 characters
            if (caller := current_caller()) is not None:
                query = on_behalf_of(query, caller)
            self._metrics.documents(len(query.documents))
            if query.documents:
                outcome = await self._reranker.rerank(query, timeout=timeout)
            else:
                # Nothing to rank, nothing to count; but a model the caller may not use is
                # refused here too.
                self._reranker.check_model(query)
                outcome = _NOTHING_TO_RANK
            if call is not None:
                call.cached = outcome.cached
                call.cost = outcome.usage.cost
            ranking = final_ranking(outcome.ranking, len(query.documents), query.top_n)
            return response_to_proto(request, query.model, ranking, outcome)

    async def ListModels(
        self, request: pb.ListModelsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.ListModelsResponse:
        with self._admission.admit(0):
            models = await self._reranker.list_models(timeout=self._timeout(context))
        caller = current_caller()
        # A named caller sees the models it may use.
        return pb.ListModelsResponse(
            models=[model_to_proto(m) for m in models if caller is None or caller.may_use(m.id)]
        )

    async def GetUsage(
        self, request: pb.GetUsageRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.GetUsageResponse:
        caller = current_caller()
        if caller is None:
            raise NotANamedCaller(
                "only a named caller (a table of the server's RERANK_CALLERS_FILE) has a "
                "usage to tell; this call's caller has no name"
            )
        return usage_to_proto(caller, await self._reranker.usage(caller))

    def _timeout(self, context: grpc.aio.ServicerContext[Any, Any]) -> float:
        """The configured upstream timeout, or less when the caller's deadline is nearer."""
        remaining: float | None = context.time_remaining()
        if remaining is None:
            return self._upstream_timeout
        return min(self._upstream_timeout, remaining)

    def _batch_time(self, context: grpc.aio.ServicerContext[Any, Any]) -> float:
        """Seconds a batch's requests may run: the call's time less the reserve for sending
        the answer; unbounded without a deadline (each request still has the upstream
        timeout)."""
        remaining: float | None = context.time_remaining()
        if remaining is None:
            return math.inf
        return remaining - min(remaining * _ANSWER_SHARE, _MAX_ANSWER_RESERVE)


def query_from_proto(request: pb.RerankRequest, default_model: str, limits: Limits) -> RerankQuery:
    """Translate a RerankRequest, raising `InvalidRequest` for what cannot be translated:
    documents without content, mixed kinds, oversized documents, non-finite numbers."""
    violations: list[FieldViolation] = []
    kind: DocumentKind | None = None
    texts: list[str] = []
    objects: list[JsonObject] = []
    for position, document in enumerate(request.documents):
        field = f"documents[{position}]"
        which = document.WhichOneof("content")
        if which is None:
            violations.append(FieldViolation(field, "must set 'text' or 'object'"))
            continue
        if kind is None:
            kind = which
        elif which != kind:
            violations.append(
                FieldViolation(
                    field,
                    f"is {which!r} but documents[0] is {kind!r}; one request holds one kind",
                )
            )
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
    """`struct` as JSON (`rerank.contract.from_struct`); what JSON cannot hold joins
    `violations`, so that one answer names every bad field."""
    try:
        return from_struct(struct, path)
    except NotJsonError as error:
        violations.extend(FieldViolation(v.path, v.description) for v in error.violations)
        return {}


def response_to_proto(
    request: pb.RerankRequest,
    model: str,
    ranking: Sequence[Ranked],
    outcome: RerankOutcome,
) -> pb.RerankResponse:
    """Build the RerankResponse; each ranked document is the request's own message, so
    callers get back exactly what they sent."""
    response = pb.RerankResponse(
        ranking=[
            pb.RankedDocument(
                original_index=item.index,
                score=item.score,
                document=request.documents[item.index],
            )
            for item in ranking
        ],
        model=model,
        id=f"rr_{uuid.uuid4().hex}",
        warnings=[warning_to_proto(w) for w in outcome.warnings],
        cached=outcome.cached,
    )
    metadata = caller_metadata(outcome)
    if metadata is not None:
        response.provider_metadata.update(metadata)
    return response


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
    return pb.Warning(
        type=_WARNING_TYPE_TO_PROTO[warning.type],
        feature=warning.feature,
        details=warning.details,
        message=warning.message,
        setting=warning.setting,
    )


def model_to_proto(model: ModelInfo) -> pb.Model:
    return pb.Model(
        id=model.id,
        name=model.name,
        description=model.description,
        provider=model.provider,
        pricing=dict(model.pricing or {}),
    )
