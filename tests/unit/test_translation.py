"""The servicer's translator from domain values to the answer: no server, no gateway."""

from __future__ import annotations

import base64
import math
from collections.abc import Callable
from decimal import Decimal

import pytest

from rerank.contract import (
    BATCH_RESULT_OVERHEAD,
    RANKED_DOCUMENT_OVERHEAD,
    RESPONSE_EXTRAS_BYTES,
    max_response_bytes,
    to_struct,
)
from rerank.server._domain import (
    FREE,
    JsonObject,
    Limits,
    ModelInfo,
    Ranked,
    RerankOutcome,
    Usage,
    Warning,
)
from rerank.server._errors import InvalidRequest, MalformedRequest, UpstreamProtocolError
from rerank.server._translate import (
    Page,
    RememberedMetadata,
    call_usage_to_proto,
    metadata_wire,
    model_to_proto,
    query_from_bytes,
    response_to_proto,
    sent_documents,
)
from rerank.v1 import rerank_service_pb2 as pb

MODEL = "cohere/rerank-v3.5"
LIMITS = Limits(max_documents=100, max_document_bytes=1024, max_query_bytes=1024)


def request(**fields: object) -> pb.RerankRequest:
    return pb.RerankRequest(
        query="q", documents=[pb.Document(text=t) for t in ("a", "b", "c")], **fields
    )


RANKING = (Ranked(2, 0.9), Ranked(0, 0.5))


@pytest.mark.parametrize(
    ("usage", "expected"),
    [
        (Usage(Decimal("0.002"), 1), pb.Usage(cost="0.002", upstream_calls=1)),
        # Positional, as the gateway writes it: never an exponent.
        (Usage(Decimal("1E-7"), 2), pb.Usage(cost="0.0000001", upstream_calls=2)),
        (FREE, pb.Usage(cost="0", upstream_calls=0)),
        # Unknown is not free: empty, never "0".
        (Usage(None, 3), pb.Usage(cost="", upstream_calls=3)),
    ],
)
def test_usage_as_the_contract_types_it(usage: Usage, expected: pb.Usage) -> None:
    assert call_usage_to_proto(usage) == expected


@pytest.mark.parametrize(
    ("fields", "echoes"),
    [({}, True), ({"return_documents": True}, True), ({"return_documents": False}, False)],
    ids=["unset", "true", "false"],
)
def test_the_documents_are_echoed_unless_refused(fields: dict[str, bool], echoes: bool) -> None:
    data = request(**fields).SerializeToString()
    query, echo = query_from_bytes(data, MODEL, LIMITS)
    assert (query.documents, echo) == (("a", "b", "c"), echoes)


@pytest.mark.parametrize(
    "documents",
    [
        [pb.Document(text=t) for t in ("a", "é ✓ \x00", "c" * 70_000)],
        [pb.Document(object=to_struct({"n": n})) for n in (-0.0, 2.0**60, 1.5)],
    ],
    ids=["text", "object"],
)
def test_the_echoed_documents_are_the_requests_own_bytes(documents: list[pb.Document]) -> None:
    data = pb.RerankRequest(query="q", documents=documents).SerializeToString()
    query, _ = query_from_bytes(data, MODEL, Limits(100, 100_000, 1024))
    ranking = (Ranked(1, 0.9), Ranked(0, 0.5), Ranked(2, 0.1))
    response = response_to_proto(
        MODEL, ranking, RerankOutcome(ranking), sent_documents(query, data)
    )
    for ranked in response.ranking:
        echoed = ranked.document.SerializeToString()
        assert echoed == documents[ranked.original_index].SerializeToString()


def test_without_documents_only_index_and_score() -> None:
    response = response_to_proto(MODEL, RANKING, RerankOutcome(RANKING), None)
    assert [(r.original_index, r.score) for r in response.ranking] == [(2, 0.9), (0, 0.5)]
    assert not any(r.HasField("document") for r in response.ranking)


