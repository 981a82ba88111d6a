"""Fitting calibrators and choosing cost-based thresholds."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from scoring.calibration import apply_calibrator
from training.calibrate import CostModel, choose_thresholds, fit_calibration, fit_isotonic, fit_platt
from training.split import time_split
from training.train import matrix, predict_proba


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
    # Every decision stays reachable and agrees with its band: watch < verify < refuse, 5 points apart,
    # verify from the medium band up, refuse inside the high band.
    for t in (t_cheap, t_dear):
        assert t["watch"] <= 30 and t["watch"] + 5 <= t["verify"]
        assert t["verify"] >= 30 and t["verify"] + 5 <= t["refuse"] and 60 <= t["refuse"] <= 100


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


def _calibration_of(frame: pd.DataFrame, booster: object, names: list[str]) -> tuple[dict, dict]:
    split = time_split(frame, test_days=14, valid_days=10, calib_days=14, gap_days=7)
    p = predict_proba(booster, matrix(split.calib, names))  # type: ignore[arg-type]
    return fit_calibration(p, split.calib, costs=CostModel(min_rows=50, min_positives=3))


def test_a_label_arriving_after_deployment_cannot_move_the_calibrator_or_the_thresholds(
    frame: pd.DataFrame, trained: tuple, names: list[str]
) -> None:
    split, booster = trained
    cutoff = split.deploy_cutoff
    base_cal, base_th = _calibration_of(frame, booster, names)
    in_calib = (frame["ts"] >= split.calib_start) & (frame["ts"] < split.test_start)
    late = in_calib & (frame["label_ts"] > cutoff) & (frame["label"] == 0)
    assert late.sum() >= 60
    flip = frame.index[late][:60]

    planted = frame.copy()
    planted.loc[flip, "label"] = 1  # a late verdict: abuse, learned only after the model went live
    assert _calibration_of(planted, booster, names) == (base_cal, base_th)

    early = planted.copy()
    early.loc[flip, "label_ts"] = cutoff - pd.Timedelta(hours=1)  # the same verdict, known in time
    cal, th = _calibration_of(early, booster, names)
    assert cal != base_cal and th != base_th


def test_calibration_refuses_a_window_with_one_class() -> None:
    frame = pd.DataFrame({"label": [0] * 10, "promo_type": "welcome", "discount_value": 5.0})
    with pytest.raises(ValueError, match="both abuse and legit"):
        fit_calibration(np.linspace(0.1, 0.9, 10), frame)


def test_prior_weights_bring_the_weighted_abuse_share_to_the_base_rate() -> None:
    from training.calibrate import prior_weights

    y = np.array([1] * 60 + [0] * 40)
    w = prior_weights(y, 0.08)
    assert float((w * y).sum() / w.sum()) == pytest.approx(0.08)
    assert np.all(prior_weights(y, None) == 1.0)
    with pytest.raises(ValueError, match="base_rate"):
        prior_weights(y, 1.5)


def test_a_snapshot_rich_in_abuse_is_calibrated_to_the_settled_base_rate() -> None:
    from training.calibrate import fit_calibration, prior_weights

    rng = np.random.default_rng(3)
    y = (rng.random(4000) < 0.6).astype(np.int64)
    p = np.clip(np.where(y == 1, rng.beta(5, 2, 4000), rng.beta(2, 5, 4000)), 1e-4, 1 - 1e-4)
    calib = pd.DataFrame({"label": y, "promo_type": "welcome", "discount_value": 10.0})
    raw, _ = fit_calibration(p, calib)
    settled, _ = fit_calibration(p, calib, base_rate=0.05)
    # Over the population the snapshot stands for (its rows reweighted to the base rate), the
    # calibrated probabilities average the base rate, not the snapshot's 60 %.
    w = prior_weights(y, 0.05)
    assert apply_calibrator(raw, p).mean() == pytest.approx(0.6, abs=0.03)
    assert float((w * apply_calibrator(settled, p)).sum() / w.sum()) == pytest.approx(0.05, abs=0.01)
    assert apply_calibrator(settled, p).max() < apply_calibrator(raw, p).max()
