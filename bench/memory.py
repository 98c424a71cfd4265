"""Memory a heavy caller can count on: RSS growth per in-flight call of 1,000 documents.

A fresh server (one worker, result cache off) in front of a mock gateway that holds every
call `HOLD_MS` before answering. Two calls of the same shape warm the server up; then its RSS
is read, `calls` calls are sent at once, and the server's RSS is sampled every `SAMPLE_S`
until the first answer comes back. Every call is held by the mock meanwhile, so the highest
sample over the baseline, divided by `calls`, is what one call in flight holds: the growth per
in-flight call. Both ways: with `return_documents` false, and with every document echoed
(`top_n` unset, so the answer holds all 1,000). The peak (VmHWM) once every answer has gone
adds what building and sending the answers took.

Each measurement gets its own server, so one's allocations are not the next one's baseline.
The figures are divided by the request's bytes (the serialized RerankRequest) for the goal:
at most 3× without the documents, 4× with them.

A third way holds BatchRerank calls instead, each of `BATCH_REQUESTS` such requests with every
document echoed: more requests than run at once (the server's batch parallelism, 8), so the
figure per byte of the batch shows what its waiting requests and built answers hold besides
those in flight. It is what the admission limit counts a batch as: a Rerank of as many bytes.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from bench import _workload
from bench._procfs import memory_kib
from bench._services import Service
from rerank.contract import MAX_RESPONSE_BYTES
from rerank.v1 import rerank_service_pb2 as pb

DOCUMENTS = 1000
#: Requests of one BatchRerank in the "batch" way: four times the server's batch parallelism.
BATCH_REQUESTS = 32
BATCH_METHOD = "/rerank.v1.RerankService/BatchRerank"
#: How long the mock holds each call: long enough for every call to arrive and be sampled.
HOLD_MS = 3000
SAMPLE_S = 0.02
CALL_TIMEOUT_S = 60.0
API_KEY = "bench"


@dataclass(frozen=True)
class Held:
    """One measurement: `calls` in flight at once, each as `mode` asks."""

    mode: str  # "lean" (return_documents false), "echoed", or "batch" (BatchRerank, echoed)
    calls: int
    request_bytes: int
    text_bytes: int
    baseline_kib: int
    held_kib: int
    peak_kib: int
    samples: int
    first_answer_s: float

    def as_dict(self) -> dict[str, Any]:
        per_call = (self.held_kib - self.baseline_kib) * 1024 / self.calls
        peak = (self.peak_kib - self.baseline_kib) * 1024 / self.calls
        return {
            "mode": self.mode,
            "calls": self.calls,
            "request_bytes": self.request_bytes,
            "text_bytes": self.text_bytes,
            "baseline_kib": self.baseline_kib,
            "held_kib": self.held_kib,
            "peak_kib": self.peak_kib,
            "samples": self.samples,
            "first_answer_s": self.first_answer_s,
            "held_bytes_per_call": per_call,
            "held_per_request_byte": per_call / self.request_bytes,
            "peak_bytes_per_call": peak,
            "peak_per_request_byte": peak / self.request_bytes,
        }


def _calls(mode: str, calls: int, label: str) -> list[bytes]:
    """`calls` serialized requests of the method `mode` calls: a RerankRequest each, or for
    "batch" a BatchRerankRequest of BATCH_REQUESTS echoed ones (a repeated field's entries
    concatenated are the message)."""
    if mode != "batch":
        return _requests(mode, calls, label)
    requests = _requests("echoed", calls * BATCH_REQUESTS, label)
    return [
        b"".join(
            pb.BatchRerankRequest(requests=[pb.RerankRequest.FromString(r)]).SerializeToString()
            for r in requests[first : first + BATCH_REQUESTS]
        )
        for first in range(0, len(requests), BATCH_REQUESTS)
    ]


def _answered(mode: str, answer: bytes) -> bool:
    """Whether `answer` is what a call of `mode` asks: every document ranked, echoed or not."""
    if mode == "batch":
        results = pb.BatchRerankResponse.FromString(answer).results
        rankings = [r.response.ranking for r in results]
        if len(rankings) != BATCH_REQUESTS:
            return False
    else:
        rankings = [pb.RerankResponse.FromString(answer).ranking]
    return all(
        len(ranking) == DOCUMENTS and ranking[0].HasField("document") == (mode != "lean")
        for ranking in rankings
    )


def _requests(mode: str, calls: int, label: str) -> list[bytes]:
    """`calls` serialized requests of DOCUMENTS documents, each with its own query (`label`
    and a number, so no two share a gateway call or a cache entry), all documents returned or
    none."""
    base = pb.RerankRequest(
        model=_workload.MODEL,
        documents=[pb.Document(text=text) for text in _workload.documents(DOCUMENTS)],
    )
    if mode == "lean":
        base.return_documents = False
    prefix = base.SerializeToString()
    out = []
    for number in range(calls):
        query = pb.RerankRequest(query=f"{_workload.QUERY} ({label} {mode} {number})")
        out.append(prefix + query.SerializeToString())  # fields may come in any order
    return out


async def _hold(target: str, pid: int, mode: str, calls: int) -> Held:
    options = [
        ("grpc.max_send_message_length", 256 * 1024 * 1024),
        ("grpc.max_receive_message_length", MAX_RESPONSE_BYTES),
    ]
    warm_up, requests = _calls(mode, 2, "warm-up"), _calls(mode, calls, "held")
    async with grpc.aio.insecure_channel(target, options=options) as channel:
        rerank = channel.unary_unary(BATCH_METHOD if mode == "batch" else _workload.RERANK_METHOD)
        await asyncio.gather(*(rerank(r, timeout=CALL_TIMEOUT_S) for r in warm_up))
        baseline = memory_kib(pid)[0]
        started = time.monotonic()
        pending = [asyncio.ensure_future(rerank(r, timeout=CALL_TIMEOUT_S)) for r in requests]
        samples: list[int] = []
        first = asyncio.ensure_future(asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED))
        while not first.done():
            samples.append(memory_kib(pid)[0])
            await asyncio.wait([first], timeout=SAMPLE_S)
        first_answer = time.monotonic() - started
        answers = await asyncio.gather(*pending)
    if not all(_answered(mode, answer) for answer in answers):
        raise RuntimeError(f"a {mode} call was not answered as asked")
    text = sum(len(t.encode()) for t in _workload.documents(DOCUMENTS))
    if mode == "batch":
        text *= BATCH_REQUESTS
    return Held(
        mode=mode,
        calls=calls,
        request_bytes=len(requests[0]),
        text_bytes=text,
        baseline_kib=baseline,
        held_kib=max(samples),
        peak_kib=memory_kib(pid)[1],
        samples=len(samples),
        first_answer_s=first_answer,
    )


async def measure(
    calls: tuple[int, ...], batches: tuple[int, ...], out: Path, name: str
) -> list[dict[str, Any]]:
    """Each mode at each number of calls in flight (for "batch", of `batches`), on a fresh
    server every time."""
    rows: list[dict[str, Any]] = []
    with Service(
        "mock gateway (holding)",
        "rerank.mock_gateway",
        [
            *("--host", "127.0.0.1", "--port", "0"),
            *("--log-level", "warning", "--latency-ms", str(HOLD_MS)),
        ],
        r"mock gateway listening on (http://\S+)/v4/ai",
        out / f"{name}-memory-mock.log",
    ) as mock:
        ways = [(mode, count) for count in calls for mode in ("lean", "echoed")]
        ways += [("batch", count) for count in batches]
        for mode, count in ways:
            with Service(
                f"rerank server (memory, {mode}, {count})",
                "rerank.server",
                [
                    *("--host", "127.0.0.1", "--port", "0", "--workers", "1"),
                    *("--gateway-url", f"{mock.address}/v4/ai"),
                ],
                r"rerank server listening on (\S+:\d+)",
                out / f"{name}-memory-server-{mode}-{count}.log",
                env={
                    "AI_GATEWAY_API_KEY": API_KEY,
                    "RERANK_GRACE_PERIOD": "2",
                    "RERANK_CACHE_MAX_BYTES": "0",
                    # Every call its own connection to the gateway, none queued for one.
                    "RERANK_MAX_CONNECTIONS": str(max(100, 2 * count)),
                },
            ) as server:
                held = (await _hold(server.address, server.pid, mode, count)).as_dict()
            rows.append(held)
            print(
                f"memory {mode:>6} calls={count:>3}: "
                f"{held['held_bytes_per_call'] / 1024:7.0f} KiB per call in flight "
                f"= {held['held_per_request_byte']:.2f}× the request "
                f"({held['request_bytes'] / 1024:.0f} KiB); peak "
                f"{held['peak_per_request_byte']:.2f}×",
                flush=True,
            )
    return rows
