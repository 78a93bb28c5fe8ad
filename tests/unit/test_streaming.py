"""Streaming accumulators against batch oracles (np.cov, eigvalsh) and sampling frequencies."""

import numpy as np
import pytest
import scipy.sparse as sp

from deepscope_metrics.streaming import ReservoirSampler, StreamingCovariance, random_projection


def _feed(acc, x, sizes):
    lo = 0
    for s in sizes:
        acc.update(x[lo : lo + s])
        lo += s
    assert lo == x.shape[0]


@pytest.mark.parametrize("sizes", [[500], [1, 2, 3, 94, 400], [7] * 71 + [3]])
def test_streamed_covariance_equals_np_cov(sizes):
    rng = np.random.default_rng(1)
    n = sum(sizes)
    # a large common offset makes the naive sum-of-squares formula lose digits
    x = rng.standard_normal((n, 6)) @ rng.standard_normal((6, 6)) + 1e6
    acc = StreamingCovariance()
    _feed(acc, x.astype(np.float64), sizes)
    np.testing.assert_allclose(acc.covariance(), np.cov(x, rowvar=False), rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(acc.covariance(ddof=0), np.cov(x, rowvar=False, ddof=0), rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(acc.mean, x.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(
        acc.eigenvalues(), np.sort(np.linalg.eigvalsh(np.cov(x, rowvar=False)))[::-1], rtol=1e-6, atol=1e-8
    )
    assert acc.info()["method"] == "covariance" and acc.info()["projection"] == "none"


def test_float32_batches_accumulate_in_float64():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((300, 4)).astype(np.float32)
    acc = StreamingCovariance()
    _feed(acc, x, [100, 100, 100])
    assert acc.covariance().dtype == np.float64
    np.testing.assert_allclose(acc.covariance(), np.cov(x.astype(np.float64), rowvar=False), rtol=1e-10)


def test_more_features_than_samples_uses_gram_and_matches():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((25, 120))
    acc = StreamingCovariance()
    _feed(acc, x, [10, 10, 5])
    info = acc.info()
    assert info["method"] == "gram" and info["n_samples"] == 25 and info["n_features"] == 120
    lam = acc.eigenvalues()
    want = np.sort(np.linalg.eigvalsh(np.cov(x, rowvar=False)))[::-1]
    assert lam.size == 25  # the Gram matrix is 25 x 25
    np.testing.assert_allclose(lam, want[:25], rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(acc.covariance(), np.cov(x, rowvar=False), rtol=1e-10, atol=1e-12)


def test_pca_projection_keeps_a_low_rank_spectrum():
    """Wide data of rank 5: the PCA basis fitted on the first rows spans it, so the spectrum is exact."""
    rng = np.random.default_rng(4)
    x = rng.standard_normal((400, 5)) @ rng.standard_normal((5, 200)) + rng.standard_normal(200)
    acc = StreamingCovariance(max_dim=20, projection="pca")
    _feed(acc, x, [16] * 25)
    info = acc.info()
    assert info["projection"] == "pca" and info["dim"] == 20 and info["n_features"] == 200
    assert info["retained_variance_fraction"] == pytest.approx(1.0, abs=1e-9)
    want = np.sort(np.linalg.eigvalsh(np.cov(x, rowvar=False)))[::-1][:5]
    np.testing.assert_allclose(acc.eigenvalues()[:5], want, rtol=1e-7)
    assert np.all(acc.eigenvalues()[5:] < 1e-8 * want[0])


def test_random_projection_reports_retained_variance_near_k_over_d():
    rng = np.random.default_rng(5)
    x = rng.standard_normal((3000, 100))  # isotropic: an orthonormal k-projection keeps ~k/d
    acc = StreamingCovariance(max_dim=25, projection="random", seed=0)
    _feed(acc, x, [300] * 10)
    info = acc.info()
    assert info["projection"] == "random" and info["dim"] == 25
    assert info["retained_variance_fraction"] == pytest.approx(0.25, abs=0.02)


def test_random_projection_dense_is_orthonormal_and_sparse_is_near_orthonormal():
    q = random_projection(60, 12, seed=1)
    np.testing.assert_allclose(q.T @ q, np.eye(12), atol=1e-12)
    r = random_projection(40000, 200, seed=1)
    assert sp.issparse(r) and r.nnz < 40000 * 200 / 50
    gram = (r.T @ r).toarray()
    assert np.mean(np.diag(gram)) == pytest.approx(1.0, abs=0.05)
    assert np.abs(gram - np.diag(np.diag(gram))).max() < 0.2


def test_covariance_degenerate_and_mismatched_input():
    acc = StreamingCovariance()
    acc.update(np.ones((1, 3)))
    assert acc.eigenvalues().size == 0
    assert np.isnan(acc.total_variance())
    with pytest.raises(ValueError):
        acc.update(np.ones((2, 4)))


def test_reservoir_keeps_everything_below_capacity_in_order_and_aligned():
    s = ReservoirSampler(capacity=50, seed=0)
    idx = np.arange(30)
    for lo in range(0, 30, 7):
        s.update(idx[lo : lo + 7, None] * 1.0, np.stack([idx[lo : lo + 7]] * 3, axis=1) * 2.0)
    a, b = s.sample()
    np.testing.assert_array_equal(a[:, 0], idx)
    np.testing.assert_array_equal(b, np.stack([idx] * 3, axis=1) * 2.0)
    assert s.n_seen == 30 and s.n_kept == 30


def test_reservoir_capped_rows_stay_aligned():
    s = ReservoirSampler(capacity=40, seed=3)
    idx = np.arange(1000)
    for lo in range(0, 1000, 64):
        s.update(idx[lo : lo + 64, None] * 1.0, -idx[lo : lo + 64, None] * 1.0)
    a, b = s.sample()
    assert a.shape == (40, 1) and s.n_seen == 1000
    np.testing.assert_array_equal(a, -b)
    np.testing.assert_array_equal(a[:, 0].astype(int), s.indices())
    assert len(np.unique(a)) == 40 and np.all(np.diff(a[:, 0]) > 0)


def test_reservoir_is_uniform():
    """Every item is kept with probability capacity / n (algorithm R), whatever its batch."""
    n, cap, runs = 20, 5, 4000
    hits = np.zeros(n)
    items = np.arange(n, dtype=np.float64)[:, None]
    for seed in range(runs):
        s = ReservoirSampler(cap, seed=seed)
        for lo in range(0, n, 3):
            s.update(items[lo : lo + 3])
        hits[s.sample()[0][:, 0].astype(int)] += 1
    freq = hits / runs
    # std of each frequency: sqrt(0.25 * 0.75 / 4000) ~ 0.0068
    assert np.abs(freq - cap / n).max() < 0.03
