"""The HTML report of a deep model (59 layers, 3 checkpoints) as a researcher opens it in Chromium.

A real torch model exported with torch.export, analysed by a real server, rendered by headless
Chromium: the first screen is the summary (not warnings), every layer and checkpoint appears,
failures are grouped, and the figures load.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from deepscope.plots import checkpoint_names, layer_colours, robust_range

from .helpers import chromium, headless

DEPTH = 30  # Linear+ReLU pairs: 30 Linear and 29 ReLU layers


def deep_mlp(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    widths = [64] + [12] * (DEPTH - 1) + [10]
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(widths, widths[1:])):
        layers.append(nn.Linear(a, b))
        if i < DEPTH - 1:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers).eval()


@pytest.fixture(scope="module")
def deep_run(tmp_path_factory, server):
    """Three checkpoints of one deep architecture, a few fast metrics including one that fails."""
    import deepscope

    root = tmp_path_factory.mktemp("deep")
    example = torch.zeros(2, 64)
    paths = []
    for step in range(3):
        program = torch.export.export(
            deep_mlp(step), (example,), dynamic_shapes=({0: torch.export.Dim("batch", min=1)},)
        )
        path = root / f"step{step * 100}.pt2"
        torch.export.save(program, str(path))
        paths.append(path)
    embedded, address = server
    with deepscope.connect(address, token=embedded.token, progress=False) as client:
        models = [client.upload_model(p) for p in paths]
        seen: list = []
        run = client.analyze(
            models,
            data="digits",
            limit=64,
            metrics=["example.*", "fractal.ss_rate", "testing.raises"],
            on_progress=seen.append,
        )
    html = Path(run.report(root / "report.html")).read_text()
    return run, html, seen


PROBE = """<script>
window.addEventListener('load', () => {
  const first = document.querySelector('h1').nextElementSibling;
  const imgs = Array.from(document.images);
  const broken = imgs.filter(i => !(i.complete && i.naturalWidth > 0)).length;
  const summary = document.getElementById('summary').getBoundingClientRect();
  const problems = Array.from(document.querySelectorAll('details.problems'));
  const open = problems.filter(d => d.open).length;
  const firstProblem = problems.length ? problems[0].getBoundingClientRect().top : 1e9;
  const out = document.createElement('pre');
  out.id = 'probe';
  out.textContent = JSON.stringify({first: first.id, images: imgs.length, broken, summaryTop: summary.top,
    problems: problems.length, open, firstProblem, height: window.innerHeight});
  document.body.appendChild(out);
});
</script>"""


def test_deep_report_opens_on_the_summary(deep_run, tmp_path):
    import json

    browser = chromium()
    run, html, _ = deep_run
    assert len({r.layer for r in run.results if r.metric == "fractal.ss_rate"}) == 2 * DEPTH - 1

    probe = tmp_path / "probe.html"
    probe.write_text(html.replace("</body>", PROBE + "</body>", 1))
    result = headless(browser, tmp_path / "profile", "--window-size=1280,900", "--dump-dom", probe.as_uri())
    found = re.search(r'<pre id="probe">(.*?)</pre>', result.stdout)
    assert found, result.stderr[-2000:]
    state = json.loads(found.group(1).replace("&quot;", '"'))
    assert state["first"] == "summary"  # the first thing after the title
    assert state["summaryTop"] < state["height"] / 4
    assert state["images"] == len({r.metric for r in run.results if r.status == "ok"}) and state["broken"] == 0
    assert state["problems"] >= 1 and state["open"] == 0  # grouped and collapsed ...
    assert state["firstProblem"] > state["height"]  # ... and nowhere on the first screen

    shot = tmp_path / "first-screen.png"
    headless(browser, tmp_path / "profile2", "--window-size=1280,900", f"--screenshot={shot}", probe.as_uri())
    assert shot.exists() and shot.stat().st_size > 10_000
    if os.environ.get("DEEPSCOPE_KEEP_SCREENSHOTS"):  # a directory: look at the first screen yourself
        shutil.copy(shot, Path(os.environ["DEEPSCOPE_KEEP_SCREENSHOTS"]) / "deep-first-screen.png")
        Path(os.environ["DEEPSCOPE_KEEP_SCREENSHOTS"], "deep-report.html").write_text(html)


def test_deep_report_groups_failures_and_names_checkpoints(deep_run, tmp_path):
    run, html, _ = deep_run
    failed = [r for r in run.results if r.metric == "testing.raises"]
    assert len(failed) >= 2 * DEPTH - 1 and all(r.status == "failed" for r in failed)
    # One model-level failure: its message once per distinct text, not once per layer and checkpoint.
    message = failed[0].error.strip().splitlines()[0]
    assert html.count(message) == 1
    assert "at every checkpoint" in html
    names = checkpoint_names(run)
    assert names == ["step0.pt2", "step100.pt2", "step200.pt2"]
    summary = html.split("<section id='summary'>", 1)[1].split("</section>", 1)[0]
    assert all(name in summary for name in names)
    # the layer table lists every layer once, with a value per checkpoint for a per-layer metric
    assert summary.count("<tr><td>0</td>") == 1 and summary.count("<tr><td>58</td>") == 1
    contents = html.split("<nav id='contents'>", 1)[1].split("</nav>", 1)[0]
    assert "<b>fractal</b>" in contents and "<b>example</b>" in contents


def test_layer_colours_are_distinct_and_shared(deep_run):
    run, _, _ = deep_run
    colours = layer_colours(run)
    layers = [layer for layer in colours if layer != "(model)"]
    assert len(layers) == 2 * DEPTH - 1
    assert len({tuple(np.round(colours[layer], 6)) for layer in layers}) == len(layers)


def test_robust_range_clips_a_lone_outlier():
    values = np.array([1.0, 1.1, 0.9, 1.05, 0.95, 1500.0])
    lo, hi = robust_range(values)
    assert hi < 10 and lo <= 0.9
    assert robust_range(np.array([1.0, 2.0, 3.0, 4.0, 5.0])) is None


def test_sdk_progress_events_name_checkpoint_and_metric(deep_run):
    run, _, seen = deep_run
    finished = [e for e in seen if e.stage == "metric"]
    assert [(e.checkpoint, e.metric_index) for e in finished] == [(c, k) for c in (1, 2, 3) for k in (1, 2, 3, 4)]
    assert {e.num_checkpoints for e in finished} == {3} and {e.num_metrics for e in finished} == {4}
    raises = [e for e in finished if e.metric == "testing.raises"]
    assert [e.counts for e in raises] == [{"failed": 2 * DEPTH - 1}] * 3
    assert [e for e in run.events if e.stage == "metric"] == finished  # run.events keeps the milestones
