"""The reproductions' common pipeline runs end to end: a tiny population of digits MLPs is trained,
exported with torch.export, measured through the SDK against a real server, and written out as a
markdown table, a PNG figure and a JSON summary whose numbers are the server's.

(`make reproduce` runs the full scripts; this keeps their shared code from rotting in CI.)
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _load_common():  # a module
    """examples/reproduce/common.py under a name that cannot clash with another ``common``."""
    spec = importlib.util.spec_from_file_location("reproduce_common", ROOT / "examples" / "reproduce" / "common.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


common = _load_common()

matplotlib = pytest.importorskip("matplotlib")
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

METRIC = "fractal.ss_rate"


def test_common_pipeline_trains_measures_and_writes_a_table(client, tmp_path: Path) -> None:
    data = common.digits()
    spec = common.TrainSpec(seed=0, hidden=(16, 16), epochs=(0, 1), tag="smoke")
    checkpoints = common.train_population([spec], data, tmp_path / "ckpt", fmt="pt2")
    assert [c.epoch for c in checkpoints] == [0, 1]
    assert all(c.path.suffix == ".pt2" and c.path.exists() for c in checkpoints)

    run, frame = common.measure(checkpoints, data, [METRIC], ["act*"], client=client)
    key = common.pick_key(run, METRIC, ["no_such_key", "ss_rate"])
    assert key == "ss_rate"
    values = common.select(frame, METRIC, key)
    assert sorted(values["layer"].unique()) == ["act1", "act2"]
    assert set(values["epoch"]) == {0, 1}

    # Each row's value is the server's result for that checkpoint, joined to the right epoch.
    for row in values.itertuples():
        assert row.value == pytest.approx(run.result(METRIC, row.layer, row.checkpoint)[key])
        assert row.epoch == checkpoints[row.checkpoint].epoch

    table = common.markdown_table(values[["layer", "epoch", "value"]])
    report = common.Report(
        name="smoke",
        title="Smoke",
        paper="none",
        setup="tiny",
        table=table,
        outcomes=[common.Outcome("a claim", "a measurement", None)],
        keys_read={METRIC: key},
    )
    figure, ax = plt.subplots()
    ax.plot(values["epoch"], values["value"], "o")
    md = common.write_outputs(report, figure, tmp_path / "out")
    plt.close(figure)

    text = md.read_text()
    lines = [line for line in text.splitlines() if line.startswith("| act")]
    assert len(lines) == len(values), text
    first = values.iloc[0]
    assert f"| {first['layer']} | {first['epoch']} | {common.fmt(first['value'])} |" in text
    assert "**not testable here**" in text and "reproductions/smoke.png" in text
    assert (tmp_path / "out" / "smoke.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((tmp_path / "out" / "smoke.json").read_text())["keys_read"] == {METRIC: "ss_rate"}


def test_pick_key_falls_back_to_the_metrics_headline(client, tmp_path: Path) -> None:
    """When a metric's keys are renamed, the scripts use the server's declared headline instead."""
    data = common.digits()
    checkpoints = common.train_population(
        [common.TrainSpec(seed=1, hidden=(8,), epochs=(0,), tag="key")], data, tmp_path, fmt="pt2"
    )
    run, _ = common.measure(checkpoints, data, [METRIC], ["act*"], client=client)
    assert common.pick_key(run, METRIC, ["renamed_away"]) == run.headline_keys(METRIC, limit=1)[0]
