"""An analysis run: batches -> backend (one forward pass per batch for all metrics) -> metric
accumulators -> typed results, streamed as events and persisted.

``plan_run`` validates everything (models, metrics, parameters, layers, data) before any work;
``RunExecutor.execute`` does the work in a worker thread. A metric that raises, returns a
malformed result or exceeds its time limit fails only its own results; a client cancel or
deadline stops the run between batches and between metrics and marks it cancelled.
"""

from __future__ import annotations

import math
import multiprocessing
import multiprocessing.process
import resource
import signal
import threading
import time
import traceback
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

import numpy as np

from deepscope.v1 import introspection_pb2 as pb

from . import convert
from .backends import CaptureRequest, RunOutput
from .config import Limits
from .errors import DeepscopeError, InvalidInput, LimitExceeded
from .model_graph import Layer, ModelGraph
from .models import LoadedModel, ModelManager
from .plugin_api import Batch, Context, Metric, Needs
from .plugins import MetricEntry, Registry
from .store import Store, utc_now
from .testing import validate_params

DEFAULT_BATCH_SIZE = 64
#: Inputs of one batch from the data source: (model inputs by name, labels or None).
InputBatch = tuple[dict[str, np.ndarray], np.ndarray | None]


class RunCancelled(Exception):
    """Raised inside the run (and inside model handles) once the client cancelled or the deadline passed."""


@dataclass
class PlannedMetric:
    name: str
    entry: MetricEntry
    params: dict[str, Any]
    layer_names: list[str]

    @property
    def needs(self) -> Needs:
        return self.entry.cls.needs

    @property
    def needs_forward(self) -> bool:
        return bool(self.needs & (Needs.OUTPUTS | Needs.INPUTS | Needs.DATA))


@dataclass
class RunPlan:
    config: pb.AnalyzeConfig
    checkpoints: list[LoadedModel]
    metrics: list[PlannedMetric]
    batch_size: int
    metric_timeout: float
    dataset_batches: Callable[[], tuple[int, Iterator[InputBatch]]] | None = None

    @property
    def needs_data(self) -> bool:
        return any(m.needs_forward for m in self.metrics)

    def captures(self) -> list[CaptureRequest]:
        wanted: dict[CaptureRequest, None] = {}
        for metric in self.metrics:
            for name in metric.layer_names:
                if metric.needs & Needs.OUTPUTS:
                    wanted[CaptureRequest(name, "output")] = None
                if metric.needs & Needs.INPUTS:
                    wanted[CaptureRequest(name, "input")] = None
        return list(wanted)


