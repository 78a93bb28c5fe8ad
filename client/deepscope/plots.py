"""Figures for a run's results (matplotlib): ``run.plot(metric)`` and the HTML report use these.

Plotting is driven by the result kinds, so third-party metrics get sensible figures too:
scalars per layer become horizontal bars (lines over named checkpoints for a series), curves
are overlaid per layer, vectors become histograms (box plots past a few layers), and mode
fractions are stacked. Built for real models as much as for toys:

- a layer keeps one colour in every panel of every metric (``layer_colours``): a categorical
  palette up to 20 layers, then a colour ramp along depth, so colours never repeat;
- a series shows every checkpoint: scalars over checkpoint names, curves and vectors as one
  panel per checkpoint (small multiples);
- horizontal bars and box plots keep 60+ layer labels readable; legends only while short,
  then a depth colour bar;
- an outlier (a ``cv`` of 1500 among values near 1) does not flatten the rest: the axis is
  clipped to the bulk of the data and the figure says which values lie beyond it.
"""

from __future__ import annotations

from collections import defaultdict
from typing import TYPE_CHECKING, Any, TypeGuard

import numpy as np

from .results import decode_item
from .values import Curve

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    from .results import Run

MAX_PANELS = 6
#: Series panels of curves/vectors: at most this many checkpoints (evenly spaced, first and last kept).
MAX_CHECKPOINT_PANELS = 6
#: Up to this many layers get a legend; beyond it a colour bar along depth.
MAX_LEGEND = 12
#: Vectors of up to this many layers are overlaid histograms; more become box plots.
MAX_HISTOGRAMS = 5
MODEL = "(model)"


# ---------------------------------------------------------------- colours and names


def run_layers(run: Run) -> list[str]:
    """Every layer with a result, in first-seen order (the server reports layers in graph order)."""
    seen: dict[str, None] = {}
    for r in run.results:
        seen.setdefault(r.layer or MODEL, None)
    return [layer for layer in seen if layer != MODEL] + ([MODEL] if MODEL in seen else [])


def layer_colours(run: Run) -> dict[str, Any]:
    """One colour per layer for the whole run: tab10/tab20 while they suffice, then a ramp over depth."""
    from matplotlib import colormaps

    layers = [layer for layer in run_layers(run) if layer != MODEL]
    n = len(layers)
    if n <= 10:
        colours = [colormaps["tab10"](i) for i in range(n)]
    elif n <= 20:
        colours = [colormaps["tab20"](i) for i in range(n)]
    else:
        colours = [colormaps["turbo"](v) for v in np.linspace(0.05, 0.95, n)]
    out: dict[str, Any] = dict(zip(layers, colours))
    out[MODEL] = (0.2, 0.2, 0.2, 1.0)
    return out


def checkpoint_names(run: Run) -> list[str]:
    """Display names of the checkpoints, made unique (``0: model.onnx``) when two share a name."""
    count = max([r.checkpoint for r in run.results] + [len(run.info.config.models) - 1, 0]) + 1
    names = list(run.info.model_names) or list(run.info.config.models)
    names = [names[i] if i < len(names) and names[i] else f"checkpoint {i}" for i in range(count)]
    return names if len(set(names)) == len(names) else [f"{i}: {n}" for i, n in enumerate(names)]


# ---------------------------------------------------------------- data helpers


def _values(run: Run, metric: str) -> dict[int, dict[str, dict[str, Any]]]:
    """checkpoint -> layer -> key -> value, successful results only."""
    out: dict[int, dict[str, dict[str, Any]]] = defaultdict(dict)
    for r in run.results:
        if r.metric == metric and r.status == "ok":
            out[r.checkpoint][r.layer or MODEL] = {i.key: decode_item(i) for i in r.items}
    return out


def _keys(per_ckpt: dict[int, dict[str, dict[str, Any]]], kind: type | tuple[type, ...]) -> list[str]:
    keys: list[str] = []
    for per_layer in per_ckpt.values():
        for values in per_layer.values():
            keys += [k for k, v in values.items() if isinstance(v, kind) and k not in keys]
    return keys


def _is_vector(v: Any) -> TypeGuard[np.ndarray]:
    return isinstance(v, np.ndarray) and v.ndim == 1 and v.size > 1 and v.dtype.kind in "fiu"


def _is_bookkeeping(key: str) -> bool:
    """Vectors that index samples rather than measure anything (e.g. sample_indices)."""
    return "indices" in key or key.endswith("_index")


