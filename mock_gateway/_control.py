"""The control API: a test suite in any language scripts the mock over HTTP (``--control``).

It does what ``MockScript`` does for a Python harness, with the same names, on the mock's own
port but never on a gateway path::

    POST /_control/fail_next   {"fault": NAME, "times"?: N, ...params}   MockScript.fail_next
    POST /_control/set_scores  {"scores": {text: score, ...}}            MockScript.set_scores
    POST /_control/reset       (any body, or none)                       MockScript.reset

The body of ``fail_next`` is a ``providerOptions.mockGateway`` object without ``key``, so a
refusal names the field as ``providerOptions.mockGateway.<param>``. Every success is
``200 {"pendingFaults": N}``: how many rerank calls the scripted faults will still hit. A
refusal is 400 in the gateway's error envelope. The bearer token is checked as on the gateway
paths (with ``--api-key K`` only ``Bearer K`` passes). Without ``MockSettings.control`` these
paths do not exist (404), so a mock started without the flag cannot be scripted from outside.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any

from ._http import Reply, json_reply
from ._protocol import GatewayError, parse_json
from ._script import MockScript

CONTROL_PREFIX = "/_control"
"""Where the control API lives: outside ``/v3/ai``, ``/v4/ai`` and the Cohere paths."""


def _object(body: bytes) -> dict[str, Any]:
    data = parse_json(body) if body.strip() else {}
    if not isinstance(data, dict):
        raise GatewayError(400, "Request body must be a JSON object")
    return data


def _state(script: MockScript) -> Reply:
    return json_reply(200, {"pendingFaults": script.pending_faults})


def _fail_next(script: MockScript, body: bytes) -> Reply:
    spec = _object(body)
    fault = spec.pop("fault", None)
    if not isinstance(fault, str):
        raise GatewayError(
            400, "fault must be the name of a fault, e.g. 'rate_limit'", param="fault"
        )
    times = spec.pop("times", 1)
    try:
        script.fail_next(fault, times=times, **spec)
    except ValueError as exc:
        raise GatewayError(400, str(exc)) from None
    return _state(script)


def _set_scores(script: MockScript, body: bytes) -> Reply:
    scores = _object(body).get("scores")
    if not isinstance(scores, dict):
        raise GatewayError(400, "scores must be an object {document text: score}", param="scores")
    try:
        script.set_scores(scores)
    except ValueError as exc:
        raise GatewayError(400, str(exc), param="scores") from None
    return _state(script)


def _reset(script: MockScript, body: bytes) -> Reply:
    script.reset()
    return _state(script)


CONTROL_ROUTES: Mapping[str, Callable[[MockScript, bytes], Reply]] = MappingProxyType(
    {
        f"{CONTROL_PREFIX}/fail_next": _fail_next,
        f"{CONTROL_PREFIX}/set_scores": _set_scores,
        f"{CONTROL_PREFIX}/reset": _reset,
    }
)
"""Every control path (all ``POST``) and the action it runs on the app's script."""
