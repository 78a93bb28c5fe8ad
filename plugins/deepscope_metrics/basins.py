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
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

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
    keep_fraction: KeepFraction,
    clean_kept: np.ndarray,
    runner: _Runner,
    *,
    r_max: float,
    steps: int,
    keep_prob: float,
    curve_points: int,
    progress: Callable[[float, str], None],
    cancelled: Callable[[], bool],
    label: str,
) -> BasinResult:
    """Shared driver: noise-accuracy curve, then per-sample bisection, with progress/cancel checks."""
    n = clean_kept.shape[0]
    levels = np.linspace(0.0, r_max, curve_points) if curve_points >= 2 else np.zeros(0)
    total = max(1, (levels.size - 1 if levels.size else 0) + steps + 1)
    accuracy = np.full(levels.size, np.nan)
    result = BasinResult(
        radius=np.full(n, np.nan), censored=np.zeros(n, bool), clean_kept=clean_kept,
        curve_levels=levels, curve_accuracy=accuracy, resolution=r_max / 2 ** (steps + 1),
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
            keep_fraction, clean_kept, r_max=r_max, steps=steps, keep_prob=keep_prob,
            on_step=lambda s: tick(f"{label}: bisection step {s}/{steps}"),
        )
    except Cancelled:
        result.cancelled = True
        result.radius = np.full(n, np.nan)
    result.forward_rows, result.forward_calls = runner.rows, runner.calls
    return result


def sample_basins(
    predict: Predict,
    inputs: Inputs,
    reference: np.ndarray,
    *,
    key: str,
    draws: int = 32,
    steps: int = 10,
    r_max: float = 2.0,
    keep_prob: float = 0.5,
    relative: bool = True,
    curve_points: int = 8,
    seed: int = 0,
    max_batch_size: int = 256,
    progress: Callable[[float, str], None] = lambda f, m: None,
    cancelled: Callable[[], bool] = lambda: False,
) -> BasinResult:
    """Sample-space attraction basins of the n samples in ``inputs`` (``inputs[key]`` is perturbed).

    Draw k of sample i is regenerated from the seed ``(seed, i)`` whenever needed, so memory
    stays at one batch of rows while the draws stay fixed across levels.
    """
    runner = _Runner(max_batch_size)
    x = np.asarray(inputs[key])
    n = x.shape[0]
    flat = x.reshape(n, -1).astype(np.float64)
    scale = np.linalg.norm(flat, axis=1) / math.sqrt(max(flat.shape[1], 1)) if relative else np.ones(n)
    clean_kept = _same(runner.predict(predict, inputs), reference)

    def keep_fraction(idx: np.ndarray, level: np.ndarray) -> np.ndarray:
        kept = np.zeros(idx.size)
        per_call = max(1, runner.max_batch_size // draws)  # samples per forward batch
        for lo in range(0, idx.size, per_call):
            chunk = idx[lo : lo + per_call]
            noise = np.stack([np.random.default_rng([seed, int(i)]).standard_normal((draws, *x.shape[1:])) for i in chunk])
            sigma = (level[lo : lo + per_call] * scale[chunk]).reshape(-1, 1, *([1] * (x.ndim - 1)))
            rows = {k: np.repeat(np.asarray(v)[chunk], draws, axis=0) for k, v in inputs.items()}
            rows[key] = (x[chunk][:, None] + sigma * noise).reshape(-1, *x.shape[1:]).astype(x.dtype, copy=False)
            pred = runner.predict(predict, rows)
            same = _same(pred, np.repeat(reference[chunk], draws, axis=0)).reshape(chunk.size, draws)
            kept[lo : lo + per_call] = same.mean(axis=1)
        return kept

    return _search(
        keep_fraction, clean_kept, runner, r_max=r_max, steps=steps, keep_prob=keep_prob,
        curve_points=curve_points, progress=progress, cancelled=cancelled, label="sample basins",
    )


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
    *,
    draws: int = 16,
    steps: int = 8,
    r_max: float = 2.0,
    keep_prob: float = 0.5,
    curve_points: int = 8,
    seed: int = 0,
    max_batch_size: int = 256,
    progress: Callable[[float, str], None] = lambda f, m: None,
    cancelled: Callable[[], bool] = lambda: False,
) -> BasinResult:
    """Weight-space attraction basins: ``weights`` ({layer: {"weight": W, "bias": b}}) are perturbed.

    A weight draw is one perturbed network, shared by all samples at the same level; in a
    bisection round the samples are grouped by their current level (bisection midpoints are
    dyadic, so round t has at most min(n, 2^t) distinct levels), giving at most
    draws x min(n, 2^t) forward calls per round. Draw k of tensor (layer, name) is regenerated
    from the seed ``(seed, k, tensor index)``.
    """
    runner = _Runner(max_batch_size)
    tensors = [(layer, name, np.asarray(w)) for layer, ws in weights.items() for name, w in ws.items()]
    scales = [rms(w) for _, _, w in tensors]
    clean_kept = _same(runner.predict(predict, inputs), reference)

    def perturbed(draw: int, level: float, noise: list[np.ndarray]) -> dict[str, dict[str, np.ndarray]]:
        out: dict[str, dict[str, np.ndarray]] = {}
        for (layer, name, w), s, g in zip(tensors, scales, noise, strict=True):
            out.setdefault(layer, {})[name] = (w + (level * s) * g).astype(w.dtype, copy=False)
        return out

    def keep_fraction(idx: np.ndarray, level: np.ndarray) -> np.ndarray:
        kept = np.zeros(idx.size)
        groups = [(lv, np.flatnonzero(level == lv)) for lv in np.unique(level)]
        for k in range(draws):
            noise = [np.random.default_rng([seed, k, t]).standard_normal(w.shape) for t, (_, _, w) in enumerate(tensors)]
            for lv, members in groups:
                wts = perturbed(k, float(lv), noise)
                pred = runner.predict(lambda b, wts=wts: predict_with_weights(b, wts), _take(inputs, idx[members]))
                kept[members] += _same(pred, reference[idx[members]])
        return kept / draws

    return _search(
        keep_fraction, clean_kept, runner, r_max=r_max, steps=steps, keep_prob=keep_prob,
        curve_points=curve_points, progress=progress, cancelled=cancelled, label="weight basins",
    )


def summarize(result: BasinResult) -> dict[str, float | int]:
    """Mean/median/std of the radii (all samples; misclassified count as 0) and counts."""
    r = result.radius
    ok = np.isfinite(r)
    return {
        "radius_mean": float(r[ok].mean()) if ok.any() else math.nan,
        "radius_median": float(np.median(r[ok])) if ok.any() else math.nan,
        "radius_std": float(r[ok].std()) if ok.any() else math.nan,
        "n_censored": int(result.censored.sum()),
        "n_misclassified": int((~result.clean_kept).sum()),
        "clean_accuracy": float(result.clean_kept.mean()) if r.size else math.nan,
    }
