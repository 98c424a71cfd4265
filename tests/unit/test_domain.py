"""The request rules and the defensive sort-and-cut, on plain values."""

from __future__ import annotations

import pytest

from rerank.server.domain import Limits, Ranked, RerankQuery, check_request, final_ranking
from rerank.server.errors import InvalidRequest, UpstreamProtocolError

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


def test_final_ranking_sorts_by_score_then_index_and_cuts() -> None:
    ranking = [Ranked(0, 0.1), Ranked(3, 0.9), Ranked(1, 0.5), Ranked(2, 0.5)]
    assert final_ranking(ranking, 4, None) == [
        Ranked(3, 0.9),
        Ranked(1, 0.5),
        Ranked(2, 0.5),
        Ranked(0, 0.1),
    ]
    assert final_ranking(ranking, 4, 2) == [Ranked(3, 0.9), Ranked(1, 0.5)]
    assert final_ranking(ranking, 4, 99) == final_ranking(ranking, 4, None)


@pytest.mark.parametrize(
    "ranking",
    [
        [Ranked(0, 0.5), Ranked(2, 0.4)],
        [Ranked(-1, 0.5)],
        [Ranked(1, 0.5), Ranked(1, 0.4)],
        [Ranked(0, float("nan"))],
        [Ranked(0, float("inf"))],
    ],
)
def test_final_ranking_refuses_what_cannot_be_a_ranking(ranking: list[Ranked]) -> None:
    with pytest.raises(UpstreamProtocolError):
        final_ranking(ranking, 2, None)
