"""Figures for a run's results (matplotlib): ``run.plot(metric)`` and the HTML report use these.

Plotting is driven by the result kinds, so third-party metrics get sensible figures too:
scalars per layer become bars (or lines over checkpoints for a series), curves are overlaid
per layer, vectors become per-layer histograms, and a few metrics have a dedicated view
(stacked mode fractions, log-log box counting).
"""

from __future__ import annotations

from collections import defaultdict
from typing import TYPE_CHECKING, Any

import numpy as np

from .results import Curve, decode_item

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from .results import Run

MAX_PANELS = 6


def _values(run: "Run", metric: str) -> dict[int, dict[str, dict[str, Any]]]:
    """checkpoint -> layer -> key -> value, successful results only."""
    out: dict[int, dict[str, dict[str, Any]]] = defaultdict(dict)
    for r in run.results:
        if r.metric == metric and r.status == "ok":
            out[r.checkpoint][r.layer or "(model)"] = {i.key: decode_item(i) for i in r.items}
    return out


def _keys(per_layer: dict[str, dict[str, Any]], kind: type | tuple[type, ...]) -> list[str]:
    keys: list[str] = []
    for values in per_layer.values():
        keys += [k for k, v in values.items() if isinstance(v, kind) and k not in keys]
    return keys


def _is_vector(v: Any) -> bool:
    return isinstance(v, np.ndarray) and v.ndim == 1 and v.size > 1 and v.dtype.kind in "fiu"


def _is_bookkeeping(key: str) -> bool:
    """Vectors that index samples rather than measure anything (e.g. sample_indices)."""
    return "indices" in key or key.endswith("_index")


def _partition_keys(per_layer: dict[str, dict[str, Any]], scalars: list[str]) -> list[str]:
    """``frac_*`` headline keys that add up to 1 on every layer (e.g. mode fractions): drawn stacked."""
    fractions = [k for k in scalars if k.startswith("frac_")]
    if len(fractions) < 2:
        return []
    for values in per_layer.values():
        total = sum(float(values.get(k, np.nan)) for k in fractions)
        if not np.isfinite(total) or abs(total - 1.0) > 1e-6:
            return []
    return fractions


def plot_metric(run: "Run", metric: str) -> "Figure":
    """One figure for one metric of a run (raises KeyError when the metric has no successful result)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    by_ckpt = _values(run, metric)
    if not by_ckpt:
        raise KeyError(f"no successful results for metric '{metric}' in run {run.id}")
    series = len(by_ckpt) > 1
    first = by_ckpt[min(by_ckpt)]
    scalars = run.headline_keys(metric, limit=MAX_PANELS)
    curves = _keys(first, Curve)[:MAX_PANELS]
    vectors = [k for k in _keys(first, np.ndarray)
               if not _is_bookkeeping(k) and any(_is_vector(v.get(k)) for v in first.values())][:3]

    panels: list[tuple[str, str]] = []
    fractions = _partition_keys(first, scalars)
    if fractions and not series:
        panels.append(("stacked", ",".join(fractions)))
        scalars = [k for k in scalars if k not in fractions]
    panels += [("scalar", k) for k in scalars] + [("curve", k) for k in curves] + [("vector", k) for k in vectors]
    panels = panels[:MAX_PANELS] or [("empty", "")]
    cols = min(3, len(panels))
    rows = int(np.ceil(len(panels) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(4.6 * cols, 3.4 * rows), squeeze=False)
    for ax in axes.flat[len(panels):]:
        ax.set_visible(False)
    layers = list(first)
    for ax, (kind, key) in zip(axes.flat, panels):
        if kind == "stacked":
            bottom = np.zeros(len(layers))
            for k in key.split(","):
                vals = np.array([float(first[l].get(k, 0.0)) for l in layers])
                ax.bar(range(len(layers)), vals, bottom=bottom, label=k.removeprefix("frac_"))
                bottom += vals
            ax.set_xticks(range(len(layers)), layers, rotation=45, ha="right", fontsize=7)
            ax.set_ylabel("fraction")
            ax.legend(fontsize=7)
        elif kind == "scalar" and series:
            ckpts = sorted(by_ckpt)
            for layer in layers:
                ys = [float(by_ckpt[c].get(layer, {}).get(key, np.nan)) for c in ckpts]
                ax.plot(ckpts, ys, marker="o", label=layer)
            ax.set_xlabel("checkpoint")
            ax.set_ylabel(key)
            ax.legend(fontsize=6)
        elif kind == "scalar":
            vals = [float(first[l].get(key, np.nan)) for l in layers]
            ax.bar(range(len(layers)), vals, color="tab:blue")
            ax.set_xticks(range(len(layers)), layers, rotation=45, ha="right", fontsize=7)
            ax.set_ylabel(key)
        elif kind == "curve":
            for layer in layers:
                c = first[layer].get(key)
                if isinstance(c, Curve) and c.x.size:
                    ax.plot(c.x, c.y, label=layer)
                    ax.set_xlabel(c.x_label)
                    ax.set_ylabel(c.y_label)
            if "log" in key or key in ("box_counts", "nb_curve"):
                ax.set_xscale("log")
                ax.set_yscale("log")
            ax.legend(fontsize=6)
        elif kind == "vector":
            for layer in layers:
                v = first[layer].get(key)
                if _is_vector(v):
                    finite = v[np.isfinite(v)]
                    if finite.size:
                        ax.hist(finite, bins=40, alpha=0.5, label=layer, density=True)
            ax.set_xlabel(key)
            ax.set_ylabel("density")
            ax.legend(fontsize=6)
        else:
            ax.text(0.5, 0.5, "no plottable values", ha="center", va="center")
            ax.set_axis_off()
        if kind != "empty":
            ax.set_title(key if kind != "stacked" else "fractions", fontsize=9)
    fig.suptitle(metric + (" (over checkpoints)" if series else ""), fontsize=11)
    fig.tight_layout()
    return fig
