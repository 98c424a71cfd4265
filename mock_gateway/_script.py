"""Scripting one mock gateway from a test: faults for the next calls, fixed scores.

``MockGateway.script`` is a ``MockScript``. A test harness running the app (in a thread, behind
uvicorn or ``httpx.ASGITransport``) scripts it directly instead of sending
``providerOptions.mockGateway`` with each request, which is how a consumer's contract tests
make the service under test fail without touching its requests::

    app = create_app()
    app.script.fail_next("rate_limit", retryAfterMs=500)   # the next rerank call gets a 429
    app.script.set_scores({"Berlin is the capital of Germany.": 0.99})
    app.script.reset()

What it changes, and nothing else:

- ``fail_next(fault, times=1, **params)``: the next ``times`` rerank calls (``POST
  .../reranking-model`` of either protocol version) that carry no ``providerOptions.mockGateway``
  of their own get ``fault``. Names and parameters are those of ``providerOptions.mockGateway``
  (see ``rerank.mock_gateway._faults``); they are validated at once (``ValueError`` for a typo)
  and then rendered by the same code. A fault of one version only (a ``deprecated`` warning,
  ``not_found``) that reaches a call of the other is answered 400 there, and counts as used.
  ``key`` is not accepted: a script is not keyed. Several ``fail_next`` calls queue up, first in
  first out.
- ``set_scores({text: score})``: text documents equal to a key get that score (any finite
  number) instead of the lexical one; the others are scored as usual. Ranking, ties and
  ``topN`` then work as always. Calls add to the scores already set.
- ``reset()``: forget every scripted fault and score.

The Cohere-compatible endpoints and ``GET /config`` are never scripted. The script is guarded by
a lock because the test's thread scripts while the app answers on another.
"""

from __future__ import annotations

import math
import threading
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ._faults import FAULT_OPTION, Fault, parse_fault
from ._protocol import GatewayError

__all__ = ["MockScript"]


@dataclass
class _Pending:
    fault: Fault
    left: int


class MockScript:
    """Faults and fixed scores scripted for one ``MockGateway`` (its ``script`` attribute)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._faults: deque[_Pending] = deque()
        self._scores: dict[str, float] = {}

    def fail_next(self, fault: str, /, *, times: int = 1, **params: Any) -> None:
        """Answer the next ``times`` rerank calls with ``fault`` (e.g. ``"rate_limit"``).

        Raises:
            ValueError: an unknown fault, an unknown or ill-typed parameter, ``times`` < 1.
        """
        if isinstance(times, bool) or not isinstance(times, int) or times < 1:
            raise ValueError(f"times must be an integer >= 1, got {times!r}")
        if "times" in params or "key" in params:
            raise ValueError("a scripted fault takes no 'key'; 'times' is a keyword of its own")
        try:
            parsed = parse_fault({FAULT_OPTION: {**params, "fault": fault}})
        except GatewayError as error:
            raise ValueError(error.message) from None
        assert parsed is not None  # the spec above is never empty
        with self._lock:
            self._faults.append(_Pending(parsed, times))

    def set_scores(self, scores: Mapping[str, float]) -> None:
        """Give text documents equal to a key of ``scores`` that score.

        Raises:
            ValueError: a key that is not a string, or a score that is not a finite number.
        """
        checked: dict[str, float] = {}
        for text, value in scores.items():
            if not isinstance(text, str):
                raise ValueError(f"scores are keyed by document text, got {text!r}")
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ValueError(f"the score of {text!r} must be a number, got {value!r}")
            if not math.isfinite(value):
                raise ValueError(f"the score of {text!r} must be finite, got {value!r}")
            checked[text] = float(value)
        with self._lock:
            self._scores.update(checked)

    def reset(self) -> None:
        """Forget every scripted fault and fixed score."""
        with self._lock:
            self._faults.clear()
            self._scores.clear()

    @property
    def pending_faults(self) -> int:
        """How many rerank calls the scripted faults will still hit."""
        with self._lock:
            return sum(pending.left for pending in self._faults)

    def take_fault(self) -> Fault | None:
        """The scripted fault for this call (counting it), or None. Called by the app."""
        with self._lock:
            if not self._faults:
                return None
            pending = self._faults[0]
            pending.left -= 1
            if pending.left == 0:
                self._faults.popleft()
            return pending.fault

    def fixed_score(self, value: str | dict[str, Any]) -> float | None:
        """The scripted score of one document, or None to score it as usual."""
        if not isinstance(value, str):
            return None
        with self._lock:
            return self._scores.get(value)
