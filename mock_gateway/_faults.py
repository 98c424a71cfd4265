"""Fault injection: ``providerOptions.mockGateway`` turns a valid rerank call into a bad answer.

A request opts in with ``{"providerOptions": {"mockGateway": {"fault": NAME, ...params}}}``.
Nothing else in the request is touched, and without that key the mock never misbehaves
(apart from ``MockSettings.error_rate``). The faults, their parameters and defaults:

``rate_limit``   429 ``rate_limit_exceeded`` with ``retry-after-ms: retryAfterMs`` (1000) and
                 ``retry-after`` (whole seconds, rounded up); optional ``message``.
``error``        ``status`` (500) with the envelope built from ``message`` ("Injected error"),
                 ``type`` (left out when absent, copied verbatim otherwise), ``param`` and
                 ``code`` (null), ``generationId`` (derived from the request; null leaves it out).
``slow``         sleeps ``delayMs`` (2000) milliseconds, then answers normally.
``malformed``    200 with a body that breaks the protocol, chosen by ``variant`` (see
                 MALFORMED_VARIANTS; ``huge`` pads the body with ``sizeBytes``, 20 MB).
``drop``         breaks the connection: ``variant`` ``mid_body`` (default) sends the headers,
                 a ``content-length`` and half the body; ``before_headers`` sends nothing.
``status_only``  ``status`` (502) with ``body`` (an HTML page) as ``contentType`` (text/html):
                 an answer outside the error envelope.
``warning``      the normal answer plus one warning of ``type`` (required): ``unsupported`` or
                 ``compatibility`` (``feature``, optional ``details``), ``other`` (``message``),
                 ``deprecated`` (``setting``, ``message``; v4 only). A type the request's
                 protocol version does not know is refused with 400.
``not_found``    404 ``not_found`` (v4 only; 400 on v3), optional ``message`` and ``param``.

Faults that depend on the protocol version read it from the request's ``ProtocolVersion``:
a v3 answer never carries a ``deprecated`` warning nor a ``not_found`` error, except through
``error``, which sends any envelope verbatim on either version.

Every fault also takes ``times`` and ``key``: the fault then hits only the first ``times``
requests carrying that ``key`` (default: the ``mockGateway`` object itself, canonically encoded)
and later ones are answered normally. The counts live in the app instance.
Unknown faults, unknown parameters and ill-typed parameters are refused with 400, so that a
typo in a test fails loudly instead of silently testing the happy path.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import orjson

from ._http import Drop, Reply, json_reply
from ._malformed import MALFORMED, MALFORMED_VARIANTS, Normal, with_warning
from ._protocol import GatewayError, error_reply
from ._versions import PROTOCOL_VERSIONS, ProtocolVersion

FAULT_OPTION = "mockGateway"
"""The reserved ``providerOptions`` key."""

DROP_VARIANTS = ("mid_body", "before_headers")

_DEFAULT_HTML = "<html><body><h1>502 Bad Gateway</h1><p>mock gateway</p></body></html>"

Check = Callable[[str, Any], Any]


def _number(minimum: float) -> Check:
    def check(name: str, value: Any) -> Any:
        if isinstance(value, bool) or not isinstance(value, int | float) or value < minimum:
            raise _param_error(name, f"must be a number >= {minimum:g}")
        return value

    return check


def _integer(minimum: int, maximum: int) -> Check:
    def check(name: str, value: Any) -> Any:
        if isinstance(value, bool) or not isinstance(value, int) or not minimum <= value <= maximum:
            raise _param_error(name, f"must be an integer within [{minimum}, {maximum}]")
        return value

    return check


def _string(name: str, value: Any) -> Any:
    if not isinstance(value, str):
        raise _param_error(name, "must be a string")
    return value


def _header_value(name: str, value: Any) -> Any:
    # Anything else would make the HTTP server fail instead of the mock answering.
    if not isinstance(value, str) or not value.isascii() or not value.isprintable():
        raise _param_error(name, "must be a printable ASCII string")
    return value


def _optional_string(name: str, value: Any) -> Any:
    return None if value is None else _string(name, value)


def _verbatim(name: str, value: Any) -> Any:
    return value


def _choice(options: tuple[str, ...]) -> Check:
    def check(name: str, value: Any) -> Any:
        if value not in options:
            raise _param_error(name, f"must be one of {', '.join(options)}")
        return value

    return check


@dataclass(frozen=True)
class Fault:
    """A validated fault request."""

    name: str
    params: Mapping[str, Any]
    """The fault's own parameters, as sent (defaults are applied when rendering)."""
    times: int | None
    key: str

    @property
    def delay_seconds(self) -> float:
        """How long ``slow`` sleeps."""
        return float(self.params.get("delayMs", 2000)) / 1000


