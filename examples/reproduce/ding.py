"""Ding et al. (arXiv 2507.17785): self-similarity of hidden-layer feature networks, SS_rate per
layer, trained vs untrained.

Several seeds of a 64-64-64 digits MLP are measured at initialisation and after training; SS_rate
(0 = strongly self-similar, 1 = not) comes from deepscope's server, per hidden layer.

    python examples/reproduce/ding.py [--out docs/reproductions] [--quick]
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import common
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from scipy.stats import wilcoxon

# Metric names and the result keys read (the first key present is used; else the metric's headline).
METRICS = {"fractal.ss_rate": ["ss_rate"]}
LAYERS = ["act*"]  # the hidden representations (unit outputs after the nonlinearity)
EPOCHS = 30


def population(quick: bool) -> list[common.TrainSpec]:
    if quick:
        return [common.TrainSpec(seed=0, epochs=(0, 1), tag="ding")]
    return [common.TrainSpec(seed=s, epochs=(0, EPOCHS), tag="ding") for s in range(5)]


def reproduce(work: Path, quick: bool) -> tuple[common.Report, plt.Figure]:
    data = common.digits()
    checkpoints = common.train_population(population(quick), data, work / "checkpoints", fmt="pt2")
    run, frame = common.measure(checkpoints, data, list(METRICS), LAYERS, store=work / "store")
    metric = next(iter(METRICS))
    key = common.pick_key(run, metric, METRICS[metric])
    values = common.select(frame, metric, key).assign(state=lambda f: np.where(f["epoch"] == 0, "untrained", "trained"))
    layers = common.layer_order(values["layer"])
    wide = values.pivot_table(index=["seed", "layer"], columns="state", values="value").reset_index()
    wide["change"] = wide["trained"] - wide["untrained"]

    rows, outcomes = [], []
    for layer in layers:
        per_layer = wide[wide["layer"] == layer]
        rows.append(
            {
                "layer": layer,
                "untrained": common.mean_sd(per_layer["untrained"]),
                "trained": common.mean_sd(per_layer["trained"]),
                "trained − untrained": common.mean_sd(per_layer["change"]),
                "seeds where SS_rate fell": f"{int((per_layer['change'] < 0).sum())}/{len(per_layer)}",
            }
        )
    accuracy = [c.test_accuracy for c in checkpoints if c.epoch > 0]
    table = common.markdown_table(pd.DataFrame(rows))

    change = wide["change"].to_numpy()
    p = float(wilcoxon(change).pvalue) if len(change) >= 5 else float("nan")
    direction = "lower (more self-similar)" if np.median(change) < 0 else "higher (less self-similar)"
    outcomes.append(
        common.Outcome(
            claim="Training changes the self-similarity of MLP feature networks (Wilcoxon signed-rank over (seed, layer) pairs, p < 0.01)",
            measured=(
                f"trained SS_rate is {direction} than untrained in {int((np.sign(change) == np.sign(np.median(change))).sum())}"
                f"/{len(change)} (seed, layer) pairs; median change {np.median(change):+.3f}, Wilcoxon p={common.fmt(p, 2)}"
            ),
            held=None if quick else p < 0.01,
        )
    )
    trained = values[values["state"] == "trained"]
    layer_means = trained.groupby("layer")["value"].mean().reindex(layers)
    spread = float(layer_means.max() - layer_means.min())
    seed_sd = float(trained.groupby("layer")["value"].std(ddof=1).mean()) if not quick else float("nan")
    outcomes.append(
        common.Outcome(
            claim="The degree of self-similarity differs between hidden layers (varies with the architecture)",
            measured=(
                f"trained per-layer means {', '.join(f'{layer} {v:.3f}' for layer, v in layer_means.items())}: "
                f"spread {spread:.3f} vs seed-to-seed sd {common.fmt(seed_sd)}"
            ),
            held=None if quick else spread > 2 * seed_sd,
        )
    )

    figure, ax = plt.subplots(figsize=(5, 3.4), constrained_layout=True)
    positions = np.arange(len(layers))
    for offset, state in [(-0.15, "untrained"), (0.15, "trained")]:
        per_state = values[values["state"] == state]
        for i, layer in enumerate(layers):
            points = per_state[per_state["layer"] == layer]["value"]
            ax.scatter(
                np.full(len(points), i + offset),
                points,
                s=16,
                alpha=0.7,
                color="tab:grey" if state == "untrained" else "tab:blue",
                label=state if i == 0 else None,
            )
    ax.set_xticks(positions, layers)
    ax.set_ylabel("SS_rate (0 = self-similar)")
    ax.set_title(f"{metric} · {key}, digits MLP", fontsize=9)
    ax.legend(fontsize=8)

    report = common.Report(
        name="ding",
        title="Ding et al.: SS_rate per layer, trained vs untrained",
        paper="Self-similarity Analysis in Deep Neural Networks (arXiv 2507.17785)",
        setup=(
            f"{len(population(quick))} seeds of a 64-64-64 ReLU MLP, at initialisation and after "
            f"{max(population(quick)[0].epochs)} epochs of Adam (test accuracy {common.mean_sd(pd.Series(accuracy))}), "
            f"exported with `torch.export`; SS_rate of each hidden layer's feature network on the 450 held-out digits "
            f"(server defaults: batches of the metric's default size, mean over batches). Cells: mean ± sd over seeds."
        ),
        table=table,
        outcomes=outcomes,
        keys_read={metric: key},
        notes=[
            "The abstract gives no number for MLPs on digits; the paper's tables are for larger datasets and models. "
            "We check the two qualitative statements we can test on a small MLP.",
            "S2-Con (the paper's training-time constraint) is not reproduced here; see `examples/s2con_digits.py`.",
        ],
    )
    return report, figure


if __name__ == "__main__":
    common.main("ding", reproduce)
