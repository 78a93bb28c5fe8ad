"""The binned KDE and the divergences built on it, against scipy's direct KDE (the slow reference).

Oracle: ``scipy.stats.gaussian_kde`` evaluated point by point (O(n) per grid point), and the
divergence formulas transcribed on top of it. Exact to rtol 1e-9 wherever the density is a
normal float; where scipy's density underflows to 0, ours is 0 too.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from scipy import stats

from deepscope_metrics.complex_network import divergence_matrix, jeffreys_divergence, js_divergence, kde_curve
from deepscope_metrics.complex_network.binned_kde import BinnedKDE

RNG = np.random.default_rng(15)
SAMPLES = {
    "two points": np.array([0.0, 1.0]),
    "normal": RNG.normal(0, 1, 3000),
    "heavy tails": RNG.standard_t(2, 4000),
    "far cluster": np.concatenate([RNG.normal(0, 1, 2000), RNG.normal(300, 1, 7)]),
    "ties": RNG.integers(-3, 4, 1000).astype(float),
    "offset": 1e6 + 1e-3 * RNG.laplace(size=2000),
}


@pytest.mark.parametrize("method", ["binned", "direct", "auto"])
@pytest.mark.parametrize("name", SAMPLES)
def test_binned_kde_equals_scipy(name, method):
    v = SAMPLES[name]
    span = np.ptp(v)
    x = np.concatenate([np.linspace(v.min() - 0.2 * span, v.max() + 0.2 * span, 700), RNG.choice(v, 50)])
    # the KDE is translation-invariant; scipy is evaluated on centred values because it divides by
    # the bandwidth before subtracting (1e6 / 1e-4 loses 6 digits), our differences are exact
    shift = np.median(v)
    want, got = stats.gaussian_kde(v - shift, bw_method="scott")(x - shift), BinnedKDE(v, method)(x)
    normal = want > np.finfo(float).tiny
    np.testing.assert_allclose(got[normal], want[normal], rtol=1e-9, atol=0)
    assert np.all(got[want == 0] == 0)
    assert np.all(np.abs(got[~normal]) <= np.finfo(float).tiny)


def _js_ref(a, b, grid_points=1000):
    P, Q = stats.gaussian_kde(a), stats.gaussian_kde(b)
    bw = max(np.sqrt(P.covariance[0, 0]), np.sqrt(Q.covariance[0, 0]))
    x = np.linspace(min(a.min(), b.min()) - 3 * bw, max(a.max(), b.max()) + 3 * bw, grid_points)
    p, q = P(x), Q(x)
    p, q = p / p.sum(), q / q.sum()
    m = (p + q) / 2
    with np.errstate(divide="ignore", invalid="ignore"):
        kl = np.sum(np.where(p > 0, p * np.log(p / m), 0)) + np.sum(np.where(q > 0, q * np.log(q / m), 0))
    return kl / 2 / np.log(2)


def _jeffreys_ref(a, b, grid_points=1000):
    lo, hi = min(a.min(), b.min()), max(a.max(), b.max())
    x = lo + (hi - lo) / grid_points * np.arange(grid_points)
    P, Q = stats.gaussian_kde(a)(x), stats.gaussian_kde(b)(x)
    return np.sum(P * np.log(P / Q)) + np.sum(Q * np.log(Q / P))


def test_curves_and_divergences_equal_the_scipy_reference():
    a, b, c = SAMPLES["normal"], SAMPLES["heavy tails"], RNG.normal(0.5, 2, 5000)
    x, y = kde_curve(b, 500)
    np.testing.assert_allclose(y, stats.gaussian_kde(b)(x), rtol=1e-9)
    assert js_divergence(a, b) == pytest.approx(_js_ref(a, b), rel=1e-9)
    assert jeffreys_divergence(a, c) == pytest.approx(_jeffreys_ref(a, c), rel=1e-9)
    M = divergence_matrix([a, b, c], method="js", grid_points=300)
    for i, j in ((0, 1), (0, 2), (1, 2)):
        assert M[i, j] == M[j, i] == pytest.approx(_js_ref([a, b, c][i], [a, b, c][j], 300), rel=1e-9)
    np.testing.assert_array_equal(np.diag(M), 0.0)


def test_jeffreys_emits_no_overflow_warning():
    """A density that is subnormal (not 0) where the other is ~0.2 made P/Q overflow (issue 18, item 6)."""
    a = RNG.normal(0, 1, 3000)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for shift in (8.0, 10.0, 12.0, 1e4):  # 8-12: the far density is subnormal on part of the grid
            assert jeffreys_divergence(a, RNG.normal(shift, 1, 3000)) == np.inf  # it also underflows to 0
        M = divergence_matrix([a, RNG.normal(10, 1, 3000), RNG.normal(0.3, 1, 3000)], method="jeffreys")
    assert np.isfinite(M).all() and M[0, 1] == M[1, 2] == pytest.approx(M[0, 2] + 1)


def test_streaming_distribution_moments_exact_and_reservoir_uniform():
    """Moments against numpy on all values; the reservoir against the uniform inclusion rate k/n."""
    from deepscope_metrics.complex_network import StreamingDistribution

    data = RNG.normal(size=(300, 40)) * np.arange(1, 41)  # 300 samples x 40 neurons, 12,000 values
    hits = np.zeros(data.size)
    for seed in range(200):
        sd = StreamingDistribution(reservoir=600, seed=seed)
        for lo in range(0, 300, 37):
            sd.update(data[lo : lo + 37])
        r = sd.result()
        assert r["sample"].size == 600 and np.isin(r["sample"], data).all()
        hits[np.isin(data.ravel(), r["sample"])] += 1
    np.testing.assert_allclose(r["neuron_mean"], data.mean(0), rtol=1e-12)
    np.testing.assert_allclose(r["neuron_std"], data.std(0), rtol=1e-12)
    assert r["std"] == pytest.approx(data.std(), rel=1e-12)
    assert r["fluctuation_mean"] == pytest.approx(data.std(1).mean(), rel=1e-12)
    # each value kept with probability 600/12,000 = 0.05: 200 runs -> 10 expected hits per value
    assert hits.mean() == pytest.approx(10.0)  # exactly k per run
    early, late = hits[: data.size // 10].mean(), hits[-data.size // 10 :].mean()  # first vs last batches
    assert 9.0 < early < 11.0 and 9.0 < late < 11.0
    assert 8.5 < hits.var() < 10.5  # Binomial(200, 0.05): 9.5, nothing over-/under-sampled
