"""deepscope_metrics.fits against a fit worked by hand and against numpy.polyfit."""

import math

import numpy as np
import pytest

from deepscope_metrics.fits import fit_power_law, linear_fit


def test_line_fit_of_a_hand_computed_case():
    # x = 1, 2, 3; y = 1, 2, 2: Sxx = 2, Sxy = 1, so slope 1/2, intercept 5/3 - 1 = 2/3;
    # residuals -1/6, 1/3, -1/6: SSres = 1/6, SStot = 2/3, R² = 3/4, stderr = sqrt(SSres / 1 / Sxx)
    fit = linear_fit([1.0, 2.0, 3.0], [1.0, 2.0, 2.0])
    assert fit.slope == pytest.approx(0.5, abs=1e-14)
    assert fit.intercept == pytest.approx(2 / 3, abs=1e-14)
    assert fit.r2 == pytest.approx(0.75, abs=1e-14)
    assert fit.stderr == pytest.approx(math.sqrt(1 / 12), abs=1e-14)


def test_power_law_fit_is_the_hand_case_on_log_axes():
    fit = fit_power_law(np.exp([1.0, 2.0, 3.0]), np.exp([1.0, 2.0, 2.0]))
    assert (fit.slope, fit.intercept, fit.r2) == pytest.approx((0.5, 2 / 3, 0.75), abs=1e-12)
    assert fit.stderr == pytest.approx(math.sqrt(1 / 12), abs=1e-12)
    assert fit.x_range == pytest.approx((math.e, math.e**3)) and fit.n_points == 3 and not fit.reason


def test_power_law_fit_matches_polyfit_on_the_usable_points():
    rng = np.random.default_rng(0)
    x = np.geomspace(1, 1e4, 40)
    y = 2.5 * x**-1.2 * np.exp(rng.normal(scale=1.0, size=x.size))
    x_bad = np.r_[x, 0.0, -3.0, np.nan, 5.0, 1e5]  # skipped: x <= 0, NaN, y <= 0, beyond x_max
    y_bad = np.r_[y, 1.0, 1.0, 1.0, -1.0, 1.0]
    fit = fit_power_law(x_bad, y_bad, x_min=1.0, x_max=1e4)
    lx, ly = np.log(x), np.log(y)
    (slope, intercept), cov = np.polyfit(lx, ly, 1, cov=True)
    resid = ly - (slope * lx + intercept)
    r2 = 1 - resid @ resid / ((ly - ly.mean()) @ (ly - ly.mean()))
    assert fit.slope == pytest.approx(slope, rel=1e-10) and fit.intercept == pytest.approx(intercept, rel=1e-10)
    assert fit.r2 == pytest.approx(r2, rel=1e-10) and fit.r2 < 0.99
    assert fit.stderr == pytest.approx(math.sqrt(cov[0, 0]), rel=1e-8)
    assert fit.n_points == x.size and fit.x_range == pytest.approx((1.0, 1e4))
    np.testing.assert_allclose(fit.predict(x), np.exp(intercept) * x**slope, rtol=1e-10)


def test_constant_y_is_a_perfect_flat_fit_and_degenerate_input_is_nan_with_a_reason():
    flat = fit_power_law([1.0, 2.0, 4.0], [3.0, 3.0, 3.0])
    assert flat.slope == pytest.approx(0.0, abs=1e-15) and flat.r2 == 1.0
    one_x = fit_power_law([2.0, 2.0], [1.0, 3.0])
    assert math.isnan(one_x.slope) and "distinct x" in one_x.reason and one_x.x_range == (2.0, 2.0)
    assert "at least 2 points" in fit_power_law([1.0, -1.0], [1.0, 1.0]).as_dict("p_")["p_reason"]
    assert all(math.isnan(v) for v in linear_fit([1.0], [2.0]))
