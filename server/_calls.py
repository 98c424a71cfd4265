"""One call's state, from its arrival to its answer: the `CallRecord` the pipeline
(`rerank.server._pipeline`) makes for it and hands down, and what each part notes in it.

The pipeline fills in who is calling and until when; each part then notes what it alone knows,
where it happens: the servicer the model and the document count, the window layer how many
windows, the retry layer each upstream attempt, the pipeline the ErrorInfo reason. The access-log
line and the server span are written from it when the call ends.

The servicer is handed the record. The window and retry layers are reached through the
`Reranker` interface, which carries queries, not calls, and run in tasks the cache and the
windows start; every log record written during the call carries its request id too. So the
record is also the current call of a context variable, the server's only one: each task copies
the context it was started from, so the record follows the call there. Outside a call (a layer
used on its own, in a test) `current_call()` is None and nothing is noted.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextvars import ContextVar, Token
from dataclasses import dataclass
from decimal import Decimal

from rerank.server._domain import Caller


@dataclass(slots=True)
class CallRecord:
    """One call's state and facts. Never a token, a query or a document."""

    request_id: str
    #: The named caller; None for a caller without a name, and whenever authentication is off.
    caller: Caller | None = None
    #: When the caller stops waiting (`time.monotonic()`); None without a deadline.
    deadline: float | None = None
    model: str | None = None
    documents: int | None = None
    top_n: int | None = None
    #: The gateway team the caller asked to be billed to (the AI Gateway door's
    #: `x-vercel-ai-gateway-team`); the adapter sends it instead of the server's own team.
    team: str | None = None
    #: Gateway calls made for this call: every window's every attempt, retries included.
    upstream_attempts: int = 0
    #: Windows the documents were split into (1 for a call that fits one; 0 when answered
    #: without the gateway).
    windows: int = 0
    cached: bool | None = None
    #: What the gateway charged for this call (exact), when it said; None when unknown.
    cost: Decimal | None = None
    #: The ErrorInfo reason of a failed call (`UPSTREAM_RATE_LIMITED`, ...).
    reason: str | None = None
    #: The incident id of an unexpected failure, as in its traceback's log line.
    incident: str | None = None


_CURRENT: ContextVar[CallRecord | None] = ContextVar("rerank_call", default=None)


def current_call() -> CallRecord | None:
    """The record of the call being served in this context, if any."""
    return _CURRENT.get()


def open_call(record: CallRecord) -> Token[CallRecord | None]:
    """Make `record` the current call's; pass the token to `close_call` when it ends."""
    return _CURRENT.set(record)


def close_call(token: Token[CallRecord | None]) -> None:
    _CURRENT.reset(token)


def note_batch(call: CallRecord, requests: Sequence[CallRecord]) -> None:
    """Note in `call`, a BatchRerank's record, what its requests did together, each noted as a
    call of its own: their documents, gateway attempts and windows summed; the cost of the
    answered ones summed (unknown when any of theirs is); `cached` when every answered one was;
    the model when every valid one named the same. A failed request was charged nothing."""
    answered = [r for r in requests if r.cached is not None]
    call.documents = sum(r.documents or 0 for r in requests)
    call.upstream_attempts = sum(r.upstream_attempts for r in requests)
    call.windows = sum(r.windows for r in requests)
    call.cached = all(r.cached for r in answered) if answered else None
    costs = [r.cost for r in answered]
    call.cost = None if None in costs else sum((c for c in costs if c is not None), Decimal(0))
    models = {r.model for r in requests if r.model is not None}
    call.model = models.pop() if len(models) == 1 else None
