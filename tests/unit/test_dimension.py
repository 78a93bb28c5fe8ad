"""Effective dimension, spectrum helpers, the power-law fit and the dimension.effective adapter."""

import numpy as np
import pytest
from sklearn.datasets import load_digits
from sklearn.decomposition import PCA

from deepscope_metrics.dimension import (
    components_for_variance,
    covariance_eigenvalues,
    effective_dimension,
    entropy_dimension,
    participation_ratio,
    spectrum_dimensions,
)
from deepscope_metrics.fits import fit_power_law
from deepscope_metrics.plugins.dimension import EffectiveDimension
from deepscope_server.model_graph import Layer
from deepscope_server.testing import run_metric

# ------------------------------------------------------------------ hand-computed spectra


def test_hand_computed_spectra():
    assert entropy_dimension([1, 1, 0, 0]) == pytest.approx(2.0)
    assert participation_ratio([1, 1, 0, 0]) == pytest.approx(2.0)
    # p = (3/4, 1/4): H = -(0.75 ln 0.75 + 0.25 ln 0.25) = 0.5623351446
    assert entropy_dimension([3, 1]) == pytest.approx(np.exp(0.5623351446188083))
    assert participation_ratio([3, 1]) == pytest.approx(16 / 10)
    # cumulative fractions 0.4, 0.7, 0.9, 1.0
    np.testing.assert_array_equal(
        components_for_variance([1, 4, 2, 3], [0.3, 0.4, 0.5, 0.7, 0.9, 0.99, 1.0]), [1, 1, 2, 2, 3, 4, 4]
    )


def test_zero_spectrum_is_nan_with_reason():
    res = spectrum_dimensions(np.zeros(4))
    assert np.isnan(res["d_eff"]) and np.isnan(res["participation_ratio"]) and res["reason"]


def test_participation_ratio_below_entropy_dimension_below_rank():
    rng = np.random.default_rng(0)
    for _ in range(200):
        d = rng.integers(1, 30)
        lam = rng.exponential(size=d) ** rng.uniform(0.5, 6)
        lam[rng.random(d) < 0.3] = 0.0
        rank = int((lam > 0).sum())
        if rank == 0:
            continue
        pr, de = participation_ratio(lam), entropy_dimension(lam)
        assert 1 - 1e-12 <= pr <= de * (1 + 1e-12)
        assert de <= rank * (1 + 1e-12)


# ------------------------------------------------------------------------- data oracles


def test_isotropic_gaussian_has_full_dimension():
    x = np.random.default_rng(1).standard_normal((20000, 10))
    res = effective_dimension(x)
    assert res["d_eff"] == pytest.approx(10, abs=0.05)
    assert res["participation_ratio"] == pytest.approx(10, abs=0.1)
    assert res["rank"] == 10


def test_known_rank_bounds_dimension():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((500, 3)) @ rng.standard_normal((3, 40)) + 5.0
    res = effective_dimension(x)
    assert res["rank"] == 3
    assert res["participation_ratio"] <= res["d_eff"] <= 3 + 1e-9
    assert res["n_components"][-1] <= 3


def test_gram_path_matches_covariance_when_features_outnumber_samples():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((30, 200))
    lam = covariance_eigenvalues(x)
    assert lam.size == 30
    np.testing.assert_allclose(lam, np.sort(np.linalg.eigvalsh(np.cov(x, rowvar=False)))[::-1][:30], atol=1e-10)
    assert effective_dimension(x)["d_eff"] <= 29 + 1e-9  # centred rank n - 1


def test_spectrum_exponent_recovers_power_law():
    lam = np.arange(1, 201, dtype=float) ** -1.5
    res = spectrum_dimensions(lam)
    assert res["spectrum_exponent"] == pytest.approx(1.5, abs=1e-9)
    assert res["spectrum_fit_r2"] == pytest.approx(1.0)
    bent = np.where(np.arange(1, 201) <= 50, lam, lam * 0.01)  # a kink outside the range
    assert spectrum_dimensions(bent, fit_stop=50)["spectrum_exponent"] == pytest.approx(1.5, abs=1e-9)


# --------------------------------------------------------------------------- power law


