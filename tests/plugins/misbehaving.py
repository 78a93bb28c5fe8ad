"""Plugins that misbehave on purpose (raise, hang, return garbage, abort or segfault their process,
leak memory) plus one that re-runs the model and one that reports which weights its process holds.

Loaded into test servers with ``--plugin-module misbehaving`` (tests/plugins on PYTHONPATH).
"""

from __future__ import annotations

import ctypes
import os
import time
from pathlib import Path

import numpy as np

from deepscope_server.model_graph import WithheldWeights
from deepscope_server.plugin_api import CaptureRequest, Metric, Needs, Param, hookimpl


class _InUpdate(Metric):
    """Misbehaves in every update(): it reads the layers' outputs, so only runs over data reach it."""

    needs = Needs.OUTPUTS

    def update(self, batch):
        self.misbehave()


class Raises(_InUpdate):
    name = "testing.raises"
    description = "Raises in update()."

    def misbehave(self):
        raise RuntimeError("boom from a plugin")


class Aborts(_InUpdate):
    name = "testing.aborts"
    description = "Calls os.abort() in update(): kills whatever process hosts it."

    def misbehave(self):
        os.abort()


class Slow(Metric):
    name = "testing.slow"
    description = "Sleeps in every update() so a run can be cancelled mid-way."
    needs = Needs.OUTPUTS
    params = (Param("seconds", float, 0.5, "sleep per batch", min=0.0, max=60.0),)

    def update(self, batch):
        time.sleep(self.params["seconds"])

    def finish(self):
        return {"": {"done": True}}


class Rerun(Metric):
    """Re-runs the model on the first batch through the handle and compares with the captured output."""

    name = "testing.rerun"
    description = "Re-runs the model through the model handle; reports the max difference to the captured output."
    needs = Needs.OUTPUTS | Needs.DATA | Needs.MODEL

    def start(self) -> None:
        self.diffs: dict[str, float] = {}

    def update(self, batch):
        if self.diffs:
            return
        out = self.ctx.model.run(batch.data, [CaptureRequest(layer.name) for layer in self.ctx.layers])
        for layer in self.ctx.layers:
            again = out.captured[CaptureRequest(layer.name)]
            self.diffs[layer.name] = float(np.abs(again - batch.outputs[layer.name]).max())
        # Zeroing the first weighted layer must change the outputs (the handle really re-runs).
        weighted = next(layer for layer in self.ctx.graph.layers if "weight" in layer.weights)
        zeroed = {weighted.name: {k: np.zeros_like(v) for k, v in weighted.weights.items()}}
        plain = self.ctx.model.run(batch.data).outputs
        changed = self.ctx.model.run_with_weights(batch.data, zeroed).outputs
        key = next(iter(plain))
        self.perturbed = float(np.abs(plain[key] - changed[key]).max())

    def finish(self):
        return {
            **{name: {"max_abs_diff": d} for name, d in self.diffs.items()},
            "": {"perturbed_output_change": self.perturbed},
        }


class SeesWeights(Metric):
    """Which layers' weights came with the graph its process was sent; and a withheld one, read anyway."""

    name = "testing.sees_weights"
    description = "Reports the layers whose weights its process holds, and the sum of layer `read`'s weight."
    needs = Needs.WEIGHTS
    params = (Param("read", str, "", "a layer whose weight to read anyway (fetched on first use)"),)

    def finish(self):
        held = [
            layer.name
            for layer in self.ctx.graph.layers
            if not isinstance(layer.weights, WithheldWeights) and layer.weights  # inspecting it fetches nothing
        ]
        out = {layer.name: {"held": ",".join(held)} for layer in self.ctx.layers}
        if self.params["read"]:
            weight = self.ctx.graph.layer(self.params["read"]).weights["weight"]
            out[""] = {"read_sum": float(np.asarray(weight, np.float64).sum())}
        return out


class Leaks(Metric):
    """Keeps a fresh allocation from every batch: address space grows without bound."""

    name = "testing.leaks"
    description = "Keeps `mib` MiB per update() (np.empty: address space, pages untouched)."
    needs = Needs.OUTPUTS
    params = (Param("mib", int, 1024, "MiB kept per batch", min=1, max=1 << 20),)

    def start(self) -> None:
        self.kept: list[np.ndarray] = []

    def update(self, batch):
        self.kept.append(np.empty(self.params["mib"] << 20, dtype=np.uint8))

    def finish(self):
        return {"": {"kept_mib": len(self.kept) * self.params["mib"]}}


class Spins(Metric):
    """Burns CPU in update() until something stops it; says what did in ``marker`` (for tests)."""

    name = "testing.spins"
    description = "Busy-loops in update() (reports progress 'spinning' first) until its time limit stops it."
    needs = Needs.OUTPUTS
    params = (
        Param("cooperative", bool, True, "call ctx.check() in the loop"),
        Param("marker", str, "", "file that receives the name of the exception that ended the loop"),
    )

    def update(self, batch):
        self.ctx.progress(0.0, "spinning")
        try:
            while True:
                if self.params["cooperative"]:
                    self.ctx.check()
        except BaseException as exc:
            if self.params["marker"]:
                Path(self.params["marker"]).write_text(type(exc).__name__)
            raise


class _InFinish(Metric):
    """Misbehaves in finish(): it needs only the weights, so every run reaches it."""

    needs = Needs.WEIGHTS

    def finish(self):
        return self.misbehave()


class Hangs(_InFinish):
    name = "testing.hangs"
    description = "Sleeps in finish() far past any time limit."

    def misbehave(self):
        time.sleep(3600)


class Malformed(_InFinish):
    name = "testing.malformed"
    description = "Returns a value of an unsupported type."

    def misbehave(self):
        return {layer.name: {"value": object()} for layer in self.ctx.layers}


class Segfaults(_InFinish):
    name = "testing.segfaults"
    description = "Dereferences a null pointer through ctypes in finish()."

    def misbehave(self):
        ctypes.string_at(0)


@hookimpl
def deepscope_register_metrics(register) -> None:
    for cls in (Raises, Hangs, Malformed, Slow, Rerun, SeesWeights, Aborts, Segfaults, Leaks, Spins):
        register(cls)
