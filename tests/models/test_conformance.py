"""Model conformance: real architectures x real exporter settings, checked against the torch module.

The exports and comparisons run once per session (``conformance.run_all``); each test asserts
one property over the matrix. ``docs/models.md`` is rendered from the same results.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from deepscope.results import decode_item
from deepscope_metrics.plugins import cnt
from deepscope_metrics.plugins.cnt import NodeStrength
from deepscope_server.backends import CaptureRequest
from deepscope_server.plugin_api import Curve, Graph, Needs, Table
from deepscope_server.testing import run_metric

from . import conformance as conf
from . import coverage as cov

CASES = [(arch, how) for arch in conf.ARCHS for how in conf.EXPORTS]
DOC = Path(__file__).resolve().parents[2] / "docs" / "models.md"


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="module")
def results(models_dir: Path) -> dict[tuple[str, str], conf.Result]:
    torch.set_num_threads(1)
    return {(r.arch, r.export): r for r in conf.run_all(models_dir)}


@pytest.fixture(scope="module")
def coverage(results, models_dir: Path) -> dict[str, cov.Coverage]:
    """Every built-in metric on every architecture (after ``results``: it reuses their exports)."""
    return {c.arch: c for c in cov.run_all(models_dir)}


@pytest.mark.parametrize(("arch", "how"), CASES)
def test_loads_runs_any_batch_and_weights_are_the_modules(results, arch: str, how: str) -> None:
    r = results[(arch, how)]
    assert not r.error
    assert r.output_ok, "model output differs from the torch module"
    assert r.odd_batch_ok, "a batch of 5 did not give the torch module's outputs"
    assert r.weights_checked > 0 and not r.weight_mismatches


@pytest.mark.parametrize(("arch", "how"), [c for c in CASES if c[1] != "torchscript"])
def test_every_layer_capture_equals_forward_hooks(results, arch: str, how: str) -> None:
    r = results[(arch, how)]
    assert r.captures_checked >= 4 and not r.capture_mismatches


def _names(r: conf.Result) -> list[str]:
    return [name for name, _ in r.layers]


@pytest.mark.parametrize("arch", list(conf.ARCHS))
def test_layer_tables_agree_across_formats(results, arch: str) -> None:
    """.pt2 (either batch) and unoptimised ONNX list the same call sites; optimised ONNX lacks only folded BatchNorms."""
    ref = results[(arch, "pt2_dynamic")].layers
    assert results[(arch, "pt2_static")].layers == ref
    assert results[(arch, "onnx_plain")].layers == ref
    default = results[(arch, "onnx_default")]
    folded = {layer.attrs["folded_norm"] for layer in default.backend.graph.layers if layer.attrs.get("bn_folded")}
    assert default.layers == [(n, k) for n, k in ref if n not in folded]
    for layer in default.backend.graph.layers:
        if layer.attrs.get("bn_folded"):  # the conv keeps its name and kind; its BatchNorm was a norm layer
            assert layer.kind == "conv" and (layer.name, "conv") in ref and (layer.attrs["folded_norm"], "norm") in ref
    assert bool(folded) == (arch.startswith(("resnet", "mobilenet")))


@pytest.mark.parametrize("arch", list(conf.ARCHS))
def test_activation_functions_agree_across_formats(results, arch: str) -> None:
    """ReLU6 stays relu6 in [0, 6] in ONNX too (the unoptimised exporter casts Clip's bounds from constants)."""
    ref = {
        layer.name: layer.attrs
        for layer in results[(arch, "pt2_dynamic")].backend.graph.layers
        if layer.kind == "activation"
    }
    keys = ("function", "min_val", "max_val")
    for how in ("onnx_plain", "onnx_default"):
        got = {
            layer.name: layer.attrs for layer in results[(arch, how)].backend.graph.layers if layer.kind == "activation"
        }
        assert set(got) == set(ref), how
        for name, attrs in ref.items():
            assert {k: got[name].get(k) for k in keys} == {k: attrs.get(k) for k in keys}, (how, name)


def test_reused_module_gives_one_layer_per_call(results) -> None:
    reused, separate = results[("resnet_reused_relu", "pt2_dynamic")], results[("resnet_separate_relu", "pt2_dynamic")]
    for how in ("pt2_dynamic", "onnx_default", "onnx_plain"):
        g = results[("resnet_reused_relu", how)].backend.graph
        first, second = g.layer("layer1.0.relu"), g.layer("layer1.0.relu@1")
        assert first.kind == second.kind == "activation"
        norm_or_folded = "layer1.0.conv{}" if how == "onnx_default" else "layer1.0.bn{}"
        assert first.inputs == [norm_or_folded.format(1)]
        assert second.inputs == [norm_or_folded.format(2), "relu"]  # the residual join: block output + identity
        assert [s.name for s in g.successors("layer1.0.relu")] == ["layer1.0.conv2"]
    assert [k for _, k in reused.layers] == [k for _, k in separate.layers]
    assert "layer1.0.relu2" in _names(separate) and "layer1.0.relu@1" not in _names(separate)
    # TorchScript knows modules, not calls: the reused ReLU is one row
    assert _names(results[("resnet_reused_relu", "torchscript")]).count("layer1.0.relu") == 1


def test_recurrent_and_attention_layers_expose_their_weights(results) -> None:
    for how in ("onnx_default", "onnx_plain", "pt2_dynamic", "torchscript"):
        for arch in ("lstm", "gru"):
            rnn = results[(arch, how)].backend.graph.layer("rnn")
            gates = 4 if arch == "lstm" else 3
            assert rnn.kind == "recurrent", how
            assert rnn.weights["weight_ih_l0"].shape == (gates * 6, 4)
            assert rnn.weights["weight_hh_l0"].shape == (gates * 6, 6)
            assert {"bias_ih_l0", "bias_hh_l0"} <= set(rnn.weights)
        attn = results[("vit", how)].backend.graph.layer("encoder.layers.0.self_attn")
        assert attn.kind == "attention"
        assert attn.weights["in_proj_weight"].shape == (24, 8) and attn.weights["out_proj.weight"].shape == (8, 8)


def test_bare_module_is_a_layer(tmp_path: Path) -> None:
    from deepscope_server.backends import load_model

    lin = torch.nn.Linear(16, 5).eval()
    x = torch.randn(2, 16)
    for how in ("pt2_static", "onnx_default"):
        g = load_model(conf.export(lin, x, how, tmp_path / how), device="cpu").graph
        assert [(layer.name, layer.kind) for layer in g.layers] == [("linear", "linear")]
        np.testing.assert_array_equal(g.layer("linear").weights["weight"], lin.weight.detach().numpy())


def test_static_batch_is_split_padded_and_trimmed(results) -> None:
    r = results[("resnet_reused_relu", "pt2_static")]
    assert r.backend.graph.static_batch == conf.BATCH and any("fixes the batch" in n for n in r.backend.graph.notes)
    assert results[("resnet_reused_relu", "pt2_dynamic")].backend.graph.static_batch is None
    model, _ = conf.build("resnet_reused_relu")
    x = torch.randn(5, 1, 8, 8, generator=torch.Generator().manual_seed(9))
    calls, y = conf.module_calls(model, x)
    for how in ("pt2_static", "onnx_default"):
        b = results[("resnet_reused_relu", how)].backend
        req = CaptureRequest("layer1.0.relu@1")
        out = b.run({b.graph.inputs[0].name: x.numpy()}, [req])
        np.testing.assert_allclose(next(iter(out.outputs.values())), y, rtol=conf.RTOL, atol=conf.ATOL)
        np.testing.assert_allclose(out.captured[req], calls["layer1.0.relu"][1][1], rtol=conf.RTOL, atol=conf.ATOL)


def _strengths(graph) -> dict[str, dict[str, np.ndarray]]:  # type: ignore[no-untyped-def]
    res = run_metric(NodeStrength, graph)
    return {k: v for k, v in res.items() if isinstance(v, dict) and "in_strength" in v}


@pytest.mark.parametrize("arch", ["resnet_reused_relu", "mobilenet_block", "vit", "lstm"])
def test_cnt_node_strength_agrees_across_formats(results, arch: str) -> None:
    ref = _strengths(results[(arch, "pt2_dynamic")].backend.graph)
    assert ref
    for how in ("pt2_static", "onnx_plain", "onnx_default"):
        got = _strengths(results[(arch, how)].backend.graph)
        assert set(got) == set(ref), how
        for layer, vals in ref.items():
            for key in ("in_strength", "out_strength"):
                np.testing.assert_allclose(
                    got[layer][key], vals[key], rtol=1e-4, atol=1e-5, err_msg=f"{how} {layer} {key}"
                )


def test_cnt_reused_and_separate_relu_agree(results) -> None:
    """The same network with a reused or separate ReLU modules: the same strengths, and conv1 != conv2."""
    for how in ("pt2_dynamic", "onnx_default"):
        reused = _strengths(results[("resnet_reused_relu", how)].backend.graph)
        separate = _strengths(results[("resnet_separate_relu", how)].backend.graph)
        assert set(reused) == set(separate)
        for layer in reused:
            for key in ("in_strength", "out_strength"):
                np.testing.assert_allclose(
                    reused[layer][key], separate[layer][key], rtol=1e-6, err_msg=f"{how} {layer}"
                )
        assert not np.allclose(reused["layer1.0.conv1"]["in_strength"], reused["layer1.0.conv2"]["in_strength"])


def test_docs_matrix_is_current(results, coverage) -> None:
    text = cov.document([results[c] for c in CASES], [coverage[a] for a in conf.ARCHS])
    assert DOC.read_text() == text, "docs/models.md is stale: run `python docs/generate_models_doc.py`"


@pytest.mark.parametrize("arch", list(conf.ARCHS))
def test_every_builtin_metric_gives_a_result_or_says_why_not(coverage, arch: str) -> None:
    """``--metrics all`` through the server's run path: each metric ok or skipped with a reason, none failed or missing."""
    c = coverage[arch]
    assert not c.error
    by_metric = c.by_metric()
    assert set(by_metric) == set(cov.builtin_metrics(cov.load_registry())), "a metric gave no result at all"
    for metric, rows in by_metric.items():
        for r in rows:
            assert r.status in ("ok", "skipped", "failed"), (metric, r.status)
            if r.status == "skipped":
                assert r.error, f"{metric} skipped without a reason"
            if r.status == "failed" and (arch, metric) not in cov.EXPECTED_FAILURES:
                pytest.fail(f"{metric} failed on {arch} ({r.layer or 'model'}): {r.error}")


@pytest.mark.parametrize("arch", ["lstm", "gru", "vit"])
def test_weight_metrics_measure_recurrent_gates_and_attention_projections(coverage, arch: str) -> None:
    """cnt.* give the recurrent / attention layer its own result (per-block rows); basins.weight perturbs it."""
    layer, first_blocks = (
        ("rnn", ["ih.i", "ih.f"] if arch == "lstm" else ["ih.r", "ih.z"])
        if arch != "vit"
        else ("encoder.layers.0.self_attn", ["q", "k"])
    )
    rows = {(r.metric, r.layer): r for r in coverage[arch].results}
    for metric in ("cnt.node_strength", "cnt.layer_fluctuation", "cnt.link_weights", "cnt.weight_graph"):
        assert rows[(metric, layer)].status == "ok", metric

    def decoded(row):  # type: ignore[no-untyped-def]
        return {item.key: decode_item(item) for item in row.items}

    strengths = decoded(rows[("cnt.node_strength", layer)])
    assert list(strengths["blocks"]["block"])[:2] == first_blocks
    if arch != "vit":  # oracle: torch's own gate chunks of the module that was exported
        rnn = conf.build(arch)[0].rnn
        gates = 4 if arch == "lstm" else 3
        suffixes = sorted({k.split("_", 2)[2] for k, _ in rnn.named_parameters()})  # l0, l0_reverse, l1...
        want = [
            w.numpy().astype(np.float64).sum(axis=1) + b.numpy()
            for part in ("ih", "hh")
            for sfx in suffixes
            for w, b in zip(
                getattr(rnn, f"weight_{part}_{sfx}").detach().chunk(gates),
                getattr(rnn, f"bias_{part}_{sfx}").detach().chunk(gates),
            )
        ]
        np.testing.assert_allclose(strengths["in_strength"], np.concatenate(want), rtol=1e-5)
    divergence = decoded(rows[("cnt.divergence", "")])
    assert layer in divergence["layers"].split(",")
    basins = decoded(rows[("basins.weight", "")])
    assert layer in basins["perturbed_layers"].split(",")


def _cnt_results(r: conf.Result) -> dict[str, dict]:  # type: ignore[type-arg]
    """Every cnt.* metric on a backend's graph; input-dependent ones on captures of the same inputs."""
    graph = r.backend.graph
    x = torch.randn(6, *conf.ARCHS[r.arch].input_shape, generator=torch.Generator().manual_seed(4)).numpy()
    out: dict[str, dict] = {}  # type: ignore[type-arg]
    for metric in cnt.METRICS:
        if metric.needs == Needs.WEIGHTS:
            out[metric.name] = run_metric(
                metric,
                graph,
                params={"grid_points": 64} if any(p.name == "grid_points" for p in metric.params) else None,
            )
            continue
        names = [layer.name for layer in graph.layers if metric.applies_to(layer)]
        reqs = [CaptureRequest(n, w) for n in names for w in ("input", "output")]
        got = r.backend.run({graph.inputs[0].name: x}, reqs).captured
        out[metric.name] = run_metric(
            metric,
            graph,
            params={"grid_points": 64},
            inputs={n: got[CaptureRequest(n, "input")] for n in names},
            outputs={n: got[CaptureRequest(n, "output")] for n in names},
        )
    return out


def _numbers(value: object) -> dict[str, np.ndarray]:
    """The numeric content of a result item, by sub-key (strings such as extension notes may differ by format)."""
    if isinstance(value, Table):
        return {k: np.asarray(v, float) for k, v in value.columns.items() if np.asarray(v).dtype.kind in "biuf"}
    if isinstance(value, Curve):
        return {"x": np.asarray(value.x), "y": np.asarray(value.y)}
    if isinstance(value, Graph):
        return {
            "n": np.array([value.num_nodes]),
            "src": value.sources,
            "dst": value.targets,
            "w": value.weights,
            "bias": np.asarray(value.nodes["bias"]),
        }
    if isinstance(value, (bool, str)) or value is None:
        return {}
    return {"": np.asarray(value, float)}


@pytest.mark.parametrize("arch", list(conf.ARCHS))
def test_all_cnt_metrics_agree_across_formats(results, arch: str) -> None:
    """Every number of every cnt.* metric: .pt2 static, ONNX plain and ONNX as exported equal .pt2 dynamic."""
    ref = _cnt_results(results[(arch, "pt2_dynamic")])
    for how in ("pt2_static", "onnx_plain", "onnx_default"):
        got = _cnt_results(results[(arch, how)])
        for metric, layers in ref.items():
            assert set(got[metric]) - {"__warnings__"} == set(layers) - {"__warnings__"}, (how, metric)
            for layer, items in layers.items():
                if layer == "__warnings__":
                    continue
                numeric = {k for k, v in items.items() if not isinstance(v, str)}  # notes differ: 'bn1 folded'
                assert {k for k, v in got[metric][layer].items() if not isinstance(v, str)} == numeric, (
                    how,
                    metric,
                    layer,
                )
                for key in numeric:
                    want, have = _numbers(items[key]), _numbers(got[metric][layer][key])
                    for sub, a in want.items():
                        np.testing.assert_allclose(
                            have[sub], a, rtol=1e-5, atol=1e-6, err_msg=f"{how} {metric} {layer} {key} {sub}"
                        )


@pytest.mark.parametrize("arch", ["lstm", "gru"])
def test_recurrent_gate_weights_write_back_in_every_format(results, arch: str) -> None:
    """run_with_weights with new gate matrices (PyTorch layout) gives the torch module's output with them."""
    model, _ = conf.build(arch)
    gen = torch.Generator().manual_seed(6)
    new = {
        "weight_hh_l0": torch.randn(model.rnn.weight_hh_l0.shape, generator=gen) * 0.3,
        "bias_ih_l0": torch.randn(model.rnn.bias_ih_l0.shape, generator=gen),
    }
    x = torch.randn(3, *conf.ARCHS[arch].input_shape, generator=gen)
    with torch.no_grad():
        for key, value in new.items():
            getattr(model.rnn, key).copy_(value)
        want = model(x).numpy()
    for how in ("pt2_dynamic", "onnx_plain", "onnx_default"):
        b = results[(arch, how)].backend
        out = b.run_with_weights({b.graph.inputs[0].name: x.numpy()}, {"rnn": {k: v.numpy() for k, v in new.items()}})
        np.testing.assert_allclose(next(iter(out.outputs.values())), want, rtol=1e-4, atol=1e-5, err_msg=how)


@pytest.mark.slow
def test_real_server_static_batch_and_call_sites_end_to_end(results, tmp_path: Path) -> None:
    """Through gRPC: a .pt2 that fixes batch 2 takes 5 samples; a reused ReLU's second call is its own layer."""
    import deepscope
    from deepscope.embedded import EmbeddedServer

    path = conf.export(*conf.build("resnet_reused_relu"), "pt2_static", tmp_path / "model")
    model_t, _ = conf.build("resnet_reused_relu")
    x = torch.randn(5, 1, 8, 8, generator=torch.Generator().manual_seed(11))
    calls, _ = conf.module_calls(model_t, x)
    server = EmbeddedServer(store=tmp_path / "store")
    address = server.start()
    try:
        with deepscope.connect(address, token=server.token, progress=False) as client:
            model = client.upload_model(path)
            assert [n for n in model.notes if "fixes the batch size at 2" in n], model.notes
            acts = client.capture(model, x.numpy(), layers=["layer1.0.relu", "layer1.0.relu@1"])
            np.testing.assert_allclose(
                acts["layer1.0.relu"], calls["layer1.0.relu"][0][1], rtol=conf.RTOL, atol=conf.ATOL
            )
            np.testing.assert_allclose(
                acts["layer1.0.relu@1"], calls["layer1.0.relu"][1][1], rtol=conf.RTOL, atol=conf.ATOL
            )
            run = client.analyze(model, data=x.numpy(), metrics=["cnt.node_strength"], layers=["layer1.0.conv*"])
            local = _strengths(results[("resnet_reused_relu", "pt2_dynamic")].backend.graph)
            for layer in ("layer1.0.conv1", "layer1.0.conv2"):
                np.testing.assert_allclose(
                    run.result("cnt.node_strength", layer)["in_strength"], local[layer]["in_strength"], rtol=1e-6
                )
    finally:
        server.stop()
