"""``google.rpc.Status`` details on every error, so a client in any language acts on a reason, not on prose.

gRPC carries them in the ``grpc-status-details-bin`` trailer (the "richer error model"): an
``ErrorInfo`` always (stable ``reason``, ``domain`` and string ``metadata``, did-you-mean names in
``metadata["suggestions"]``), plus ``BadRequest`` when a request field is at fault, ``QuotaFailure``
when a configured limit is the cause and ``ResourceInfo`` when something named is missing.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import grpc
from google.protobuf import any_pb2
from google.protobuf.message import Message
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from .errors import DeepscopeError, LimitExceeded, NotFound

#: ``ErrorInfo.domain`` of every deepscope error.
DOMAIN = "deepscope.dev"
#: Reasons of errors that are not ``DeepscopeError``s where the status code's own name is not it
#: (INVALID_INPUT, like ``InvalidInput``'s).
GENERIC_REASONS = {grpc.StatusCode.INVALID_ARGUMENT: "INVALID_INPUT"}


def details_trailer(
    code: grpc.StatusCode,
    message: str,
    *,
    reason: str | None = None,
    error: BaseException | None = None,
    metadata: Mapping[str, str] | None = None,
    field: str | None = None,
    suggestions: Sequence[str] = (),
) -> tuple[tuple[str, bytes], ...]:
    """The trailing metadata that carries ``google.rpc.Status`` for an error with ``code`` and ``message``.

    ``message`` must be the status message sent with it (clients check that they agree). Fields of a
    ``DeepscopeError`` passed as ``error`` fill what the keyword arguments leave out.
    """
    info_metadata = dict(metadata or {})
    if isinstance(error, DeepscopeError):
        reason = reason or error.reason
        field = field or error.field
        suggestions = suggestions or error.suggestions
        info_metadata = {**error.metadata, **info_metadata}
    if suggestions:
        info_metadata["suggestions"] = ",".join(suggestions)
    details: list[Message] = [
        error_details_pb2.ErrorInfo(
            reason=reason or GENERIC_REASONS.get(code, code.name), domain=DOMAIN, metadata=info_metadata
        )
    ]
    if field:
        details.append(
            error_details_pb2.BadRequest(
                field_violations=[
                    error_details_pb2.BadRequest.FieldViolation(
                        field=field, description=message, reason=details[0].reason
                    )
                ]
            )
        )
    if isinstance(error, LimitExceeded):
        details.append(
            error_details_pb2.QuotaFailure(
                violations=[
                    error_details_pb2.QuotaFailure.Violation(
                        subject=info_metadata.get("limit_name", ""), description=message
                    )
                ]
            )
        )
    if isinstance(error, NotFound) and "resource_type" in info_metadata:
        details.append(
            error_details_pb2.ResourceInfo(
                resource_type=info_metadata["resource_type"],
                resource_name=info_metadata.get("resource_name", ""),
                description=message,
            )
        )
    packed = []
    for detail in details:
        holder = any_pb2.Any()
        holder.Pack(detail)
        packed.append(holder)
    status = status_pb2.Status(code=code.value[0], message=message, details=packed)
    return tuple(rpc_status.to_status(status).trailing_metadata)


async def abort(context: grpc.aio.ServicerContext, code: grpc.StatusCode, message: str, **details: object) -> None:
    """``context.abort`` with the status details attached (keyword arguments as for ``details_trailer``)."""
    await context.abort(code, message, details_trailer(code, message, **details))  # type: ignore[arg-type]
