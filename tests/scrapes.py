"""Reading a `/metrics` scrape in tests: every sample by name and labels, through
prometheus-client's own parser of the text format."""

from __future__ import annotations

import urllib.request
from collections.abc import Callable, Mapping

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from rerank.server._prometheus import Exposition, PrometheusRecorder
from tools.waiting import until_async


class Scrape:
    """The samples of one scrape."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.samples: list[tuple[str, Mapping[str, str], float]] = [
            (sample.name, sample.labels, sample.value)
            for family in text_string_to_metric_families(text)
            for sample in family.samples
        ]

    @classmethod
    def at(cls, url: str) -> Scrape:
        """What a server's `/metrics` endpoint at `url` shows now."""
        with urllib.request.urlopen(url, timeout=10) as response:
            return cls(response.read().decode())

    @classmethod
    def of(cls, recorder: PrometheusRecorder) -> Scrape:
        """What `/metrics` shows of what `recorder` holds (an in-process server's metrics)."""
        return cls(generate_latest(Exposition(recorder.registry, {"version": "test"})).decode())

    def total(self, name: str, **labels: str) -> float:
        """The sum of `name` over every sample whose labels include `labels`."""
        return sum(
            value
            for sample, have, value in self.samples
            if sample == name and all(have.get(k) == v for k, v in labels.items())
        )

    def labels(self, name: str, label: str) -> set[str]:
        """The values `label` takes on the samples of `name`."""
        return {have[label] for sample, have, _ in self.samples if sample == name and label in have}

    def line(self, name: str, **labels: str) -> str:
        """The one exposition line of `name` with exactly `labels`, as the scrape wrote it."""
        rendered = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
        prefix = f"{name}{{{rendered}}} " if labels else f"{name} "
        (found,) = [line for line in self.text.splitlines() if line.startswith(prefix)]
        return found


async def scrape_until(
    recorder: PrometheusRecorder, holds: Callable[[Scrape], bool], timeout: float = 10
) -> Scrape:
    """Scrape until `holds` is true of a scrape (a call's end is recorded as its handler
    returns, which may be a moment after the caller has its answer)."""
    last = [Scrape.of(recorder)]

    def held() -> Scrape | None:
        last[0] = Scrape.of(recorder)
        return last[0] if holds(last[0]) else None

    return await until_async(held, lambda: last[0].text, timeout=timeout)


def ended(result: Scrape, method: str, status: str) -> float:
    return result.total(
        "grpc_server_call_duration_seconds_count", grpc_method=method, grpc_status=status
    )
