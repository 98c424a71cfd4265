"""Gateways for the service tests: real HTTP servers on loopback (tests/scripted_http.py) that
answer as the test needs."""

from __future__ import annotations

import asyncio
import dataclasses
import json

import orjson

from rerank.server._config import Settings, Upstream
from tests.scripted_http import Reply, Request, ScriptedServer
from tools.waiting import until_async


async def rank_in_order(request: Request) -> Reply:
    """A gateway that ranks the documents in the order sent, at a cost of 0.001 a call."""
    documents = orjson.loads(request.body)["documents"]["values"]
    ranking = [{"index": i, "relevanceScore": 1 - i / 100} for i in range(len(documents))]
    body = {"ranking": ranking, "providerMetadata": {"gateway": {"cost": "0.001"}}}
    return Reply(body=orjson.dumps(body))


class HeldGateway:
    """A gateway (a real HTTP server on loopback) that holds every request until released, so
    a test knows when calls are in flight: when their requests have arrived here."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.server = ScriptedServer(self._answer)
        self._arrived = asyncio.Event()

    async def _answer(self, request: Request) -> Reply:
        self._arrived.set()
        await self.release.wait()
        count = len(json.loads(request.body)["documents"]["values"])
        ranking = [{"index": i, "relevanceScore": 1 - i / count} for i in range(count)]
        return Reply(body=json.dumps({"ranking": ranking}).encode())

    def settings(self, base: Settings) -> Settings:
        return dataclasses.replace(
            base, upstream=Upstream.GATEWAY, gateway_url=self.server.url, api_key="k"
        )

    async def holding(self, calls: int) -> None:
        """Return once `calls` requests are held here (fail after 5 s)."""
        await until_async(
            lambda: len(self.server.requests) >= calls,
            f"{calls} requests held",
            timeout=5,
            changed=self._arrived,
        )
