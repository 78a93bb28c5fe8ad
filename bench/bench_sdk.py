"""Target 9: capture through the SDK (what users call) against the bare forward pass, with the peers.

Per model, one table row per contender, all timed in the same shuffled rounds, capturing every
Linear/Conv output of: the MLP b256 (784-512-512-512-10), the small CNN b64 (3x32x32) and
ResNet-18 b32 (3x112x112).

torch side (ratio to the bare eager forward, ``model(x)`` under ``torch.inference_mode``):
  - plain forward hooks (a ``.clone()`` of each output, kept);
  - deepscope's in-process ``.pt2`` backend (``load_model(...).run``, no server);
  - **deepscope SDK, ``.pt2``, ``Client.embedded()``** (the SDK's local default: a server child
    process on loopback, the model in its sandboxed worker) and the same through a separate
    ``deepscope-server`` over loopback TCP (token auth), both with the SDK's default settings;
  - nnsight (``NNsight(model).trace``, ``.output.save()`` per layer) and TorchLens
    (``trace`` with ``layers_to_save`` = the same layers), when installed.
ONNX side (ratio to a plain onnxruntime session of the same file at the same thread count):
  - deepscope SDK, ONNX, embedded server;
  - Polygraphy's ONNX-Runtime runner on the model with the same tensors marked as outputs.

Peers come from ``bench/requirements.txt`` (``pip install -r bench/requirements.txt -c
constraints.txt``); a peer that is not importable is listed as skipped. Ratio = median of the
per-round ratios (candidate / its baseline in the same round) with the interquartile range.
Targets (issue 16): SDK embedded <= 1.15x on the CNN and ResNet-18, <= 1.5x on the MLP.
"""

from __future__ import annotations

import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import Table, interleaved, median, ms, ratio_cell, script_main, set_threads

#: model -> (batch, target ratio for the embedded SDK row, rounds): more rounds where a round is
#: short, so that a millisecond of scheduling noise in a few rounds does not move the median.
CASES = {"mlp": (256, 1.5, 61), "cnn": (64, 1.15, 31), "resnet18": (32, 1.15, 15)}
#: Polygraphy runners to deactivate at the end.
_RUNNERS: list[Any] = []


def _layer_paths(module: Any) -> list[str]:
    from torch import nn

    return [name for name, m in module.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))]


def _hooks(module: Any, paths: list[str]) -> Callable[[Any], dict[str, Any]]:
    """Plain forward hooks: a forward that returns each selected layer's output (cloned)."""
    import torch

    kept: dict[str, Any] = {}
    for path in paths:
        module.get_submodule(path).register_forward_hook(
            lambda _m, _i, out, path=path: kept.__setitem__(path, out.clone())
        )

    def run(x: Any) -> dict[str, Any]:
        kept.clear()
        with torch.inference_mode():
            module(x)
        return dict(kept)

    return run


def _nnsight(module: Any, paths: list[str]) -> Callable[[Any], Any] | str:
    try:
        import torch
        from nnsight import NNsight
    except ImportError as exc:
        return f"not installed ({exc.name})"
    wrapped = NNsight(module)

    def envoy(path: str) -> Any:
        node = wrapped
        for part in path.split("."):
            node = node[int(part)] if part.isdigit() else getattr(node, part)
        return node

    def run(x: Any) -> Any:
        saved: list[Any] = []  # filled inside the trace (nnsight runs its body in its own frame)
        with torch.inference_mode(), wrapped.trace(x):
            for path in paths:
                saved.append(envoy(path).output.save())
        assert len(saved) == len(paths)
        return saved

    return run


def _torchlens(module: Any, paths: list[str]) -> Callable[[Any], Any] | str:
    try:
        import torchlens as tl
        from torchlens.options import CaptureOptions
    except ImportError as exc:
        return f"not installed ({exc.name})"
    options = CaptureOptions(layers_to_save=list(paths))

    def run(x: Any) -> Any:
        trace = tl.trace(module, x, capture=options)
        assert not trace.capture_cache_hit  # a cached trace would skip the forward pass
        return trace

    return run