def plan_run(config: pb.AnalyzeConfig, registry: Registry, models: ModelManager, limits: Limits) -> RunPlan:
    """Resolve and validate a config; raises NotFound / InvalidInput / LimitExceeded before any work."""
    if not config.models:
        raise InvalidInput("no model given: set AnalyzeConfig.models to one model id/name (or several checkpoints)")
    if not config.metrics:
        raise InvalidInput(f"no metric given; available: {', '.join(sorted(registry.metrics)) or 'none'}")
    batch_size = config.batch_size or DEFAULT_BATCH_SIZE
    if batch_size > limits.max_batch_size:
        raise LimitExceeded("max_batch_size", limits.max_batch_size, batch_size, "samples")
    checkpoints = [models.get(ref) for ref in config.models]
    first = checkpoints[0].graph
    for index, ckpt in enumerate(checkpoints[1:], start=1):
        if [layer.name for layer in ckpt.graph.layers] != [layer.name for layer in first.layers]:
            raise InvalidInput(f"checkpoint {index} ('{config.models[index]}') has a different layer table "
                               f"than checkpoint 0: a series must be checkpoints of one architecture")
    selected = first.select(list(config.layers)) if config.layers else None

    planned: list[PlannedMetric] = []
    seen: set[str] = set()
    for request in config.metrics:
        for name in registry.expand([request.name]):
            if name in seen:
                continue
            seen.add(name)
            entry = registry.metric(name)
            raw = {k: convert.value_from_proto(v) for k, v in request.params.items()}
            try:
                params = validate_params(entry.cls, raw)
            except ValueError as exc:
                raise InvalidInput(str(exc)) from None
            layers = [layer for layer in (selected or first.layers) if entry.cls.applies_to(layer)]
            if not layers:
                kinds = sorted(entry.cls.layer_kinds or ())
                have = sorted({layer.kind for layer in (selected or first.layers)})
                raise InvalidInput(
                    f"metric '{name}' applies to layer kinds {', '.join(kinds) or 'any'}, but the selected layers "
                    f"are of kinds {', '.join(have) or 'none'}; select other layers or drop the metric"
                )
            planned.append(PlannedMetric(name, entry, params, [layer.name for layer in layers]))

    timeout = config.metric_timeout_seconds
    if timeout and not (math.isfinite(timeout) and timeout > 0):
        raise InvalidInput(f"metric_timeout_seconds must be a positive number of seconds, got {timeout!r}")
    # A client may shorten the server's metric time limit, never lengthen it.
    plan = RunPlan(config, checkpoints, planned, batch_size,
                   min(timeout, limits.metric_timeout_seconds) if timeout else limits.metric_timeout_seconds)
    if plan.needs_data and config.dataset:
        dataset = registry.dataset(config.dataset)
        spec = first.inputs[0]
        if len(first.inputs) != 1:
            raise InvalidInput(f"dataset '{config.dataset}' fills one input; the model has {len(first.inputs)} "
                               "inputs: stream your own batches instead")
        split = config.split or "test"
        # Check the dataset fits the model now, not halfway through the run.
        dataset.batches(spec, batch_size, config.sample_limit or None, config.seed, split)

        def dataset_batches() -> tuple[int, Iterator[InputBatch]]:
            n, it = dataset.batches(spec, batch_size, config.sample_limit or None, config.seed, split)
            return n, (({spec.name: x}, y) for x, y in it)

        plan.dataset_batches = dataset_batches
    return plan


class GuardedMetric:
    """One metric instance for one checkpoint, hosted in a server thread (``--metric-isolation thread``).

    Plugin calls go through ``begin(op)`` / ``end()``: ``start``, ``update`` (a Batch), ``finish``.
    A failure is recorded (not raised) and the guard ignores later calls. A hung call is abandoned
    after the time limit, but its thread keeps running: use process isolation for untrusted code.
    """

    def __init__(self, planned: PlannedMetric, checkpoint: int, ctx: Context, timeout: float) -> None:
        self.planned = planned
        self.checkpoint = checkpoint
        self.ctx = ctx
        self.timeout = timeout
        self.error = ""
        self.seconds = 0.0
        self.instance: Metric | None = None
        self._pending: tuple[str, str, Any] | None = None

    def begin(self, what: str, op: str, payload: Any = None) -> None:
        """Hand the call over (threads: remembered until ``end``)."""
        self._pending = (what, op, payload)

    def end(self) -> Any:
        """The call's value, or None when it failed (``error`` says why)."""
        if self._pending is None:
            return None
        what, op, payload = self._pending
        self._pending = None
        if op == "start":
            def start() -> None:
                self.instance = self.planned.entry.cls(self.ctx)
                self.instance.start()
            return self.call(what, start)
        if op == "update":
            return self.call(what, lambda: self.instance.update(payload))
        return self.call(what, lambda: self.instance.finish())

    def close(self) -> None:
        """Release the guard's resources (nothing for threads)."""

    def call(self, what: str, fn: Callable[[], Any]) -> Any:
        """Run plugin code in a daemon thread with a time limit; record (not raise) its failure."""
        if self.error:
            return None
        box: dict[str, Any] = {}

        def target() -> None:
            try:
                box["value"] = fn()
            except BaseException as exc:  # noqa: BLE001 - plugin code may raise anything
                box["error"] = exc
                box["trace"] = traceback.format_exc(limit=6)

        start = time.perf_counter()
        worker = threading.Thread(target=target, name=f"metric-{self.planned.name}", daemon=True)
        worker.start()
        worker.join(self.timeout)
        self.seconds += time.perf_counter() - start
        if worker.is_alive():
            self.error = f"{what} exceeded the metric time limit of {self.timeout:g} s"
            return None
        if "error" in box:
            exc = box["error"]
            if isinstance(exc, RunCancelled):
                raise exc
            self.error = f"{what} raised {type(exc).__name__}: {exc}\n{box['trace']}"
            return None
        return box.get("value")


