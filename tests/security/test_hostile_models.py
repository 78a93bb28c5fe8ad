"""Hostile model files, built here, loaded the way the server loads client uploads.

Every .pt2 route by which ``torch.export.load`` (torch 2.13) runs code from the archive gets a file
whose payload would create a marker file. Each test first shows the route is real (plain
``pickle.loads`` of the payload, or torch's own loader, creates the marker), then that
``load_model`` refuses the file naming the member, or drops the member and loads the model
without running it, and the marker never appears. ONNX: custom domains, oversized tensors and
escaping external data hidden where a shallow check does not look.
"""

from __future__ import annotations

import contextlib
import json
import pathlib
import pickle
import re
import warnings
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from deepscope_server.backends.detect import load_model
from deepscope_server.config import Limits
from deepscope_server.errors import InvalidInput, LimitExceeded
from deepscope_server.models import preflight


class Touch:
    """Unpickling this creates ``path``: the stand-in for any code an attacker would run."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (pathlib.Path.touch, (pathlib.Path(self.path),))


def payload(marker: Path) -> bytes:
    """A pickle that creates ``marker``; checked to really do so (so the tests below can fail)."""
    data = pickle.dumps(Touch(marker))
    pickle.loads(data)
    assert marker.exists(), "control: the payload must create the marker when unpickled"
    marker.unlink()
    return data


def code(marker: Path) -> str:
    """A Python expression that creates ``marker``."""
    return f"__import__('pathlib').Path({str(marker)!r}).touch() is None"


class ConvBN(torch.nn.Module):
    """Conv + BatchNorm (parameters and buffers) + a plain tensor attribute (a lifted constant)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 3, 3)
        self.bn = torch.nn.BatchNorm2d(3)
        self.offset = torch.linspace(-1.0, 1.0, 3).reshape(3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.bn(self.conv(x))) + self.offset


@pytest.fixture(scope="module")
def net() -> ConvBN:
    torch.manual_seed(0)
    module = ConvBN().eval()
    with torch.no_grad():
        module.bn.running_mean.uniform_(-0.5, 0.5)
        module.bn.running_var.uniform_(0.5, 2.0)
    return module


