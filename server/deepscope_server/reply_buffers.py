"""Reusable shared-memory files for a model worker's large replies, lent to the server and handed back.

A fresh shared-memory file costs far more than the copy into it: every page is allocated and
zeroed on first touch, and on a virtual machine a page fault is dear (measured here, 38 MB: 23 ms
through a fresh ``memfd`` against 1.9 ms copying into pages already mapped). So a worker keeps its
reply files and the server keeps them mapped: a capture costs one memory copy in the worker, and
the server reads the tensors in place.

Ownership goes one way at a time. The worker writes a reply into a free buffer and lends it; the
server's arrays are read-only views of its mapping, and when the last of them is gone (a
``weakref.finalize`` on the view they all share) the buffer's id goes back to the worker with the
next request. Only requests whose caller just reads and drops the arrays borrow (a Capture that
copies them on or streams them); everything else still gets a private mapping of a one-off file.

The worker runs client code, so the server trusts nothing it says: a buffer is mapped only if its
file is sealed against shrinking (``F_SEAL_SHRINK``, so no later truncation can fault the server's
reads with SIGBUS) and is as large as the reply says. A worker that writes into a buffer it lent
can change only its own outputs, which it could have made anything anyway.
"""

from __future__ import annotations

import collections
import fcntl
import mmap
import os
import weakref
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .wire_codec import CodecError

#: Buffers are sized in these steps, so slightly different batches reuse the same file.
_STEP = 4 << 20
#: A worker lends this many buffers at most (a well-behaved one: those the server holds plus its
#: free ones, a handful); past it the server refuses the reply rather than map without bound.
MAX_BUFFERS = 64
#: Seals a worker puts on its buffers; the server requires SHRINK.
_SEALS = fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_SEAL


@dataclass
class _Buffer:
    fd: int
    mapping: mmap.mmap

    @property
    def size(self) -> int:
        return len(self.mapping)


