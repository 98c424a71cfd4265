"""The AI Gateway's own protocol on the HTTP port: `POST /v3/ai/reranking-model`,
`POST /v4/ai/reranking-model`, `GET /v3/ai/config`, `GET /v4/ai/config`, as the AI SDK's
`createGateway({baseURL: 'http://HOST:PORT/v4/ai'})` speaks them (the shapes are
`rerank.server._gateway_protocol`'s, the ones the adapter and the mock use).

A rerank body becomes the contract's RerankRequest inside the call (the pipeline's handler),
so a request outside the protocol is an `InvalidRequest` with its span and access-log line like
any other; the model comes from `ai-model-id`, the version from the path. `/config` is the
service's ListModels: the reranking models the caller may use. Errors come from the one table
(`rerank.server._status`) and are written in the gateway's envelope by `GATEWAY_ERRORS`.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import cast

import grpc
import msgspec
from google.protobuf.message import Message

from rerank.contract import NotJsonError, from_struct, to_struct
from rerank.server._calls import CallRecord
from rerank.server._errors import (
    FieldViolation,
    InvalidRequest,
    MalformedRequest,
    ModelNotFound,
    RerankError,
    UpstreamNotFound,
)
from rerank.server._gateway_protocol import (
    CONFIG_PATH,
    PROTOCOL_VERSIONS,
    RERANK_PATH,
    TEAM_HEADER,
    ConfigAnswer,
    ErrorBody,
    ErrorEnvelope,
    ProtocolVersion,
    ProtocolViolation,
    RankedItem,
    RerankAnswer,
    WarningKind,
    check_rerank_headers,
    config_model,
    parse_rerank_body,
    warning,
)
from rerank.server._status import retry_after_header
from rerank.v1 import rerank_service_pb2 as pb

Handler = Callable[[CallRecord, bytes], Awaitable[Message]]
Headers = list[tuple[bytes, bytes]]


@dataclass(frozen=True)
class GatewayRoute:
    """One route of the protocol: its version, the service's method, and its HTTP method."""

    version: ProtocolVersion
    method: str
    http_method: str


GATEWAY_ROUTES: Mapping[str, GatewayRoute] = {
    path: route
    for version in PROTOCOL_VERSIONS.values()
    for path, route in (
        (version.base_path + RERANK_PATH, GatewayRoute(version, "Rerank", "POST")),
        (version.base_path + CONFIG_PATH, GatewayRoute(version, "ListModels", "GET")),
    )
}

#: The service's status codes as the gateway's status and `error.type`: the one translation at
#: this boundary (anything else is 500 `internal_server_error`).
GATEWAY_ERRORS: Mapping[grpc.StatusCode, tuple[int, str]] = {
    grpc.StatusCode.INVALID_ARGUMENT: (400, "invalid_request_error"),
    grpc.StatusCode.FAILED_PRECONDITION: (400, "invalid_request_error"),
    grpc.StatusCode.UNAUTHENTICATED: (401, "authentication_error"),
    grpc.StatusCode.PERMISSION_DENIED: (403, "forbidden"),
    grpc.StatusCode.NOT_FOUND: (404, "model_not_found"),
    grpc.StatusCode.RESOURCE_EXHAUSTED: (429, "rate_limit_exceeded"),
    grpc.StatusCode.UNAVAILABLE: (503, "internal_server_error"),
    grpc.StatusCode.DEADLINE_EXCEEDED: (504, "internal_server_error"),
}
_WARNING_KINDS: Mapping[int, WarningKind] = {
    pb.Warning.TYPE_UNSUPPORTED: "unsupported",
    pb.Warning.TYPE_COMPATIBILITY: "compatibility",
    pb.Warning.TYPE_OTHER: "other",
    pb.Warning.TYPE_DEPRECATED: "deprecated",
}
_ENCODE = msgspec.json.Encoder()
_TEAM = re.compile(r"[!-~]+")


@dataclass(frozen=True)
class JsonCall:
    """What the door runs for one call of a JSON dialect: the service's `method` with
    `handler` through the pipeline, its answer's bytes written by `answer`, a failure by
    `error` (status, headers, body)."""

    method: str
    handler: Handler
    answer: Callable[[Message, CallRecord], bytes]
    error: Callable[[RerankError | None, grpc.StatusCode, str], tuple[int, Headers, bytes]]


def gateway_call(
    route: GatewayRoute, headers: Mapping[bytes, bytes], methods: Mapping[str, Handler]
) -> JsonCall:
    """The call `route` makes of a request with `headers`, over the service's `methods`."""
    version = route.version
    text = {k.decode("latin-1"): v.decode("latin-1") for k, v in headers.items()}
    model = text.get("ai-model-id", "")
    method = methods[route.method]
    error = functools.partial(gateway_error, version, model=model)
    if route.method == "ListModels":

        async def list_models(call: CallRecord, data: bytes) -> Message:
            return await method(call, pb.ListModelsRequest().SerializeToString())

        return JsonCall(
            route.method, list_models, lambda answer, _: config_answer(version, answer), error
        )

    async def rerank(call: CallRecord, data: bytes) -> Message:
        request = rerank_request(version, text, data)
        call.team = caller_team(text)
        return await method(call, request.SerializeToString())

    return JsonCall(route.method, rerank, lambda answer, _: rerank_answer(version, answer), error)


