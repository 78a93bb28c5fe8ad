"""Domain errors. The service maps each to one gRPC status code, so raise these, not bare exceptions.

Each error also carries what a program needs to act on it without parsing the message: a stable
``reason`` (``UNKNOWN_LAYER``, ``LIMIT_MAX_TENSOR_ELEMENTS``, ...), the request ``field`` at fault,
``suggestions`` (did-you-mean names) and string ``metadata``. The service sends them as
``google.rpc.Status`` details (see ``rich_status``).

The status-code rule: whatever a request *names* that the server does not have (a model, run,
layer, metric, dataset, input or weight, by name or by a pattern matching nothing) is NOT_FOUND;
a value that is malformed or does not fit (dtype, shape, parameter, file content) is
INVALID_ARGUMENT; a configured limit is RESOURCE_EXHAUSTED.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable, Mapping, Sequence
from types import MappingProxyType

from deepscope.text import shorten, shorten_list  # noqa: F401 - the server's modules import them from here


class DeepscopeError(Exception):
    """Base class: the message is shown to the user as is, so make it actionable."""

    reason = "ERROR"
    field: str | None = None
    suggestions: Sequence[str] = ()
    metadata: Mapping[str, str] = MappingProxyType({})

    def __init__(
        self,
        message: str = "",
        *,
        reason: str | None = None,
        field: str | None = None,
        suggestions: Sequence[str] = (),
        metadata: Mapping[str, object] | None = None,
    ) -> None:
        super().__init__(message)
        if reason:
            self.reason = reason
        if field:
            self.field = field
        if suggestions:
            self.suggestions = tuple(suggestions)
        if metadata:
            self.metadata = {str(k): str(v) for k, v in metadata.items()}


class NotFound(DeepscopeError):
    """A model, layer, run, metric or dataset that does not exist (NOT_FOUND)."""

    reason = "NOT_FOUND"


class InvalidInput(DeepscopeError):
    """Bad request content: wrong dtype/shape, corrupt model, bad parameter (INVALID_ARGUMENT)."""

    reason = "INVALID_INPUT"


class LimitExceeded(DeepscopeError):
    """A configured size/count limit was exceeded (RESOURCE_EXHAUSTED). Name the limit and the size."""

    def __init__(self, limit_name: str, limit: int | float, size: int | float, unit: str = "bytes") -> None:
        named = re.match(r"[A-Za-z0-9_-]+", limit_name.lstrip("-"))  # "max_model_bytes (archive 'x')" -> its key
        key = named.group(0).replace("-", "_") if named else "exceeded"
        super().__init__(
            f"{limit_name} exceeded: {size:,} {unit} > limit {limit:,} {unit}",
            reason=f"LIMIT_{key.upper()}",
            metadata={"limit_name": key, "limit": limit, "size": size, "unit": unit},
        )
        self.limit_name, self.limit, self.size = limit_name, limit, size


class DeadlineExceeded(DeepscopeError):
    """Loading or running a model took longer than its time limit or the call's deadline (DEADLINE_EXCEEDED)."""

    reason = "MODEL_DEADLINE_EXCEEDED"


class ModelCrashed(DeepscopeError):
    """The model's worker process died or misbehaved; the server is unaffected (INTERNAL, with the cause)."""

    reason = "MODEL_CRASHED"


class ModelOutOfMemory(DeepscopeError):
    """The model needed more memory than its worker may use (RESOURCE_EXHAUSTED)."""

    reason = "MODEL_OUT_OF_MEMORY"


class StorageFull(DeepscopeError):
    """The store's disk (or quota) is full (RESOURCE_EXHAUSTED): the operator must free space."""

    reason = "STORAGE_FULL"


class UnknownInputSegment(DeepscopeError):
    """A request names an input segment its connection does not hold: expired or never lent
    (FAILED_PRECONDITION); the client sends the inputs in the request instead."""

    reason = "INPUT_SEGMENT_UNKNOWN"


class Unavailable(DeepscopeError):
    """The server is shutting down or at capacity (UNAVAILABLE)."""

    reason = "UNAVAILABLE"


def close_matches(name: str, candidates: Iterable[str], n: int = 5) -> list[str]:
    """Up to ``n`` candidates that look like ``name`` (for did-you-mean hints)."""
    cands = list(candidates)
    close = difflib.get_close_matches(name, cands, n=n, cutoff=0.5)
    return close or [c for c in cands if name.lower() in c.lower()][:n]


def did_you_mean(close: Sequence[str]) -> str:
    """A ' (did you mean: a, b?)' suffix for error messages; empty when ``close`` is."""
    return f" (did you mean: {', '.join(close)}?)" if close else ""


def near_matches(name: str, candidates: Iterable[str], n: int = 5) -> str:
    """``did_you_mean`` for the candidates that look like ``name``."""
    return did_you_mean(close_matches(name, candidates, n))


def unknown(
    kind: str,
    name: str,
    candidates: Iterable[str],
    *,
    what: str = "not found",
    hint: str = "",
    field: str | None = None,
) -> NotFound:
    """NOT_FOUND for a ``kind`` ("model", "layer", "metric", ...) the request names, with did-you-mean names.

    ``what`` words the miss ("not found", "matches no layer"); ``hint`` is appended to the message.
    """
    close = close_matches(name, candidates)
    return NotFound(
        f"{kind} '{shorten(name)}' {what}{did_you_mean(close)}{hint}",
        reason=f"UNKNOWN_{kind.upper()}",
        field=field,
        suggestions=close,
        metadata={"resource_type": kind, "resource_name": shorten(name)},
    )
