"""The model conformance suite's data: architectures built here, exported as users export them.

Every architecture is exported five ways (ONNX with ``torch.onnx.export``'s defaults, ONNX with
``optimize=False, external_data=False``, ``.pt2`` with a dynamic batch, ``.pt2`` with the batch
fixed by the example, TorchScript) and checked against the torch module itself: the layer
table, weights (PyTorch layout; after the exporter's BatchNorm folding, the folded conv), and
captures against forward hooks. ``tests/models/test_conformance.py`` asserts on it and
``docs/generate_models_doc.py`` renders the compatibility matrix ``docs/models.md`` from it.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from deepscope_server import zoo
from deepscope_server.backends import CaptureRequest, load_model
from deepscope_server.backends.base import Backend

RTOL, ATOL = 1e-4, 1e-4
BATCH = 2  #: the example's batch (what a static export fixes)


class BasicBlock(zoo.BasicBlock):
    """torchvision's ResNet BasicBlock: one ReLU module called twice (``reuse``) or two ReLU modules."""

    def __init__(self, c: int, reuse: bool) -> None:
        super().__init__(c)  # conv1, bn1, relu (inplace), conv2, bn2, as the zoo's
        self.reuse = reuse
        if not reuse:
            self.relu2 = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return (self.relu if self.reuse else self.relu2)(out + x)


