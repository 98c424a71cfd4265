"""The ready line reaches stdout in one write, so no other process's line can split it."""

from __future__ import annotations

import pytest

from rerank.server.__main__ import say


class Recording:
    def __init__(self) -> None:
        self.writes: list[str] = []

    def write(self, text: str) -> int:
        self.writes.append(text)
        return len(text)

    def flush(self) -> None:
        self.writes.append("<flush>")


def test_a_line_is_one_write_then_a_flush(monkeypatch: pytest.MonkeyPatch) -> None:
    out = Recording()
    monkeypatch.setattr("sys.stdout", out)
    say("rerank server listening on 127.0.0.1:41481")
    assert out.writes == ["rerank server listening on 127.0.0.1:41481\n", "<flush>"]
