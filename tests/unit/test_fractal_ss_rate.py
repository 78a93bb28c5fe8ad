"""SS_rate against a direct O(P*S) transcription of the authors' formula, invariances, memory, degenerate inputs."""

from __future__ import annotations

import math
import tracemalloc

import numpy as np
import pytest

from deepscope_metrics.fractal import ss_rate, ss_rate_batches


def ss_rate_loop(F: np.ndarray, S: int = 256) -> float:
    """Slow reference: explicit pair loop for distances and for every threshold.

    A pair is below theta when sigmoid(theta - d) > 0.5, as the authors' code decides it (strict <,
    except a pair within rounding of theta); theta is not clamped to [TZ, TV].
    """
    D, B = F.shape
    d = []
    for i in range(D):
        for j in range(i + 1, D):
            d.append(math.sqrt(sum((F[i, b] - F[j, b]) ** 2 for b in range(B))) / math.sqrt(B))
    tz, tv = min(d), max(d)
    total = 0.0
    for k in range(S):
        s = k / (S - 1)
        theta = (1 + tz) * ((1 + tv) / (1 + tz)) ** s - 1
        p = sum(1 for x in d if 1 / (1 + math.exp(x - theta)) > 0.5) / len(d)
        n_theta = D - (D - 1) * math.log(1 + (D - 1) * p) / math.log(D)
        total += abs((1 - s) - math.log(n_theta) / math.log(D))
    return 2 / S * total


@pytest.mark.parametrize("D,B,S,seed", [(3, 1, 16, 0), (7, 4, 32, 1), (12, 5, 256, 2), (20, 9, 64, 3)])
def test_matches_direct_transcription(D, B, S, seed):
    F = np.random.default_rng(seed).normal(size=(D, B))
    assert ss_rate(F, S).value == pytest.approx(ss_rate_loop(F, S), abs=1e-12)


def test_matches_transcription_with_ties():
    F = np.random.default_rng(0).integers(0, 3, size=(15, 2)).astype(float)  # many equal distances
    assert ss_rate(F, 64).value == pytest.approx(ss_rate_loop(F, 64), abs=1e-12)


def test_hand_computed_three_nodes():
    # nodes at 0, 1, 3 (B = 1): d = {1, 2, 3}; S = 2 -> theta = {1, 3}: p = {0, 2/3}
    # N_0 = 3 -> y_0 = 1 (|1-1| = 0); N_1 = 3 - 2 ln(1 + 4/3)/ln 3 -> |0 - y_1|
    n1 = 3 - 2 * math.log(1 + 2 * 2 / 3) / math.log(3)
    expected = 2 / 2 * abs(0 - math.log(n1) / math.log(3))
    r = ss_rate(np.array([[0.0], [1.0], [3.0]]), 2)
    assert r.value == pytest.approx(expected, abs=1e-14)
    assert r.tz == 1 and r.tv == 3


def boundary_flip(D: int, S: int = 256, pairs: int = 1) -> float:
    """Largest change one rounding flip can make: the last threshold counting P-m instead of P pairs
    (m = ``pairs`` tied at the largest distance, e.g. from identical dead units).

    theta_{S-1} equals TV only up to rounding, so shifting the features by a constant (which moves
    distances by ulps) may move the largest pair in or out of it, exactly as in the authors' code.
    """
    P = D * (D - 1) / 2
    n = D - (D - 1) * math.log(1 + (D - 1) * (P - pairs) / P) / math.log(D)
    return 2 / S * math.log(n) / math.log(D)


def test_translation_and_permutation_invariance():
    rng = np.random.default_rng(4)
    F = rng.normal(size=(30, 64))
    base = ss_rate(F).value
    tol = 2 * boundary_flip(30) + 1e-12  # one flip at each end of the grid at most
    assert ss_rate(F + 5.0).value == pytest.approx(base, abs=tol)  # every entry shifted
    assert ss_rate(F + rng.normal(size=(1, 64)) * 10).value == pytest.approx(base, abs=tol)  # per-sample shift
    assert ss_rate(F[rng.permutation(30)]).value == pytest.approx(base, abs=1e-12)  # node order
    assert ss_rate(F[:, rng.permutation(64)]).value == pytest.approx(base, abs=tol)  # sample order (sum order)


def test_endpoint_and_range():
    r = ss_rate(np.random.default_rng(5).normal(size=(40, 64)))
    assert r.n_theta[0] == 40  # theta_0 = min distance: no pair strictly below
    assert r.y[0] == 1.0
    assert 0.0 <= r.value <= 2.0  # each of the S terms is at most 1 in magnitude, times 2/S
    assert np.all(np.diff(r.n_theta) <= 0)  # more pairs below larger thresholds -> fewer "boxes"


def test_memory_stays_O_P_as_B_grows():
    """Peak extra memory must not scale with P*B (the naive pairwise-difference tensor)."""
    D = 150
    P = D * (D - 1) // 2
    peaks = {}
    for B in (64, 4096):
        F = np.random.default_rng(6).normal(size=(D, B))
        tracemalloc.start()
        ss_rate(F)
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        peaks[B] = peak
        # input copy (float64) + a handful of P-length float64 arrays; a P x B array would be
        # 11,175 x 4,096 x 8 = 366 MB
        assert peak < F.nbytes * 1.5 + 12 * P * 8 + 200_000, (B, peak)
    assert peaks[4096] - peaks[64] < 1.5 * D * (4096 - 64) * 8  # growth ~ only the input copy


@pytest.mark.parametrize(
    "F,needle",
    [
        (np.zeros((2, 8)), "at least 3"),
        (np.ones((5, 8)), "identical"),  # all nodes identical
        (np.tile(np.arange(8.0), (6, 1)), "identical"),
        (np.array([[0.0, np.nan], [1, 2], [3, 4]]), "NaN/inf"),
        (np.array([[0.0, np.inf], [1, 2], [3, 4]]), "NaN/inf"),
        (np.zeros((0, 4)), "empty"),
    ],
)
def test_degenerate_inputs_give_nan_with_reason(F, needle):
    r = ss_rate(F)
    assert math.isnan(r.value) and needle in r.reason


def test_constant_channels_counted_not_fatal():
    rng = np.random.default_rng(7)
    F = rng.normal(size=(10, 32))
    F[[2, 5, 7]] = [[0.0], [1.0], [3.0]]  # three dead/constant units with distinct levels
    r = ss_rate(F)
    assert np.isfinite(r.value) and r.zero_variance_fraction == pytest.approx(0.3)
    assert r.value == pytest.approx(ss_rate_loop(F, 256), abs=1e-12)


def test_batches_drop_the_remainder():
    A = np.random.default_rng(8).normal(size=(130, 9))
    runs = ss_rate_batches(A, batch_size=64)
    assert len(runs) == 2
    assert runs[1].value == pytest.approx(ss_rate_loop(A[64:128].T), abs=1e-12)
