"""Domain errors. The service maps each to one gRPC status code, so raise these, not bare exceptions."""

from __future__ import annotations

import difflib
from collections.abc import Iterable

from deepscope.text import shorten, shorten_list  # noqa: F401 - the server's modules import them from here


class DeepscopeError(Exception):
    """Base class: the message is shown to the user as is, so make it actionable."""


class NotFound(DeepscopeError):
    """A model, layer, run, metric or dataset that does not exist (NOT_FOUND)."""


class InvalidInput(DeepscopeError):
    """Bad request content: wrong dtype/shape, corrupt model, bad parameter (INVALID_ARGUMENT)."""


class LimitExceeded(DeepscopeError):
    """A configured size/count limit was exceeded (RESOURCE_EXHAUSTED). Name the limit and the size."""

    def __init__(self, limit_name: str, limit: int | float, size: int | float, unit: str = "bytes") -> None:
        super().__init__(f"{limit_name} exceeded: {size:,} {unit} > limit {limit:,} {unit}")
        self.limit_name, self.limit, self.size = limit_name, limit, size


class DeadlineExceeded(DeepscopeError):
    """Loading or running a model took longer than its time limit or the call's deadline (DEADLINE_EXCEEDED)."""


class ModelCrashed(DeepscopeError):
    """The model's worker process died or misbehaved; the server is unaffected (INTERNAL, with the cause)."""


class ModelOutOfMemory(DeepscopeError):
    """The model needed more memory than its worker may use (RESOURCE_EXHAUSTED)."""


class StorageFull(DeepscopeError):
    """The store's disk (or quota) is full (RESOURCE_EXHAUSTED): the operator must free space."""


class Unavailable(DeepscopeError):
    """The server is shutting down or at capacity (UNAVAILABLE)."""


def near_matches(name: str, candidates: Iterable[str], n: int = 5) -> str:
    """A ' (did you mean: a, b?)' suffix for error messages; empty when nothing is close."""
    cands = list(candidates)
    close = difflib.get_close_matches(name, cands, n=n, cutoff=0.5)
    if not close:
        close = [c for c in cands if name.lower() in c.lower()][:n]
    return f" (did you mean: {', '.join(close)}?)" if close else ""
