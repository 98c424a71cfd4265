"""The mock gateway's settings: one frozen dataclass, built once by the caller."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal


@dataclass(frozen=True)
class MockSettings:
    """How a mock gateway instance behaves. Every field has a harmless default."""

    api_key: str | None = None
    """The bearer token callers must present. ``None`` accepts any non-empty token."""

    latency_ms: float = 0
    """Milliseconds slept before answering every reranking call (both endpoints)."""

    error_rate: float = 0.0
    """Fraction in ``[0, 1]`` of valid reranking calls answered ``503 internal_server_error``.

    The draw comes from a ``random.Random(seed)`` owned by the app instance, so a fresh app
    given the same sequence of requests fails the same ones.
    """

    seed: int = 0
    """Seed of the app instance's random generator (used only by ``error_rate``)."""

    cost_usd: Decimal | None = None
    """The cost every successful rerank call reports (``providerMetadata.gateway.cost``), in US
    dollars, whatever its size; ``None`` reports the model's price per search unit times the
    search units. A fixed figure makes budget tests exact."""

    control: bool = False
    """Serve the control API under ``/_control/`` (``rerank.mock_gateway._control``): scripting
    the app over HTTP, for test suites in other languages. Off, those paths are 404."""

    def __post_init__(self) -> None:
        if self.api_key is not None and not self.api_key:
            raise ValueError("api_key must be None or a non-empty string")
        if self.latency_ms < 0:
            raise ValueError("latency_ms must be >= 0")
        if self.cost_usd is not None and not (self.cost_usd.is_finite() and self.cost_usd >= 0):
            raise ValueError("cost_usd must be a finite decimal >= 0")
        if not 0.0 <= self.error_rate <= 1.0:
            raise ValueError("error_rate must be within [0, 1]")
