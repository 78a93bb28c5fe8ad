"""Model conformance: real architectures x real exporter settings, checked against the torch module.

The exports and comparisons run once per session (``conformance.run_all``); each test asserts
one property over the matrix. ``docs/models.md`` is rendered from the same results.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from deepscope_metrics.plugins.cnt import NodeStrength

from deepscope_server.backends import CaptureRequest
from deepscope_server.testing import run_metric

from . import conformance as conf

CASES = [(arch, how) for arch in conf.ARCHS for how in conf.EXPORTS]
DOC = Path(__file__).resolve().parents[2] / "docs" / "models.md"


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, str], conf.Result]:
    torch.set_num_threads(1)
    return {(r.arch, r.export): r for r in conf.run_all(tmp_path_factory.mktemp("models"))}


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
                np.testing.assert_allclose(got[layer][key], vals[key], rtol=1e-4, atol=1e-5, err_msg=f"{how} {layer} {key}")


def test_cnt_reused_and_separate_relu_agree(results) -> None:
    """The same network with a reused or separate ReLU modules: the same strengths, and conv1 != conv2."""
    for how in ("pt2_dynamic", "onnx_default"):
        reused = _strengths(results[("resnet_reused_relu", how)].backend.graph)
        separate = _strengths(results[("resnet_separate_relu", how)].backend.graph)
        assert set(reused) == set(separate)
        for layer in reused:
            for key in ("in_strength", "out_strength"):
                np.testing.assert_allclose(reused[layer][key], separate[layer][key], rtol=1e-6, err_msg=f"{how} {layer}")
        assert not np.allclose(reused["layer1.0.conv1"]["in_strength"], reused["layer1.0.conv2"]["in_strength"])


def test_docs_matrix_is_current(results) -> None:
    text = conf.matrix_markdown([results[c] for c in CASES])
    assert DOC.read_text() == text, "docs/models.md is stale: run `python docs/generate_models_doc.py`"


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
            np.testing.assert_allclose(acts["layer1.0.relu"], calls["layer1.0.relu"][0][1], rtol=conf.RTOL, atol=conf.ATOL)
            np.testing.assert_allclose(acts["layer1.0.relu@1"], calls["layer1.0.relu"][1][1], rtol=conf.RTOL, atol=conf.ATOL)
            run = client.analyze(model, data=x.numpy(), metrics=["cnt.node_strength"], layers=["layer1.0.conv*"])
            local = _strengths(results[("resnet_reused_relu", "pt2_dynamic")].backend.graph)
            for layer in ("layer1.0.conv1", "layer1.0.conv2"):
                np.testing.assert_allclose(run.result("cnt.node_strength", layer)["in_strength"],
                                           local[layer]["in_strength"], rtol=1e-6)
    finally:
        server.stop()