@pytest.fixture(scope="module")
def exports(net: ConvBN, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """``torch.export.save`` of the net: static shapes and a dynamic batch."""
    root = tmp_path_factory.mktemp("pt2")
    x = torch.randn(2, 1, 6, 6)
    out = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name, dynamic in (("static", None), ("dynamic", ({0: torch.export.Dim("batch", min=1, max=64)},))):
            ep = torch.export.export(net, (x,), dynamic_shapes=dynamic)
            torch.export.save(ep, str(root / f"{name}.pt2"))
            out[name] = root / f"{name}.pt2"
    return out


def rewrite(
    src: Path, dst: Path, edit: dict[str, Callable[[bytes], bytes]] | None = None, add: dict[str, bytes] | None = None
) -> Path:
    """A copy of a .pt2 with members edited or added (names relative to the archive's root folder)."""
    edit, add = edit or {}, add or {}
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        root = zin.namelist()[0].split("/")[0]
        for info in zin.infolist():
            rel = info.filename[len(root) + 1 :]
            data = zin.read(info)
            zout.writestr(info, edit[rel](data) if rel in edit else data)
        for rel, data in add.items():
            zout.writestr(f"{root}/{rel}", data)
    return dst


def edit_json(fn: Callable[[dict], None]) -> Callable[[bytes], bytes]:
    def apply(data: bytes) -> bytes:
        doc = json.loads(data)
        fn(doc)
        return json.dumps(doc).encode()

    return apply


def assert_same_outputs(path: Path, net: torch.nn.Module, batch: int = 2) -> None:
    backend = load_model(path, device="cpu")
    x = np.random.default_rng(batch).standard_normal((batch, 1, 6, 6)).astype(np.float32)
    got = backend.run({backend.graph.inputs[0].name: x}).outputs
    with torch.no_grad():
        want = net(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(next(iter(got.values())), want, rtol=1e-5, atol=1e-6)


# --- .pt2: normal exports still load ----------------------------------------------------------


@pytest.mark.parametrize("kind", ["static", "dynamic"])
def test_normal_exports_load_and_match_the_module(exports: dict[str, Path], net: ConvBN, kind: str) -> None:
    assert_same_outputs(exports[kind], net, batch=2)
    if kind == "dynamic":
        assert_same_outputs(exports[kind], net, batch=5)


def test_extra_files_are_accepted_and_never_read(net: ConvBN, tmp_path: Path) -> None:
    ep = torch.export.export(net, (torch.randn(1, 1, 6, 6),))
    torch.export.save(ep, str(tmp_path / "extra.pt2"), extra_files={"notes.txt": "trained on digits"})
    assert_same_outputs(tmp_path / "extra.pt2", net, batch=1)


class Strided(torch.nn.Module):
    """Strided conv, pooling, flatten and a slice by half the length: symbolic sizes and size arithmetic."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 4, 3, stride=2, padding=1)
        self.pool = torch.nn.MaxPool2d(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.pool(torch.relu(self.conv(x))).flatten(1)
        return torch.cat([y, y[:, : y.shape[1] // 2]], 1)


def test_dynamic_spatial_dims_with_size_arithmetic_load(tmp_path: Path) -> None:
    torch.manual_seed(1)
    net = Strided().eval()
    h, w = torch.export.Dim("h", min=2, max=64), torch.export.Dim("w", min=2, max=64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ep = torch.export.export(net, (torch.randn(2, 1, 16, 12),), dynamic_shapes=({2: 4 * h, 3: 4 * w},))
    torch.export.save(ep, str(tmp_path / "strided.pt2"))
    backend = load_model(tmp_path / "strided.pt2", device="cpu")
    x = np.random.default_rng(0).standard_normal((2, 1, 24, 32)).astype(np.float32)
    with torch.no_grad():
        want = net(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(backend.run({"x": x}).outputs["output"], want, rtol=1e-5, atol=1e-6)


# --- .pt2: the pickle routes ------------------------------------------------------------------


def _use_pickle(fqn: str) -> Callable[[bytes], bytes]:
    def fn(doc: dict) -> None:
        doc["config"][fqn]["use_pickle"] = True

    return edit_json(fn)


ROUTES = {
    # (b) a weight whose config says "use_pickle": true -> torch.load(weights_only=False)
    "pickled weight": (
        "data/weights/weight_0",
        "use_pickle",
        lambda p: dict(
            edit={
                "data/weights/model_weights_config.json": _use_pickle("conv.weight"),
                "data/weights/weight_0": lambda _: p,
            }
        ),
    ),
    # (b) the same for a tensor constant
    "pickled constant": (
        "data/constants/tensor_0",
        "use_pickle",
        lambda p: dict(
            edit={
                "data/constants/model_constants_config.json": _use_pickle("offset"),
                "data/constants/tensor_0": lambda _: p,
            }
        ),
    ),
    # (c) an opaque object constant -> plain pickle.loads
    "opaque object": (
        "data/constants/opaque_obj_0",
        "pickle",
        lambda p: dict(
            add={"data/constants/opaque_obj_0": p},
            edit={
                "data/constants/model_constants_config.json": edit_json(
                    lambda d: d["config"].update(
                        evil={"path_name": "opaque_obj_0", "is_param": False, "use_pickle": True, "tensor_meta": None}
                    )
                )
            },
        ),
    ),
    # (d) legacy pickled weights -> torch.load(weights_only=True), retried with weights_only=False
    "legacy weights": ("data/weights/model.pt", "legacy", lambda p: dict(add={"data/weights/model.pt": p})),
}


@pytest.mark.parametrize("route", list(ROUTES))
def test_pickle_routes_are_refused_naming_the_member(exports: dict[str, Path], tmp_path: Path, route: str) -> None:
    member, reason, build = ROUTES[route]
    marker = tmp_path / "pwned"
    hostile = rewrite(exports["static"], tmp_path / "hostile.pt2", **build(payload(marker)))
    with pytest.raises(InvalidInput) as info:
        load_model(hostile, device="cpu")
    assert f"'{member}'" in str(info.value) and reason in str(info.value)
    assert not marker.exists()


@pytest.mark.parametrize("route", list(ROUTES))
def test_control_torch_export_load_runs_each_route(exports: dict[str, Path], tmp_path: Path, route: str) -> None:
    """The files above are real attacks: torch's own loader runs their payload (why pt2_safety exists)."""
    _, _, build = ROUTES[route]
    marker = tmp_path / "pwned"
    hostile = rewrite(exports["static"], tmp_path / "hostile.pt2", **build(payload(marker)))
    with warnings.catch_warnings(), contextlib.suppress(Exception):  # torch may fail after the payload ran
        warnings.simplefilter("ignore")
        torch.export.load(str(hostile))
    assert marker.exists()


def test_pickled_sample_inputs_are_never_read(exports: dict[str, Path], net: ConvBN, tmp_path: Path) -> None:
    """(a) sample inputs: torch retries a failed weights_only load with full pickle; deepscope drops them."""
    marker = tmp_path / "pwned"
    hostile = rewrite(
        exports["static"], tmp_path / "hostile.pt2", edit={"data/sample_inputs/model.pt": lambda _: payload(marker)}
    )
    assert_same_outputs(hostile, net)
    assert not marker.exists()
    with warnings.catch_warnings(), pytest.raises(Exception):  # noqa: B017
        warnings.simplefilter("ignore")
        torch.export.load(str(hostile))
    assert marker.exists(), "control: torch.export.load runs the sample-inputs pickle"


def test_symbolic_expression_is_not_evaluated(exports: dict[str, Path], tmp_path: Path) -> None:
    """models/model.json sizes go through sympy.sympify, which evals the string."""
    marker = tmp_path / "pwned"

    def inject(doc: dict) -> None:
        sizes = doc["graph_module"]["graph"]["tensor_values"]["x"]["sizes"]
        symbol = sizes[0]["as_expr"]["expr_str"]
        sizes[0]["as_expr"]["expr_str"] = f"{symbol} if {code(marker)} else 0"

    hostile = rewrite(exports["dynamic"], tmp_path / "hostile.pt2", edit={"models/model.json": edit_json(inject)})
    with pytest.raises(InvalidInput, match=r"'models/model.json' holds a symbolic expression .*eval"):
        load_model(hostile, device="cpu")
    assert not marker.exists()
    torch.export.load(str(hostile))
    assert marker.exists(), "control: torch.export.load evals the expression"


def test_guards_code_is_not_executed(exports: dict[str, Path], net: ConvBN, tmp_path: Path) -> None:
    """ep.module() compiles models/model.json's guards_code with exec when sample inputs were loaded."""
    marker = tmp_path / "pwned"
    hostile = rewrite(
        exports["static"],
        tmp_path / "hostile.pt2",
        edit={"models/model.json": edit_json(lambda d: d.update(guards_code=[code(marker)]))},
    )
    assert_same_outputs(hostile, net)
    assert not marker.exists()
    torch.export.load(str(hostile)).module()(torch.randn(2, 1, 6, 6))
    assert marker.exists(), "control: torch's ep.module() executes guards_code"


def test_pre_2_8_archive_layout_is_refused(exports: dict[str, Path], tmp_path: Path) -> None:
    """When the current reader fails, torch.export.load falls back to the old layout and unpickles its members."""
    from torch._export.serde.schema import SCHEMA_VERSION

    marker = tmp_path / "pwned"
    data = payload(marker)
    hostile = tmp_path / "old.pt2"
    with zipfile.ZipFile(exports["static"]) as src, zipfile.ZipFile(hostile, "w") as z:
        z.writestr("version", ".".join(map(str, SCHEMA_VERSION)))
        z.writestr("serialized_exported_program.json", src.read(f"{exports['static'].stem}/models/model.json"))
        for name in ("serialized_state_dict.pt", "serialized_constants.pt", "serialized_example_inputs.pt"):
            z.writestr(name, data)
    with pytest.raises(InvalidInput, match=r"older torch.export formats are not accepted"):
        load_model(hostile, device="cpu")
    assert not marker.exists()
    with warnings.catch_warnings(), contextlib.suppress(Exception):
        warnings.simplefilter("ignore")
        torch.export.load(str(hostile))
    assert marker.exists(), "control: torch.export.load unpickles the old layout's members"


@pytest.mark.parametrize(
    ("member", "why"),
    [
        ("data/aotinductor/model/model.so", "AOTInductor compiled code"),
        ("data/constants/custom_obj_0", "TorchScript custom object"),
        ("data/constants/model.pt", "legacy format"),
        ("models/other.json", "second program"),
        ("code/__init__.py", "not part of a torch.export archive"),
    ],
)
def test_other_members_are_refused(exports: dict[str, Path], tmp_path: Path, member: str, why: str) -> None:
    hostile = rewrite(exports["static"], tmp_path / "hostile.pt2", add={member: b"\x80\x04N."})
    with pytest.raises(InvalidInput, match=why) as info:
        load_model(hostile, device="cpu")
    assert f"'{member}'" in str(info.value)


def test_non_operator_call_target_is_refused(exports: dict[str, Path], tmp_path: Path) -> None:
    def inject(doc: dict) -> None:
        doc["graph_module"]["graph"]["nodes"][0]["target"] = "torch.os.system"

    hostile = rewrite(exports["static"], tmp_path / "hostile.pt2", edit={"models/model.json": edit_json(inject)})
    with pytest.raises(InvalidInput, match=r"calls 'torch.os.system'.*not a torch operator"):
        load_model(hostile, device="cpu")


def test_empty_weight_member_cannot_declare_a_huge_tensor(exports: dict[str, Path], tmp_path: Path) -> None:
    """An empty record makes torch allocate zeros of the declared size: the declared size must fit the bytes."""

    def huge(doc: dict) -> None:
        doc["config"]["conv.weight"]["tensor_meta"]["sizes"][0] = {"as_int": 1 << 40}

    hostile = rewrite(
        exports["static"],
        tmp_path / "hostile.pt2",
        edit={"data/weights/model_weights_config.json": edit_json(huge), "data/weights/weight_0": lambda _: b""},
    )
    with pytest.raises(InvalidInput, match=r"'data/weights/weight_0' holds 0 bytes"):
        load_model(hostile, device="cpu")


def test_hostile_uploads_over_grpc_are_refused_and_the_server_keeps_serving(
    exports: dict[str, Path], net: ConvBN, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The real upload RPC: each route is INVALID_ARGUMENT naming its member; a normal upload then works."""
    import deepscope

    marker = tmp_path / "pwned"
    hostile = {
        route: rewrite(exports["static"], tmp_path / f"{i}.pt2", **build(payload(marker)))
        for i, (route, (_, _, build)) in enumerate(ROUTES.items())
    }
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the server child: 2-core CI box
    with deepscope.Client.embedded(store=tmp_path / "store", progress=False) as client:
        for route, path in hostile.items():
            with pytest.raises(deepscope.InvalidArgument, match=re.escape(f"'{ROUTES[route][0]}'")):
                client.upload_model(path)
        assert not marker.exists()
        assert client.models() == []
        model = client.upload_model(exports["static"])
        x = np.random.default_rng(3).standard_normal((2, 1, 6, 6)).astype(np.float32)
        acts = client.capture(model, x, layers=["conv"])
    with torch.no_grad():
        np.testing.assert_allclose(
            next(iter(acts.model_outputs.values())), net(torch.from_numpy(x)).numpy(), rtol=1e-5, atol=1e-6
        )
        np.testing.assert_allclose(acts["conv"], net.conv(torch.from_numpy(x)).numpy(), rtol=1e-5, atol=1e-6)


# --- ONNX: what hides below the top-level graph ----------------------------------------------


def _save(model: onnx.ModelProto, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(model.SerializeToString())
    return path


def _function_model(op: str, domain: str) -> onnx.ModelProto:
    """y = Wrap(x), where local function Wrap's body is one ``domain``.``op`` node."""
    body = helper.make_node(op, ["a"], ["b"], domain=domain)
    imports = [helper.make_opsetid("", 17)] + ([helper.make_opsetid(domain, 1)] if domain else [])
    fn = helper.make_function("local.fn", "Wrap", ["a"], ["b"], [body], imports)
    graph = helper.make_graph(
        [helper.make_node("Wrap", ["x"], ["y"], domain="local.fn")],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3])],
    )
    return helper.make_model(
        graph, functions=[fn], ir_version=8, opset_imports=imports + [helper.make_opsetid("local.fn", 1)]
    )


