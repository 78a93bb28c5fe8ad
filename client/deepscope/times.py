"""Times on the wire are ``google.protobuf.Timestamp`` and ``Duration``; these convert them for code and people."""

from __future__ import annotations

from datetime import UTC, datetime

from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp


def seconds(duration: Duration) -> float:
    """A Duration in seconds (0.0 when unset)."""
    return duration.seconds + duration.nanos / 1e9


def set_seconds(duration: Duration, value: float) -> None:
    """Store ``value`` seconds in ``duration`` (nanosecond precision)."""
    duration.FromNanoseconds(round(value * 1e9))


def as_datetime(stamp: Timestamp) -> datetime | None:
    """An aware UTC datetime, or None when the Timestamp is unset."""
    if not stamp.seconds and not stamp.nanos:
        return None
    return stamp.ToDatetime(tzinfo=UTC)


def iso(stamp: Timestamp) -> str:
    """ISO 8601 in UTC to the millisecond ("" when unset): what the store's columns and reports show."""
    when = as_datetime(stamp)
    return when.isoformat(timespec="milliseconds") if when else ""


def set_iso(stamp: Timestamp, text: str) -> None:
    """Store an ISO 8601 time (naive means UTC) in ``stamp``; an empty string leaves it unset."""
    if text:
        when = datetime.fromisoformat(text)
        stamp.FromDatetime(when if when.tzinfo else when.replace(tzinfo=UTC))


def stamp_now(stamp: Timestamp) -> str:
    """Set ``stamp`` to now; returns the same instant as ISO 8601 (for the store's sortable columns)."""
    now = datetime.now(UTC)
    stamp.FromDatetime(now)
    return now.isoformat(timespec="milliseconds")