@dataclass
class WorkerBuffers:
    """The worker's side: its reply files, free or lent, and which ids the server should forget."""

    #: Free buffers past this many bytes are closed (largest first); lent ones always stay.
    keep_bytes: int = 256 << 20
    _free: dict[int, _Buffer] = field(default_factory=dict)
    _lent: dict[int, _Buffer] = field(default_factory=dict)
    _dropped: list[int] = field(default_factory=list)
    _next_id: int = 1

    def give_back(self, ids: Any, discard: Any = None) -> None:
        """The server is done with these (ids it never had are ignored); ``discard``: close these
        instead of reusing them (a client may still map them: their pages live on until it unmaps)."""
        for raw in ids if isinstance(ids, list) else ():
            buffer = self._lent.pop(raw, None) if isinstance(raw, int) else None
            if buffer is not None:
                self._free[raw] = buffer
        for raw in discard if isinstance(discard, list) else ():
            buffer = self._lent.pop(raw, None) if isinstance(raw, int) else None
            if buffer is not None:
                self._close(raw, buffer)
        self._trim()

    def lend(self, total: int) -> tuple[int, bool, memoryview]:
        """A buffer of at least ``total`` bytes, now lent: (id, whether the server has yet to map
        it, a writable view of it). The caller writes the reply into the view and drops it."""
        fits = [(b.size, i) for i, b in self._free.items() if b.size >= total]
        if fits:
            _, ident = min(fits)
            buffer, new = self._free.pop(ident), False
        else:
            ident, new = self._next_id, True
            self._next_id += 1
            buffer = _create(-(-total // _STEP) * _STEP + total // 8)
        self._lent[ident] = buffer
        self._trim()
        return ident, new, memoryview(buffer.mapping)

    def fd(self, ident: int) -> int:
        return self._lent[ident].fd

    def dropped(self) -> list[int]:
        """Ids closed since the last call, for the server to unmap."""
        ids, self._dropped = self._dropped, []
        return ids

    def _trim(self) -> None:
        while self._free and sum(b.size for b in self._free.values()) > self.keep_bytes:
            ident = max(self._free, key=lambda i: self._free[i].size)
            self._close(ident, self._free.pop(ident))

    def _close(self, ident: int, buffer: _Buffer) -> None:
        """Close a buffer taken out of the pool; the server is told to forget it."""
        buffer.mapping.close()
        os.close(buffer.fd)
        self._dropped.append(ident)


def _create(size: int) -> _Buffer:
    fd = os.memfd_create("deepscope-reply", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    try:
        os.ftruncate(fd, size)
        os.posix_fallocate(fd, 0, size)  # out of memory is an error here, not a SIGBUS mid-copy
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, _SEALS)
        return _Buffer(fd, mmap.mmap(fd, size, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ | mmap.PROT_WRITE))
    except BaseException:
        os.close(fd)
        raise


class BorrowedReplies:
    """The server's side, one per worker process: its lent buffers, mapped read-only once, and the
    ids whose arrays are all gone (to give back with the next request)."""

    def __init__(self) -> None:
        self._maps: dict[int, mmap.mmap] = {}
        self._fds: dict[int, int] = {}  # each mapped buffer's descriptor, kept for lending it on
        self._returned: collections.deque[int] = collections.deque()  # appended by finalizers, any thread
        self._forfeited: set[int] = set()  # to be closed by the worker, not reused
        #: id(view) -> (the view, a descriptor of its buffer alive as long as the view), for ``lendable``.
        self._views: dict[int, tuple[weakref.ref[np.ndarray], int, int]] = {}

    def returned(self) -> tuple[list[int], list[int]]:
        """Ids to give back now (drained): those to reuse, and those to close (``forfeit``)."""
        free, discard = [], []
        while self._returned:
            ident = self._returned.popleft()
            if ident in self._forfeited:
                self._forfeited.discard(ident)
                self.forget([ident])
                discard.append(ident)
            else:
                free.append(ident)
        return free, discard

    def forfeit(self, ident: int) -> None:
        """Buffer ``ident`` may still be mapped by a client that did not hand it back: once the
        server's arrays on it are gone, the worker closes it instead of writing into it again."""
        self._forfeited.add(ident)

    def lendable(self, array: np.ndarray) -> tuple[np.ndarray, int, int] | None:
        """For an array of a borrowed reply: (the reply's byte view, which keeps the buffer lent
        while held; a descriptor of the buffer, open as long as the view; the buffer's id)."""
        base = array.base
        entry = self._views.get(id(base))
        if entry is None or entry[0]() is not base:
            return None
        assert isinstance(base, np.ndarray)
        return base, entry[1], entry[2]

    def close(self) -> None:
        """The worker is gone: close the descriptors (views made earlier keep their own)."""
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()

    def forget(self, ids: Any) -> None:
        """Buffers the worker closed: unmapped once no array uses them."""
        for ident in ids if isinstance(ids, list) else ():
            if isinstance(ident, int):
                self._maps.pop(ident, None)
                fd = self._fds.pop(ident, None)
                if fd is not None:
                    os.close(fd)

    def adopt(self, ident: Any, fd: int) -> None:
        """Map a newly lent buffer (read-only, shared); closes ``fd``. Refused unless sealed against
        shrinking, and past ``MAX_BUFFERS``."""
        try:
            if not isinstance(ident, int) or isinstance(ident, bool):
                raise CodecError(f"malformed reply buffer id {ident!r}")
            if ident not in self._maps and len(self._maps) >= MAX_BUFFERS:
                raise CodecError(f"the worker lent more than {MAX_BUFFERS} reply buffers")
            if not fcntl.fcntl(fd, fcntl.F_GET_SEALS) & fcntl.F_SEAL_SHRINK:
                raise CodecError("the worker's reply buffer is not sealed against shrinking")
            size = os.fstat(fd).st_size
            if size <= 0:
                raise CodecError("the worker's reply buffer is empty")
            self._maps[ident] = mmap.mmap(fd, size, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ)
            old = self._fds.pop(ident, None)
            if old is not None:
                os.close(old)
            self._fds[ident], fd = fd, -1
        except OSError as exc:  # not a memfd (EINVAL from F_GET_SEALS), or unmappable
            raise CodecError(f"the worker's reply buffer cannot be mapped: {exc}") from None
        finally:
            if fd >= 0:
                os.close(fd)

    def view(self, ident: Any, total: int) -> np.ndarray:
        """A read-only byte array over a lent buffer's first ``total`` bytes; the buffer goes back
        to the worker once it and every array made from it are gone."""
        mapping = self._maps.get(ident) if isinstance(ident, int) else None
        if mapping is None:
            raise CodecError(f"the worker replied in buffer {ident!r}, which it never lent")
        if total > len(mapping):
            raise CodecError(f"a reply of {total:,} bytes does not fit its {len(mapping):,}-byte buffer")
        view = np.frombuffer(mapping, np.uint8, count=total)
        # The memoryview numpy made for this array alone: every view of it keeps it alive (an
        # array made straight on the mapping would hold the mapping itself, shared by all replies).
        weakref.finalize(view.base, self._returned.append, ident)
        fd = os.dup(self._fds[ident])
        key = id(view)
        self._views[key] = (weakref.ref(view), fd, ident)
        weakref.finalize(view, self._forget_view, key, fd)
        return view

    def _forget_view(self, key: int, fd: int) -> None:
        self._views.pop(key, None)
        os.close(fd)
