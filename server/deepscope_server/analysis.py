"""An analysis run: batches -> backend (one forward pass per batch for all metrics) -> metric
accumulators -> typed results, streamed as events and persisted.

``plan_run`` validates everything (models, metrics, parameters, layers, data) before any work;
``RunExecutor.execute`` does the work in a worker thread. A metric that raises, returns a
malformed result or exceeds its time limit fails only its own results; a client cancel or
deadline stops the run between batches and between metrics and marks it cancelled.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from deepscope import times
from deepscope.results import run_status_name
from deepscope.v1 import introspection_pb2 as pb
from deepscope.v1 import tensor_pb2 as tpb

from . import convert
from .backends import CaptureRequest, Inputs, LayerWeights, RunOutput
from .backends.inputs import format_shape
from .config import Limits
from .errors import DeepscopeError, InvalidInput, LimitExceeded, shorten
from .isolation import Finish, GuardedMetric, Hosting, RunCancelled, Start, Update
from .model_graph import Layer, ModelGraph
from .models import LoadedModel, ModelManager
from .plugin_api import Batch, Context, Needs, validate_params
from .plugins import MetricEntry, Registry
from .result_status import judge
from .store import Store

DEFAULT_BATCH_SIZE = 64
#: Inputs of one batch from the data source: (model inputs by name, labels or None).
InputBatch = tuple[dict[str, np.ndarray], np.ndarray | None]


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
    skipped: list[pb.MetricResult] = field(default_factory=list)  #: requested metrics that apply to no layer

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
            raise InvalidInput(
                f"checkpoint {index} ('{config.models[index]}') has a different layer table "
                f"than checkpoint 0: a series must be checkpoints of one architecture"
            )
    selected = first.select(list(config.layers)) if config.layers else None

    planned: list[PlannedMetric] = []
    skipped: list[pb.MetricResult] = []
    seen: set[str] = set(registry.expand(list(config.exclude)))  # excluded: as if already planned
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
                raise InvalidInput(str(exc), reason="INVALID_PARAM", field=f"metrics[{name}].params") from None
            layers = [layer for layer in (selected or first.layers) if entry.cls.applies_to(layer)]
            if not layers:
                kinds = sorted(entry.cls.layer_kinds or ())
                have = sorted({layer.kind for layer in (selected or first.layers)})
                reason = (
                    f"no layer to measure: '{name}' applies to layer kinds {', '.join(kinds) or 'any'}; "
                    f"the selected layers are of kinds {', '.join(have) or 'none'}"
                )
                skipped.append(pb.MetricResult(metric=name, status="skipped", error=reason))
                continue
            planned.append(PlannedMetric(name, entry, params, [layer.name for layer in layers]))
    if not planned:
        reasons = "; ".join(r.error for r in skipped) or "every requested metric is excluded"
        raise InvalidInput(
            f"no metric to run: {reasons}; select other layers or metrics",
            reason="METRIC_NOT_APPLICABLE",
            field="metrics",
        )
    if config.data_specs:
        _check_data(first, config.data_specs)

    timeout = times.seconds(config.metric_timeout)
    if timeout < 0:
        raise InvalidInput(
            f"metric_timeout must be a positive duration, got {timeout!r} s",
            reason="INVALID_PARAM",
            field="config.metric_timeout",
        )
    # A client may shorten the server's metric time limit, never lengthen it.
    plan = RunPlan(
        config,
        checkpoints,
        planned,
        batch_size,
        min(timeout, limits.metric_timeout_seconds) if timeout else limits.metric_timeout_seconds,
        skipped=skipped,
    )
    if plan.needs_data and config.dataset:
        dataset = registry.dataset(config.dataset)
        spec = first.inputs[0]
        if len(first.inputs) != 1:
            raise InvalidInput(
                f"dataset '{shorten(config.dataset)}' fills one input; the model has {len(first.inputs)} "
                "inputs: stream your own batches instead"
            )
        split = config.split or "test"
        # Check the dataset fits the model now, not halfway through the run.
        dataset.batches(spec, batch_size, config.sample_limit or None, config.seed, split)

        def dataset_batches() -> tuple[int, Iterator[InputBatch]]:
            n, it = dataset.batches(spec, batch_size, config.sample_limit or None, config.seed, split)
            return n, (({spec.name: x}, y) for x, y in it)

        plan.dataset_batches = dataset_batches
    return plan


def _check_data(graph: ModelGraph, specs: Sequence[tpb.TensorSpec]) -> None:
    """The client's data must fit the model's inputs (dtype, rank, all but the batch dimension)
    before the run starts, even when no planned metric reads it."""
    bound = graph.bind_inputs([(spec.name, spec) for spec in specs])
    for want in graph.inputs:
        got = bound[want.name]
        dims = tuple(got.shape.dims)
        fits = want.shape is None or (
            len(dims) == len(want.shape) and all(w is None or w == d for w, d in zip(want.shape[1:], dims[1:]))
        )
        if got.dtype != want.dtype or not fits:
            raise InvalidInput(
                f"data does not fit model input '{want.name}': expected {want.dtype} "
                f"{format_shape(want.shape)}, got {got.dtype} {format_shape(dims)}"
            )


class _ModelHandle:
    """What a Needs.MODEL metric gets: runs the checkpoint, honouring cancellation."""

    def __init__(self, loaded: LoadedModel, cancelled: Callable[[], bool]) -> None:
        self._loaded = loaded
        self._cancelled = cancelled
        self.graph = loaded.graph

    def _check(self) -> None:
        if self._cancelled():
            raise RunCancelled("run cancelled")

    def run(self, inputs: Inputs, capture: Sequence[CaptureRequest] = ()) -> RunOutput:
        self._check()
        return self._loaded.run(inputs, capture, cancelled=self._cancelled)

    def run_with_weights(
        self, inputs: Inputs, weights: LayerWeights, capture: Sequence[CaptureRequest] = ()
    ) -> RunOutput:
        self._check()
        return self._loaded.run_with_weights(inputs, weights, capture, cancelled=self._cancelled)


@dataclass
class RunExecutor:
    """Executes a plan; ``emit`` receives AnalyzeEvents (called from the worker thread)."""

    plan: RunPlan
    store: Store
    emit: Callable[[pb.AnalyzeResponse], None]
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
        self.emit(pb.AnalyzeResponse(started=self.info))
        return self.info

    def _cancelled(self) -> bool:
        return self.cancel.is_set() or (time.monotonic() > self._deadline)

    def _check(self) -> None:
        if self.cancel.is_set():
            raise RunCancelled("run cancelled")
        if time.monotonic() > self._deadline:
            raise LimitExceeded(
                "max_run_seconds", self.max_seconds, round(time.monotonic() - self._deadline + self.max_seconds, 1), "s"
            )

    def _progress(self, stage: str, done: int, total: int, message: str = "") -> None:
        self.emit(pb.AnalyzeResponse(progress=pb.Progress(stage=stage, done=done, total=total, message=message)))

    def execute(self) -> pb.RunInfo:
        start = time.perf_counter()
        self._deadline = time.monotonic() + self.max_seconds
        try:
            self._run()
            for result in self.plan.skipped:
                self._record(result)
            self.info.status = pb.RUN_STATUS_COMPLETED
        except RunCancelled:
            if not self.cancel.is_set() and time.monotonic() > self._deadline:
                # A metric saw the deadline through ctx.cancelled() / the model handle.
                exc = LimitExceeded(
                    "max_run_seconds",
                    self.max_seconds,
                    round(time.monotonic() - self._deadline + self.max_seconds, 1),
                    "s",
                )
                self.info.status = pb.RUN_STATUS_FAILED
                self.info.error = str(exc)
                raise exc from None
            self.info.status = pb.RUN_STATUS_CANCELLED
            self.info.error = str(exc)
        except DeepscopeError as exc:
            self.info.status = pb.RUN_STATUS_FAILED
            self.info.error = str(exc)
            raise
        except Exception as exc:
            self.info.status = pb.RUN_STATUS_FAILED
            self.info.error = f"{type(exc).__name__}: {exc}"
            raise
        finally:
            for guard in self._guards:
                guard.close()
            times.set_seconds(self.info.duration, time.perf_counter() - start)
            times.stamp_now(self.info.finished_time)
            self.store.update_run(self.info)
            self._progress("done", 1, 1, run_status_name(self.info.status))
            self.emit(pb.AnalyzeResponse(finished=self.info))
        return self.info

    def _run(self) -> None:
        """The run's work: metrics started, fed every batch, finished into results (``RayRunExecutor``
        spreads this over a cluster; each of its tasks runs this same method for its share)."""
        guards = self._instantiate()
        n_samples = self._forward(guards) if self.plan.needs_data else 0
        self.info.num_samples = n_samples
        self._finish(guards, n_samples)

    def _instantiate(self) -> list[GuardedMetric]:
        hosting = Hosting(self.isolation, self.plan.metric_timeout, self.memory_bytes, self._check)
        guards = []
        for index, ckpt in enumerate(self.plan.checkpoints):
            for planned in self.plan.metrics:
                layers: list[Layer] = [ckpt.graph.layer(name) for name in planned.layer_names]
                ctx = Context(
                    params=dict(planned.params),
                    layers=layers,
                    graph=ckpt.graph,
                    model=_ModelHandle(ckpt, self._cancelled) if planned.needs & Needs.MODEL else None,
                    seed=int(self.plan.config.seed),
                    max_batch_size=self.plan.batch_size,
                    cancelled=self._cancelled,
                    progress=lambda f, msg, _n=planned.name: self._progress(
                        "metric", int(f * 100), 100, f"{_n}: {msg}"
                    ),
                )
                guard = hosting.guard(planned, index, ctx)
                guards.append(guard)
                self._guards.append(guard)  # closed even if a later start() is cut off
                guard.begin(Start())
        for guard in guards:
            guard.end()
        return guards

    def _batches(self) -> tuple[int, Iterator[InputBatch]]:
        if self.plan.dataset_batches is not None:
            return self.plan.dataset_batches()
        if self.client_batches is None:
            raise InvalidInput("the metrics need data: name a dataset or stream DataBatch messages")
        return int(self.plan.config.expected_samples), self.client_batches

    def _limited_batches(
        self, batches: Iterator[InputBatch]
    ) -> Iterator[tuple[int, dict[str, np.ndarray], np.ndarray | None, int]]:
        """(index, inputs, labels, size) of each batch, checked against batch_size and cut at sample_limit."""
        limit = int(self.plan.config.sample_limit) or None
        done = 0
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
            yield index, inputs, labels, size
            done += size
            if limit is not None and done >= limit:
                break

    def _forward(self, guards: list[GuardedMetric]) -> int:
        total, batches = self._batches()
        captures = self.plan.captures()
        data_guards = [g for g in guards if g.planned.needs_forward]
        done = 0
        self._progress("forward", 0, total)
        for index, inputs, labels, size in self._limited_batches(batches):
            for ckpt_index, ckpt in enumerate(self.plan.checkpoints):
                out = ckpt.run(inputs, captures, cancelled=self._cancelled)
                busy = []
                for guard in data_guards:
                    if guard.checkpoint != ckpt_index or guard.error:
                        continue
                    self._check()
                    guard.begin(Update(self._batch_for(guard, index, out, inputs, labels)))
                    busy.append(guard)
                for guard in busy:  # process workers compute in parallel; threads one at a time
                    guard.end()
            done += size
            self._progress("forward", done, total)
        if done == 0:
            raise InvalidInput("the data source produced no samples")
        return done

    @staticmethod
    def _batch_for(
        guard: GuardedMetric, index: int, out: RunOutput, inputs: dict[str, np.ndarray], labels: np.ndarray | None
    ) -> Batch:
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
        for guard in guards:
            if guard.parallel:  # worker processes finish at once; threads one at a time below
                guard.begin(Finish())
        for done, guard in enumerate(guards):
            self._check()
            self._progress("finishing", done, len(guards), guard.planned.name)
            if not guard.parallel:
                guard.begin(Finish())
            values = guard.end()
            guard.close()
            for result in self._to_results(guard, values, n_samples):
                self._record(result)

    def _record(self, result: pb.MetricResult) -> None:
        """Store and announce one result (counted once stored: a full disk must not inflate counts)."""
        self._seq += 1
        self.store.add_result(self.info.id, self._seq, result)
        self.info.num_results += 1
        self.info.num_failed += result.status == "failed"
        self.emit(pb.AnalyzeResponse(result=result))

    @staticmethod
    def _to_results(guard: GuardedMetric, values: Any, n_samples: int) -> list[pb.MetricResult]:
        def base(layer: str) -> pb.MetricResult:
            result = pb.MetricResult(
                metric=guard.planned.name,
                layer=layer,
                checkpoint=guard.checkpoint,
                num_samples=n_samples,
                warnings=guard.ctx.warnings,
            )
            times.set_seconds(result.duration, guard.seconds)
            for key, value in guard.planned.params.items():
                result.params[key].CopyFrom(convert.value_proto(value))
            return result

        if not guard.error:
            try:
                if not isinstance(values, Mapping):
                    raise convert.MalformedResult(
                        f"finish() must return {{layer: {{key: value}}}}, got {type(values).__name__}"
                    )
                results = []
                summary_keys = tuple(getattr(guard.planned.entry.cls, "summary_keys", ()) or ())
                for layer, items in values.items():
                    if not isinstance(items, Mapping):
                        raise convert.MalformedResult(
                            f"each layer's results must be a dict of key -> value, got {type(items).__name__}"
                        )
                    verdict = judge(items, summary_keys)  # NaN is never "ok": skipped/failed with a reason
                    result = base(str(layer))
                    result.status, result.error = verdict.status, verdict.error
                    result.warnings.extend(verdict.warnings)
                    result.items.extend(convert.result_items(verdict.values))
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
