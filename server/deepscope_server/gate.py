"""The gate in front of every RPC: bearer-token auth and the client protocol-version check.

Nothing an unauthenticated caller sends is read into memory beyond what HTTP/2 already has in
flight. grpc.aio receives and buffers a unary request whole (up to --max-message-bytes) before
it calls the handler, so a refusal issued from a unary handler came only after the bytes were in
memory: 48 unauthenticated 60 MB requests took a server from 74 MB to 3.7 GB (bench/LOAD.md).
Hence every handler the gate substitutes is request-streaming, which grpc calls at once, and it
never reads the request:
- the protected service: refused with UNAUTHENTICATED (or FAILED_PRECONDITION for a client of
  another protocol version);
- health (open, for load balancers and probes): answered as if the request were empty, i.e. the
  server's overall status; callers with the token get the per-service answer.
Server reflection needs the token like the service it describes (with a token configured): each of
its requests is a message of up to --max-message-bytes, read whole.
"""

from __future__ import annotations

import asyncio
import hmac
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

from deepscope.protocol import PROTOCOL_KEY, PROTOCOL_VERSION

from . import __version__, rich_status
from .errors import shorten

HEALTH_PREFIX = "/grpc.health.v1."
#: The handshake itself answers any protocol version.
HANDSHAKE_METHOD = "/deepscope.v1.IntrospectionService/GetServerInfo"

Handler = grpc.RpcMethodHandler


def _streaming_request(handler: Handler, behavior: Callable[..., Any]) -> Handler:
    """A request-streaming handler (grpc calls it before reading anything) of ``handler``'s response kind."""
    make = grpc.stream_stream_rpc_method_handler if handler.response_streaming else grpc.stream_unary_rpc_method_handler
    return make(behavior, response_serializer=handler.response_serializer)


def _abort_handler(handler: Handler, code: grpc.StatusCode, message: str, reason: str) -> Handler:
    """Fails with ``code`` without reading any of the request."""

    async def abort(request_iterator: Any, context: grpc.aio.ServicerContext) -> None:
        await rich_status.abort(context, code, message, reason=reason)

    return _streaming_request(handler, abort)


def _as_if_empty(handler: Handler) -> Handler:
    """A unary-request handler called with an empty request; the caller's request is never read."""
    empty = handler.request_deserializer(b"") if handler.request_deserializer else b""
    behavior = handler.unary_unary or handler.unary_stream

    if handler.response_streaming and not asyncio.iscoroutinefunction(behavior):

        async def stream(request_iterator: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            async for item in behavior(empty, context):
                yield item

        return _streaming_request(handler, stream)

    async def call(request_iterator: Any, context: grpc.aio.ServicerContext) -> Any:
        return await behavior(empty, context)  # a unary response, or a stream written with context.write

    return _streaming_request(handler, call)


class GateInterceptor(grpc.aio.ServerInterceptor):
    """Bearer-token auth (health stays open) and the client protocol-version check."""

    def __init__(self, token: str | None) -> None:
        self.expected = f"Bearer {token}".encode() if token else None

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Handler]],
        details: grpc.HandlerCallDetails,
    ) -> Handler | None:
        handler = await continuation(details)
        if handler is None:
            return None
        metadata = dict(details.invocation_metadata or ())
        authenticated = self.expected is None or hmac.compare_digest(
            str(metadata.get("authorization", "")).encode(), self.expected
        )
        if details.method.startswith(HEALTH_PREFIX):
            return handler if authenticated or handler.request_streaming else _as_if_empty(handler)
        if not authenticated:
            return _abort_handler(
                handler,
                grpc.StatusCode.UNAUTHENTICATED,
                "missing or wrong token: send metadata 'authorization: Bearer <token>'",
                "UNAUTHENTICATED",
            )
        version = str(metadata.get(PROTOCOL_KEY, "")).strip()
        if version and version != str(PROTOCOL_VERSION) and details.method != HANDSHAKE_METHOD:
            return _abort_handler(
                handler,
                grpc.StatusCode.FAILED_PRECONDITION,
                f"the client speaks protocol deepscope.v{shorten(version, 20)}; this server "
                f"({__version__}) speaks deepscope.v{PROTOCOL_VERSION}: use a client for "
                f"v{PROTOCOL_VERSION} (GetServerInfo tells what the server speaks)",
                "PROTOCOL_VERSION_MISMATCH",
            )
        return handler
