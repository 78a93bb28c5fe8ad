"""Same-host inputs: shared-memory segments the server lends a client for its requests' inputs.

A batch of inputs through gRPC costs both sides far more than its bytes suggest: the client
serialises it, gRPC frames and copies it, the server copies it into Python bytes, protobuf and
numpy (measured on the bench MLP's 803 KB batch: ~0.9 ms of client and ~1.6 ms of server CPU per
call, about a third of the SDK's overhead over the forward pass). A client on the server's host
instead writes its inputs into a segment the server lent it, and the request names the segment.

Why this is safe (docs/security.md): the server alone creates these segments (fresh random name,
``O_EXCL``, mode 0600, like capture segments) and reads only segments it lent to the same
connection, so no request makes it open a file of a client's choosing; it reads them with
``preadv`` and never maps them, so a client that truncates or rewrites one mid-call can only spoil
its own inputs (short reads are an error); a connection holds at most ``MAX_PER_PEER`` of them,
each at most ``max_bytes`` (the request size limit), and unused ones are closed after ``ttl``.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import threading
import time
from dataclasses import dataclass
from multiprocessing import resource_tracker

import numpy as np

from deepscope.shared_memory import check_bool, checked_layout
from deepscope.tensors import TensorError
from deepscope.text import shorten
from deepscope.v1 import introspection_pb2 as pb

from .errors import InvalidInput, UnknownInputSegment
from .shared_memory import PREFIX, SHM_DIR
from .wire_codec import read_at

#: Segments one connection may hold (the SDK uses two: it keeps one request ahead).
MAX_PER_PEER = 4


@dataclass
class _Lent:
    fd: int
    size: int
    peer: str
    last_used: float


class InputSegments:
    """The input segments lent to each connection, by name."""

    def __init__(self, ttl_seconds: float, max_bytes: int) -> None:
        self.ttl_seconds, self.max_bytes = ttl_seconds, max_bytes
        self._lock = threading.Lock()
        self._lent: dict[str, _Lent] = {}
        self._sweep_pending = False

    def lend(self, peer: str, want_bytes: int) -> pb.InputSegment | None:
        """A new segment of at least ``want_bytes`` for ``peer``, or None (too large, too many, no room)."""
        self.sweep()
        size = -(-want_bytes // 4096) * 4096
        if not 0 < size <= self.max_bytes:
            return None
        with self._lock:
            if sum(1 for lent in self._lent.values() if lent.peer == peer) >= MAX_PER_PEER:
                return None
        name = PREFIX + secrets.token_hex(16)
        try:
            fd = os.open(
                os.path.join(SHM_DIR, name), os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600
            )
        except OSError:
            return None
        resource_tracker.register("/" + name, "shared_memory")
        try:
            os.ftruncate(fd, size)
            os.posix_fallocate(fd, 0, size)  # a full /dev/shm shows here, not in the client's writes
        except OSError:
            self._dispose(name, fd)
            return None
        with self._lock:
            self._lent[name] = _Lent(fd, size, peer, time.monotonic())
        return pb.InputSegment(segment=name, size_bytes=size)

    def read(self, peer: str, message: pb.SharedInputs, max_elements: int | None) -> list[tuple[str, np.ndarray]]:
        """The named inputs, copied out of the segment (the client may reuse it once this returns)."""
        with self._lock:
            lent = self._lent.get(message.segment)
            if lent is None or lent.peer != peer:
                raise UnknownInputSegment(
                    f"input segment {shorten(message.segment)!r} is not held by this connection (unused for "
                    f"{self.ttl_seconds:g} s it is closed); send the inputs in the request"
                )
            lent.last_used = time.monotonic()
            fd, size = lent.fd, lent.size
        inputs = []
        try:
            for tensor, dtype, dims in checked_layout(message.tensors, size, max_elements):
                array = np.empty(dims, dtype)
                if not read_at(fd, memoryview(array.reshape(-1).view(np.uint8)), tensor.offset):
                    raise InvalidInput(
                        f"input '{shorten(tensor.name)}': the input segment is shorter than the request says"
                    )
                check_bool(array, tensor.name)
                inputs.append((tensor.name, array))
        except TensorError as exc:
            raise InvalidInput(f"input segment: {exc}") from None
        return inputs

    def sweep(self) -> None:
        """Close the segments unused for ``ttl_seconds``."""
        cutoff = time.monotonic() - self.ttl_seconds
        with self._lock:
            idle = [name for name, lent in self._lent.items() if lent.last_used < cutoff]
            gone = [(name, self._lent.pop(name).fd) for name in idle]
        for name, fd in gone:
            self._dispose(name, fd)

    def sweep_later(self, loop: asyncio.AbstractEventLoop) -> None:
        """Have ``loop`` sweep after ``ttl_seconds``, and again while segments are held, with one
        timer at a time: a client that stops capturing or disconnects still has its segments
        closed. Called on the loop's thread."""
        if self._sweep_pending:
            return
        self._sweep_pending = True

        def run() -> None:
            self._sweep_pending = False
            self.sweep()
            if self._lent:
                self.sweep_later(loop)

        loop.call_later(self.ttl_seconds + 1.0, run)

    def close(self) -> None:
        with self._lock:
            gone = [(name, lent.fd) for name, lent in self._lent.items()]
            self._lent.clear()
        for name, fd in gone:
            self._dispose(name, fd)

    @staticmethod
    def _dispose(name: str, fd: int) -> None:
        os.close(fd)
        try:
            os.unlink(os.path.join(SHM_DIR, name))
        except FileNotFoundError:
            pass  # the client unlinked it once it had opened it
        try:
            resource_tracker.unregister("/" + name, "shared_memory")
        except Exception:  # the tracker is a safety net, not a requirement
            pass
