"""A deepscope server in a child process for the remote benchmarks, optionally with a raw-bytes servicer.

``python bench/server.py [deepscope-server flags]`` runs the real server (``deepscope_server.app.main``)
with one addition: a generic handler ``/deepscope.bench.Raw/Stream`` registered on the *same*
grpc.aio server object (same process, event loop, thread pool, interceptors and message-size
options). Given ``b"<total_bytes>,<chunk_bytes>"`` it streams ``total_bytes`` of raw bytes in
chunks, with no protobuf framing. That is the baseline for the capture throughput: whatever
separates the two is deepscope's own work, not the process, the loopback or gRPC itself.
The handler is attached by wrapping ``grpc.aio.server`` in this process only; the server code is
unchanged.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path

import grpc

RAW_METHOD = "/deepscope.bench.Raw/Stream"


#: Incompressible bytes, made once when the process starts (never inside a timed call: issue 16
#: found ``os.urandom(64 MiB)`` per call took about half of the raw baseline's time).
_PAYLOAD = b""


async def _raw_stream(request: bytes, context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
    total, chunk = (int(v) for v in request.decode().split(","))
    payload = _PAYLOAD  # sliced per chunk (one copy, like any sender)
    sent = 0
    while sent < total:
        n = min(chunk, total - sent)
        lo = sent % len(payload)
        if lo + n > len(payload):
            lo = 0
        yield payload[lo : lo + n]
        sent += n


def _raw_handler() -> grpc.GenericRpcHandler:
    handler = grpc.unary_stream_rpc_method_handler(_raw_stream)  # no (de)serialisers: bytes as they are
    return grpc.method_handlers_generic_handler("deepscope.bench.Raw", {"Stream": handler})


def _main(argv: list[str]) -> None:
    import grpc.aio

    original = grpc.aio.server

    global _PAYLOAD
    _PAYLOAD = os.urandom(64 << 20)

    def server_with_raw(*args, **kwargs):
        server = original(*args, **kwargs)
        server.add_generic_rpc_handlers((_raw_handler(),))
        return server

    grpc.aio.server = server_with_raw
    from deepscope_server.app import main

    main(argv)


class BenchServer:
    """Start a server child process on a free loopback port; ``pid``, ``address``, ``token``; ``stop()``.

    ``raw=True`` runs this file (server + raw servicer); ``raw=False`` the plain ``deepscope_server``.
    Thread counts are pinned through the environment (OMP for torch, DEEPSCOPE_ORT_THREADS for ORT).
    """

    def __init__(self, raw: bool = True, threads: int = 1, flags: tuple[str, ...] = (), wait: bool = True) -> None:
        self._tmp = tempfile.TemporaryDirectory(prefix="deepscope-bench-server-")
        root = Path(self._tmp.name)
        self.token = secrets.token_urlsafe(16)
        (root / "token").write_text(self.token)
        port_file = root / "port"
        from deepscope.embedded import loopback_flags  # here, not at the top: the server child never imports the SDK

        cmd = [sys.executable, str(Path(__file__).resolve())] if raw else [sys.executable, "-m", "deepscope_server"]
        cmd += [*loopback_flags(port_file, root / "store", root / "token"), "--no-reflection", *flags]
        env = dict(
            os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), DEEPSCOPE_ORT_THREADS=str(threads)
        )
        self.log_path = root / "server.log"
        self._log = self.log_path.open("wb")
        self.process = subprocess.Popen(
            cmd, env=env, stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )
        self.pid = self.process.pid
        self._port_file = port_file
        self.address = ""
        if wait:
            self.wait()

    def wait(self) -> BenchServer:
        """Block until the server answers (separate from the constructor so several can start at once)."""
        port_file = self._port_file
        deadline = time.monotonic() + 120
        while not (port_file.exists() and port_file.read_text().strip()):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"bench server did not start:\n{self.log()}")
            time.sleep(0.05)
        self.address = f"127.0.0.1:{port_file.read_text().strip()}"
        with grpc.insecure_channel(self.address) as channel:
            grpc.channel_ready_future(channel).result(timeout=60)
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-3000:] if self.log_path.exists() else ""

    def status(self, key: str) -> int:
        """A /proc/PID/status field in bytes (VmHWM = peak RSS, VmRSS = current RSS)."""
        with open(f"/proc/{self.pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
        raise KeyError(key)

    def connect(self):  # deepscope.Client
        import deepscope

        return deepscope.connect(self.address, token=self.token, progress=False, timeout=600)

    def raw_stream(self, channel: grpc.Channel, total: int, chunk: int) -> int:
        """Receive a raw stream of ``total`` bytes; returns the byte count received."""
        call = channel.unary_stream(RAW_METHOD, request_serializer=None, response_deserializer=None)
        got = 0
        for part in call(
            f"{total},{chunk}".encode(), metadata=[("authorization", f"Bearer {self.token}")], timeout=600
        ):
            got += len(part)
        return got

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()
        self._tmp.cleanup()

    def __enter__(self) -> BenchServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


if __name__ == "__main__":
    _main(sys.argv[1:])
