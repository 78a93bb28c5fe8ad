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

import os
import secrets
import threading
import time
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


class SegmentPool:
    """The server's live segments: created per capture, counted against a byte budget, unlinked
    on timeout (or found gone because the client unlinked them)."""

    def __init__(self, budget_bytes: int, ttl_seconds: float) -> None:
        self.budget_bytes = budget_bytes
        self.ttl_seconds = ttl_seconds
        self._lock = threading.Lock()
        self._live: dict[str, tuple[int, float]] = {}  # name -> (bytes, expiry on time.monotonic)

    @property
    def enabled(self) -> bool:
        return self.ttl_seconds > 0 and available()

    @property
    def outstanding_bytes(self) -> int:
        self.sweep()
        with self._lock:
            return sum(size for size, _ in self._live.values())

    def share(self, tensors: list[tuple[str, np.ndarray]]) -> pb.SharedTensors | None:
        """The tensors written into a new segment, or None when they should stream instead (too
        small, over the budget, or no room in /dev/shm). Runs in a worker thread (it copies)."""
        layout, total = [], 0
        for name, array in tensors:
            total = -(-total // ALIGN) * ALIGN
            layout.append((name, array, total))
            total += array.nbytes
        if total < MIN_BYTES:
            return None
        self.sweep()
        name = PREFIX + secrets.token_hex(16)
        with self._lock:
            if sum(size for size, _ in self._live.values()) + total > self.budget_bytes:
                return None
            self._live[name] = (total, time.monotonic() + self.ttl_seconds)
        path = os.path.join(SHM_DIR, name)
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        except OSError:
            self._forget(name, registered=False)
            return None
        resource_tracker.register("/" + name, "shared_memory")
        try:
            os.ftruncate(fd, total)
            for _, array, offset in layout:
                if array.nbytes:
                    write_at(fd, _raw(array), offset)
        except OSError:  # ENOSPC: /dev/shm is full; the gRPC stream still works
            self.free(name)
            return None
        finally:
            os.close(fd)
        message = pb.SharedTensors(segment=name, size_bytes=total)
        for tensor_name, array, offset in layout:
            message.tensors.add(
                name=tensor_name,
                dtype=kserve_dtype(array.dtype),
                shape=array.shape,
                offset=offset,
                total_bytes=array.nbytes,
            )
        return message

    def free(self, name: str) -> None:
        """Unlink a segment now (the call failed, or its time is up); a client's mapping stays valid."""
        try:
            os.unlink(os.path.join(SHM_DIR, name))
        except FileNotFoundError:
            pass  # the client unlinked it already
        self._forget(name)

    def sweep(self) -> None:
        """Forget segments their client unlinked; unlink those past their time."""
        now = time.monotonic()
        with self._lock:
            names = list(self._live.items())
        for name, (_, expiry) in names:
            if now > expiry:
                self.free(name)
            elif not os.path.exists(os.path.join(SHM_DIR, name)):
                self._forget(name)

    def close(self) -> None:
        """Unlink every live segment (server shutdown)."""
        with self._lock:
            names = list(self._live)
        for name in names:
            self.free(name)

    def _forget(self, name: str, registered: bool = True) -> None:
        with self._lock:
            known = self._live.pop(name, None) is not None
        if known and registered:
            try:
                resource_tracker.unregister("/" + name, "shared_memory")
            except Exception:  # the tracker is a safety net, not a requirement
                pass


def _raw(array: np.ndarray) -> np.ndarray:
    """The array's bytes as the wire has them: C order, little-endian."""
    if array.dtype.byteorder == ">":
        array = array.astype(array.dtype.newbyteorder("<"))
    return np.ascontiguousarray(array).reshape(-1).view(np.uint8)
