"""Fixtures shared by every layer of the tests."""

from __future__ import annotations

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]

SEED_QUERY = "What is the capital of France?"
SEED_DOCUMENTS = (
    "Paris is the capital of France.",
    "Berlin is the capital of Germany.",
    "Madrid is the capital of Spain.",
)
SEED_MODEL = "cohere/rerank-v3.5"
