"""Requests captured on the wire exactly as each AI SDK generation sends them to a gateway.

Copies of the team's captures (gateway 3.0.232 for v3, 4.0.146 for v4), kept in the repository so
that a clean clone replays them with nothing beside it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

HERE = Path(__file__).resolve().parent


def captured_requests(version: Literal["v3", "v4"]) -> list[dict[str, Any]]:
    """The captured requests of one protocol version, in capture order."""
    path = HERE / f"ai-sdk-{version}-requests.json"
    requests: list[dict[str, Any]] = json.loads(path.read_text(encoding="utf-8"))["requests"]
    return requests