# ---------------------------------------------------------------- process isolation
#
# Each metric instance of a run lives in its own worker process, forked from a forkserver (a
# clean interpreter that imported the plugin modules once, so a worker starts in milliseconds
# and never inherits the server's gRPC threads). Parent and worker talk over one duplex pipe,
# strictly call/reply: ("start", class, params, layers, graph, ...) / ("update", Batch) /
# ("finish",) -> ("ok", value, warnings) | ("error", type, message, traceback, warnings) |
# ("malformed", message, warnings); while a call runs the worker may also send ("progress", f,
# message) and ("model", method, args) (a Needs.MODEL metric re-running the model: served by the
# parent, which owns the model). A worker that dies (abort, segfault, OOM kill), exceeds its
# time limit or its address-space limit (RLIMIT_AS -> MemoryError) fails only its own results.
# Updates are sent to every worker before the replies are collected, so metrics run in parallel.

_MP = multiprocessing.get_context("forkserver")


def configure_workers(modules: Sequence[str]) -> None:
    """Modules the forkserver imports once (plugin modules); start it in the background."""
    _MP.set_forkserver_preload(["deepscope_server.analysis", *dict.fromkeys(modules)])
    threading.Thread(target=_ensure_forkserver, name="forkserver-start", daemon=True).start()


def _ensure_forkserver() -> None:
    try:
        from multiprocessing import forkserver

        forkserver.ensure_running()
    except Exception:  # noqa: BLE001 - the first run will start it (and report any problem)
        pass


class _RemoteModel:
    """The worker-side model handle: asks the parent (which owns the model) to run it."""

    def __init__(self, conn: Connection, graph: ModelGraph) -> None:
        self._conn = conn
        self.graph = graph

    def _ask(self, method: str, *args: Any) -> RunOutput:
        self._conn.send(("model", method, args))
        reply = self._conn.recv()
        if reply[0] == "model_ok":
            return reply[1]
        if reply[1] == "RunCancelled":
            raise RunCancelled(reply[2])
        raise InvalidInput(f"model run failed: {reply[1]}: {reply[2]}")

    def run(self, inputs: Mapping[str, np.ndarray], capture: Sequence[CaptureRequest] = ()) -> RunOutput:
        return self._ask("run", dict(inputs), list(capture))

    def run_with_weights(self, inputs: Mapping[str, np.ndarray], weights: Mapping[str, Mapping[str, np.ndarray]],
                         capture: Sequence[CaptureRequest] = ()) -> RunOutput:
        return self._ask("run_with_weights", dict(inputs), {k: dict(v) for k, v in weights.items()}, list(capture))


