"""numpy <-> wire tensors: whole tensors, and large ones as a header plus chunks.

Chunks are reassembled into one preallocated buffer, or a caller-given destination (one copy
per byte, no concatenation), with the CRC-32 updated chunk by chunk (zlib-ng's vectorised CRC-32:
the same IEEE checksum as zlib, so the wire format is unchanged, at ~3x zlib's speed),
and every malformed stream (missing, duplicate, overlapping or oversized chunks, wrong totals,
bad checksum) raises TensorError with a message that says what was wrong.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

import numpy as np

from .dtypes import kserve_dtype, numpy_dtype
from .frames import ChunkView, chunk_frame, length_delimited, with_bytes_field
from .text import shorten, shorten_list
from .v1 import introspection_pb2 as pb
from .v1 import tensor_pb2 as tpb

try:  # the same CRC-32 as zlib's, vectorised (measured 0.8 -> 2.4 GB/s on this project's machine)
    from zlib_ng.zlib_ng import crc32
except ImportError:  # pragma: no cover - a client installed without it still checks, only slower
    from zlib import crc32

#: Chunk payload size: well under gRPC's 4 MiB default message limit, near the measured sweet spot.
CHUNK_BYTES = 1 << 20


class TensorError(ValueError):
    """A tensor message or chunk stream that cannot be decoded."""


def _little_endian(array: np.ndarray) -> np.ndarray:
    if array.dtype.byteorder == ">":
        array = array.astype(array.dtype.newbyteorder("<"))
    return np.ascontiguousarray(array)


def to_proto(array: np.ndarray, name: str = "") -> tpb.Tensor:
    """A whole tensor in one message (for inputs and small results)."""
    array = _little_endian(np.asarray(array))
    return tpb.Tensor(name=name, dtype=kserve_dtype(array.dtype), shape=array.shape, data=array.tobytes())


#: Key bytes: ``Tensor.data`` (field 4) and ``CaptureRequest.inputs`` (field 2), length-delimited.
_TENSOR_DATA_TAG, _REQUEST_INPUTS_TAG = 0x22, 0x12


def capture_request_bytes(request: pb.CaptureRequest, inputs: dict[str, np.ndarray]) -> bytes:
    """``request`` with ``inputs`` added as wire tensors, serialised with one copy of their bytes
    (``to_proto`` then serialising copies each input four times); parses as the same message."""
    pieces: list[bytes | memoryview] = [request.SerializeToString()]
    for name, value in inputs.items():
        array, raw = raw_bytes(value)
        meta = tpb.Tensor(name=name, dtype=kserve_dtype(array.dtype), shape=array.shape).SerializeToString()
        pieces += length_delimited(_REQUEST_INPUTS_TAG, with_bytes_field(meta, _TENSOR_DATA_TAG, raw))
    return b"".join(pieces)


#: numpy's limits: at most 64 dimensions, and the product of the non-zero ones times the item
#: size must fit in a signed 64-bit byte count, even for an empty array.
MAX_NDIM = 64
MAX_SPAN_BYTES = np.iinfo(np.intp).max


def check_shape(shape: Iterable[int], dtype: np.dtype, nbytes: int, max_elements: int | None) -> tuple[int, ...]:
    dims = tuple(int(d) for d in shape)
    if len(dims) > MAX_NDIM:
        raise TensorError(f"shape has {len(dims):,} dimensions; at most {MAX_NDIM} are supported")
    if any(d < 0 for d in dims):
        raise TensorError(f"negative dimension in shape {shorten_list(dims)}")
    if math.prod(max(d, 1) for d in dims) * dtype.itemsize > MAX_SPAN_BYTES:
        raise TensorError(
            f"shape {shorten_list(dims)} is too large: its non-zero dimensions multiply past "
            f"{MAX_SPAN_BYTES:,} bytes of {dtype}"
        )
    count = math.prod(dims)
    if max_elements is not None and count > max_elements:
        raise TensorError(f"tensor of {count:,} elements exceeds the limit of {max_elements:,} elements")
    if count * dtype.itemsize != nbytes:
        raise TensorError(
            f"tensor bytes do not match shape: shape {shorten_list(dims)} of {dtype} needs "
            f"{count * dtype.itemsize:,} bytes, got {nbytes:,}"
        )
    return dims


def from_proto(message: tpb.Tensor, max_elements: int | None = None) -> np.ndarray:
    """Decode a whole tensor; the result is a read-only view of the message bytes."""
    try:
        dtype = numpy_dtype(message.dtype)
    except ValueError as exc:
        raise TensorError(f"tensor '{shorten(message.name)}': {exc}") from None
    data = message.data  # each access of a bytes field copies it: read it once
    try:
        dims = check_shape(message.shape, dtype, len(data), max_elements)
    except TensorError as exc:
        raise TensorError(f"tensor '{shorten(message.name)}': {exc}") from None
    array = np.frombuffer(data, dtype=dtype).reshape(dims)
    if dtype == np.bool_ and array.size and array.view(np.uint8).max() > 1:
        raise TensorError(f"tensor '{shorten(message.name)}': BOOL bytes must be 0 or 1")
    return array


def raw_bytes(array: np.ndarray) -> tuple[np.ndarray, memoryview]:
    """The array (C order, little-endian) and a view of its bytes as the wire carries them."""
    array = _little_endian(np.asarray(array))
    return array, array.reshape(-1).view(np.uint8).data if array.size else memoryview(b"")


def checksum(array: np.ndarray) -> int:
    """The CRC-32 a header carries for ``array`` (servers compute it off their event loop)."""
    return crc32(raw_bytes(array)[1])


def _header(name: str, array: np.ndarray, raw: memoryview, crc: int | None) -> tpb.TensorHeader:
    return tpb.TensorHeader(
        name=name,
        dtype=kserve_dtype(array.dtype),
        shape=array.shape,
        total_bytes=len(raw),
        crc32=crc32(raw) if crc is None else crc,
    )


def tensor_parts(
    name: str,
    array: np.ndarray,
    chunk_bytes: int = CHUNK_BYTES,
    message: type[StreamPart] = pb.CaptureResponse,
    crc: int | None = None,
) -> Iterator[StreamPart]:
    """A header then chunks of at most ``chunk_bytes`` for one tensor, as ``message``s (CaptureResponse
    or GetWeightsResponse: the same header and chunk parts); ``crc``: the array's ``checksum`` when the caller computed it already (e.g. in a worker thread).

    Fields are set in place on the outer message: wrapping a finished TensorChunk
    (``CaptureResponse(chunk=c)``) would copy every payload once more.
    """
    array, raw = raw_bytes(array)
    yield message(header=_header(name, array, raw, crc))
    for offset in range(0, len(raw), chunk_bytes):
        part = message()
        chunk = part.chunk
        chunk.name = name
        chunk.offset = offset
        chunk.data = raw[offset : offset + chunk_bytes].tobytes()
        yield part


def tensor_frames(
    name: str, array: np.ndarray, chunk_bytes: int = CHUNK_BYTES, crc: int | None = None
) -> Iterator[bytes]:
    """``tensor_parts`` already serialised (the same bytes, valid as CaptureResponse and
    GetWeightsResponse alike), each chunk copied once from ``array`` into its message
    (``frames.chunk_frame``) instead of three times through the generated classes."""
    array, raw = raw_bytes(array)
    yield pb.CaptureResponse(header=_header(name, array, raw, crc)).SerializeToString()
    encoded = name.encode()
    for offset in range(0, len(raw), chunk_bytes):
        yield chunk_frame(encoded, offset, raw[offset : offset + chunk_bytes])


#: The two streamed-tensor messages (they share their header and chunk fields).
StreamPart = TypeVar("StreamPart", pb.CaptureResponse, pb.GetWeightsResponse)

#: ``out(header, dtype, shape)``: an array to assemble the tensor into, or None for a new buffer.
OutTarget = Callable[[tpb.TensorHeader, np.dtype, tuple[int, ...]], "np.ndarray | None"]


class _Pending:
    __slots__ = ("header", "dtype", "shape", "array", "buffer", "received", "next_offset", "crc")

    def __init__(
        self, header: tpb.TensorHeader, max_elements: int | None, max_bytes: int | None, out: OutTarget | None = None
    ) -> None:
        try:
            self.dtype = numpy_dtype(header.dtype)
        except ValueError as exc:
            raise TensorError(f"tensor '{shorten(header.name)}': {exc}") from None
        if max_bytes is not None and header.total_bytes > max_bytes:
            raise TensorError(
                f"tensor '{shorten(header.name)}' of {header.total_bytes:,} bytes exceeds the limit of {max_bytes:,} bytes"
            )
        try:
            self.shape = check_shape(header.shape, self.dtype, header.total_bytes, max_elements)
        except TensorError as exc:
            raise TensorError(f"tensor '{shorten(header.name)}': {exc}") from None
        self.header = header
        target = out(header, self.dtype, self.shape) if out is not None else None
        if target is None:
            self.buffer = np.empty(header.total_bytes, dtype=np.uint8)
            self.array = self.buffer.view(self.dtype).reshape(self.shape)
        else:
            if (
                target.dtype != self.dtype
                or target.shape != self.shape
                or not target.flags.c_contiguous
                or not target.flags.writeable
            ):
                raise ValueError(
                    f"tensor '{shorten(header.name)}': out target must be a writeable C-contiguous "
                    f"{self.dtype} array of shape {self.shape}, got {target.dtype} {target.shape}"
                )
            self.array = target
            self.buffer = target.reshape(-1).view(np.uint8)
        self.received = 0
        self.crc = 0
        self.next_offset = 0


class Assembler:
    """Rebuilds tensors from a stream of headers and chunks sent in order, one tensor at a time.

    Chunks must follow their header with contiguous increasing offsets; anything else
    (gaps, duplicates, overlaps, a chunk for another tensor, overflow, a short tensor,
    a checksum mismatch) raises TensorError.

    ``out`` lets the caller supply the destination of a tensor (e.g. its slice of a larger
    preallocated result), so chunks land in their final place with no second copy; the
    destination holds partial data if the tensor turns out to be malformed.
    """

    def __init__(
        self, max_elements: int | None = None, max_bytes: int | None = None, out: OutTarget | None = None
    ) -> None:
        self.max_elements = max_elements
        self.max_bytes = max_bytes
        self.out = out
        self._pending: _Pending | None = None
        self.tensors: dict[str, np.ndarray] = {}
        self.total_bytes = 0

    def add(self, part: tpb.TensorHeader | tpb.TensorChunk | ChunkView) -> str | None:
        """Feed one part (a chunk may be a ``ChunkView``); return the tensor's name when it completes, else None."""
        if isinstance(part, tpb.TensorHeader):
            if self._pending is not None:
                raise TensorError(
                    f"tensor '{shorten(self._pending.header.name)}' incomplete: got {self._pending.received:,} of "
                    f"{self._pending.header.total_bytes:,} bytes before the next header"
                )
            if part.name in self.tensors:
                raise TensorError(f"duplicate tensor '{shorten(part.name)}'")
            self._pending = _Pending(part, self.max_elements, self.max_bytes, self.out)
            return self._complete_if_done()
        pending = self._pending
        if pending is None or part.name != pending.header.name:
            raise TensorError(f"chunk for tensor '{shorten(part.name)}' without its header")
        if part.offset != pending.next_offset:
            kind = "duplicate or overlapping" if part.offset < pending.next_offset else "missing"
            raise TensorError(
                f"tensor '{shorten(part.name)}': {kind} chunk: expected offset {pending.next_offset:,}, got {part.offset:,}"
            )
        data = part.data  # each access of a bytes field builds a new bytes object: read it once
        end = part.offset + len(data)
        if end > pending.header.total_bytes:
            raise TensorError(
                f"tensor '{shorten(part.name)}': chunk ends at byte {end:,}, past the declared total of "
                f"{pending.header.total_bytes:,}"
            )
        pending.buffer[part.offset : end] = np.frombuffer(data, dtype=np.uint8)
        pending.received += len(data)
        pending.crc = crc32(data, pending.crc)  # while the chunk is still in cache; measured faster
        pending.next_offset = end
        return self._complete_if_done()

    def _complete_if_done(self) -> str | None:
        pending = self._pending
        assert pending is not None
        if pending.received < pending.header.total_bytes:
            return None
        if pending.crc != pending.header.crc32:
            raise TensorError(f"tensor '{shorten(pending.header.name)}': checksum mismatch (corrupted in transit)")
        name = pending.header.name
        self.tensors[name] = pending.array
        self.total_bytes += pending.header.total_bytes
        self._pending = None
        return name

    def close(self) -> dict[str, np.ndarray]:
        """End of stream: every tensor must be complete."""
        if self._pending is not None:
            p = self._pending
            raise TensorError(
                f"stream ended inside tensor '{shorten(p.header.name)}': got {p.received:,} of {p.header.total_bytes:,} bytes"
            )
        return self.tensors
