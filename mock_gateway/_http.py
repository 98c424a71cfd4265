"""What a handler answers: a complete reply, or an instruction to break the connection."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

JSON = "application/json"


@dataclass(frozen=True)
class Reply:
    """A complete HTTP response."""

    status: int
    body: bytes
    content_type: str = JSON
    headers: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class Drop:
    """Break the connection instead of answering (the ``drop`` fault).

    ``before_headers`` closes before any byte of a response; otherwise the status line, the
    headers (with the full ``content-length`` of ``reply``) and the first half of the body are
    sent first.
    """

    reply: Reply
    before_headers: bool


def json_reply(status: int, payload: Any, headers: tuple[tuple[str, str], ...] = ()) -> Reply:
    """A JSON reply; ``orjson`` keeps key order, so equal payloads give equal bytes."""
    return Reply(status, orjson.dumps(payload), JSON, headers)
