"""The request rules, the order of a ranking and the usage record, on plain values."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest

from rerank.server._domain import (
    FREE,
    Limits,
    Ranked,
    RerankOutcome,
    RerankQuery,
    Usage,
    best_first,
    caller_metadata,
    check_request,
    reported_cost,
)
from rerank.server._errors import InvalidRequest

LIMITS = Limits(max_documents=3, max_document_bytes=100, max_query_bytes=10)


def query(**changes: object) -> RerankQuery:
    fields: dict[str, object] = {
        "model": "cohere/rerank-v3.5",
        "query": "capital",
        "kind": "text",
        "documents": ("a", "b"),
    }
    fields.update(changes)
    return RerankQuery(**fields)  # type: ignore[arg-type]


def violated_fields(bad: RerankQuery) -> list[str]:
    with pytest.raises(InvalidRequest) as caught:
        check_request(bad, LIMITS)
    return [v.field for v in caught.value.violations]


def test_a_good_request_passes() -> None:
    check_request(query(top_n=1), LIMITS)
    check_request(query(model="voyage/rerank-2.5-lite", documents=("a", "b", "c")), LIMITS)


def test_no_documents_is_a_valid_request_but_its_other_fields_are_still_checked() -> None:
    check_request(query(documents=()), LIMITS)
    assert violated_fields(query(documents=(), query="", top_n=0)) == ["query", "top_n"]


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"query": ""}, "query"),
        ({"query": " \t\n"}, "query"),
        ({"query": "é" * 6}, "query"),  # 12 bytes of UTF-8 > 10
        ({"documents": ("a", "b", "c", "d")}, "documents"),
        ({"top_n": 0}, "top_n"),
        ({"top_n": -3}, "top_n"),
        ({"model": "rerank-v3.5"}, "model"),
        ({"model": "Cohere/rerank"}, "model"),
        ({"model": "cohere/"}, "model"),
        ({"model": "cohere/rerank v3"}, "model"),
        ({"model": "a/b/c"}, "model"),
        ({"model": "cohere/" + "x" * 130}, "model"),
    ],
)
def test_each_rule_names_its_field(changes: dict[str, object], field: str) -> None:
    assert violated_fields(query(**changes)) == [field]


def test_all_violations_are_reported_at_once() -> None:
    assert violated_fields(query(query="", documents=("a",) * 4, top_n=0)) == [
        "query",
        "documents",
        "top_n",
    ]


def test_best_first_sorts_by_score_then_index_and_cuts() -> None:
    ranking = [Ranked(0, 0.1), Ranked(3, 0.9), Ranked(1, 0.5), Ranked(2, 0.5)]
    assert best_first(ranking, None) == (
        Ranked(3, 0.9),
        Ranked(1, 0.5),
        Ranked(2, 0.5),
        Ranked(0, 0.1),
    )
    assert best_first(ranking, 2) == (Ranked(3, 0.9), Ranked(1, 0.5))
    assert best_first(ranking, 99) == best_first(ranking, None)


def test_usage_adds_exactly_and_unknown_stays_unknown() -> None:
    tenth = Usage(Decimal("0.1"), 1)
    assert tenth + tenth + tenth == Usage(Decimal("0.3"), 3)  # as floats: 0.30000000000000004
    assert tenth + Usage(None, 1) == Usage(None, 2)
    assert Usage(None, 1) + tenth == Usage(None, 2)
    assert tenth + FREE == tenth


@pytest.mark.parametrize(
    ("metadata", "cost"),
    [
        ({"gateway": {"cost": "0.002"}}, Decimal("0.002")),
        ({"gateway": {"cost": "0"}, "mock": {}}, Decimal(0)),
        ({"gateway": {"cost": "1E-7"}}, Decimal("1E-7")),
        (None, None),
        ({}, None),
        ({"mock": {"cost": "1"}}, None),
        ({"gateway": {}}, None),
        ({"gateway": {"cost": 0.002}}, None),  # the protocol's cost is a string
        ({"gateway": {"cost": "cheap"}}, None),
        ({"gateway": {"cost": "NaN"}}, None),
        ({"gateway": {"cost": "Infinity"}}, None),
        ({"gateway": {"cost": "-0.5"}}, None),
    ],
)
def test_the_reported_cost(metadata: dict[str, Any] | None, cost: Decimal | None) -> None:
    assert reported_cost(metadata) == cost


@pytest.mark.parametrize(
    ("metadata", "usage", "seen"),
    [
        # The call's total replaces one answer's figure; other entries are kept as they came.
        (
            {"gateway": {"cost": "0.02", "routing": "x"}, "mock": {"documents": 1000}},
            Usage(Decimal("0.05"), 3),
            {"gateway": {"cost": "0.05", "routing": "x"}, "mock": {"documents": 1000}},
        ),
        ({"gateway": {"cost": "0.002"}}, FREE, {"gateway": {"cost": "0"}}),
        ({"mock": {}}, FREE, {"mock": {}, "gateway": {"cost": "0"}}),
        ({"gateway": {}}, Usage(Decimal("1E-7"), 1), {"gateway": {"cost": "0.0000001"}}),
        # The gateway sent none: none is made up.
        (None, FREE, None),
        # Unknown: no cost at all, rather than one window's or a garbled one.
        ({"gateway": {"cost": "0.01"}, "mock": {}}, Usage(None, 2), {"mock": {}}),
        ({"gateway": {"cost": "?", "x": 1}}, Usage(None, 1), {"gateway": {"x": 1}}),
        (None, Usage(None, 1), None),
    ],
)
def test_the_metadata_a_caller_sees_carries_the_calls_total(
    metadata: dict[str, Any] | None, usage: Usage, seen: dict[str, Any] | None
) -> None:
    outcome = RerankOutcome(ranking=(), provider_metadata=metadata, usage=usage)
    assert caller_metadata(outcome) == seen
    assert outcome.provider_metadata == metadata  # not changed in place
