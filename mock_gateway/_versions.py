"""The versions of the gateway's reranking protocol the mock serves (spec §0), as data.

``@ai-sdk/gateway`` 3.x speaks v3 under ``/v3/ai``, 4.x speaks v4 under ``/v4/ai``; the exchange
is the same except for what a ``ProtocolVersion`` holds. The table is the one the server's
adapter and its HTTP port read too (``rerank.server._gateway_protocol``). The mock serves both
at once: each handler is given the version its path names and reads these fields, so nothing
else in the mock compares versions.
"""

from __future__ import annotations

from rerank.server._gateway_protocol import (
    PROTOCOL_V3,
    PROTOCOL_V4,
    PROTOCOL_VERSIONS,
    ProtocolVersion,
    http_origin,
)

__all__ = [
    "DEFAULT_PROTOCOL",
    "PROTOCOL_V3",
    "PROTOCOL_V4",
    "PROTOCOL_VERSIONS",
    "ProtocolVersion",
    "http_origin",
]

DEFAULT_PROTOCOL = PROTOCOL_V4
"""The version whose base URL the ready line and the pytest plugin's ``.url`` name: the
current SDK's. The other is served on the same host and port."""