# --- the faults: their parameters and how each answers ---------------------------------------

Render = Callable[[Mapping[str, Any], Normal], Reply | Drop]
"""A fault's answer, from its parameters and the normal answer."""


def _rate_limit(params: Mapping[str, Any], normal: Normal) -> Reply:
    retry_ms = params.get("retryAfterMs", 1000)
    headers = (
        ("retry-after-ms", _number_text(retry_ms)),
        ("retry-after", str(math.ceil(retry_ms / 1000))),
    )
    error = {
        "message": params.get("message", "Rate limit exceeded"),
        "type": "rate_limit_exceeded",
        "param": None,
        "code": None,
    }
    return error_reply(429, error, normal.generation_id, headers)


def _error(params: Mapping[str, Any], normal: Normal) -> Reply:
    error = {"message": params.get("message", "Injected error")}
    if "type" in params:
        error["type"] = params["type"]
    error["param"] = params.get("param")
    error["code"] = params.get("code")
    generation = params.get("generationId", normal.generation_id)
    return error_reply(params.get("status", 500), error, generation)


def _malformed(params: Mapping[str, Any], normal: Normal) -> Reply:
    return MALFORMED[params["variant"]](normal, params)


def _drop(params: Mapping[str, Any], normal: Normal) -> Drop:
    reply = json_reply(200, normal.payload)
    return Drop(reply, before_headers=params.get("variant") == "before_headers")


def _status_only(params: Mapping[str, Any], normal: Normal) -> Reply:
    body = params.get("body", _DEFAULT_HTML).encode()
    content_type = params.get("contentType", "text/html; charset=utf-8")
    return Reply(params.get("status", 502), body, content_type)


_WARNING_FIELDS: Mapping[str, Mapping[str, str | None]] = MappingProxyType(
    {
        "unsupported": {"feature": FAULT_OPTION, "details": None},
        "compatibility": {"feature": FAULT_OPTION, "details": None},
        "other": {"message": "Injected warning."},
        "deprecated": {"setting": FAULT_OPTION, "message": "Injected deprecation warning."},
    }
)
"""Each documented warning type's fields (spec §3, §0), in wire order, with the default the
``warning`` fault uses; None: left out unless the fault gives it."""


def _check_warning_fields(params: Mapping[str, Any]) -> None:
    fields = _WARNING_FIELDS[params["type"]]
    for name in params:
        if name != "type" and name not in fields:
            raise _param_error(
                name,
                f"is not a field of a {params['type']!r} warning (its fields: {', '.join(fields)})",
            )


def _warning(params: Mapping[str, Any], normal: Normal) -> Reply:
    type_ = params["type"]
    protocol = normal.protocol
    if type_ not in protocol.warning_types:
        where = _served_in(lambda version: type_ in version.warning_types)
        raise _param_error(
            "type",
            f"must be a warning type of protocol {protocol.name} "
            f"({', '.join(protocol.warning_types)}), got {type_!r}{where}",
        )
    warning = {"type": type_}
    for name, default in _WARNING_FIELDS[type_].items():
        value = params.get(name, default)
        if value is not None:
            warning[name] = value
    return with_warning(normal, warning)


def _not_found(params: Mapping[str, Any], normal: Normal) -> Reply:
    protocol = normal.protocol
    if "not_found" not in protocol.error_types:
        where = _served_in(lambda version: "not_found" in version.error_types)
        raise _param_error(
            "fault",
            f"'not_found' is not an error type of protocol {protocol.name}{where}; "
            '{"fault": "error", "status": 404, "type": "not_found"} sends it anyway',
        )
    error = {
        "message": params.get("message", "Injected: the requested resource was not found"),
        "type": "not_found",
        "param": params.get("param"),
        "code": None,
    }
    return error_reply(404, error, normal.generation_id)


