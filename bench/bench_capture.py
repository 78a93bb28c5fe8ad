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
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import Table, interleaved, median, ms, script_main, set_threads

from deepscope_server.sandbox import SandboxedBackend

CASES = {"mlp": 256, "cnn": 64}  # model -> batch size (the targets' sizes)


class _Captures:
    """One model file loaded in this process and in a sandboxed model worker; each captures every
    Linear/Conv output of ``x`` (the timed calls are ``in_process`` and ``in_sandbox``)."""

    def __init__(self, path: Path, x: Any) -> None:
        from deepscope_server.backends import CaptureRequest
        from deepscope_server.backends.detect import load_model

        self.backend = load_model(path, device="cpu")
        self.sandboxed = SandboxedBackend.load(path, device="cpu")
        layers = self.backend.graph.layers
        self.requests = [CaptureRequest(layer.name, "output") for layer in layers if layer.kind in ("linear", "conv")]
        self.feed = {self.backend.graph.inputs[0].name: x}

    def in_process(self) -> None:
        out = self.backend.run(self.feed, self.requests)
        assert len(out.captured) == len(self.requests)

    def in_sandbox(self) -> None:  # as a Capture RPC runs it: outputs borrowed from the worker's reply buffers
        out = self.sandboxed.run(self.feed, self.requests, borrow=True)
        assert len(out.captured) == len(self.requests)

    def output_and_megabytes(self) -> tuple[Any, float]:
        """The model's output of one in-process capture (to check against a reference) and the MB it captured."""
        out = self.backend.run(self.feed, self.requests)
        return out.outputs["output"], sum(a.nbytes for a in out.captured.values()) / 1e6

    def close(self) -> None:
        self.backend.close()
        self.sandboxed.close()


def run(smoke: bool = False) -> list[Table]:
    set_threads()
    import models
    import numpy as np
    import onnxruntime as ort
    import torch
    from common import THREADS

    repeats = 5 if smoke else 31
    # Both tables: the case, its baseline column(s), then the in-process capture and the sandboxed one.
    case, capture = ["model", "batch", "layers", "captured MB"], ["capture ms", "ratio", "target", "met"]
    t_pt = Table(
        "1. PyTorch capture of every Linear/Conv output (.pt2 backend) vs bare forward",
        [*case, "bare export ms", "eager ms", *capture, *SANDBOX_COLUMNS],
    )
    t_ox = Table(
        "2. ONNX capture of every Linear/Conv output vs plain onnxruntime",
        [*case, "plain ort ms", *capture, *SANDBOX_COLUMNS],
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
            pt = _Captures(paths["pt2"], x)
            bare = torch.export.load(str(paths["pt2"])).module()

            def bare_fwd() -> None:
                with torch.inference_mode():
                    bare(torch.from_numpy(x)).numpy()

            def eager_fwd() -> None:
                with torch.inference_mode():
                    module(torch.from_numpy(x)).numpy()

            output, mb = pt.output_and_megabytes()
            with torch.inference_mode():
                ref = module(torch.from_numpy(x)).numpy()
            np.testing.assert_allclose(output, ref, rtol=1e-4, atol=1e-4)
            times = interleaved(
                {"bare": bare_fwd, "eager": eager_fwd, "capture": pt.in_process, "sandboxed": pt.in_sandbox}, repeats
            )
            b, e, c, s = (median(times[k]) for k in ("bare", "eager", "capture", "sandboxed"))
            ratio = c / b
            t_pt.add(
                name,
                batch,
                len(pt.requests),
                mb,
                ms(b),
                ms(e),
                ms(c),
                f"{ratio:.3f}x",
                "<= 1.10x",
                t_pt.check(ratio <= 1.10, f"torch capture {name}: {ratio:.3f}x > 1.10x"),
                *_sandbox_cells(t_pt, f"torch {name}", times, s),
            )
            pt.close()
            # --- ONNX
            ox = _Captures(paths["onnx"], x)
            opts = ort.SessionOptions()
            opts.intra_op_num_threads = THREADS
            opts.log_severity_level = 3
            plain = ort.InferenceSession(str(paths["onnx"]), opts, providers=["CPUExecutionProvider"])

            def ort_plain() -> None:
                plain.run(None, ox.feed)

            output, mb = ox.output_and_megabytes()
            np.testing.assert_allclose(output, ref, rtol=1e-3, atol=1e-3)
            times = interleaved({"plain": ort_plain, "capture": ox.in_process, "sandboxed": ox.in_sandbox}, repeats)
            p, c, s = median(times["plain"]), median(times["capture"]), median(times["sandboxed"])
            ratio = c / p
            t_ox.add(
                name,
                batch,
                len(ox.requests),
                mb,
                ms(p),
                ms(c),
                f"{ratio:.3f}x",
                "<= 1.30x",
                t_ox.check(ratio <= 1.30, f"onnx capture {name}: {ratio:.3f}x > 1.30x"),
                *_sandbox_cells(t_ox, f"onnx {name}", times, s),
            )
            ox.close()
    note = f"median of {repeats} interleaved runs after 2 warm-up rounds; torch and onnxruntime at {THREADS} thread(s)"
    t_pt.notes.append(note + "; capture = `backend.run` incl. input validation and numpy conversion")
    t_ox.notes.append(note + "; plain = `InferenceSession` of the same file, default graph optimisations")
    t_pt.notes.append(
        "sandbox/in-process = median of the per-round ratios (sandboxed / in-process capture), "
        "with their interquartile range"
    )
    return [t_pt, t_ox]


#: The columns ``_sandbox_cells`` fills.
SANDBOX_COLUMNS = ["sandboxed ms", "sandbox/in-process", "target", "met"]


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
