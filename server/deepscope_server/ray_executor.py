"""``--executor ray``: a run's checkpoints become Ray tasks on a cluster, with the local executor's results.

The head server still plans the run, stores every result and streams every event (``RunExecutor``);
only ``_run`` (start the metrics, feed them every batch, finish them) moves into Ray tasks. Each task
is a ``_TaskRun``, the same ``RunExecutor._run`` over one checkpoint, and loads its model with
``models.load_backend`` (preflight checks, sandboxed worker process), so model safety, metric
isolation and result typing are the local path's code, not a copy.

What travels: each model file's bytes are ``ray.put`` once per run and the run's batches once per
run; tasks get references (docs/scale.md). Tasks are streaming generators: they yield progress
events, results and metric states as they happen, and the head relays them tagged with the task's
checkpoint and node. A task that dies (node lost, worker killed, out of memory) fails the results it
had not delivered, with Ray's reason; tasks are not retried (a retried generator would repeat its
events). Cancellation and ``--max-run-seconds`` cancel every task with ``force=True``: the worker
process is killed, and the model and metric processes it started end with it (their lifelines).

Metrics that can ``merge`` (plugin_api) are split over data shards when the cluster has CPUs to
spare: shard tasks feed them a slice of the batches and return their state; a merge task merges
the states in shard order and finishes them.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import queue
import tempfile
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from deepscope.v1 import introspection_pb2 as pb

from .analysis import InputBatch, PlannedMetric, RunExecutor, RunPlan
from .backends import Backend
from .config import Limits, Settings
from .errors import InvalidInput, Unavailable
from .isolation import GuardedMetric, RunCancelled, configure_workers
from .models import (
    LoadedModel,
    load_backend,  # the server's own loader: preflight checks, then the sandbox
)
from .plugin_api import Context, Metric
from .store import StoredModel

log = logging.getLogger(__name__)

#: The last item a task's run thread hands to its generator.
_DONE = ("done",)


@dataclass(frozen=True)
class RayOptions:
    """What the head needs to place tasks and what each task needs to load its model like the server."""

    ray_address: str = "auto"
    ray_gpus_per_task: float = 0.0
    ray_data_shards: int = 0  #: 0: from the cluster's CPUs
    limits: Limits = field(default_factory=Limits)
    device: str = "auto"
    model_isolation: str = "process"
    metric_isolation: str = "process"
    trust_model_dir: bool = False

    @classmethod
    def from_settings(cls, settings: Settings) -> RayOptions:
        """Each option is the server setting of the same name."""
        return cls(**{f.name: getattr(settings, f.name) for f in dataclasses.fields(cls)})


def connect(settings: Settings) -> RayOptions:
    """Join the cluster at start, so a wrong address or a missing Ray fails the server, not the first run."""
    options = RayOptions.from_settings(settings)
    try:
        import ray
    except ImportError:
        raise SystemExit(
            "--executor ray needs Ray, which is not installed: pip install 'deepscope-server[ray]'"
        ) from None
    try:
        ray.init(
            address=options.ray_address,
            namespace="deepscope",
            ignore_reinit_error=True,
            log_to_driver=False,
            logging_level=logging.WARNING,
        )
    except Exception as exc:  # ConnectionError, ValueError, RuntimeError: all mean "no cluster"
        raise SystemExit(
            f"--executor ray: cannot join the Ray cluster at '{options.ray_address}': "
            f"{type(exc).__name__}: {exc} (start one with `ray start --head`)"
        ) from None
    log.info("joined the Ray cluster at %s: %s", options.ray_address, ray.cluster_resources())
    return options


def on_ray(local: RunExecutor, options: RayOptions) -> RayRunExecutor:
    """The same run (plan, store, events, cancellation, limits) with its work on the cluster."""
    return RayRunExecutor(**{f.name: getattr(local, f.name) for f in dataclasses.fields(RunExecutor)}, options=options)


# ---------------------------------------------------------------- inside a Ray task


@dataclass
class TaskSpec:
    """One task's share of a run (picklable: the plan travels without its loaded models)."""

    plan: RunPlan
    checkpoint: int
    stored: StoredModel
    trusted: bool
    options: RayOptions
    max_seconds: float
    n_samples: int
    shard: bool = False  #: feed the metrics and return their states instead of finishing them


