"""Fitting calibrators and choosing cost-based thresholds."""

from __future__ import annotations

import numpy as np
import pandas as pd

from scoring.calibration import apply_calibrator
from training.calibrate import CostModel, choose_thresholds, fit_isotonic, fit_platt


def _noisy(n: int = 4000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    p = rng.beta(0.5, 4, n)
    y = (rng.random(n) < p**0.6).astype(int)
    return p, y


def test_isotonic_calibrator_is_monotone_and_stays_in_unit_interval() -> None:
    p, y = _noisy()
    cal = fit_isotonic(p, y)
    grid = np.linspace(-0.5, 1.5, 501)
    out = apply_calibrator(cal, grid)
    assert cal["kind"] == "isotonic" and cal["x"][0] == 0.0 and cal["x"][-1] == 1.0
    assert (np.diff(out) >= 0).all()
    assert out.min() >= 0 and out.max() <= 1


def test_calibration_reduces_the_gap_between_predicted_and_observed_rates() -> None:
    p, y = _noisy()
    cal = apply_calibrator(fit_isotonic(p, y), p)
    top = p > np.quantile(p, 0.9)
    assert abs(cal[top].mean() - y[top].mean()) < abs(p[top].mean() - y[top].mean())


def test_platt_calibrator_is_monotone_in_probability() -> None:
    p, y = _noisy()
    cal = fit_platt(p, y)
    out = apply_calibrator(cal, np.linspace(0.001, 0.999, 200))
    assert (np.diff(out) > 0).all() and set(cal) == {"kind", "a", "b"}


def _calibration_window(discount: float, n: int = 20000, seed: int = 1) -> tuple[pd.DataFrame, np.ndarray]:
    rng = np.random.default_rng(seed)
    scores = rng.integers(0, 101, n)
    y = (rng.random(n) < scores / 100.0).astype(int)
    frame = pd.DataFrame({"label": y, "promo_type": "welcome", "discount_value": discount})
    return frame, scores


def test_thresholds_drop_when_the_discount_at_risk_grows() -> None:
    cheap, s = _calibration_window(5.0)
    dear, _ = _calibration_window(100.0)
    costs = CostModel(verify_stops=0.5)
    t_cheap = choose_thresholds(cheap, s, costs=costs)["welcome"]
    t_dear = choose_thresholds(dear, s, costs=costs)["welcome"]
    assert t_dear["verify"] < t_cheap["verify"]
    assert t_dear["refuse"] < t_cheap["refuse"]
    for t in (t_cheap, t_dear):
        assert t["watch"] == 30 and 30 <= t["verify"] <= t["refuse"] <= 101


def test_costlier_false_refusals_push_the_refuse_threshold_up() -> None:
    frame, s = _calibration_window(20.0)
    lenient = choose_thresholds(frame, s, costs=CostModel(churn_cost=0.0))["welcome"]
    strict = choose_thresholds(frame, s, costs=CostModel(churn_cost=200.0))["welcome"]
    assert strict["refuse"] > lenient["refuse"]


def test_types_with_too_few_rows_fall_back_to_the_pooled_default() -> None:
    frame, s = _calibration_window(20.0)
    frame.loc[:10, "promo_type"] = "wholesale"
    th = choose_thresholds(frame, s)
    assert th["wholesale"] == th["default"]
