"""Attraction basins of training samples (Lin et al. 2025, arXiv 2501.02436) — reconstructed from the abstract.

Sample space: the basin radius of sample x is the largest noise level r at which x keeps its
reference label with probability >= ``keep_prob`` over K Gaussian draws; the noise is
``delta = r * ||x|| / sqrt(d) * g`` (relative: E||delta||^2 = r^2 ||x||^2) or ``r * g`` (absolute).
Weight space: the largest eta at which the label is kept when every perturbed layer tensor W
becomes ``W + eta * rms(W) * G`` (relative, layer-normalised).

Choices (all parameters): bisection on [0, r_max] with a fixed number of steps; the K draws of
a sample (or the K weight draws) are fixed across bisection steps and curve points (common
random numbers), so the keep fraction is a deterministic function of r and, for a linear
model, monotone. Samples whose clean prediction already differs from the reference have
radius 0; samples still kept at r_max are censored at r_max.

Everything runs through a ``predict(inputs) -> labels`` callable (or ``predict_with_weights``),
in batches of at most ``max_batch_size`` rows; the number of forward rows is bounded by
samples x draws x (steps + 1 + curve points).

Cost and budget: forward rows grow as samples x draws x (steps + curve points); weight basins
also make one call per (draw, distinct level), up to draws x sum_t min(samples, 2^t). With a
finite ``budget_seconds`` the clean forward pass (and, for weights, one perturbed call) is
timed, the plan's cost extrapolated, and samples, then draws, then steps, then curve points are
reduced until it fits (never below ``MIN_PLAN``); the result says what was measured
("samples: 16 of 64, ..."). When even the smallest plan does not fit, nothing is searched and
the result says so once, naming ``budget_seconds``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

Inputs = Mapping[str, np.ndarray]
Predict = Callable[[Inputs], np.ndarray]
PredictWithWeights = Callable[[Inputs, Mapping[str, Mapping[str, np.ndarray]]], np.ndarray]
#: ``keep_fraction(sample_indices, levels) -> fraction of draws keeping the reference label``
KeepFraction = Callable[[np.ndarray, np.ndarray], np.ndarray]


class Cancelled(Exception):
    """Raised inside the search when the run was cancelled."""


def logits_to_labels(logits: np.ndarray) -> np.ndarray:
    """Predicted labels: argmax over the last axis; a single logit per row means ``logit > 0``."""
    logits = np.asarray(logits)
    if logits.ndim == 1 or logits.shape[-1] == 1:
        return (logits.reshape(logits.shape[0], -1)[:, 0] > 0).astype(np.int64)
    return np.argmax(logits, axis=-1)


def _same(pred: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """Row-wise label equality (all positions must agree for per-token labels)."""
    n = pred.shape[0]
    return np.all(pred.reshape(n, -1) == ref.reshape(n, -1), axis=1)


def _take(inputs: Inputs, idx: np.ndarray) -> dict[str, np.ndarray]:
    return {k: v[idx] for k, v in inputs.items()}


@dataclass
class BasinResult:
    """Per-sample radii plus the search's bookkeeping (what is needed to reproduce it)."""

    radius: np.ndarray  #: NaN when cancelled
    censored: np.ndarray  #: still kept at r_max
    clean_kept: np.ndarray  #: clean prediction equals the reference
    curve_levels: np.ndarray
    curve_accuracy: np.ndarray  #: mean keep fraction over samples and draws per level
    resolution: float
    forward_rows: int = 0
    forward_calls: int = 0
    cancelled: bool = False
    notes: list[str] = field(default_factory=list)
    sample_indices: np.ndarray | None = None  #: rows of the given samples that were measured (None: all)
    sampled: str = ""  #: what the budget planner kept, e.g. "samples: 16 of 64, draws: 8 of 32"
    over_budget: str = ""  #: why nothing was searched (the smallest plan exceeds the budget)


