"""The HTTP port in the server's life: the ready line, every worker serving it, a bad setting
stopping the start, and a stop that answers the calls in flight first."""

from __future__ import annotations

import asyncio
import dataclasses
import re
import ssl
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import trustme

from rerank.server._app import start_server
from tests.conftest import SEED_DOCUMENTS, SEED_QUERY
from tests.e2e.processes import RERANK_SERVER, start
from tests.http.conftest import HTTP, base_url
from tests.service.gateways import HeldGateway
from tools.processes import Process, run
from tools.waiting import until_async

COHERE = {"model": "rerank-v3.5", "query": SEED_QUERY, "documents": list(SEED_DOCUMENTS)}


@pytest.fixture
def processes() -> Iterator[list[Process]]:
    started: list[Process] = []
    yield started
    for process in reversed(started):
        process.stop()


@pytest.mark.e2e
async def test_every_worker_serves_the_port_the_ready_line_names(
    processes: list[Process],
) -> None:
    server = start(processes, [RERANK_SERVER, "--port", "0", "--http-port", "0", "--workers", "2"])
    url = server.wait_for(r"rerank http listening on (http://\S+)").group(1)
    server.wait_for(r"rerank server listening on")
    async with httpx.AsyncClient(timeout=10) as client:
        # New connections, spread by the kernel over both workers' listeners.
        for _ in range(8):
            answer = await client.post(
                f"{url}/v2/rerank", json=COHERE, headers={"connection": "close"}
            )
            assert answer.status_code == 200
    assert re.search(r"2 worker process", server.output)


@pytest.mark.e2e
async def test_a_bad_http_setting_stops_the_start_with_one_line() -> None:
    finished = await run(
        [RERANK_SERVER, "--http-port", "0"],
        timeout=60,
        env={"RERANK_HTTP_HEADER_TIMEOUT": "0"},
    )
    assert finished.returncode == 2
    assert finished.stderr.strip().splitlines() == [
        "rerank-server: error: RERANK_HTTP_HEADER_TIMEOUT must be a number in (0, 600], got '0'"
    ]


async def test_a_stop_answers_the_calls_in_flight_then_closes() -> None:
    gateway = HeldGateway()
    async with gateway.server:
        running = await start_server(gateway.settings(HTTP))
        url = base_url(running)
        async with httpx.AsyncClient(timeout=10) as client:
            call = asyncio.create_task(client.post(f"{url}/v2/rerank", json=COHERE))
            await gateway.holding(1)
            stopping = asyncio.create_task(running.stop())
            await until_async(lambda: closed(url), "the HTTP port no longer listening")
            assert not call.done()
            gateway.release.set()
            answer = await call
            await stopping
            assert answer.status_code == 200
            with pytest.raises(httpx.ConnectError):
                await client.get(f"{url}/healthz")


async def closed(url: str) -> bool:
    """Whether a new connection to `url`'s port is refused."""
    port = int(url.rsplit(":", 1)[1])
    try:
        _, writer = await asyncio.open_connection("127.0.0.1", port)
    except ConnectionRefusedError:
        return True
    writer.close()
    await writer.wait_closed()
    return False


async def test_the_tls_settings_apply_to_the_http_port(tmp_path: Path) -> None:
    authority = trustme.CA()
    issued = authority.issue_cert("127.0.0.1")
    cert, key, ca = tmp_path / "cert.pem", tmp_path / "key.pem", tmp_path / "ca.pem"
    issued.cert_chain_pems[0].write_to_path(str(cert))
    issued.private_key_pem.write_to_path(str(key))
    authority.cert_pem.write_to_path(str(ca))
    running = await start_server(
        dataclasses.replace(HTTP, tls_cert_file=str(cert), tls_key_file=str(key))
    )
    try:
        assert running.http is not None
        url = f"https://127.0.0.1:{running.http.port}"
        trusting = ssl.create_default_context(cafile=str(ca))
        async with httpx.AsyncClient(timeout=10, verify=trusting) as client:
            answer = await client.post(f"{url}/v2/rerank", json=COHERE)
        assert answer.status_code == 200
        async with httpx.AsyncClient(timeout=10) as plain:
            with pytest.raises(httpx.RemoteProtocolError):
                await plain.get(f"http://127.0.0.1:{running.http.port}/healthz")
    finally:
        await running.stop()


async def test_a_full_server_refuses_at_once_with_429() -> None:
    gateway = HeldGateway()
    async with gateway.server:
        running = await start_server(
            gateway.settings(dataclasses.replace(HTTP, max_concurrent_calls=1))
        )
        try:
            url = base_url(running)
            async with httpx.AsyncClient(timeout=10) as client:
                held = asyncio.create_task(client.post(f"{url}/v2/rerank", json=COHERE))
                await gateway.holding(1)
                refused = await client.post(f"{url}/v2/rerank", json=COHERE)
                assert refused.status_code == 429
                assert refused.headers["retry-after"] == "1"
                connect = await client.post(
                    f"{url}/rerank.v1.RerankService/Rerank",
                    json={"query": SEED_QUERY, "documents": [{"text": "x"}]},
                )
                assert connect.status_code == 429
                assert connect.json()["code"] == "resource_exhausted"
                gateway.release.set()
                assert (await held).status_code == 200
        finally:
            await running.stop()


@pytest.mark.e2e
async def test_an_http_port_another_server_holds_stops_the_start() -> None:
    running = await start_server(HTTP)
    try:
        assert running.http is not None
        taken = running.http.port
        finished = await run([RERANK_SERVER, "--port", "0", "--http-port", str(taken)], timeout=60)
    finally:
        await running.stop()
    assert finished.returncode == 1
    assert (
        f"cannot serve on 127.0.0.1:{taken}: another server already serves it"
        in finished.stdout + finished.stderr
    )
