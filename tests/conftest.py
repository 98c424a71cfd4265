"""Fixtures shared by every layer of the tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.wire import captured_requests

REPO_ROOT = Path(__file__).resolve().parents[1]

SEED_QUERY = "What is the capital of France?"
SEED_DOCUMENTS = (
    "Paris is the capital of France.",
    "Berlin is the capital of Germany.",
    "Madrid is the capital of Spain.",
)
SEED_MODEL = "cohere/rerank-v3.5"


@pytest.fixture(scope="session")
def wire_requests() -> list[dict[str, Any]]:
    """The requests the AI SDK 6 (gateway protocol v3) sends, captured on the wire (tests/wire)."""
    return captured_requests("v3")
