"""The client's side of same-host captures: map the segment the server named on this call, then free it.

The client asks for shared memory only when the server is on its own host (a loopback or Unix
socket address) and accepts only names of the server's form (``deepscope_`` + 32 hex digits),
so a server cannot point it at another file. It unlinks the segment as soon as it is mapped
(freeing it on every path, even a malformed one); the arrays are private copy-on-write views of
the mapping, alive as long as they are. A segment the server lent for reuse is not unlinked: once
its mapping and arrays are gone the client hands its name back with the next capture, and the
server writes a later capture into pages it already has (far cheaper than fresh ones).
"""

from __future__ import annotations

import collections
import ipaddress
import mmap
import os
import re
import stat
import weakref

import numpy as np

from .dtypes import numpy_dtype
from .tensors import TensorError, check_shape
from .text import shorten
from .v1 import introspection_pb2 as pb

SHM_DIR = "/dev/shm"
_NAME = re.compile(r"deepscope_[0-9a-f]{32}")


class SharedMemoryUnavailable(OSError):
    """The segment cannot be mapped here (another user's server, expired, no /dev/shm): stream instead."""


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
    path = os.path.join(SHM_DIR, message.segment)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:  # PermissionError: the server runs as another user; FileNotFoundError: expired
        raise SharedMemoryUnavailable(f"cannot open the capture's shared-memory segment: {exc}") from None
    try:
        try:
            if not reuse:
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
    for t in message.tensors:
        try:
            dtype = numpy_dtype(t.dtype)
            dims = check_shape(t.shape, dtype, t.total_bytes, max_elements)
        except (TensorError, ValueError) as exc:
            raise TensorError(f"tensor '{shorten(t.name)}': {exc}") from None
        if t.name in arrays:
            raise TensorError(f"duplicate tensor '{shorten(t.name)}'")
        if t.offset + t.total_bytes > size:
            raise TensorError(f"tensor '{shorten(t.name)}' lies outside its shared-memory segment")
        arrays[t.name] = (
            np.ndarray(dims, dtype, buffer=segment, offset=t.offset) if t.total_bytes else np.empty(dims, dtype)
        )
        if dtype == np.bool_ and t.total_bytes and arrays[t.name].view(np.uint8).max() > 1:
            raise TensorError(f"tensor '{shorten(t.name)}': BOOL bytes must be 0 or 1")
    return arrays
