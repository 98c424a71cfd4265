"""The versions of the gateway's reranking protocol the mock serves (spec §0), as data.

``@ai-sdk/gateway`` 3.x speaks v3 under ``/v3/ai``, 4.x speaks v4 under ``/v4/ai``; the exchange
is the same except for what a ``ProtocolVersion`` holds. The mock serves both at once: each
handler is given the version its path names and reads these fields, so nothing else in the
mock compares versions.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType


@dataclass(frozen=True)
class ProtocolVersion:
    """What one version of the protocol requires and allows."""

    name: str
    """``"v3"`` or ``"v4"``: the first segment of the base path ``/{name}/ai``."""
    specification_version: str
    """The value the ``ai-reranking-model-specification-version`` header must have."""
    config_specification_version: str
    """``specification.specificationVersion`` of every model ``GET /config`` lists (the SDK's
    schema demands exactly this literal)."""
    warning_types: tuple[str, ...]
    """The warning types the SDK of this version accepts; any other fails its whole call."""
    error_types: tuple[str, ...]
    """The ``error.type`` values the SDK of this version maps to an error class of its own."""

    @property
    def base_path(self) -> str:
        """The path a gateway client's base URL ends in, e.g. ``/v4/ai``."""
        return f"/{self.name}/ai"

    def base_url(self, host: str, port: int) -> str:
        """The base URL of this version on ``host:port``, e.g. ``http://127.0.0.1:8080/v4/ai``."""
        return http_origin(host, port) + self.base_path


def http_origin(host: str, port: int) -> str:
    """``http://HOST:PORT``, an IPv6 address in brackets."""
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


_V3_WARNING_TYPES = ("unsupported", "compatibility", "other")
_V3_ERROR_TYPES = (
    "authentication_error",
    "invalid_request_error",
    "forbidden",
    "model_not_found",
    "failed_dependency",
    "rate_limit_exceeded",
    "internal_server_error",
)

PROTOCOL_V3 = ProtocolVersion(
    name="v3",
    specification_version="3",
    config_specification_version="v3",
    warning_types=_V3_WARNING_TYPES,
    error_types=_V3_ERROR_TYPES,
)
"""``ai`` 6 with ``@ai-sdk/gateway`` 3.x."""

PROTOCOL_V4 = ProtocolVersion(
    name="v4",
    specification_version="4",
    config_specification_version="v4",
    warning_types=(*_V3_WARNING_TYPES, "deprecated"),
    error_types=(*_V3_ERROR_TYPES, "not_found"),
)
"""``ai`` 7 with ``@ai-sdk/gateway`` 4.x: what ``npm install ai`` gives today."""

PROTOCOL_VERSIONS: Mapping[str, ProtocolVersion] = MappingProxyType(
    {version.name: version for version in (PROTOCOL_V3, PROTOCOL_V4)}
)
"""Every version the mock serves, by name."""

DEFAULT_PROTOCOL = PROTOCOL_V4
"""The version whose base URL the ready line and the pytest plugin's ``.url`` name: the
current SDK's. The other is served on the same host and port."""
