"""Scores, bands and decisions: one contract, the same answer one request at a time or a column at once."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from scoring.calibration import Calibrator, apply_calibrator, probability_to_score, sigmoid, to_score
from scoring.policy import (
    DEFAULT_BANDS,
    MIN_GAP,
    band_for,
    bands_for,
    check_bands,
    decide,
    decide_many,
    lift_to,
    normalize_thresholds,
    stricter,
    threshold_problems,
)

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


TRAINED = {  # what choose_thresholds wrote for the demo world: watch == verify == refuse for welcome
    "default": {"watch": 30, "verify": 52, "refuse": 75},
    "welcome": {"watch": 30, "verify": 30, "refuse": 30},
    "referral": {"watch": 30, "verify": 45, "refuse": 45},
    "sitewide": {"watch": 30, "verify": 101, "refuse": 101},
}


def test_normalised_thresholds_make_every_decision_reachable_inside_its_band() -> None:
    assert threshold_problems(TRAINED)
    table = normalize_thresholds(TRAINED)
    assert threshold_problems(table) == []
    assert table["welcome"] == {"watch": 25, "verify": 30, "refuse": 60}
    assert table["referral"] == {"watch": 30, "verify": 45, "refuse": 60}
    assert table["sitewide"] == {"watch": 30, "verify": 95, "refuse": 100}
    assert table["default"] == {"watch": 30, "verify": 52, "refuse": 75}  # valid rows do not move
    for ptype in table:
        reached = {decide(s, ptype, table) for s in range(101)}
        assert reached == {"allow", "watch", "verify", "refuse"}, ptype
        for s in range(101):
            d, band = decide(s, ptype, table), band_for(s, DEFAULT_BANDS)
            assert d != "refuse" or band == "high"
            assert d != "verify" or band in ("medium", "high")
    assert normalize_thresholds(table) == table


@given(st.dictionaries(st.sampled_from(["default", "welcome", "referral", "wholesale"]),
                       st.fixed_dictionaries({a: st.integers(0, 101) for a in ("watch", "verify", "refuse")}),
                       min_size=1))
def test_any_threshold_table_normalises_to_a_valid_one(table: dict[str, dict[str, int]]) -> None:
    fixed = normalize_thresholds(table)
    assert threshold_problems(fixed) == []
    for row in fixed.values():
        assert row["watch"] + MIN_GAP <= row["verify"] and row["verify"] + MIN_GAP <= row["refuse"] <= 100


def test_bands_must_leave_room_for_every_decision() -> None:
    assert check_bands(DEFAULT_BANDS) == DEFAULT_BANDS
    with pytest.raises(ValueError, match="medium"):
        check_bands({"clean": 0, "low": 10, "medium": 12, "high": 60})
    with pytest.raises(ValueError, match="exactly"):
        check_bands({"clean": 0, "high": 60})


def test_a_hard_decision_lifts_a_score_to_its_threshold_only() -> None:
    table = normalize_thresholds(TRAINED)
    assert lift_to(11, "refuse", "welcome", table) == 60
    assert lift_to(9, "verify", "welcome", table) == 30
    assert lift_to(90, "refuse", "welcome", table) == 90
    assert lift_to(9, "allow", "welcome", table) == 9


def test_the_band_table_holds_for_every_normalised_threshold_table() -> None:
    # Which decisions each band can get, as the README's table says.
    allowed = {"clean": {"allow"}, "low": {"allow", "watch"}, "medium": {"allow", "watch", "verify"},
               "high": {"watch", "verify", "refuse"}}
    for table in (TRAINED, {"default": {"watch": 90, "verify": 95, "refuse": 100}}, {"default": {}}):
        fixed = normalize_thresholds(table)
        for ptype in fixed:
            for s in range(101):
                assert decide(s, ptype, fixed) in allowed[band_for(s, DEFAULT_BANDS)], (table, ptype, s)
