"""A self-contained HTML report of a run, built to be read for real models.

Order: the title, then the summary (statuses, headline values per metric and checkpoint, a
layer x metric table), a table of contents grouped by metric family, then one section per
metric with its figure. Failures and warnings are grouped by message (a model-level failure
appears once with the layers it hit, not once per layer) and collapsed under ``<details>``,
so a run with hundreds of timeouts still opens on its results. No network is needed to view
it: images are data URIs and the style sheet is inline.
"""

from __future__ import annotations

import base64
import html
import io
from collections import Counter, defaultdict
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from . import times
from .results import Run

STYLE = """
body{font-family:system-ui,sans-serif;margin:1.5em auto;max-width:1200px;color:#222;padding:0 1em}
h1{font-size:1.45em;margin-bottom:.4em}h2{font-size:1.2em;margin-top:1.8em;border-bottom:1px solid #ccc}
h3{font-size:1.05em;margin-top:1.6em}
table{border-collapse:collapse;font-size:.82em;margin:.4em 0}td,th{border:1px solid #ddd;padding:2px 7px;text-align:left}
td.num{text-align:right;font-variant-numeric:tabular-nums}th{background:#f5f5f5}
.failed{color:#a00}.skipped{color:#8a6d00}.ok{color:#1a7f37}.muted{color:#777}img{max-width:100%}
.counts span{margin-right:1.2em}details{margin:.4em 0}summary{cursor:pointer}
nav>ul{columns:3}nav ul{list-style:none;padding-left:0}nav li{break-inside:avoid;margin-bottom:.5em}
nav li li{margin:0 0 0 1em}.scroll{max-height:28em;overflow:auto}
"""

STATUSES = ("ok", "skipped", "failed")


def _status(status: str) -> str:
    """ok / skipped as they are; anything else counts as failed."""
    return status if status in ("ok", "skipped") else "failed"


def _fmt(value: float) -> str:
    return "" if not np.isfinite(value) else f"{value:.4g}"


def _figure_uri(run: Run, metric: str, colours: dict[str, Any]) -> str:
    import matplotlib.pyplot as plt

    from .plots import plot_metric

    fig = plot_metric(run, metric, colours)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=80)
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def _anchor(metric: str) -> str:
    return "m-" + "".join(c if c.isalnum() or c in "-_." else "_" for c in metric)


