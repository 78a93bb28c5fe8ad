"""Analysis progress as ``checkpoint i/M · metric k/N · layer`` with elapsed time.

The server streams low-level Progress events (``forward`` samples, ``finishing`` k of
checkpoints x metrics, in-metric ``metric`` messages, ``done``) and results. ``ProgressTracker``
turns them into ``ProgressEvent``s, the one vocabulary shared by the SDK (``on_progress=``,
``run.events``), the terminal bar and the log lines: on a terminal (or in a notebook) a tqdm
bar, otherwise one line per finished metric, because a log full of carriage returns says nothing.
"""

from __future__ import annotations

import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TextIO

from .v1 import introspection_pb2 as pb


@dataclass(frozen=True)
class ProgressEvent:
    """One step of a run. ``stage``: forward (samples went through every checkpoint), running
    (a metric started finishing), metric (a metric finished: ``counts`` of its result statuses),
    note (a message from inside a metric) or done (``message`` = the run's status).
    Indices are 1-based and 0 while unknown."""

    stage: str
    elapsed: float
    checkpoint: int = 0
    num_checkpoints: int = 0
    metric_index: int = 0
    num_metrics: int = 0
    metric: str = ""
    layer: str = ""
    samples: int = 0
    total_samples: int = 0
    counts: dict[str, int] = field(default_factory=dict)
    message: str = ""

    @property
    def position(self) -> str:
        """``checkpoint 1/3 · metric 4/12 · cnt.node_strength · fc2`` (the parts that are known)."""
        parts = []
        if self.num_checkpoints > 1:
            parts.append(f"checkpoint {self.checkpoint}/{self.num_checkpoints}")
        if self.num_metrics:
            parts.append(f"metric {self.metric_index}/{self.num_metrics}")
        parts += [p for p in (self.metric, self.layer) if p]
        return " · ".join(parts)

    def __str__(self) -> str:
        clock = f"[{_clock(self.elapsed)}]"
        if self.stage == "forward":
            total = f"/{self.total_samples}" if self.total_samples else ""
            ckpts = f" x {self.num_checkpoints} checkpoints" if self.num_checkpoints > 1 else ""
            return f"{clock} forward pass: {self.samples}{total} samples{ckpts}"
        if self.stage == "metric":
            counts = ", ".join(f"{n} {status}" for status, n in sorted(self.counts.items())) or "no results"
            return f"{clock} {self.position}: {counts}"
        if self.stage == "done":
            return f"{clock} run {self.message}"
        return f"{clock} {self.position}" + (f": {self.message}" if self.message else "")


def _clock(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes // 60}:{minutes % 60:02d}:{secs:02d}" if minutes >= 60 else f"{minutes}:{secs:02d}"


class ProgressTracker:
    """Feeds on AnalyzeEvents; ``history`` keeps the milestones (forward done, metrics, done)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._start = clock()
        self.num_checkpoints = 1
        self._total_guards = 0
        self._current: int | None = None  # finishing index (checkpoints x metrics, checkpoint-major)
        self._counts: Counter[str] = Counter()
        self._layer = ""
        self._samples = (0, 0)
        self.history: list[ProgressEvent] = []

    def _event(self, stage: str, **kw: Any) -> ProgressEvent:
        where: dict[str, Any] = {"num_checkpoints": self.num_checkpoints}
        if self._current is not None and self._total_guards:
            per = max(1, self._total_guards // self.num_checkpoints)
            where.update(checkpoint=self._current // per + 1, metric_index=self._current % per + 1, num_metrics=per)
        return ProgressEvent(stage, self._clock() - self._start, **{**where, **kw})

    def _close_metric(self) -> list[ProgressEvent]:
        if self._current is None:
            return []
        event = self._event("metric", metric=self._metric, counts=dict(self._counts))
        self._current = None
        self.history.append(event)
        return [event]

    def feed(self, event: pb.AnalyzeResponse) -> list[ProgressEvent]:
        """The ProgressEvents this AnalyzeEvent produces (often none)."""
        kind = event.WhichOneof("event")
        if kind == "started":
            self.num_checkpoints = max(1, len(event.started.config.models))
            return []
        if kind == "result":
            self._counts[event.result.status or "ok"] += 1
            self._layer = event.result.layer or "(model)"
            return []
        if kind != "progress":
            return []
        p = event.progress
        if p.stage == "forward":
            done, total = int(p.done), int(p.total)
            first_done = total and done >= total and self._samples[0] < total
            self._samples = (done, total)
            out = self._event("forward", samples=done, total_samples=total)
            if first_done:
                self.history.append(out)
            return [out]
        if p.stage == "finishing":
            closed = self._close_metric()
            self._total_guards = int(p.total)
            self._current, self._metric, self._counts, self._layer = int(p.done), p.message, Counter(), ""
            return [*closed, self._event("running", metric=p.message)]
        if p.stage == "metric":
            name, _, message = p.message.partition(": ")
            return [self._event("note", metric=name, message=message[:200])]
        if p.stage == "done":
            closed = self._close_metric()
            if self._samples[0] and not any(e.stage == "forward" for e in self.history):
                self.history.insert(
                    0, ProgressEvent("forward", 0.0, samples=self._samples[0], num_checkpoints=self.num_checkpoints)
                )
            finished = self._event("done", message=p.message)
            self.history.append(finished)
            return [*closed, finished]
        return []


def interactive(stream: TextIO | None = None) -> bool:
    """A terminal or a notebook: somewhere a live bar redraws instead of piling up lines."""
    stream = stream or sys.stderr
    return "ipykernel" in sys.modules or bool(getattr(stream, "isatty", lambda: False)())


class LogDisplay:
    """One line per finished metric (and one when the forward pass is done): for logs and CI."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stderr
        self._forward_reported = False

    def __call__(self, event: ProgressEvent) -> None:
        forward_done = event.stage == "forward" and event.total_samples and event.samples >= event.total_samples
        if event.stage in ("metric", "done") or (forward_done and not self._forward_reported):
            self._forward_reported |= event.stage == "forward"
            print(event, file=self.stream, flush=True)

    def close(self) -> None: ...


class BarDisplay:
    """A tqdm bar over samples during the forward pass, then over checkpoints x metrics."""

    def __init__(self) -> None:
        from tqdm.auto import tqdm

        self._tqdm = tqdm
        self._bar: Any = None
        self._stage = ""

    def _ensure(self, stage: str, total: int | None, unit: str) -> Any:
        if self._bar is None or self._stage != stage:
            self.close()
            self._bar = self._tqdm(total=total or None, unit=unit, desc=stage, dynamic_ncols=True)
            self._stage = stage
        return self._bar

    def __call__(self, event: ProgressEvent) -> None:
        if event.stage == "forward":
            bar = self._ensure("forward", event.total_samples, "sample")
            bar.update(event.samples - bar.n)
        elif event.stage in ("running", "metric", "note"):
            total = event.num_checkpoints * event.num_metrics if event.num_metrics else None
            bar = self._ensure("metrics", total, "metric")
            if event.stage == "metric":
                bar.update(1)
            bar.set_postfix_str(event.position + (f": {event.message}" if event.message else ""), refresh=True)
        elif event.stage == "done":
            self.close()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


class NoDisplay:
    def __call__(self, event: ProgressEvent) -> None: ...
    def close(self) -> None: ...


def display_for(enabled: bool, stream: TextIO | None = None) -> LogDisplay | BarDisplay | NoDisplay:
    """A bar where one can redraw, log lines elsewhere, nothing when progress is off."""
    if not enabled:
        return NoDisplay()
    return BarDisplay() if interactive(stream) else LogDisplay(stream)
