"""Typed exceptions for gRPC status codes, so callers write ``except deepscope.NotFound``."""

from __future__ import annotations

import grpc


class DeepscopeError(Exception):
    """Base class; ``code`` is the gRPC status code, ``details`` the server's message."""

    code: grpc.StatusCode = grpc.StatusCode.UNKNOWN

    def __init__(self, details: str, code: grpc.StatusCode | None = None) -> None:
        super().__init__(details)
        self.details = details
        if code is not None:
            self.code = code


class NotFound(DeepscopeError):
    code = grpc.StatusCode.NOT_FOUND


class InvalidArgument(DeepscopeError):
    code = grpc.StatusCode.INVALID_ARGUMENT


class ResourceExhausted(DeepscopeError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class Unauthenticated(DeepscopeError):
    code = grpc.StatusCode.UNAUTHENTICATED


class PermissionDenied(DeepscopeError):
    code = grpc.StatusCode.PERMISSION_DENIED


class FailedPrecondition(DeepscopeError):
    code = grpc.StatusCode.FAILED_PRECONDITION


class Unavailable(DeepscopeError):
    code = grpc.StatusCode.UNAVAILABLE


class DeadlineExceeded(DeepscopeError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED


class Cancelled(DeepscopeError):
    code = grpc.StatusCode.CANCELLED


class Internal(DeepscopeError):
    code = grpc.StatusCode.INTERNAL


_BY_CODE = {cls.code: cls for cls in (NotFound, InvalidArgument, ResourceExhausted, Unauthenticated, PermissionDenied,
                                      FailedPrecondition, Unavailable, DeadlineExceeded, Cancelled, Internal)}


def from_rpc_error(error: grpc.RpcError) -> DeepscopeError:
    """The typed exception for a grpc.RpcError (keeps the server's message)."""
    code = error.code() if hasattr(error, "code") else grpc.StatusCode.UNKNOWN
    details = error.details() if hasattr(error, "details") else str(error)
    cls = _BY_CODE.get(code, DeepscopeError)
    return cls(details or str(code), code)
