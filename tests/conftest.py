"""Fixtures shared by every layer of the tests."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
# `shared/` sits beside the repository (read-only material of the team, also there for CI).
SHARED = REPO_ROOT.parent / "shared"

SEED_QUERY = "What is the capital of France?"
SEED_DOCUMENTS = (
    "Paris is the capital of France.",
    "Berlin is the capital of Germany.",
    "Madrid is the capital of Spain.",
)
SEED_MODEL = "cohere/rerank-v3.5"


@pytest.fixture(scope="session")
def wire_requests() -> list[dict[str, Any]]:
    """The requests the AI SDK sends, captured on the wire (shared/specs/wire)."""
    path = SHARED / "specs" / "wire" / "ai-sdk-requests.json"
    if not path.exists():
        pytest.skip(f"the shared wire captures are not beside the repository ({path.name})")
    requests: list[dict[str, Any]] = json.loads(path.read_text())["requests"]
    return requests
