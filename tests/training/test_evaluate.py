"""Evaluation metrics on toy cases with known answers, and the evasion table."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from scoring.calibration import apply_calibrator, to_score
from training.calibrate import CostModel, fit_isotonic
from training.evaluate import (
    EVASION_GROUPS,
    compare_at_equal_fpr,
    core_metrics,
    evasion_table,
    expected_calibration_error,
    pattern_table,
    precision_at_capacity,
    recall_at_fpr,
    trap_table,
    value_at_thresholds,
)
from training.train import matrix, predict_proba

TH = {"default": {"watch": 30, "verify": 50, "refuse": 80}}


def test_recall_at_fpr_counts_positives_above_the_cut_that_keeps_fpr() -> None:
    legit = np.arange(200) / 200.0  # 0.000 .. 0.995
    pos = np.array([0.999, 0.996, 0.99, 0.5])
    y = np.r_[np.zeros(200), np.ones(4)]
    p = np.r_[legit, pos]
    # 1 % of 200 legit = 2 may be flagged: cut at the 3rd highest legit score (0.985).
    assert recall_at_fpr(y, p, 0.01) == pytest.approx(3 / 4)
    # 0.5 % = 1 legit allowed: cut at 0.99, and a tie with the cut is not flagged.
    assert recall_at_fpr(y, p, 0.005) == pytest.approx(2 / 4)


def test_ece_is_zero_when_perfectly_calibrated_and_the_gap_otherwise() -> None:
    y = np.array([0, 0, 0, 1] * 25)
    assert expected_calibration_error(y, np.full(100, 0.25)) == pytest.approx(0.0)
    assert expected_calibration_error(y, np.full(100, 0.75)) == pytest.approx(0.5)


def test_precision_at_capacity_takes_the_top_k_of_each_day() -> None:
    ts = pd.Series(pd.to_datetime(["2026-01-01T01:00"] * 3 + ["2026-01-02T01:00"] * 3, utc=True))
    y = np.array([1, 0, 0, 0, 0, 1])
    p = np.array([0.9, 0.8, 0.1, 0.95, 0.2, 0.1])
    assert precision_at_capacity(ts, y, p, per_day=1) == pytest.approx(0.5)
    assert precision_at_capacity(ts, y, p, per_day=3) == pytest.approx(2 / 6)


def _toy_frame() -> tuple[pd.DataFrame, np.ndarray]:
    frame = pd.DataFrame(
        {
            "label": [1, 1, 1, 0, 0, 0],
            "promo_type": ["welcome"] * 6,
            "discount_value": [10.0, 20.0, 30.0, 10.0, 10.0, 10.0],
            "pattern": ["welcome_cycling", "welcome_cycling", "code_spray", None, None, None],
            "trap": [None, None, None, "vpn", "vpn", None],
            "ts": pd.to_datetime(["2026-01-01"] * 6, utc=True),
        }
    )
    return frame, np.array([90, 60, 10, 85, 20, 0])


def test_value_saved_and_lost_at_the_thresholds() -> None:
    frame, scores = _toy_frame()
    v = value_at_thresholds(
        frame, scores, TH, CostModel(verify_stops=0.5, churn_cost=20, refuse_legit_multiplier=3)
    )
    assert v["value_at_risk"] == 60.0
    assert v["value_saved"] == pytest.approx(10.0 + 0.5 * 20.0)
    assert v["value_lost"] == pytest.approx(40.0)
    assert v["false_positive_cost"] == pytest.approx(3 * 10.0 + 20)


def test_pattern_recall_and_trap_false_positive_rates() -> None:
    frame, scores = _toy_frame()
    patterns = pattern_table(frame, scores, TH).set_index("pattern")
    assert patterns.loc["welcome_cycling", "recall_verify"] == 1.0
    assert patterns.loc["welcome_cycling", "recall_refuse"] == 0.5
    assert patterns.loc["code_spray", "recall_verify"] == 0.0
    traps = trap_table(frame, scores, TH).set_index("trap")
    assert traps.loc["vpn", "legit_rows"] == 2 and traps.loc["vpn", "fpr_verify"] == 0.5
    assert traps.loc["none", "fpr_verify"] == 0.0


def test_core_metrics_on_a_perfect_ranking() -> None:
    frame, _ = _toy_frame()
    m = core_metrics(frame, np.array([0.9, 0.8, 0.7, 0.2, 0.1, 0.0]), TH, review_per_day=3)
    assert m["pr_auc"] == pytest.approx(1.0) and m["roc_auc"] == pytest.approx(1.0)
    assert m["recall_at_fpr_1pct"] == 1.0 and m["precision_at_capacity"] == 1.0
    assert m["brier"] == pytest.approx(
        np.mean((np.array([0.9, 0.8, 0.7, 0.2, 0.1, 0.0]) - frame["label"]) ** 2)
    )


def test_models_are_compared_at_the_same_false_positive_rate() -> None:
    y = np.r_[np.zeros(1000), np.ones(10)]
    rng = np.random.default_rng(0)
    legit = rng.random(1000)
    good = np.r_[legit, np.full(10, 2.0)]
    noisy = np.r_[legit, rng.random(10)]
    table = compare_at_equal_fpr(y, {"good": good, "noisy": noisy}, fprs=(0.01,)).set_index("model")
    assert table.loc["good", "recall_at_fpr_1pct"] == 1.0
    assert table.loc["noisy", "recall_at_fpr_1pct"] < 0.5
    assert table.loc["good", "pr_auc"] > table.loc["noisy", "pr_auc"]


def test_evasion_table_reports_recall_lost_to_each_attacker_change(trained: tuple, names: list[str]) -> None:
    split, booster = trained
    cal = fit_isotonic(predict_proba(booster, matrix(split.calib, names)), split.calib["label"].to_numpy())
    th = {"default": {"watch": 30, "verify": 30, "refuse": 80}}
    table = evasion_table(booster, cal, split.test, names, thresholds=th).set_index("group")
    abusers = split.test[split.test["label"] == 1]
    expected = np.mean(to_score(apply_calibrator(cal, predict_proba(booster, matrix(abusers, names)))) >= 30)
    assert table.loc["none", "recall"] == pytest.approx(expected)
    assert set(table.index) == {"none", *EVASION_GROUPS}
    assert (table["recall_drop"] == table.loc["none", "recall"] - table["recall"]).all()
    # The synthetic abusers are given away by device and pace counts: hiding them must cost recall.
    assert table.loc["fresh_device", "recall_drop"] > 0
    assert table.loc["slower_pace", "recall_drop"] > 0
