"""Channel options: message limits, retries and the service config shipped with the proto."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from importlib.resources import files
from typing import Any, Final

from rerank.contract import MAX_MESSAGE_BYTES

__all__ = [
    "DEFAULT_TIMEOUT",
    "MAX_MESSAGE_LENGTH",
    "USE_DEFAULT",
    "UseDefault",
    "channel_options",
    "default_service_config",
]

DEFAULT_TIMEOUT: Final = 30.0
"""The default per-call deadline, in seconds."""

MAX_MESSAGE_LENGTH: Final = MAX_MESSAGE_BYTES
"""The largest message the client sends or receives, in bytes (64 MiB)."""


class UseDefault:
    """The type of `USE_DEFAULT`: "the shipped default", distinct from an explicit None."""

    def __repr__(self) -> str:
        return "USE_DEFAULT"


USE_DEFAULT: Final = UseDefault()
"""Pass as `service_config` (the default) to use `default_service_config()`."""


def default_service_config() -> dict[str, Any]:
    """The service config shipped with the proto (`rerank/v1/service_config.json`).

    It retries only UNAVAILABLE (up to 3 attempts with backoff) and balances round-robin. Its
    retries cover the hop to the server only: the server's answers about the gateway carry
    `grpc-retry-pushback-ms: -1` (it has retried the gateway itself), which gRPC obeys by not
    retrying, so client and server attempts never multiply. Read on each call, so no
    module-level state holds it.
    """
    text = files("rerank.v1").joinpath("service_config.json").read_text(encoding="utf-8")
    config: dict[str, Any] = json.loads(text)
    return config


def channel_options(
    options: Sequence[tuple[str, Any]] | None,
    service_config: Mapping[str, Any] | str | UseDefault | None,
) -> list[tuple[str, Any]]:
    """The channel arguments: our defaults, overridden by the caller's `options`.

    `service_config` is a config object or its JSON text, `USE_DEFAULT`, or None for none.
    """
    merged: dict[str, Any] = {
        "grpc.max_receive_message_length": MAX_MESSAGE_LENGTH,
        "grpc.max_send_message_length": MAX_MESSAGE_LENGTH,
        # Retries are on by default in current gRPC, but only a service config's retryPolicy
        # makes them happen; say so explicitly so an older runtime behaves the same.
        "grpc.enable_retries": 1,
    }
    if isinstance(service_config, UseDefault):
        service_config = default_service_config()
    if isinstance(service_config, str):
        merged["grpc.service_config"] = service_config
    elif service_config is not None:
        merged["grpc.service_config"] = json.dumps(service_config)
    # A dict rather than a list so a caller's option replaces ours instead of relying on
    # which duplicate the C core happens to honour.
    merged.update(dict(options or ()))
    return list(merged.items())
