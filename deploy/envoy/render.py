"""Print the Envoy bootstrap for rerank-server replicas, from `envoy.yaml` beside this file.

    python deploy/envoy/render.py 127.0.0.1:50051 127.0.0.1:50052 > envoy.local.yaml
    envoy --config-yaml "$(python deploy/envoy/render.py 127.0.0.1:50051 127.0.0.1:50052)"

The template is the one source of truth; this only fills in its ports and replicas. Standard
library only, so it runs with any Python 3.11+.
"""

from __future__ import annotations

import argparse
import json
import string
import sys
from collections.abc import Sequence
from pathlib import Path

TEMPLATE = Path(__file__).with_name("envoy.yaml")
DEFAULT_LISTENER_PORT = 50050
DEFAULT_ADMIN_PORT = 9901


def replica(text: str) -> tuple[str, int]:
    """`host:port` → (host, port); the host is an IP address (the cluster is STATIC)."""
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise argparse.ArgumentTypeError(f"{text!r} is not host:port")
    return host.strip("[]"), int(port)


def render(replicas: Sequence[tuple[str, int]], listener_port: int, admin_port: int) -> str:
    """The bootstrap YAML for these replicas and ports (0 lets Envoy pick a free port)."""
    if not replicas:
        raise ValueError("at least one replica")
    endpoints = [
        {"endpoint": {"address": {"socket_address": {"address": host, "port_value": port}}}}
        for host, port in replicas
    ]
    return string.Template(TEMPLATE.read_text(encoding="utf-8")).substitute(
        listener_port=listener_port,
        admin_port=admin_port,
        # JSON is YAML's flow style: a list that needs no indentation to fit the template.
        lb_endpoints=json.dumps(endpoints),
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("replicas", nargs="+", type=replica, metavar="HOST:PORT")
    parser.add_argument(
        "--port",
        type=int,
        default=DEFAULT_LISTENER_PORT,
        help=f"Envoy's gRPC port on 127.0.0.1 (default {DEFAULT_LISTENER_PORT}; 0: any free one)",
    )
    parser.add_argument(
        "--admin-port",
        type=int,
        default=DEFAULT_ADMIN_PORT,
        help=f"the admin interface's port on 127.0.0.1 (default {DEFAULT_ADMIN_PORT})",
    )
    args = parser.parse_args(argv)
    sys.stdout.write(render(args.replicas, args.port, args.admin_port))
    return 0


if __name__ == "__main__":
    sys.exit(main())
