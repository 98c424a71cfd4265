"""The ASGI application: routing, body reading, and turning replies into ASGI messages.

The routes are one table built per app: each protocol version's two paths (from
``PROTOCOL_VERSIONS``), the Cohere-compatible ones, and the control API when it is on.

All state (settings, the random generator of ``error_rate``, the per-key counts of ``times``
faults, a test's ``MockScript``) lives on the ``MockGateway`` instance that ``create_app``
builds, so two apps in one process never share anything.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from dataclasses import dataclass
from functools import partial
from types import MappingProxyType
from typing import Any

from rerank.server._gateway_protocol import CONFIG_PATH, MODEL_ID_HEADER, RERANK_PATH, TEAM_HEADER

from . import _cohere
from ._catalogue import config_body
from ._control import CONTROL_ROUTES
from ._faults import FAULT_OPTION, Fault, parse_fault, render
from ._http import Drop, Reply, json_reply
from ._malformed import Normal
from ._protocol import (
    GatewayError,
    check_auth,
    check_rerank_headers,
    find_model,
    generation_id,
    parse_rerank_body,
    rank,
    ranking_items,
    success_payload,
)
from ._script import MockScript
from ._settings import MockSettings
from ._versions import PROTOCOL_VERSIONS, ProtocolVersion

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

MAX_BODY_BYTES = 64 * 1024 * 1024
"""Larger request bodies are refused with 413 before they are read to the end."""

_COHERE_VERSIONS: Mapping[str, str] = MappingProxyType({"/v1/rerank": "1", "/v2/rerank": "2"})
# A header value h11 refuses: see MockGateway._drop.
_UNSENDABLE_HEADER = (b"x-mock-gateway-drop", b"\r\n")


class ConnectionDropped(Exception):
    """Raised by the app to break the connection on purpose (the ``drop`` fault).

    Over a real socket uvicorn then closes the connection (and logs the exception); an
    in-process transport such as ``httpx.ASGITransport`` re-raises it to the caller.
    """


class _BodyTooLarge(Exception):
    pass


@dataclass(frozen=True)
class _Request:
    method: str
    path: str
    headers: Mapping[str, str]
    body: bytes


@dataclass(frozen=True)
class _Route:
    method: str
    handle: Callable[[_Request], Awaitable[Reply | Drop]]


class MockGateway:
    """A deterministic AI Gateway as an ASGI 3 application (build it with ``create_app``)."""

    def __init__(self, settings: MockSettings) -> None:
        self.settings = settings
        self._random = random.Random(settings.seed)
        self._fault_hits: dict[str, int] = {}
        self.script = MockScript()
        """Faults and scores a test scripts for the next calls (``rerank.mock_gateway._script``)."""
        self._routes: dict[str, _Route] = {}
        for protocol in PROTOCOL_VERSIONS.values():
            self._routes[protocol.base_path + RERANK_PATH] = _Route(
                "POST", partial(self._rerank, protocol)
            )
            config = json_reply(200, config_body(protocol.config_specification_version))
            self._routes[protocol.base_path + CONFIG_PATH] = _Route(
                "GET", partial(self._config, config)
            )
        for path, api_version in _COHERE_VERSIONS.items():
            self._routes[path] = _Route("POST", partial(self._cohere, api_version))
        if settings.control:
            for path, action in CONTROL_ROUTES.items():
                self._routes[path] = _Route("POST", partial(self._control, action))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The ASGI entry point: ``lifespan`` and ``http`` scopes; websockets are refused."""
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
            return
        if scope["type"] != "http":
            await send({"type": "websocket.close", "code": 1003})
            return
        headers: dict[str, str] = {}
        for raw_name, raw_value in scope["headers"]:
            name, value = raw_name.decode("latin-1").lower(), raw_value.decode("latin-1")
            headers[name] = f"{headers[name]}, {value}" if name in headers else value
        try:
            body = await _read_body(receive)
        except _BodyTooLarge:
            await _send(self._too_large(scope["path"]), send)
            return
        if body is None:  # the client went away before sending its request
            return
        request = _Request(scope["method"], scope["path"], headers, body)
        await _send(await self._dispatch(request), send)

    async def _dispatch(self, request: _Request) -> Reply | Drop:
        route = self._routes.get(request.path)
        if route is None:
            return GatewayError(
                404, f"Not found: {request.method} {request.path}", param="path"
            ).reply(_generation_id(request))
        if request.method != route.method:
            return GatewayError(
                405,
                f"Method {request.method} not allowed on {request.path}: use {route.method}",
                param="method",
                headers=(("allow", route.method),),
            ).reply(_generation_id(request))
        return await route.handle(request)

    async def _config(self, reply: Reply, request: _Request) -> Reply:
        try:
            check_auth(request.headers, self.settings.api_key)
        except GatewayError as error:
            return error.reply(_generation_id(request))
        return reply

    async def _rerank(self, protocol: ProtocolVersion, request: _Request) -> Reply | Drop:
        generation = _generation_id(request)
        try:
            await self._latency()
            check_auth(request.headers, self.settings.api_key)
            model = find_model(check_rerank_headers(request.headers, protocol))
            body = parse_rerank_body(request.body)
            fault = self._armed(parse_fault(body.provider_options))
            if FAULT_OPTION not in body.provider_options:
                # A request's own fault wins; only the others consume the test's script.
                fault = self.script.take_fault()
            if fault is not None and fault.name == "slow":
                await asyncio.sleep(fault.delay_seconds)
                fault = None
            full = rank(model.id, body.query, body.values, None, self.script.fixed_score)
            ranking = full if body.top_n is None else full[: body.top_n]
            payload = success_payload(
                model,
                body,
                ranking,
                request.headers.get(TEAM_HEADER),
                self.settings.cost_usd,
            )
            if fault is not None:
                normal = Normal(
                    payload, ranking_items(full), len(body.values), generation, protocol
                )
                return render(fault, normal)
            if self._unlucky():
                raise GatewayError(503, "Injected failure (error_rate)", "internal_server_error")
            return json_reply(200, payload)
        except GatewayError as error:
            return error.reply(generation)

    async def _control(
        self, action: Callable[[MockScript, bytes], Reply], request: _Request
    ) -> Reply:
        try:
            check_auth(request.headers, self.settings.api_key)
            return action(self.script, request.body)
        except GatewayError as error:
            return error.reply(_generation_id(request))

    async def _cohere(self, api_version: str, request: _Request) -> Reply:
        try:
            await self._latency()
            _cohere.check_auth(request.headers, self.settings.api_key)
            reply = _cohere.answer(api_version, request.body)
            if self._unlucky():
                raise _cohere.CohereError(503, "service unavailable (injected by error_rate)")
        except _cohere.CohereError as error:
            return error.reply()
        return reply

    def _too_large(self, path: str) -> Reply:
        message = f"Request body larger than {MAX_BODY_BYTES} bytes"
        if path in _COHERE_VERSIONS:
            return _cohere.CohereError(413, message).reply()
        return GatewayError(413, message).reply(generation_id(path.encode()))

    async def _latency(self) -> None:
        if self.settings.latency_ms > 0:
            await asyncio.sleep(self.settings.latency_ms / 1000)

    def _unlucky(self) -> bool:
        # Draw only when failures are configured, so error_rate=0 never consumes randomness.
        rate = self.settings.error_rate
        return rate > 0 and self._random.random() < rate

    def _armed(self, fault: Fault | None) -> Fault | None:
        """``fault`` if it still applies to this request, counting requests per ``key``."""
        if fault is None or fault.times is None:
            return fault
        hits = self._fault_hits.get(fault.key, 0) + 1
        self._fault_hits[fault.key] = hits
        return fault if hits <= fault.times else None