def rerank_request(
    version: ProtocolVersion, headers: Mapping[str, str], data: bytes
) -> pb.RerankRequest:
    """The RerankRequest a gateway rerank call asks for (headers and body, spec §1-§2)."""
    try:
        model = check_rerank_headers(headers, version)
        body = parse_rerank_body(data, allow_empty=True)
    except ProtocolViolation as violation:
        if violation.param == "body":
            raise MalformedRequest(violation.message) from None
        raise InvalidRequest([FieldViolation(violation.param, violation.problem)]) from None
    request = pb.RerankRequest(model=model, query=body.query, return_documents=False)
    try:
        if body.kind == "text":
            texts = (value for value in body.values if isinstance(value, str))
            request.documents.extend(pb.Document(text=value) for value in texts)
        else:
            request.documents.extend(
                pb.Document(object=to_struct(value, f"documents.values[{index}]"))
                for index, value in enumerate(body.values)
                if isinstance(value, dict)
            )
        if body.provider_options:
            request.provider_options.CopyFrom(to_struct(body.provider_options, "providerOptions"))
    except NotJsonError as error:
        raise InvalidRequest(
            [FieldViolation(v.path, v.description) for v in error.violations]
        ) from None
    if body.top_n is not None:
        request.top_n = min(body.top_n, 2**31 - 1)
    return request


def caller_team(headers: Mapping[str, str]) -> str | None:
    """The team of `x-vercel-ai-gateway-team`, passed on to the gateway for this call; None
    without one (the server's own team then). Refused unless it could go out as a header as
    the SDK sends it: visible ASCII without spaces, as `RERANK_GATEWAY_TEAM`."""
    team = headers.get(TEAM_HEADER, "")
    if not team:
        return None
    if _TEAM.fullmatch(team) is None:
        problem = "must be a team id or slug: visible ASCII without spaces"
        raise InvalidRequest([FieldViolation(TEAM_HEADER, problem)])
    return team


def rerank_answer(version: ProtocolVersion, answer: Message) -> bytes:
    """A RerankResponse as the gateway's 200 body (spec §3): its ranking, its
    warnings as `version` allows them, its provider metadata (`gateway.cost` the call's total
    over every window)."""
    response = cast(pb.RerankResponse, answer)
    warnings = []
    for said in response.warnings:
        kind, message = _WARNING_KINDS.get(said.type, "other"), said.message
        if kind not in version.warning_types:  # a v3 SDK would refuse the whole answer
            kind, message = "other", f"{kind} setting {said.setting!r}: {message}"
        warnings.append(warning(kind, said.feature, said.details, message, said.setting))
    metadata = (
        from_struct(response.provider_metadata) if response.HasField("provider_metadata") else None
    )
    ranking = [RankedItem(ranked.original_index, ranked.score) for ranked in response.ranking]
    return _ENCODE.encode(RerankAnswer(ranking, warnings or None, metadata or None))


def config_answer(version: ProtocolVersion, answer: Message) -> bytes:
    """A ListModelsResponse as the body of `GET /config` (spec §6)."""
    models = cast(pb.ListModelsResponse, answer).models
    listed = [
        config_model(
            version, model.id, model.name, model.description or None, dict(model.pricing) or None
        )
        for model in models
    ]
    return _ENCODE.encode(ConfigAnswer(listed))


def gateway_error(
    version: ProtocolVersion,
    error: RerankError | None,
    code: grpc.StatusCode,
    message: str,
    model: str,
) -> tuple[int, Headers, bytes]:
    """The gateway's status, headers (`retry-after` and `retry-after-ms` when waiting helps)
    and envelope for a call that failed with `code` (and `error`, unless a bug)."""
    status, kind = GATEWAY_ERRORS.get(code, (500, "internal_server_error"))
    param: object = None
    if isinstance(error, UpstreamNotFound):
        kind = "not_found"
    elif isinstance(error, ModelNotFound):
        param = {"modelId": model}
    elif isinstance(error, InvalidRequest) and error.violations:
        param = error.violations[0].field
    if kind not in version.error_types:  # what the SDK of this version makes of any other
        kind = "internal_server_error"
    headers = retry_after_header(error, millis=True)
    return status, headers, _ENCODE.encode(ErrorEnvelope(ErrorBody(message, kind, param)))


def gateway_refusal(status: int, message: str) -> bytes:
    """The envelope of a request refused before the protocol (a status of the HTTP port's)."""
    kind = {429: "rate_limit_exceeded"}.get(
        status, "invalid_request_error" if status < 500 else "internal_server_error"
    )
    return _ENCODE.encode(ErrorEnvelope(ErrorBody(message, kind)))
