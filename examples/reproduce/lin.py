"""Lin et al. (arXiv 2501.02436): neurons are order-preserving (OPT) or not (NPT); networks allocate
the proportions of the modes across depth, and the proportions move during training.

A few seeds of a 4-hidden-layer digits MLP are checkpointed on a log-spaced epoch grid; deepscope's
server computes the mode fractions and the graded order-preservation score per hidden layer.

    python examples/reproduce/lin.py [--out docs/reproductions] [--quick]
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import common
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from scipy.stats import spearmanr

# Metric names and the result keys read (the first key present is used; else the metric's headline).
# The graded score is the informative one with ReLU on a few hundred samples (strict OPT saturates at 0).
GRADED = ("modes.graded", ["r_mean"])
FRACTIONS = {
    "opt": ("modes.fractions", ["frac_opt"]),
    "npt_alive": ("modes.fractions", ["frac_npt_alive"]),
    "dead": ("modes.fractions", ["frac_dead"]),
}
LAYERS = ["act*"]
HIDDEN = (64, 64, 64, 64)
EPOCHS = (0, 1, 2, 4, 8, 16, 32)
LATE = 4  # the association is also reported from this epoch on, where early-training changes are over


def population(quick: bool) -> list[common.TrainSpec]:
    if quick:
        return [common.TrainSpec(seed=0, hidden=HIDDEN, epochs=(0, 1), tag="lin")]
    return [common.TrainSpec(seed=s, hidden=HIDDEN, epochs=EPOCHS, tag="lin") for s in range(3)]


def reproduce(work: Path, quick: bool) -> tuple[common.Report, plt.Figure]:
    data = common.digits()
    checkpoints = common.train_population(population(quick), data, work / "checkpoints", fmt="pt2")
    metrics = sorted({GRADED[0], *(m for m, _ in FRACTIONS.values())})
    run, frame = common.measure(checkpoints, data, metrics, LAYERS, store=work / "store")
    keys = {
        name: (metric, common.pick_key(run, metric, preferred))
        for name, (metric, preferred) in {"graded": GRADED, **FRACTIONS}.items()
    }
    series = {name: common.select(frame, metric, key) for name, (metric, key) in keys.items()}
    layers = common.layer_order(series["graded"]["layer"])

    rows = []
    for epoch in sorted(frame["epoch"].unique()):
        row: dict[str, object] = {
            "epoch": int(epoch),
            "test acc": common.mean_sd(frame.drop_duplicates("checkpoint").query("epoch == @epoch")["test_accuracy"]),
        }
        for layer in layers:
            at = {name: s[(s["epoch"] == epoch) & (s["layer"] == layer)]["value"] for name, s in series.items()}
            row[f"{layer} graded r"] = common.mean_sd(at["graded"])
            row[f"{layer} OPT/NPT/dead"] = "/".join(f"{v.mean():.2f}" for v in (at["opt"], at["npt_alive"], at["dead"]))
        rows.append(row)
    table = common.markdown_table(pd.DataFrame(rows))

    graded = series["graded"]
    final = graded[graded["epoch"] == graded["epoch"].max()].groupby("layer")["value"]
    final_mean, final_sd = final.mean().reindex(layers), final.std(ddof=1).reindex(layers)
    rho_depth = spearmanr(np.arange(len(layers)), final_mean.to_numpy())[0] if len(layers) > 2 else float("nan")
    outcomes = [
        common.Outcome(
            claim="Trained networks allocate the modes differently across depth",
            measured=(
                "final graded r per layer "
                + ", ".join(f"{layer} {m:.3f}" for layer, m in final_mean.items())
                + f"; depth trend Spearman ρ={rho_depth:+.2f}; largest layer gap "
                f"{float(final_mean.max() - final_mean.min()):.3f} vs mean seed sd {common.fmt(float(final_sd.mean()))}"
            ),
            held=None if quick else bool(final_mean.max() - final_mean.min() > 2 * final_sd.mean()),
        )
    ]
    initial = graded[graded["epoch"] == 0].groupby("layer")["value"].mean().reindex(layers)
    moved = (final_mean - initial).abs()
    outcomes.append(
        common.Outcome(
            claim="Mode proportions move during training",
            measured=(
                "graded r change from initialisation to the last epoch per layer "
                + ", ".join(f"{layer} {d:+.3f}" for layer, d in (final_mean - initial).items())
                + f" vs mean seed sd {common.fmt(float(final_sd.mean()))}"
            ),
            held=None if quick else bool((moved > 2 * final_sd.mean()).all()),
        )
    )
    late = (
        graded[graded["epoch"] >= LATE].groupby("checkpoint").agg(r=("value", "mean"), acc=("test_accuracy", "first"))
    )
    rho, p = spearmanr(late["acc"], late["r"]) if len(late) > 2 and late["r"].nunique() > 1 else (np.nan, np.nan)
    every = graded.groupby("checkpoint").agg(r=("value", "mean"), acc=("test_accuracy", "first"))
    rho_all = spearmanr(every["acc"], every["r"])[0] if len(every) > 2 and every["r"].nunique() > 1 else float("nan")
    outcomes.append(
        common.Outcome(
            claim=f"Mode proportions track generalisation beyond the first epochs (Spearman over checkpoints from epoch {LATE} on, p < 0.01)",
            measured=(
                f"network-mean graded r vs test accuracy from epoch {LATE} on: ρ={rho:+.2f} (p={common.fmt(float(p), 2)}); "
                f"over all checkpoints, dominated by the first epochs: ρ={rho_all:+.2f}"
            ),
            held=None if quick else bool(p < 0.01),
        )
    )
    opt = series["opt"]
    trained_opt = opt[opt["epoch"] > 0]["value"]
    outcomes.append(
        common.Outcome(
            claim="Both modes are populated (the binary OPT/NPT split carries information)",
            measured=f"OPT fraction over trained checkpoints and layers: max {trained_opt.max():.3f}, mean {trained_opt.mean():.3f}",
            held=None if quick else bool(trained_opt.mean() > 0.05),
        )
    )

    figure, axes = plt.subplots(1, 2, figsize=(9, 3.4), constrained_layout=True)
    common.plot_over_epochs(axes[0], graded, layers)
    for layer in layers:
        dead = series["dead"][series["dead"]["layer"] == layer].groupby("epoch")["value"].mean()
        axes[1].plot(np.maximum(dead.index.to_numpy(), 0.5), dead, marker="o", ms=3, label=f"{layer} dead")
    axes[0].set(ylabel="graded order preservation r", title=f"{keys['graded'][0]} · {keys['graded'][1]}")
    axes[1].set(xscale="log", xlabel="epoch (0 at 0.5)", ylabel="fraction of units", title="modes.fractions · dead")
    axes[0].legend(fontsize=7)
    axes[1].legend(fontsize=7)
    for ax in axes:
        ax.title.set_fontsize(9)

    report = common.Report(
        name="lin",
        title="Lin et al.: neuron modes over training",
        paper="An Analysis Framework for Understanding Deep Neural Networks Based on Network Dynamics (arXiv 2501.02436)",
        setup=common.epoch_series_setup(
            population(quick),
            "modes of each hidden layer's units over the 450 held-out digits. Cells: mean ± sd over seeds; "
            "OPT/NPT/dead are the mean fractions of order-preserving, non-order-preserving alive and dead units.",
        ),
        table=table,
        outcomes=outcomes,
        keys_read={name: f"{m}.{k}" for name, (m, k) in keys.items()},
        notes=[
            "deepscope's modes are a reconstruction from the abstracts (the full text was not read): the claims "
            "tested are the abstract's qualitative ones; grokking and double descent need other training setups "
            "and are not attempted.",
            "With ReLU, a unit is strictly order-preserving only if it is active on every sample, so the binary "
            "OPT fraction is bounded by the fraction of always-on units; the graded score is the headline.",
        ],
    )
    return report, figure


if __name__ == "__main__":
    common.main("lin", reproduce)
