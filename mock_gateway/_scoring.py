"""The mock's relevance score: pure, deterministic, lexical.

``score(model, query, document)`` is a function of its three arguments and nothing else::

    terms(text)  = the Unicode word tokens (regex ``\\w+``) of NFKC(text).casefold(),
                   minus a small English stopword list (STOPWORDS)
    Q            = the distinct terms of the query
    tf(t)        = how often term t occurs in terms(document)
    w(t)         = len(t)                      # longer words carry more meaning: a cheap IDF
    sat(tf)      = tf / (tf + 0.25)            # BM25-like saturation: 0, 0.8, 0.89, 0.92, ...
    coverage     = sum(w(t) * sat(tf(t)) for t in Q) / sum(w(t) for t in Q)   (0 if Q is empty)
    tiebreak     = (first 8 bytes of BLAKE2b(model, query, document) as an integer % 10_000) / 1e6
    score        = round(0.95 * coverage + tiebreak, 6)                        # in [0, 0.959999]

An object document is scored on its leaf values (strings, numbers, booleans, in sorted-key
order, keys themselves excluded); its tie-breaker hashes its canonical JSON (sorted keys).
There is no length normalisation and no stemming: "capitals" does not match "capital".

The tie-breaker is below 0.01, so it reorders only documents whose coverage is (nearly) equal,
and differs between models, so two models rank such documents differently. Identical documents
get identical scores; the response breaks those ties by ascending index.

For the gateway documentation's example (query "What is the capital of France?", model
``cohere/rerank-v3.5``) the query terms are ``capital`` and ``france``: "Paris is the capital of
France." covers both (score ~0.76), "Berlin is the capital of Germany." and "Madrid is the
capital of Spain." cover only ``capital`` (~0.41 each, ordered by their tie-breakers).
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections import Counter
from collections.abc import Iterator, Mapping
from typing import Any

import orjson

# One string keeps the list readable; ruff would put each word on its own line.
STOPWORDS = frozenset(
    "a an and are as at be but by can do does for from had has have how i in is it its me my "  # noqa: SIM905
    "not of on or our so than that the their them then there these they this to was we were "
    "what when where which who whom why will with you your".split()
)
"""Words dropped from queries and documents before matching."""

_TOKEN = re.compile(r"\w+")
_SATURATION_K = 0.25
_SCALE = 0.95
_TIEBREAK_BUCKETS = 10_000


def terms(text: str) -> list[str]:
    """The matching terms of ``text``: casefolded Unicode words without stopwords."""
    folded = unicodedata.normalize("NFKC", text).casefold()
    return [token for token in _TOKEN.findall(folded) if token not in STOPWORDS]


def score(model: str, query: str, document: str | Mapping[str, Any]) -> float:
    """Relevance of ``document`` to ``query`` for ``model`` in ``[0, 1]`` (see module docstring)."""
    if isinstance(document, str):
        text = document
        identity = document
    else:
        text = " ".join(_leaf_texts(document))
        identity = orjson.dumps(document, option=orjson.OPT_SORT_KEYS).decode()

    query_terms = set(terms(query))
    coverage = 0.0
    if query_terms:
        counts = Counter(terms(text))
        total_weight = sum(len(term) for term in query_terms)
        matched = sum(
            len(term) * counts[term] / (counts[term] + _SATURATION_K) for term in query_terms
        )
        coverage = matched / total_weight
    return round(_SCALE * coverage + _tiebreak(model, query, identity), 6)


def _tiebreak(model: str, query: str, identity: str) -> float:
    # The unit separator keeps ("ab", "c") and ("a", "bc") apart.
    digest = hashlib.blake2b("\x1f".join((model, query, identity)).encode(), digest_size=8).digest()
    return (int.from_bytes(digest, "big") % _TIEBREAK_BUCKETS) / 1_000_000


def _leaf_texts(value: object) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, bool):
        yield "true" if value else "false"
    elif isinstance(value, int | float):
        yield repr(value)
    elif isinstance(value, Mapping):
        for key in sorted(value):
            yield from _leaf_texts(value[key])
    elif isinstance(value, list):
        for item in value:
            yield from _leaf_texts(item)
