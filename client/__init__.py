"""A Python client for `rerank.v1.RerankService`, sync and async, and the `rerank` command.

    from rerank.client import RerankClient, RerankRequest

    with RerankClient("127.0.0.1:50051") as rerank:
        result = rerank.rerank("capital of France?", ["Paris is ...", "Berlin is ..."], top_n=1)
        result.ranking[0].original_index, result.reranked_documents
        items = rerank.rerank_many([RerankRequest("capital of Spain?", ["Madrid is ..."])])
        items[0].result or items[0].error   # a RerankResult, or what rerank() would have raised

Results mirror the AI SDK's `rerank()`: `ranking` of `(original_index, score, document)` best
first, and `reranked_documents`; `RerankResult.to_json_dict()` gives the SDK's camelCase JSON.
Errors are one tree rooted at `RerankClientError` (drawn in `rerank.client._exceptions`).
"""

# The contract's enum of ErrorInfo reasons, for `RerankClientError.error_info.error_reason`.
from rerank.v1.rerank_service_pb2 import ErrorReason

from ._client import AsyncRerankClient, MetadataLike, RerankClient
from ._config import DEFAULT_TIMEOUT, USE_DEFAULT, channel_options, default_service_config
from ._exceptions import (
    DeadlineExceededError,
    ErrorInfo,
    InvalidRequestError,
    MessageTooLargeError,
    NotFoundError,
    OverloadedError,
    PermissionDeniedError,
    RateLimitedError,
    RerankClientError,
    ServerError,
    UnauthenticatedError,
    UnavailableError,
    UpstreamRateLimitedError,
    from_rpc_error,
    from_status,
)
from ._models import (
    BatchItem,
    CallerUsage,
    Document,
    ModelInfo,
    RankedDocument,
    RerankRequest,
    RerankResult,
    Usage,
    Warning,
    WarningType,
)

__all__ = [
    "DEFAULT_TIMEOUT",
    "USE_DEFAULT",
    "AsyncRerankClient",
    "BatchItem",
    "CallerUsage",
    "DeadlineExceededError",
    "Document",
    "ErrorInfo",
    "ErrorReason",
    "InvalidRequestError",
    "MessageTooLargeError",
    "MetadataLike",
    "ModelInfo",
    "NotFoundError",
    "OverloadedError",
    "PermissionDeniedError",
    "RankedDocument",
    "RateLimitedError",
    "RerankClient",
    "RerankClientError",
    "RerankRequest",
    "RerankResult",
    "ServerError",
    "UnauthenticatedError",
    "UnavailableError",
    "UpstreamRateLimitedError",
    "Usage",
    "Warning",
    "WarningType",
    "channel_options",
    "default_service_config",
    "from_rpc_error",
    "from_status",
]
