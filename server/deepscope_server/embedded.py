"""Entry point of an embedded server: ``python -m deepscope_server.embedded LIFELINE_SOCKET [server flags]``.

An embedded server (``Client.embedded()``, the CLI) lives exactly as long as some client process
holds a connection to its *lifeline*, a Unix socket in a private directory: the process that
started it and every one that attached to it later (see ``deepscope.lock_record``). When the last
connection closes, for whatever reason (``close()``, the script ending or raising, kill -9 of
the notebook kernel), the kernel closes its end, and the server shuts down gracefully. Its stdin,
a pipe from the starting process, covers the start: if that process dies before it connects,
stdin reaches EOF and the server exits.

Lifeline protocol: the server greets each connection with ``ok``; a client leaving in order sends
``bye`` and reads ``stop`` (it was the last one: the server is stopping) or ``stay``.
"""

from __future__ import annotations

import logging
import os
import selectors
import shutil
import signal
import socket
import sys
import threading
from pathlib import Path

from deepscope.lock_record import LIFELINE_ENV

log = logging.getLogger(__name__)

#: After the last client left: seconds the graceful shutdown may take before the process exits anyway.
HARD_EXIT_SECONDS = 30.0


class Lifeline:
    """Counts the clients connected to the socket; shuts the server down when none is left."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(str(path))
        self.listener.listen(16)
        self.selector = selectors.DefaultSelector()
        self.selector.register(self.listener, selectors.EVENT_READ, "accept")
        self.selector.register(sys.stdin.fileno(), selectors.EVENT_READ, "stdin")
        self.clients: set[socket.socket] = set()
        self.ever_connected = False

    def run(self) -> None:
        while True:
            for key, _ in self.selector.select():
                if key.data == "accept":
                    self._accept()
                elif key.data == "stdin":
                    if not os.read(key.fd, 4096):
                        self.selector.unregister(key.fd)
                        if not self.ever_connected:
                            return self._stop("the starting process exited before it connected")
                else:
                    self._leave(key.fileobj)  # type: ignore[arg-type]
                    if not self.clients:
                        return self._stop("the last client left")

    def _accept(self) -> None:
        conn, _ = self.listener.accept()
        conn.sendall(b"ok")
        self.clients.add(conn)
        self.ever_connected = True
        self.selector.register(conn, selectors.EVENT_READ, "client")

    def _leave(self, conn: socket.socket) -> None:
        """A client said bye (answered stop/stay) or its process ended (EOF)."""
        try:
            said_bye = conn.recv(16).startswith(b"bye")
        except OSError:
            said_bye = False
        self.selector.unregister(conn)
        self.clients.discard(conn)
        if said_bye:
            try:
                conn.sendall(b"stay" if self.clients else b"stop")
            except OSError:
                pass
        conn.close()

    def _stop(self, why: str) -> None:
        """No new client may attach from now on; then SIGTERM ourselves (the server's graceful shutdown)."""
        log.info("embedded server stopping: %s", why)
        self.listener.close()
        shutil.rmtree(self.path.parent, ignore_errors=True)
        timer = threading.Timer(HARD_EXIT_SECONDS, os._exit, (1,))
        timer.daemon = True
        timer.start()
        os.kill(os.getpid(), signal.SIGTERM)


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    path = Path(argv.pop(0))
    os.environ[LIFELINE_ENV] = str(path)  # the store's lock record names the lifeline from the start
    lifeline = Lifeline(path)
    threading.Thread(target=lifeline.run, name="lifeline", daemon=True).start()
    from .app import main as serve

    try:
        serve(argv)
    finally:
        shutil.rmtree(path.parent, ignore_errors=True)


if __name__ == "__main__":
    main()
