"""ProgressTracker turns the server's event stream into `checkpoint i/M · metric k/N` milestones."""

from __future__ import annotations

import io

from deepscope.progress import LogDisplay, ProgressTracker
from deepscope.v1 import introspection_pb2 as pb


def stream(checkpoints: int, metrics: list[str], layers: list[str], failed: str = "") -> list[pb.AnalyzeResponse]:
    """Events in the order RunExecutor emits them: forward per batch, then finishing k of M x N."""
    config = pb.AnalyzeConfig(models=[f"m{i}" for i in range(checkpoints)])
    events = [pb.AnalyzeResponse(started=pb.RunInfo(id="r", config=config))]
    events += [pb.AnalyzeResponse(progress=pb.Progress(stage="forward", done=d, total=128)) for d in (0, 64, 128)]
    total = checkpoints * len(metrics)
    for k in range(total):
        metric = metrics[k % len(metrics)]
        events.append(pb.AnalyzeResponse(progress=pb.Progress(stage="finishing", done=k, total=total, message=metric)))
        events.append(
            pb.AnalyzeResponse(
                progress=pb.Progress(stage="metric", done=50, total=100, message=f"{metric}: layer {layers[0]}")
            )
        )
        for layer in layers:
            status = "failed" if metric == failed else "ok"
            events.append(
                pb.AnalyzeResponse(
                    result=pb.MetricResult(metric=metric, layer=layer, checkpoint=k // len(metrics), status=status)
                )
            )
    events.append(pb.AnalyzeResponse(progress=pb.Progress(stage="done", done=1, total=1, message="completed")))
    events.append(pb.AnalyzeResponse(finished=pb.RunInfo(id="r")))
    return events


def feed(tracker: ProgressTracker, events: list[pb.AnalyzeResponse]) -> list:
    return [update for event in events for update in tracker.feed(event)]


def test_one_milestone_per_metric_and_checkpoint_in_order():
    ticks = iter(range(1000))
    tracker = ProgressTracker(clock=lambda: float(next(ticks)))
    updates = feed(tracker, stream(3, ["cnt.a", "fractal.b"], ["fc1", "fc2"], failed="fractal.b"))
    finished = [u for u in updates if u.stage == "metric"]
    assert [(u.checkpoint, u.num_checkpoints, u.metric_index, u.num_metrics, u.metric) for u in finished] == [
        (c, 3, k, 2, m) for c in (1, 2, 3) for k, m in ((1, "cnt.a"), (2, "fractal.b"))
    ]
    assert finished[0].counts == {"ok": 2} and finished[1].counts == {"failed": 2}
    assert str(finished[1]).endswith("] checkpoint 1/3 · metric 2/2 · fractal.b: 2 failed")
    notes = [u for u in updates if u.stage == "note"]
    assert notes[0].message == "layer fc1" and notes[0].metric == "cnt.a"
    # the milestones the SDK keeps as run.events: forward done, each metric, the end
    assert [e.stage for e in tracker.history] == ["forward"] + ["metric"] * 6 + ["done"]
    assert tracker.history[0].samples == 128 and tracker.history[-1].message == "completed"
    assert all(a.elapsed < b.elapsed for a, b in zip(finished, finished[1:]))


def test_log_display_writes_one_line_per_finished_metric():
    out = io.StringIO()
    display = LogDisplay(out)
    for update in feed(ProgressTracker(), stream(1, ["cnt.a", "cnt.b", "cnt.c"], ["fc1"])):
        display(update)
    lines = out.getvalue().splitlines()
    assert [line.split("] ", 1)[1] for line in lines] == [
        "forward pass: 128/128 samples",
        "metric 1/3 · cnt.a: 1 ok",
        "metric 2/3 · cnt.b: 1 ok",
        "metric 3/3 · cnt.c: 1 ok",
        "run completed",
    ]