def _scalar(values: dict[str, Any] | None, key: str) -> float:
    value = (values or {}).get(key)
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else np.nan


def _partition_keys(per_layer: dict[str, dict[str, Any]], scalars: list[str]) -> list[str]:
    """``frac_*`` headline keys that add up to 1 on every layer (e.g. mode fractions): drawn stacked."""
    fractions = [k for k in scalars if k.startswith("frac_")]
    if len(fractions) < 2:
        return []
    for values in per_layer.values():
        total = sum(_scalar(values, k) for k in fractions)
        if not np.isfinite(total) or abs(total - 1.0) > 1e-6:
            return []
    return fractions


def robust_range(values: np.ndarray) -> tuple[float, float] | None:
    """Axis limits covering the bulk of the values when a few lie far outside it, else None.

    Outliers are values beyond 6 interquartile ranges of the quartiles (a wide boxplot fence),
    and only while they are few (at most 5%, at least one): many far values are a spread, not outliers.
    """
    finite = values[np.isfinite(values)]
    if finite.size < 5:
        return None
    q1, q3 = np.percentile(finite, [25, 75])
    spread = max(q3 - q1, 1e-12 * max(abs(q1), abs(q3), 1.0))
    inside = finite[(finite >= q1 - 6 * spread) & (finite <= q3 + 6 * spread)]
    if inside.size == finite.size or inside.size == 0 or finite.size - inside.size > max(1, 0.05 * finite.size):
        return None
    lo, hi = float(inside.min()), float(inside.max())
    pad = 0.08 * (hi - lo or abs(hi) or 1.0)
    return min(lo - pad, 0.0) if lo >= 0 else lo - pad, hi + pad


def log_scale(values: np.ndarray) -> tuple[str, dict[str, float]] | None:
    """For non-negative values whose positive part spans more than three decades: a log axis
    (symlog when zeros occur, linear below the 5th percentile of the positive values), else None."""
    finite = values[np.isfinite(values)]
    positive = finite[finite > 0]
    if positive.size < 2 or (finite < 0).any() or positive.max() / positive.min() <= 1e3:
        return None
    if positive.size == finite.size:
        return "log", {}
    return "symlog", {"linthresh": float(np.percentile(positive, 5))}


def _scale(ax: Axes, values: np.ndarray, labels: list[str], axis: str) -> None:
    """A log axis for wide non-negative values, else clip a few outliers (with a note saying which)."""
    scale = log_scale(values)
    if scale is not None:
        (ax.set_xscale if axis == "x" else ax.set_yscale)(scale[0], **scale[1])
        if scale[0] == "symlog":  # no empty negative half
            (ax.set_xlim if axis == "x" else ax.set_ylim)(0, None)
        return
    limits = robust_range(values)
    if limits is not None:
        outside = [
            (label, float(v)) for label, v in zip(labels, values) if np.isfinite(v) and not limits[0] <= v <= limits[1]
        ]
        _clip_note(ax, limits, outside, axis)


def _clip_note(ax: Axes, limits: tuple[float, float], outside: list[tuple[str, float]], axis: str) -> None:
    (ax.set_xlim if axis == "x" else ax.set_ylim)(*limits)
    shown = ", ".join(f"{name}={value:.3g}" for name, value in outside[:3])
    more = f" +{len(outside) - 3}" if len(outside) > 3 else ""
    ax.text(
        0.99,
        0.01,
        f"axis clipped; beyond: {shown}{more}",
        transform=ax.transAxes,
        ha="right",
        va="bottom",
        fontsize=7,
        color="#a00",
        bbox={"facecolor": "white", "alpha": 0.8, "edgecolor": "none"},
    )


def _label_fontsize(n: int) -> float:
    return 8.0 if n <= 20 else max(4.5, 8.0 - (n - 20) / 12)


def _thin_ticks(ax: Axes, labels: list[str], axis: str, max_labels: int = 70) -> None:
    """Every label up to ``max_labels``; beyond, every k-th so they never overlap."""
    step = max(1, int(np.ceil(len(labels) / max_labels)))
    ticks = list(range(0, len(labels), step))
    setter = ax.set_yticks if axis == "y" else ax.set_xticks
    setter(ticks, [labels[i] for i in ticks], fontsize=_label_fontsize(len(ticks)))


