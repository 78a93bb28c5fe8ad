"""merge() of the streaming accumulators: split streams merged equal one pass (np.cov oracle), and a
merged reservoir is a uniform sample of the joint stream (inclusion frequencies)."""

import numpy as np
import pytest

from deepscope_metrics.streaming import ReservoirSampler, StreamingCovariance


def _fed(x: np.ndarray, batch: int, **kw) -> StreamingCovariance:
    acc = StreamingCovariance(**kw)
    for lo in range(0, x.shape[0], batch):
        acc.update(x[lo : lo + batch])
    return acc


@pytest.mark.parametrize("split", [3, 10, 40, 150, 297])  # buffered+buffered ... folded+folded, both orders
def test_merged_covariance_equals_one_pass_and_np_cov(split):
    rng = np.random.default_rng(3)
    x = rng.standard_normal((300, 12)) @ rng.standard_normal((12, 12)) + 1e5
    merged = _fed(x[:split], 7)
    merged.merge(_fed(x[split:], 7))
    whole = _fed(x, 7)
    assert merged.n == 300 and merged.info() == whole.info()
    np.testing.assert_allclose(merged.covariance(), np.cov(x, rowvar=False), rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(merged.eigenvalues(), whole.eigenvalues(), rtol=1e-6, atol=1e-8)
    assert merged.total_variance() == pytest.approx(np.cov(x, rowvar=False).trace(), rel=1e-9)


def test_merge_keeps_the_gram_method_while_rows_are_few():
    rng = np.random.default_rng(4)
    x = rng.standard_normal((20, 50))
    merged = _fed(x[:8], 4)
    merged.merge(_fed(x[8:], 4))
    assert merged.info()["method"] == "gram"
    np.testing.assert_allclose(merged.eigenvalues(), _fed(x, 4).eigenvalues(), rtol=1e-9, atol=1e-12)


def test_random_projections_merge_exactly_and_pca_ones_refuse():
    rng = np.random.default_rng(5)
    x = rng.standard_normal((200, 40))
    merged = _fed(x[:5], 5, max_dim=8, projection="random")  # still buffered: folded through the other's matrix
    merged.merge(_fed(x[5:], 5, max_dim=8, projection="random"))
    np.testing.assert_allclose(
        merged.covariance(), _fed(x, 5, max_dim=8, projection="random").covariance(), rtol=1e-9, atol=1e-12
    )
    pca = _fed(x[:100], 10, max_dim=8)
    with pytest.raises(ValueError, match="PCA"):
        pca.merge(_fed(x[100:], 10, max_dim=8))
    with pytest.raises(ValueError, match="same max_dim"):
        _fed(x, 10, max_dim=8).merge(_fed(x, 10, max_dim=9))


def test_merging_into_or_from_an_empty_accumulator():
    x = np.random.default_rng(6).standard_normal((30, 3))
    empty = StreamingCovariance()
    empty.merge(_fed(x, 4))
    full = _fed(x, 4)
    full.merge(StreamingCovariance())
    for acc in (empty, full):
        np.testing.assert_allclose(acc.covariance(), np.cov(x, rowvar=False), rtol=1e-9)


def test_merged_reservoir_is_a_uniform_sample_of_the_joint_stream():
    n_a, n_b, capacity, trials = 12, 28, 8, 1500
    hits = np.zeros(n_a + n_b)
    for seed in range(trials):
        a, b = ReservoirSampler(capacity, seed), ReservoirSampler(capacity, seed + 10_000)
        rows = np.arange(n_a + n_b, dtype=np.float64)[:, None]
        a.update(rows[:n_a])
        b.update(rows[n_a:])
        a.merge(b)
        (kept,) = a.sample()
        assert a.n_seen == n_a + n_b and kept.shape == (capacity, 1)
        np.testing.assert_array_equal(kept[:, 0], a.indices())  # rows and arrival indices agree, in order
        hits[a.indices()] += 1
    expected = trials * capacity / (n_a + n_b)  # 300 per row; binomial sd ~ 15
    assert np.abs(hits - expected).max() < 6 * np.sqrt(expected)


def test_reservoir_merge_below_capacity_keeps_everything():
    a, b = ReservoirSampler(10), ReservoirSampler(10)
    a.update(np.arange(3.0)[:, None])
    b.update(np.arange(3.0, 7.0)[:, None])
    a.merge(b)
    np.testing.assert_array_equal(a.sample()[0][:, 0], np.arange(7.0))
