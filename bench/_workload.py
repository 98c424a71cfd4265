"""The requests the benchmark sends: deterministic, realistic-looking English sentences.

Every process (the orchestrator and each load generator) builds the same bytes from the same
seed, so nothing but a few integers crosses a process boundary.
"""

from __future__ import annotations

import random
from collections.abc import Callable

import orjson

from rerank.v1 import rerank_service_pb2 as pb

MODEL = "cohere/rerank-v3.5"
QUERY = "Which treaty ended the war and what did it change for trade between the two countries?"
#: At most this many results: a caller of a reranker wants the best few, not all of them.
TOP_N = 10
RERANK_METHOD = "/rerank.v1.RerankService/Rerank"
ECHO_METHOD = "/bench.Echo/Echo"
#: bench.bare_proxy's one method: the least a Python gRPC-to-HTTP proxy does per call.
BARE_METHOD = "/bench.BareProxy/Forward"
#: The echo call carries the serialized 20-document request, so its bytes on the wire match
#: the proxied 20-document call the CPU ratio compares it with.
ECHO_DOCUMENTS = 20
#: The named caller of the limits and Redis cells: every limit set (so every check runs), none
#: reached.
BENCH_CALLER_TOKEN = "bench-caller"
BENCH_CALLERS = f"""
[callers.bench]
token = "{BENCH_CALLER_TOKEN}"
requests_per_second = 1000000
max_concurrent_calls = 100000
daily_budget_usd = 1000000
"""

_SUBJECTS = (
    "The treaty",
    "The committee",
    "A local historian",
    "The central bank",
    "The new policy",
    "Our research team",
    "The river port",
    "The city council",
    "An early settler",
    "The museum",
    "The trade union",
    "A regional newspaper",
    "The railway company",
    "The harvest festival",
)
_VERBS = (
    "reduced",
    "described",
    "changed",
    "protected",
    "questioned",
    "financed",
    "documented",
    "expanded",
    "delayed",
    "reformed",
    "challenged",
    "celebrated",
    "measured",
    "restored",
)
_OBJECTS = (
    "tariffs on grain and timber",
    "the border between the two provinces",
    "shipping routes",
    "the price of bread",
    "wages in the textile mills",
    "access to the northern harbour",
    "the rights of merchants",
    "the old cathedral",
    "exports of wool and salt",
    "public schools",
    "the fishing fleet",
    "taxes on imported silk",
    "the postal service",
    "the national archive",
)
_TAILS = (
    "after the war ended in the spring",
    "during a long and difficult winter",
    "according to letters kept in the city library",
    "despite strong protests from farmers",
    "within less than a decade",
    "as several ministers had promised before the election",
    "which surprised most observers at the time",
    "and historians still argue about why",
    "while the neighbouring kingdom watched closely",
    "long before the first railway arrived",
)


def documents(count: int, seed: int = 7) -> list[str]:
    """`count` sentences of two clauses each, about 150-250 bytes: a 1,000-document request
    is about 200 KB, in the range of real retrieval results."""
    rng = random.Random(seed)
    out = []
    for _ in range(count):
        clauses = [
            f"{rng.choice(_SUBJECTS)} {rng.choice(_VERBS)} {rng.choice(_OBJECTS)} "
            f"{rng.choice(_TAILS)}"
            for _ in range(2)
        ]
        out.append(f"{clauses[0]}; {clauses[1][0].lower()}{clauses[1][1:]}.")
    return out


def top_n(count: int) -> int:
    return min(TOP_N, count)


def grpc_request(count: int) -> bytes:
    """A serialized `RerankRequest` with `count` text documents."""
    request = pb.RerankRequest(
        model=MODEL,
        query=QUERY,
        documents=[pb.Document(text=text) for text in documents(count)],
        top_n=top_n(count),
    )
    return request.SerializeToString()


def grpc_request_parts(count: int) -> tuple[bytes, Callable[[str], bytes]]:
    """A `RerankRequest` without its query, and how to append one.

    Protobuf accepts fields in any order, so `base + with_query(q)` is the request with
    query `q`: each call gets its own query (the server caches identical requests) for the
    price of a byte concatenation, not a serialization.
    """
    base = pb.RerankRequest(
        model=MODEL,
        documents=[pb.Document(text=text) for text in documents(count)],
        top_n=top_n(count),
    ).SerializeToString()

    def with_query(query: str) -> bytes:
        encoded = query.encode()
        return base + b"\x12" + _varint(len(encoded)) + encoded  # field 2, length-delimited

    return base, with_query


def http_body_parts(count: int) -> tuple[bytes, bytes]:
    """`http_body(count)` split around the query's JSON string: prefix + query + suffix."""
    marker = "QUERY-MARKER"
    body = orjson.dumps(
        {
            "documents": {"type": "text", "values": documents(count)},
            "query": marker,
            "topN": top_n(count),
        }
    )
    prefix, _, suffix = body.partition(orjson.dumps(marker))
    return prefix, suffix


def _varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def http_body(count: int) -> bytes:
    """The gateway's JSON body, exactly what the server sends for `grpc_request(count)`."""
    body = {
        "documents": {"type": "text", "values": documents(count)},
        "query": QUERY,
        "topN": top_n(count),
    }
    return orjson.dumps(body)


def http_headers(api_key: str) -> dict[str, str]:
    """The gateway protocol's headers (see the upstream spec), as the server sends them."""
    return {
        "authorization": f"Bearer {api_key}",
        "ai-gateway-protocol-version": "0.0.1",
        "ai-gateway-auth-method": "api-key",
        "ai-reranking-model-specification-version": "3",
        "ai-model-id": MODEL,
        "content-type": "application/json",
    }
