"""Where plugin code runs: in a worker process per metric instance (default) or in a server thread.

Both guards (``Hosting.guard`` picks one) expose ``begin(call)`` / ``end()`` for the calls
``Start``, ``Update`` (a Batch) and ``Finish``; a failure (exception, malformed value, time limit,
crash, memory limit) is recorded in ``error`` and fails only that metric's results. ``seconds`` is
the time spent in the metric's own code (measured in the worker, so parallel metrics do not
inflate each other's figures).
"""

from __future__ import annotations

import ctypes
import multiprocessing
import multiprocessing.process
import os
import resource
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from multiprocessing import forkserver
from multiprocessing.connection import Connection
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from . import heap, lifeline
from .backends import CaptureRequest, Inputs, LayerWeights, RunOutput
from .errors import InvalidInput
from .model_graph import ModelGraph
from .plugin_api import Batch, Context, Metric, MetricTimeout, RunCancelled

__all__ = [
    "Call",
    "Finish",
    "GuardedMetric",
    "Hosting",
    "ProcessGuard",
    "RunCancelled",
    "Start",
    "Update",
    "configure_workers",
]

if TYPE_CHECKING:
    from .analysis import PlannedMetric


@dataclass(frozen=True)
class Start:
    """Instantiate the metric and call its ``start()``."""

    what: ClassVar[str] = "start()"


@dataclass(frozen=True)
class Update:
    """Feed one batch to ``update()``."""

    batch: Batch

    @property
    def what(self) -> str:
        return f"update(batch {self.batch.index})"


@dataclass(frozen=True)
class Finish:
    """Call ``finish()`` and return its values."""

    what: ClassVar[str] = "finish()"


#: The calls a guard hands to its metric.
Call = Start | Update | Finish


class GuardedMetric:
    """One metric instance for one checkpoint, hosted in a server thread (``--metric-isolation thread``).

    Plugin calls go through ``begin(call)`` / ``end()`` with a ``Start``, ``Update`` or ``Finish``.
    ``parallel`` says whether calls begun on several guards run at once (worker processes) or one at
    a time in ``end()`` (threads), so a caller begins every guard's call before ending any.
    ``Hosting.guard`` makes the kind ``--metric-isolation`` asks for.
    A failure is recorded (not raised) and the guard ignores later calls. A call past the time
    limit is failed and stopped cooperatively: ``ctx.check()`` raises MetricTimeout from then on,
    and MetricTimeout is also raised in its thread at the next Python instruction. A call stuck
    inside one long C function runs on until it returns: use process isolation for untrusted code.
    """

    def __init__(self, planned: PlannedMetric, checkpoint: int, ctx: Context, timeout: float) -> None:
        self.planned = planned
        self.checkpoint = checkpoint
        self.ctx = ctx
        self.timeout = timeout
        self.error = ""
        self.seconds = 0.0
        self.instance: Metric | None = None
        self._pending: Call | None = None

    parallel: ClassVar[bool] = False

    def begin(self, call: Call) -> None:
        """Hand the call over (threads: remembered until ``end``)."""
        self._pending = call

    def end(self) -> Any:
        """The call's value, or None when it failed (``error`` says why)."""
        call, self._pending = self._pending, None
        if call is None:
            return None
        if isinstance(call, Start):

            def start() -> None:
                self.instance = self.planned.entry.cls(self.ctx)
                self.instance.start()

            return self.call(call.what, start)
        if isinstance(call, Update):
            return self.call(call.what, lambda: self.instance.update(call.batch))
        return self.call(call.what, lambda: self.instance.finish())

    def close(self) -> None:
        """Release the guard's resources (nothing for threads)."""

    def call(self, what: str, fn: Callable[[], Any]) -> Any:
        """Run plugin code in a daemon thread with a time limit; record (not raise) its failure."""
        if self.error:
            return None
        start = time.perf_counter()
        self.ctx.deadline = time.monotonic() + self.timeout
        worker = _MetricThread(fn, f"metric-{self.planned.name}")
        worker.start()
        worker.join(self.timeout)
        if worker.is_alive():  # a metric calling ctx.check() raises on its own about now: let it
            worker.join(_COOPERATIVE_GRACE)  # unwind (its except/finally blocks) undisturbed first
        if worker.is_alive():
            worker.stop()
            worker.join(1.0)  # a cooperating metric is gone by now; let it unwind before the next call
        self.seconds += time.perf_counter() - start
        exc = worker.error
        if worker.is_alive() or isinstance(exc, MetricTimeout):
            self.error = f"{what} exceeded the metric time limit of {self.timeout:g} s"
            return None
        if exc is not None:
            if isinstance(exc, RunCancelled):
                raise exc
            self.error = f"{what} raised {type(exc).__name__}: {exc}\n{worker.trace}"
            return None
        return worker.value


