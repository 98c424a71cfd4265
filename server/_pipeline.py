"""The call pipeline: one pass from a call's arrival to its answer, whatever the transport.

A transport's door (`rerank.server._grpc_door`) takes the call's place and reads its request's
bytes and what travels beside them: the request id, the caller's `authorization`, the trace
context, the time left. It makes the call's record with `arrive` and hands the rest to
`answer`, which, in this order: opens the server span (continuing the caller's W3C trace
context), names the caller (a bearer token, or a client certificate that names one), runs the
method, and writes the access-log line. The door gets back the answer's message, or the error to
answer with (a `RerankError`, or the `ErrorAnswer` of a bug), and writes it as its protocol does.
"""

from __future__ import annotations

import asyncio
import logging
import random
import re
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Protocol

import grpc
from google.protobuf.message import Message
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import Span, SpanKind, Tracer

from rerank.server._callers import CallerRegistry
from rerank.server._calls import CallRecord, close_call, open_call
from rerank.server._domain import Caller
from rerank.server._errors import RerankError, Unauthenticated
from rerank.server._logs import AccessLog
from rerank.server._status import ErrorAnswer, log_failure, report_incident, status_code_for
from rerank.server._tracing import caller_context, end_span, unrecorded_root

logger = logging.getLogger(__name__)

#: A method of the service: the call's record (its one state, handed down: `_calls`) and the
#: request's bytes in, the answer out.
Handler = Callable[[CallRecord, bytes], Awaitable[Message]]

#: A caller's request id is kept when it is 1-128 visible ASCII characters; anything else (too
#: long to be an id) is replaced by a new one.
_REQUEST_ID = re.compile(r"[!-~]{1,128}")
_BEARER = b"Bearer "


class Peer(Protocol):
    """The other end of a connection, as TLS verified it (gRPC's property names)."""

    def auth_context(self) -> Mapping[str, Iterable[bytes]]: ...


#: What `answer` gives back: the answer's message, or the failure to answer with (the answer to
#: a bug tells the caller its incident id, never the exception).
Answer = Message | RerankError | ErrorAnswer


class Pipeline:
    """Runs a call of the service through its span, its caller, its method and its access
    log. `callers` is None when authentication is off: every call's caller is then unnamed."""

    def __init__(
        self,
        tracer: Tracer,
        access_log: AccessLog,
        callers: CallerRegistry | None,
        *,
        traces_exported: bool = True,
    ) -> None:
        self._tracer = tracer
        #: A call without a caller's trace context starts a trace nobody records (its server
        #: span made without the tracer's sampling round: `unrecorded_root`).
        self._roots_unrecorded = not traces_exported
        self.access_log = access_log
        self._callers = callers

    @property
    def authenticates(self) -> bool:
        return self._callers is not None

    @staticmethod
    def arrive(request_id: str | None, seconds_left: float | None) -> CallRecord:
        """The record of a call that arrived with `request_id` (kept when it is one, else a
        new one) and `seconds_left` until its deadline (None: without one)."""
        if request_id is None or not _REQUEST_ID.fullmatch(request_id):
            request_id = random.randbytes(16).hex()  # 128 random bits (uuid4: 122); no syscall
        deadline = None if seconds_left is None else time.monotonic() + seconds_left
        return CallRecord(request_id, deadline=deadline)

    def identify(self, what: str, authorization: str | bytes | None, peer: Peer) -> Caller | None:
        """The named caller of a call to `what` that presented `authorization` (its bearer
        token decides when there is one, even beside a certificate), else the caller its
        client certificate names; None for a token without a name. Raises `Unauthenticated`
        for anyone else. A token, or its digest, is never logged or echoed."""
        assert self._callers is not None, "identify is for a server that authenticates"
        directory = self._callers.directory
        why = "missing or unknown bearer token"
        if authorization is not None:
            presented = authorization.encode() if isinstance(authorization, str) else authorization
            token = presented[len(_BEARER) :] if presented.startswith(_BEARER) else b""
            known, caller = directory.for_token(token)
            if known:
                return caller
        elif directory.names_by_certificate:
            auth = peer.auth_context()
            subjects = list(auth.get("x509_subject", ()))
            sans = [san.decode() for san in auth.get("x509_subject_alternative_name", ())]
            caller = directory.for_certificate(subjects[0].decode() if subjects else None, sans)
            if caller is not None:
                return caller
            why = "no known bearer token, and no caller named by the client certificate"
        logger.warning("%s refused: %s", what, why)
        raise Unauthenticated(
            "missing or unknown bearer token: send 'authorization: Bearer <token>'"
            " (or, with mutual TLS, a client certificate that names a caller)"
        )

    async def answer(
        self,
        method: str,
        handler: Handler,
        call: CallRecord,
        data: bytes,
        authorization: str | bytes | None,
        peer: Peer,
        trace_context: Mapping[str, str] | None,
    ) -> Answer:
        """Answer `call` to `method` (`rerank.v1.RerankService/Rerank`, the span's name and
        the log's method) with `handler`, given the request's bytes `data`."""
        began = time.perf_counter()
        parent = None if trace_context is None else caller_context(trace_context)
        if parent is None and self._roots_unrecorded:
            span = unrecorded_root()
        else:
            span = self._tracer.start_span(method, context=parent, kind=SpanKind.SERVER)
        attached = otel_context.attach(trace.set_span_in_context(span, parent))
        opened = open_call(call)
        code = grpc.StatusCode.OK
        try:
            if self._callers is not None:
                call.caller = self.identify(method, authorization, peer)
            return await handler(call, data)
        except RerankError as error:
            code = status_code_for(error)
            call.reason = error.reason
            if not isinstance(error, Unauthenticated):  # logged with its reason already
                log_failure(method, code, error)
            return error
        except Exception:
            code = grpc.StatusCode.INTERNAL
            return ErrorAnswer(code, report_incident(method, call), ())
        except asyncio.CancelledError:
            code = grpc.StatusCode.CANCELLED  # the caller went away
            raise
        finally:
            close_call(opened)
            otel_context.detach(attached)
            if span.is_recording():
                _end_server_span(span, method, call, code)
            span.end()
            self.access_log.write(
                method, call, code, span.get_span_context(), time.perf_counter() - began
            )


def _end_server_span(span: Span, method: str, call: CallRecord, code: grpc.StatusCode) -> None:
    """The server span's attributes, set once at its end from what the call noted."""
    service, _, rpc_method = method.rpartition("/")
    attributes: dict[str, str | int | bool] = {
        "rpc.system": "grpc",
        "rpc.service": service,
        "rpc.method": rpc_method,
        "rerank.request_id": call.request_id,
        "rerank.upstream_attempts": call.upstream_attempts,
        "rerank.windows": call.windows,
    }
    if call.caller is not None:
        attributes["rerank.caller"] = call.caller.name
    if call.model is not None:
        attributes["rerank.model"] = call.model
    if call.documents is not None:
        attributes["rerank.documents"] = call.documents
    if call.top_n is not None:
        attributes["rerank.top_n"] = call.top_n
    if call.cached is not None:
        attributes["rerank.cached"] = call.cached
    end_span(span, attributes, code, call.reason)