@pytest.mark.parametrize(
    "data",
    [b"\xff\xff\xff", b"\x12\x05ab", pb.RerankRequest(query="q").SerializeToString()[:-1]],
    ids=["garbage", "cut short", "truncated"],
)
def test_bytes_that_are_not_a_request_are_malformed(data: bytes) -> None:
    with pytest.raises(MalformedRequest, match="could not be decoded"):
        query_from_bytes(data, MODEL, LIMITS)


def test_every_answer_carries_its_usage() -> None:
    outcome = RerankOutcome(RANKING, usage=Usage(Decimal("0.01"), 2))
    response = response_to_proto(MODEL, RANKING, outcome, None)
    assert response.HasField("usage")
    assert response.usage == pb.Usage(cost="0.01", upstream_calls=2)


def test_warnings_too_large_to_carry_are_refused() -> None:
    warning = Warning(type="other", message="x" * RESPONSE_EXTRAS_BYTES)
    outcome = RerankOutcome(RANKING, warnings=(warning,))
    with pytest.raises(UpstreamProtocolError, match=f"at most {RESPONSE_EXTRAS_BYTES}"):
        response_to_proto(MODEL, RANKING, outcome, None)


METADATA = [
    {"gateway": {"routing": {"provider": "cohere"}, "cost": "0.002"}},
    {"cohere": {"billedUnits": {"searchUnits": 1}}, "gateway": {"cost": "0.004"}},
    {"p": {"n": -0.0, "big": 2**70, "tiny": 5e-324, "list": [None, True, "é", 1.5], "e": {}}},
    {"p": {"long": "x" * (RememberedMetadata.MAX_REMEMBERED_BYTES + 1)}},
]


def test_remembered_metadata_is_the_metadata_converted_each_time() -> None:
    remembered = RememberedMetadata(size=2)
    for metadata in METADATA * 3:  # converted, then remembered, past the size too
        wire = remembered(metadata)
        assert wire == metadata_wire(metadata)
        assert pb.RerankResponse.FromString(wire).provider_metadata == to_struct(metadata)
    # -0.0 equals 0.0: its sign kept is checked apart.
    negative_zero = pb.RerankResponse.FromString(remembered(METADATA[2])).provider_metadata
    assert math.copysign(1, negative_zero["p"]["n"]) == -1


def test_the_answer_carries_the_metadata_as_given() -> None:
    metadata = METADATA[2]
    outcome = RerankOutcome(RANKING, provider_metadata=metadata)
    response = response_to_proto(MODEL, RANKING, outcome, None, RememberedMetadata())
    assert response.provider_metadata == to_struct(metadata)


@pytest.mark.parametrize("convert", [metadata_wire, RememberedMetadata()], ids=["once", "kept"])
def test_metadata_no_double_holds_is_the_gateways_error(
    convert: Callable[[JsonObject], bytes],
) -> None:
    with pytest.raises(UpstreamProtocolError, match="beyond a double's range"):
        convert({"p": {"n": 10**400}})


@pytest.mark.parametrize("index", [0, 1, 9_999, 2**31 - 1])
@pytest.mark.parametrize("text", ["a", "é" * 100, "x" * 70_000, "y" * 3_000_000])
def test_a_ranked_entry_adds_at_most_its_overhead(index: int, text: str) -> None:
    """The bound the send limit is built on: a RankedDocument is its document's bytes in the
    request plus at most RANKED_DOCUMENT_OVERHEAD, whatever the index, score and size."""
    document = pb.Document(text=text)
    in_request = pb.RerankRequest(documents=[document]).ByteSize()
    in_response = pb.RerankResponse(
        ranking=[pb.RankedDocument(original_index=index, score=-1.5e300, document=document)]
    ).ByteSize()
    assert in_response - in_request <= RANKED_DOCUMENT_OVERHEAD


def test_the_send_limit_covers_a_full_request_echoed() -> None:
    assert max_response_bytes(1000, 10) == 1000 + 10 * RANKED_DOCUMENT_OVERHEAD + (
        RESPONSE_EXTRAS_BYTES
    )
    assert max_response_bytes(2**31, 10_000) == 2**31 - 1  # gRPC's own ceiling


