"""A self-contained HTML report of a run: summary, one figure per metric (PNG embedded), failures.

No network is needed to view it: images are data URIs and the style sheet is inline.
"""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path

from .results import Run

STYLE = """
body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1100px;color:#222}
h1{font-size:1.5em}h2{font-size:1.15em;margin-top:2em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;font-size:.85em}td,th{border:1px solid #ddd;padding:3px 8px;text-align:left}
.failed{color:#a00}.muted{color:#777}img{max-width:100%}
"""


def _figure_uri(run: Run, metric: str) -> str:
    import matplotlib.pyplot as plt

    from .plots import plot_metric

    fig = plot_metric(run, metric)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90)
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def render_report(run: Run) -> str:
    e = html.escape
    info = run.info
    config = info.config
    rows = [
        ("run", info.id), ("status", run.status), ("models", ", ".join(info.model_names) or ", ".join(config.models)),
        ("model ids", ", ".join(m[:12] for m in info.model_ids)),
        ("data", config.dataset or "client-supplied"), ("split", config.split or "test"),
        ("samples", str(info.num_samples)), ("batch size", str(config.batch_size)), ("seed", str(config.seed)),
        ("seconds", f"{info.seconds:.2f}"), ("created", info.created_at), ("finished", info.finished_at),
        ("plugins", ", ".join(f"{k} {v}" for k, v in sorted(info.plugin_versions.items()))),
    ]
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>deepscope run {e(info.id)}</title>",
             f"<style>{STYLE}</style></head><body><h1>deepscope run {e(info.id)}</h1><table>"]
    parts += [f"<tr><th>{e(k)}</th><td>{e(v)}</td></tr>" for k, v in rows]
    parts.append("</table>")
    if info.error:
        parts.append(f"<p class='failed'>Run error: {e(info.error)}</p>")
    for metric in run.metrics:
        results = [r for r in run.results if r.metric == metric]
        parts.append(f"<h2 id='{e(metric)}'>{e(metric)}</h2>")
        params = results[0].params if results else {}
        shown = ", ".join(f"{k}={getattr(v, v.WhichOneof('kind'))}" for k, v in sorted(params.items())
                          if v.WhichOneof("kind"))
        seconds = sum({r.checkpoint: r.seconds for r in results}.values())
        parts.append(f"<p class='muted'>parameters: {e(shown) or 'none'}; time in the metric's code: "
                     f"{seconds:.2f} s</p>")
        if any(r.status == "ok" for r in results):
            try:
                parts.append(f"<img alt='{e(metric)}' src='{_figure_uri(run, metric)}'>")
            except Exception as exc:  # a plot must never sink the report
                parts.append(f"<p class='failed'>could not plot: {e(type(exc).__name__)}: {e(str(exc))}</p>")
        for r in results:
            if r.status != "ok":
                first_line = r.error.splitlines()[0] if r.error else "failed"
                parts.append(f"<p class='failed'>{e(r.layer or '(model)')} [checkpoint {r.checkpoint}]: "
                             f"{e(first_line)}</p>")
            for warning in r.warnings:
                parts.append(f"<p class='muted'>{e(r.layer)}: {e(warning)}</p>")
    parts.append("</body></html>")
    return "\n".join(parts)


def write_report(run: Run, path: str | Path) -> Path:
    path = Path(path)
    path.write_text(render_report(run), encoding="utf-8")
    return path