@dataclass
class _TaskRun(RunExecutor):
    """``RunExecutor._run`` for one checkpoint inside a task: results and states go to ``emit``, not a store."""

    spec: TaskSpec | None = None
    batches: list[InputBatch] = field(default_factory=list)

    def _batches(self) -> tuple[int, Iterator[InputBatch]]:
        assert self.spec is not None
        return self.spec.n_samples, iter(self.batches)

    def _progress(self, stage: str, done: int, total: int, message: str = "") -> None:
        progress = pb.Progress(stage=stage, done=done, total=total, message=message)
        self.emit(("event", pb.AnalyzeResponse(progress=progress).SerializeToString()))

    def _record(self, result: pb.MetricResult) -> None:
        assert self.spec is not None
        result.checkpoint = self.spec.checkpoint
        self.emit(("event", pb.AnalyzeResponse(result=result).SerializeToString()))

    def _finish(self, guards: list[GuardedMetric], n_samples: int) -> None:
        if not (self.spec and self.spec.shard):
            return super()._finish(guards, n_samples)
        for guard in guards:  # thread guards: the instance is here to hand back
            state = None
            if not guard.error and guard.instance is not None:
                state = {k: v for k, v in vars(guard.instance).items() if k not in ("ctx", "params")}
            self.emit(("state", guard.planned.name, state, guard.error, list(guard.ctx.warnings), guard.seconds))

    def work(self) -> None:
        """The run thread: everything it produces, then ``_DONE``; a run that stops says why."""
        self._deadline = time.monotonic() + self.max_seconds
        try:
            self._run()
        except BaseException as exc:  # the head fails this task's results with the reason
            self.emit(("error", f"{type(exc).__name__}: {exc}" if not isinstance(exc, RunCancelled) else str(exc)))
        finally:
            for guard in self._guards:
                guard.close()
            self.emit(_DONE)


def _node() -> str:
    import ray

    ctx = ray.get_runtime_context()
    return f"{ray.util.get_node_ip_address()} ({ctx.get_node_id()[:8]})"


_SANDBOX_MODULES = (
    "deepscope_server.sandbox",
    "deepscope_server.models",
    "deepscope_server.backends.torch_backend",
    "deepscope_server.backends.onnx_backend",
)


@functools.cache
def _prepare_worker(metric_modules: tuple[str, ...], model_isolation: str) -> None:
    """Once per Ray worker process, as the server does at start: the forkserver that starts model and
    metric processes imports their modules once (Ray reuses a worker for many tasks).

    It also imports the Ray worker's own ``__main__`` script (Ray's ``default_worker.py``) as a module.
    multiprocessing re-runs a script ``__main__`` in every child it starts; that script imports
    Ray, which took 0.6-0.9 s of CPU per metric process (profiled: docs/scale.md). With its imports
    already loaded in the forkserver, the re-run costs milliseconds.
    """
    configure_workers([*metric_modules, *(_SANDBOX_MODULES if model_isolation == "process" else ())])


#: Backends this Ray worker loaded, most recent last: a worker that runs the next run's task for the
#: same checkpoint (same bytes, same id) reuses it instead of loading again, as the server's cache does.
#: The files stay while the backend is cached: a sandboxed backend reloads them after a killed call.
_BACKENDS: OrderedDict[tuple[str, bool, str, str], tuple[Backend, tempfile.TemporaryDirectory]] = OrderedDict()
_BACKEND_CACHE = 8  #: as many as the server keeps loaded (ModelManager.cache_size)


def _backend(spec: TaskSpec, model_files: dict[str, bytes]) -> Backend:
    """The checkpoint loaded by the server's own loader (preflight checks, then the sandbox), cached."""
    opts = spec.options
    key = (spec.stored.id, spec.trusted, opts.device, opts.model_isolation)
    if key in _BACKENDS:
        _BACKENDS.move_to_end(key)
        return _BACKENDS[key][0]
    files = tempfile.TemporaryDirectory(prefix="deepscope-ray-")
    try:
        for name, data in model_files.items():  # the model file and its ONNX external-data side files
            (Path(files.name) / name).write_bytes(data)
        backend = load_backend(
            Path(files.name) / spec.stored.path.name, opts.limits, opts.device, spec.trusted, opts.model_isolation
        )
    except BaseException:
        files.cleanup()
        raise
    _BACKENDS[key] = backend, files
    while len(_BACKENDS) > _BACKEND_CACHE:
        old, old_files = _BACKENDS.popitem(last=False)[1]
        old.close()
        old_files.cleanup()
    return backend


