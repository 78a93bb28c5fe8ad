"""Chunk messages of the tensor streams, written and read by hand to save copies of their payload.

A ``CaptureResponse`` or ``GetWeightsResponse`` holding a ``TensorChunk`` is, on the wire, tag 2
(the ``chunk`` field of both), a length, then the chunk's fields: ``name`` (1), ``offset`` (2) and
``data`` (3). Built through the generated classes, each megabyte of activations is copied three
times before gRPC sees it (``.tobytes()``, into the message, out of it) and twice more on the
receiving side (into the parsed message, out of it as a new ``bytes``). ``chunk_frame`` writes the
same bytes protobuf writes (a test checks equality) with one copy; ``read_chunk`` gives the
payload as a view of the received bytes. Anything but a plain chunk (headers, ``done``, unknown
fields, repeated fields, bad UTF-8) is left to the generated parser, so what is accepted, and
every error, is exactly protobuf's.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

#: Field 2 (``chunk``), wire type 2 (length-delimited): the same in both streamed messages.
_CHUNK_TAG = 0x12
_NAME_TAG, _OFFSET_TAG, _DATA_TAG = 0x0A, 0x10, 0x1A


def _varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def with_bytes_field(head: bytes, tag: int, payload: memoryview | bytes) -> list[bytes | memoryview]:
    """A serialised message ``head`` followed by one bytes field (``tag``: its key byte): the pieces
    to join. Protobuf reads fields in any order, so this is the message with that field set."""
    return [head, bytes((tag,)), _varint(len(payload)), payload] if len(payload) else [head]


def length_delimited(tag: int, pieces: list[bytes | memoryview]) -> list[bytes | memoryview]:
    """The pieces of one embedded-message field (``tag``: its key byte) holding ``pieces``."""
    return [bytes((tag,)), _varint(sum(len(p) for p in pieces)), *pieces]


#: ``CaptureResponse.parts`` (field 5) and, inside it, ``CaptureParts.parts`` (field 1).
_PACKED_TAG, _PACKED_PART_TAG = 0x2A, 0x0A


def packed_parts(parts: list[bytes]) -> bytes:
    """One serialised ``CaptureResponse`` carrying ``parts`` (each a serialised CaptureResponse) in
    its ``parts`` field, as protobuf would write it: a small capture in one message."""
    pieces: list[bytes | memoryview] = []
    for part in parts:
        pieces += length_delimited(_PACKED_PART_TAG, [part])
    return b"".join(length_delimited(_PACKED_TAG, pieces))


def chunk_frame(name: bytes, offset: int, payload: memoryview | bytes) -> bytes:
    """One serialised chunk part (``name`` UTF-8 encoded), as protobuf would write it (defaults omitted)."""
    fields = b""
    if name:
        fields += bytes((_NAME_TAG,)) + _varint(len(name)) + name
    if offset:
        fields += bytes((_OFFSET_TAG,)) + _varint(offset)
    data_prefix = bytes((_DATA_TAG,)) + _varint(len(payload)) if len(payload) else b""
    inner = len(fields) + len(data_prefix) + len(payload)
    return b"".join((bytes((_CHUNK_TAG,)), _varint(inner), fields, data_prefix, payload))


class ChunkView:
    """A received chunk whose ``data`` is a read-only view of the message bytes (no copy)."""

    __slots__ = ("name", "offset", "data")

    def __init__(self, name: str, offset: int, data: memoryview) -> None:
        self.name, self.offset, self.data = name, offset, data


def _read_varint(view: memoryview, pos: int, end: int) -> tuple[int, int] | None:
    value = shift = 0
    while pos < end and shift < 64:
        byte = view[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return (value, pos) if value < 1 << 64 else None
        shift += 7
    return None


def read_chunk(raw: bytes) -> ChunkView | None:
    """The chunk in a serialised response, or None unless the bytes are exactly one chunk field
    with each of its fields at most once and nothing else (then the generated parser decides)."""
    view = memoryview(raw)
    end = len(view)
    if not end or view[0] != _CHUNK_TAG:
        return None
    length = _read_varint(view, 1, end)
    if length is None or length[0] != end - length[1]:
        return None
    pos, name, offset, data = length[1], b"", 0, view[0:0]
    seen: set[int] = set()
    while pos < end:
        tag = view[pos]
        pos += 1
        if tag in seen or tag not in (_NAME_TAG, _OFFSET_TAG, _DATA_TAG):
            return None
        seen.add(tag)
        read = _read_varint(view, pos, end)
        if read is None:
            return None
        value, pos = read
        if tag == _OFFSET_TAG:
            offset = value
            continue
        if value > end - pos:
            return None
        if tag == _NAME_TAG:
            name = bytes(view[pos : pos + value])
        else:
            data = view[pos : pos + value]
        pos += value
    try:
        return ChunkView(name.decode("utf-8"), offset, data)
    except UnicodeDecodeError:
        return None


def parser(message: Any) -> Callable[[bytes], Any]:
    """A response deserialiser for a tensor stream: chunks as ``ChunkView``s, the rest as ``message``."""
    parse = message.FromString

    def deserialize(raw: bytes) -> Any:
        chunk = read_chunk(raw)
        return parse(raw) if chunk is None else chunk

    return deserialize
