"""Target 5: conv node strength at 64x32x32 vs a direct per-position loop, identical results.

Layer: Conv2d(64 -> 64, 3x3, stride 1, padding 1) on a 32x32 map, random weights and bias.
Candidate: ``conv_in_strength(mode="graph")`` (conv2d of a ones map) and ``conv_out_strength``
(conv_transpose2d of a ones map) from the complex-network module, float64.
Baseline: the definition transcribed directly, one Python iteration per neuron position
(channel, y, x), each summing that neuron's links with numpy: in-strength = the taps of
``K[o]`` that land inside the image + ``b[o]``; out-strength = every output neuron adds its
kernel taps into the (padded) input map window it reads. Target: >= 100x, results equal to
float64 round-off (max |diff| reported).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np
from common import Table, interleaved, median, script_main, set_threads


def loop_in_strength(K: np.ndarray, b: np.ndarray, h: int, w: int, pad: int) -> np.ndarray:
    """In-strength of each output neuron (stride 1): taps inside the image only ("graph" mode)."""
    c_out, _, kh, kw = K.shape
    ho, wo = h + 2 * pad - kh + 1, w + 2 * pad - kw + 1
    out = np.empty((c_out, ho, wo))
    for o in range(c_out):
        for i in range(ho):
            for j in range(wo):
                y0, x0 = i - pad, j - pad  # top-left input pixel under the kernel
                ky0, ky1 = max(0, -y0), min(kh, h - y0)
                kx0, kx1 = max(0, -x0), min(kw, w - x0)
                out[o, i, j] = K[o, :, ky0:ky1, kx0:kx1].sum() + b[o]
    return out


def loop_out_strength(K: np.ndarray, h: int, w: int, pad: int) -> np.ndarray:
    """Out-strength of each input neuron (stride 1): every output neuron's taps, padding dropped."""
    c_out, c_in, kh, kw = K.shape
    ho, wo = h + 2 * pad - kh + 1, w + 2 * pad - kw + 1
    padded = np.zeros((c_in, h + 2 * pad, w + 2 * pad))
    for o in range(c_out):
        for i in range(ho):
            for j in range(wo):
                padded[:, i : i + kh, j : j + kw] += K[o]
    return padded[:, pad : pad + h, pad : pad + w]


def summed_in_strength(K: np.ndarray, b: np.ndarray, h: int, w: int, pad: int) -> np.ndarray:
    """Suggested fix (groups=1, ones input): sum the kernel over input channels first, then one
    single-channel conv; C_in times less work than convolving a C_in-channel ones map."""
    import torch
    import torch.nn.functional as F

    ones = F.pad(torch.ones(1, 1, h, w, dtype=torch.float64), (pad, pad, pad, pad))
    k = torch.from_numpy(K.astype(np.float64).sum(axis=1, keepdims=True))
    return (F.conv2d(ones, k)[0] + torch.from_numpy(b.astype(np.float64))[:, None, None]).numpy()


def summed_out_strength(K: np.ndarray, h: int, w: int, pad: int) -> np.ndarray:
    """Suggested fix (groups=1, ones cotangent): sum the kernel over output channels first."""
    import torch
    import torch.nn.functional as F

    kh, kw = K.shape[2:]
    ho, wo = h + 2 * pad - kh + 1, w + 2 * pad - kw + 1
    k = torch.from_numpy(K.astype(np.float64).sum(axis=0, keepdims=True))
    full = F.conv_transpose2d(torch.ones(1, 1, ho, wo, dtype=torch.float64), k)
    return full[0, :, pad : pad + h, pad : pad + w].numpy()


def run(smoke: bool = False) -> list[Table]:
    set_threads()
    from deepscope_metrics.complex_network.strength import conv_in_strength, conv_out_strength

    c, hw = (8, 8) if smoke else (64, 32)
    repeats = 5
    rng = np.random.default_rng(0)
    K = rng.standard_normal((c, c, 3, 3)).astype(np.float32)
    b = rng.standard_normal(c).astype(np.float32)
    K64, b64 = K.astype(np.float64), b.astype(np.float64)

    fns = {
        "loop_in": lambda: loop_in_strength(K64, b64, hw, hw, 1),
        "vec_in": lambda: conv_in_strength(K, b, (hw, hw), stride=1, padding=1, mode="graph"),
        "loop_out": lambda: loop_out_strength(K64, hw, hw, 1),
        "vec_out": lambda: conv_out_strength(K, (hw, hw), stride=1, padding=1),
        "sum_in": lambda: summed_in_strength(K, b, hw, hw, 1),
        "sum_out": lambda: summed_out_strength(K, hw, hw, 1),
    }
    results = {k: f() for k, f in fns.items()}
    times = interleaved(fns, repeats, warmup=1)
    table = Table(
        f"5. Conv node strength, Conv2d({c}->{c}, 3x3, pad 1) on {c}x{hw}x{hw}",
        ["quantity", "loop s", "vectorised ms", "speedup", "max |diff|", "target", "met"],
    )
    for q in ("in", "out"):
        tl, tv = median(times[f"loop_{q}"]), median(times[f"vec_{q}"])
        diff = float(np.max(np.abs(results[f"loop_{q}"] - results[f"vec_{q}"])))
        scale = float(np.max(np.abs(results[f"loop_{q}"])))
        same = results[f"loop_{q}"].shape == results[f"vec_{q}"].shape and diff <= 1e-12 * max(scale, 1.0)
        speed = tl / tv
        table.add(
            f"{q}-strength [{c}x{hw}x{hw}]",
            tl,
            tv * 1e3,
            f"{speed:,.0f}x",
            f"{diff:.1e}",
            ">= 100x, equal",
            table.check(speed >= 100 and same, f"conv {q}-strength: {speed:.0f}x, max diff {diff:.1e}"),
        )
    for q in ("in", "out"):  # not the module's code: what the channel-summed kernel would give
        tl, ts = median(times[f"loop_{q}"]), median(times[f"sum_{q}"])
        diff = float(np.max(np.abs(results[f"loop_{q}"] - results[f"sum_{q}"])))
        table.add(
            f"{q}-strength, the bench's own channel-summed kernel (reference)",
            tl,
            ts * 1e3,
            f"{tl / ts:,.0f}x",
            f"{diff:.1e}",
            "(reference)",
            "",
        )
    table.notes.append(
        f"median of {repeats} interleaved runs after 1 warm-up; float64 everywhere; torch at "
        "1 thread; 'equal' = max |diff| <= 1e-12 x max |value| (summation order differs)"
    )
    return [table]


if __name__ == "__main__":
    script_main(run)
