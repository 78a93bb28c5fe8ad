"""Client models load and run in sandboxed worker processes (``--model-isolation process``, the default).

A model file is client bytes: parsing it, loading it, running it and reading its weights all
happen in a worker process with its own address-space cap (``--model-memory-bytes``), no
inherited server file descriptors, no secrets in its environment (the token stays in the
server), and a lifeline that ends it with the server. The server talks to it through
``wire_codec`` (JSON + shared memory, never pickle) and waits with real deadlines: a load past
``--max-load-seconds``, a forward pass past ``--max-forward-seconds`` or the call's gRPC deadline,
or a cancelled call kills the worker and fails only that call. The next call starts a fresh
worker, so a hostile or buggy model can exhaust only its own worker, never the server.
"""

from __future__ import annotations

import asyncio
import functools
import os
import resource
import signal
import socket
import struct
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from multiprocessing import reduction
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import numpy as np

from . import heap, lifeline, reply_buffers, request_file, wire_codec
from .backends import Backend, CaptureRequest, RunOutput
from .config import Limits
from .errors import (
    DeadlineExceeded,
    DeepscopeError,
    InvalidInput,
    LimitExceeded,
    ModelCrashed,
    ModelOutOfMemory,
    NotFound,
)
from .isolation import _MP, RunCancelled, _release_forkserver
from .isolation import _death as describe_death
from .model_graph import ModelGraph

#: Domain errors a worker may report by name; anything else is reported as the model's failure.
_DOMAIN_ERRORS: dict[str, type[DeepscopeError]] = {cls.__name__: cls for cls in (InvalidInput, NotFound, LimitExceeded)}
#: How often a waiting server thread looks at cancellation, deadlines and the worker's health.
_POLL_SECONDS = 0.05
#: A worker that dies having used this share of its address-space cap is reported as out of memory.
_NEAR_CAP = 0.75
#: ld.so exits with this code when it cannot bind a symbol (e.g. no memory left for it).
_LOADER_EXIT = 127


@dataclass(frozen=True)
class WorkerBudget:
    """What one model worker may use."""

    memory_bytes: int
    load_seconds: float
    forward_seconds: float
    max_message_bytes: int

    @classmethod
    def from_limits(cls, limits: Limits) -> WorkerBudget:
        return cls(
            limits.model_memory_bytes,
            limits.max_load_seconds,
            limits.max_forward_seconds,
            max(limits.max_capture_bytes, limits.max_model_bytes) + (64 << 20),
        )


# ---------------------------------------------------------------- the worker side