#: Seconds past its time limit a metric thread gets to stop by itself (``ctx.check()``) before
#: MetricTimeout is raised in it: raised at once, it could land in the metric's own cleanup.
_COOPERATIVE_GRACE = 0.5


class _MetricThread(threading.Thread):
    """One plugin call in a daemon thread; ``stop()`` raises MetricTimeout inside it if it still runs."""

    def __init__(self, fn: Callable[[], Any], name: str) -> None:
        super().__init__(name=name, daemon=True)
        self._fn = fn
        self._lock = threading.Lock()  # stop() never targets a thread id that may already be reused
        self._running = True
        self.value: Any = None
        self.error: BaseException | None = None
        self.trace = ""

    def run(self) -> None:
        try:
            try:
                self.value = self._fn()
            except BaseException as exc:  # plugin code may raise anything
                self.error, self.trace = exc, traceback.format_exc(limit=6)
            finally:
                with self._lock:
                    self._running = False
        except MetricTimeout:  # stop() landed while the call was already unwinding
            self.error = self.error or MetricTimeout()

    def stop(self) -> None:
        """Raise MetricTimeout in the thread at its next Python instruction (a C call finishes first)."""
        with self._lock:
            if self._running and self.ident is not None:
                _set_async_exc(ctypes.c_ulong(self.ident), ctypes.py_object(MetricTimeout))


_set_async_exc = ctypes.pythonapi.PyThreadState_SetAsyncExc
_set_async_exc.argtypes = (ctypes.c_ulong, ctypes.py_object)
_set_async_exc.restype = ctypes.c_int


# ---------------------------------------------------------------- process isolation
#
# Each metric instance of a run lives in its own worker process, forked from a forkserver (a
# clean interpreter that imported the plugin modules once, so a worker starts in milliseconds
# and never inherits the server's gRPC threads). Parent and worker talk over one duplex pipe,
# strictly call/reply: ("start", class, params, layers, graph, ...) / ("update", Batch) /
# ("finish",) -> ("ok", value, warnings) | ("error", type, message, traceback, warnings) |
# ("malformed", message, warnings); while a call runs the worker may also send ("progress", f,
# message), ("model", method, args) (a Needs.MODEL metric re-running the model: served by the
# parent, which owns the model) and ("weights", layer). The graph a worker gets carries the
# weights of the metric's own layers only (ModelGraph.restricted); another layer's are sent on
# the metric's first read of them (a BatchNorm to fold, the next layer). A worker that dies
# (abort, segfault, OOM kill), exceeds its time limit or its address-space limit (RLIMIT_AS ->
# MemoryError) fails only its own results.
# Updates are sent to every worker before the replies are collected, so metrics run in parallel.

_MP = multiprocessing.get_context("forkserver")