def test_custom_domain_inside_a_function_body_is_refused(tmp_path: Path) -> None:
    ok = load_model(_save(_function_model("Relu", ""), tmp_path / "ok.onnx"), device="cpu")  # control
    np.testing.assert_array_equal(ok.run({"x": np.array([-1, 0, 2], np.float32)}).outputs["y"], [0, 0, 2])
    path = _save(_function_model("Evil", "com.example.custom"), tmp_path / "evil.onnx")
    with pytest.raises(InvalidInput, match=r"'Evil' from custom domain 'com.example.custom'") as info:
        load_model(path, device="cpu")
    assert "function 'local.fn.Wrap'" in str(info.value)


def _sparse_model(dense: int, values_location: str | None = None) -> onnx.ModelProto:
    """y = x + s, with s a sparse initializer of dense shape [dense] holding 1.0 at index 0."""
    values = numpy_helper.from_array(np.array([1.0], np.float32), "s")
    if values_location is not None:
        values.ClearField("raw_data")
        values.data_location = TensorProto.EXTERNAL
        for k, v in (("location", values_location), ("offset", "0"), ("length", "4")):
            entry = values.external_data.add()
            entry.key, entry.value = k, v
    sparse = helper.make_sparse_tensor(values, numpy_helper.from_array(np.array([0], np.int64), "s_idx"), [dense])
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "s"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [dense])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [dense])],
        sparse_initializer=[sparse],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def test_oversized_sparse_initializer_is_refused_before_loading(tmp_path: Path) -> None:
    small = _save(_sparse_model(4), tmp_path / "small.onnx")
    preflight(small, Limits(max_tensor_elements=1000))  # control: a small sparse tensor passes and runs
    out = load_model(small, device="cpu").run({"x": np.zeros(4, np.float32)}).outputs["y"]
    np.testing.assert_array_equal(out, [1, 0, 0, 0])
    huge = _save(_sparse_model(10**12), tmp_path / "huge.onnx")  # 4 TB once onnxruntime densifies it
    with pytest.raises(
        LimitExceeded,
        match=r"max_tensor_elements \(ONNX tensor 's' \(graph sparse initializer\) "
        r"declares shape \[1000000000000\]\)",
    ):
        preflight(huge, Limits(max_tensor_elements=1000))