def bisect_radii(
    keep_fraction: KeepFraction,
    active: np.ndarray,
    *,
    r_max: float,
    steps: int,
    keep_prob: float,
    on_step: Callable[[int], None] = lambda step: None,
) -> tuple[np.ndarray, np.ndarray]:
    """Per-sample bisection for the largest level with keep fraction >= keep_prob.

    ``active`` marks samples to search (others get 0). Returns ``(radius, censored)``; radius
    is the final bracket's midpoint (resolution r_max / 2^(steps+1)), or r_max when censored.
    ``on_step`` is called after each evaluation round (for progress and cancellation).
    """
    n = active.shape[0]
    radius = np.zeros(n)
    censored = np.zeros(n, dtype=bool)
    idx = np.flatnonzero(active)
    if idx.size == 0:
        return radius, censored
    at_max = keep_fraction(idx, np.full(idx.size, r_max)) >= keep_prob
    on_step(0)
    censored[idx[at_max]] = True
    radius[idx[at_max]] = r_max
    idx = idx[~at_max]
    lo, hi = np.zeros(idx.size), np.full(idx.size, r_max)
    for step in range(1, steps + 1):
        if idx.size:
            mid = 0.5 * (lo + hi)
            kept = keep_fraction(idx, mid) >= keep_prob
            lo = np.where(kept, mid, lo)
            hi = np.where(kept, hi, mid)
        on_step(step)
    radius[idx] = 0.5 * (lo + hi)
    return radius, censored


@dataclass(frozen=True)
class SearchPlan:
    """The sizes that set a search's cost."""

    samples: int
    draws: int
    steps: int
    curve_points: int

    def rows(self) -> int:
        """Forward rows of the curve and the bisection (plus the censoring check at the maximum)."""
        return self.samples * self.draws * (max(self.curve_points - 1, 0) + self.steps + 1)

    def weight_calls(self) -> int:
        """Perturbed-network calls of weight basins: one per (draw, distinct level) per round."""
        rounds = 1 + max(self.curve_points - 1, 0) + sum(min(self.samples, 2**t) for t in range(1, self.steps + 1))
        return self.draws * rounds


#: The smallest plan the budget may shrink a search to (fewer makes the radii meaningless).
MIN_PLAN = SearchPlan(samples=8, draws=4, steps=5, curve_points=0)


