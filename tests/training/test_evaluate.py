"""Evaluation metrics on toy cases with known answers, and the evasion table."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from scoring.calibration import apply_calibrator, to_score
from training.calibrate import CostModel, fit_isotonic
from training.evaluate import (
    EVASION_GROUPS,
    MIN_TRUTH_ROWS,
    SEED_PATTERNS,
    compare_at_equal_fpr,
    compare_at_equal_legit_rate,
    core_metrics,
    evade,
    evasion_table,
    evasion_tier_table,
    expected_calibration_error,
    feature_group,
    group_importance,
    pattern_table,
    precision_at_capacity,
    recall_at_fpr,
    seed_rules,
    source_importance,
    trap_table,
    truth_honest_table,
    truth_pattern_table,
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
    # The synthetic abusers are given away by their hard identities' counts: rotating them costs recall.
    assert table.loc["rotate_hard_identity", "recall_drop"] > 0
    seed = split.test["is_abuse_true"].to_numpy() & split.test["pattern"].eq("welcome_cycling").to_numpy()
    truth = evasion_table(booster, cal, split.test, names, thresholds=th, abusive=seed)
    assert (truth["abusers"] == seed.sum()).all()


def _truth_frame(slices: list[tuple[str, bool, int, int, str | None]]) -> tuple[pd.DataFrame, np.ndarray]:
    """Rows from ``(pattern, truly abusive, rows, score, trap)``; every row a welcome promotion."""
    parts, scores = [], []
    for pattern, abusive, n, score, trap in slices:
        parts.append(
            pd.DataFrame(
                {
                    "pattern": pattern,
                    "is_abuse_true": abusive,
                    "label": int(abusive and pattern != "code_leak"),
                    "trap": trap,
                    "promo_type": "welcome",
                    "discount_value": 10.0,
                    "ts": pd.Timestamp("2026-01-01", tz="UTC"),
                },
                index=range(n),
            )
        )
        scores.append(np.full(n, score))
    return pd.concat(parts, ignore_index=True), np.concatenate(scores)


def test_truth_pattern_recall_is_per_seed_pattern_with_bots_apart_and_n_a_below_the_minimum() -> None:
    frame, scores = _truth_frame(
        [
            ("welcome_cycling", True, 30, 90, None),  # refused
            ("welcome_cycling", True, 10, 60, None),  # verified
            ("code_leak", True, MIN_TRUTH_ROWS - 1, 90, None),  # too few to show
            ("bot_spray", True, 200, 95, None),  # caught, but not part of the headline
            ("intro_reset", False, 50, 95, None),  # an abuser's honest attempt: not in recall
            ("legit_new", False, 100, 0, None),
        ]
    )
    table = truth_pattern_table(frame, scores, TH).set_index("pattern")
    assert list(table.index[: len(SEED_PATTERNS)]) == list(SEED_PATTERNS)
    assert table.loc["welcome_cycling", "abusive_rows"] == 40
    assert table.loc["welcome_cycling", "recall_verify"] == 1.0
    assert table.loc["welcome_cycling", "recall_refuse"] == 0.75
    assert table.loc["code_leak", "abusive_rows"] == MIN_TRUTH_ROWS - 1
    assert np.isnan(table.loc["code_leak", "recall_verify"]) and np.isnan(
        table.loc["code_leak", "mean_score"]
    )
    assert table.loc["code_leak", "labeled_abuse"] == 0.0, "the store labeled none of the leak"
    assert table.loc["referral_self", "abusive_rows"] == 0 and np.isnan(
        table.loc["referral_self", "recall_verify"]
    )
    assert "intro_reset" in table.index and table.loc["intro_reset", "abusive_rows"] == 0
    # The headline pools the six seed patterns only: 200 caught bots do not lift it.
    head = table.loc["seed_patterns"]
    assert head["group"] == "headline" and head["abusive_rows"] == 40 + MIN_TRUTH_ROWS - 1
    assert head["recall_refuse"] == pytest.approx((30 + MIN_TRUTH_ROWS - 1) / (40 + MIN_TRUTH_ROWS - 1))
    assert table.loc["bot_spray", "group"] == "bot" and table.loc["bot_spray", "recall_refuse"] == 1.0


def test_truth_tables_are_empty_without_truth() -> None:
    frame, scores = _toy_frame()
    assert truth_pattern_table(frame, scores, TH).empty
    assert truth_honest_table(frame, scores, TH).empty
    assert evasion_tier_table(frame, scores, TH).empty
    assert core_metrics(frame, scores / 100.0, TH)["rows"] == 6


def test_honest_flag_rate_counts_truly_honest_rows_overall_per_trap_and_per_pattern() -> None:
    frame, scores = _truth_frame(
        [
            ("legit_household", False, 40, 60, "household"),  # verified, not refused
            ("legit_household", False, 60, 10, "household"),
            ("legit_vpn", False, 25, 85, "vpn"),  # refused
            ("legit_vpn", False, 5, 0, "vpn"),
            ("legit_new", False, 10, 0, None),  # too few for its own rate
            ("welcome_cycling", True, 50, 99, None),  # abusers never count here
        ]
    )
    table = truth_honest_table(frame, scores, TH).set_index("slice")
    assert table.loc["all", "honest_rows"] == 140
    assert table.loc["all", "flag_rate_verify"] == pytest.approx(65 / 140)
    assert table.loc["all", "flag_rate_refuse"] == pytest.approx(25 / 140)
    assert table.loc["trap:household", "flag_rate_verify"] == pytest.approx(0.4)
    assert table.loc["trap:household", "flag_rate_refuse"] == 0.0
    assert table.loc["trap:vpn", "flag_rate_refuse"] == pytest.approx(25 / 30)
    assert np.isnan(table.loc["trap:none", "flag_rate_verify"])
    assert table.loc["pattern:legit_vpn", "honest_rows"] == 30


def test_recall_per_truth_evasion_tier_leaves_bots_out() -> None:
    frame, scores = _truth_frame(
        [
            ("welcome_cycling", True, 30, 90, None),
            ("welcome_cycling", True, 30, 10, None),
            ("bot_spray", True, 30, 0, None),
        ]
    )
    frame["evasion"] = ["naive"] * 30 + ["rotating"] * 30 + ["naive"] * 30
    table = evasion_tier_table(frame, scores, TH).set_index("tier")
    assert list(table.index) == ["naive", "rotating"]
    assert table.loc["naive", "abusive_rows"] == 30 and table.loc["naive", "recall_verify"] == 1.0
    assert table.loc["rotating", "recall_verify"] == 0.0


def _rules_frame() -> pd.DataFrame:
    rows = [
        # R1: one-per-customer code already redeemed by a hard identity (any of the four).
        {"one_per_customer": 1, "household_code_stats__redeemed_total": 1},
        {"one_per_customer": 1, "phone_code_stats__redeemed_total": 2},
        {"one_per_customer": 1, "device_code_stats__redeemed_total": np.nan},  # never redeemed: no
        {"one_per_customer": 0, "payment_code_stats__redeemed_total": 3},  # not one per customer: no
        # R2: a wholesale code as a guest.
        {"promo_is_wholesale": 1, "is_guest": 1},
        {"promo_is_wholesale": 1, "is_guest": 0},
        {"promo_is_wholesale": 0, "is_guest": 1},
        # R3: a referral whose sharer shares a hard identity, or is the redeemer's own account.
        {"promo_is_referral": 1, "referrer_shared_hard_kinds": 1},
        {"promo_is_referral": 1, "referrer_is_account": 1},
        {"promo_is_referral": 1, "referrer_shared_hard_kinds": 0},
        {"promo_is_referral": 0, "referrer_shared_hard_kinds": 2},
    ]
    return pd.DataFrame(rows)


def test_seed_rules_flag_exactly_the_rows_each_rule_describes() -> None:
    frame = _rules_frame()
    assert seed_rules(frame).tolist() == [1, 1, 0, 0, 1, 0, 0, 1, 1, 0, 0]
    # A frame without the context columns flags nothing instead of failing.
    assert seed_rules(pd.DataFrame({"label": [0, 1]})).tolist() == [0, 0]
    only_r2 = pd.DataFrame({"promo_is_wholesale": [1, 1], "is_guest": [1, 0]})
    assert seed_rules(only_r2).tolist() == [1, 0]


def test_models_are_cut_to_flag_as_many_truly_honest_rows_as_the_seed_rules() -> None:
    rng = np.random.default_rng(0)
    n_honest = 1000
    frame, _ = _truth_frame(
        [
            ("legit_repeat", False, n_honest, 0, None),
            ("welcome_cycling", True, 50, 0, None),
            ("bot_spray", True, 50, 0, None),
        ]
    )
    flags = np.zeros(len(frame), dtype=int)
    flags[:7] = 1  # 7 honest rows flagged by the rules: 0.7 %
    flags[n_honest : n_honest + 40] = 1  # 40 of 50 welcome cyclers
    honest_scores = rng.random(n_honest)
    good = np.r_[honest_scores, np.full(50, 2.0), rng.random(50)]
    table = compare_at_equal_legit_rate(frame, flags, {"model": good, "noise": rng.random(len(frame))})
    table = table.set_index("slice")
    assert list(table.columns) == ["rows", "seed_rules", "model", "noise"]
    assert table.loc["legit_flag_rate", "rows"] == n_honest
    # Same share of truly honest rows flagged: exactly 7 of 1000 for every continuous score.
    assert (table.loc["legit_flag_rate", ["seed_rules", "model", "noise"]] == 0.007).all()
    assert table.loc["welcome_cycling", "seed_rules"] == pytest.approx(0.8)
    assert table.loc["welcome_cycling", "model"] == 1.0
    # Bots are their own row, not in the seed-pattern headline.
    assert table.loc["seed_patterns", "rows"] == 50 and table.loc["bot_spray", "rows"] == 50
    assert table.loc["seed_patterns", "model"] == 1.0
    assert np.isnan(table.loc["code_leak", "model"]), "no abusive rows: n/a"


def test_rotating_hard_identity_resets_every_replaceable_identity_and_keeps_the_network(
    names: list[str],
) -> None:
    row = {n: 5.0 for n in names}
    row.update({"referrer_shared_hard_kinds": 2.0, "referrer_is_account": 1.0})
    frame = pd.DataFrame([row])
    out = evade(frame, "rotate_hard_identity").iloc[0]
    for name in names:
        view = name.partition("__")[0]
        rotated = view in {"device_stats", "household_stats", "payment_stats", "phone_stats", "email_stats"}
        rotated |= view.endswith(("_code_stats", "_type_stats")) or name.startswith("referrer_")
        rotated |= name in {"person_linked_evidence", "person_code_attempts", "person_type_attempts"}
        if name in {"person_accounts", "person_emails", "household_accounts"}:
            assert out[name] == 1, name  # a new person with one account at a new address
        elif rotated:
            assert out[name] == 0 or (np.isnan(out[name]) and name.endswith("first_seen_days")), name
        elif view in {"network_stats", "local_ip_stats", "code_stats"}:
            assert out[name] == 5.0, name
    both = evade(frame, "rotate_hard_identity+slower_pace").iloc[0]
    assert both["network_stats__attempts_1h"] == 0.0 and both["network_stats__attempts_7d"] == 5.0
    assert both["device_stats__attempts_7d"] == 0.0
    assert {"rotate_hard_identity", "rotate_hard_identity+slower_pace"} <= set(EVASION_GROUPS)
    with pytest.raises(ValueError, match="unknown evasion group"):
        evade(frame, "fresh_device+teleport")


def test_importance_by_group_sums_the_mean_absolute_contribution_of_its_features() -> None:
    names = ["device_stats__attempts_1h", "device_stats__attempts_24h", "device_code_stats__redeemed_total"]
    names += [
        "email_is_alias",
        "promo_is_wholesale",
        "is_guest",
        "referrer_is_account",
        "code_stats__attempts_1h",
    ]
    contrib = np.array(
        [[1.0, -2.0, 3.0, 0.5, 0.25, -0.25, 4.0, 1.0, 9.0], [-1.0, 0.0, 1.0, 0.5, 0.25, 0.25, 0.0, 0.0, 9.0]]
    )
    table = group_importance(contrib, names).set_index("group")
    assert table.loc["device_stats", "mean_abs_contribution"] == pytest.approx(1.0 + 1.0)
    assert table.loc["code_pairs", "mean_abs_contribution"] == pytest.approx(2.0)
    assert table.loc["promotion_context", "features"] == 2
    assert table.loc["referrer", "mean_abs_contribution"] == pytest.approx(2.0)
    assert table.index[0] == "device_stats" and table["share"].sum() == pytest.approx(1.0)
    assert (
        feature_group("email_is_alias") == "request_flags"
        and feature_group("code_stats__attempts_1h") == "code_stats"
    )
    assert feature_group("household_type_stats__redeemed_total") == "household_type_stats"
    assert feature_group("person_code_attempts") == "identity_graph"
    sources = source_importance(table.reset_index()).set_index("source")
    # Every group but the code's own counters and the request/promotion context is identity.
    assert sources.loc["code popularity", "mean_abs_contribution"] == pytest.approx(0.5)
    assert sources.loc["context", "features"] == 3  # the alias flag, the promotion type and guest checkout
    assert sources.loc["identity", "mean_abs_contribution"] == pytest.approx(1.0 + 1.0 + 2.0 + 2.0)
    assert sources["share"].sum() == pytest.approx(1.0)
