"""Scores, bands and decisions: one contract, the same answer one request at a time or a column at once."""

from __future__ import annotations

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from scoring.calibration import Calibrator, apply_calibrator, probability_to_score, sigmoid, to_score
from scoring.policy import DEFAULT_BANDS, band_for, bands_for, decide, decide_many, stricter

THRESHOLDS = {
    "default": {"watch": 30, "verify": 60, "refuse": 85},
    "welcome": {"watch": 30, "verify": 40, "refuse": 70},
    "referral": {"watch": 10, "refuse": 50},
}


def test_scores_round_and_clip_and_bands_use_lower_bounds() -> None:
    assert list(to_score(np.array([0.0, 0.094, 0.095, 0.5, 1.2]))) == [0, 9, 10, 50, 100]
    scores = np.array([0, 9, 10, 29, 30, 59, 60, 100])
    expected = ["clean", "clean", "low", "low", "medium", "medium", "high", "high"]
    assert list(bands_for(scores)) == expected
    assert [band_for(int(s), DEFAULT_BANDS) for s in scores] == expected


def test_decisions_follow_each_promotion_types_thresholds() -> None:
    out = decide_many(np.array([10, 35, 45, 75, 45]), np.array(["welcome"] * 4 + ["sitewide"]), THRESHOLDS)
    assert list(out) == ["allow", "watch", "verify", "refuse", "watch"]


def test_an_action_missing_from_a_types_table_falls_back_to_the_default_table() -> None:
    # referral has no verify threshold of its own: the default's 60 applies, its own refuse at 50 wins.
    assert decide(20, "referral", THRESHOLDS) == "watch"
    assert decide(55, "referral", THRESHOLDS) == "refuse"
    assert decide(55, "sitewide", THRESHOLDS) == "watch"
    assert decide(5, "sitewide", THRESHOLDS) == "allow"
    assert decide(5, None, THRESHOLDS) == "allow"


@given(st.lists(st.integers(0, 100), min_size=1, max_size=40),
       st.lists(st.sampled_from(["welcome", "referral", "sitewide", "wholesale"]), min_size=40, max_size=40))
def test_the_column_and_the_single_request_forms_agree(scores: list[int], types: list[str]) -> None:
    promo = np.array(types[: len(scores)], dtype=object)
    column = decide_many(np.array(scores), promo, THRESHOLDS)
    assert list(column) == [decide(s, t, THRESHOLDS) for s, t in zip(scores, promo, strict=True)]
    assert list(bands_for(np.array(scores))) == [band_for(s, DEFAULT_BANDS) for s in scores]


@given(st.floats(-0.2, 1.2, allow_nan=False))
def test_scalar_and_column_scores_agree(p: float) -> None:
    assert probability_to_score(p) == int(to_score(np.array([p]))[0])


@given(st.floats(-8.0, 8.0, allow_nan=False))
def test_calibrators_agree_one_row_or_a_column(raw: float) -> None:
    iso = {"kind": "isotonic", "x": [0.0, 0.2, 0.6, 1.0], "y": [0.0, 0.05, 0.5, 0.9]}
    platt = {"kind": "platt", "a": 1.3, "b": -0.4}
    prob = sigmoid(raw)
    for spec in (iso, platt):
        one = Calibrator.from_manifest(spec)(raw, prob)
        column = float(apply_calibrator(spec, np.array([prob]))[0])
        assert abs(one - column) < 1e-9


def test_stricter_keeps_the_stronger_decision() -> None:
    assert stricter("allow", "verify") == "verify"
    assert stricter("refuse", "verify") == "refuse"
    assert stricter("watch", None) == "watch"
