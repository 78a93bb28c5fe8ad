"""Captured activations agree across formats (ONNX, .pt2) and with hooks on the original torch module."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from deepscope_server.backends import CaptureRequest, load_model

RTOL, ATOL = 1e-4, 1e-4


def torch_reference(module: torch.nn.Module, x: torch.Tensor, names: list[str]) -> dict[tuple[str, str], np.ndarray]:
    """Inputs and outputs of named submodules from forward (pre-)hooks, cloned (some ops are in place)."""
    got: dict[tuple[str, str], np.ndarray] = {}
    handles = []
    mods = dict(module.named_modules())
    for name in names:
        if name not in mods:
            continue

        def pre(_m, args, name=name):  # type: ignore[no-untyped-def]
            got[(name, "input")] = args[0].detach().clone().numpy()

        def post(_m, _args, out, name=name):  # type: ignore[no-untyped-def]
            got[(name, "output")] = (out[0] if isinstance(out, tuple) else out).detach().clone().numpy()

        handles += [mods[name].register_forward_pre_hook(pre), mods[name].register_forward_hook(post)]
    with torch.no_grad():
        got[("", "model")] = module(x).numpy()
    for h in handles:
        h.remove()
    return got


@pytest.mark.parametrize("model_name", ["mlp", "cnn", "transformer"])
def test_formats_agree_with_each_other_and_with_torch_hooks(zoo_models, model_name: str) -> None:
    zm = zoo_models[model_name]
    x = zm.example.numpy()
    backends = {fmt: load_model(zm.paths[fmt], device="cpu") for fmt in ("onnx", "pt2")}
    names = [layer.name for layer in backends["pt2"].graph.layers]
    assert names == [layer.name for layer in backends["onnx"].graph.layers]
    reqs = [CaptureRequest(n, w) for n in names for w in ("output", "input")]
    runs = {fmt: b.run({"x": x}, reqs) for fmt, b in backends.items()}
    ref = torch_reference(zm.module, zm.example, names)

    checked_against_torch = 0
    for req in reqs:
        a, b = runs["onnx"].captured[req], runs["pt2"].captured[req]
        np.testing.assert_allclose(a, b, rtol=RTOL, atol=ATOL, err_msg=f"{req} onnx vs pt2")
        if (req.layer, req.what) in ref:
            np.testing.assert_allclose(b, ref[(req.layer, req.what)], rtol=RTOL, atol=ATOL, err_msg=f"{req} vs torch")
            checked_against_torch += 1
    module_layers = [n for n in names if n in dict(zm.module.named_modules())]
    assert checked_against_torch == 2 * len(module_layers) > 0
    for fmt in backends:
        np.testing.assert_allclose(runs[fmt].outputs["output"], ref[("", "model")], rtol=RTOL, atol=ATOL)


def test_functional_activation_matches_hand_computed_preactivation(zoo_models) -> None:
    """layer1.0.relu_1 is F.relu(bn2(...) + identity): its input is that sum, its output the ReLU of it."""
    zm = zoo_models["cnn"]
    ref = torch_reference(zm.module, zm.example, ["layer1.0.bn2", "pool"])
    expected_pre = ref[("layer1.0.bn2", "output")] + ref[("pool", "output")]
    for fmt in ("onnx", "pt2"):
        b = load_model(zm.paths[fmt], device="cpu")
        run = b.run(
            {"x": zm.example.numpy()}, [CaptureRequest("layer1.0.relu_1", "input"), CaptureRequest("layer1.0.relu_1")]
        )
        pre = run.captured[CaptureRequest("layer1.0.relu_1", "input")]
        np.testing.assert_allclose(pre, expected_pre, rtol=RTOL, atol=ATOL)
        assert (pre < 0).any()  # the pre-activation really is before the ReLU
        np.testing.assert_allclose(
            run.captured[CaptureRequest("layer1.0.relu_1")], np.maximum(expected_pre, 0), rtol=RTOL, atol=ATOL
        )


def test_transformer_gelu_functional_layer(zoo_models) -> None:
    zm = zoo_models["transformer"]
    ref = torch_reference(zm.module, zm.example, ["encoder.linear1", "encoder.linear2"])
    for fmt in ("onnx", "pt2"):
        b = load_model(zm.paths[fmt], device="cpu")
        run = b.run(
            {"x": zm.example.numpy()}, [CaptureRequest("encoder.gelu", "input"), CaptureRequest("encoder.gelu")]
        )
        np.testing.assert_allclose(
            run.captured[CaptureRequest("encoder.gelu", "input")],
            ref[("encoder.linear1", "output")],
            rtol=RTOL,
            atol=ATOL,
        )
        np.testing.assert_allclose(
            run.captured[CaptureRequest("encoder.gelu")], ref[("encoder.linear2", "input")], rtol=RTOL, atol=ATOL
        )