def checkpoint_task(
    spec: TaskSpec, model_files: dict[str, bytes], batches: list[InputBatch]
) -> Iterator[tuple[Any, ...]]:
    """A Ray task: load one checkpoint as the server would, run the plan's metrics on it, yield as it goes."""
    yield ("node", _node())
    _prepare_worker(tuple(sorted({m.entry.cls.__module__ for m in spec.plan.metrics})), spec.options.model_isolation)
    events: queue.Queue[tuple[Any, ...]] = queue.Queue()
    cancel = threading.Event()
    opts = spec.options
    loaded = LoadedModel(spec.stored, "ray", _backend(spec, model_files))
    run = _TaskRun(
        dataclasses.replace(spec.plan, checkpoints=[loaded]),
        None,
        events.put,
        cancel,
        spec.max_seconds,  # type: ignore[arg-type] - no store here
        isolation="thread" if spec.shard else opts.metric_isolation,
        memory_bytes=opts.limits.metric_memory_bytes,
        spec=spec,
        batches=batches,
    )
    thread = threading.Thread(target=run.work, name="deepscope-task", daemon=True)
    thread.start()
    try:
        while (item := events.get()) is not _DONE:
            yield item
        thread.join()
    finally:
        cancel.set()


def merge_task(
    planned: PlannedMetric, spec: TaskSpec, graph: Any, states: list[tuple[dict[str, Any], list[str], float]]
) -> Iterator[tuple[Any, ...]]:
    """A Ray task: merge one metric's shard states in shard order, finish it, yield its results."""
    yield ("node", _node())
    layers = [graph.layer(name) for name in planned.layer_names]

    def revive(state: dict[str, Any]) -> Metric:
        metric = planned.entry.cls.__new__(planned.entry.cls)
        vars(metric).update(state)
        metric.ctx, metric.params = ctx, ctx.params
        return metric

    ctx = Context(
        params=dict(planned.params),
        layers=layers,
        graph=graph,
        seed=int(spec.plan.config.seed),
        max_batch_size=spec.plan.batch_size,
    )
    guard = GuardedMetric(planned, spec.checkpoint, ctx, spec.plan.metric_timeout)
    for _, warnings, seconds in states:
        ctx.warnings.extend(w for w in warnings if w not in ctx.warnings)
        guard.seconds += seconds

    def merged() -> Any:
        first, *rest = (revive(state) for state, _, _ in states)
        for other in rest:
            first.merge(other)
        return first.finish()

    values = guard.call("merge() and finish()", merged)
    for result in RunExecutor._to_results(guard, values, spec.n_samples):
        yield ("event", pb.AnalyzeResponse(result=result).SerializeToString())


@functools.cache
def _remotes() -> tuple[Any, Any]:
    """The task functions as Ray remotes (built on first use: Ray is optional)."""
    import ray

    streaming = dict(num_returns="streaming", max_retries=0)
    return ray.remote(**streaming)(checkpoint_task), ray.remote(**streaming)(merge_task)


# ---------------------------------------------------------------- on the head server


@dataclass
class _Job:
    """One submitted task and what it still owes the run."""

    checkpoint: int
    generator: Any
    owed: set[str]  #: metrics whose results have not arrived (a guard's results come together)
    node: str = "?"
    error: str = ""
    shard: int | None = None
    ended: bool = False
    samples: int = 0  #: samples its forward pass has done
    feeds: bool = False  #: runs a forward pass (merge tasks and weight-only tasks do not)
    role: str = ""  #: shown after the node: "data shard 1", "merging 2 data shards"


