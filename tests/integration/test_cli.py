"""The `deepscope` CLI end to end, in subprocesses: exit codes, output files, bad arguments, the report."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from .helpers import chromium, headless

CLI = [sys.executable, "-m", "deepscope.cli"]


def run_cli(*args: str, env: dict | None = None, timeout: float = 240) -> subprocess.CompletedProcess:
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=timeout, env=full_env)


@pytest.fixture()
def remote(server) -> list[str]:
    embedded, address = server
    return ["--server", address, "--token", embedded.token, "--quiet"]


def test_analyze_embedded_writes_json_and_report(tmp_path, exported):
    out_json, report = tmp_path / "r.json", tmp_path / "r.html"
    cache = {"DEEPSCOPE_CACHE": str(tmp_path / "cache")}
    result = run_cli(
        "analyze",
        str(exported["mlp"]["onnx"]),
        "--data",
        "digits",
        "--limit",
        "64",
        "--metrics",
        "example.*,fractal.ss_rate",
        "--layers",
        "fc*",
        "--json",
        str(out_json),
        "--report",
        str(report),
        "--store",
        str(tmp_path / "store"),
        env=cache,
    )
    assert result.returncode == 0, result.stderr
    # not a terminal: one progress line per finished metric, no bar
    lines = [line for line in result.stderr.splitlines() if re.match(r"\[\d+:\d\d\] metric \d+/\d+ · ", line)]
    assert [line.split("] ", 1)[1] for line in lines] == [
        "metric 1/3 · example.activation_moments: 3 ok",
        "metric 2/3 · example.weight_spectrum: 3 ok",
        "metric 3/3 · fractal.ss_rate: 3 ok",
    ]
    assert "\r" not in result.stderr and "run completed" in result.stderr

    # The catalogue and the model's layers are cached now: typos fail before a server would start.
    for args, message in [
        (["--metrics", "example.nope"], "metric 'example.nope' matches no metric (did you mean: example."),
        (
            ["--metrics", "cnt.node_strength", "--param", "cnt.node_strength.bogus=1"],
            "unknown parameter 'bogus' for cnt.node_strength; valid: mode",
        ),
        (
            ["--metrics", "cnt.node_strength", "--param", "cnt.node_strength.mode=whatever"],
            "cnt.node_strength.mode must be one of code, graph",
        ),
        (["--metrics", "cnt.node_strength", "--layers", "kind:conv"], "this model's kinds: activation, linear"),
    ]:
        store = tmp_path / "never-started"
        bad = run_cli("analyze", str(exported["mlp"]["onnx"]), *args, "--store", str(store), env=cache, timeout=60)
        assert bad.returncode == 2, bad.stderr
        assert message in bad.stderr and "Traceback" not in bad.stderr
        assert not store.exists()  # no embedded server was started for it
    assert "fractal.ss_rate" in result.stdout and "fc1" in result.stdout
    data = json.loads(out_json.read_text())
    assert data["status"] == "completed" and data["num_samples"] == 64
    metrics = {r["metric"] for r in data["results"]}
    assert metrics == {"example.activation_moments", "example.weight_spectrum", "fractal.ss_rate"}
    ss = next(r for r in data["results"] if r["metric"] == "fractal.ss_rate" and r["layer"] == "fc1")
    assert 0.0 <= ss["values"]["ss_rate"] <= 1.0
    html = report.read_text()
    assert html.count("<img") == 3 and "data:image/png;base64," in html


def test_series_capture_show_and_runs(tmp_path, remote, exported):
    x = np.random.default_rng(0).standard_normal((10, 64)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    result = run_cli(
        "capture",
        str(exported["mlp"]["pt2"]),
        "--layers",
        "fc1",
        "act*",
        "--data",
        str(tmp_path / "x.npy"),
        "--out",
        str(tmp_path / "acts.npz"),
        *remote,
    )
    assert result.returncode == 0, result.stderr
    with np.load(tmp_path / "acts.npz") as acts:
        assert acts["fc1"].shape == (10, 32) and acts["act1"].shape == (10, 32)
        assert (acts["act1"] >= 0).all() and np.allclose(acts["act1"], np.maximum(acts["fc1"], 0))

    np.savez(tmp_path / "d.npz", x=x, y=np.arange(10))
    result = run_cli(
        "analyze",
        str(exported["mlp"]["onnx"]),
        str(exported["mlp"]["pt2"]),
        "--data",
        str(tmp_path / "d.npz"),
        "--metrics",
        "example.weight_spectrum",
        "--json",
        str(tmp_path / "s.json"),
        *remote,
    )
    assert result.returncode == 0, result.stderr
    data = json.loads((tmp_path / "s.json").read_text())
    assert {r["checkpoint"] for r in data["results"]} == {0, 1}
    assert "spectral_norm@0" in result.stdout and "spectral_norm@1" in result.stdout

    listed = run_cli("runs", *remote)
    assert data["run_id"] in listed.stdout
    shown = run_cli("show", data["run_id"], *remote)
    assert shown.returncode == 0 and "example.weight_spectrum" in shown.stdout
    assert run_cli("metrics", *remote).stdout.count("example.") >= 2
    infos = {m["name"]: m for m in json.loads(run_cli("metrics", "--json", *remote).stdout)}
    assert infos["fractal.box_dimension"]["params"]["restarts"] == {"type": "int", "default": 3, "min": 1, "max": 100}


@pytest.mark.parametrize(
    "args, code, message",
    [
        (["analyze", "missing.onnx", "--server", "127.0.0.1:1"], 1, "model file not found: missing.onnx"),
        (["analyze", "x", "--param", "nonsense", "--server", "127.0.0.1:1"], 2, "expected METRIC.KEY=VALUE"),
        (["metrics", "--server", "127.0.0.1:1"], 3, "cannot reach the server at 127.0.0.1:1"),
        (["analyze"], 2, "the following arguments are required"),
    ],
)
def test_bad_usage_is_one_clear_line(args, code, message):
    result = run_cli(*args, timeout=60)
    assert result.returncode == code
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_server_errors_become_one_line(remote, exported):
    result = run_cli("analyze", str(exported["mlp"]["onnx"]), "--metrics", "example.nope", *remote)
    assert result.returncode == 2  # bad usage, as documented
    assert "metric 'example.nope' matches no metric" in result.stderr
    assert "Traceback" not in result.stderr
    # what only the server can know is bad usage too: a dataset that does not fit the model
    result = run_cli(
        "analyze",
        str(exported["cnn"]["onnx"]),
        "--metrics",
        "example.activation_moments",
        "--data",
        "synthetic",
        "--limit",
        "8",
        "--split",
        "train",
        "--layers",
        "nope*",
        *remote,
    )
    assert result.returncode == 2 and "matches no layer" in result.stderr, result.stderr


def test_large_arrays_go_to_a_sidecar(tmp_path, remote, exported, client):
    from deepscope.export import INLINE_MAX, read_json

    out = tmp_path / "g.json"
    result = run_cli(
        "analyze",
        str(exported["mlp"]["onnx"]),
        "--metrics",
        "cnt.weight_graph,example.weight_spectrum",
        "--layers",
        "fc1",
        "fc3",
        "--json",
        str(out),
        *remote,
    )
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "g.npz").is_file() and "g.npz" in result.stderr
    raw = json.loads(out.read_text())
    fc1 = next(r for r in raw["results"] if r["metric"] == "cnt.weight_graph" and r["layer"] == "fc1")
    key = next(k for k, v in fc1["values"].items() if isinstance(v, dict) and "sources" in v)
    ref = fc1["values"][key]["weights"]
    assert ref["npz"] == "g.npz" and ref["shape"] == [64 * 32]  # fc1 is 64 -> 32: one edge per weight
    spectrum = next(r for r in raw["results"] if r["metric"] == "example.weight_spectrum" and r["layer"] == "fc3")
    assert len(spectrum["values"]["singular_values"]["y"]) == 10  # small arrays stay inline
    # read_json puts the arrays back; they are the server's values
    stored = client.get_run(raw["run_id"]).result("cnt.weight_graph", "fc1")[key]
    loaded = read_json(out)
    graph = next(r for r in loaded["results"] if r["metric"] == "cnt.weight_graph" and r["layer"] == "fc1")
    assert np.array_equal(graph["values"][key]["weights"], stored.weights)
    assert np.array_equal(graph["values"][key]["sources"], stored.sources)
    assert all(len(v) <= INLINE_MAX for r in raw["results"] for v in r["values"].values() if isinstance(v, list))


CHECK_SCRIPT = """<script>
window.__errors = [];
window.addEventListener('error', e => window.__errors.push(String(e.message || e.type)), true);
const origError = console.error;
console.error = (...a) => { window.__errors.push(a.join(' ')); origError(...a); };
window.addEventListener('load', () => {
  const imgs = Array.from(document.images);
  const bad = imgs.filter(i => !(i.complete && i.naturalWidth > 0)).length;
  const div = document.createElement('div');
  div.id = 'check';
  div.textContent = `images=${imgs.length} broken=${bad} errors=${window.__errors.length}`;
  document.body.appendChild(div);
});
</script>"""


def test_report_renders_in_a_real_browser(tmp_path, client, exported):
    browser = chromium()
    model = client.upload_model(exported["cnn"]["onnx"])
    run = client.analyze(
        model,
        data="digits",
        limit=64,
        metrics=["example.*", "fractal.ss_rate", "testing.raises"],
        layers=["conv1", "layer1.0.conv1", "fc"],
    )
    html = Path(run.report(tmp_path / "report.html")).read_text()
    assert "boom from a plugin" in html  # failed metrics are shown with their error
    probe = tmp_path / "probe.html"
    probe.write_text(html.replace("<head>", "<head>" + CHECK_SCRIPT, 1))
    result = headless(browser, tmp_path / "profile", "--dump-dom", probe.as_uri())
    assert 'id="check"' in result.stdout, result.stderr[-2000:]
    check = result.stdout.split('id="check">', 1)[1].split("<", 1)[0]
    assert check == "images=3 broken=0 errors=0"
