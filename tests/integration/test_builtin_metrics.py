"""Every built-in metric through the real server on real exported models, and format independence."""

from __future__ import annotations

import numpy as np
import pytest

BUILTIN_FAMILIES = ("cnt.", "fractal.", "modes.", "basins.", "complexity.", "dimension.")


def test_every_builtin_metric_is_listed_with_its_plugin(client):
    table = client.metrics().set_index("name")
    builtin = [n for n in table.index if n.startswith(BUILTIN_FAMILIES)]
    assert len(builtin) >= 18
    assert set(table.loc[builtin, "plugin"]) == {"deepscope-metrics"}
    reconstructed = table.loc[builtin, "reconstructed"]
    assert reconstructed["modes.fractions"] and reconstructed["complexity.piecewise"]
    assert not reconstructed["cnt.node_strength"] and not reconstructed["dimension.effective"]


@pytest.mark.parametrize("name, fmt", [("cnn", "onnx"), ("transformer", "pt2")])
def test_all_builtin_metrics_run_end_to_end(client, exported, name, fmt):
    model = client.upload_model(exported[name][fmt])
    data = "digits" if name == "cnn" else "synthetic"
    run = client.analyze(
        model,
        data=data,
        limit=64,
        metrics=[f"{f}*" for f in BUILTIN_FAMILIES],
        params={
            "basins.sample": {"samples": 8, "draws": 8, "steps": 4},
            "basins.weight": {"samples": 8, "draws": 4, "steps": 3},
            # 48 training rows allow ~3 pieces: ask for a 10 % cut, not half (default)
            "complexity.piecewise": {"eps": 0.9},
        },
    )
    assert run.status == "completed"
    assert not run.failures, run.failures
    # Every metric says something on a real model (not only skips), and what it calls ok is a number.
    # The one expected exception: the CNN's 8-16 channel feature graphs are too small to fit a box dimension.
    expected_skips = {"fractal.box_dimension": "too small for a scaling fit"} if name == "cnn" else {}
    headline = {m.name: list(m.summary_keys) for m in client.metric_infos().metrics}
    ok: dict[str, int] = {}
    for r in run.results:
        ok[r.metric] = ok.get(r.metric, 0) + (r.status == "ok")
        if r.metric in expected_skips:
            assert r.status == "skipped" and expected_skips[r.metric] in r.error, (r.layer, r.status, r.error)
        if r.status == "ok":
            values = run.result(r.metric, r.layer)
            for key in headline[r.metric]:
                if key in values and np.ndim(values[key]) == 0 and not isinstance(values[key], str):
                    assert np.isfinite(values[key]), (r.metric, r.layer, key, values[key])
    assert sorted(m for m, n in ok.items() if n == 0) == sorted(expected_skips)
    assert len(ok) >= 18
    # Spot checks of values that must hold whatever the weights are.
    for layer in run.layers("fractal.ss_rate"):
        value = run.result("fractal.ss_rate", layer)["ss_rate"]
        assert np.isnan(value) or 0.0 <= value <= 1.0
    for layer in run.layers("modes.fractions"):
        r = run.result("modes.fractions", layer)
        assert r["frac_opt"] + r["frac_npt_alive"] + r["frac_dead"] == pytest.approx(1.0)
    for layer in run.layers("dimension.effective"):
        r = run.result("dimension.effective", layer)
        assert r["participation_ratio"] <= r["d_eff"] + 1e-9 <= r["rank"] + 1e-6


def test_cnt_metrics_agree_between_onnx_and_pt2(client, exported):
    values = {}
    for fmt in ("onnx", "pt2"):
        model = client.upload_model(exported["cnn"][fmt])
        run = client.analyze(
            model, metrics=["cnt.node_strength", "cnt.layer_fluctuation", "cnt.link_weights"], data="digits", limit=8
        )
        assert not run.failures, run.failures
        values[fmt] = {(r.metric, r.layer): run.result(r.metric, r.layer) for r in run.results}
    assert values["onnx"].keys() == values["pt2"].keys()
    for key, onnx_values in values["onnx"].items():
        for item, value in onnx_values.items():
            other = values["pt2"][key][item]
            if isinstance(value, (float, np.ndarray)) and np.asarray(value).dtype.kind == "f":
                np.testing.assert_allclose(value, other, rtol=1e-5, atol=1e-6, err_msg=f"{key} {item}")


def test_graphs_come_out_as_networkx(client, exported):
    model = client.upload_model(exported["mlp"]["onnx"])
    run = client.analyze(
        model, data="digits", limit=64, layers=["fc2"], metrics=["cnt.weight_graph", "fractal.box_dimension"]
    )
    assert not run.failures, run.failures
    weights = client.weights(model, ["fc2"])["fc2"]
    g = run.graph("cnt.weight_graph", "fc2")
    assert g.is_directed() and g.number_of_nodes() == 32 + 16 and g.number_of_edges() == 32 * 16
    assert g.edges[3, 32 + 5]["weight"] == pytest.approx(weights["weight"][5, 3])
    assert g.nodes[32 + 5]["bias"] == pytest.approx(weights["bias"][5]) and g.nodes[32 + 5]["layer"] == "fc2"
    features = run.graph("fractal.box_dimension", "fc2")
    assert not features.is_directed() and features.number_of_nodes() == 16
    import networkx as nx

    assert nx.is_connected(features)  # the default epsilon (largest MST edge) connects G_M by construction
    assert features.number_of_edges() == run.result("fractal.box_dimension", "fc2")["n_edges"]
