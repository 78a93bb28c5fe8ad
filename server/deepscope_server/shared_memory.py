"""Same-host captures: the tensors of one Capture in a POSIX shared-memory segment, handed over by name.

A client on the server's host (embedded server, loopback) that accepts shared memory gets one
``SharedTensors`` message instead of headers and chunks: no protobuf bytes, no gRPC copies, no
checksum (nothing crosses a network). Why this is safe (docs/security.md):

* the server alone creates segments, with fresh random names (``deepscope_`` + 128 random bits),
  ``O_EXCL`` and mode 0600: other local users cannot open them, and no request field names a
  segment, so a client can never make the server open, read or write one it did not create;
* a name is handed out only on the authenticated call it was made for, and only to a loopback or
  Unix-socket peer;
* every segment counts against ``--max-capture-bytes`` until it is freed (the client unlinks it
  once mapped, or the server after ``--shared-memory-seconds``); over the budget, or when
  ``/dev/shm`` is full, the capture streams over gRPC instead of failing;
* the multiprocessing resource tracker unlinks what is left if the server dies.
"""

from __future__ import annotations

import functools
import mmap
import os
import secrets
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from multiprocessing import resource_tracker

import numpy as np

from deepscope.dtypes import kserve_dtype
from deepscope.v1 import introspection_pb2 as pb

from .wire_codec import write_at

#: Where POSIX shared memory lives on Linux (shm_open(name) is open("/dev/shm/" + name)).
SHM_DIR = "/dev/shm"
PREFIX = "deepscope_"
#: Captures smaller than this stream over gRPC: for a few kilobytes a segment costs more than it saves.
MIN_BYTES = 256 << 10
#: Tensors start on 64-byte boundaries (cache lines; aligned loads in the client).
ALIGN = 64


def available() -> bool:
    """Whether this host has POSIX shared memory the way this module uses it (Linux)."""
    return os.path.isdir(SHM_DIR)


def local_peer(peer: str) -> bool:
    """Whether a gRPC peer string (``context.peer()``) is on this host: loopback TCP or a Unix socket."""
    if peer.startswith("unix:"):
        return True
    if peer.startswith("ipv4:"):
        return peer[5:].startswith("127.")
    if peer.startswith("ipv6:"):
        host = peer[5:].rsplit(":", 1)[0].strip("[]")
        return host in ("::1", "::ffff:127.0.0.1") or host.startswith("::ffff:127.")
    return False


#: Model worker reply buffers lent on to clients at once (each worker may lend the server 64).
MAX_LENT_FILES = 16


@dataclass
class _Segment:
    size: int
    expiry: float  # time.monotonic: lent ones are unlinked then; free ones are dropped then
    peer: str = ""  # reusable ones: the only peer that may hand it back and get it again
    mapping: mmap.mmap | None = None  # reusable ones: the server's own writable mapping
    lent: bool = True
    #: A worker's reply buffer lent on by path (``lend_file``): the view that keeps it lent to the
    #: server, and what makes the worker close it rather than reuse it (not handed back in time).
    hold: np.ndarray | None = None
    forfeit: Callable[[], None] | None = None


