"""Targets 1 and 2: in-process capture overhead of the real backends.

1. PyTorch (.pt2 through ``load_model``): capture every Linear/Conv output, activations kept as
   numpy arrays, vs the bare exported module (``ep.module()``, same graph, no capture) on the
   same input; eager ``nn.Module`` forward shown for reference. Target <= 1.10x.
2. ONNX (same layers): ``OnnxBackend.run`` with capture vs a plain onnxruntime session of the
   unmodified file with default optimisations and the same thread count. Target <= 1.30x.

Both tables also time the same capture through a sandboxed model worker (``SandboxedBackend``,
the server's default: the model in its own process, activations back through shared memory)
against the in-process backend: target <= 1.05x (the sandbox may cost at most 5%).
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import Table, interleaved, median, ms, script_main, set_threads

from deepscope_server.sandbox import SandboxedBackend

CASES = {"mlp": 256, "cnn": 64}  # model -> batch size (the targets' sizes)


def _capture_requests(backend):
    from deepscope_server.backends import CaptureRequest

    return [CaptureRequest(layer.name, "output") for layer in backend.graph.layers if layer.kind in ("linear", "conv")]


def run(smoke: bool = False) -> list[Table]:
    set_threads()
    import models
    import numpy as np
    import onnxruntime as ort
    import torch
    from common import THREADS

    from deepscope_server.backends.detect import load_model

    repeats = 5 if smoke else 31
    t_pt = Table(
        "1. PyTorch capture of every Linear/Conv output (.pt2 backend) vs bare forward",
        [
            "model",
            "batch",
            "layers",
            "captured MB",
            "bare export ms",
            "eager ms",
            "capture ms",
            "ratio",
            "target",
            "met",
            "sandboxed ms",
            "sandbox/in-process",
            "target",
            "met",
        ],
    )
    t_ox = Table(
        "2. ONNX capture of every Linear/Conv output vs plain onnxruntime",
        [
            "model",
            "batch",
            "layers",
            "captured MB",
            "plain ort ms",
            "capture ms",
            "ratio",
            "target",
            "met",
            "sandboxed ms",
            "sandbox/in-process",
            "target",
            "met",
        ],
    )
    with tempfile.TemporaryDirectory(prefix="deepscope-bench-") as tmp:
        for name, batch in CASES.items():
            if smoke:  # the MLP only, small batch: exporting the CNN costs more than the whole budget allows
                if name != "mlp":
                    continue
                batch = max(4, batch // 8)
            module, x_t, paths = models.export(name, batch, Path(tmp))
            x = x_t.numpy()
            # --- PyTorch
            backend = load_model(paths["pt2"], device="cpu")
            reqs = _capture_requests(backend)
            bare = torch.export.load(str(paths["pt2"])).module()
            in_name = backend.graph.inputs[0].name

            def bare_fwd() -> None:
                with torch.inference_mode():
                    bare(torch.from_numpy(x)).numpy()

            def eager_fwd() -> None:
                with torch.inference_mode():
                    module(torch.from_numpy(x)).numpy()

            def pt_capture() -> None:
                out = backend.run({in_name: x}, reqs)
                assert len(out.captured) == len(reqs)

            sandboxed = SandboxedBackend.load(paths["pt2"], device="cpu")

            def pt_sandboxed() -> None:
                out = sandboxed.run({in_name: x}, reqs)
                assert len(out.captured) == len(reqs)

            out = backend.run({in_name: x}, reqs)
            mb = sum(a.nbytes for a in out.captured.values()) / 1e6
            with torch.inference_mode():
                ref = module(torch.from_numpy(x)).numpy()
            np.testing.assert_allclose(out.outputs["output"], ref, rtol=1e-4, atol=1e-4)
            times = interleaved(
                {"bare": bare_fwd, "eager": eager_fwd, "capture": pt_capture, "sandboxed": pt_sandboxed}, repeats
            )
            b, e, c, s = (median(times[k]) for k in ("bare", "eager", "capture", "sandboxed"))
            ratio = c / b
            t_pt.add(
                name,
                batch,
                len(reqs),
                mb,
                ms(b),
                ms(e),
                ms(c),
                f"{ratio:.3f}x",
                "<= 1.10x",
                t_pt.check(ratio <= 1.10, f"torch capture {name}: {ratio:.3f}x > 1.10x"),
                *_sandbox_cells(t_pt, f"torch {name}", times, s),
            )
            backend.close()
            sandboxed.close()
            # --- ONNX
            backend = load_model(paths["onnx"], device="cpu")
            reqs = _capture_requests(backend)
            opts = ort.SessionOptions()
            opts.intra_op_num_threads = THREADS
            opts.log_severity_level = 3
            plain = ort.InferenceSession(str(paths["onnx"]), opts, providers=["CPUExecutionProvider"])
            in_name = backend.graph.inputs[0].name

            def ort_plain() -> None:
                plain.run(None, {in_name: x})

            def ort_capture() -> None:
                out = backend.run({in_name: x}, reqs)
                assert len(out.captured) == len(reqs)

            sandboxed = SandboxedBackend.load(paths["onnx"], device="cpu")

            def ort_sandboxed() -> None:
                out = sandboxed.run({in_name: x}, reqs)
                assert len(out.captured) == len(reqs)

            out = backend.run({in_name: x}, reqs)
            mb = sum(a.nbytes for a in out.captured.values()) / 1e6
            np.testing.assert_allclose(out.outputs["output"], ref, rtol=1e-3, atol=1e-3)
            times = interleaved({"plain": ort_plain, "capture": ort_capture, "sandboxed": ort_sandboxed}, repeats)
            p, c, s = median(times["plain"]), median(times["capture"]), median(times["sandboxed"])
            ratio = c / p
            t_ox.add(
                name,
                batch,
                len(reqs),
                mb,
                ms(p),
                ms(c),
                f"{ratio:.3f}x",
                "<= 1.30x",
                t_ox.check(ratio <= 1.30, f"onnx capture {name}: {ratio:.3f}x > 1.30x"),
                *_sandbox_cells(t_ox, f"onnx {name}", times, s),
            )
            backend.close()
            sandboxed.close()
    note = f"median of {repeats} interleaved runs after 2 warm-up rounds; torch and onnxruntime at {THREADS} thread(s)"
    t_pt.notes.append(note + "; capture = `backend.run` incl. input validation and numpy conversion")
    t_ox.notes.append(note + "; plain = `InferenceSession` of the same file, default graph optimisations")
    t_pt.notes.append(
        "sandbox/in-process = median of the per-round ratios (sandboxed / in-process capture), "
        "with their interquartile range"
    )
    return [t_pt, t_ox]


def _sandbox_cells(table: Table, what: str, times: dict[str, list[float]], sandboxed: float) -> list[str]:
    """Sandboxed capture time and its ratio to the in-process capture of the same rounds."""
    ratios = sorted(s / c for s, c in zip(times["sandboxed"], times["capture"]))
    q1, mid, q3 = ratios[len(ratios) // 4], median(ratios), ratios[(3 * len(ratios)) // 4]
    return [
        ms(sandboxed),
        f"{mid:.3f}x [{q1:.2f}-{q3:.2f}]",
        "<= 1.05x",
        table.check(mid <= 1.05, f"sandboxed capture {what}: {mid:.3f}x > 1.05x"),
    ]


if __name__ == "__main__":
    script_main(run)
