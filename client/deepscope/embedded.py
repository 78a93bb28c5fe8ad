"""A local deepscope-server in a child process on a free loopback port (for the CLI and notebooks).

A child process, not a thread: the server's torch/onnxruntime threads, memory and any crash stay
out of the caller's process, and stopping it frees everything.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import grpc


class EmbeddedServerError(RuntimeError):
    """The embedded server did not start (the message includes its log)."""


class EmbeddedServer:
    def __init__(self, store: str | Path | None = None, startup_timeout: float = 120.0, **flags: Any) -> None:
        self.store = Path(store) if store else Path(os.environ.get("DEEPSCOPE_STORE", Path.home() / ".deepscope" / "store"))
        self.flags = flags
        self.startup_timeout = startup_timeout
        self.token = secrets.token_urlsafe(24)  # other local users cannot drive our server
        self.process: subprocess.Popen[bytes] | None = None
        self._tmp = tempfile.TemporaryDirectory(prefix="deepscope-embedded-")
        self.log_path = Path(self._tmp.name) / "server.log"

    def start(self) -> str:
        try:
            import deepscope_server  # noqa: F401
        except ImportError:
            raise EmbeddedServerError(
                "the embedded server needs the deepscope-server package: pip install deepscope-server, "
                "or connect to a running server with --server HOST:PORT"
            ) from None
        port_file = Path(self._tmp.name) / "port"
        token_file = Path(self._tmp.name) / "token"
        token_file.write_text(self.token)
        token_file.chmod(0o600)
        args = [sys.executable, "-m", "deepscope_server", "--host", "127.0.0.1", "--port", "0",
                "--port-file", str(port_file), "--store", str(self.store), "--auth-token-file", str(token_file)]
        for key, value in self.flags.items():
            flag = "--" + key.replace("_", "-")
            if value is True:
                args.append(flag)
            elif value not in (None, False):
                args += [flag, str(value)]
        log = self.log_path.open("wb")
        self.process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise EmbeddedServerError(f"embedded server exited with code {self.process.returncode}:\n{self.log()}")
            if port_file.exists() and port_file.read_text().strip():
                address = f"127.0.0.1:{port_file.read_text().strip()}"
                self._wait_ready(address, deadline)
                return address
            time.sleep(0.05)
        self.stop()
        raise EmbeddedServerError(f"embedded server did not start within {self.startup_timeout:g} s:\n{self.log()}")

    def _wait_ready(self, address: str, deadline: float) -> None:
        with grpc.insecure_channel(address) as channel:
            grpc.channel_ready_future(channel).result(timeout=max(1.0, deadline - time.monotonic()))

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-4000:]
        except OSError:
            return ""

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None
        self._tmp.cleanup()
