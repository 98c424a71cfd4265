"""Where the server listens: whether another server holds the port, the workers' reservation of
it, its TLS, and the `StartupError` any of them raises (docs/design/processes.md)."""

from __future__ import annotations

import errno
import socket
from pathlib import Path

import grpc

from rerank.server._config import Settings


class StartupError(Exception):
    """The server cannot start as configured (port taken, certificate unreadable, ...)."""


def refuse_taken_port(host: str, port: int, *, overlap_failed: bool = False) -> None:
    """`StartupError` when another server listens on `host:port`: a probe bind with
    SO_REUSEADDR and without SO_REUSEPORT, which Linux refuses exactly then."""
    try:
        addresses = socket.getaddrinfo(
            host.strip("[]") or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except OSError:
        return  # not an address here: the bind says so
    for family, kind, protocol, _, address in addresses:
        with socket.socket(family, kind, protocol) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(address)
            except OSError as exc:
                if exc.errno != errno.EADDRINUSE:
                    raise StartupError(f"cannot serve on {host}:{port}: {exc.strerror}") from exc
                hint = (
                    "it does not share its port (start both with --allow-port-overlap)"
                    if overlap_failed
                    else "--allow-port-overlap (RERANK_ALLOW_PORT_OVERLAP=1) shares it on purpose, "
                    "for a zero-downtime restart"
                )
                raise StartupError(
                    f"cannot serve on {host}:{port}: another server already serves it; {hint}"
                ) from None


def reserve_port(host: str, port: int) -> socket.socket:
    """A bound SO_REUSEPORT socket on `host:port`: the workers' reservation of a port, or the
    HTTP port itself; without SO_REUSEADDR, so another server's probe collides with it, unless
    only TIME_WAIT leftovers refuse it (the probe has passed)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    for reuse_address in (0, 1):
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, reuse_address)
        try:
            sock.bind((host, port))
            return sock
        except OSError as exc:
            sock.close()
            if reuse_address or exc.errno != errno.EADDRINUSE:
                raise
    raise AssertionError("unreachable: the second bind returns or raises")


def server_credentials(settings: Settings) -> grpc.ServerCredentials | None:
    """TLS from the certificate and key files, mutual when a client CA is given."""
    if settings.tls_cert_file is None or settings.tls_key_file is None:
        return None

    ca_file = settings.tls_client_ca_file
    client_ca = Path(ca_file).read_bytes() if ca_file else None
    return grpc.ssl_server_credentials(
        [(Path(settings.tls_key_file).read_bytes(), Path(settings.tls_cert_file).read_bytes())],
        root_certificates=client_ca,
        require_client_auth=client_ca is not None,
    )