def _served_in(belongs: Callable[[ProtocolVersion], bool]) -> str:
    """Where something of one version only is: ``" (it belongs to protocol v4, under /v4/ai)"``."""
    where = ", ".join(
        f"{version.name}, under {version.base_path}"
        for version in PROTOCOL_VERSIONS.values()
        if belongs(version)
    )
    return f" (it belongs to protocol {where})" if where else ""


def _number_text(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


@dataclass(frozen=True)
class _Kind:
    """One fault: the checks of its parameters, those it requires, and its answer."""

    params: Mapping[str, Check]
    render: Render | None
    """None for ``slow``, which the app answers normally after the delay."""
    required: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    """The parameters without a default, each with what it accepts."""
    check: Callable[[Mapping[str, Any]], None] | None = None
    """A check of the parameters together, once each has passed its own."""


_STATUS = _integer(200, 599)

_FAULTS: Mapping[str, _Kind] = MappingProxyType(
    {
        "rate_limit": _Kind({"retryAfterMs": _number(0), "message": _string}, _rate_limit),
        "error": _Kind(
            {
                "status": _STATUS,
                "type": _verbatim,
                "message": _string,
                "param": _verbatim,
                "code": _verbatim,
                "generationId": _optional_string,
            },
            _error,
        ),
        "slow": _Kind({"delayMs": _number(0)}, None),
        "malformed": _Kind(
            {"variant": _choice(MALFORMED_VARIANTS), "sizeBytes": _integer(0, 1 << 30)},
            _malformed,
            required={"variant": f"one of {', '.join(MALFORMED_VARIANTS)}"},
        ),
        "drop": _Kind({"variant": _choice(DROP_VARIANTS)}, _drop),
        "status_only": _Kind(
            {"status": _STATUS, "body": _string, "contentType": _header_value}, _status_only
        ),
        "warning": _Kind(
            {
                "type": _choice(tuple(_WARNING_FIELDS)),
                "feature": _string,
                "details": _string,
                "setting": _string,
                "message": _string,
            },
            _warning,
            required={"type": f"one of {', '.join(_WARNING_FIELDS)}"},
            check=_check_warning_fields,
        ),
        "not_found": _Kind({"message": _string, "param": _verbatim}, _not_found),
    }
)
_COMMON: Mapping[str, Check] = {"times": _integer(1, 1 << 31), "key": _string}


def _param_error(name: str, problem: str) -> GatewayError:
    path = f"providerOptions.{FAULT_OPTION}.{name}"
    return GatewayError(400, f"{path} {problem}", param=path)


def parse_fault(provider_options: Mapping[str, Any]) -> Fault | None:
    """The fault a request asks for, None if it asks for none; 400 if the request is invalid."""
    spec = provider_options.get(FAULT_OPTION)
    if spec is None:
        return None
    name = spec.get("fault")
    if name not in _FAULTS:
        raise _param_error("fault", f"must be one of {', '.join(_FAULTS)}")
    kind = _FAULTS[name]
    params: dict[str, Any] = {}
    for param, value in spec.items():
        if param == "fault" or param in _COMMON:
            continue
        if param not in kind.params:
            raise _param_error(param, f"is not a parameter of the {name!r} fault")
        params[param] = kind.params[param](param, value)
    for param, accepted in kind.required.items():
        if param not in params:
            raise _param_error(param, f"is required: {accepted}")
    if kind.check is not None:
        kind.check(params)
    times = _COMMON["times"]("times", spec["times"]) if "times" in spec else None
    key = _COMMON["key"]("key", spec["key"]) if "key" in spec else None
    if key is None:
        key = orjson.dumps(spec, option=orjson.OPT_SORT_KEYS).decode()
    return Fault(name, params, times, key)


def render(fault: Fault, normal: Normal) -> Reply | Drop:
    """The answer of ``fault`` (any fault but ``slow``, which only delays the normal answer).

    Raises:
        GatewayError: 400 for a fault the call's protocol version cannot carry.
    """
    answer = _FAULTS[fault.name].render
    if answer is None:
        raise AssertionError(f"fault {fault.name!r} has no rendering")  # slow never gets here
    return answer(fault.params, normal)
