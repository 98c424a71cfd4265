"""`python -m bench.decode_cost`: the CPU one gateway answer costs to decode and check, two ways.

The gateway adapter turns a rerank answer into a `RerankOutcome` whose ranking is already valid
(`rerank.server._gateway.parse_rerank_body`: msgspec decodes into typed values, then indices are
checked against the documents sent, sorted and cut). The other way is the one it replaced:
orjson into dicts and lists, every value's type checked by hand, then the same checks. Both read
the same realistic answers (every document ranked, best first, full-precision scores, the
gateway's provider metadata), in this one process, alternating in rounds; the figure is this
thread's CPU time per answer, the median of the rounds. Prints one line per answer size.
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from collections.abc import Callable

import orjson

from rerank.server._config import GatewayProtocol
from rerank.server._domain import Ranked, RerankOutcome, best_first
from rerank.server._errors import UpstreamProtocolError
from rerank.server._gateway import parse_rerank_body, rerank_outcome

Decode = Callable[[bytes, int], RerankOutcome]


def realistic_answer(documents: int) -> bytes:
    """A 200 answer ranking every one of `documents`, as the gateway sends one for Cohere."""
    rng = random.Random(documents)
    scores = sorted((rng.random() for _ in range(documents)), reverse=True)
    indices = rng.sample(range(documents), documents)
    return orjson.dumps(
        {
            "ranking": [
                {"index": index, "relevanceScore": score}
                for index, score in zip(indices, scores, strict=True)
            ],
            "providerMetadata": {
                "gateway": {
                    "routing": {"originalModelId": "cohere/rerank-v3.5", "provider": "cohere"},
                    "cost": "0.002",
                },
                "cohere": {"billedUnits": {"searchUnits": 1}},
            },
        }
    )


def with_msgspec(body: bytes, documents: int) -> RerankOutcome:
    return parse_rerank_body(body, GatewayProtocol.V4, document_count=documents)


def with_orjson(body: bytes, documents: int) -> RerankOutcome:
    """The answer decoded by orjson, each value's type checked by hand, then checked as a
    ranking of `documents`; the rest of it read as the adapter reads it (`rerank_outcome`)."""
    data = orjson.loads(body)
    if not isinstance(data, dict) or not isinstance(ranking := data.get("ranking"), list):
        raise UpstreamProtocolError("no ranking")
    items: list[Ranked] = []
    seen: set[int] = set()
    for item in ranking:
        if not isinstance(item, dict):
            raise UpstreamProtocolError("not an object")
        index, score = item.get("index"), item.get("relevanceScore")
        if not isinstance(index, int) or isinstance(index, bool):
            raise UpstreamProtocolError("index")
        if not isinstance(score, int | float) or isinstance(score, bool):
            raise UpstreamProtocolError("score")
        if not 0 <= index < documents or index in seen:
            raise UpstreamProtocolError("out of range or repeated")
        seen.add(index)
        items.append(Ranked(index, float(score)))
    return rerank_outcome(
        best_first(items, None), data.get("warnings"), data.get("providerMetadata")
    )


WAYS: dict[str, Decode] = {"msgspec": with_msgspec, "orjson": with_orjson}


def cpu_us_per_answer(decode: Decode, body: bytes, documents: int, answers: int) -> float:
    began = time.thread_time()
    for _ in range(answers):
        decode(body, documents)
    return (time.thread_time() - began) / answers * 1e6


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.decode_cost", description=__doc__)
    parser.add_argument("--documents", type=int, action="append", help="default: 20 and 1000")
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument(
        "--documents-per-round", type=int, default=20_000, help="each way's, in answers of N"
    )
    args = parser.parse_args(argv)
    for documents in args.documents or [20, 1000]:
        body = realistic_answer(documents)
        outcomes = [decode(body, documents) for decode in WAYS.values()]
        assert all(outcome == outcomes[0] for outcome in outcomes), "the ways disagree"
        answers = args.documents_per_round // documents or 1
        samples: dict[str, list[float]] = {name: [] for name in WAYS}
        for _ in range(args.rounds):
            for name, decode in WAYS.items():
                samples[name].append(cpu_us_per_answer(decode, body, documents, answers))
        figures = ", ".join(
            f"{name} {statistics.median(values):.1f}" for name, values in samples.items()
        )
        print(
            f"{documents} documents ({len(body)} bytes): µs of CPU per decoded and checked "
            f"answer, median of {args.rounds} alternating rounds of {answers}: {figures}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