class ResNet(nn.Module):
    """Stem conv+bn+relu, two BasicBlocks, global average pool, linear head (ResNet-18's structure, tiny)."""

    def __init__(self, reuse: bool, c: int = 4) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, c, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c)
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = nn.Sequential(BasicBlock(c, reuse), BasicBlock(c, reuse))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer1(self.relu(self.bn1(self.conv1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


class MobileNetBlock(nn.Module):
    """MobileNet-v2 style: pointwise expand, depthwise 3x3, pointwise project (conv+bn, ReLU6)."""

    def __init__(self) -> None:
        super().__init__()
        self.expand = nn.Conv2d(2, 8, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.act1 = nn.ReLU6()
        self.depthwise = nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False)
        self.bn2 = nn.BatchNorm2d(8)
        self.act2 = nn.ReLU6()
        self.project = nn.Conv2d(8, 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(4)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act2(self.bn2(self.depthwise(self.act1(self.bn1(self.expand(x))))))
        return self.head(self.pool(self.bn3(self.project(x))).flatten(1))


class ViT(nn.Module):
    """Patch embedding (strided conv), one TransformerEncoder layer (GELU, LayerNorm), mean pool, head."""

    def __init__(self, d: int = 8) -> None:
        super().__init__()
        self.patch = nn.Conv2d(1, d, 4, stride=4)
        layer = nn.TransformerEncoderLayer(d, 2, 16, dropout=0.0, activation="gelu", batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, 1, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d)
        self.head = nn.Linear(d, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.patch(x).flatten(2).transpose(1, 2)
        return self.head(self.norm(self.encoder(tokens)).mean(dim=1))


class Recurrent(nn.Module):
    """LSTM or GRU over [B, T, 4] (``deep``: two layers, both directions), the last step to a linear head."""

    def __init__(self, cell: type[nn.Module], deep: bool = False) -> None:
        super().__init__()
        self.rnn = cell(4, 6, batch_first=True, num_layers=2 if deep else 1, bidirectional=deep)
        self.head = nn.Linear(12 if deep else 6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y, _ = self.rnn(x)
        return self.head(y[:, -1])


def _randomise(model: nn.Module) -> nn.Module:
    """Non-trivial BatchNorm statistics and biases, so folding and skipped layers show in the numbers."""
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.BatchNorm2d, nn.LayerNorm)):
                m.weight.copy_(torch.rand(m.weight.shape, generator=gen) + 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=gen) * 0.2)
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=gen) * 0.2)
                m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
            if isinstance(m, nn.MultiheadAttention):
                m.out_proj.bias.copy_(torch.randn(m.out_proj.bias.shape, generator=gen) * 0.1)
    return model.eval()


@dataclass(frozen=True)
class Arch:
    name: str
    build: Callable[[], nn.Module]
    input_shape: tuple[int, ...]
    description: str


ARCHS = {
    a.name: a
    for a in (
        Arch(
            "resnet_reused_relu",
            lambda: ResNet(reuse=True),
            (1, 8, 8),
            "ResNet BasicBlocks, one ReLU module called twice",
        ),
        Arch("resnet_separate_relu", lambda: ResNet(reuse=False), (1, 8, 8), "the same with two ReLU modules"),
        Arch("mobilenet_block", MobileNetBlock, (2, 6, 6), "pointwise / depthwise / pointwise conv+BN, ReLU6"),
        Arch("vit", ViT, (1, 8, 8), "patch conv, TransformerEncoder (MHA, GELU, LayerNorm)"),
        Arch("lstm", lambda: Recurrent(nn.LSTM), (5, 4), "LSTM, linear head"),
        Arch("gru", lambda: Recurrent(nn.GRU, deep=True), (5, 4), "GRU, two layers, bidirectional, linear head"),
    )
}

#: export name -> what a user runs.
EXPORTS = {
    "onnx_default": "torch.onnx.export(model, (x,), path)",
    "onnx_plain": "torch.onnx.export(..., optimize=False, external_data=False, dynamic_shapes=batch)",
    "pt2_dynamic": "torch.export.export(model, (x,), dynamic_shapes=batch)",
    "pt2_static": "torch.export.export(model, (x,))",
    "torchscript": "torch.jit.trace(model, x)",
}


def build(arch: str) -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    model = _randomise(ARCHS[arch].build())
    x = torch.randn(BATCH, *ARCHS[arch].input_shape, generator=torch.Generator().manual_seed(2))
    return model, x


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    log = logging.getLogger("torch.onnx")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(None):
            warnings.simplefilter("ignore")
            yield
    finally:
        log.setLevel(level)


def export(model: nn.Module, x: torch.Tensor, how: str, directory: Path) -> Path:
    """Write ``model`` the way ``how`` (an EXPORTS key) says; returns the model file."""
    directory.mkdir(parents=True, exist_ok=True)
    batch = {0: torch.export.Dim("batch", min=1, max=1024)}
    with _quiet():
        if how == "onnx_default":
            path = directory / "model.onnx"
            torch.onnx.export(model, (x,), str(path))
        elif how == "onnx_plain":
            path = directory / "model.onnx"
            torch.onnx.export(
                model, (x,), str(path), optimize=False, external_data=False, dynamic_shapes=(batch,), verbose=False
            )
        elif how == "pt2_dynamic":
            path = directory / "model.pt2"
            torch.export.save(torch.export.export(model, (x,), dynamic_shapes=(batch,)), str(path))
        elif how == "pt2_static":
            path = directory / "model.pt2"
            torch.export.save(torch.export.export(model, (x,)), str(path))
        elif how == "torchscript":
            path = directory / "model.pt"
            with torch.no_grad():
                torch.jit.save(torch.jit.trace(model, (x,), check_trace=False), str(path))
        else:
            raise ValueError(f"unknown export '{how}'")
    return path


def module_calls(
    model: nn.Module, x: torch.Tensor
) -> tuple[dict[str, list[tuple[np.ndarray, np.ndarray]]], np.ndarray]:
    """Every call of every module: (first input, output) per call, from forward hooks; and the model output."""
    calls: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {}
    pending: dict[str, list[np.ndarray]] = {}
    handles = []
    for name, m in model.named_modules():
        if not name:
            continue

        def pre(_m, args, name=name):  # type: ignore[no-untyped-def]
            pending.setdefault(name, []).append(args[0].detach().clone().numpy())

        def post(_m, _args, out, name=name):  # type: ignore[no-untyped-def]
            out = out[0] if isinstance(out, tuple) else out
            calls.setdefault(name, []).append((pending[name].pop(), out.detach().clone().numpy()))

        handles += [m.register_forward_pre_hook(pre), m.register_forward_hook(post)]
    try:
        with torch.no_grad():
            y = model(x).numpy()
    finally:
        for h in handles:
            h.remove()
    return calls, y


def split_call(layer_name: str) -> tuple[str, int]:
    """``layer1.0.relu@1`` -> (``layer1.0.relu``, 1)."""
    path, _, k = layer_name.partition("@")
    return path, int(k) if k else 0


def expected_weights(model: nn.Module, layer_name: str, attrs: dict) -> dict[str, np.ndarray]:  # type: ignore[type-arg]
    """The torch parameters of a layer; for a conv with a folded BatchNorm, the folded conv."""
    path, _ = split_call(layer_name)
    mods = dict(model.named_modules())
    if path not in mods:
        return {}
    m = mods[path]
    params = {
        k: v.detach().numpy() for k, v in list(m.named_parameters()) + list(m.named_buffers()) if v.is_floating_point()
    }
    if attrs.get("bn_folded"):
        bn = mods[attrs["folded_norm"]]
        s = (bn.weight / torch.sqrt(bn.running_var + bn.eps)).detach().numpy()
        b = params.get("bias", np.zeros(s.shape, np.float32))
        params = {
            "weight": params["weight"] * s.reshape(-1, *([1] * (params["weight"].ndim - 1))),
            "bias": (b - bn.running_mean.numpy()) * s + bn.bias.detach().numpy(),
        }
    return params


@dataclass
class Result:
    """What one architecture x export gave: the matrix row, and the evidence tests assert on."""

    arch: str
    export: str
    backend: Backend | None = None
    error: str = ""
    layers: list[tuple[str, str]] = field(default_factory=list)
    weights_checked: int = 0
    weight_mismatches: list[str] = field(default_factory=list)
    captures_checked: int = 0
    capture_mismatches: list[str] = field(default_factory=list)
    capture_note: str = ""
    output_ok: bool = False
    odd_batch_ok: bool = False


def _close(a: np.ndarray, b: np.ndarray) -> bool:
    return a.shape == b.shape and np.allclose(a, b, rtol=RTOL, atol=ATOL)


def export_path(directory: Path, arch: str, how: str) -> Path:
    """Where ``check``/``run_all`` wrote an export under ``directory``."""
    suffix = {"onnx_default": "onnx", "onnx_plain": "onnx", "torchscript": "pt"}.get(how, "pt2")
    return directory / arch / how / f"model.{suffix}"


def check(arch: str, how: str, directory: Path) -> Result:
    """Export, load and compare everything the backend reports with the torch module."""
    model, x = build(arch)
    res = Result(arch, how)
    try:
        path = export(model, x, how, directory / arch / how)
        assert path == export_path(directory, arch, how)
        backend = load_model(path, device="cpu")
    except Exception as exc:  # the matrix reports any failure
        res.error = f"{type(exc).__name__}: {exc}"
        return res
    res.backend = backend
    g = backend.graph
    res.layers = [(layer.name, layer.kind) for layer in g.layers]
    calls, y = module_calls(model, x)
    mods = dict(model.named_modules())

    for layer in g.layers:
        want = expected_weights(model, layer.name, layer.attrs)
        for key, w in layer.weights.items():
            res.weights_checked += 1
            if key not in want or not _close(w, want[key]):
                res.weight_mismatches.append(f"{layer.name}.{key}")
        if split_call(layer.name)[0] in mods and set(want) - set(layer.weights):
            res.weight_mismatches.append(f"{layer.name}: missing {sorted(set(want) - set(layer.weights))}")

    name = g.inputs[0].name
    xn = x.numpy()
    if how == "torchscript":
        res.capture_note = "no intermediate capture (TorchScript bypasses hooks)"
        out = backend.run({name: xn})
    else:
        reqs = [CaptureRequest(layer.name, w) for layer in g.layers for w in ("output", "input")]
        out = backend.run({name: xn}, reqs)
        for layer in g.layers:
            path, k = split_call(layer.name)
            # a folded conv's output is its BatchNorm's output
            ref_path = layer.attrs.get("folded_norm", path) if layer.attrs.get("bn_folded") else path
            ref_calls = calls.get(ref_path, [])
            if path not in mods or k >= len(ref_calls):
                continue  # functional activations: checked in test_conformance against hand-computed values
            ref_in, ref_out = ref_calls[k]
            if layer.attrs.get("bn_folded"):
                ref_in = calls[path][k][0]
            for what, ref in (("output", ref_out), ("input", ref_in)):
                res.captures_checked += 1
                if not _close(out.captured[CaptureRequest(layer.name, what)], ref):
                    res.capture_mismatches.append(f"{layer.name} ({what})")
    res.output_ok = _close(next(iter(out.outputs.values())), y)
    # a batch the export did not fix (odd size: a static export pads the last batch)
    x5 = torch.randn(5, *ARCHS[arch].input_shape, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        y5 = model(x5).numpy()
    try:
        res.odd_batch_ok = _close(next(iter(backend.run({name: x5.numpy()}).outputs.values())), y5)
    except Exception:  # reported in the matrix, asserted in the tests
        res.odd_batch_ok = False
    return res


def matrix_markdown(results: list[Result]) -> str:
    """``docs/models.md``: the compatibility matrix (architecture x export format)."""
    lines = [
        "# Model compatibility",
        "",
        "Generated by `docs/generate_models_doc.py` from the model conformance suite (`tests/models/`),",
        "which builds each architecture in the test, exports it the way a user would and compares what",
        "deepscope reports with the torch module: **layers** found (and how many are activations, one per",
        "call of a module), **weights** equal to the module's parameters in PyTorch layout (after the ONNX",
        "optimiser's BatchNorm folding: equal to the folded conv), **capture** equal to forward hooks on",
        "the module (every layer's input and output), and **any batch**: a batch of 5 gives the module's",
        "outputs (exports that fix the batch at 2 are split and padded). Regenerate: `python docs/generate_models_doc.py`.",
        "",
        "| export | what the user ran |",
        "| --- | --- |",
        *[f"| `{k}` | `{v}` |" for k, v in EXPORTS.items()],
        "",
        "| architecture | export | layers (activations) | weights | capture | any batch |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for r in results:
        if r.error:
            lines.append(f"| {r.arch} | {r.export} | load failed: {r.error[:80]} | | | |")
            continue
        acts = sum(kind == "activation" for _, kind in r.layers)
        weights = "ok" if not r.weight_mismatches else f"{len(r.weight_mismatches)} differ"
        capture = r.capture_note or (
            "ok" if not r.capture_mismatches and r.captures_checked else f"{len(r.capture_mismatches)} differ"
        )
        folded = sum(1 for layer in r.backend.graph.layers if layer.attrs.get("bn_folded")) if r.backend else 0
        extra = f", {folded} BN folded" if folded else ""
        lines.append(
            f"| {r.arch} | {r.export} | {len(r.layers)} ({acts}{extra}) | {weights} | {capture} | "
            f"{'ok' if r.odd_batch_ok else 'no'} |"
        )
    lines += [
        "",
        "Architectures:",
        "",
        *[f"- `{a.name}`: {a.description}" for a in ARCHS.values()],
        "",
        "Notes: layers are call sites, so a ReLU module called twice is two layers (`layer1.0.relu`,",
        "`layer1.0.relu@1`) in `.pt2` and ONNX; TorchScript lists modules (no call sites, no capture).",
        "With the ONNX exporter's defaults, BatchNorm is folded into the preceding conv: the conv keeps",
        "its name, reports `bn_folded: true` and `folded_norm`, and its output is the BatchNorm's.",
        "",
    ]
    return "\n".join(lines)


def run_all(directory: Path) -> list[Result]:
    return [check(arch, how, directory) for arch in ARCHS for how in EXPORTS]