def _generation_id(request: _Request) -> str:
    # The credential is left out on purpose: ids are shown to users.
    model = request.headers.get(MODEL_ID_HEADER, "")
    return generation_id(
        request.method.encode(), request.path.encode(), model.encode(), request.body
    )


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


async def _read_body(receive: Receive) -> bytes | None:
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise _BodyTooLarge
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


async def _send(reply: Reply | Drop, send: Send) -> None:
    if isinstance(reply, Drop):
        await _drop(reply, send)
        return
    await send(_start(reply))
    await send({"type": "http.response.body", "body": reply.body})


def _start(reply: Reply) -> Message:
    headers = [
        (b"content-type", reply.content_type.encode("latin-1")),
        (b"content-length", str(len(reply.body)).encode()),
    ]
    headers += [(name.encode("latin-1"), value.encode("latin-1")) for name, value in reply.headers]
    return {"type": "http.response.start", "status": reply.status, "headers": headers}


async def _drop(drop: Drop, send: Send) -> None:
    body = drop.reply.body
    if drop.before_headers:
        # uvicorn answers 500 for an app that fails before starting its response. To close
        # without a byte instead, start the response with a header value h11 refuses: uvicorn
        # then counts the response as started, writes nothing, and closes on our exception.
        start = _start(drop.reply)
        start["headers"] = [*start["headers"], _UNSENDABLE_HEADER]
        try:
            await send(start)
        except Exception as exc:
            raise ConnectionDropped("dropped before the response headers") from exc
        raise ConnectionDropped("dropped before the response headers")
    await send(_start(drop.reply))
    await send({"type": "http.response.body", "body": body[: len(body) // 2], "more_body": True})
    raise ConnectionDropped(f"dropped after {len(body) // 2} of {len(body)} body bytes")


# One shared default instance is safe: MockSettings is frozen.
def create_app(settings: MockSettings = MockSettings()) -> MockGateway:  # noqa: B008
    """A new, independent mock gateway application for ``settings``."""
    return MockGateway(settings)