def _legend_or_colourbar(ax: Axes, layers: list[str], colours: dict[str, Any]) -> None:
    """A legend outside the axes while it is short; for deep models a colour bar of layer depth."""
    drawn = [layer for layer in layers if layer in colours]
    if not drawn:
        return
    if len(drawn) <= MAX_LEGEND:
        handles, labels = ax.get_legend_handles_labels()
        if handles:
            ax.legend(handles, labels, fontsize=7.5, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
        return
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import ListedColormap

    cmap = ListedColormap([colours[layer] for layer in drawn])
    bar = ax.figure.colorbar(ScalarMappable(cmap=cmap), ax=ax, pad=0.02, fraction=0.05)
    ticks = np.linspace(0, len(drawn) - 1, min(6, len(drawn))).round().astype(int)
    bar.set_ticks(((ticks + 0.5) / len(drawn)).tolist(), labels=[drawn[i] for i in ticks], fontsize=6.5)
    bar.set_label("layer (by depth)", fontsize=7.5)


# ---------------------------------------------------------------- panels


def _bars(ax: Axes, layers: list[str], vals: np.ndarray, key: str, colours: dict[str, Any]) -> None:
    """Horizontal bars, first layer on top: labels stay readable for deep models."""
    pos = np.arange(len(layers))
    log = log_scale(vals) is not None
    limits = None if log else robust_range(vals)
    shown = vals if limits is None else np.clip(vals, *limits)
    ax.barh(pos, np.nan_to_num(shown, nan=0.0), color=[colours.get(layer, "tab:blue") for layer in layers], height=0.8)
    for i in [i for i, v in enumerate(vals) if not np.isfinite(v)]:
        ax.text(
            0,
            i,
            " n/a",
            va="center",
            fontsize=_label_fontsize(len(layers)),
            color="#777",
            transform=ax.get_yaxis_transform(),
        )
    _thin_ticks(ax, layers, "y")
    ax.set_ylim(len(layers) - 0.5, -0.5)
    ax.set_xlabel(key, fontsize=8)
    if not log:
        ax.axvline(0, color="#999", lw=0.6)
    _scale(ax, vals, layers, "x")


def _stacked(ax: Axes, layers: list[str], per_layer: dict[str, dict[str, Any]], keys: list[str]) -> None:
    left = np.zeros(len(layers))
    for k in keys:
        vals = np.nan_to_num(np.array([_scalar(per_layer.get(layer), k) for layer in layers]))
        ax.barh(np.arange(len(layers)), vals, left=left, label=k.removeprefix("frac_"), height=0.8)
        left += vals
    _thin_ticks(ax, layers, "y")
    ax.set_ylim(len(layers) - 0.5, -0.5)
    ax.set_xlabel("fraction", fontsize=8)
    ax.legend(fontsize=7.5, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)


def _series(
    ax: Axes,
    by_ckpt: dict[int, dict[str, dict[str, Any]]],
    layers: list[str],
    key: str,
    names: list[str],
    colours: dict[str, Any],
) -> None:
    """A scalar over checkpoints: x is the checkpoint names, one line per layer in its colour."""
    ckpts = sorted(by_ckpt)
    drawn: list[str] = []
    everything = []
    for layer in layers:
        ys = np.array([_scalar(by_ckpt[c].get(layer), key) for c in ckpts])
        if not np.isfinite(ys).any():
            continue  # no legend entry without a line
        ax.plot(range(len(ckpts)), ys, marker="o", ms=3, lw=1.2, color=colours.get(layer), label=layer)
        drawn.append(layer)
        everything.append(ys)
    ax.set_xticks(
        range(len(ckpts)),
        [names[c] if c < len(names) else str(c) for c in ckpts],
        rotation=20 if max((len(names[c]) for c in ckpts if c < len(names)), default=0) > 12 else 0,
        ha="right" if len(ckpts) > 2 else "center",
        fontsize=7.5,
    )
    ax.set_xlabel("checkpoint", fontsize=8)
    ax.set_ylabel(key, fontsize=8)
    if everything:
        _scale(ax, np.concatenate(everything), [layer for layer, ys in zip(drawn, everything) for _ in ys], "y")
    _legend_or_colourbar(ax, drawn, colours)


def _curves(
    ax: Axes, per_layer: dict[str, dict[str, Any]], layers: list[str], key: str, colours: dict[str, Any]
) -> None:
    drawn = []
    for layer in layers:
        c = per_layer.get(layer, {}).get(key)
        if isinstance(c, Curve) and c.x.size and np.isfinite(c.y).any():
            ax.plot(c.x, c.y, color=colours.get(layer), lw=1.1, label=layer)
            ax.set_xlabel(c.x_label, fontsize=8)
            ax.set_ylabel(c.y_label, fontsize=8)
            drawn.append(layer)
    if "log" in key or key in ("box_counts", "nb_curve"):
        ax.set_xscale("log")
        ax.set_yscale("log")
    if not drawn:
        ax.text(0.5, 0.5, "no values", ha="center", va="center", transform=ax.transAxes, color="#777")
    _legend_or_colourbar(ax, drawn, colours)


def _vectors(
    ax: Axes, per_layer: dict[str, dict[str, Any]], layers: list[str], key: str, colours: dict[str, Any]
) -> None:
    """Per-layer distributions: overlaid histograms for a few layers, box plots for many."""
    data = [
        (layer, v[np.isfinite(v)])
        for layer in layers
        if _is_vector(v := per_layer.get(layer, {}).get(key)) and np.isfinite(v).any()
    ]
    if not data:
        ax.text(0.5, 0.5, "no values", ha="center", va="center", transform=ax.transAxes, color="#777")
        return
    pooled = np.concatenate([v for _, v in data])
    lo, hi = np.percentile(pooled, [0.5, 99.5])
    scale = log_scale(pooled)
    clipped = scale is None and bool((pooled < lo).any() or (pooled > hi).any()) and hi > lo and pooled.size >= 50
    if scale is not None:
        ax.set_xscale(scale[0], **scale[1])
        if scale[0] == "symlog":
            ax.set_xlim(0, None)
    if len(data) <= MAX_HISTOGRAMS:
        if scale is not None:
            positive = pooled[pooled > 0]
            edges = np.geomspace(positive.min(), positive.max(), 40)
            bins: int | list[float] = (np.concatenate([[0.0], edges]) if scale[0] == "symlog" else edges).tolist()
        else:
            bins = np.linspace(lo, hi, 40).tolist() if clipped else 40
        for layer, v in data:
            ax.hist(v, bins=bins, alpha=0.55, density=True, color=colours.get(layer), label=layer)
        ax.set_xlabel(key, fontsize=8)
        ax.set_ylabel("density", fontsize=8)
        _legend_or_colourbar(ax, [layer for layer, _ in data], colours)
    else:
        _boxes(ax, data, colours, key)
    if clipped:
        ax.set_xlim(lo, hi)
        ax.text(
            0.99,
            0.99,
            "x: 0.5-99.5th percentile",
            transform=ax.transAxes,
            ha="right",
            va="top",
            fontsize=7,
            color="#a00",
        )


def _boxes(ax: Axes, data: list[tuple[str, np.ndarray]], colours: dict[str, Any], key: str) -> None:
    """One box per layer (quartiles, median tick, whiskers to the furthest value within 1.5 IQR).

    Drawn as three collections rather than matplotlib's boxplot (six artists per box), which
    took seconds per panel for a 60-layer model.
    """
    q1, med, q3 = np.array([np.percentile(v, [25, 50, 75]) for _, v in data]).T
    iqr = q3 - q1
    low = np.array([v[v >= a - 1.5 * r].min() for (_, v), a, r in zip(data, q1, iqr)])
    high = np.array([v[v <= b + 1.5 * r].max() for (_, v), b, r in zip(data, q3, iqr)])
    pos = np.arange(len(data))
    ax.hlines(pos, low, high, colors="#555", lw=0.7, zorder=1)
    ax.barh(
        pos,
        np.maximum(iqr, 0),
        left=q1,
        height=0.7,
        zorder=2,
        edgecolor="#333",
        linewidth=0.4,
        color=[colours.get(layer, "tab:blue") for layer, _ in data],
    )
    ax.vlines(med, pos - 0.35, pos + 0.35, colors="black", lw=1.0, zorder=3)
    _thin_ticks(ax, [layer for layer, _ in data], "y")
    ax.set_ylim(len(data) - 0.5, -0.5)
    ax.set_xlabel(f"{key} (box: quartiles, whiskers: 1.5 IQR)", fontsize=8)


def _shown_checkpoints(ckpts: list[int]) -> list[int]:
    if len(ckpts) <= MAX_CHECKPOINT_PANELS:
        return ckpts
    picks = np.linspace(0, len(ckpts) - 1, MAX_CHECKPOINT_PANELS).round().astype(int)
    return [ckpts[i] for i in dict.fromkeys(picks.tolist())]


def plot_metric(run: Run, metric: str, colours: dict[str, Any] | None = None) -> Figure:
    """One figure for one metric of a run (raises KeyError when the metric has no successful result).

    ``colours`` (layer -> colour) defaults to ``layer_colours(run)``; the report passes one
    mapping to every figure so a layer looks the same everywhere.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    by_ckpt = _values(run, metric)
    if not by_ckpt:
        raise KeyError(f"no successful results for metric '{metric}' in run {run.id}")
    colours = colours or layer_colours(run)
    names = checkpoint_names(run)
    ckpts = sorted(by_ckpt)
    series = len(ckpts) > 1
    layers = [layer for layer in run_layers(run) if any(layer in by_ckpt[c] for c in ckpts)]
    first = by_ckpt[ckpts[0]]
    scalars = run.headline_keys(metric, limit=MAX_PANELS)
    curves = _keys(by_ckpt, Curve)[:3]
    vectors = [
        k
        for k in _keys(by_ckpt, np.ndarray)
        if not _is_bookkeeping(k)
        and any(_is_vector(v.get(k)) for per_layer in by_ckpt.values() for v in per_layer.values())
    ][:2]

    # Rows of panels: (kind, key, checkpoint). Scalars share rows; a series gets a row per curve/vector key.
    cells: list[tuple[str, str, int]] = []
    fractions = _partition_keys(first, scalars)
    if fractions and not series:
        cells.append(("stacked", ",".join(fractions), ckpts[0]))
        scalars = [k for k in scalars if k not in fractions]
    cells += [("series" if series else "scalar", k, ckpts[0]) for k in scalars]
    rows: list[list[tuple[str, str, int]]] = [cells[i : i + 3] for i in range(0, len(cells), 3)]
    shown = _shown_checkpoints(ckpts) if series else ckpts[:1]
    for kind, keys in (("curve", curves), ("vector", vectors)):
        if series:
            rows += [[(kind, k, c) for c in shown] for k in keys]
        else:
            flat = [(kind, k, ckpts[0]) for k in keys]
            rows += [flat[i : i + 3] for i in range(0, len(flat), 3)]
    rows = [row for row in rows if row] or [[("empty", "", ckpts[0])]]

    tall = 0.16 * len(layers) + 1.2  # horizontal bars / box plots: room for every layer label
    heights = [
        max(3.2, tall)
        if any(k in ("scalar", "stacked") or (k == "vector" and len(layers) > MAX_HISTOGRAMS) for k, _, _ in row)
        else 3.2
        for row in rows
    ]
    cols = max(len(row) for row in rows)
    # Fixed margins in inches (a layout engine took seconds per figure): room for layer labels on
    # the left of every panel and for a legend or colour bar on its right.
    label = max([len(layer) for layer in layers] + [4]) * 7.5 * 0.6 / 72 + 0.55
    side = 1.5
    panel = 3.6
    width = cols * (label + panel + side)
    height = sum(heights) + 0.9 * len(rows) + 0.2
    fig = plt.figure(figsize=(width, height))
    grid = fig.add_gridspec(
        len(rows),
        cols,
        height_ratios=heights,
        left=label / width,
        right=1 - side / width,
        top=1 - 0.85 / height,
        bottom=0.55 / height,
        wspace=(label + side) / panel,
        hspace=0.9 / np.mean(heights),
    )
    for r, row in enumerate(rows):
        for c, (kind, key, ckpt) in enumerate(row):
            ax = fig.add_subplot(grid[r, c])
            per_layer = by_ckpt.get(ckpt, {})
            if kind == "stacked":
                _stacked(ax, layers, per_layer, key.split(","))
            elif kind == "scalar":
                _bars(ax, layers, np.array([_scalar(per_layer.get(layer), key) for layer in layers]), key, colours)
            elif kind == "series":
                _series(ax, by_ckpt, layers, key, names, colours)
            elif kind == "curve":
                _curves(ax, per_layer, layers, key, colours)
            elif kind == "vector":
                _vectors(ax, per_layer, layers, key, colours)
            else:
                ax.text(0.5, 0.5, "no plottable values", ha="center", va="center")
                ax.set_axis_off()
            if kind != "empty":
                title = "fractions" if kind == "stacked" else key
                if series and kind in ("curve", "vector"):
                    title += f"  [{names[ckpt] if ckpt < len(names) else ckpt}]"
                ax.set_title(title, fontsize=9)
                ax.tick_params(labelsize=7.5)
    note = ""
    if series and (curves or vectors) and len(shown) < len(ckpts):
        note = f" (curves: {len(shown)} of {len(ckpts)} checkpoints)"
    fig.suptitle(metric + (" over checkpoints" if series else "") + note, fontsize=11)
    return fig
