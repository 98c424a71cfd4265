"""The RerankService servicer: each method takes the call's record and the request's bytes,
and answers with the response message, in domain values in between (`_translate`).

Errors are raised, and the door makes them statuses; a BatchRerank's requests each fail alone,
so their errors become `google.rpc.Status`es here, through the same table. The decoded message
of a request (up to 64 MiB) is let go at once (docs/design/memory.md).
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import grpc
from google.rpc import code_pb2, status_pb2
from opentelemetry import trace
from opentelemetry.trace import Span, Tracer

from rerank.server._admission import Admission
from rerank.server._caller_limits import CallerLimitsReranker
from rerank.server._calls import CallRecord, close_call, note_batch, open_call
from rerank.server._domain import FREE, Limits, RerankOutcome, check_request, on_behalf_of
from rerank.server._errors import (
    FieldViolation,
    InvalidRequest,
    NotANamedCaller,
    RerankError,
    UpstreamTimeout,
)
from rerank.server._metrics import Metrics
from rerank.server._pipeline import Handler
from rerank.server._status import log_failure, report_incident, rich_status
from rerank.server._tracing import BATCH_REQUEST_SPAN, child_span, end_span
from rerank.server._translate import (
    Page,
    RememberedMetadata,
    decoded,
    model_to_proto,
    query_from_bytes,
    response_to_proto,
    sent_documents,
    usage_to_proto,
)
from rerank.v1 import rerank_service_pb2 as pb

# The answer to a request without documents: nothing ranked, nothing asked, nothing billed.
_NOTHING_TO_RANK = RerankOutcome(ranking=(), usage=FREE)
# A batch's requests stop this share of the call's time (at most _MAX_ANSWER_RESERVE s) before
# its deadline, so that the answer still reaches the caller: past it gRPC delivers nothing.
_ANSWER_SHARE = 0.1
_MAX_ANSWER_RESERVE = 1.0


@dataclass(frozen=True)
class BatchLimits:
    max_requests: int
    parallelism: int


SERVICE_NAME: str = pb.DESCRIPTOR.services_by_name["RerankService"].full_name


class RerankServicer:
    """Validates each call, hands it to `reranker` (the caller-limits layer, which also answers
    GetUsage) on behalf of its caller, and answers in proto."""

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
        tracer: Tracer | None = None,
    ) -> None:
        self._metrics = metrics or Metrics.disabled()
        self._tracer = tracer or trace.NoOpTracer()
        self._reranker = reranker
        self._limits = limits
        self._admission = admission
        self._default_model = default_model
        self._upstream_timeout = upstream_timeout
        self._batch = batch
        self._metadata_wire = RememberedMetadata()

    def methods(self) -> Mapping[str, Handler]:
        """The methods by name (a test checks that every method of the contract is here)."""
        return {
            "Rerank": self.rerank,
            "BatchRerank": self.batch_rerank,
            "ListModels": self.list_models,
            "GetUsage": self.get_usage,
        }

    async def rerank(self, call: CallRecord, request: bytes) -> pb.RerankResponse:
        return await self._answer(call, request, self._timeout(call), request_bytes=len(request))

    async def batch_rerank(self, call: CallRecord, request: bytes) -> pb.BatchRerankResponse:
        requests = decoded(pb.BatchRerankRequest, request).requests
        if len(requests) > self._batch.max_requests:
            most = f"holds {len(requests)} requests; at most {self._batch.max_requests} allowed"
            raise InvalidRequest([FieldViolation("requests", most)])
        # The batch's bytes are counted once for all its requests, as a Rerank's are; each
        # request in flight then takes a call place of its own.
        with self._admission.hold(len(request)):
            return await self._answer_all(call, requests, self._batch_time(call))

    async def _answer_all(
        self, call: CallRecord, requests: Sequence[pb.RerankRequest], seconds: float
    ) -> pb.BatchRerankResponse:
        """Answer a batch's `requests` within `seconds`, `parallelism` workers taking them in
        turn; each is noted as a call of its own, which the batch's record sums."""
        loop = asyncio.get_running_loop()
        stop_at = loop.time() + seconds
        results: list[pb.BatchRerankResult] = [pb.BatchRerankResult() for _ in requests]
        turns = iter(enumerate(requests))
        notes = [CallRecord(call.request_id, caller=call.caller) for _ in requests]

        async def worker() -> None:
            for position, item in turns:
                note = notes[position]
                noting = open_call(note)
                # A span per request, so that what it did is told from the other requests'.
                span = child_span(self._tracer, BATCH_REQUEST_SPAN)
                try:
                    with trace.use_span(span, end_on_exit=True, record_exception=False):
                        left = stop_at - loop.time()
                        await self._answer_into(note, results[position], position, item, left, span)
                finally:
                    close_call(noting)

        async with asyncio.TaskGroup() as workers:
            for _ in range(min(self._batch.parallelism, len(requests))):
                workers.create_task(worker())
        note_batch(call, notes)
        return pb.BatchRerankResponse(results=results)

    async def _answer_into(
        self,
        note: CallRecord,
        result: pb.BatchRerankResult,
        position: int,
        request: pb.RerankRequest,
        left: float,
        span: Span,
    ) -> None:
        """Answer one request of a batch into `result`: its response, or the status a Rerank
        would have failed with; and say which on its `span`."""
        what = f"BatchRerank requests[{position}]"
        code = grpc.StatusCode.OK
        reason: str | None = None
        try:
            if left <= 0:
                raise UpstreamTimeout("the call's deadline came before this request's turn")
            timeout = min(self._upstream_timeout, left)
            # Serialized at its turn, to be answered as a Rerank's bytes are.
            data = request.SerializeToString()
            result.response.CopyFrom(await self._answer(note, data, timeout, request_bytes=0))
        except RerankError as error:
            code, status = rich_status(error)
            reason = error.reason
            log_failure(what, code, error)
            result.error.CopyFrom(status)
        except Exception:
            code = grpc.StatusCode.INTERNAL
            result.error.CopyFrom(
                status_pb2.Status(code=code_pb2.INTERNAL, message=report_incident(what, note))
            )
        self._metrics.batch_request(code)
        if span.is_recording():  # as a server span says a call's outcome
            attributes: dict[str, str | int | bool] = {
                "rerank.batch.index": position,
                "rerank.documents": len(request.documents),
            }
            end_span(span, attributes, code, reason)

    async def _answer(
        self, call: CallRecord, request: bytes, timeout: float, *, request_bytes: int
    ) -> pb.RerankResponse:
        """Answer one serialized RerankRequest within `timeout` seconds, admitted with
        `request_bytes` (0 for a batch's request: the batch counted them); note it in `call`."""
        with self._admission.admit(request_bytes):
            query, echo = query_from_bytes(request, self._default_model, self._limits, call)
            check_request(query, self._limits)
            call.model = query.model  # once valid: a slug of at most 128 characters
            if call.caller is not None:
                query = on_behalf_of(query, call.caller)
            self._metrics.documents(len(query.documents))
            if query.documents:
                outcome = await self._reranker.rerank(query, timeout=timeout)
            else:
                # Nothing to rank; but a model the caller may not use is refused here too.
                self._reranker.check_model(query)
                outcome = _NOTHING_TO_RANK
            call.cached = outcome.cached
            call.cost = outcome.usage.cost
            sent = sent_documents(query, request) if echo and outcome.ranking else None
            return response_to_proto(
                query.model, outcome.ranking, outcome, sent, self._metadata_wire
            )

    async def list_models(self, call: CallRecord, request: bytes) -> pb.ListModelsResponse:
        page = Page.of(decoded(pb.ListModelsRequest, request))
        with self._admission.admit(0):
            models = await self._reranker.list_models(timeout=self._timeout(call))
        caller = call.caller
        usable = [m for m in models if caller is None or caller.may_use(m.id)]
        listed, next_token = page.cut(usable)
        return pb.ListModelsResponse(
            models=[model_to_proto(m) for m in listed], next_page_token=next_token
        )

    async def get_usage(self, call: CallRecord, request: bytes) -> pb.GetUsageResponse:
        decoded(pb.GetUsageRequest, request)  # asks nothing, but must be one
        caller = call.caller
        if caller is None:
            raise NotANamedCaller(
                "only a named caller (a table of the server's RERANK_CALLERS_FILE) has a "
                "usage to tell; this call's caller has no name"
            )
        return usage_to_proto(caller, await self._reranker.usage(caller))

    def _timeout(self, call: CallRecord) -> float:
        if call.deadline is None:
            return self._upstream_timeout
        return min(self._upstream_timeout, max(call.deadline - time.monotonic(), 0.0))

    def _batch_time(self, call: CallRecord) -> float:
        """Seconds a batch's requests may run: the call's time less the answer's reserve."""
        if call.deadline is None:
            return math.inf
        remaining = max(call.deadline - time.monotonic(), 0.0)
        return remaining - min(remaining * _ANSWER_SHARE, _MAX_ANSWER_RESERVE)
