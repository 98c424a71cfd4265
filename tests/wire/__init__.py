"""Requests the AI SDK's `rerank()` and `getAvailableModels()` send, captured on the wire.

`ai-sdk-v3-requests.json`: `ai` 6 with `@ai-sdk/gateway` 3.0.232 (protocol v3);
`ai-sdk-v4-requests.json`: `ai` 7.0.173 with `@ai-sdk/gateway` 4.0.146 (protocol v4). Copies of
the team's reference captures, kept here so that a clean clone tests against them too. Each
file's `about` says how they were taken; `body` is the literal JSON text.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

WIRE_DIR = Path(__file__).resolve().parent


def captured_requests(version: str) -> list[dict[str, Any]]:
    """The captured requests of protocol `version` (`v3` or `v4`), in capture order."""
    path = WIRE_DIR / f"ai-sdk-{version}-requests.json"
    requests: list[dict[str, Any]] = json.loads(path.read_text(encoding="utf-8"))["requests"]
    return requests
