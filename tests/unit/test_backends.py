"""Backends: layer tables, capture, validation and refusal of unsafe or broken files."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from deepscope_server.backends import CaptureRequest, detect_format, load_model
from deepscope_server.backends.onnx_backend import OnnxBackend
from deepscope_server.backends.torch_backend import PickledModuleBackend
from deepscope_server.errors import InvalidInput, NotFound

C = CaptureRequest
CNN_LAYERS = [
    ("conv1", "conv"),
    ("bn1", "norm"),
    ("act1", "activation"),
    ("pool", "pool"),
    ("layer1.0.conv1", "conv"),
    ("layer1.0.bn1", "norm"),
    ("layer1.0.relu", "activation"),
    ("layer1.0.conv2", "conv"),
    ("layer1.0.bn2", "norm"),
    ("layer1.0.relu_1", "activation"),
    ("flatten", "other"),
    ("fc", "linear"),
]


# --- layer tables -----------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["onnx", "pt2"])
def test_cnn_layer_table(zoo_models, fmt: str) -> None:
    zm = zoo_models["cnn"]
    g = load_model(zm.paths[fmt], device="cpu").graph
    assert [(layer.name, layer.kind) for layer in g.layers] == CNN_LAYERS
    assert g.inputs[0].name == "x" and g.inputs[0].dtype == "FP32" and g.inputs[0].shape == (None, 1, 8, 8)
    params = dict(zm.module.named_parameters()) | dict(zm.module.named_buffers())
    for layer in g.layers:  # every weight is the torch parameter, in PyTorch layout
        for key, w in layer.weights.items():
            np.testing.assert_array_equal(w, params[f"{layer.name}.{key}"].detach().numpy())
    conv1 = g.layer("layer1.0.conv1")
    assert set(conv1.weights) == {"weight"} and conv1.weights["weight"].shape == (8, 8, 3, 3)
    assert conv1.attrs["stride"] == (1, 1) and conv1.attrs["padding"] == (1, 1) and conv1.attrs["groups"] == 1
    assert conv1.output_shapes == [(None, 8, 4, 4)] and conv1.channel_axis == 1
    assert set(g.layer("bn1").weights) == {"weight", "bias", "running_mean", "running_var"}
    assert g.layer("bn1").attrs["eps"] == pytest.approx(1e-5)
    assert g.layer("layer1.0.relu_1").attrs["function"] == "relu"
    assert sorted(g.layer("layer1.0.relu_1").inputs) == ["layer1.0.bn2", "pool"]  # residual join
    assert g.layer("conv1").inputs == ["x"]
    assert g.layer("fc").inputs == ["flatten"] and g.layer("fc").channel_axis == -1
    assert g.layer("fc").input_shapes == [(None, 128)] and g.layer("fc").output_shapes == [(None, 10)]


@pytest.mark.parametrize("fmt", ["onnx", "pt2"])
def test_transformer_layer_table(zoo_models, fmt: str) -> None:
    zm = zoo_models["transformer"]
    g = load_model(zm.paths[fmt], device="cpu").graph
    attn = g.layer("encoder.self_attn")
    assert attn.kind == "attention"
    assert attn.weights["in_proj_weight"].shape == (48, 16)
    np.testing.assert_array_equal(
        attn.weights["out_proj.weight"], zm.module.encoder.self_attn.out_proj.weight.detach().numpy()
    )
    # a 3-D Linear exported as MatMul(x, Transpose(W)): still W[out, in]
    np.testing.assert_array_equal(
        g.layer("encoder.linear1").weights["weight"], zm.module.encoder.linear1.weight.detach().numpy()
    )
    assert g.layer("encoder.linear1").output_shapes == [(None, 5, 32)]
    assert g.layer("encoder.linear1").channel_axis == -1  # tokens [B, T, C]
    assert g.layer("encoder.gelu").kind == "activation" and g.layer("encoder.gelu").attrs["function"] == "gelu"
    assert g.layer("encoder.norm1").kind == "norm"
    assert "encoder.dropout1" not in {layer.name for layer in g.layers}  # no-op in eval


# --- capture ----------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["onnx", "pt2"])
def test_capture_output_and_preactivation_under_inplace_relu(zoo_models, fmt: str) -> None:
    """layer1.0.relu is ReLU(inplace=True): its input must still be the pre-activation."""
    zm = zoo_models["cnn"]
    b = load_model(zm.paths[fmt], device="cpu")
    m = zm.module
    with torch.no_grad():
        x = m.pool(m.act1(m.bn1(m.conv1(zm.example))))
        pre = m.layer1[0].bn1(m.layer1[0].conv1(x)).numpy()
    run = b.run({"x": zm.example.numpy()}, [C("layer1.0.relu", "input"), C("layer1.0.bn1"), C("layer1.0.relu")])
    assert (pre < 0).any()
    np.testing.assert_allclose(run.captured[C("layer1.0.relu", "input")], pre, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(run.captured[C("layer1.0.bn1")], pre, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(run.captured[C("layer1.0.relu")], np.maximum(pre, 0), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("fmt", ["onnx", "pt2"])
def test_capture_input_of_first_layer_is_a_copy_of_the_model_input(zoo_models, fmt: str) -> None:
    zm = zoo_models["mlp"]
    x = zm.example.numpy().copy()
    run = load_model(zm.paths[fmt], device="cpu").run({"x": x}, [C("fc1", "input")])
    got = run.captured[C("fc1", "input")]
    np.testing.assert_array_equal(got, x)
    x[:] = 0  # the caller reusing its buffer must not change the capture
    assert np.abs(got).sum() > 0


@pytest.mark.parametrize("fmt", ["onnx", "pt2"])
def test_unknown_layer_is_not_found_with_near_matches(zoo_models, fmt: str) -> None:
    b = load_model(zoo_models["mlp"].paths[fmt], device="cpu")
    with pytest.raises(NotFound, match=r"'fc4'.*did you mean: .*fc"):
        b.run({"x": zoo_models["mlp"].example.numpy()}, [C("fc4")])


@pytest.mark.parametrize("fmt", ["onnx", "pt2"])
def test_bad_dtype_and_shape_say_expected_and_got(zoo_models, fmt: str) -> None:
    b = load_model(zoo_models["mlp"].paths[fmt], device="cpu")
    with pytest.raises(InvalidInput, match=re.escape("input 'x': expected FP32 [?, 64], got FP64 [8, 63]")):
        b.run({"x": np.zeros((8, 63))})
    with pytest.raises(InvalidInput, match=re.escape("input 'x': expected FP32 [?, 64], got FP64 [8, 64]")):
        b.run({"x": np.zeros((8, 64))})  # float64 is refused, not silently cast
    with pytest.raises(NotFound, match=r"input 'X' not found.*did you mean: x"):
        b.run({"X": np.zeros((8, 64), np.float32)})
    with pytest.raises(InvalidInput, match="missing input 'x'"):
        b.run({})


@pytest.mark.parametrize("fmt", ["onnx", "pt2"])
def test_run_with_weights_replaces_then_restores(zoo_models, fmt: str) -> None:
    zm = zoo_models["mlp"]
    b = load_model(zm.paths[fmt], device="cpu")
    x = zm.example.numpy()
    before = b.run({"x": x}).outputs["output"]
    bias = zm.module.fc3.bias.detach().numpy()
    zeroed = b.run_with_weights({"x": x}, {"fc3": {"weight": np.zeros((10, 16), np.float32)}}, [C("fc3")])
    np.testing.assert_allclose(zeroed.outputs["output"], np.broadcast_to(bias, (4, 10)), atol=1e-6)
    np.testing.assert_allclose(zeroed.captured[C("fc3")], np.broadcast_to(bias, (4, 10)), atol=1e-6)
    # a non-symmetric change checks the layout: W[out, in] with one hot input column
    w = np.zeros((32, 64), np.float32)
    w[3, 5] = 2.0
    run = b.run_with_weights({"x": x}, {"fc1": {"weight": w}}, [C("fc1")])
    expected = np.broadcast_to(zm.module.fc1.bias.detach().numpy(), (4, 32)).copy()
    expected[:, 3] += 2.0 * x[:, 5]
    np.testing.assert_allclose(run.captured[C("fc1")], expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(b.run({"x": x}).outputs["output"], before)
    with pytest.raises(InvalidInput, match=r"expected shape \[32, 64\].*got \[64, 32\]"):
        b.run_with_weights({"x": x}, {"fc1": {"weight": w.T}})
    with pytest.raises(InvalidInput, match="no weight 'wieght'"):
        b.run_with_weights({"x": x}, {"fc1": {"wieght": w}})


# --- generic ONNX (no torch metadata): layout conversion from operator attributes ----------------


def _generic_onnx(path: Path) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    arrs = {
        "B_gemm": rng.standard_normal((6, 5)).astype(np.float32),  # transB=0: [in, out]
        "C_gemm": rng.standard_normal(5).astype(np.float32),
        "B_mm": rng.standard_normal((5, 3)).astype(np.float32),  # MatMul initializer [in, out]
    }
    nodes = [
        helper.make_node("Gemm", ["x", "B_gemm", "C_gemm"], ["h"], name="dense", alpha=2.0, beta=0.5, transB=0),
        helper.make_node("LeakyRelu", ["h"], ["a"], name="act", alpha=0.2),
        helper.make_node("MatMul", ["a", "B_mm"], ["y"], name="proj"),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])],
        [numpy_helper.from_array(v, k) for k, v in arrs.items()],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), str(path))
    return arrs


def test_generic_onnx_weights_in_pytorch_layout(tmp_path: Path) -> None:
    arrs = _generic_onnx(tmp_path / "g.onnx")
    b = load_model(tmp_path / "g.onnx", device="cpu")
    g = b.graph
    assert [(layer.name, layer.kind) for layer in g.layers] == [
        ("dense", "linear"),
        ("act", "activation"),
        ("proj", "linear"),
    ]
    W, bias = g.layer("dense").weights["weight"], g.layer("dense").weights["bias"]
    np.testing.assert_allclose(W, 2.0 * arrs["B_gemm"].T)  # alpha folded, [out, in]
    np.testing.assert_allclose(bias, 0.5 * arrs["C_gemm"])  # beta folded
    np.testing.assert_allclose(g.layer("proj").weights["weight"], arrs["B_mm"].T)
    assert g.layer("act").attrs == {"function": "leaky_relu", "negative_slope": pytest.approx(0.2)}
    x = np.random.default_rng(1).standard_normal((4, 6)).astype(np.float32)
    h = x @ W.T + bias  # torch semantics with the reported weights
    run = b.run({"x": x}, [C("dense"), C("act", "input"), C("act")])
    np.testing.assert_allclose(run.captured[C("dense")], h, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(run.captured[C("act")], np.where(h > 0, h, 0.2 * h), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(run.outputs["y"], np.where(h > 0, h, 0.2 * h) @ arrs["B_mm"], rtol=1e-5, atol=1e-5)
    # replaced weights go back through the inverse conversion (alpha, transB)
    W2 = np.arange(30, dtype=np.float32).reshape(5, 6) / 30
    run2 = b.run_with_weights({"x": x}, {"dense": {"weight": W2}}, [C("dense")])
    np.testing.assert_allclose(run2.captured[C("dense")], x @ W2.T + bias, rtol=1e-5, atol=1e-5)


def test_onnx_asymmetric_conv_pads_reported_as_pads(tmp_path: Path) -> None:
    w = np.ones((2, 1, 3, 3), np.float32)
    node = helper.make_node("Conv", ["x", "w"], ["y"], name="c", pads=[0, 1, 1, 0], strides=[2, 1], group=1)
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, 6, 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(w, "w")],
    )
    onnx.save(
        helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), str(tmp_path / "c.onnx")
    )
    layer = load_model(tmp_path / "c.onnx", device="cpu").graph.layer("c")
    assert layer.kind == "conv" and layer.attrs["stride"] == (2, 1) and layer.attrs["pads"] == (0, 1, 1, 0)
    assert "padding" not in layer.attrs and layer.channel_axis == 1


# --- refusals ---------------------------------------------------------------------------------


def _external_model(tmp_path: Path, location: str) -> Path:
    tensor = numpy_helper.from_array(np.ones((2, 2), np.float32), "w")
    tensor.ClearField("raw_data")
    tensor.data_location = TensorProto.EXTERNAL
    for k, v in (("location", location), ("offset", "0"), ("length", "16")):
        entry = tensor.external_data.add()
        entry.key, entry.value = k, v
    node = helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2])],
        [tensor],
    )
    path = tmp_path / "ext" / "m.onnx"
    path.parent.mkdir(exist_ok=True)
    path.write_bytes(
        helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8).SerializeToString()
    )
    return path


@pytest.mark.parametrize("location", ["../x.bin", "/etc/passwd", "sub/../../x.bin"])
def test_external_data_outside_model_directory_refused(tmp_path: Path, location: str) -> None:
    (tmp_path / "x.bin").write_bytes(np.ones(4, np.float32).tobytes())
    path = _external_model(tmp_path, location)
    with pytest.raises(InvalidInput, match="outside the model's directory"):
        load_model(path, device="cpu")


def test_external_data_inside_model_directory_loads(tmp_path: Path) -> None:
    path = _external_model(tmp_path, "w.bin")
    (path.parent / "w.bin").write_bytes((np.eye(2, dtype=np.float32) * 3).tobytes())
    b = load_model(path, device="cpu")
    np.testing.assert_allclose(b.run({"x": np.ones((1, 2), np.float32)}).outputs["y"], [[3.0, 3.0]])


def test_custom_domain_refused(tmp_path: Path) -> None:
    node = helper.make_node("MySecretOp", ["x"], ["y"], domain="com.example.custom")
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.example.custom", 1)], ir_version=8
    )
    onnx.save(model, str(tmp_path / "custom.onnx"))
    with pytest.raises(InvalidInput, match="custom domain 'com.example.custom'"):
        load_model(tmp_path / "custom.onnx", device="cpu")


def test_pickled_module_refused_unless_trusted(zoo_models, tmp_path: Path) -> None:
    zm = zoo_models["cnn"]
    path = tmp_path / "weird_name.onnx"  # extension lies: detection is by content
    torch.save(zm.module, path)
    assert detect_format(path) == "torch_pickle"
    with pytest.raises(InvalidInput, match="pickled PyTorch modules .* refused"):
        load_model(path, device="cpu")
    b = load_model(path, device="cpu", trusted=True)
    assert isinstance(b, PickledModuleBackend)
    m = zm.module
    with torch.no_grad():
        x = m.pool(m.act1(m.bn1(m.conv1(zm.example))))
        pre = m.layer1[0].bn1(m.layer1[0].conv1(x)).numpy()
        expected_out = m(zm.example).numpy()
    run = b.run({"x": zm.example.numpy()}, [C("layer1.0.relu", "input"), C("layer1.0.bn1"), C("fc")])
    np.testing.assert_allclose(run.captured[C("layer1.0.relu", "input")], pre, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(run.captured[C("layer1.0.bn1")], pre, rtol=1e-5, atol=1e-6)  # not clobbered in place
    np.testing.assert_allclose(run.outputs["output"], expected_out, rtol=1e-5, atol=1e-6)


def test_state_dict_refused_as_weights_only(zoo_models, tmp_path: Path) -> None:
    path = tmp_path / "sd.pt"
    torch.save(zoo_models["mlp"].module.state_dict(), path)
    with pytest.raises(InvalidInput, match="weights only, no architecture"):
        load_model(path, device="cpu", trusted=True)


@pytest.mark.parametrize(
    "content", [b"\x08\x07garbage-not-protobuf\xff\xff", b"PK\x03\x04broken zip", b"hello world", b""]
)
def test_corrupt_bytes_are_invalid_input(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "m.onnx"
    path.write_bytes(content)
    with pytest.raises(InvalidInput):
        load_model(path, device="cpu")


def test_truncated_onnx_is_invalid_input(zoo_models, tmp_path: Path) -> None:
    data = zoo_models["mlp"].paths["onnx"].read_bytes()
    path = tmp_path / "t.onnx"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(InvalidInput):
        load_model(path, device="cpu")


# --- detection and TorchScript ------------------------------------------------------------------


def test_detect_format_by_content(zoo_models, tmp_path: Path) -> None:
    expected = {"onnx": "onnx", "pt2": "pt2", "pt": "torchscript"}
    for fmt, path in zoo_models["mlp"].paths.items():
        renamed = tmp_path / f"model_{fmt}.bin"
        renamed.write_bytes(path.read_bytes())
        assert detect_format(renamed) == expected[fmt]


def test_torchscript_runs_and_refuses_capture_pointing_to_torch_export(zoo_models) -> None:
    zm = zoo_models["cnn"]
    b = load_model(zm.paths["pt"], device="cpu")
    assert [layer.name for layer in b.graph.layers] == [n for n, _ in CNN_LAYERS if n != "layer1.0.relu_1"]
    np.testing.assert_array_equal(b.graph.layer("fc").weights["weight"], zm.module.fc.weight.detach().numpy())
    with torch.no_grad():
        expected = zm.module(zm.example).numpy()
    np.testing.assert_allclose(b.run({"x": zm.example.numpy()}).outputs["output"], expected, rtol=1e-5, atol=1e-6)
    with pytest.raises(InvalidInput, match="torch.export"):
        b.run({"x": zm.example.numpy()}, [C("fc")])
    with pytest.raises(InvalidInput, match=re.escape("expected FP32")):
        b.run({"x": zm.example.numpy().astype(np.float64)})


def test_module_formats_share_the_layer_table_builder(zoo_models, tmp_path: Path) -> None:
    """TorchScript and pickled modules: names, kinds and weights as in .pt2 (bar call sites), channels of NCHW maps."""
    for name in ("mlp", "cnn"):
        zm = zoo_models[name]
        pt2 = load_model(zm.paths["pt2"], device="cpu").graph
        torch.save(zm.module, tmp_path / f"{name}.pkl")
        for g in (
            load_model(zm.paths["pt"], device="cpu").graph,
            load_model(tmp_path / f"{name}.pkl", trusted=True).graph,
        ):
            # modules only: no functional ReLU (layer1.0.relu_1), and inputs chain in definition order
            want = [layer for layer in pt2.layers if not layer.name.endswith("relu_1")]
            assert [(x.name, x.kind, x.op_type) for x in g.layers] == [(x.name, x.kind, x.op_type) for x in want]
            for mine, ref in zip(g.layers, want):
                # traced modules keep no hyperparameters (stride, eps...); pooling sizes are .pt2 only
                assert set(mine.weights) == set(ref.weights) and mine.attrs.items() <= ref.attrs.items(), mine.name
                if mine.kind in ("conv", "norm", "activation") and g.format == "torch_pickle":
                    assert mine.attrs == ref.attrs, mine.name
                for key, w in mine.weights.items():
                    np.testing.assert_array_equal(w, ref.weights[key])
                if mine.kind in ("conv", "norm", "pool"):  # NCHW: the class fixes the rank, so the channel axis
                    assert mine.channel_axis == ref.channel_axis == 1 and len(mine.output_shapes[0]) == 4
            assert [x.inputs for x in g.layers][:2] == [["input"], [g.layers[0].name]]
    bare = torch.jit.trace(torch.nn.Linear(3, 2).eval(), torch.randn(1, 3))  # a module exported on its own
    torch.jit.save(bare, tmp_path / "bare.pt")
    g = load_model(tmp_path / "bare.pt", device="cpu").graph
    assert [(x.name, x.kind) for x in g.layers] == [("linear", "linear")]
    np.testing.assert_array_equal(g.layer("linear").weights["weight"], bare.weight.detach().numpy())


def test_onnx_session_reports_cpu_when_no_gpu(zoo_models) -> None:
    b = load_model(zoo_models["mlp"].paths["onnx"], device="auto")
    assert isinstance(b, OnnxBackend)
    assert b.device == ("cuda" if torch.cuda.is_available() else "cpu")


# --- the shared layer-table builder, static batches, IR versions ----------------------------------


def _rec(id: str, ins: list[str], path: str, cls: str, call: int | None = None, fn: str | None = None):  # type: ignore[no-untyped-def]
    from deepscope_server.backends.layer_table import Frame, OpRecord

    stack = (Frame("", "Net", 0),) + ((Frame(path, cls, call),) if path else ())
    return OpRecord(
        id=id,
        op_type=fn or id,
        stack=stack,
        inputs=ins,
        outputs=[id],
        function=fn,
        source=id,
        op_kind="activation" if fn else None,
    )


def test_layer_table_one_layer_per_call_site_split_by_connectivity() -> None:
    """A module path seen twice without call indices (ONNX) becomes two layers, wired to what feeds each call."""
    from deepscope_server.backends.layer_table import build_layer_table

    recs = [
        _rec("conv", ["x"], "conv", "Conv2d"),
        _rec("relu", ["conv"], "relu", "ReLU", fn="relu"),
        _rec("conv2", ["relu"], "conv2", "Conv2d"),
        _rec("add", ["conv2", "conv"], "", ""),  # functional glue: not a layer
        _rec("relu_1", ["add"], "relu", "ReLU", fn="relu"),
        _rec("tanh", ["relu_1"], "", "", fn="tanh"),  # functional activation in the root
    ]
    shapes = {r.outputs[0]: (None, 4) for r in recs} | {"x": (None, 4)}
    table = build_layer_table(recs, ["x"], ["tanh"], shapes)
    assert [(layer.name, layer.kind) for layer in table.layers] == [
        ("conv", "conv"),
        ("relu", "activation"),
        ("conv2", "conv"),
        ("relu@1", "activation"),
        ("tanh", "activation"),
    ]
    by = {layer.name: layer for layer in table.layers}
    assert by["relu"].inputs == ["conv"] and sorted(by["relu@1"].inputs) == ["conv", "conv2"]
    assert table.values["relu@1"].output == "relu_1" and table.values["relu@1"].input == "add"


def test_layer_table_recorded_call_index_and_bare_root_module() -> None:
    from deepscope_server.backends.layer_table import Frame, OpRecord, build_layer_table

    recs = [_rec("a", ["x"], "act", "ReLU", 0, "relu"), _rec("b", ["a"], "act", "ReLU", 1, "relu")]
    table = build_layer_table(recs, ["x"], ["b"], {"x": (None, 2), "a": (None, 2), "b": (None, 2)})
    assert [layer.name for layer in table.layers] == ["act", "act@1"]
    bare = OpRecord("linear", "linear", (Frame("", "Linear", 0),), ["x"], ["y"], op_kind="linear")
    table = build_layer_table([bare], ["x"], ["y"], {"x": (None, 16), "y": (None, 5)})
    assert [(layer.name, layer.kind, layer.inputs) for layer in table.layers] == [("linear", "linear", ["x"])]


def _relu_model(path: Path, ir_version: int, batch: int | str) -> Path:
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"], name="act")],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, 3])],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=ir_version), str(path))
    return path


def test_onnx_ir_version_newer_than_onnxruntime_is_lowered(tmp_path: Path) -> None:
    b = load_model(_relu_model(tmp_path / "m.onnx", 99, "N"), device="cpu")  # onnxruntime reads up to 13 or so
    x = np.array([[-1.0, 0.5, 2.0]], np.float32)
    np.testing.assert_array_equal(b.run({"x": x}, [C("act", "input")]).outputs["y"], np.maximum(x, 0))
    assert any(re.search(r"IR version 99 lowered to \d+", n) for n in b.graph.notes), b.graph.notes


def test_static_batch_splits_pads_and_trims(tmp_path: Path) -> None:
    b = load_model(_relu_model(tmp_path / "m.onnx", 8, 2), device="cpu")
    assert b.graph.static_batch == 2
    x = np.random.default_rng(0).standard_normal((5, 3)).astype(np.float32)
    run = b.run({"x": x}, [C("act", "input"), C("act")])
    np.testing.assert_array_equal(run.outputs["y"], np.maximum(x, 0))
    np.testing.assert_array_equal(run.captured[C("act", "input")], x)  # no padding row in a capture
    with pytest.raises(InvalidInput, match=re.escape("expected FP32 [2, 3], got FP32 [5, 4]")):
        b.run({"x": np.zeros((5, 4), np.float32)})  # wrong feature size: still refused as is


def test_generic_onnx_matmul_add_is_one_linear_layer_and_gemm_trans_b(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    B, c = rng.standard_normal((4, 3)).astype(np.float32), rng.standard_normal(3).astype(np.float32)
    G = rng.standard_normal((2, 3)).astype(np.float32)  # Gemm transB=1: already [out, in]
    nodes = [
        helper.make_node("MatMul", ["x", "B"], ["h"], name="mm"),
        helper.make_node("Add", ["h", "c"], ["a"], name="bias"),
        helper.make_node("Gemm", ["a", "G"], ["y"], name="gemm", transB=1),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2])],
        [numpy_helper.from_array(B, "B"), numpy_helper.from_array(c, "c"), numpy_helper.from_array(G, "G")],
    )
    onnx.save(
        helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), str(tmp_path / "m.onnx")
    )
    b = load_model(tmp_path / "m.onnx", device="cpu")
    assert [(layer.name, layer.kind) for layer in b.graph.layers] == [("mm", "linear"), ("gemm", "linear")]
    np.testing.assert_array_equal(b.graph.layer("mm").weights["weight"], B.T)
    np.testing.assert_array_equal(b.graph.layer("mm").weights["bias"], c)
    np.testing.assert_array_equal(b.graph.layer("gemm").weights["weight"], G)
    x = rng.standard_normal((3, 4)).astype(np.float32)
    np.testing.assert_allclose(b.run({"x": x}, [C("mm")]).captured[C("mm")], x @ B + c, rtol=1e-5, atol=1e-6)