def _worker_main(conn: Connection, memory_bytes: int) -> None:
    """A metric worker: one metric instance, driven by the parent's calls until "stop" or EOF."""
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
        try:
            value = None
            if op == "start":
                cls, params, layers, graph, seed, max_batch_size, has_model = message[1:]
                ctx = Context(params=params, layers=layers, graph=graph, seed=seed, max_batch_size=max_batch_size,
                              model=_RemoteModel(conn, graph) if has_model else None,
                              progress=lambda f, m: conn.send(("progress", float(f), str(m))))
                instance = cls(ctx)
                instance.start()
            elif op == "update":
                instance.update(message[1])
            else:
                value = instance.finish()
            warnings = list(ctx.warnings) if ctx else []
            try:
                conn.send(("ok", value, warnings))
            except Exception as exc:  # noqa: BLE001 - pickling fails before anything is written
                conn.send(("malformed", f"the value cannot be sent back: {type(exc).__name__}: {exc}", warnings))
        except BaseException as exc:  # noqa: BLE001 - plugin code may raise anything
            conn.send(("error", type(exc).__name__, str(exc), traceback.format_exc(limit=6),
                       list(ctx.warnings) if ctx else []))


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

    def __init__(self, planned: PlannedMetric, checkpoint: int, ctx: Context, timeout: float,
                 memory_bytes: int, check: Callable[[], None]) -> None:
        super().__init__(planned, checkpoint, ctx, timeout)
        self.memory_bytes = memory_bytes
        self._check_run = check  # raises RunCancelled / LimitExceeded when the run must stop
        self._conn: Connection | None = None
        self._process: multiprocessing.process.BaseProcess | None = None
        self._what = ""
        self._sent_at = 0.0
        self._waiting = False

    def begin(self, what: str, op: str, payload: Any = None) -> None:
        if self.error:
            return
        self._what = what
        self._sent_at = time.perf_counter()
        try:
            if op == "start":
                parent, child = _MP.Pipe(duplex=True)
                self._process = _MP.Process(target=_worker_main, args=(child, self.memory_bytes), daemon=True,
                                            name=f"metric-{self.planned.name}")
                self._process.start()
                child.close()
                self._conn = parent
                ctx = self.ctx
                message: tuple[Any, ...] = ("start", self.planned.entry.cls, ctx.params, ctx.layers, ctx.graph,
                                            ctx.seed, ctx.max_batch_size, ctx.model is not None)
            elif op == "update":
                message = ("update", payload)
            else:
                message = ("finish",)
            assert self._conn is not None
            self._conn.send(message)
            self._waiting = True
        except (BrokenPipeError, ConnectionError, EOFError, OSError) as exc:
            self._fail(f"{what} failed: " + (_death(self._process) if self._process else str(exc)))
        except Exception as exc:  # noqa: BLE001 - e.g. a class that cannot be pickled by reference
            self._fail(f"{what} could not be handed to a worker process: {type(exc).__name__}: {exc}")

    def end(self) -> Any:
        if not self._waiting or self.error:
            return None
        self._waiting = False
        conn, what = self._conn, self._what
        assert conn is not None and self._process is not None
        deadline = self._sent_at + self.timeout
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
                    self._serve_model(conn, reply[1], reply[2])
                elif kind == "ok":
                    self.ctx.warnings[:] = reply[2]
                    return reply[1]
                elif kind == "malformed":
                    self.ctx.warnings[:] = reply[2]
                    self._fail(f"malformed result: {what}: {reply[1]}")
                    return None
                else:
                    _, name, message, trace, warnings = reply
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
            self.seconds += time.perf_counter() - self._sent_at

    def _serve_model(self, conn: Connection, method: str, args: tuple[Any, ...]) -> None:
        try:
            assert self.ctx.model is not None
            out = getattr(self.ctx.model, method)(*args)
            conn.send(("model_ok", out))
        except RunCancelled as exc:
            conn.send(("model_error", "RunCancelled", str(exc)))
        except Exception as exc:  # noqa: BLE001 - reported to the metric, which decides
            conn.send(("model_error", type(exc).__name__, str(exc)))

    def _fail(self, message: str) -> None:
        if not self.error:
            self.error = message
        self.close(kill=True)

    def close(self, kill: bool = False) -> None:
        process, conn = self._process, self._conn
        self._process, self._conn, self._waiting = None, None, False
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


class _ModelHandle:
    """What a Needs.MODEL metric gets: runs the checkpoint, honouring cancellation."""

    def __init__(self, loaded: LoadedModel, cancelled: Callable[[], bool]) -> None:
        self._loaded = loaded
        self._cancelled = cancelled
        self.graph = loaded.graph

    def _check(self) -> None:
        if self._cancelled():
            raise RunCancelled("run cancelled")

    def run(self, inputs: Mapping[str, np.ndarray], capture: Sequence[CaptureRequest] = ()) -> RunOutput:
        self._check()
        return self._loaded.run(inputs, capture)

    def run_with_weights(self, inputs: Mapping[str, np.ndarray], weights: Mapping[str, Mapping[str, np.ndarray]],
                         capture: Sequence[CaptureRequest] = ()) -> RunOutput:
        self._check()
        return self._loaded.run_with_weights(inputs, weights, capture)


