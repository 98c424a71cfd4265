"""Field behaviour stated one way throughout the proto (its header says how): a request field's
comment begins with `Required.` or `Optional.`; a response field's begins with `Always set.` or
says when it is empty or unset."""

from __future__ import annotations

import re

import pytest

from rerank.v1 import rerank_service_pb2 as pb
from tests.conftest import REPO_ROOT

PROTO = (REPO_ROOT / "protos/rerank/v1/rerank_service.proto").read_text()
WHEN_EMPTY = re.compile(r"\b(Empty|Unset|empty|unset) (when|on|otherwise|allows)\b")


def field_comments() -> dict[tuple[str, str], str]:
    """(message, field) → the comment right above the field, joined into one line."""
    found: dict[tuple[str, str], str] = {}
    message = ""
    comment: list[str] = []
    for line in PROTO.splitlines():
        text = line.strip()
        if opened := re.match(r"message (\w+) \{", text):
            message = opened.group(1)
        elif text.startswith("//"):
            comment.append(text.removeprefix("//").strip())
            continue
        elif field := re.match(r"(?:optional |repeated )?[\w.<>, ]+ (\w+) = \d+;", text):
            found[(message, field.group(1))] = " ".join(comment)
        comment = []
    return found


COMMENTS = field_comments()


def test_every_field_of_every_message_is_read() -> None:
    """Not vacuous: the parser sees each field the descriptor has."""
    expected = {
        (name, field.name)
        for name, message in pb.DESCRIPTOR.message_types_by_name.items()
        for field in message.fields
    }
    assert set(COMMENTS) == expected


@pytest.mark.parametrize("key", sorted(COMMENTS), ids=lambda key: ".".join(key))
def test_each_field_states_its_behaviour(key: tuple[str, str]) -> None:
    message, _ = key
    comment = COMMENTS[key]
    if message.endswith("Request"):
        assert comment.startswith(("Required. ", "Optional. ")), comment
    elif message == "Document":
        # The oneof's own comment says `Required.` for the pair; each says what it holds.
        assert comment, key
    else:
        assert comment.startswith("Always set. ") or WHEN_EMPTY.search(comment), comment