def main_module() -> list[str]:
    """The importable name of this process's ``__main__`` (else nothing), for the forkserver to preload.

    multiprocessing re-runs ``__main__`` in every child it starts (as ``__mp_main__``): a ``-m pkg.mod``
    module by name (unless it is a ``__main__.py``), a script (``deepscope-server``, Ray's
    ``default_worker.py``) by path. Re-running costs what its imports cost unless the forkserver,
    which every child is forked from, has imported them already.
    """
    main = sys.modules.get("__main__")
    spec_name = getattr(getattr(main, "__spec__", None), "name", None)
    if spec_name is not None:
        return [] if spec_name == "__main__" or spec_name.endswith(".__main__") else [spec_name]
    path = getattr(main, "__file__", None)
    if path is None:
        return []
    path = Path(path).resolve().with_suffix("")
    names = []
    for root in sys.path:
        try:
            parts = path.relative_to(Path(root or ".").resolve()).parts
        except (OSError, ValueError):
            continue
        if parts and all(part.isidentifier() for part in parts):
            names.append(".".join(parts))
    # The longest name is the package path (ray._private.workers.default_worker): the forkserver's
    # sys.path lacks the script's own directory, which Python put first in this process's.
    return [max(names, key=len)] if names else []


def configure_workers(modules: Sequence[str]) -> None:
    """Modules the forkserver imports once (plugin modules, and what ``__main__`` imports); start it."""
    _MP.set_forkserver_preload(["deepscope_server.isolation", *dict.fromkeys([*modules, *main_module()])])
    threading.Thread(target=_ensure_forkserver, name="forkserver-start", daemon=True).start()


def _ensure_forkserver() -> None:
    try:
        forkserver.ensure_running()
    except Exception:  # the first run will start it (and report any problem)
        pass


def _ask(conn: Connection, request: tuple[Any, ...]) -> Any:
    """A request to the parent from inside a call ("model" or "weights"): the answer, or its error raised."""
    conn.send(request)
    reply = conn.recv()
    if reply[0] == "answer":
        return reply[1]
    name, message = reply[1], reply[2]
    if name == "RunCancelled":
        raise RunCancelled(message)
    if request[0] == "weights":
        raise LookupError(f"the weights of layer '{request[1]}' could not be fetched: {name}: {message}")
    raise InvalidInput(f"model run failed: {name}: {message}")


class _RemoteModel:
    """The worker-side model handle: asks the parent (which owns the model) to run it."""

    def __init__(self, conn: Connection, graph: ModelGraph) -> None:
        self._conn = conn
        self.graph = graph

    def _ask(self, method: str, *args: Any) -> RunOutput:
        return _ask(self._conn, ("model", method, args))

    def run(self, inputs: Inputs, capture: Sequence[CaptureRequest] = ()) -> RunOutput:
        return self._ask("run", dict(inputs), list(capture))

    def run_with_weights(
        self, inputs: Inputs, weights: LayerWeights, capture: Sequence[CaptureRequest] = ()
    ) -> RunOutput:
        return self._ask("run_with_weights", dict(inputs), {k: dict(v) for k, v in weights.items()}, list(capture))


def _worker_main(conn: Connection, lifeline_end: Connection, memory_bytes: int) -> None:
    """A metric worker: one metric instance, driven by the parent's calls until "stop" or EOF."""
    lifeline.watch(lifeline_end)  # exit with the server, even in the middle of a call
    _release_forkserver()
    heap.keep_freed_memory()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if memory_bytes > 0:
        resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))
    instance: Metric | None = None
    ctx: Context | None = None
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            return
        op = message[0]
        if op == "stop":
            return
        started = time.perf_counter()
        try:
            value = None
            if op == "start":
                cls, params, layers, graph, seed, max_batch_size, has_model = message[1:]
                graph.bind_withheld(lambda layer: _ask(conn, ("weights", layer)))
                ctx = Context(
                    params=params,
                    layers=layers,
                    graph=graph,
                    seed=seed,
                    max_batch_size=max_batch_size,
                    model=_RemoteModel(conn, graph) if has_model else None,
                    progress=lambda f, m: conn.send(("progress", float(f), str(m))),
                )
                instance = cls(ctx)
                instance.start()
            elif op == "update":
                instance.update(message[1])
            else:
                value = instance.finish()
            warnings = list(ctx.warnings) if ctx else []
            seconds = time.perf_counter() - started
            try:
                conn.send(("ok", value, warnings, seconds))
            except Exception as exc:  # pickling fails before anything is written
                conn.send(
                    ("malformed", f"the value cannot be sent back: {type(exc).__name__}: {exc}", warnings, seconds)
                )
        except BaseException as exc:  # plugin code may raise anything
            conn.send(
                (
                    "error",
                    type(exc).__name__,
                    str(exc),
                    traceback.format_exc(limit=6),
                    list(ctx.warnings) if ctx else [],
                    time.perf_counter() - started,
                )
            )


