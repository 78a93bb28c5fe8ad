"""Shortening user-supplied strings before an error message echoes them.

Error messages travel in gRPC trailing metadata (8 KiB by default): an id, a name or a pattern of
many kilobytes echoed whole would overflow it, and the client would see an INTERNAL transport
error instead of the message meant for it.
"""

from __future__ import annotations

from collections.abc import Iterable

#: How much of a user-supplied string an error message echoes.
ECHO_CHARS = 200


def shorten(value: object, limit: int = ECHO_CHARS) -> str:
    """``str(value)``, cut to ``limit`` characters with an ellipsis and the full length when longer."""
    text = str(value)
    if len(text) <= limit:
        return text
    return f"{text[:limit]}… ({len(text):,} characters)"


def shorten_list(values: Iterable[object], limit: int = ECHO_CHARS) -> str:
    """A list (e.g. a shape) as ``[a, b, ...]``, the whole rendering shortened to ``limit`` characters."""
    return shorten(f"[{', '.join(str(v) for v in values)}]", limit)
