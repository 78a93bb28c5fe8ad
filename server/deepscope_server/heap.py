"""glibc malloc settings for the server's own processes: keep freed memory for the next call.

By default glibc hands the top of its heap back to the kernel as soon as more than a few MB are
free, and adapts its mmap threshold as it goes. A request of a few hundred KB to a few MB (a
batch of inputs, a capture's arrays) then costs every call a heap shrink and fresh page faults
for each copy of the data; on a virtual machine both are dear (measured on the bench MLP's 803 KB
batch: the server's CPU per capture 4.7 -> 2.3 ms, the model worker's 7.3 -> 6.2 ms). So the
server, its model workers and its metric workers keep up to ``TRIM_BYTES`` of free heap and serve
allocations below ``MMAP_BYTES`` (glibc's largest adaptive threshold) from it. Applied only to
deepscope's own processes, never to a client's, and not when the user set ``MALLOC_*`` tunables.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

#: glibc's mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
#: Allocations at least this large are mmapped (and unmapped when freed) as before.
MMAP_BYTES = 32 << 20
#: Free memory at the top of the heap is handed back past this much.
TRIM_BYTES = 128 << 20


def keep_freed_memory() -> bool:
    """Apply the settings; False where the C library is not glibc or the user chose their own."""
    if any(name.startswith(("MALLOC_", "GLIBC_TUNABLES")) for name in os.environ):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_BYTES)) and bool(mallopt(_M_TRIM_THRESHOLD, TRIM_BYTES))