def test_the_send_limit_covers_a_full_batch_echoed() -> None:
    """A batch's documents together fit the request's bytes, but each of its answers has its
    own ranked entries, extras and wrapping."""
    per_answer = 10 * RANKED_DOCUMENT_OVERHEAD + RESPONSE_EXTRAS_BYTES + BATCH_RESULT_OVERHEAD
    assert max_response_bytes(1000, 10, 3) == 1000 + 3 * per_answer


def test_a_batch_result_adds_at_most_its_overhead_to_the_response() -> None:
    response = pb.RerankResponse(
        model="m" * 300, ranking=[pb.RankedDocument(document=pb.Document(text="x" * 70_000))]
    )
    batch = pb.BatchRerankResponse(results=[pb.BatchRerankResult(response=response)])
    assert batch.ByteSize() - response.ByteSize() <= BATCH_RESULT_OVERHEAD


# --- ListModels pages ------------------------------------------------------------------------

MODELS = tuple(ModelInfo(id=f"p/m{i}") for i in range(5))


def walk(models: tuple[ModelInfo, ...], size: int) -> list[list[str]]:
    pages, token = [], ""
    while True:
        listed, token = Page.of(pb.ListModelsRequest(page_size=size, page_token=token)).cut(models)
        pages.append([m.id for m in listed])
        if not token:
            return pages


def test_the_default_page_holds_every_model() -> None:
    listed, token = Page.of(pb.ListModelsRequest()).cut(MODELS)
    assert list(listed) == list(MODELS)
    assert token == ""


@pytest.mark.parametrize("size", [1, 2, 3, 4, 5, 6, 100])
def test_pages_of_any_size_list_each_model_once_in_order(size: int) -> None:
    pages = walk(MODELS, size)
    assert [i for page in pages for i in page] == [m.id for m in MODELS]
    assert all(len(page) == size for page in pages[:-1])
    assert 1 <= len(pages[-1]) <= size


def test_no_models_is_one_empty_last_page() -> None:
    assert walk((), 2) == [[]]


def test_the_next_page_starts_after_the_last_model_listed_even_if_the_list_changed() -> None:
    first, token = Page.of(pb.ListModelsRequest(page_size=2)).cut(MODELS)
    assert [m.id for m in first] == ["p/m0", "p/m1"]
    # A model added before the page's end: the next page neither repeats nor skips one.
    grown = (ModelInfo(id="p/new"), *MODELS)
    listed, _ = Page.of(pb.ListModelsRequest(page_size=2, page_token=token)).cut(grown)
    assert [m.id for m in listed] == ["p/m2", "p/m3"]
    # The page's last model gone: the next page starts at its position.
    shrunk = tuple(m for m in MODELS if m.id != "p/m1")
    listed, _ = Page.of(pb.ListModelsRequest(page_size=2, page_token=token)).cut(shrunk)
    assert [m.id for m in listed] == ["p/m3", "p/m4"]


@pytest.mark.parametrize(
    "token",
    [
        "garbage!",
        "bm90LWEtdG9rZW4",  # base64 of "not-a-token": no offset
        base64.urlsafe_b64encode(b"0:p/m0").decode(),  # an offset no page ends at
        base64.urlsafe_b64encode(b"-3:p/m0").decode(),
        base64.urlsafe_b64encode(b"2:").decode(),  # no model
        base64.urlsafe_b64encode(b"\xff\xfe:x").decode(),  # not UTF-8
    ],
)
def test_a_token_this_service_did_not_give_is_invalid(token: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        Page.of(pb.ListModelsRequest(page_token=token))
    assert [v.field for v in caught.value.violations] == ["page_token"]


def test_a_negative_page_size_is_invalid() -> None:
    with pytest.raises(InvalidRequest) as caught:
        Page.of(pb.ListModelsRequest(page_size=-1))
    assert [v.field for v in caught.value.violations] == ["page_size"]


def test_each_model_says_its_window() -> None:
    model = model_to_proto(ModelInfo(id="cohere/rerank-v3.5", documents_per_upstream_call=1000))
    assert model.documents_per_upstream_call == 1000
