"""The client's side of same-host captures: map the segment the server named on this call, then free it.

The client asks for shared memory only when the server is on its own host (a loopback or Unix
socket address) and accepts only names of the server's form (``deepscope_`` + 32 hex digits),
so a server cannot point it at another file. It unlinks the segment as soon as it is mapped
(freeing it on every path, even a malformed one); the arrays are private copy-on-write views of
the mapping, alive as long as they are. A segment the server lent for reuse is not unlinked: once
its mapping and arrays are gone the client hands its name back with the next capture, and the
server writes a later capture into pages it already has (far cheaper than fresh ones).

Inputs go the other way through segments the server lends (``InputSegments``): the client writes
a request's inputs into one and the request names it, instead of carrying megabytes through gRPC.
"""

from __future__ import annotations

import collections
import contextlib
import fcntl
import ipaddress
import mmap
import os
import re
import stat
import threading
import weakref
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np

from .dtypes import kserve_dtype, numpy_dtype
from .tensors import TensorError, check_shape, raw_bytes
from .text import shorten
from .v1 import introspection_pb2 as pb

SHM_DIR = "/dev/shm"
_NAME = re.compile(r"deepscope_[0-9a-f]{32}")


class SharedMemoryUnavailable(OSError):
    """The segment cannot be mapped here (another user's server, expired, no /dev/shm): stream instead."""


class WorkerFileUnavailable(SharedMemoryUnavailable):
    """A lent worker buffer cannot be opened here (another user's server, another PID namespace):
    ask for segments instead."""


#: What a server may name as a lent worker buffer: a descriptor of its own process.
_PROC_FD = re.compile(r"/proc/[0-9]{1,10}/fd/[0-9]{1,10}")


def available() -> bool:
    return os.path.isdir(SHM_DIR)


def local_address(address: str) -> bool:
    """Whether a gRPC target is on this host: ``unix:...``, ``localhost``, 127.0.0.0/8 or ::1."""
    if address.startswith(("unix:", "unix-abstract:")):
        return True
    host = address.removeprefix("dns:").removeprefix("ipv4:").removeprefix("ipv6:").lstrip("/")
    if host.startswith("["):
        host = host[1 : host.find("]")]
    elif host.count(":") == 1:
        host = host.rsplit(":", 1)[0]
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def attach(
    message: pb.SharedTensors, max_elements: int | None = None, returned: collections.deque[str] | None = None
) -> dict[str, np.ndarray]:
    """The tensors of ``message``; the segment is unlinked before anything else is checked, or, when
    the server lent it for reuse (and ``returned`` is given), its name goes to ``returned`` once
    the mapping and every array on it are gone."""
    reuse = message.reusable and returned is not None
    if not _NAME.fullmatch(message.segment):
        raise TensorError(
            f"shared-memory segment name {shorten(message.segment)!r} is not one a deepscope server makes; refused"
        )
    fd = _open_worker_file(message.file, message.file_inode) if message.file else None
    path = os.path.join(SHM_DIR, message.segment)
    if fd is None:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError as exc:  # PermissionError: the server runs as another user; FileNotFoundError: expired
            raise SharedMemoryUnavailable(f"cannot open the capture's shared-memory segment: {exc}") from None
    try:
        try:
            if not reuse and not message.file:
                os.unlink(path)
        except OSError:
            pass  # the server's timeout got there first; the open descriptor still reads it
        info = os.fstat(fd)
        size = message.size_bytes
        if not stat.S_ISREG(info.st_mode) or info.st_size < size or size == 0:
            raise TensorError(f"shared-memory segment is {info.st_size:,} bytes, the message says {size:,}")
        segment = mmap.mmap(fd, size, flags=mmap.MAP_PRIVATE, prot=mmap.PROT_READ | mmap.PROT_WRITE)
    finally:
        os.close(fd)
    if reuse:
        assert returned is not None
        weakref.finalize(segment, returned.append, message.segment)
    arrays: dict[str, np.ndarray] = {}
    for t, dtype, dims in checked_layout(message.tensors, size, max_elements):
        arrays[t.name] = (
            np.ndarray(dims, dtype, buffer=segment, offset=t.offset) if t.total_bytes else np.empty(dims, dtype)
        )
        check_bool(arrays[t.name], t.name)
    return arrays


def pwrite_all(fd: int, data: memoryview, offset: int) -> None:
    """All of ``data`` into the file at ``offset`` (``pwrite`` may write less than asked)."""
    while data:
        written = os.pwrite(fd, data, offset)
        data, offset = data[written:], offset + written


def _open_worker_file(path: str, inode: int) -> int:
    """A lent worker buffer, opened read-only, once it is certain it is the file the server meant
    (its inode) and cannot shrink under a mapping (a memfd sealed against shrinking; a truncated
    file would kill this process with SIGBUS)."""
    if not _PROC_FD.fullmatch(path):
        raise TensorError(f"worker buffer path {shorten(path)!r} is not one a deepscope server sends; refused")
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise WorkerFileUnavailable(f"cannot open the capture's worker buffer: {exc}") from None
    try:
        sealed = bool(fcntl.fcntl(fd, fcntl.F_GET_SEALS) & fcntl.F_SEAL_SHRINK)
    except OSError:
        sealed = False
    problem = (
        "is not the file the server lent (its descriptor was reused)"
        if os.fstat(fd).st_ino != inode
        else ("is not sealed against shrinking" if not sealed else "")
    )
    if problem:
        os.close(fd)
        raise TensorError(f"the capture's worker buffer {problem}; refused")
    return fd


