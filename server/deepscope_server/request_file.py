"""One reusable shared-memory file per model worker for the arrays of large requests (server -> worker).

A batch of inputs of a few hundred KB sent through the worker's socket costs the server dozens of
partial sends and event-loop wake-ups, and the worker as many reads (measured on the bench MLP's
803 KB batch: ~5 ms of server CPU per call); a fresh ``memfd`` per request instead pays a page
fault per page. So the server keeps one file per worker, writes each large request's arrays into
it with ``pwrite`` (its pages stay allocated: a plain copy), and the worker reads them with one
``preadv`` into its own memory, so the model gets private, writable arrays as before.

The worker runs client code, so it only ever gets a read-only descriptor (it cannot write or
truncate the file), and the server never maps the file: nothing a worker does to it can reach the
server. One request at a time uses the file (the caller holds the model's lock, and a worker reads
its whole request before it answers).
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from .wire_codec import CodecError, read_at, write_at

#: After a request larger than this, the file gives its pages back (it regrows on demand).
KEEP_BYTES = 256 << 20


class RequestFile:
    """The server's side: the file, and whether the worker has its descriptor yet."""

    def __init__(self) -> None:
        self.fd = os.memfd_create("deepscope-request", os.MFD_CLOEXEC)
        self.shared = False
        self._size = 0

    def write(self, arrays: list[np.ndarray], offsets: list[int]) -> None:
        """Each array's bytes at its offset (the kernel copies; the file grows as needed)."""
        for array, offset in zip(arrays, offsets):
            self._size = max(self._size, offset + array.nbytes)
            write_at(self.fd, array, offset)

    def reader_fd(self) -> int:
        """A new read-only descriptor of the file, for the worker (the caller closes it once sent)."""
        return os.open(f"/proc/self/fd/{self.fd}", os.O_RDONLY | os.O_CLOEXEC)

    def trim(self) -> None:
        """Free the pages of an outsized request (called once the worker has answered it)."""
        if self._size > KEEP_BYTES:
            os.ftruncate(self.fd, 0)
            self._size = 0

    def close(self) -> None:
        os.close(self.fd)


class RequestReader:
    """The worker's side: the read-only descriptor, once the server has sent it."""

    def __init__(self) -> None:
        self.fd: int | None = None

    def adopt(self, fd: int) -> None:
        if self.fd is not None:
            os.close(self.fd)
        self.fd = fd

    def read(self, total: int) -> Any:
        """The request's first ``total`` bytes, copied into a new writable buffer."""
        if self.fd is None:
            raise CodecError("a request refers to the request file before it was sent")
        buffer = bytearray(total)
        if not read_at(self.fd, memoryview(buffer), 0):
            raise CodecError("the request file is shorter than its message says")
        return buffer
