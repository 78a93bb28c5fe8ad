"""Agreement of every fractal metric labelled faithful with the authors' code (Ding et al. 2025,
github.com/qcw-china/Self-similarity-Analysis-in-Deep-Neural-Networks), transcribed here
independently of the plugin: ``sfm/sfm_loss_d_v2.py`` (SS_rate), ``analyze_fractal_dimension.py``
(correlation dimension, Delta) and ``analyze_feature_distribution.py`` with ``powerlaw.Fit``
(spectrum exponent gamma, sigma_gamma). Inputs: random features, and the hidden activations of a
small MLP and a small CNN on scikit-learn digits, untrained and trained.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from sklearn.decomposition import PCA
from sklearn.neighbors import NearestNeighbors
from threadpoolctl import threadpool_limits
from torch import nn

from deepscope_metrics.fractal.ss_rate import ss_rate_from_distances
from deepscope_metrics.plugins import fractal as P
from deepscope_server.plugin_api import WHOLE_MODEL, Layer
from deepscope_server.testing import run_metric

from .test_fractal_ss_rate import boundary_flip

torch.set_num_threads(1)
SEED = 0


@pytest.fixture(autouse=True, scope="module")
def one_blas_thread():
    """Small matrices: BLAS threads only contend with each other on a shared machine."""
    with threadpool_limits(limits=1):
        yield


# ------------------------------------------------------------------ models and activations


def _mlp() -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10)
    )


def _cnn() -> nn.Sequential:
    # 16 x 8 x 8 = 1024 flattened features: wider than the authors' 1000, so their PCA step runs
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(16, 4, 3, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(4 * 64, 10),
    )


def _hidden(model: nn.Sequential, x: torch.Tensor) -> dict[str, np.ndarray]:
    """Outputs of every ReLU, float64 numpy (the representations the authors hook)."""
    out: dict[str, np.ndarray] = {}
    h = x
    with torch.no_grad():
        for i, m in enumerate(model):
            h = m(h)
            if isinstance(m, nn.ReLU):
                out[f"relu{i}"] = h.double().numpy()
    return out


def _train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int) -> None:
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(steps):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()


@pytest.fixture(scope="module")
def activations() -> dict[str, dict[str, np.ndarray]]:
    """{"mlp-random", "mlp-trained", "cnn-random", "cnn-trained", "gaussian"} -> {layer: [N, ...]}."""
    digits = load_digits()
    x = torch.tensor(digits.data / 16.0, dtype=torch.float32)
    y = torch.tensor(digits.target)
    img = x.reshape(-1, 1, 8, 8)
    out: dict[str, dict[str, np.ndarray]] = {}
    # train on the first samples, analyse 320 held-out ones (5 SS_rate batches of 64)
    for name, make, inputs, n_train, steps in (("mlp", _mlp, x, 600, 100), ("cnn", _cnn, img, 300, 10)):
        torch.manual_seed(SEED)
        model = make()
        held_out = inputs[-320:]
        out[f"{name}-random"] = _hidden(model, held_out)
        _train(model, inputs[:n_train], y[:n_train], steps)
        out[f"{name}-trained"] = _hidden(model, held_out)
    rng = np.random.default_rng(SEED)
    out["gaussian"] = {"g": rng.normal(size=(320, 80)) * rng.uniform(0.1, 2.0, 80)}
    return out


def _layers(acts: dict[str, np.ndarray]) -> list[Layer]:
    return [
        Layer(n, "conv", "Conv2d", channel_axis=1) if a.ndim == 4 else Layer(n, "linear", "Linear")
        for n, a in acts.items()
    ]


CASES = ["gaussian", "mlp-random", "mlp-trained", "cnn-random", "cnn-trained"]


def _trained_differs(activations, family: str) -> None:
    """Guard: training really changed the representations the agreement is checked on."""
    r, t = activations[f"{family}-random"], activations[f"{family}-trained"]
    assert any(not np.allclose(r[k], t[k]) for k in r)


# ------------------------------------------------------------------ SS_rate (sfm_loss_d_v2.py)


def authors_ss_rate(x: torch.Tensor, sample_num: int = 256) -> tuple[float, torch.Tensor]:
    """compute_mse_sim_loss's ``now_rate`` line by line (x = [nodes, batch], float64; the hard count's
    ``.float()`` becomes ``.double()`` so the whole computation stays in float64). Also returns dist."""
    n, d = x.shape
    i1, i2 = torch.triu_indices(n, n, offset=1)
    dist = torch.norm(x[i1] - x[i2], dim=1, p=2) / np.sqrt(d)
    TV = torch.max(dist).item()
    TZ = torch.min(dist).item()
    a, b = np.log(1 + TZ), np.log(1 + TV)
    sample = torch.linspace(start=0.0, end=1.0, steps=sample_num, dtype=torch.float64)
    l = (1 + TZ) * torch.pow((1 + TV) / (1 + TZ), sample) - 1  # noqa: E741 - the authors' name, transcribed
    link = torch.sigmoid((l.unsqueeze(1) - dist.unsqueeze(0)) * 1)
    Nl = torch.mean((link > 0.5).double(), dim=1)
    NlNl = n - (n - 1) * torch.log(1 + (n - 1) * Nl) / np.log(n)
    pf_logNl = ((-torch.log(1 + l) + a) / (b - a) + 1) * 1
    logNl = torch.log(NlNl) / np.log(n)
    S = torch.sum(torch.abs(pf_logNl - logNl)) * 2 / sample_num
    return S.item(), dist


def _node_features(a: np.ndarray) -> np.ndarray:
    """[B, C(, H, W)] -> [C, B]: one node per channel, spatial positions averaged."""
    return (a.reshape(a.shape[0], a.shape[1], -1).mean(axis=2) if a.ndim > 2 else a).T


@pytest.mark.parametrize("case", CASES)
def test_ss_rate_agrees_with_the_authors_code(activations, case):
    acts = activations[case]
    B = 64
    res = run_metric(P.SSRateMetric, _layers(acts), outputs=acts, params={"batch_size": B}, batch_size=100)
    for name, a in acts.items():
        rates, bounds = [], []
        for lo in range(0, a.shape[0] - B + 1, B):
            feats = torch.from_numpy(_node_features(a[lo : lo + B]).copy())
            ref, dist = authors_ss_rate(feats)
            if math.isnan(ref):  # dead layer batch: the code's 0/0; the plugin reports it as skipped
                continue
            # same distances in -> the same number out, to rounding
            d = dist.numpy()
            ours, _ = ss_rate_from_distances(d, feats.shape[0])
            assert ours == pytest.approx(ref, abs=1e-12), (case, name, lo)
            rates.append(ref)
            # scipy's distances may differ from torch.norm's by an ulp, which can move the pairs tied
            # at the largest (or smallest non-zero) distance across the end thresholds
            ties = [int(np.sum(np.abs(d - e) <= 1e-12 * e)) for e in (d.max(), d.min()) if e > 0]
            bounds.append(sum(boundary_flip(feats.shape[0], pairs=m) for m in ties))
        assert rates, (case, name)
        assert res[name]["ss_rate"] == pytest.approx(np.mean(rates), abs=np.mean(bounds) + 1e-12)
    if case != "gaussian":
        _trained_differs(activations, case.split("-")[0])


def test_ss_rate_counts_the_largest_pair_when_the_code_does():
    """Distances for which theta_{S-1} rounds above TV (the code counts all P pairs) and below it."""
    seen = set()
    rng = np.random.default_rng(3)
    for _ in range(60):
        x = torch.from_numpy(rng.normal(size=(16, 8)))
        ref, dist = authors_ss_rate(x)
        d = dist.numpy()
        tz, tv = d.min(), d.max()
        top = (1 + tz) * np.power((1 + tv) / (1 + tz), 1.0) - 1
        seen.add(bool(1 / (1 + np.exp(-(top - tv))) > 0.5))
        assert ss_rate_from_distances(d, 16)[0] == pytest.approx(ref, abs=1e-12)
    assert seen == {True, False}  # both roundings occurred, and both agreed


# ------------------------------------------------------------------ correlation dimension (analyze_fractal_dimension.py)


def authors_process(feature: torch.Tensor) -> torch.Tensor:
    """process_features: (B, C, H, W) -> (B, H*W*C), (B, L, C) -> (B, L*C); L2-normalised rows."""
    if feature.dim() == 4:
        B, C, H, W = feature.shape
        f = feature.reshape(B, C, -1).permute(0, 2, 1).reshape(B, -1)
    else:
        f = feature.reshape(feature.shape[0], -1)
    return F.normalize(f, p=2, dim=1)


def authors_correlation_dimension(X: np.ndarray, max_samples: int = 3000, n_neighbors: int = 30) -> float:
    """compute_correlation_dimension, line by line (no subsampling below max_samples)."""
    if np.isnan(X).any() or np.std(X) < 1e-4:
        return 0.0
    assert X.shape[0] <= max_samples
    nbrs = NearestNeighbors(n_neighbors=n_neighbors).fit(X)
    distances, _ = nbrs.kneighbors(X)
    distances = distances[:, 1:]
    r_values = np.logspace(-3, 0.5, 40)
    c_values = []
    for r in r_values:
        c_values.append(np.mean(np.sum(distances < r, axis=1)) / (X.shape[0] - 1))
    valid_indices = np.where(np.array(c_values) > 0)[0]
    if len(valid_indices) < 2:
        return 0.0
    log_r = np.log(r_values[valid_indices])
    log_c = np.log(np.array(c_values)[valid_indices])
    if len(log_r) > 5:
        start_idx = len(log_r) // 4
        end_idx = 3 * len(log_r) // 4
        log_r, log_c = log_r[start_idx:end_idx], log_c[start_idx:end_idx]
    return max(0.0, np.polyfit(log_r, log_c, 1)[0])


def authors_fluctuation(dimensions: list[float]) -> float:
    valid = [d for d in dimensions if d > 0.001]
    if len(valid) <= 1:
        return 0.0
    return (max(valid) - min(valid)) / (sum(valid) / len(valid))


@pytest.mark.parametrize("case", CASES)
def test_correlation_dimension_agrees_with_the_authors_code(activations, case):
    acts = activations[case]
    res = run_metric(
        P.CorrelationDimensionMetric, _layers(acts), outputs=acts, params={"reduction": "pca"}, batch_size=128
    )
    dims = []
    for name, a in acts.items():
        f = authors_process(torch.from_numpy(a)).numpy()
        # the authors' PCA fallback, exact (their default solver would pick a randomized SVD here)
        reduced = PCA(n_components=min(50, f.shape[1]), svd_solver="full").fit_transform(f)
        ref = authors_correlation_dimension(reduced)
        r = res[name]
        assert r["reduction"] == "pca" and r["n_samples_used"] == a.shape[0]
        assert r["n_features"] == int(np.prod(a.shape[1:]))  # flattened, not channel-averaged
        if ref == 0.0 and math.isnan(r["dimension"]):
            assert r["reason"]  # where the authors return 0 for unusable data, a NaN with a reason
        else:
            assert r["dimension"] == pytest.approx(ref, abs=1e-9), (case, name)
        dims.append(ref)
    whole = res[WHOLE_MODEL]
    if len([d for d in dims if d > 0.001]) >= 2:
        assert whole["delta"] == pytest.approx(authors_fluctuation(dims), abs=1e-9)
    else:
        assert math.isnan(whole["delta"]) and whole["reason"]


def test_correlation_dimension_clips_and_excludes_like_the_authors():
    """A negative slope is clipped to 0 and a 0 is left out of Delta, as in compute_dimension_fluctuation."""
    from deepscope_metrics.fractal.correlation import dimension_fluctuation

    delta, n, reason = dimension_fluctuation(np.array([0.0, 1.0, 3.0, np.nan, 0.0005]))
    assert (delta, n, reason) == (pytest.approx(authors_fluctuation([0.0, 1.0, 3.0, 0.0005])), 2, "")
    assert math.isnan(dimension_fluctuation(np.array([0.0, 2.0]))[0])


# ------------------------------------------------------------------ spectrum exponent (analyze_feature_distribution.py)


def powerlaw_fit_alpha(data: np.ndarray) -> float:
    """powerlaw.Fit(data).alpha (continuous, v1.x defaults): every distinct value but the largest is a
    candidate xmin; alpha = 1 + n / sum ln(x / xmin) on the tail; KS distance between the tail's CDF
    (fraction of tail values below x, at its distinct values) and 1 - (x/xmin)^(1-alpha); smallest wins."""
    data = np.sort(data)
    best_d, best_alpha = np.inf, np.nan
    for xmin in np.unique(data)[:-1]:
        tail = data[data >= xmin]
        n = len(tail)
        alpha = 1 + n / np.sum(np.log(tail / xmin))
        values = np.unique(tail)
        actual = np.searchsorted(tail, values, side="left") / n
        theoretical = 1 - (values / xmin) ** (1 - alpha)
        diff = theoretical - actual
        d = max(diff.max(), -diff.min())
        if d < best_d:
            best_d, best_alpha = d, alpha
    return best_alpha


def authors_gamma(feature: np.ndarray) -> float:
    """analyze_feature_distribution: flatten, PCA above 1000 features, np.cov eigenvalues, fit_powerlaw."""
    f = torch.from_numpy(feature)
    if f.dim() == 4:
        B, C, H, W = f.shape
        f = f.reshape(B, C, -1).permute(0, 2, 1).reshape(B, -1)
    f = f.numpy()
    if f.shape[1] > 1000:
        # exact PCA: the authors' default solver approximates these same top eigenvalues
        reduced = PCA(n_components=min(1000, f.shape[0] // 2), svd_solver="full").fit_transform(f)
        eigenvalues = np.linalg.eigvalsh(np.cov(reduced.T))
    else:
        eigenvalues = np.linalg.eigvalsh(np.cov(f.T))
    data = np.abs(eigenvalues.flatten())
    data = data[data > 1e-10]
    if len(data) < 50:
        return float("nan")
    return powerlaw_fit_alpha(data)


@pytest.mark.parametrize("case", CASES)
def test_spectrum_exponent_agrees_with_the_authors_code(activations, case):
    acts = activations[case]
    res = run_metric(P.SpectrumExponentMetric, _layers(acts), outputs=acts, batch_size=128)
    gammas = []
    for name, a in acts.items():
        ref = authors_gamma(a)
        r = res[name]
        assert r["pca_reduced"] == (np.prod(a.shape[1:]) > 1000)
        if math.isnan(ref):
            assert math.isnan(r["gamma"]) and "need at least 50" in r["reason"]
        else:
            # rel 1e-7: the Gram-matrix and PCA eigenvalues agree to rounding, not bit for bit
            assert r["gamma"] == pytest.approx(ref, rel=1e-7), (case, name)
            gammas.append(ref)
    if len(gammas) >= 2:
        assert res[WHOLE_MODEL]["sigma_gamma"] == pytest.approx(np.std(gammas), rel=1e-6)


def test_spectrum_channel_mean_variant_is_the_old_estimator_and_equal_on_dense_layers(activations):
    acts = activations["mlp-trained"]
    a = run_metric(P.SpectrumExponentMetric, _layers(acts), outputs=acts)
    b = run_metric(P.SpectrumExponentMetric, _layers(acts), outputs=acts, params={"variant": "channel_mean"})
    for name in acts:
        assert a[name]["gamma"] == b[name]["gamma"]  # dense: flatten == one unit per neuron
    conv = activations["cnn-trained"]
    c = run_metric(
        P.SpectrumExponentMetric, _layers(conv), outputs=conv, params={"variant": "channel_mean", "min_values": 5}
    )
    assert all(c[n]["n_units"] == conv[n].shape[1] for n in conv)  # one unit per channel
