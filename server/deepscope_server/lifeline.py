"""Worker processes that die with the server.

A worker started from the forkserver is the forkserver's child, not the server's, so neither
``PR_SET_PDEATHSIG`` nor ``getppid()`` tells it that the server died. A *lifeline* does: the server
keeps the write end of a pipe, the worker a thread blocked reading the other end. When the server
exits for any reason (kill -9 included) the kernel closes the write end, the read returns EOF and
the worker exits at once, even in the middle of a forward pass or a metric.
"""

from __future__ import annotations

import os
import threading
from multiprocessing.connection import Connection


def watch(lifeline: Connection) -> None:
    """In the worker: exit the process (code 70) as soon as the parent's end of ``lifeline`` closes."""

    def wait() -> None:
        try:
            lifeline.recv_bytes()
        except (EOFError, OSError):
            pass
        os._exit(70)

    threading.Thread(target=wait, name="lifeline", daemon=True).start()
