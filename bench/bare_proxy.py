"""`python -m bench.bare_proxy --port 0 --upstream URL`: the least a Python gRPC-to-HTTP proxy does.

One unary method, `/bench.BareProxy/Forward`, with no (de)serializers (as `bench.echo_server`):
each call makes one POST, through one pooled aiohttp `ClientSession` made at start, of a
gateway request built once at start (the body and headers the bench's "direct" path sends the
mock for 20 documents) to `URL/reranking-model`, and answers the upstream's bytes unchanged.
No decoding, no checks, no cache: the server's CPU per proxied call over this one's is what its
own work costs beyond the two exchanges every such proxy makes. Prints `bare proxy listening on
HOST:PORT` when ready; SIGTERM stops it.
"""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

import aiohttp
import grpc
import orjson

from bench import _workload
from bench.echo_server import serve_floor

#: The request forwarded: the size of the proxied cell it is compared with.
DOCUMENTS = 20


async def _serve(host: str, port: int, upstream: str, api_key: str) -> None:
    prefix, suffix = _workload.http_body_parts(DOCUMENTS)
    body = prefix + orjson.dumps(_workload.QUERY) + suffix
    headers = _workload.http_headers(api_key)
    url = upstream.rstrip("/") + "/reranking-model"
    # As the server's gateway adapter pools its connections (server/_gateway_http.py).
    session = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=100),
        timeout=aiohttp.ClientTimeout(total=None),
        cookie_jar=aiohttp.DummyCookieJar(),
    )

    async def forward(request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
        async with session.post(url, data=body, headers=headers) as response:
            return await response.read()

    try:
        await serve_floor("bare proxy", "BareProxy", "Forward", forward, host, port)
    finally:
        await session.close()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.bare_proxy")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--upstream", required=True, help="the gateway's base URL (v3)")
    parser.add_argument("--api-key", default="bench", help="sent as the gateway's bearer token")
    args = parser.parse_args()
    asyncio.run(_serve(args.host, args.port, args.upstream, args.api_key))


if __name__ == "__main__":
    main()