def checked_layout(
    tensors: Iterable[pb.SharedTensor], size: int, max_elements: int | None
) -> Iterator[tuple[pb.SharedTensor, np.dtype, tuple[int, ...]]]:
    """Each tensor of a segment with its dtype and shape, once its dtype, shape, byte count and
    place inside the ``size``-byte segment are checked (TensorError otherwise), names unique."""
    seen: set[str] = set()
    for t in tensors:
        try:
            dtype = numpy_dtype(t.dtype)
            dims = check_shape(t.shape, dtype, t.total_bytes, max_elements)
        except (TensorError, ValueError) as exc:
            raise TensorError(f"tensor '{shorten(t.name)}': {exc}") from None
        if t.name in seen:
            raise TensorError(f"duplicate tensor '{shorten(t.name)}'")
        seen.add(t.name)
        if t.offset + t.total_bytes > size:
            raise TensorError(f"tensor '{shorten(t.name)}' lies outside its shared-memory segment")
        yield t, dtype, dims


def check_bool(array: np.ndarray, name: str) -> None:
    """BOOL tensors hold only 0 and 1 bytes (numpy would read any other byte as True)."""
    if array.dtype == np.bool_ and array.size and array.view(np.uint8).max() > 1:
        raise TensorError(f"tensor '{shorten(name)}': BOOL bytes must be 0 or 1")


@dataclass
class InputSegment:
    """An input segment the server lent this client: its descriptor (never mapped) and size."""

    name: str
    fd: int
    size: int


class InputSegments:
    """Input segments lent by the server (``CaptureDone.input_segment``), for same-host requests'
    inputs: a request writes its inputs into a free one and names it instead of carrying them; the
    segment is free again once that request's response has arrived (the server read it first).

    Written with ``pwrite``, never mapped: a server that shrank one could otherwise crash this
    process with SIGBUS. At most ``KEEP`` are held (two: the SDK keeps one request ahead).
    """

    #: Inputs smaller than this travel in the request: a segment saves nothing on a few KB.
    MIN_BYTES = 64 << 10
    KEEP = 2

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._held: set[str] = set()  # names of the segments this client holds, free or in use
        self._free: list[InputSegment] = []
        self.enabled = True

    @property
    def held(self) -> int:
        return len(self._held)

    def take(self, total: int) -> InputSegment | None:
        """The smallest free segment of at least ``total`` bytes, now in use."""
        with self._lock:
            fits = [seg for seg in self._free if seg.size >= total]
            if not fits:
                return None
            seg = min(fits, key=lambda s: s.size)
            self._free.remove(seg)
            return seg

    def wanted(self, total: int) -> int:
        """Bytes to ask the server for (0: none), when no free segment fits ``total``; makes room
        by closing the smallest free segment when ``KEEP`` are held already."""
        if not self.enabled or total < self.MIN_BYTES:
            return 0
        with self._lock:
            if len(self._held) >= self.KEEP:
                if not self._free:
                    return 0
                smallest = min(self._free, key=lambda s: s.size)
                self._free.remove(smallest)
                self._held.discard(smallest.name)
                os.close(smallest.fd)
            return total

    def write(self, seg: InputSegment, arrays: dict[str, np.ndarray]) -> pb.SharedInputs:
        """``arrays`` written into ``seg`` (64-byte aligned, little-endian), as a request names them."""
        message = pb.SharedInputs(segment=seg.name)
        for (name, value), offset in zip(arrays.items(), _aligned_offsets(arrays)[0]):
            array, raw = raw_bytes(value)
            pwrite_all(seg.fd, raw, offset)
            message.tensors.add(
                name=name, dtype=kserve_dtype(array.dtype), shape=array.shape, offset=offset, total_bytes=len(raw)
            )
        return message

    @staticmethod
    def span(arrays: dict[str, np.ndarray]) -> int:
        """Bytes ``write`` needs for ``arrays``."""
        return _aligned_offsets(arrays)[1]

    def give_back(self, seg: InputSegment) -> None:
        """The response of the request that used ``seg`` has arrived; a segment dropped meanwhile
        (``close``: the server no longer holds it) is closed instead of reused."""
        with self._lock:
            if seg.name in self._held:
                self._free.append(seg)
                return
        os.close(seg.fd)

    def adopt(self, message: pb.InputSegment) -> None:
        """Open a newly lent segment and unlink its name (the server keeps its own descriptor).
        One that cannot be opened (another user's server) turns input segments off."""
        if not _NAME.fullmatch(message.segment):
            raise TensorError(f"input segment name {shorten(message.segment)!r} is not one a deepscope server makes")
        path = os.path.join(SHM_DIR, message.segment)
        try:
            fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:
            self.enabled = False
            return
        with contextlib.suppress(OSError):
            os.unlink(path)
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_size < message.size_bytes:
            os.close(fd)
            raise TensorError(f"input segment is {info.st_size:,} bytes, the server says {message.size_bytes:,}")
        with self._lock:
            self._free.append(InputSegment(message.segment, fd, message.size_bytes))
            self._held.add(message.segment)

    def close(self) -> None:
        """Drop every segment: free ones now, those in use when their response arrives."""
        with self._lock:
            free, self._free = self._free, []
            self._held.clear()
        for seg in free:
            os.close(seg.fd)


def _aligned_offsets(arrays: dict[str, np.ndarray]) -> tuple[list[int], int]:
    """Where each input starts in its segment (packed in order, each on a 64-byte boundary), and
    where the last ends."""
    offsets: list[int] = []
    end = 0
    for value in arrays.values():
        offsets.append(-(-end // 64) * 64)
        end = offsets[-1] + np.asarray(value).nbytes
    return offsets, end
