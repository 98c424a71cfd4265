"""`python -m bench.echo_server --port 0`: the floor of one `grpc.aio` call.

One unary method, `/bench.Echo/Echo`, that answers the request's bytes unchanged. A generic
handler with no (de)serializers: no codegen, no protobuf work, nothing but grpc.aio's own cost
per call. Prints `echo server listening on HOST:PORT` when ready; SIGTERM stops it.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
from collections.abc import Awaitable, Callable
from typing import Any

import grpc


async def _echo(request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
    return request


Behaviour = Callable[[bytes, grpc.aio.ServicerContext[Any, Any]], Awaitable[bytes]]


async def serve_floor(
    what: str, service: str, method: str, behaviour: Behaviour, host: str, port: int
) -> None:
    """Serve `behaviour` as the one unary method `/bench.{service}/{method}` (bytes in, bytes
    out) until SIGTERM or SIGINT, after printing `{what} listening on HOST:PORT`: the scaffold
    of every floor the bench compares the server with."""
    server = grpc.aio.server()
    handler = grpc.method_handlers_generic_handler(
        f"bench.{service}", {method: grpc.unary_unary_rpc_method_handler(behaviour)}
    )
    server.add_generic_rpc_handlers((handler,))
    bound = server.add_insecure_port(f"{host}:{port}")
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    print(f"{what} listening on {host}:{bound}", flush=True)
    await stop.wait()
    await server.stop(1)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.echo_server")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    asyncio.run(serve_floor("echo server", "Echo", "Echo", _echo, args.host, args.port))


if __name__ == "__main__":
    main()
