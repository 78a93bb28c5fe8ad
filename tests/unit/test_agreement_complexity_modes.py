"""Agreement: the faithful metrics of the complexity/dimension/modes families against small independent
implementations written here from the authors' recipe (never imported from the plugin), on random and
trained representations of dense and conv layers.

Faithful in these families: ``dimension.effective`` (Janik & Witaszczyk's effective dimension as computed
by ``iconrnd/crl``, ``common/nets.py`` ``dimeff_reg``: subtract the column means, singular values of
XᵀX, normalise, exp of the Shannon entropy with 0·ln 0 = 0). The rest are reconstructions, tested
against closed forms in their own test files; the affine-fit core of ``complexity.linear_fvu`` is also
checked here against scikit-learn's Ridge on a trained network's blocks.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits
from sklearn.linear_model import Ridge

from deepscope_metrics.plugins.complexity import LinearFVU
from deepscope_metrics.plugins.dimension import EffectiveDimension
from deepscope_server.model_graph import Layer
from deepscope_server.testing import make_graph, run_metric

torch.set_num_threads(1)


def dimeff_crl(a: np.ndarray) -> float:
    """The crl recipe, in numpy: centre, SVD of the scatter matrix, exp(entropy of the normalised spectrum)."""
    a = np.asarray(a, dtype=np.float64)
    a = a - a.mean(axis=0)
    s = np.linalg.svd(a.T @ a, compute_uv=False)
    x = s / s.sum()
    return float(np.exp(-np.sum(np.where(x > 0, x * np.log(np.where(x > 0, x, 1.0)), 0.0))))


@pytest.fixture(scope="module")
def digits() -> tuple[torch.Tensor, torch.Tensor]:
    d = load_digits()
    return torch.tensor(d.data[:600] / 16.0, dtype=torch.float32), torch.tensor(d.target[:600])


def _train(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int) -> torch.nn.Module:
    torch.manual_seed(0)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(steps):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    return model.eval()


def _mlp() -> torch.nn.Sequential:
    torch.manual_seed(1)
    return torch.nn.Sequential(
        torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 32), torch.nn.ReLU(), torch.nn.Linear(32, 10)
    )


def _cnn() -> torch.nn.Sequential:
    torch.manual_seed(2)
    return torch.nn.Sequential(
        torch.nn.Unflatten(1, (1, 8, 8)),
        torch.nn.Conv2d(1, 6, 3),
        torch.nn.ReLU(),
        torch.nn.Flatten(),
        torch.nn.Linear(6 * 6 * 6, 10),
    )


@pytest.fixture(scope="module")
def nets(digits):
    x, y = digits
    return {
        "random": {"mlp": _mlp().eval(), "cnn": _cnn().eval()},
        "trained": {"mlp": _train(_mlp(), x, y, 30), "cnn": _train(_cnn(), x, y, 30)},
    }


def _outputs(model: torch.nn.Sequential, x: torch.Tensor) -> list[np.ndarray]:
    outs, h = [], x
    with torch.no_grad():
        for m in model:
            h = m(h)
            outs.append(h.numpy().astype(np.float64))
    return outs


@pytest.mark.parametrize("state", ["random", "trained"])
def test_effective_dimension_dense_agrees_with_crl(nets, digits, state):
    outs = _outputs(nets[state]["mlp"], digits[0])
    for index in (1, 3):  # the two ReLU representations
        layer = Layer(f"relu{index}", "activation", "Relu", attrs={"function": "relu"})
        res = run_metric(EffectiveDimension, [layer], outputs={layer.name: outs[index]}, batch_size=97)[layer.name]
        assert res["d_eff"] == pytest.approx(dimeff_crl(outs[index]), rel=1e-9)
        assert 1 < res["d_eff"] < 32


@pytest.mark.parametrize("state", ["random", "trained"])
@pytest.mark.parametrize("reduce", ["mean", "flatten"])
def test_effective_dimension_conv_agrees_with_crl(nets, digits, state, reduce):
    n = 150 if reduce == "flatten" else 600  # flatten: 216 features > 150 samples, the Gram-matrix branch
    maps = _outputs(nets[state]["cnn"], digits[0][:n])[2]  # ReLU after the conv: [n, 6, 6, 6]
    layer = Layer("relu", "activation", "Relu", attrs={"function": "relu"}, channel_axis=1)
    res = run_metric(EffectiveDimension, [layer], outputs={"relu": maps}, params={"reduce": reduce})["relu"]
    rep = maps.mean(axis=(2, 3)) if reduce == "mean" else maps.reshape(n, -1)  # torch's (C, H, W) order
    assert res["d_eff"] == pytest.approx(dimeff_crl(rep), rel=1e-8)


def test_effective_dimension_random_gaussian_agrees_with_crl():
    rng = np.random.default_rng(0)
    a = rng.standard_normal((400, 12)) * np.geomspace(1, 0.01, 12) + 3.0
    res = run_metric(EffectiveDimension, [Layer("fc", "linear", "Gemm")], outputs={"fc": a})["fc"]
    assert res["d_eff"] == pytest.approx(dimeff_crl(a), rel=1e-9)


@pytest.mark.parametrize("state", ["random", "trained"])
def test_linear_fvu_blocks_agree_with_sklearn_ridge(nets, digits, state):
    """Block input -> relu1 -> relu2 of the MLP: held-out FVU from sklearn's Ridge with the same split and penalty."""
    x = digits[0].numpy().astype(np.float64)
    outs = _outputs(nets[state]["mlp"], digits[0])
    names = ["fc1", "relu1", "fc2", "relu2", "fc3"]
    kinds = ["linear", "activation", "linear", "activation", "linear"]
    graph = make_graph(
        [Layer(n, k, "op", attrs={"function": "relu"} if k == "activation" else {}) for n, k in zip(names, kinds)]
    )
    res = run_metric(
        LinearFVU,
        graph,
        data={"input": x},
        outputs=dict(zip(names, outs)),
        params={"ridge": 1e-3, "test_fraction": 0.25},
    )
    perm = np.random.default_rng(0).permutation(len(x))  # the metric's seeded split (seed 0)
    n_test = round(len(x) * 0.25)
    tr, te = np.sort(perm[n_test:]), np.sort(perm[:n_test])
    for start, end in ((x, "relu1"), (outs[1], "relu2")):
        target = outs[names.index(end)]
        xtr = start[tr]
        lam = 1e-3 * len(tr) * float(((xtr - xtr.mean(axis=0)) ** 2).mean())
        model = Ridge(alpha=lam).fit(xtr, target[tr])
        resid = target[te] - model.predict(start[te])
        centred = target[te] - target[te].mean(axis=0)
        assert res[end]["fvu"] == pytest.approx((resid**2).sum() / (centred**2).sum(), rel=1e-6)