class SegmentPool:
    """The server's segments: lent to a capture's client, counted against a byte budget, unlinked
    on timeout (or found gone because the client unlinked them). A client that returns segments
    gets them back for later captures: writing into pages already mapped costs a copy, where a
    fresh segment's pages are each allocated and zeroed on first touch (measured: 38 MB in 1.9 ms
    against ~25 ms)."""

    def __init__(self, budget_bytes: int, ttl_seconds: float, keep_bytes: int = 512 << 20) -> None:
        self.budget_bytes = budget_bytes
        self.ttl_seconds = ttl_seconds
        #: Returned segments kept for reuse, at most this many bytes (the largest go first).
        self.keep_bytes = keep_bytes
        self._lock = threading.Lock()
        self._segments: dict[str, _Segment] = {}

    @functools.cached_property
    def enabled(self) -> bool:
        """Checked once: /dev/shm does not come and go under a running server."""
        return self.ttl_seconds > 0 and available()

    @property
    def outstanding_bytes(self) -> int:
        """Bytes of segments alive now, lent or kept for reuse."""
        self.sweep()
        with self._lock:
            return sum(seg.size for seg in self._segments.values())

    def share(
        self, tensors: list[tuple[str, np.ndarray]], peer: str = "", reusable: bool = False
    ) -> pb.SharedTensors | None:
        """The tensors written into a segment, or None when they should stream instead (too small,
        over the budget, or no room in /dev/shm). ``reusable``: the client (``peer``) hands it back,
        so it may be one it returned before. Runs in a worker thread (it copies)."""
        layout, total = [], 0
        for name, array in tensors:
            total = -(-total // ALIGN) * ALIGN
            layout.append((name, array, total))
            total += array.nbytes
        if total < MIN_BYTES:
            return None
        self.sweep()
        name, fd = (self._take(total, peer), None) if reusable else (None, None)
        if name is None:
            made = self._create(total + total // 8 if reusable else total, peer, reusable)
            if made is None:
                return None
            name, fd = made
        segment = self._segments[name]
        try:
            for _, array, offset in layout:
                if not array.nbytes:
                    continue
                raw = _raw(array)
                if segment.mapping is not None:
                    segment.mapping[offset : offset + raw.nbytes] = raw
                else:
                    assert fd is not None
                    write_at(fd, raw, offset)
        except OSError:  # ENOSPC: /dev/shm is full; the gRPC stream still works
            self.free(name)
            return None
        finally:
            if fd is not None:
                os.close(fd)
        message = pb.SharedTensors(segment=name, size_bytes=total, reusable=segment.mapping is not None)
        return _described(message, layout)

    def lend_file(
        self,
        tensors: list[tuple[str, np.ndarray]],
        peer: str,
        lendable: tuple[np.ndarray, int, Callable[[], None]],
    ) -> pb.SharedTensors | None:
        """The tensors where they already lie, in a model worker's reply buffer, lent on to
        ``peer``'s client by path (``/proc/<this pid>/fd/<n>``) instead of copied into a segment:
        ``lendable`` is (the reply's byte view, a descriptor of the buffer open while the view
        lives, the call that makes the worker close the buffer rather than reuse it). Held until the
        client hands it back. None (copy instead) when a tensor is not in that view as the wire lays
        it out, the capture is small, too many are lent, or it does not fit the budget."""
        base, fd, forfeit = lendable
        start, size = base.ctypes.data, base.nbytes
        layout = []
        for name, array in tensors:
            offset = array.ctypes.data - start if array.nbytes else 0
            if array.nbytes and (
                array.base is not base
                or not array.flags.c_contiguous
                or array.dtype.byteorder == ">"
                or offset < 0
                or offset + array.nbytes > size
            ):
                return None
            layout.append((name, array, offset))
        if sum(a.nbytes for _, a in tensors) < MIN_BYTES:
            return None
        self.sweep()
        name = PREFIX + secrets.token_hex(16)
        with self._lock:
            lent_files = sum(1 for seg in self._segments.values() if seg.hold is not None)
            used = sum(seg.size for seg in self._segments.values())
            if lent_files >= MAX_LENT_FILES or used + size > self.budget_bytes:
                return None
            self._segments[name] = _Segment(size, time.monotonic() + self.ttl_seconds, peer, hold=base, forfeit=forfeit)
        message = pb.SharedTensors(
            segment=name,
            file=f"/proc/{os.getpid()}/fd/{fd}",
            file_inode=os.fstat(fd).st_ino,
            size_bytes=size,
            reusable=True,
        )
        return _described(message, layout)

    def release(self, names: Iterable[str], peer: str) -> None:
        """Segments ``peer`` hands back (it dropped their arrays): kept for its next captures; a
        lent worker buffer goes back to its worker."""
        expiry = time.monotonic() + self.ttl_seconds
        returned = []
        with self._lock:
            for name in names:
                segment = self._segments.get(name)
                if segment is not None and segment.hold is not None and segment.peer == peer:
                    returned.append(self._segments.pop(name))
                elif segment is not None and segment.lent and segment.mapping is not None and segment.peer == peer:
                    segment.lent, segment.expiry = False, expiry
            dropped = self._largest_kept(
                sum(seg.size for seg in self._segments.values() if not seg.lent) - self.keep_bytes
            )
        for name in dropped:
            self.free(name)
        for segment in returned:
            segment.hold = None  # its worker gets it back with its next request

    def free(self, name: str) -> None:
        """Unlink a segment now (the call failed, or its time is up); a client's mapping stays valid."""
        with self._lock:
            segment = self._segments.pop(name, None)
        self._dispose(name, segment)

    def sweep(self) -> None:
        """Forget segments their client unlinked; unlink those past their time."""
        now = time.monotonic()
        with self._lock:  # taken out under the lock: ``_take`` cannot lend one being unlinked
            expired = {name: seg for name, seg in self._segments.items() if now > seg.expiry}
            for name in expired:
                del self._segments[name]
            one_off = [name for name, seg in self._segments.items() if seg.mapping is None and seg.hold is None]
        for name, segment in expired.items():
            self._dispose(name, segment)
        for name in one_off:
            if not os.path.exists(os.path.join(SHM_DIR, name)):
                self._forget(name)

    def close(self) -> None:
        """Unlink every live segment (server shutdown)."""
        with self._lock:
            names = list(self._segments)
        for name in names:
            self.free(name)

    def _take(self, total: int, peer: str) -> str | None:
        """A returned segment of ``peer``'s that fits ``total`` bytes, now lent again."""
        with self._lock:
            fits = [
                (seg.size, name)
                for name, seg in self._segments.items()
                if not seg.lent and seg.peer == peer and seg.size >= total
            ]
            if not fits:
                return None
            _, name = min(fits)
            segment = self._segments[name]
            segment.lent, segment.expiry = True, time.monotonic() + self.ttl_seconds
            return name

    def _create(self, size: int, peer: str, reusable: bool) -> tuple[str, int] | None:
        """A new segment of ``size`` bytes, lent, and its file open for writing (the caller closes
        it); None when over the budget (after dropping kept segments) or /dev/shm refuses it."""
        name = PREFIX + secrets.token_hex(16)
        with self._lock:
            excess = sum(seg.size for seg in self._segments.values()) + size - self.budget_bytes
            dropped = self._largest_kept(excess)
            over = sum(self._segments[n].size for n in dropped) < excess
            if not over:
                self._segments[name] = _Segment(size, time.monotonic() + self.ttl_seconds, peer)
        for old in dropped:
            self.free(old)
        if over:
            return None
        path = os.path.join(SHM_DIR, name)
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        except OSError:
            self._forget(name, registered=False)
            return None
        resource_tracker.register("/" + name, "shared_memory")
        try:
            os.ftruncate(fd, size)
            if reusable:  # written through a mapping: its pages are allocated now, so a full
                os.posix_fallocate(fd, 0, size)  # /dev/shm is ENOSPC here, never a SIGBUS later
                self._segments[name].mapping = mmap.mmap(fd, size, flags=mmap.MAP_SHARED)
        except OSError:
            os.close(fd)
            self.free(name)
            return None
        return name, fd

    def _largest_kept(self, excess: int) -> list[str]:
        """Kept (handed back) segments, largest first, until their sizes add up to ``excess`` or
        none is left; called with the lock held."""
        kept = sorted(((seg.size, n) for n, seg in self._segments.items() if not seg.lent), reverse=True)
        dropped, freed = [], 0
        for size, name in kept:
            if freed >= excess:
                break
            dropped.append(name)
            freed += size
        return dropped

    def _forget(self, name: str, registered: bool = True) -> None:
        """Stop tracking a segment whose file is gone (or was never made)."""
        with self._lock:
            segment = self._segments.pop(name, None)
        if segment is not None:
            self._dispose(name, segment, unlink=False, registered=registered)

    @staticmethod
    def _dispose(name: str, segment: _Segment | None, unlink: bool = True, registered: bool = True) -> None:
        """Unlink a segment taken out of the pool, unmap it and untrack it. A lent worker buffer
        not handed back (expired, or its call failed) may still be mapped by the client: its worker
        closes it instead of writing into it again."""
        if segment is not None and segment.hold is not None:
            if segment.forfeit is not None:
                segment.forfeit()
            segment.hold = None
            return
        if unlink:
            try:
                os.unlink(os.path.join(SHM_DIR, name))
            except FileNotFoundError:
                pass  # the client unlinked it already
        if segment is None:
            return
        if segment.mapping is not None:
            segment.mapping.close()
        if registered:
            try:
                resource_tracker.unregister("/" + name, "shared_memory")
            except Exception:  # the tracker is a safety net, not a requirement
                pass


def _described(message: pb.SharedTensors, layout: list[tuple[str, np.ndarray, int]]) -> pb.SharedTensors:
    """``message`` with each tensor's name, dtype, shape, offset and size added."""
    for name, array, offset in layout:
        message.tensors.add(
            name=name, dtype=kserve_dtype(array.dtype), shape=array.shape, offset=offset, total_bytes=array.nbytes
        )
    return message


def _raw(array: np.ndarray) -> np.ndarray:
    """The array's bytes as the wire has them: C order, little-endian."""
    if array.dtype.byteorder == ">":
        array = array.astype(array.dtype.newbyteorder("<"))
    return np.ascontiguousarray(array).reshape(-1).view(np.uint8)
