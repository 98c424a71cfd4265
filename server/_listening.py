"""Where the server listens: whether another server holds the port already, the workers'
shared reservation of it, the TLS it speaks there, and the `StartupError` any of them raises
(README, "The port", says why the probe binds rather than connects)."""

from __future__ import annotations

import errno
import socket

import grpc

from rerank.server._config import Settings


class StartupError(Exception):
    """The server cannot start as configured (port taken, certificate unreadable, ...)."""


def refuse_taken_port(host: str, port: int, *, overlap_failed: bool = False) -> None:
    """Raise `StartupError` when a listener (another server) already holds `host:port`.

    A probe bind with SO_REUSEADDR and without SO_REUSEPORT, closed at once: Linux refuses it
    exactly when something listens there, and allows it over TIME_WAIT leftovers (README, "The
    port", says why no connect, and what the bind itself and the workers' reservation add).
    """
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
    """A bound, non-listening SO_REUSEPORT socket holding `host:port` for the workers.

    Without SO_REUSEADDR, so that another server's probe collides with it. Linux refuses that
    bind over the TIME_WAIT leftovers of a server that bound without SO_REUSEPORT; the probe
    has passed by then, so only those leftovers refuse it, and it is taken with SO_REUSEADDR.
    """
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

    def read(path: str) -> bytes:
        with open(path, "rb") as file:
            return file.read()

    client_ca = read(settings.tls_client_ca_file) if settings.tls_client_ca_file else None
    return grpc.ssl_server_credentials(
        [(read(settings.tls_key_file), read(settings.tls_cert_file))],
        root_certificates=client_ca,
        require_client_auth=client_ca is not None,
    )
