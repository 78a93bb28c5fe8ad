"""Thread isolation keeps a cooperative time budget: a call past its limit fails and its thread stops,
whether the metric calls ctx.check() or never looks at its context; cancellation still propagates."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from deepscope_server.analysis import PlannedMetric
from deepscope_server.isolation import Finish, GuardedMetric, Start, Update
from deepscope_server.model_graph import Layer
from deepscope_server.plugin_api import Batch, Context, Metric, MetricTimeout, Needs, RunCancelled
from deepscope_server.plugins import MetricEntry
from deepscope_server.testing import make_graph


class Loops(Metric):
    """Spins in update() until stopped; records what stopped it."""

    name = "t.loops"
    description = "spins"
    needs = Needs.OUTPUTS
    ended: list[str] = []
    ended_event = threading.Event()

    def update(self, batch: Batch) -> None:
        try:
            while True:
                if self.params["cooperative"]:
                    self.ctx.check()
                else:
                    sum(range(100))
        except BaseException as exc:
            Loops.ended.append(type(exc).__name__)
            Loops.ended_event.set()
            raise

    def finish(self) -> dict:
        return {"fc": {"done": True}}


def _guard(cooperative: bool, timeout: float, cancelled=lambda: False) -> GuardedMetric:
    layer = Layer("fc", "linear", "Gemm", weights={"weight": np.ones((2, 2), np.float32)})
    ctx = Context(params={"cooperative": cooperative}, layers=[layer], graph=make_graph([layer]), cancelled=cancelled)
    planned = PlannedMetric("t.loops", MetricEntry(Loops, "tests", "0"), ctx.params, ["fc"])
    return GuardedMetric(planned, 0, ctx, timeout)


@pytest.fixture(autouse=True)
def _reset() -> None:
    Loops.ended.clear()
    Loops.ended_event.clear()


@pytest.mark.parametrize("cooperative", [True, False])
def test_a_call_past_its_limit_fails_and_its_loop_stops(cooperative):
    guard = _guard(cooperative, timeout=0.3)
    guard.begin(Start())
    guard.end()
    guard.begin(Update(Batch(index=0, outputs={"fc": np.zeros((1, 2))})))
    assert guard.end() is None
    assert guard.error == "update(batch 0) exceeded the metric time limit of 0.3 s"
    assert Loops.ended_event.wait(10) and Loops.ended == ["MetricTimeout"]
    guard.begin(Finish())
    assert guard.end() is None  # a failed guard ignores later calls


def test_check_raises_run_cancelled_once_the_run_is_cancelled():
    cancel = threading.Event()
    guard = _guard(True, timeout=60, cancelled=cancel.is_set)
    guard.begin(Start())
    guard.end()
    threading.Timer(0.2, cancel.set).start()
    guard.begin(Update(Batch(index=0, outputs={"fc": np.zeros((1, 2))})))
    with pytest.raises(RunCancelled):
        guard.end()
    assert Loops.ended == ["RunCancelled"]


def test_check_is_free_before_the_deadline_and_raises_after_it():
    ctx = Context(params={}, layers=[], graph=make_graph([]))
    ctx.check()  # no deadline: never raises
    ctx.deadline = time.monotonic() + 60
    ctx.check()
    ctx.deadline = time.monotonic() - 1
    with pytest.raises(MetricTimeout):
        ctx.check()
    assert not issubclass(MetricTimeout, Exception)  # plugin code's `except Exception` cannot swallow it
