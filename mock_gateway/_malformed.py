"""The ``malformed`` fault's bodies (``rerank.mock_gateway._faults``): each bends the normal
answer into one way of breaking the protocol, one small function per variant."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import orjson

from ._http import Reply, json_reply
from ._protocol import error_reply
from ._versions import ProtocolVersion

_NAN_SENTINEL = "__mock_gateway_nan__"


@dataclass(frozen=True)
class Normal:
    """What the call would have answered without the fault, for faults that distort it."""

    payload: dict[str, Any]
    """The success body; its ``ranking`` is already sorted and cut to topN."""
    full_ranking: list[dict[str, Any]]
    """Every document's entry, sorted, not cut."""
    document_count: int
    generation_id: str
    protocol: ProtocolVersion
    """The version of the call, for faults that exist in one version only."""


Variant = Callable[[Normal, Mapping[str, Any]], Reply]
"""A ``malformed`` body, built from the normal answer and the fault's parameters."""


def _ranking(normal: Normal) -> list[dict[str, Any]]:
    """A copy of the normal ranking's items, for a variant to spoil."""
    return [dict(item) for item in normal.payload["ranking"]]


def _with_ranking(normal: Normal, ranking: list[dict[str, Any]]) -> Reply:
    return Reply(200, orjson.dumps(_with(normal.payload, ranking=ranking)))


def _not_json(normal: Normal, params: Mapping[str, Any]) -> Reply:
    return Reply(200, b"<html><body>this is not JSON</body></html>")


def _truncated(normal: Normal, params: Mapping[str, Any]) -> Reply:
    whole = orjson.dumps(normal.payload)
    return Reply(200, whole[: len(whole) // 2])


def _empty(normal: Normal, params: Mapping[str, Any]) -> Reply:
    return Reply(200, b"")


def _wrong_types(normal: Normal, params: Mapping[str, Any]) -> Reply:
    ranking = [{**item, "relevanceScore": str(item["relevanceScore"])} for item in _ranking(normal)]
    return _with_ranking(normal, ranking)


def _nan_score(normal: Normal, params: Mapping[str, Any]) -> Reply:
    ranking = _ranking(normal)
    ranking[0]["relevanceScore"] = _NAN_SENTINEL
    # orjson cannot write NaN (it is not JSON), so splice the bare token in.
    body = orjson.dumps(_with(normal.payload, ranking=ranking))
    return Reply(200, body.replace(orjson.dumps(_NAN_SENTINEL), b"NaN"))


def _missing_score(normal: Normal, params: Mapping[str, Any]) -> Reply:
    ranking = [
        {k: v for k, v in item.items() if k != "relevanceScore"} for item in _ranking(normal)
    ]
    return _with_ranking(normal, ranking)


def _missing_ranking(normal: Normal, params: Mapping[str, Any]) -> Reply:
    return json_reply(200, {k: v for k, v in normal.payload.items() if k != "ranking"})


def _index_out_of_range(normal: Normal, params: Mapping[str, Any]) -> Reply:
    ranking = _ranking(normal)
    ranking[0]["index"] = normal.document_count
    return _with_ranking(normal, ranking)


def _duplicate_index(normal: Normal, params: Mapping[str, Any]) -> Reply:
    ranking = _ranking(normal)
    if len(ranking) > 1:
        ranking[-1]["index"] = ranking[0]["index"]
    else:
        ranking.append(dict(ranking[0]))
    return _with_ranking(normal, ranking)


def _negative_index(normal: Normal, params: Mapping[str, Any]) -> Reply:
    ranking = _ranking(normal)
    ranking[0]["index"] = -1
    return _with_ranking(normal, ranking)


def _float_index(normal: Normal, params: Mapping[str, Any]) -> Reply:
    ranking = _ranking(normal)
    ranking[0]["index"] += 0.5
    return _with_ranking(normal, ranking)


def _error_envelope(normal: Normal, params: Mapping[str, Any]) -> Reply:
    error = {
        "message": "Injected error envelope on a 200",
        "type": "internal_server_error",
        "param": None,
        "code": None,
    }
    return error_reply(200, error, normal.generation_id)


def _huge(normal: Normal, params: Mapping[str, Any]) -> Reply:
    # Valid JSON whose size, not shape, is the problem.
    padding = "x" * params.get("sizeBytes", 20_000_000)
    return json_reply(
        200, {**_with(normal.payload, ranking=_ranking(normal)), "mockPadding": padding}
    )


def _unsorted(normal: Normal, params: Mapping[str, Any]) -> Reply:
    return _with_ranking(normal, _ranking(normal)[::-1])


def _too_many(normal: Normal, params: Mapping[str, Any]) -> Reply:
    return _with_ranking(normal, normal.full_ranking)


UNDOCUMENTED_WARNING_TYPE = "undocumented"
"""The type of the ``unknown_warning`` variant: one that no protocol version documents."""


def _unknown_warning(normal: Normal, params: Mapping[str, Any]) -> Reply:
    warning = {
        "type": UNDOCUMENTED_WARNING_TYPE,
        "feature": "topN",
        "details": "Injected warning of a type no protocol version documents.",
    }
    return with_warning(normal, warning)


def with_warning(normal: Normal, warning: dict[str, Any]) -> Reply:
    warnings = [*normal.payload.get("warnings", []), warning]
    return json_reply(200, _with(normal.payload, ranking=_ranking(normal), warnings=warnings))


MALFORMED: Mapping[str, Variant] = MappingProxyType(
    {
        "not_json": _not_json,
        "truncated": _truncated,
        "empty": _empty,
        "wrong_types": _wrong_types,
        "nan_score": _nan_score,
        "missing_score": _missing_score,
        "missing_ranking": _missing_ranking,
        "index_out_of_range": _index_out_of_range,
        "duplicate_index": _duplicate_index,
        "negative_index": _negative_index,
        "float_index": _float_index,
        "error_envelope": _error_envelope,
        "huge": _huge,
        "unsorted": _unsorted,
        "too_many": _too_many,
        "unknown_warning": _unknown_warning,
    }
)

MALFORMED_VARIANTS: tuple[str, ...] = tuple(MALFORMED)
"""The bodies of the ``malformed`` fault. The AI SDK rejects all but four: ``duplicate_index``,
``unsorted`` and ``too_many`` pass its schema, and ``huge`` is valid JSON, so those four test a
caller's own checks (index uniqueness, order, topN, size)."""


def _with(payload: dict[str, Any], **changes: Any) -> dict[str, Any]:
    """``payload`` with keys replaced in place and new keys inserted right after ``ranking``."""
    result = {}
    for key, value in payload.items():
        result[key] = changes.get(key, value)
        if key == "ranking":
            result.update({k: v for k, v in changes.items() if k not in payload})
    return result