def _release_forkserver() -> None:
    """Close the forkserver's "alive" pipe, which every forked worker inherits.

    The forkserver exits when the last holder of that pipe's write end is gone. The server holds
    it, but so does each worker (multiprocessing hands it down so a child could use the same
    forkserver); a worker busy when the server is killed would keep the forkserver alive. Workers
    never start processes through it, so they let go of it.
    """
    server = forkserver._forkserver
    fd = getattr(server, "_forkserver_alive_fd", None)
    if fd is not None:
        server._forkserver_alive_fd = None
        try:
            os.close(fd)
        except OSError:
            pass


def _death(process: multiprocessing.process.BaseProcess) -> str:
    process.join(1.0)
    code = process.exitcode
    if code is None:
        return "its worker process stopped answering"
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = str(-code)
        hint = " (SIGKILL: possibly the kernel's out-of-memory killer)" if -code == signal.SIGKILL else ""
        return f"its worker process died from signal {name}{hint}"
    return f"its worker process exited with code {code}"


class ProcessGuard(GuardedMetric):
    """One metric instance in its own worker process (``--metric-isolation process``, the default)."""

    def __init__(
        self,
        planned: PlannedMetric,
        checkpoint: int,
        ctx: Context,
        timeout: float,
        memory_bytes: int,
        check: Callable[[], None],
    ) -> None:
        super().__init__(planned, checkpoint, ctx, timeout)
        self.memory_bytes = memory_bytes
        self._check_run = check  # raises RunCancelled / LimitExceeded when the run must stop
        self._conn: Connection | None = None
        self._lifeline: Connection | None = None  #: write end: closing it (or our death) ends the worker
        self._process: multiprocessing.process.BaseProcess | None = None
        self._what = ""
        self._sent_at = 0.0
        self._waiting = False

    parallel: ClassVar[bool] = True

    def begin(self, call: Call) -> None:
        if self.error:
            return
        what = self._what = call.what
        self._sent_at = time.perf_counter()
        try:
            if isinstance(call, Start):
                parent, child = _MP.Pipe(duplex=True)
                # The worker watches the read end; only this process holds the write end.
                lifeline_end, self._lifeline = _MP.Pipe(duplex=False)
                self._process = _MP.Process(
                    target=_worker_main,
                    args=(child, lifeline_end, self.memory_bytes),
                    daemon=True,
                    name=f"metric-{self.planned.name}",
                )
                self._process.start()
                child.close()
                lifeline_end.close()
                self._conn = parent
                ctx = self.ctx
                graph = ctx.graph.restricted([layer.name for layer in ctx.layers])  # other weights on demand
                message: tuple[Any, ...] = (
                    "start",
                    self.planned.entry.cls,
                    ctx.params,
                    [graph.layer(layer.name) for layer in ctx.layers],
                    graph,
                    ctx.seed,
                    ctx.max_batch_size,
                    ctx.model is not None,
                )
            elif isinstance(call, Update):
                message = ("update", call.batch)
            else:
                message = ("finish",)
            assert self._conn is not None
            self._conn.send(message)
            self._waiting = True
        except (BrokenPipeError, ConnectionError, EOFError, OSError) as exc:
            self._fail(f"{what} failed: " + (_death(self._process) if self._process else str(exc)))
        except Exception as exc:  # e.g. a class that cannot be pickled by reference
            self._fail(f"{what} could not be handed to a worker process: {type(exc).__name__}: {exc}")

    def end(self) -> Any:
        if not self._waiting or self.error:
            return None
        self._waiting = False
        conn, what = self._conn, self._what
        assert conn is not None and self._process is not None
        deadline = self._sent_at + self.timeout
        spent: float | None = None
        try:
            while True:
                try:
                    self._check_run()
                except BaseException:
                    self._fail(f"{what} stopped: the run was cancelled")
                    raise
                remaining = deadline - time.perf_counter()
                # Poll before judging the deadline: with parallel calls a reply may be waiting.
                if not conn.poll(max(0.0, min(0.1, remaining))):
                    if remaining <= 0:
                        self._fail(f"{what} exceeded the metric time limit of {self.timeout:g} s (worker killed)")
                        return None
                    if not self._process.is_alive() and not conn.poll(0):
                        self._fail(f"{what} failed: {_death(self._process)}")
                        return None
                    continue
                try:
                    reply = conn.recv()
                except (EOFError, OSError):
                    self._fail(f"{what} failed: {_death(self._process)}")
                    return None
                kind = reply[0]
                if kind == "progress":
                    self.ctx.progress(reply[1], reply[2])
                elif kind == "model":
                    self._answer(conn, lambda method, args: getattr(self.ctx.model, method)(*args), *reply[1:])
                elif kind == "weights":
                    self._answer(conn, lambda layer: dict(self.ctx.graph.layer(layer).weights), reply[1])
                elif kind == "ok":
                    self.ctx.warnings[:] = reply[2]
                    spent = reply[3]
                    return reply[1]
                elif kind == "malformed":
                    self.ctx.warnings[:] = reply[2]
                    spent = reply[3]
                    self._fail(f"malformed result: {what}: {reply[1]}")
                    return None
                else:
                    _, name, message, trace, warnings, spent = reply
                    self.ctx.warnings[:] = warnings
                    if name == "RunCancelled":
                        self._check_run()
                        raise RunCancelled(message)
                    hint = ""
                    if name == "MemoryError" and self.memory_bytes > 0:
                        hint = f" (the metric's memory limit is {self.memory_bytes / (1 << 20):,.0f} MiB)"
                    self.error = f"{what} raised {name}: {message}{hint}\n{trace}"
                    self.close()
                    return None
        finally:
            # The worker's own timing; without a reply (crash, time limit), the wall time it was given.
            self.seconds += spent if spent is not None else time.perf_counter() - self._sent_at

    @staticmethod
    def _answer(conn: Connection, serve: Callable[..., Any], *args: Any) -> None:
        """Answer a worker's request (a model run, a layer's weights) with its value or its error."""
        try:
            conn.send(("answer", serve(*args)))
        except Exception as exc:  # RunCancelled too: reported to the metric, which decides
            conn.send(("error", type(exc).__name__, str(exc)))

    def _fail(self, message: str) -> None:
        if not self.error:
            self.error = message
        self.close(kill=True)

    def close(self, kill: bool = False) -> None:
        process, conn, lifeline_end = self._process, self._conn, self._lifeline
        self._process, self._conn, self._lifeline, self._waiting = None, None, None, False
        if conn is not None:
            if not kill:
                try:
                    conn.send(("stop",))
                except (OSError, ValueError):
                    pass
            conn.close()
        if process is not None:
            if not kill:
                process.join(1.0)
            if process.is_alive():
                process.kill()
                process.join(2.0)
            process.close() if process.exitcode is not None else None
        if lifeline_end is not None:
            lifeline_end.close()


@dataclass(frozen=True)
class Hosting:
    """How a run hosts its metrics, the same for all its guards: ``--metric-isolation``, the metric time
    limit, a worker process's memory cap (0: none) and the run's stop check (raises RunCancelled or
    LimitExceeded)."""

    isolation: str
    timeout: float
    memory_bytes: int = 0
    check: Callable[[], None] = lambda: None

    def guard(self, planned: PlannedMetric, checkpoint: int, ctx: Context) -> GuardedMetric:
        """A worker process (``process``) or a server thread for one metric instance."""
        if self.isolation == "process":
            return ProcessGuard(planned, checkpoint, ctx, self.timeout, self.memory_bytes, self.check)
        return GuardedMetric(planned, checkpoint, ctx, self.timeout)
