"""Typed exceptions for gRPC status codes, so callers write ``except deepscope.NotFound``."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status


@dataclass(frozen=True)
class FieldViolation:
    """One request field at fault (``google.rpc.BadRequest.FieldViolation``)."""

    field: str
    description: str


#: The exception class for each status code the server sends (filled in as the classes below are defined).
_BY_CODE: dict[grpc.StatusCode, type[DeepscopeError]] = {}


class DeepscopeError(Exception):
    """Base class; ``code`` is the gRPC status code, ``details`` the server's message.

    From the server's ``google.rpc.Status`` details: ``reason`` is a stable machine-readable cause
    (``UNKNOWN_LAYER``, ``LIMIT_MAX_TENSOR_ELEMENTS``, ...; empty for errors raised by gRPC itself),
    ``metadata`` its string facts (e.g. ``limit``, ``size``), ``field_violations`` the request fields at
    fault and ``suggestions`` did-you-mean names. Branch on these, not on the message.
    """

    code: grpc.StatusCode = grpc.StatusCode.UNKNOWN
    reason: str = ""
    metadata: Mapping[str, str] = MappingProxyType({})
    field_violations: tuple[FieldViolation, ...] = ()
    suggestions: tuple[str, ...] = ()

    def __init_subclass__(cls, code: grpc.StatusCode | None = None, **kwargs: Any) -> None:
        """``class NotFound(DeepscopeError, code=grpc.StatusCode.NOT_FOUND)``: the class for that code."""
        super().__init_subclass__(**kwargs)
        if code is not None:
            cls.code = code
            _BY_CODE[code] = cls

    def __init__(self, details: str, code: grpc.StatusCode | None = None) -> None:
        super().__init__(details)
        self.details = details
        if code is not None:
            self.code = code


class NotFound(DeepscopeError, code=grpc.StatusCode.NOT_FOUND):
    """The request names a model, run, layer, metric or dataset the server does not have."""


class InvalidArgument(DeepscopeError, code=grpc.StatusCode.INVALID_ARGUMENT):
    """A malformed value: a parameter out of its bounds, data of the wrong dtype or shape, bytes that do not decode."""


class ResourceExhausted(DeepscopeError, code=grpc.StatusCode.RESOURCE_EXHAUSTED):
    """Over one of the server's limits (``reason`` names it: ``LIMIT_MAX_BATCH_SIZE``, ...) or out of memory or disk."""


class Unauthenticated(DeepscopeError, code=grpc.StatusCode.UNAUTHENTICATED):
    """No token, or the wrong one, for a server that requires one."""


class PermissionDenied(DeepscopeError, code=grpc.StatusCode.PERMISSION_DENIED):
    """The caller may not do this: deepscope's server does not send it; a proxy or gateway in front of it may."""


class FailedPrecondition(DeepscopeError, code=grpc.StatusCode.FAILED_PRECONDITION):
    """The server cannot serve this client as it is, e.g. it speaks another protocol version."""


class Unavailable(DeepscopeError, code=grpc.StatusCode.UNAVAILABLE):
    """The server cannot be reached, refused the connection (e.g. TLS) or cannot serve the call right now."""


class DeadlineExceeded(DeepscopeError, code=grpc.StatusCode.DEADLINE_EXCEEDED):
    """The call's ``timeout`` (or a server time limit such as ``--max-forward-seconds``) ran out."""


class Cancelled(DeepscopeError, code=grpc.StatusCode.CANCELLED):
    """The call or its run was cancelled."""


class Internal(DeepscopeError, code=grpc.StatusCode.INTERNAL):
    """A bug or a crash on the server's side (e.g. a model worker died); the message says where."""


def from_rpc_error(error: grpc.RpcError) -> DeepscopeError:
    """The typed exception for a grpc.RpcError (keeps the server's message and its status details)."""
    code = error.code() if hasattr(error, "code") else grpc.StatusCode.UNKNOWN
    details = error.details() if hasattr(error, "details") else str(error)
    cls = _BY_CODE.get(code, DeepscopeError)
    exc = cls(details or str(code), code)
    _attach_status_details(exc, error)
    return exc


def _attach_status_details(exc: DeepscopeError, error: grpc.RpcError) -> None:
    """Fill ``reason``, ``metadata``, ``field_violations``, ``suggestions`` from ``grpc-status-details-bin``."""
    try:
        status = rpc_status.from_call(error)
    except (ValueError, AttributeError, TypeError):  # no trailer, or one that disagrees with the status
        return
    if status is None:
        return
    for packed in status.details:
        if packed.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            packed.Unpack(info)
            exc.reason, exc.metadata = info.reason, dict(info.metadata)
            exc.suggestions = tuple(name for name in info.metadata.get("suggestions", "").split(",") if name)
        elif packed.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            packed.Unpack(bad)
            exc.field_violations = tuple(FieldViolation(v.field, v.description) for v in bad.field_violations)