def test_power_law_fit_recovers_exponent_and_range():
    x = np.geomspace(1, 1e4, 40)
    fit = fit_power_law(x, 3.0 * x**-0.7)
    assert fit.slope == pytest.approx(-0.7, abs=1e-12) and fit.r2 == pytest.approx(1.0)
    assert np.exp(fit.intercept) == pytest.approx(3.0)
    np.testing.assert_allclose(fit.predict(x), 3.0 * x**-0.7)
    noisy = 2.0 * x**1.3 * np.exp(np.random.default_rng(4).normal(0, 0.05, x.size))
    fit = fit_power_law(x, noisy)
    assert fit.slope == pytest.approx(1.3, abs=0.03) and fit.r2 > 0.99
    part = fit_power_law(x, np.where(x < 100, x**2.0, x**0.5), x_min=1, x_max=99)
    assert part.slope == pytest.approx(2.0) and part.x_range[1] < 100


def test_power_law_fit_degenerate_inputs():
    fit = fit_power_law([1.0, 0.0, -1.0], [1.0, 2.0, 3.0])  # one usable point
    assert np.isnan(fit.slope) and fit.reason
    fit = fit_power_law([2.0, 2.0], [1.0, 3.0])  # one distinct x
    assert np.isnan(fit.slope) and fit.reason
    with pytest.raises(ValueError):
        fit_power_law([1.0, 2.0], [1.0])


# ------------------------------------------------------------------------------ adapter


def _entropy_dim_sklearn(x):
    """Independent oracle: sklearn PCA explained-variance ratios."""
    p = PCA().fit(x).explained_variance_ratio_
    p = p[p > 0]
    return float(np.exp(-(p * np.log(p)).sum()))


def test_adapter_on_digits_matches_sklearn_pca():
    x = load_digits().data
    res = run_metric(EffectiveDimension, [Layer("fc", "linear", "Gemm")], outputs={"fc": x}, batch_size=100)["fc"]
    assert res["d_eff"] == pytest.approx(_entropy_dim_sklearn(x), rel=1e-8)
    p = PCA().fit(x).explained_variance_ratio_
    assert res["participation_ratio"] == pytest.approx(1 / (p**2).sum(), rel=1e-8)
    want_n = np.searchsorted(np.cumsum(p), [0.5, 0.9, 0.99]) + 1
    table = dict(zip(res["n_components"].columns["tau"], res["n_components"].columns["n_components"]))
    assert [table[0.5], table[0.9], table[0.99]] == list(want_n)
    assert res["n_samples"] == 1797 and res["n_features"] == 64 and res["projection"] == "none"


def test_adapter_reduces_conv_maps_by_mean_and_projects_wide_layers():
    rng = np.random.default_rng(5)
    maps = rng.standard_normal((300, 8, 4, 4)) * np.arange(1, 9)[None, :, None, None]
    conv = Layer("conv", "conv", "Conv", channel_axis=1)
    res = run_metric(EffectiveDimension, [conv], outputs={"conv": maps})["conv"]
    assert res["d_eff"] == pytest.approx(_entropy_dim_sklearn(maps.mean(axis=(2, 3))), rel=1e-8)
    assert res["n_features"] == 8 and res["reduce"] == "mean"
    # a wide rank-6 layer, PCA-projected to 16 dims, keeps its spectrum
    wide = rng.standard_normal((400, 6)) @ rng.standard_normal((6, 100))
    out = run_metric(EffectiveDimension, [Layer("fc", "linear", "Gemm")], outputs={"fc": wide}, params={"max_dim": 16})
    res = out["fc"]
    assert res["projection"] == "pca" and res["dim"] == 16
    assert res["d_eff"] == pytest.approx(_entropy_dim_sklearn(wide), rel=1e-6)
    assert "projected" in out["__warnings__"]["warnings"]


def test_adapter_degenerate_layer_gives_nan_and_reason():
    res = run_metric(EffectiveDimension, [Layer("fc", "linear", "Gemm")], outputs={"fc": np.ones((50, 4))})["fc"]
    assert np.isnan(res["d_eff"]) and res["reason"]
    res = run_metric(EffectiveDimension, [Layer("fc", "linear", "Gemm")], outputs={"fc": np.ones((1, 4))})["fc"]
    assert np.isnan(res["d_eff"]) and res["reason"]
    with pytest.raises(ValueError):
        run_metric(
            EffectiveDimension,
            [Layer("fc", "linear", "Gemm")],
            outputs={"fc": np.ones((5, 4))},
            params={"taus": "0.5, 2"},
        )