def _polygraphy(onnx_path: Path, threads: int) -> Callable[[dict[str, Any]], Any] | str:
    try:
        import onnx
        import onnxruntime as ort
        from polygraphy.backend.onnx import modify_outputs
        from polygraphy.backend.onnxrt import OnnxrtRunner
    except ImportError as exc:
        return f"not installed ({exc.name})"
    model = onnx.load(str(onnx_path))
    names = [n.output[0] for n in model.graph.node if n.op_type in ("Conv", "Gemm", "MatMul")]
    marked = modify_outputs(model, outputs=names + [o.name for o in model.graph.output])
    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.log_severity_level = threads, 3
    runner = OnnxrtRunner(ort.InferenceSession(marked.SerializeToString(), opts, providers=["CPUExecutionProvider"]))
    runner.activate()
    _RUNNERS.append(runner)
    return lambda feed: runner.infer(feed)


def run(smoke: bool = False, server=None) -> list[Table]:
    set_threads()
    import models
    import numpy as np
    import onnxruntime as ort
    import torch
    from common import THREADS

    import deepscope
    from deepscope_server.backends import CaptureRequest
    from deepscope_server.backends.detect import load_model
    from server import BenchServer

    cases = {"mlp": (16, 1.5, 5)} if smoke else CASES
    table = Table(
        "9. SDK capture of every Linear/Conv output vs the bare forward pass, with peers (one run)",
        ["model", "captured MB", "contender", "median ms", "vs baseline [IQR]", "target", "met"],
    )
    tcp = server or BenchServer(raw=False, threads=THREADS)
    skipped: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="deepscope-bench-") as tmp:
        embedded = deepscope.Client.embedded(store=Path(tmp) / "store", progress=False)
        remote = tcp.connect()
        # Every export before any peer is imported: TorchLens wraps torch functions globally,
        # after which the ONNX exporter fails.
        formats = ("pt2",) if smoke else ("pt2", "onnx")  # smoke: the SDK paths only (the ONNX export is slow)
        exported = {name: models.export(name, batch, Path(tmp), formats) for name, (batch, *_) in cases.items()}
        try:
            for name, (batch, target, repeats) in cases.items():
                module, x_t, paths = exported[name]
                x = x_t.numpy()
                layer_paths = _layer_paths(module)
                backend = load_model(paths["pt2"], device="cpu")
                reqs = [
                    CaptureRequest(layer.name, "output")
                    for layer in backend.graph.layers
                    if layer.kind in ("linear", "conv")
                ]
                in_name = backend.graph.inputs[0].name
                select = [r.layer for r in reqs]
                m_pt2, m_tcp = embedded.upload_model(paths["pt2"]), remote.upload_model(paths["pt2"])

                # Same arrays through every deepscope path (the sandbox must not change a bit).
                ref = backend.run({in_name: x}, reqs).captured
                for acts in (embedded.capture(m_pt2, x, layers=select), remote.capture(m_tcp, x, layers=select)):
                    assert len(acts) == len(reqs)
                    for req in reqs:
                        assert np.array_equal(acts[req.layer], ref[req]), req.layer
                captured_mb = sum(a.nbytes for a in ref.values()) / 1e6

                def bare() -> None:
                    with torch.inference_mode():
                        module(x_t)

                hooked = _hooks(models.build(name, batch)[0], layer_paths)
                fns: dict[str, Callable[[], Any]] = {
                    "bare": bare,
                    "hooks": lambda: hooked(x_t),
                    "inproc": lambda: backend.run({in_name: x}, reqs),
                    "sdk_embedded": lambda: embedded.capture(m_pt2, x, layers=select),
                    "sdk_tcp": lambda: remote.capture(m_tcp, x, layers=select),
                }
                ort_in = in_name
                if "onnx" in paths:
                    m_onnx = embedded.upload_model(paths["onnx"])
                    opts = ort.SessionOptions()
                    opts.intra_op_num_threads, opts.log_severity_level = THREADS, 3
                    plain = ort.InferenceSession(str(paths["onnx"]), opts, providers=["CPUExecutionProvider"])
                    ort_in = plain.get_inputs()[0].name
                    fns["ort"] = lambda: plain.run(None, {ort_in: x})
                    fns["sdk_onnx"] = lambda: embedded.capture(m_onnx, x, layers=select)
                peers = (
                    ()
                    if smoke
                    else (  # smoke: importing nnsight alone (transformers) takes seconds
                        ("nnsight", lambda: _nnsight(models.build(name, batch)[0], layer_paths)),
                        ("torchlens", lambda: _torchlens(models.build(name, batch)[0], layer_paths)),
                        ("polygraphy", lambda: _polygraphy(paths["onnx"], THREADS)),
                    )
                )
                for peer, make in peers:
                    try:
                        fn = make()
                    except Exception as exc:  # a peer that breaks is reported, not fatal
                        fn = f"failed to set up: {type(exc).__name__}: {str(exc)[:120]}"
                    if isinstance(fn, str):
                        skipped[peer] = fn
                        continue
                    feed = {ort_in: x} if peer == "polygraphy" else x_t
                    fns[peer] = lambda fn=fn, feed=feed: fn(feed)
                    try:
                        fns[peer]()
                    except Exception as exc:
                        skipped[peer] = f"failed on {name}: {type(exc).__name__}: {str(exc)[:120]}"
                        del fns[peer]
                times = interleaved(fns, repeats, warmup=2)
                rows = [
                    ("bare", "plain forward, eager nn.Module (baseline)", "bare", None),
                    ("hooks", "plain forward hooks (clone kept)", "bare", None),
                    ("inproc", "deepscope in-process .pt2 backend", "bare", None),
                    ("sdk_embedded", "deepscope SDK, .pt2, Client.embedded()", "bare", target),
                    ("sdk_tcp", "deepscope SDK, .pt2, deepscope-server over loopback TCP", "bare", None),
                    ("nnsight", "nnsight (local trace)", "bare", None),
                    ("torchlens", "TorchLens (layers_to_save = same)", "bare", None),
                    ("ort", "plain onnxruntime (ONNX baseline)", "ort", None),
                    ("sdk_onnx", "deepscope SDK, ONNX, Client.embedded() (vs plain ORT)", "ort", None),
                    ("polygraphy", "Polygraphy ORT runner, marked outputs (vs plain ORT)", "ort", None),
                ]
                label = f"{name} b{batch}"
                for key, what, base, goal in rows:
                    if key not in times:
                        continue
                    mid, cell = ratio_cell(times[key], times[base])
                    met = table.check(mid <= goal, f"SDK embedded {label}: {mid:.2f}x > {goal}x") if goal else ""
                    table.add(
                        label,
                        captured_mb,
                        what,
                        ms(median(times[key])),
                        "1.00x (baseline)" if key == base else cell,
                        f"<= {goal}x" if goal else "",
                        met,
                    )
                    print(f"# {label}: {what}: {ms(median(times[key])):.1f} ms, {cell}", file=sys.stderr, flush=True)
                backend.close()
        finally:
            for runner in _RUNNERS:
                runner.deactivate()
            _RUNNERS.clear()
            embedded.close()
            remote.close()
            if server is None:
                tcp.stop()
    table.notes.append(
        f"{', '.join(f'{name} {c[2]}' for name, c in cases.items())} rounds after 2 warm-up rounds, each "
        "round every contender once in a shuffled "
        f"order; torch and onnxruntime at {THREADS} thread(s) in every process; SDK rows use "
        "`client.capture(model, x, layers=[every Linear/Conv by name])` with default settings"
    )
    table.notes.append(
        "SDK rows return numpy arrays in this process; every deepscope path was checked bitwise "
        "equal to the in-process backend before timing"
    )
    if smoke:
        table.notes.append("smoke: no ONNX rows and no peers")
    for peer, why in skipped.items():
        table.notes.append(f"{peer}: skipped, {why}")
    return [table]


if __name__ == "__main__":
    script_main(run)
