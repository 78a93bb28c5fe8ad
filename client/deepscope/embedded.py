"""A local deepscope-server in a child process on a free loopback port (for the CLI and notebooks).

A child process, not a thread: the server's torch/onnxruntime threads, memory and any crash stay
out of the caller's process, and stopping it frees everything.

The server lives as long as a client holds its lifeline (``deepscope_server.embedded``): a
script that raises or ends without ``close()`` does not leak it. When a live embedded server
already holds the store, ``start()`` attaches to it (address and token from the store's lock
record, see ``lock_record``) instead of failing: two notebooks or two CLI runs share one server.
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from pathlib import Path
from typing import Any

import grpc

from . import lock_record

#: A live server whose lock record lacks a lifeline this long was not started embedded.
RECORD_GRACE_SECONDS = 3.0
#: What a server child says when it finds its store locked (deepscope_server.store.StoreInUse).
STORE_IN_USE = "is in use by another deepscope-server"


def loopback_flags(port_file: Path, store: Path, token_file: Path) -> list[str]:
    """Server flags for a child on a free loopback port, which it writes to ``port_file`` once it
    serves; its store and token file (bench/server.py starts its servers with these too)."""
    listen = ["--host", "127.0.0.1", "--port", "0", "--port-file", str(port_file)]
    return [*listen, "--store", str(store), "--auth-token-file", str(token_file)]


class EmbeddedServerError(RuntimeError):
    """The embedded server did not start (the message includes its log)."""


class EmbeddedServer:
    def __init__(self, store: str | Path | None = None, startup_timeout: float = 120.0, **flags: Any) -> None:
        self.store = (
            Path(store) if store else Path(os.environ.get("DEEPSCOPE_STORE", Path.home() / ".deepscope" / "store"))
        )
        self.flags = flags
        self.startup_timeout = startup_timeout
        # Other local users cannot drive our server. Never a leading "-": `--token T` must parse as a value.
        self.token = "ds" + secrets.token_urlsafe(24)
        self.process: subprocess.Popen[bytes] | None = None
        self.attached = False  #: True when start() joined a server another process started
        self._lifeline: socket.socket | None = None
        self._tmp = tempfile.TemporaryDirectory(prefix="deepscope-embedded-")
        self.log_path = Path(self._tmp.name) / "server.log"

    def start(self) -> str:
        """Attach to the live embedded server of the store, or start one; returns its address."""
        try:
            import deepscope_server  # noqa: F401
        except ImportError:
            raise EmbeddedServerError(
                "the embedded server needs the deepscope-server package: pip install deepscope-server, "
                "or connect to a running server with --server HOST:PORT"
            ) from None
        deadline = time.monotonic() + self.startup_timeout
        no_lifeline_since: float | None = None
        while time.monotonic() < deadline:
            record = lock_record.read_live(self.store)
            if record is None:
                address = self._spawn(deadline)
                if address:
                    return address
            elif record.get("lifeline"):
                no_lifeline_since = None
                if record.get("address") and self._attach(record):
                    return record["address"]
            else:
                no_lifeline_since = no_lifeline_since or time.monotonic()
                if time.monotonic() - no_lifeline_since > RECORD_GRACE_SECONDS:
                    raise EmbeddedServerError(
                        f"store {self.store} is in use by a deepscope-server that was not started embedded "
                        f"(pid {record.get('pid', '?')}); connect to it with --server HOST:PORT "
                        "(deepscope.connect) or pick another --store"
                    )
            time.sleep(0.1)  # a server starting up or shutting down: look again
        self.stop()
        raise EmbeddedServerError(f"embedded server did not start within {self.startup_timeout:g} s:\n{self.log()}")

    def _attach(self, record: dict[str, Any]) -> bool:
        """Hold the live server's lifeline; False when it is going away (then we look again)."""
        conn = _connect_lifeline(record["lifeline"])
        if conn is None:
            return False
        self._lifeline, self.token, self.attached = conn, record.get("token", ""), True
        if self.flags:
            warnings.warn(
                f"attached to the embedded server already running on store {self.store} (pid "
                f"{record.get('pid')}); it keeps the flags it was started with, not {sorted(self.flags)}",
                stacklevel=4,
            )
        return True

    def _spawn(self, deadline: float) -> str | None:
        """Start a server child; its address, or None when another server took the store first."""
        port_file = Path(self._tmp.name) / "port"
        port_file.unlink(missing_ok=True)
        token_file = Path(self._tmp.name) / "token"
        token_file.write_text(self.token)
        token_file.chmod(0o600)
        lifeline = Path(tempfile.mkdtemp(prefix="deepscope-")) / "lifeline"  # short: AF_UNIX paths are limited
        args = [sys.executable, "-m", "deepscope_server.embedded", str(lifeline)]
        args += loopback_flags(port_file, self.store, token_file)
        for key, value in self.flags.items():
            flag = "--" + key.replace("_", "-")
            if value is True:
                args.append(flag)
            elif value not in (None, False):
                args += [flag, str(value)]
        with self.log_path.open("ab") as log:
            log_start = log.tell()
            # stdin is the start-up lifeline: if we die before connecting, the child sees EOF and exits.
            self.process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.PIPE)
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                self.process = None
                shutil.rmtree(lifeline.parent, ignore_errors=True)
                # Another server claimed the store while ours started (or a client's probe of the lock
                # overlapped our claim): look again, attach or retry.
                if lock_record.read_live(self.store) is not None or STORE_IN_USE in self._log_since(log_start):
                    return None
                raise EmbeddedServerError(f"embedded server exited:\n{self.log()}")
            if port_file.exists() and port_file.read_text().strip():
                address = f"127.0.0.1:{port_file.read_text().strip()}"
                self._wait_ready(address, deadline)
                self._lifeline = _connect_lifeline(str(lifeline))
                if self._lifeline is None:
                    raise EmbeddedServerError(f"embedded server closed its lifeline:\n{self.log()}")
                lock_record.publish(self.store, address=address, token=self.token)
                return address
            time.sleep(0.05)
        return None

    def _wait_ready(self, address: str, deadline: float) -> None:
        with grpc.insecure_channel(address) as channel:
            grpc.channel_ready_future(channel).result(timeout=max(1.0, deadline - time.monotonic()))

    def _log_since(self, offset: int) -> str:
        with self.log_path.open("rb") as log:
            log.seek(offset)
            return log.read().decode(errors="replace")

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-4000:]
        except OSError:
            return ""

    def stop(self, timeout: float = 30.0) -> None:
        """Let go of the server: it stops when no other client holds it (we wait for our own child then)."""
        last = True
        if self._lifeline is not None:
            try:
                self._lifeline.sendall(b"bye")
                last = self._lifeline.recv(16) != b"stay"
            except OSError:
                pass
            self._lifeline.close()
            self._lifeline = None
        if self.process is not None:
            self.process.stdin.close()  # type: ignore[union-attr]
            if not last:  # other clients still use it: reap it whenever it ends, never wait for it
                threading.Thread(target=self.process.wait, name="embedded-reaper", daemon=True).start()
            elif self.process.poll() is None:
                try:
                    self.process.wait(timeout)
                except subprocess.TimeoutExpired:
                    self.process.kill()
                    self.process.wait()
        self.process = None
        self._tmp.cleanup()


def _connect_lifeline(path: str) -> socket.socket | None:
    """A connection the server greeted with ``ok``, or None when its lifeline is gone or closing."""
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        conn.settimeout(5.0)
        conn.connect(path)
        if conn.recv(2) == b"ok":
            conn.settimeout(None)
            return conn
    except OSError:
        pass
    conn.close()
    return None