def fit_budget(want: SearchPlan, cost: Callable[[SearchPlan], float], budget: float) -> SearchPlan | None:
    """Shrink ``want`` (samples, then draws, then steps, then curve points; halving, never below
    ``MIN_PLAN`` or above ``want``) until ``cost(plan) <= budget``; None when even that is over."""
    plan = want
    floor = SearchPlan(
        *(min(getattr(want, f), getattr(MIN_PLAN, f)) for f in ("samples", "draws", "steps", "curve_points"))
    )
    for name in ("samples", "draws", "steps", "curve_points"):
        while cost(plan) > budget and getattr(plan, name) > getattr(floor, name):
            value = getattr(plan, name)
            smaller = max(getattr(floor, name), value // 2 if name != "steps" else value - 1)
            plan = SearchPlan(**{**plan.__dict__, name: smaller})
    return plan if cost(plan) <= budget else None


def describe_plan(plan: SearchPlan, want: SearchPlan, seed: int) -> str:
    """'samples: 16 of 64 (the first), draws: 8 of 32, ...' for the sizes the budget reduced."""
    parts = [
        f"{name}: {getattr(plan, name)} of {getattr(want, name)}" + (" (the first)" if name == "samples" else "")
        for name in ("samples", "draws", "steps", "curve_points")
        if getattr(plan, name) != getattr(want, name)
    ]
    return ", ".join(parts) + (f"; draws seeded {seed}" if parts else "")


def _over_budget(want: SearchPlan, cost: Callable[[SearchPlan], float], budget: float) -> str:
    smallest = SearchPlan(
        *(min(getattr(want, f), getattr(MIN_PLAN, f)) for f in ("samples", "draws", "steps", "curve_points"))
    )
    return (
        f"over budget: even the smallest search ({smallest.samples} samples, {smallest.draws} draws, "
        f"{smallest.steps} steps) needs ~{cost(smallest):.0f} s > budget_seconds {budget:g}; raise budget_seconds"
    )


@dataclass(frozen=True)
class Search:
    """What every basin search is told: K draws, bisection steps and curve points on [0, r_max], the
    keep threshold, the seed, the forward batch and time budget, and the run's progress/cancel hooks."""

    draws: int
    steps: int
    r_max: float = 2.0
    keep_prob: float = 0.5
    curve_points: int = 8
    seed: int = 0
    max_batch_size: int = 256
    budget_seconds: float = math.inf
    progress: Callable[[float, str], None] = lambda f, m: None
    cancelled: Callable[[], bool] = lambda: False


class _Runner:
    """Feeds rows to ``predict`` in batches of at most ``max_batch_size`` and counts the work."""

    def __init__(self, max_batch_size: int) -> None:
        self.max_batch_size = max(1, int(max_batch_size))
        self.rows = 0
        self.calls = 0

    def predict(self, fn: Callable[[Inputs], np.ndarray], inputs: Inputs) -> np.ndarray:
        n = next(iter(inputs.values())).shape[0]
        out = []
        for lo in range(0, n, self.max_batch_size):
            out.append(np.asarray(fn({k: v[lo : lo + self.max_batch_size] for k, v in inputs.items()})))
            self.calls += 1
        self.rows += n
        return np.concatenate(out, axis=0)


def _search(
    keep_fraction: KeepFraction, clean_kept: np.ndarray, runner: _Runner, search: Search, plan: SearchPlan, label: str
) -> BasinResult:
    """Shared driver: noise-accuracy curve, then per-sample bisection, with progress/cancel checks
    (``plan`` says how many steps and curve points, ``search`` the rest)."""
    r_max, keep_prob, steps, curve_points = search.r_max, search.keep_prob, plan.steps, plan.curve_points
    progress, cancelled = search.progress, search.cancelled
    n = clean_kept.shape[0]
    levels = np.linspace(0.0, r_max, curve_points) if curve_points >= 2 else np.zeros(0)
    total = max(1, (levels.size - 1 if levels.size else 0) + steps + 1)
    accuracy = np.full(levels.size, np.nan)
    result = BasinResult(
        radius=np.full(n, np.nan),
        censored=np.zeros(n, bool),
        clean_kept=clean_kept,
        curve_levels=levels,
        curve_accuracy=accuracy,
        resolution=r_max / 2 ** (steps + 1),
    )
    done = 0

    def tick(message: str) -> None:
        nonlocal done
        done += 1
        progress(min(1.0, done / total), message)
        if cancelled():
            raise Cancelled

    everyone = np.arange(n)
    try:
        for i, level in enumerate(levels):
            if level == 0.0:
                accuracy[i] = float(clean_kept.mean())
                continue
            accuracy[i] = float(keep_fraction(everyone, np.full(n, level)).mean())
            tick(f"{label}: accuracy curve {i + 1}/{levels.size}")
        result.radius, result.censored = bisect_radii(
            keep_fraction,
            clean_kept,
            r_max=r_max,
            steps=steps,
            keep_prob=keep_prob,
            on_step=lambda s: tick(f"{label}: bisection step {s}/{steps}"),
        )
    except Cancelled:
        result.cancelled = True
        result.radius = np.full(n, np.nan)
    result.forward_rows, result.forward_calls = runner.rows, runner.calls
    return result


def sample_basins(
    predict: Predict, inputs: Inputs, reference: np.ndarray, search: Search, *, key: str, relative: bool = True
) -> BasinResult:
    """Sample-space attraction basins of the n samples in ``inputs`` (``inputs[key]`` is perturbed).

    Draw k of sample i is regenerated from the seed ``(seed, i)`` whenever needed, so memory
    stays at one batch of rows while the draws stay fixed across levels. ``budget_seconds``:
    see the module docstring (the timed probe is the clean forward pass over the n samples).
    """
    runner = _Runner(search.max_batch_size)
    t0 = time.perf_counter()
    clean = _same(runner.predict(predict, inputs), reference)
    per_row = (time.perf_counter() - t0) / max(clean.size, 1)

    def keep_fraction_for(plan: SearchPlan) -> KeepFraction:
        sub, ref = _take(inputs, np.arange(plan.samples)), np.asarray(reference)[: plan.samples]
        draws, seed = plan.draws, search.seed
        x = np.asarray(sub[key])
        n = x.shape[0]
        flat = x.reshape(n, -1).astype(np.float64)
        scale = np.linalg.norm(flat, axis=1) / math.sqrt(max(flat.shape[1], 1)) if relative else np.ones(n)

        def keep_fraction(idx: np.ndarray, level: np.ndarray) -> np.ndarray:
            kept = np.zeros(idx.size)
            per_call = max(1, runner.max_batch_size // draws)  # samples per forward batch
            for lo in range(0, idx.size, per_call):
                chunk = idx[lo : lo + per_call]
                noise = np.stack(
                    [np.random.default_rng([seed, int(i)]).standard_normal((draws, *x.shape[1:])) for i in chunk]
                )
                sigma = (level[lo : lo + per_call] * scale[chunk]).reshape(-1, 1, *([1] * (x.ndim - 1)))
                rows = {k: np.repeat(np.asarray(v)[chunk], draws, axis=0) for k, v in sub.items()}
                rows[key] = (x[chunk][:, None] + sigma * noise).reshape(-1, *x.shape[1:]).astype(x.dtype, copy=False)
                pred = runner.predict(predict, rows)
                same = _same(pred, np.repeat(ref[chunk], draws, axis=0)).reshape(chunk.size, draws)
                kept[lo : lo + per_call] = same.mean(axis=1)
            return kept

        return keep_fraction

    return _basins("sample basins", search, runner, clean, lambda q: q.rows() * per_row, keep_fraction_for)


def _basins(
    label: str,
    search: Search,
    runner: _Runner,
    clean: np.ndarray,
    cost: Callable[[SearchPlan], float],
    keep_fraction_for: Callable[[SearchPlan], KeepFraction],
) -> BasinResult:
    """Shared by both spaces: the plan that fits the budget, then the search of its samples."""
    want = SearchPlan(clean.size, search.draws, search.steps, search.curve_points)
    plan, early = _plan(want, cost, search.budget_seconds, search.seed, clean, runner)
    if early is not None:
        return early
    result = _search(keep_fraction_for(plan), clean[: plan.samples], runner, search, plan, label)
    result.sample_indices = np.arange(plan.samples)
    result.sampled = describe_plan(plan, want, search.seed)
    return result


def _plan(
    want: SearchPlan, cost: Callable[[SearchPlan], float], budget: float, seed: int, clean: np.ndarray, runner: _Runner
) -> tuple[SearchPlan, BasinResult | None]:
    """The plan that fits the budget, or (want, an unsearched result saying why) when none does."""
    if not math.isfinite(budget) or cost(want) <= budget:
        return want, None
    plan = fit_budget(want, cost, budget)
    if plan is not None:
        return plan, None
    result = BasinResult(
        radius=np.full(clean.size, np.nan),
        censored=np.zeros(clean.size, bool),
        clean_kept=clean,
        curve_levels=np.zeros(0),
        curve_accuracy=np.zeros(0),
        resolution=math.nan,
        forward_rows=runner.rows,
        forward_calls=runner.calls,
        over_budget=_over_budget(want, cost, budget),
    )
    return want, result


class FirstData:
    """The first ``samples`` rows of a run's data (every model input) and their labels, batch by batch.

    The basin search needs whole samples to perturb, so it keeps the first ones (deterministic
    under any batching); labels count only if every batch had them.
    """

    def __init__(self, samples: int) -> None:
        self.samples = samples
        self.data: dict[str, list[np.ndarray]] = {}
        self.labels: list[np.ndarray] = []
        self.has_labels = True
        self.kept = 0

    def update(self, data: Mapping[str, np.ndarray], labels: np.ndarray | None) -> None:
        if not data:
            return
        take = min(self.samples - self.kept, next(iter(data.values())).shape[0])
        if take <= 0:
            return
        for key, value in data.items():
            self.data.setdefault(key, []).append(np.array(value[:take]))
        if labels is None:
            self.has_labels = False
        else:
            self.labels.append(np.asarray(labels[:take]))
        self.kept += take

    def inputs(self) -> dict[str, np.ndarray]:
        return {k: np.concatenate(v) for k, v in self.data.items()}

    def reference_labels(self) -> np.ndarray | None:
        """The kept samples' labels as class indices (one-hot rows argmax-ed); None without labels."""
        if not (self.has_labels and self.labels):
            return None
        ref = np.concatenate(self.labels)
        return np.argmax(ref, axis=-1) if ref.ndim == 2 and ref.shape[1] > 1 else ref.reshape(self.kept, *ref.shape[1:])


def predict_batched(predict: Predict, inputs: Inputs, max_batch_size: int = 256) -> np.ndarray:
    """Labels for all rows of ``inputs``, in batches of at most ``max_batch_size``."""
    return _Runner(max_batch_size).predict(predict, inputs)


def rms(a: np.ndarray) -> float:
    """Root mean square of a tensor: the layer-normalising scale of weight noise."""
    a = np.asarray(a, dtype=np.float64)
    return float(np.sqrt(np.mean(a**2))) if a.size else 0.0


def weight_basins(
    predict_with_weights: PredictWithWeights,
    predict: Predict,
    inputs: Inputs,
    reference: np.ndarray,
    weights: Mapping[str, Mapping[str, np.ndarray]],
    search: Search,
) -> BasinResult:
    """Weight-space attraction basins: ``weights`` ({layer: {"weight": W, "bias": b}}) are perturbed.

    A weight draw is one perturbed network, shared by all samples at the same level; in a
    bisection round the samples are grouped by their current level (bisection midpoints are
    dyadic, so round t has at most min(n, 2^t) distinct levels), giving at most
    draws x min(n, 2^t) forward calls per round. Draw k of tensor (layer, name) is regenerated
    from the seed ``(seed, k, tensor index)``. ``budget_seconds``: see the module docstring
    (probes: the clean pass times a row, one unperturbed-weights call on one row times a call).
    """
    runner = _Runner(search.max_batch_size)
    tensors = [(layer, name, np.asarray(w)) for layer, ws in weights.items() for name, w in ws.items()]
    scales = [rms(w) for _, _, w in tensors]
    t0 = time.perf_counter()
    clean = _same(runner.predict(predict, inputs), reference)
    per_row = (time.perf_counter() - t0) / max(clean.size, 1)
    per_call = 0.0
    if math.isfinite(search.budget_seconds) and clean.size:
        t0 = time.perf_counter()
        runner.predict(lambda b: predict_with_weights(b, weights), _take(inputs, np.arange(1)))
        per_call = time.perf_counter() - t0

    def perturbed(level: float, noise: list[np.ndarray]) -> dict[str, dict[str, np.ndarray]]:
        out: dict[str, dict[str, np.ndarray]] = {}
        for (layer, name, w), s, g in zip(tensors, scales, noise, strict=True):
            out.setdefault(layer, {})[name] = (w + (level * s) * g).astype(w.dtype, copy=False)
        return out

    def keep_fraction_for(plan: SearchPlan) -> KeepFraction:
        sub, ref = _take(inputs, np.arange(plan.samples)), np.asarray(reference)[: plan.samples]

        def keep_fraction(idx: np.ndarray, level: np.ndarray) -> np.ndarray:
            kept = np.zeros(idx.size)
            groups = [(lv, np.flatnonzero(level == lv)) for lv in np.unique(level)]
            for k in range(plan.draws):
                noise = [
                    np.random.default_rng([search.seed, k, t]).standard_normal(w.shape)
                    for t, (_, _, w) in enumerate(tensors)
                ]
                for lv, members in groups:
                    wts = perturbed(float(lv), noise)
                    pred = runner.predict(lambda b, wts=wts: predict_with_weights(b, wts), _take(sub, idx[members]))
                    kept[members] += _same(pred, ref[idx[members]])
            return kept / plan.draws

        return keep_fraction

    def cost(q: SearchPlan) -> float:
        return q.weight_calls() * per_call + q.rows() * per_row

    return _basins("weight basins", search, runner, clean, cost, keep_fraction_for)


def summarize(result: BasinResult) -> dict[str, Any]:
    """Mean/median/std of the radii (all samples; misclassified count as 0), counts, and what
    the budget planner kept (``sampled``, ``sample_indices``) or why nothing ran (``reason``)."""
    r = result.radius
    ok = np.isfinite(r)
    extra: dict[str, Any] = {}
    if result.sample_indices is not None:
        extra["sample_indices"] = result.sample_indices
    if result.sampled:
        extra["sampled"] = result.sampled
        extra["warning"] = f"reduced to fit budget_seconds: {result.sampled}"
    if result.over_budget:
        extra["reason"] = result.over_budget
    return {
        **extra,
        "radius_mean": float(r[ok].mean()) if ok.any() else math.nan,
        "radius_median": float(np.median(r[ok])) if ok.any() else math.nan,
        "radius_std": float(r[ok].std()) if ok.any() else math.nan,
        "n_censored": int(result.censored.sum()),
        "n_misclassified": int((~result.clean_kept).sum()),
        "clean_accuracy": float(result.clean_kept.mean()) if r.size else math.nan,
    }