def test_sparse_values_in_external_data_must_stay_in_the_directory(tmp_path: Path) -> None:
    (tmp_path / "secret.bin").write_bytes(np.float32(7).tobytes())
    path = _save(_sparse_model(4, "../secret.bin"), tmp_path / "m" / "sparse.onnx")
    with pytest.raises(InvalidInput, match=r"'\.\./secret\.bin', outside the model's directory"):
        load_model(path, device="cpu")


def _subgraph_model(location: str) -> onnx.ModelProto:
    """y = x + If(true, then: w (external data at ``location``), else: zeros)."""
    w = numpy_helper.from_array(np.zeros(2, np.float32), "w")
    w.ClearField("raw_data")
    w.data_location = TensorProto.EXTERNAL
    for k, v in (("location", location), ("offset", "0"), ("length", "8")):
        entry = w.external_data.add()
        entry.key, entry.value = k, v
    out = [helper.make_tensor_value_info("t", TensorProto.FLOAT, [2])]
    then = helper.make_graph([helper.make_node("Identity", ["w"], ["t"])], "then", [], out, [w])
    zeros = numpy_helper.from_array(np.zeros(2, np.float32), "z")
    other = helper.make_graph([helper.make_node("Identity", ["z"], ["t"])], "else", [], out, [zeros])
    cond = numpy_helper.from_array(np.array(True), "c")
    nodes = [
        helper.make_node("If", ["c"], ["v"], then_branch=then, else_branch=other, name="branch"),
        helper.make_node("Add", ["x", "v"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])],
        [cond],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def test_external_data_escaping_from_a_subgraph_is_refused(tmp_path: Path) -> None:
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "w.bin").write_bytes(np.array([3, 4], np.float32).tobytes())
    ok = load_model(_save(_subgraph_model("w.bin"), tmp_path / "m" / "ok.onnx"), device="cpu")  # control
    np.testing.assert_array_equal(ok.run({"x": np.ones(2, np.float32)}).outputs["y"], [4, 5])
    (tmp_path / "secret.bin").write_bytes(np.array([5, 6], np.float32).tobytes())
    path = _save(_subgraph_model("../secret.bin"), tmp_path / "m" / "evil.onnx")
    with pytest.raises(InvalidInput, match=r"outside the model's directory") as info:
        load_model(path, device="cpu")
    assert "node 'branch' attribute 'then_branch'" in str(info.value)