@dataclass
class RunExecutor:
    """Executes a plan; ``emit`` receives AnalyzeEvents (called from the worker thread)."""

    plan: RunPlan
    store: Store
    emit: Callable[[pb.AnalyzeEvent], None]
    cancel: threading.Event
    max_seconds: float
    client_batches: Iterator[InputBatch] | None = None
    isolation: str = "thread"  #: "process" hosts each metric instance in a worker process
    memory_bytes: int = 0  #: RLIMIT_AS of each worker process (0: none)
    info: pb.RunInfo = field(default_factory=pb.RunInfo)
    _seq: int = 0
    _guards: list[GuardedMetric] = field(default_factory=list)

    def create(self) -> pb.RunInfo:
        """Record the run as RUNNING and announce it."""
        self.info.config.CopyFrom(self.plan.config)
        self.info.model_ids.extend(c.stored.id for c in self.plan.checkpoints)
        self.info.model_names.extend(c.stored.name for c in self.plan.checkpoints)
        for m in self.plan.metrics:
            self.info.plugin_versions[m.entry.plugin] = m.entry.version
        self.store.create_run(self.info)
        self.emit(pb.AnalyzeEvent(started=self.info))
        return self.info

    def _cancelled(self) -> bool:
        return self.cancel.is_set() or (time.monotonic() > self._deadline)

    def _check(self) -> None:
        if self.cancel.is_set():
            raise RunCancelled("run cancelled")
        if time.monotonic() > self._deadline:
            raise LimitExceeded("max_run_seconds", self.max_seconds,
                                round(time.monotonic() - self._deadline + self.max_seconds, 1), "s")

    def _progress(self, stage: str, done: int, total: int, message: str = "") -> None:
        self.emit(pb.AnalyzeEvent(progress=pb.Progress(stage=stage, done=done, total=total, message=message)))

    def execute(self) -> pb.RunInfo:
        start = time.perf_counter()
        self._deadline = time.monotonic() + self.max_seconds
        try:
            guards = self._instantiate()
            n_samples = self._forward(guards) if self.plan.needs_data else 0
            self.info.num_samples = n_samples
            self._finish(guards, n_samples)
            self.info.status = pb.COMPLETED
        except RunCancelled as exc:
            if not self.cancel.is_set() and time.monotonic() > self._deadline:
                # A metric saw the deadline through ctx.cancelled() / the model handle.
                exc = LimitExceeded("max_run_seconds", self.max_seconds,
                                    round(time.monotonic() - self._deadline + self.max_seconds, 1), "s")
                self.info.status = pb.FAILED
                self.info.error = str(exc)
                raise exc from None
            self.info.status = pb.CANCELLED
            self.info.error = str(exc)
        except DeepscopeError as exc:
            self.info.status = pb.FAILED
            self.info.error = str(exc)
            raise
        except Exception as exc:
            self.info.status = pb.FAILED
            self.info.error = f"{type(exc).__name__}: {exc}"
            raise
        finally:
            for guard in self._guards:
                guard.close()
            self.info.seconds = time.perf_counter() - start
            self.info.finished_at = utc_now()
            self.store.update_run(self.info)
            self._progress("done", 1, 1, pb.RunStatus.Name(self.info.status).lower())
            self.emit(pb.AnalyzeEvent(finished=self.info))
        return self.info

    def _instantiate(self) -> list[GuardedMetric]:
        guards = []
        for index, ckpt in enumerate(self.plan.checkpoints):
            for planned in self.plan.metrics:
                layers: list[Layer] = [ckpt.graph.layer(name) for name in planned.layer_names]
                ctx = Context(
                    params=dict(planned.params), layers=layers, graph=ckpt.graph,
                    model=_ModelHandle(ckpt, self._cancelled) if planned.needs & Needs.MODEL else None,
                    seed=int(self.plan.config.seed), max_batch_size=self.plan.batch_size,
                    cancelled=self._cancelled,
                    progress=lambda f, msg, _n=planned.name: self._progress("metric", int(f * 100), 100, f"{_n}: {msg}"),
                )
                if self.isolation == "process":
                    guard: GuardedMetric = ProcessGuard(planned, index, ctx, self.plan.metric_timeout,
                                                        self.memory_bytes, self._check)
                else:
                    guard = GuardedMetric(planned, index, ctx, self.plan.metric_timeout)
                guards.append(guard)
                self._guards.append(guard)  # closed even if a later start() is cut off
                guard.begin("start()", "start")
        for guard in guards:
            guard.end()
        return guards

    def _batches(self) -> tuple[int, Iterator[InputBatch]]:
        if self.plan.dataset_batches is not None:
            return self.plan.dataset_batches()
        if self.client_batches is None:
            raise InvalidInput("the metrics need data: name a dataset or stream DataBatch messages")
        return int(self.plan.config.expected_samples), self.client_batches

    def _forward(self, guards: list[GuardedMetric]) -> int:
        total, batches = self._batches()
        limit = int(self.plan.config.sample_limit) or None
        captures = self.plan.captures()
        data_guards = [g for g in guards if g.planned.needs_forward]
        done = 0
        self._progress("forward", 0, total)
        for index, (inputs, labels) in enumerate(batches):
            self._check()
            size = len(next(iter(inputs.values())))
            if size > self.plan.batch_size and self.plan.dataset_batches is None:
                raise LimitExceeded("batch_size", self.plan.batch_size, size, "samples")
            if limit is not None and done + size > limit:
                keep = limit - done
                inputs = {k: v[:keep] for k, v in inputs.items()}
                labels = None if labels is None else labels[:keep]
                size = keep
            if size <= 0:
                break
            for ckpt_index, ckpt in enumerate(self.plan.checkpoints):
                out = ckpt.run(inputs, captures)
                busy = []
                for guard in data_guards:
                    if guard.checkpoint != ckpt_index or guard.error:
                        continue
                    self._check()
                    guard.begin(f"update(batch {index})", "update", self._batch_for(guard, index, out, inputs, labels))
                    busy.append(guard)
                for guard in busy:  # process workers compute in parallel; threads one at a time
                    guard.end()
            done += size
            self._progress("forward", done, total)
            if limit is not None and done >= limit:
                break
        if done == 0:
            raise InvalidInput("the data source produced no samples")
        return done

    @staticmethod
    def _batch_for(guard: GuardedMetric, index: int, out: RunOutput, inputs: dict[str, np.ndarray],
                   labels: np.ndarray | None) -> Batch:
        needs = guard.planned.needs
        names = guard.planned.layer_names
        batch = Batch(index=index)
        if needs & Needs.OUTPUTS:
            batch.outputs = {n: out.captured[CaptureRequest(n, "output")] for n in names}
        if needs & Needs.INPUTS:
            batch.inputs = {n: out.captured[CaptureRequest(n, "input")] for n in names}
        if needs & Needs.DATA:
            batch.data, batch.labels = dict(inputs), labels
        return batch

    def _finish(self, guards: list[GuardedMetric], n_samples: int) -> None:
        if self.isolation == "process":
            for guard in guards:
                guard.begin("finish()", "finish")
        for done, guard in enumerate(guards):
            self._check()
            self._progress("finishing", done, len(guards), guard.planned.name)
            if self.isolation != "process":
                guard.begin("finish()", "finish")
            values = guard.end()
            guard.close()
            results = self._to_results(guard, values, n_samples)
            for result in results:
                self._seq += 1
                self.info.num_results += 1
                self.info.num_failed += result.status != "ok"
                self.store.add_result(self.info.id, self._seq, result)
                self.emit(pb.AnalyzeEvent(result=result))

    def _to_results(self, guard: GuardedMetric, values: Any, n_samples: int) -> list[pb.MetricResult]:
        def base(layer: str) -> pb.MetricResult:
            result = pb.MetricResult(metric=guard.planned.name, layer=layer, checkpoint=guard.checkpoint,
                                     seconds=guard.seconds, num_samples=n_samples, warnings=guard.ctx.warnings)
            for key, value in guard.planned.params.items():
                result.params[key].CopyFrom(convert.value_proto(value))
            return result

        if not guard.error:
            try:
                if not isinstance(values, Mapping):
                    raise convert.MalformedResult(
                        f"finish() must return {{layer: {{key: value}}}}, got {type(values).__name__}")
                results = []
                for layer, items in values.items():
                    result = base(str(layer))
                    result.status = "ok"
                    result.items.extend(convert.result_items(items))
                    results.append(result)
                return results
            except convert.MalformedResult as exc:
                guard.error = f"malformed result: {exc}"
        failed = []
        for layer in guard.planned.layer_names:
            result = base(layer)
            result.status, result.error = "failed", guard.error
            failed.append(result)
        return failed