@dataclass
class RayRunExecutor(RunExecutor):
    """A RunExecutor whose work runs as Ray tasks; see the module docstring."""

    options: RayOptions = field(default_factory=RayOptions)
    _jobs: list[_Job] = field(default_factory=list)
    _events: queue.Queue = field(default_factory=queue.Queue)

    def _run(self) -> None:
        import ray

        batches, n_samples = self._collect() if self.plan.needs_data else ([], 0)
        self.info.num_samples = n_samples
        data_ref = ray.put(batches)
        model_refs: dict[str, Any] = {}
        for ckpt in self.plan.checkpoints:
            if ckpt.stored.id not in model_refs:
                model_refs[ckpt.stored.id] = ray.put(_model_files(ckpt))
        plan = dataclasses.replace(self.plan, checkpoints=[], dataset_batches=None, skipped=[])
        shards = self._shards(len(batches))
        graph = self.plan.checkpoints[0].graph
        split = self._split = [m for m in self.plan.metrics if shards > 1 and _mergeable(m, graph)]
        whole = [m for m in self.plan.metrics if m not in split]
        self._states: dict[tuple[int, str], list[Any]] = {}
        self._forward_sent = 0
        try:
            for index, ckpt in enumerate(self.plan.checkpoints):
                spec = TaskSpec(
                    plan,
                    index,
                    ckpt.stored,
                    ckpt.source == "model_dir" and self.options.trust_model_dir,
                    self.options,
                    self._remaining(),
                    n_samples,
                )
                model = model_refs[ckpt.stored.id]
                if whole:
                    self._submit(
                        dataclasses.replace(spec, plan=dataclasses.replace(plan, metrics=whole)), model, data_ref, whole
                    )
                for shard, part in enumerate(np.array_split(np.arange(len(batches)), shards) if split else []):
                    part_ref = ray.put([batches[i] for i in part])
                    self._submit(
                        dataclasses.replace(spec, plan=dataclasses.replace(plan, metrics=split), shard=True),
                        model,
                        part_ref,
                        split,
                        shard,
                    )
            self._drain(plan, n_samples)
        finally:
            for job in self._jobs:
                ray.cancel(job.generator, force=True)  # a no-op for finished tasks
        if self._jobs and all(job.error for job in self._jobs):
            raise Unavailable(
                f"every Ray task of the run failed (each result says why); the first: {self._jobs[0].error}",
                reason="RAY_TASKS_FAILED",
            )

    def _collect(self) -> tuple[list[InputBatch], int]:
        """Every batch of the run, checked and cut as the local executor does (tasks share one copy)."""
        total, source = self._batches()
        kept: list[InputBatch] = []
        done = 0
        self._progress("forward", 0, total, "receiving the data")
        for _, inputs, labels, size in self._limited_batches(source):
            kept.append((inputs, labels))
            done += size
        if done == 0:
            raise InvalidInput("the data source produced no samples")
        return kept, done

    def _shards(self, n_batches: int) -> int:
        """Data shards per checkpoint for mergeable metrics: the option, else the CPUs left per checkpoint."""
        import ray

        wanted = self.options.ray_data_shards
        if wanted == 0:
            cpus = int(ray.cluster_resources().get("CPU", 1))
            wanted = max(1, cpus // max(1, len(self.plan.checkpoints)))
        return max(1, min(wanted, n_batches))

    def _remaining(self) -> float:
        return max(0.0, self._deadline - time.monotonic())

    def _submit(
        self, spec: TaskSpec, model: Any, data: Any, metrics: list[PlannedMetric], shard: int | None = None
    ) -> None:
        checkpoint_remote, _ = _remotes()
        gen = checkpoint_remote.options(num_cpus=1, num_gpus=self.options.ray_gpus_per_task).remote(spec, model, data)
        owed = set() if shard is not None else {m.name for m in metrics}
        self._start_job(
            _Job(
                spec.checkpoint,
                gen,
                owed,
                shard=shard,
                feeds=spec.plan.needs_data,
                role="" if shard is None else f"data shard {shard}",
            )
        )

    def _start_job(self, job: _Job) -> None:
        self._jobs.append(job)
        threading.Thread(target=self._consume, args=(job,), name="ray-task-events", daemon=True).start()

    def _consume(self, job: _Job) -> None:
        """Hand a task's items to the run thread; its failure (Ray's reason) is the last item."""
        import ray

        try:
            for ref in job.generator:
                self._events.put((job, ray.get(ref)))
        except Exception as exc:  # RayTaskError, WorkerCrashedError, NodeDiedError, OOM...
            self._events.put((job, ("died", _reason(exc))))
        self._events.put((job, _DONE))

    def _drain(self, plan: RunPlan, n_samples: int) -> None:
        """Relay items until every task (and merge) has ended; stops at cancellation or the deadline."""
        live = len(self._jobs)
        while live:
            self._check()
            try:
                job, item = self._events.get(timeout=0.1)
            except queue.Empty:
                continue
            kind = item[0]
            where = f"checkpoint {job.checkpoint} on node {job.node}"
            if kind == "node":
                job.node = item[1]
                self._progress(
                    "loading",
                    job.checkpoint,
                    len(self.plan.checkpoints),
                    f"checkpoint {job.checkpoint} on node {job.node}" + (f" ({job.role})" * bool(job.role)),
                )
            elif kind == "event":
                event = pb.AnalyzeResponse.FromString(item[1])
                if event.HasField("progress"):
                    self._relay(job, event.progress, n_samples)
                else:
                    job.owed.discard(event.result.metric)
                    self._record(event.result)
            elif kind == "state":
                self._states.setdefault((job.checkpoint, item[1]), []).append((job.shard, item[2:]))
            elif kind in ("error", "died"):
                job.error = job.error or f"the Ray task for {where} failed: {item[1]}"
            elif item is _DONE:
                live -= 1
                job.ended = True
                self._settle(job, n_samples)
                live += self._merge_ready(job, plan, n_samples)

    def _relay(self, job: _Job, progress: pb.Progress, n_samples: int) -> None:
        """A task's progress as the local executor words it, so the SDK's tracker reads it unchanged:
        forward = samples through every checkpoint, finishing = the run-wide metric index."""
        if progress.stage == "forward":
            job.samples = int(progress.done)
            done = min(self._samples_through(index) for index in range(len(self.plan.checkpoints)))
            if done > self._forward_sent:
                self._forward_sent = done
                self._progress("forward", done, n_samples)
        elif progress.stage == "finishing":
            names = [m.name for m in self.plan.metrics]
            index = job.checkpoint * len(names) + names.index(progress.message)
            self._progress("finishing", index, len(names) * len(self.plan.checkpoints), progress.message)
        elif progress.stage == "metric":
            self._progress(
                "metric",
                progress.done,
                progress.total,
                f"{progress.message} [checkpoint {job.checkpoint} on node {job.node}]",
            )

    def _samples_through(self, checkpoint: int) -> int:
        jobs = [j for j in self._jobs if j.checkpoint == checkpoint and j.feeds]
        whole = [j.samples for j in jobs if j.shard is None]
        return min(whole) if whole else sum(j.samples for j in jobs) if jobs else self.info.num_samples

    def _settle(self, job: _Job, n_samples: int) -> None:
        """Fail what an ended task still owed, with its reason."""
        reason = job.error or f"the Ray task for checkpoint {job.checkpoint} on node {job.node} ended without it"
        for planned in self.plan.metrics:
            if planned.name in job.owed:
                self._fail(planned, job.checkpoint, reason, n_samples)

    def _fail(self, planned: PlannedMetric, checkpoint: int, reason: str, n_samples: int) -> None:
        """Failed results for every layer of a metric, as the local executor writes them."""
        graph = self.plan.checkpoints[checkpoint].graph
        guard = GuardedMetric(planned, checkpoint, Context(params=dict(planned.params), layers=[], graph=graph), 0.0)
        guard.error = reason
        for result in self._to_results(guard, None, n_samples):
            self._record(result)

    def _merge_ready(self, job: _Job, plan: RunPlan, n_samples: int) -> int:
        """After a shard task ends: once all shards of its checkpoint are in, submit the merges (count)."""
        if job.shard is None:
            return 0
        shards = [j for j in self._jobs if j.checkpoint == job.checkpoint and j.shard is not None]
        if not all(j.ended for j in shards):
            return 0
        return self._submit_merges(job.checkpoint, shards, plan, n_samples)

    def _submit_merges(self, checkpoint: int, shards: list[_Job], plan: RunPlan, n_samples: int) -> int:
        _, merge_remote = _remotes()
        failed = next((j.error for j in shards if j.error), "")
        submitted = 0
        for planned in self._split:
            parts = sorted(self._states.pop((checkpoint, planned.name), []), key=lambda p: p[0])
            error = failed or next((p[1][1] for p in parts if p[1][1]), "")
            if error or len(parts) != len(shards):
                self._fail(planned, checkpoint, error or "a data shard was lost", n_samples)
                continue
            states = [(state, warnings, seconds) for _, (state, _, warnings, seconds) in parts]
            spec = TaskSpec(
                plan,
                checkpoint,
                self.plan.checkpoints[checkpoint].stored,
                False,
                self.options,
                self._remaining(),
                n_samples,
            )
            # the metric's own layers' weights travel; a merge reads no other (a read would fail loudly)
            graph = self.plan.checkpoints[checkpoint].graph.restricted(planned.layer_names)
            gen = merge_remote.options(num_cpus=1).remote(planned, spec, graph, states)
            self._start_job(_Job(checkpoint, gen, {planned.name}, role=f"merging {len(parts)} data shards"))
            submitted += 1
        return submitted


def _model_files(ckpt: LoadedModel) -> dict[str, bytes]:
    """The bytes a task needs to load a checkpoint: an upload's own directory holds the model and its
    side files (ONNX external data) and nothing else; a --model-dir file travels alone."""
    path = ckpt.stored.path
    files = [p for p in path.parent.iterdir() if p.is_file()] if ckpt.source == "upload" else [path]
    return {p.name: p.read_bytes() for p in files}


def _mergeable(planned: PlannedMetric, graph: Any) -> bool:
    return planned.entry.cls.mergeable(planned.params, [graph.layer(name) for name in planned.layer_names])


def _reason(exc: BaseException) -> str:
    """Ray's error, first line only (its tracebacks are for logs, not results)."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"
