"""`RerankClient` (over `grpc.Channel`) and `AsyncRerankClient` (over `grpc.aio.Channel`)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from types import TracebackType
from typing import Any, Self

import grpc
import grpc.aio

from rerank.v1 import rerank_service_pb2 as pb
from rerank.v1 import rerank_service_pb2_grpc as pb_grpc

from ._config import DEFAULT_TIMEOUT, USE_DEFAULT, UseDefault, channel_options
from ._exceptions import map_rpc_errors
from ._models import BatchItem, CallerUsage, ModelInfo, RerankRequest, RerankResult
from ._wire import (
    build_batch_request,
    build_rerank_request,
    parse_batch_response,
    parse_get_usage_response,
    parse_list_models_response,
    parse_rerank_response,
)

__all__ = ["AsyncRerankClient", "MetadataLike", "RerankClient"]

MetadataLike = Mapping[str, str] | Sequence[tuple[str, str | bytes]]
"""Per-call metadata: a mapping, or `(key, value)` pairs (keys lower-case; `-bin` keys bytes)."""

ServiceConfig = Mapping[str, Any] | str | UseDefault | None


def _normalize_metadata(metadata: MetadataLike | None) -> tuple[tuple[str, str | bytes], ...]:
    if metadata is None:
        return ()
    if isinstance(metadata, Mapping):
        return tuple(metadata.items())
    return tuple((key, value) for key, value in metadata)


class _Settings:
    """What both clients share: the default deadline and the metadata sent on every call."""

    __slots__ = ("metadata", "timeout")

    def __init__(self, timeout: float | None, metadata: MetadataLike | None) -> None:
        self.timeout = timeout
        self.metadata = _normalize_metadata(metadata)

    def deadline(self, timeout: float | None) -> float | None:
        return self.timeout if timeout is None else timeout

    def call_metadata(self) -> tuple[tuple[str, str | bytes], ...] | None:
        # None rather than () so gRPC adds nothing at all when there is nothing to add.
        return self.metadata or None


class RerankClient:
    """A synchronous client of `rerank.v1.RerankService`.

    Example::

        with RerankClient("127.0.0.1:50051") as client:
            result = client.rerank("capital of France?", ["Paris is...", "Berlin is..."], top_n=1)
            print(result.reranked_documents)
            for item in client.rerank_many([RerankRequest("capital of Spain?", ["Madrid..."])]):
                print(item.result if item.ok else item.error)

    Args:
        target: The server address, e.g. `127.0.0.1:50051` or `dns:///rerank.internal:443`.
        timeout: The default per-call deadline in seconds; None for no deadline.
        credentials: TLS (and call) credentials; None for an insecure (plaintext) channel.
        metadata: Metadata sent with every call, e.g. `{"authorization": "Bearer ..."}`.
        options: Extra channel arguments; they override the client's own (message limits,
            retries, service config).
        service_config: The gRPC service config: by default the one shipped with the proto
            (retries UNAVAILABLE, round-robin); a mapping or JSON text for another; None for
            none.

    Every failed call raises a `RerankClientError` subclass; see `rerank.client._exceptions`.
    """

    def __init__(
        self,
        target: str,
        *,
        timeout: float | None = DEFAULT_TIMEOUT,
        credentials: grpc.ChannelCredentials | None = None,
        metadata: MetadataLike | None = None,
        options: Sequence[tuple[str, Any]] | None = None,
        service_config: ServiceConfig = USE_DEFAULT,
    ) -> None:
        channel_args = channel_options(options, service_config)
        if credentials is None:
            channel = grpc.insecure_channel(target, options=channel_args)
        else:
            channel = grpc.secure_channel(target, credentials, options=channel_args)
        self._setup(channel, timeout, metadata)

    @classmethod
    def from_channel(
        cls,
        channel: grpc.Channel,
        *,
        timeout: float | None = DEFAULT_TIMEOUT,
        metadata: MetadataLike | None = None,
    ) -> Self:
        """Wrap an existing channel; the client takes it over and closes it on `close()`.

        The channel's own options apply: the 64 MiB limits and the service config are only
        set on channels the client creates (see `channel_options` to build them yourself).
        """
        client = cls.__new__(cls)
        client._setup(channel, timeout, metadata)
        return client

    def _setup(
        self, channel: grpc.Channel, timeout: float | None, metadata: MetadataLike | None
    ) -> None:
        self._channel = channel
        self._stub = pb_grpc.RerankServiceStub(channel)
        self._settings = _Settings(timeout, metadata)

    @property
    def channel(self) -> grpc.Channel:
        """The underlying channel."""
        return self._channel

    def rerank(
        self,
        query: str,
        documents: Sequence[str] | Sequence[Mapping[str, Any]],
        *,
        model: str = "",
        top_n: int | None = None,
        provider_options: Mapping[str, Any] | None = None,
        bypass_cache: bool = False,
        return_documents: bool = True,
        timeout: float | None = None,
    ) -> RerankResult:
        """Rank `documents` by relevance to `query`, best first.

        Args:
            query: The search query.
            documents: The candidates: all text (`str`) or all JSON objects (mappings).
            model: The gateway's model slug, e.g. `cohere/rerank-v3.5`; empty for the
                server's default.
            top_n: How many of the best documents to return; None for all of them.
            provider_options: Provider-specific options, e.g.
                `{"cohere": {"maxTokensPerDoc": 512}}`.
            bypass_cache: Ask the server not to answer from, or store into, its result
                cache.
            return_documents: False asks the server not to send the documents back (the
                answer is then indices and scores, a few KB instead of the documents' size);
                the result is the same, as the client fills them in from `documents`.
            timeout: This call's deadline in seconds; None for the client's default.

        Raises:
            RerankClientError: a subclass chosen by the status code, e.g.
                `InvalidRequestError` for a malformed request.
            TypeError: for a document that is neither `str` nor a mapping, or a value JSON
                cannot hold.
        """
        request = build_rerank_request(
            query,
            documents,
            model=model,
            top_n=top_n,
            provider_options=provider_options,
            bypass_cache=bypass_cache,
            return_documents=return_documents,
        )
        with map_rpc_errors():
            response = self._stub.Rerank(
                request,
                timeout=self._settings.deadline(timeout),
                metadata=self._settings.call_metadata(),
            )
        return parse_rerank_response(response, request)

    def rerank_many(
        self, requests: Iterable[RerankRequest], *, timeout: float | None = None
    ) -> list[BatchItem]:
        """Answer many rerank requests in one call (BatchRerank): one `BatchItem` per request,
        in order.

        Each item holds the `RerankResult` that `rerank` would have returned for its request,
        or the exception it would have raised, unraised (`BatchItem.unwrap` raises it), so
        one failure does not hide the other answers. The server answers a few requests at
        once, each as a `rerank` alone (cache, windows, retries); the deadline bounds them
        all: those not done shortly before it come back as `DeadlineExceededError` items.

        Args:
            requests: The requests, at most the server's batch limit (100 by default); the
                whole call at most its message limit (64 MiB by default).
            timeout: The whole call's deadline in seconds; None for the client's default.

        Raises:
            InvalidRequestError: more requests than the server's batch limit.
            RerankClientError: the call as a whole failed, e.g. `UnavailableError`, or
                `MessageTooLargeError` for more bytes than a side's message limit.
            TypeError: a request that `rerank` could not build either, named `requests[i]`.
        """
        batch = build_batch_request(requests)
        with map_rpc_errors():
            response = self._stub.BatchRerank(
                batch,
                timeout=self._settings.deadline(timeout),
                metadata=self._settings.call_metadata(),
            )
        return parse_batch_response(response, batch)

    def list_models(self, *, timeout: float | None = None) -> list[ModelInfo]:
        """The reranking models the gateway offers, in its order: every page of them (the
        server's first page holds them all unless it pages; `timeout` bounds each page).

        Raises:
            RerankClientError: a subclass chosen by the status code.
        """
        models: list[ModelInfo] = []
        request = pb.ListModelsRequest()
        while True:
            with map_rpc_errors():
                response = self._stub.ListModels(
                    request,
                    timeout=self._settings.deadline(timeout),
                    metadata=self._settings.call_metadata(),
                )
            page = parse_list_models_response(response)
            models += page
            # An empty page with a token would never end: the last page is the one without.
            if not response.next_page_token or not page:
                return models
            request = pb.ListModelsRequest(page_token=response.next_page_token)

    def get_usage(self, *, timeout: float | None = None) -> CallerUsage:
        """This caller's own standing today (UTC): spend, budget, limits, calls and refusals.

        Only a named caller (a table of the server's callers file, recognised by the token in
        `metadata` or by its client certificate) has one.

        Raises:
            RerankClientError: a subclass chosen by the status code; FAILED_PRECONDITION
                (reason NOT_A_NAMED_CALLER) is a `ServerError` for a caller without a name.
        """
        with map_rpc_errors():
            response = self._stub.GetUsage(
                pb.GetUsageRequest(),
                timeout=self._settings.deadline(timeout),
                metadata=self._settings.call_metadata(),
            )
        return parse_get_usage_response(response)

    def close(self) -> None:
        """Close the channel; calls in flight are cancelled."""
        self._channel.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


class AsyncRerankClient:
    """An asyncio client of `rerank.v1.RerankService`, over `grpc.aio`.

    Example::

        async with AsyncRerankClient("127.0.0.1:50051") as client:
            result = await client.rerank("capital of France?", ["Paris is...", "Berlin is..."])

    Create it inside the event loop that will use it: a `grpc.aio` channel belongs to one loop.
    The arguments are those of `RerankClient`.
    """

    def __init__(
        self,
        target: str,
        *,
        timeout: float | None = DEFAULT_TIMEOUT,
        credentials: grpc.ChannelCredentials | None = None,
        metadata: MetadataLike | None = None,
        options: Sequence[tuple[str, Any]] | None = None,
        service_config: ServiceConfig = USE_DEFAULT,
    ) -> None:
        channel_args = channel_options(options, service_config)
        if credentials is None:
            channel = grpc.aio.insecure_channel(target, options=channel_args)
        else:
            channel = grpc.aio.secure_channel(target, credentials, options=channel_args)
        self._setup(channel, timeout, metadata)

    @classmethod
    def from_channel(
        cls,
        channel: grpc.aio.Channel,
        *,
        timeout: float | None = DEFAULT_TIMEOUT,
        metadata: MetadataLike | None = None,
    ) -> Self:
        """Wrap an existing `grpc.aio` channel; the client closes it on `close()`.

        As with `RerankClient.from_channel`, the channel's own options apply.
        """
        client = cls.__new__(cls)
        client._setup(channel, timeout, metadata)
        return client

    def _setup(
        self, channel: grpc.aio.Channel, timeout: float | None, metadata: MetadataLike | None
    ) -> None:
        self._channel = channel
        self._stub = pb_grpc.RerankServiceStub(channel)
        self._settings = _Settings(timeout, metadata)

    @property
    def channel(self) -> grpc.aio.Channel:
        """The underlying channel."""
        return self._channel

    async def rerank(
        self,
        query: str,
        documents: Sequence[str] | Sequence[Mapping[str, Any]],
        *,
        model: str = "",
        top_n: int | None = None,
        provider_options: Mapping[str, Any] | None = None,
        bypass_cache: bool = False,
        return_documents: bool = True,
        timeout: float | None = None,
    ) -> RerankResult:
        """Rank `documents` by relevance to `query`, best first; see `RerankClient.rerank`."""
        request = build_rerank_request(
            query,
            documents,
            model=model,
            top_n=top_n,
            provider_options=provider_options,
            bypass_cache=bypass_cache,
            return_documents=return_documents,
        )
        with map_rpc_errors():
            response = await self._stub.Rerank(
                request,
                timeout=self._settings.deadline(timeout),
                metadata=self._settings.call_metadata(),
            )
        return parse_rerank_response(response, request)

    async def rerank_many(
        self, requests: Iterable[RerankRequest], *, timeout: float | None = None
    ) -> list[BatchItem]:
        """Answer many rerank requests in one call (BatchRerank): one `BatchItem` per request,
        in order; see `RerankClient.rerank_many`."""
        batch = build_batch_request(requests)
        with map_rpc_errors():
            response = await self._stub.BatchRerank(
                batch,
                timeout=self._settings.deadline(timeout),
                metadata=self._settings.call_metadata(),
            )
        return parse_batch_response(response, batch)

    async def list_models(self, *, timeout: float | None = None) -> list[ModelInfo]:
        """The reranking models the gateway offers, every page; see `RerankClient.list_models`."""
        models: list[ModelInfo] = []
        request = pb.ListModelsRequest()
        while True:
            with map_rpc_errors():
                response = await self._stub.ListModels(
                    request,
                    timeout=self._settings.deadline(timeout),
                    metadata=self._settings.call_metadata(),
                )
            page = parse_list_models_response(response)
            models += page
            if not response.next_page_token or not page:
                return models
            request = pb.ListModelsRequest(page_token=response.next_page_token)

    async def get_usage(self, *, timeout: float | None = None) -> CallerUsage:
        """This caller's own standing today; see `RerankClient.get_usage`."""
        with map_rpc_errors():
            response = await self._stub.GetUsage(
                pb.GetUsageRequest(),
                timeout=self._settings.deadline(timeout),
                metadata=self._settings.call_metadata(),
            )
        return parse_get_usage_response(response)

    async def close(self) -> None:
        """Close the channel; calls in flight are cancelled."""
        await self._channel.close(None)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()
