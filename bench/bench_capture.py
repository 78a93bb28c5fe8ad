"""Targets 1 and 2: in-process capture overhead of the real backends.

1. PyTorch (.pt2 through ``load_model``): capture every Linear/Conv output, activations kept as
   numpy arrays, vs the bare exported module (``ep.module()``, same graph, no capture) on the
   same input; eager ``nn.Module`` forward shown for reference. Target <= 1.10x.
2. ONNX (same layers): ``OnnxBackend.run`` with capture vs a plain onnxruntime session of the
   unmodified file with default optimisations and the same thread count. Target <= 1.30x.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import Table, interleaved, median, ms, set_threads, script_main  # noqa: E402

CASES = {"mlp": 256, "cnn": 64}  # model -> batch size (the targets' sizes)


def _capture_requests(backend):  # noqa: ANN001, ANN202
    from deepscope_server.backends import CaptureRequest

    return [CaptureRequest(l.name, "output") for l in backend.graph.layers if l.kind in ("linear", "conv")]


def run(smoke: bool = False) -> list[Table]:
    set_threads()
    import numpy as np
    import onnxruntime as ort
    import torch

    from common import THREADS
    from deepscope_server.backends.detect import load_model

    import models

    repeats = 5 if smoke else 31
    t_pt = Table("1. PyTorch capture of every Linear/Conv output (.pt2 backend) vs bare forward",
                 ["model", "batch", "layers", "captured MB", "bare export ms", "eager ms", "capture ms",
                  "ratio", "target", "met"])
    t_ox = Table("2. ONNX capture of every Linear/Conv output vs plain onnxruntime",
                 ["model", "batch", "layers", "captured MB", "plain ort ms", "capture ms", "ratio", "target", "met"])
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

            out = backend.run({in_name: x}, reqs)
            mb = sum(a.nbytes for a in out.captured.values()) / 1e6
            with torch.inference_mode():
                ref = module(torch.from_numpy(x)).numpy()
            np.testing.assert_allclose(out.outputs["output"], ref, rtol=1e-4, atol=1e-4)
            times = interleaved({"bare": bare_fwd, "eager": eager_fwd, "capture": pt_capture}, repeats)
            b, e, c = (median(times[k]) for k in ("bare", "eager", "capture"))
            ratio = c / b
            t_pt.add(name, batch, len(reqs), mb, ms(b), ms(e), ms(c), f"{ratio:.3f}x", "<= 1.10x",
                     t_pt.check(ratio <= 1.10, f"torch capture {name}: {ratio:.3f}x > 1.10x"))
            backend.close()
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

            out = backend.run({in_name: x}, reqs)
            mb = sum(a.nbytes for a in out.captured.values()) / 1e6
            np.testing.assert_allclose(out.outputs["output"], ref, rtol=1e-3, atol=1e-3)
            times = interleaved({"plain": ort_plain, "capture": ort_capture}, repeats)
            p, c = median(times["plain"]), median(times["capture"])
            ratio = c / p
            t_ox.add(name, batch, len(reqs), mb, ms(p), ms(c), f"{ratio:.3f}x", "<= 1.30x",
                     t_ox.check(ratio <= 1.30, f"onnx capture {name}: {ratio:.3f}x > 1.30x"))
            backend.close()
    note = f"median of {repeats} interleaved runs after 2 warm-up rounds; torch and onnxruntime at {THREADS} thread(s)"
    t_pt.notes.append(note + "; capture = `backend.run` incl. input validation and numpy conversion")
    t_ox.notes.append(note + "; plain = `InferenceSession` of the same file, default graph optimisations")
    return [t_pt, t_ox]


if __name__ == "__main__":
    script_main(run)