def _families(metrics: Iterable[str]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = defaultdict(list)
    for metric in metrics:
        out[metric.split(".", 1)[0]].append(metric)
    return dict(out)


def _counts_html(counts: Counter[str]) -> str:
    return "".join(f"<span class='{s}'>{counts.get(s, 0)} {s}</span>" for s in STATUSES if counts.get(s) or s == "ok")


def _headline(run: Run, metric: str) -> str | None:
    keys = run.headline_keys(metric, 1)
    return keys[0] if keys else None


def _scalar_table(run: Run) -> dict[tuple[str, str, int], dict[str, float]]:
    """(metric, layer, checkpoint) -> scalar values of ok results."""
    out: dict[tuple[str, str, int], dict[str, float]] = {}
    for r in run.results:
        if r.status == "ok":
            out[(r.metric, r.layer or "(model)", r.checkpoint)] = {
                i.key: i.scalar for i in r.items if i.WhichOneof("value") == "scalar"
            }
    return out


def _summary(run: Run, names: list[str]) -> list[str]:
    """Statuses, then per metric its headline over layers at each checkpoint, then layer x metric."""
    from .plots import run_layers

    e = html.escape
    info = run.info
    counts = Counter(_status(r.status) for r in run.results)
    ckpts = sorted({r.checkpoint for r in run.results}) or [0]
    scalars = _scalar_table(run)
    parts = [
        "<section id='summary'><h2>Summary</h2>",
        f"<p><b>{e(run.status)}</b> · {len(names)} checkpoint{'s' * (len(names) != 1)}: "
        f"{e(', '.join(names))} · {info.num_samples} samples · {times.seconds(info.duration):.1f} s · "
        f"{len(run.metrics)} metrics on {len(run_layers(run))} layers</p>",
        f"<p class='counts'>{len(run.results)} results: {_counts_html(counts)}</p>",
    ]
    if info.error:
        parts.append(f"<p class='failed'>Run error: {e(info.error)}</p>")
    # Per metric: the headline over layers (median [min, max]) at each checkpoint, and status counts.
    head = "".join(
        f"<th>{e(names[c] if c < len(names) else str(c))}<br><span class='muted'>median [min, max]</span></th>"
        for c in ckpts
    )
    parts.append(f"<table class='headlines'><tr><th>metric</th><th>headline</th>{head}<th>results</th></tr>")
    for metric in run.metrics:
        key = _headline(run, metric)
        mcounts = Counter(_status(r.status) for r in run.results if r.metric == metric)
        cells = []
        for c in ckpts:
            vals = np.array([v[key] for (m, _, k), v in scalars.items() if m == metric and k == c and key in v])
            vals = vals[np.isfinite(vals)]
            cells.append(
                f"<td class='num'>{_fmt(np.median(vals))} [{_fmt(vals.min())}, {_fmt(vals.max())}]</td>"
                if vals.size
                else "<td class='muted'>-</td>"
            )
        parts.append(
            f"<tr><td><a href='#{_anchor(metric)}'>{e(metric)}</a></td><td>{e(key or '-')}</td>"
            f"{''.join(cells)}<td class='counts'>{_counts_html(mcounts)}</td></tr>"
        )
    parts.append("</table>")
    parts += _layer_table(run, names, ckpts, scalars)
    parts.append("</section>")
    return parts


def _layer_table(
    run: Run, names: list[str], ckpts: list[int], scalars: dict[tuple[str, str, int], dict[str, float]]
) -> list[str]:
    """Layer x metric headline values; for a series the value at each checkpoint, joined by arrows."""
    from .plots import run_layers

    e = html.escape
    status = {(r.metric, r.layer or "(model)", r.checkpoint): _status(r.status) for r in run.results}
    metrics = [(m, k) for m in run.metrics if (k := _headline(run, m))]
    if not metrics:
        return []
    parts = [
        f"<details open><summary>Headline value per layer{' (checkpoints ' + ' → '.join(map(str, ckpts)) + ')' if len(ckpts) > 1 else ''}"
        "</summary><div class='scroll'><table class='layers'><tr><th>layer</th>"
    ]
    parts += [f"<th>{e(m)}<br><span class='muted'>{e(k)}</span></th>" for m, k in metrics]
    parts.append("</tr>")
    for layer in run_layers(run):
        row = [f"<tr><td>{e(layer)}</td>"]
        for metric, key in metrics:
            cells = []
            for c in ckpts:
                state = status.get((metric, layer, c))
                if state is None:
                    continue
                if state != "ok":
                    cells.append(f"<span class='{state}'>{state}</span>")
                else:
                    cells.append(_fmt(scalars.get((metric, layer, c), {}).get(key, np.nan)) or "-")
            row.append(f"<td class='num'>{' → '.join(cells)}</td>")
        parts.append("".join(row) + "</tr>")
    parts.append("</table></div></details>")
    return parts


def _contents(run: Run) -> list[str]:
    e = html.escape
    parts = ["<nav id='contents'><h2>Contents</h2><ul>"]
    for family, metrics in _families(run.metrics).items():
        items = []
        for metric in metrics:
            counts = Counter(_status(r.status) for r in run.results if r.metric == metric)
            bad = ", ".join(f"{counts[s]} {s}" for s in ("failed", "skipped") if counts.get(s))
            items.append(
                f"<li><a href='#{_anchor(metric)}'>{e(metric.split('.', 1)[-1])}</a>"
                + (f" <span class='failed'>({e(bad)})</span>" if bad else "")
                + "</li>"
            )
        parts.append(f"<li><a href='#f-{e(family)}'><b>{e(family)}</b></a><ul>{''.join(items)}</ul></li>")
    parts.append("</ul></nav>")
    return parts


def _where(pairs: list[tuple[str, int]], names: list[str], n_ckpts: int) -> str:
    """'fc1, fc2 and 50 more layers at every checkpoint' from (layer, checkpoint) pairs."""
    layers = list(dict.fromkeys(layer for layer, _ in pairs))
    ckpts = sorted({c for _, c in pairs})
    shown = ", ".join(layers[:4]) + (f" and {len(layers) - 4} more" if len(layers) > 4 else "")
    noun = "layer" if len(layers) == 1 else "layers"
    at = (
        ""
        if n_ckpts <= 1
        else (
            " at every checkpoint"
            if len(ckpts) == n_ckpts
            else " at " + ", ".join(names[c] if c < len(names) else str(c) for c in ckpts)
        )
    )
    return f"{len(layers)} {noun} ({shown}){at}"


def _problems(results: list[Any], names: list[str], n_ckpts: int) -> list[str]:
    """Failures, skips and warnings of one metric, each distinct message once with where it applied."""
    e = html.escape
    groups: dict[tuple[str, str], list[tuple[str, int]]] = defaultdict(list)
    for r in results:
        where = (r.layer or "(model)", r.checkpoint)
        state = _status(r.status)
        if state != "ok":
            message = (r.error.strip().splitlines() or [state])[0] if r.error else state
            groups[(state, message)].append(where)
        for warning in dict.fromkeys(r.warnings):  # a metric's warnings are repeated on each of its layers
            groups[("warning", warning)].append(where)
    if not groups:
        return []
    kinds = Counter(kind for kind, _ in groups)
    hits: Counter[str] = Counter()
    for (kind, _), pairs in groups.items():
        hits[kind] += len(pairs)
    label = "; ".join(
        (
            f"{n} distinct warning{'s' * (n > 1)}"
            if k == "warning"
            else f"{hits[k]} {k} result{'s' * (hits[k] > 1)} ({n} distinct message{'s' * (n > 1)})"
        )
        for k, n in sorted(kinds.items())
    )
    cls = "failed" if "failed" in kinds else ("skipped" if "skipped" in kinds else "muted")
    parts = [f"<details class='problems'><summary class='{cls}'>{e(label)}</summary><ul>"]
    order = {"failed": 0, "skipped": 1, "warning": 2}
    for (kind, message), pairs in sorted(groups.items(), key=lambda kv: (order.get(kv[0][0], 3), -len(kv[1]))):
        parts.append(
            f"<li><span class='{'muted' if kind == 'warning' else kind}'>{e(kind)}</span>: {e(message)} "
            f"<span class='muted'>— {e(_where(pairs, names, n_ckpts))}</span></li>"
        )
    parts.append("</ul></details>")
    return parts


def _details(run: Run) -> list[str]:
    e = html.escape
    info, config = run.info, run.info.config
    rows = [
        ("run", info.id),
        ("status", run.status),
        ("models", ", ".join(info.model_names) or ", ".join(config.models)),
        ("model ids", ", ".join(m[:12] for m in info.model_ids)),
        ("data", config.dataset or "client-supplied"),
        ("split", config.split or "test"),
        ("samples", str(info.num_samples)),
        ("batch size", str(config.batch_size)),
        ("seed", str(config.seed)),
        ("seconds", f"{times.seconds(info.duration):.2f}"),
        ("created", times.iso(info.created_time)),
        ("finished", times.iso(info.finished_time)),
        ("plugins", ", ".join(f"{k} {v}" for k, v in sorted(info.plugin_versions.items()))),
    ]
    return (
        ["<details id='run-details'><summary>Run details</summary><table>"]
        + [f"<tr><th>{e(k)}</th><td>{e(v)}</td></tr>" for k, v in rows]
        + ["</table></details>"]
    )


def render_report(run: Run) -> str:
    from .plots import checkpoint_names, layer_colours

    e = html.escape
    names = checkpoint_names(run)
    colours = layer_colours(run)
    n_ckpts = len({r.checkpoint for r in run.results}) or 1
    parts = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>deepscope run {e(run.id)}</title>",
        f"<style>{STYLE}</style></head><body><h1>deepscope run {e(run.id)}</h1>",
    ]
    parts += _summary(run, names)
    parts += _contents(run)
    parts += _details(run)
    for family, metrics in _families(run.metrics).items():
        parts.append(f"<h2 id='f-{e(family)}'>{e(family)}</h2>")
        for metric in metrics:
            results = [r for r in run.results if r.metric == metric]
            parts.append(f"<h3 id='{_anchor(metric)}'>{e(metric)}</h3>")
            params = results[0].params if results else {}
            shown = ", ".join(
                f"{k}={getattr(v, v.WhichOneof('kind'))}" for k, v in sorted(params.items()) if v.WhichOneof("kind")
            )
            seconds = sum({r.checkpoint: times.seconds(r.duration) for r in results}.values())
            counts = Counter(_status(r.status) for r in results)
            parts.append(
                f"<p class='muted'>parameters: {e(shown) or 'none'}; time in the metric's code: "
                f"{seconds:.2f} s; <span class='counts'>{_counts_html(counts)}</span></p>"
            )
            if counts.get("ok"):
                try:
                    parts.append(f"<img alt='{e(metric)}' src='{_figure_uri(run, metric, colours)}'>")
                except Exception as exc:  # a plot must never sink the report
                    parts.append(f"<p class='failed'>could not plot: {e(type(exc).__name__)}: {e(str(exc))}</p>")
            parts += _problems(results, names, n_ckpts)
    parts.append("</body></html>")
    return "\n".join(parts)


def write_report(run: Run, path: str | Path) -> Path:
    path = Path(path)
    path.write_text(render_report(run), encoding="utf-8")
    return path