def _confine(memory_bytes: int) -> None:
    """Limits that hold for the worker's whole life: memory, file sizes, environment, signals."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # an over-large write fails with EFBIG instead
    for key in [k for k in os.environ if any(word in k.upper() for word in ("TOKEN", "SECRET", "PASSWORD"))]:
        del os.environ[key]  # the server's token never reaches a worker (settings drop it at start too)
    if memory_bytes > 0:
        resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))
        resource.setrlimit(resource.RLIMIT_FSIZE, (memory_bytes, memory_bytes))


def _error_message(exc: BaseException) -> dict[str, Any]:
    message: dict[str, Any] = {"type": type(exc).__name__, "message": str(exc)[:4000], "domain": ""}
    if isinstance(exc, tuple(_DOMAIN_ERRORS.values())):
        assert isinstance(exc, DeepscopeError)
        message.update(
            domain=type(exc).__name__,
            reason=exc.reason,
            field=exc.field or "",
            suggestions=[str(s) for s in exc.suggestions],
            metadata=dict(exc.metadata),
        )
    return message


def _worker_main(conn: Connection, life: Connection, path: str, limits: Limits, device: str, trusted: bool) -> None:
    """Load one model, then serve run requests until "stop" or EOF."""
    lifeline.watch(life)
    _release_forkserver()
    heap.keep_freed_memory()
    from .models import load_checked  # imported before the memory limit, which is for the model alone

    _confine(limits.model_memory_bytes)

    try:
        backend = load_checked(Path(path), limits, device, trusted)
        reply: dict[str, Any] = {
            "ready": {"graph": backend.graph, "format": backend.format, "device": getattr(backend, "device", "cpu")}
        }
    except BaseException as exc:  # reported to the server, which decides
        wire_codec.send(conn, {"error": _error_message(exc), "trace": traceback.format_exc(limit=8)})
        return
    wire_codec.send(conn, reply)
    buffers, requests = reply_buffers.WorkerBuffers(), request_file.RequestReader()
    while True:
        try:
            request = wire_codec.recv(conn, 1 << 62, requests=requests)
        except (EOFError, OSError):
            return
        if request.get("op") == "stop":
            return
        buffers.give_back(request.get("free"), request.get("discard"))
        try:
            if request["op"] == "run":
                out = backend.run(request["inputs"], request["capture"])
            else:
                out = backend.run_with_weights(request["inputs"], request["weights"], request["capture"])
            wire_codec.send(conn, {"ok": out}, buffers if request.get("borrow") else None)
        except MemoryError as exc:
            wire_codec.send(conn, {"error": _error_message(exc)})
            return  # the heap may be in a bad state: the server starts a fresh worker next time
        except BaseException as exc:  # the model's own failure, reported
            wire_codec.send(conn, {"error": _error_message(exc)})


# ---------------------------------------------------------------- the server side


class SandboxedBackend(Backend):
    """A ``Backend`` whose model lives in a worker process; calls block the calling thread only."""

    format = "sandboxed"

    def __init__(self, path: Path, limits: Limits, device: str, trusted: bool) -> None:
        self.path, self.limits, self.requested_device, self.trusted = path, limits, device, trusted
        self.budget = WorkerBudget.from_limits(limits)
        self._process: Any = None
        self._conn: Connection | None = None
        self._lifeline: Connection | None = None
        self._sock: socket.socket | None = None  # the pipe to the worker, for the event loop's non-blocking I/O
        self._borrowed: reply_buffers.BorrowedReplies | None = None  # the running worker's lent buffers
        self._requests: request_file.RequestFile | None = None  # where large requests' arrays go
        self.graph: ModelGraph
        self.device = "cpu"

    @classmethod
    def load(
        cls,
        path: Path,
        *,
        device: str = "auto",
        trusted: bool = False,  # type: ignore[override]
        limits: Limits | None = None,
        cancelled: Callable[[], bool] | None = None,
    ) -> SandboxedBackend:
        backend = cls(Path(path), limits or Limits(), device, trusted)
        backend._start(cancelled)
        return backend

    # -------------------------------------------------------- calls

    def run(
        self,
        inputs: Mapping[str, np.ndarray],
        capture: Sequence[CaptureRequest] = (),
        *,
        cancelled: Callable[[], bool] | None = None,
        deadline: float | None = None,
        borrow: bool = False,
    ) -> RunOutput:
        """``borrow``: large outputs come as read-only views of the worker's reusable buffers, given
        back once dropped; for a caller that only reads them and lets them go (a Capture)."""
        return self._call(self._run_message(inputs, capture, borrow), cancelled, deadline)

    def _run_message(
        self, inputs: Mapping[str, np.ndarray], capture: Sequence[CaptureRequest], borrow: bool
    ) -> dict[str, Any]:
        message = {"op": "run", "inputs": dict(inputs), "capture": list(capture)}
        if borrow:
            message["borrow"] = True
        return message

    def run_with_weights(
        self,
        inputs: Mapping[str, np.ndarray],
        weights: Mapping[str, Mapping[str, np.ndarray]],
        capture: Sequence[CaptureRequest] = (),
        *,
        cancelled: Callable[[], bool] | None = None,
        deadline: float | None = None,
    ) -> RunOutput:
        message = {
            "op": "run_with_weights",
            "inputs": dict(inputs),
            "capture": list(capture),
            "weights": {k: dict(v) for k, v in weights.items()},
        }
        return self._call(message, cancelled, deadline)

    @property
    def ready(self) -> bool:
        """A worker is running (after a kill, the next call starts one: ``run`` does, in a thread)."""
        return self._conn is not None

    async def run_async(
        self,
        inputs: Mapping[str, np.ndarray],
        capture: Sequence[CaptureRequest] = (),
        *,
        cancelled: Callable[[], bool] | None = None,
        deadline: float | None = None,
        borrow: bool = False,
    ) -> RunOutput:
        """``run`` on the event loop: the request and reply go through the worker's pipe with
        non-blocking I/O and the loop waits on the pipe itself, so a call costs no thread hand-off
        and no polling. The same limits hold as in ``run``: the deadline, ``cancelled`` (checked every
        ``_POLL_SECONDS`` while the worker is silent), the worker's death, a malformed reply; each
        stops the worker. The caller holds the model's lock and has checked ``ready``. Requests with
        that must pass a descriptor (the worker's first large one) go through ``run`` in a thread."""
        assert self._conn is not None and self._process is not None
        message = self._with_returns(self._run_message(inputs, capture, borrow))
        data = wire_codec.framed(message, self._requests)
        if data is None:
            return await asyncio.to_thread(self._call, message, cancelled, deadline)
        deadline, flag, budget = self._forward_deadline(deadline)
        if self._sock is None:
            self._sock = socket.socket(fileno=os.dup(self._conn.fileno()))  # blocking mode untouched
        watch = _Watch(self._process, cancelled, deadline, "the forward pass", flag, budget)
        pipe = _LoopPipe(self._sock, asyncio.get_running_loop(), watch, self._borrowed)
        try:
            await pipe.send(data)
        except OSError as exc:
            raise self._worker_gone() from exc
        try:
            reply = await pipe.reply(self.budget.max_message_bytes)
        except (EOFError, OSError) as exc:
            process = self._process
            self._stop_after(lambda: self._death_error(watch.what, process, watch.peak), exc)
        except wire_codec.CodecError as exc:
            self._stop()
            raise ModelCrashed(f"the forward pass failed: the worker sent a malformed reply ({exc})") from None
        except BaseException:
            self._stop()
            raise
        self._trim_requests()
        return self._result(reply)

    def close(self) -> None:
        """Ask the worker to stop; kill it if it does not."""
        conn = self._conn
        if conn is not None:
            try:
                wire_codec.send(conn, {"op": "stop"})
            except (OSError, ValueError):
                pass
        self._stop(grace=1.0)

    @property
    def pid(self) -> int | None:
        """The worker's process id while it runs (tests and diagnostics)."""
        return self._process.pid if self._process is not None else None

    # -------------------------------------------------------- internals

    def _start(self, cancelled: Callable[[], bool] | None = None) -> None:
        parent, child = _MP.Pipe(duplex=True)
        life_read, life_write = _MP.Pipe(duplex=False)
        process = _MP.Process(
            target=_worker_main,
            name=f"model-{self.path.name[:40]}",
            daemon=True,
            args=(child, life_read, str(self.path), self.limits, self.requested_device, self.trusted),
        )
        process.start()
        child.close()
        life_read.close()
        self._process, self._conn, self._lifeline = process, parent, life_write
        self._borrowed, self._requests = reply_buffers.BorrowedReplies(), request_file.RequestFile()
        reply = self._wait(
            time.monotonic() + self.budget.load_seconds,
            cancelled,
            "loading the model",
            "--max-load-seconds",
            self.budget.load_seconds,
        )
        if "error" in reply:
            self._stop()
            raise _rebuild(reply["error"], loading=True, memory_bytes=self.budget.memory_bytes)
        ready = reply["ready"]
        self.graph, self.format, self.device = ready["graph"], str(ready["format"]), str(ready["device"])

    def _call(self, message: dict[str, Any], cancelled: Callable[[], bool] | None, deadline: float | None) -> RunOutput:
        if self._conn is None:
            self._start(cancelled)  # the last worker was killed (deadline, crash): a fresh one
            message = {k: v for k, v in message.items() if k not in ("free", "discard")}  # the gone worker's ids
        assert self._conn is not None
        deadline, flag, budget = self._forward_deadline(deadline)
        try:
            wire_codec.send(self._conn, self._with_returns(message), request_file=self._requests)
        except (OSError, ValueError) as exc:
            raise self._worker_gone() from exc
        reply = self._wait(deadline, cancelled, "the forward pass", flag, budget)
        self._trim_requests()
        return self._result(reply)

    def _trim_requests(self) -> None:
        if self._requests is not None:
            self._requests.trim()

    def _with_returns(self, message: dict[str, Any]) -> dict[str, Any]:
        """``message`` giving back the lent buffers whose arrays are gone."""
        free, discard = self._borrowed.returned() if self._borrowed is not None else ([], [])
        if free:
            message = {**message, "free": [*message.get("free", ()), *free]}
        if discard:
            message = {**message, "discard": [*message.get("discard", ()), *discard]}
        return message

    def lendable(self, array: np.ndarray) -> tuple[np.ndarray, int, Callable[[], None]] | None:
        """Where a borrowed array's buffer can be lent on to a client (``BorrowedReplies.lendable``),
        with the call that makes the worker close it rather than reuse it; None if it cannot."""
        borrowed = self._borrowed
        found = borrowed.lendable(array) if borrowed is not None else None
        if found is None or borrowed is None:
            return None
        base, fd, ident = found
        return base, fd, functools.partial(borrowed.forfeit, ident)

    def _worker_gone(self) -> ModelCrashed:
        """The error for a request the worker could not take (its pipe is closed); stops what is left of it."""
        death = describe_death(self._process)
        self._stop()
        return ModelCrashed(f"the model's worker process is gone ({death}); it restarts on the next call")

    def _forward_deadline(self, deadline: float | None) -> tuple[float, str, float]:
        """The earlier of the call's deadline and ``--max-forward-seconds``, with the flag that named it."""
        limit = time.monotonic() + self.budget.forward_seconds
        if deadline is None or deadline > limit:
            return limit, "--max-forward-seconds", self.budget.forward_seconds
        return deadline, "the call's deadline", max(0.0, deadline - time.monotonic())

    def _result(self, reply: Any) -> RunOutput:
        """The worker's answer to a run, or its error raised as the server's."""
        if not isinstance(reply, dict):
            self._stop()
            raise ModelCrashed("the forward pass failed: the worker sent a malformed reply")
        if "error" in reply:
            error = reply["error"]
            if error["type"] == "MemoryError":
                self._stop()
            raise _rebuild(error, loading=False, memory_bytes=self.budget.memory_bytes)
        return reply["ok"]

    def _stop_after(self, error: Callable[[], DeepscopeError], cause: BaseException) -> None:
        """Raise ``error()`` (read before the worker is reaped) having stopped the worker."""
        try:
            exc = error()
        finally:
            self._stop()
        raise exc from cause

    def _wait(
        self, deadline: float, cancelled: Callable[[], bool] | None, what: str, flag: str, budget: float
    ) -> dict[str, Any]:
        """The worker's next reply; whatever ends the wait otherwise (cancellation, deadline, death,
        a malformed reply) stops the worker, so the next call starts a fresh one."""
        try:
            return self._next_reply(deadline, cancelled, what, flag, budget)
        except BaseException:
            self._stop()
            raise

    def _next_reply(
        self, deadline: float, cancelled: Callable[[], bool] | None, what: str, flag: str, budget: float
    ) -> dict[str, Any]:
        conn, process = self._conn, self._process
        assert conn is not None and process is not None
        watch = _Watch(process, cancelled, deadline, what, flag, budget)
        try:
            while not conn.poll(_POLL_SECONDS):
                watch.check(lambda: conn.poll(0))
            reply = wire_codec.recv(conn, self.budget.max_message_bytes, self._borrowed)
        except (EOFError, OSError) as exc:  # it died: its end of the pipe closed before it answered
            raise self._death_error(what, process, watch.peak) from exc
        except wire_codec.CodecError as exc:
            raise ModelCrashed(f"{what} failed: the worker sent a malformed reply ({exc})") from None
        if not isinstance(reply, dict):
            raise ModelCrashed(f"{what} failed: the worker sent a malformed reply")
        return reply

    def _death_error(self, what: str, process: Any, peak: int) -> DeepscopeError:
        """Why the worker died, as far as the server can tell: near its memory cap it is out of memory
        (a native library may exit or abort where Python would raise MemoryError)."""
        death = describe_death(process)  # waits for the exit code
        cap = self.budget.memory_bytes
        limit = _memory_limit(cap)
        # Exit code 127 is the dynamic loader's fatal error: a lazily bound symbol it could not
        # allocate for, which under an address-space cap means the memory ran out.
        loader_failed = process.exitcode == _LOADER_EXIT
        if cap > 0 and (peak >= _NEAR_CAP * cap or loader_failed):
            return ModelOutOfMemory(
                f"{what} ran out of memory in its worker process ({death} after reaching "
                f"{peak / (1 << 20):,.0f} MiB of its {limit}); send smaller batches or raise "
                "the limit"
            )
        return ModelCrashed(
            f"{what} failed: {death} (its memory limit is {limit}); the server is unaffected "
            "and starts a fresh worker on the next call"
        )

    def _stop(self, grace: float = 0.0) -> None:
        process, conn, life, sock = self._process, self._conn, self._lifeline, self._sock
        self._process = self._conn = self._lifeline = self._sock = None
        if self._borrowed is not None:
            self._borrowed.close()
        self._borrowed = None  # a fresh worker numbers its buffers afresh
        if self._requests is not None:
            self._requests.close()
            self._requests = None
        if sock is not None:
            sock.close()
        if process is not None:
            if grace:
                process.join(grace)
            if process.is_alive():
                process.kill()
            process.join(5.0)
        for c in (conn, life):
            if c is not None:
                c.close()


@dataclass
class _Watch:
    """What ends a wait on a silent worker, for the thread's wait and the event loop's alike:
    cancellation, the deadline, or the worker's death; and its memory peak seen meanwhile."""

    process: Any
    cancelled: Callable[[], bool] | None
    deadline: float
    what: str
    flag: str
    budget: float
    peak: int = 0

    def check(self, has_reply: Callable[[], bool]) -> None:
        """Raise RunCancelled or DeadlineExceeded, or EOFError when the worker died without a reply."""
        if self.cancelled is not None and self.cancelled():
            raise RunCancelled(f"{self.what} was cancelled (worker stopped)")
        if time.monotonic() > self.deadline:
            raise DeadlineExceeded(
                f"{self.what} took longer than {self.flag} ({self.budget:g} s); its worker process was stopped"
            )
        self.peak = max(self.peak, _address_space_peak(self.process.pid))
        if not self.process.is_alive() and not has_reply():
            raise EOFError("the worker died before it answered")


class _LoopPipe:
    """One request and its reply on a worker's pipe, with the event loop waiting on the socket.

    Reads take exactly one message's bytes (the length prefix, then the body) with
    ``MSG_DONTWAIT``, so nothing of the next message is consumed and the pipe stays usable by
    ``Connection`` in a thread; a shared-memory file arrives as ``reduction.recv_handle`` does it,
    once its byte is readable. A worker that stalls mid-message holds only this call, up to its
    deadline, never the loop.
    """

    def __init__(
        self,
        sock: socket.socket,
        loop: asyncio.AbstractEventLoop,
        watch: _Watch,
        borrowed: reply_buffers.BorrowedReplies | None = None,
    ) -> None:
        self.sock, self.loop, self.watch, self.borrowed = sock, loop, watch, borrowed
        self.fd = sock.fileno()

    async def send(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            try:
                view = view[self.sock.send(view, socket.MSG_DONTWAIT) :]
            except BlockingIOError:
                await self._ready(writable=True)

    async def reply(self, max_segment_bytes: int) -> Any:
        header = wire_codec.parse_header(await self._message(wire_codec.MAX_HEADER_BYTES), max_segment_bytes)
        total = int(header["n"])
        segment: Any = None
        if total and header.get("inline"):
            segment = bytearray(await self._message(total))
            if len(segment) != total:
                raise wire_codec.CodecError("an inline message is shorter than it says")
        elif total:
            fd = None
            if wire_codec.carries_fd(header):
                await self._ready()
                fd = reduction.recvfds(self.sock, 1)[0]
            segment = wire_codec.shared_segment(header, fd, self.borrowed)
        return wire_codec.decode(header, segment)

    async def _message(self, max_bytes: int) -> bytes:
        """One message as ``Connection.send_bytes`` framed it."""
        (size,) = struct.unpack("!i", await self._exactly(4))
        if size == -1:
            (size,) = struct.unpack("!Q", await self._exactly(8))
        if size < 0 or size > max_bytes:
            raise wire_codec.CodecError(f"a message of {size:,} bytes is over the limit of {max_bytes:,}")
        return await self._exactly(size)

    async def _exactly(self, n: int) -> bytes:
        parts, left = [], n
        while left:
            try:
                part = self.sock.recv(left, socket.MSG_DONTWAIT)
            except BlockingIOError:
                await self._ready()
                continue
            if not part:
                raise EOFError("the worker closed its pipe")
            parts.append(part)
            left -= len(part)
        return parts[0] if len(parts) == 1 else b"".join(parts)

    async def _ready(self, writable: bool = False) -> None:
        """Wait until the socket is ready, checking the watch every ``_POLL_SECONDS`` meanwhile."""
        while not await self._wait_fd(writable):
            self.watch.check(self._readable_now)

    def _readable_now(self) -> bool:
        try:
            return bool(self.sock.recv(1, socket.MSG_DONTWAIT | socket.MSG_PEEK))
        except BlockingIOError:
            return False
        except OSError:
            return False

    async def _wait_fd(self, writable: bool) -> bool:
        """True once the socket is ready, False after ``_POLL_SECONDS``."""
        future: asyncio.Future[bool] = self.loop.create_future()

        def settle(value: bool) -> None:
            if not future.done():
                future.set_result(value)

        add, remove = (
            (self.loop.add_writer, self.loop.remove_writer)
            if writable
            else (self.loop.add_reader, self.loop.remove_reader)
        )
        add(self.fd, settle, True)
        timer = self.loop.call_later(_POLL_SECONDS, settle, False)
        try:
            return await future
        finally:
            timer.cancel()
            remove(self.fd)


def _memory_limit(memory_bytes: int) -> str:
    """How errors name a worker's memory cap and the flag that sets it."""
    return f"{memory_bytes / (1 << 20):,.0f} MiB: --model-memory-bytes"


def _address_space_peak(pid: int | None) -> int:
    """The process's peak address space in bytes (what RLIMIT_AS caps); 0 where /proc cannot tell."""
    try:
        with open(f"/proc/{pid}/status", "rb") as status:
            for line in status:
                if line.startswith(b"VmPeak:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


def _rebuild(error: dict[str, Any], loading: bool, memory_bytes: int = 0) -> Exception:
    """The worker's error as the server's domain error (built from text: nothing is unpickled)."""
    name, message = str(error.get("type", "Error")), str(error.get("message", ""))
    domain = _DOMAIN_ERRORS.get(str(error.get("domain", "")))
    if domain is not None:
        exc = domain.__new__(domain)
        suggestions, metadata = error.get("suggestions", []), error.get("metadata", {})
        DeepscopeError.__init__(
            exc,
            message,
            reason=str(error.get("reason", "")) or None,
            field=str(error.get("field", "")) or None,
            suggestions=[str(s) for s in suggestions] if isinstance(suggestions, list) else (),
            metadata={str(k): str(v) for k, v in metadata.items()} if isinstance(metadata, dict) else None,
        )
        return exc
    if name == "MemoryError" and loading:
        return ModelOutOfMemory(
            f"loading the model needed more memory than its worker process may use (limit "
            f"{_memory_limit(memory_bytes)}); {message}".rstrip("; ")
        )
    if name == "MemoryError":
        return ModelOutOfMemory(
            f"the model ran out of memory in its worker process (limit "
            f"{_memory_limit(memory_bytes)}); send smaller batches or raise the limit"
        )
    if loading:
        return InvalidInput(f"not a loadable model: {name}: {message}")
    return InvalidInput(f"the model failed on this input: {name}: {message}")
