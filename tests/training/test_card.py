"""The model card renders whatever a run gives it, and says n/a (never nan) for what it lacks."""

from __future__ import annotations

import math
import re

import numpy as np
import pandas as pd
import pytest

from training.card import NA, fmt, markdown_table, model_card, pattern_summary

NAN_WORD = re.compile(r"\bnan\b", re.IGNORECASE)
PARAMS = {
    "feature_service": "promo_abuse_v1",
    "num_trees": 120,
    "n_features": 48,
    "window.label_cutoff": "2026-03-01T00:00:00+00:00",
    "window.test_start": "2026-03-20T00:00:00+00:00",
    "rows.train": 30_000,
    "rows.test": 5_000,
    "rows.dropped_label_not_yet_known": 812,
    "label_source.review": 900,
    "label_source.presumed_legit": 25_000,
    "presume_legit_after": 30,
    "split.days": "test=14 calib=14 valid=7 gap=14",
}
METRICS = {
    "test.truth_recall_verify_welcome_cycling": 0.91,
    "test.truth_recall_refuse_welcome_cycling": 0.62,
    "test.truth_recall_verify_intro_reset": float("nan"),
    "test.truth_recall_refuse_intro_reset": float("nan"),
    "test.truth_recall_verify_bot_spray": 0.99,
    "test.truth_recall_refuse_bot_spray": 0.97,
    "test.label_pr_auc": 0.88,
    "test.label_pr_auc_welcome_cycling": 0.93,
    "calib.ece": 0.012,
}


def _card(**overrides: object) -> str:
    args: dict[str, object] = {
        "model_name": "promo-abuse",
        "artifact_version": "promo-abuse-20260401-120t",
        "feature_service": "promo_abuse_v1",
        "params": PARAMS,
        "metrics": METRICS,
        "tables": {},
    }
    args.update(overrides)
    return model_card(**args)  # type: ignore[arg-type]


def _section(card: str, heading: str) -> str:
    start = card.index(heading)
    rest = card[start + len(heading) :]
    nxt = re.search(r"^#{1,3} ", rest, flags=re.MULTILINE)
    return rest[: nxt.start()] if nxt else rest


def test_a_full_card_has_every_section_and_the_per_pattern_summary_with_bots_apart() -> None:
    card = _card(tables={"patterns": pd.DataFrame({"pattern": ["code_spray"], "recall_verify": [0.5]})})
    for heading in ("## Intended use", "## Data", "## Metrics", "### Per abuse pattern", "## Known limits"):
        assert heading in card
    assert "checkout" in card and "credit" in card and "per-promotion" in card
    assert "`promo_abuse_v1`" in card and "2026-03-01T00:00:00+00:00" in card
    assert "30,000" in card and "presumed_legit" in card and "within 30 days" in card and "812" in card
    patterns = _section(card, "### Per abuse pattern")
    assert "| welcome_cycling | 0.910 | 0.620 | 0.930 |" in patterns
    assert f"| intro_reset | {NA} | {NA} | {NA} |" in patterns, "too few rows read n/a"
    human, bots = patterns.split("**Bots**")
    assert "bot_spray" in bots and "bot_spray" not in human
    assert "- label-based PR-AUC (test window): 0.880" in card
    assert "### patterns" in card, "every table given is rendered under its name"
    for limit in ("simulated history", "rotating evasion tier", "network residue", "human review"):
        assert limit in card
    assert not NAN_WORD.search(card)


@pytest.mark.parametrize(
    "overrides",
    [
        {"params": {}, "metrics": {}, "tables": {}},
        {"metrics": {k: math.nan for k in METRICS}},
        {"metrics": {"test.truth_recall_verify_welcome_cycling": np.float64("nan")}, "params": {"x": "nan"}},
        {"tables": {"patterns": pd.DataFrame(), "folds": pd.DataFrame({"fold": []}), "none": None}},
        {"tables": {"folds": pd.DataFrame({"a": [np.nan, None, 1.5], "b": ["nan", "x", pd.NA]})}},
        {"model_name": None, "artifact_version": float("nan"), "feature_service": ""},
        {"metrics": {"test.pr_auc": float("inf"), "truth_recall_verify": 0.5}},
    ],
)
def test_edge_inputs_never_print_nan(overrides: dict[str, object]) -> None:
    card = _card(**overrides)
    assert not NAN_WORD.search(card), card
    assert "## Known limits" in card


def test_without_truth_metrics_the_pattern_table_stands_in_and_without_either_it_says_n_a() -> None:
    table = pd.DataFrame(
        {"pattern": ["welcome_cycling", "bot_spray"], "rows": [40, 3], "recall_verify": [0.8, np.nan]}
    )
    card = _card(metrics={}, tables={"patterns": table})
    patterns = _section(card, "### Per abuse pattern")
    assert "the `patterns` table" in patterns and "| welcome_cycling | 40 | 0.800 |" in patterns
    assert f"| bot_spray | 3 | {NA} |" in patterns.split("**Bots**")[1]
    # truth_patterns wins over patterns when both are given.
    truth = table.assign(pattern=["referral_self", "bot_spray"])
    assert "referral_self" in _section(
        _card(metrics={}, tables={"patterns": table, "truth_patterns": truth}), "### Per abuse pattern"
    )
    bare = _section(_card(metrics={}, tables={}), "### Per abuse pattern")
    assert f"No per-pattern metrics were given for this run: {NA}." in bare


def test_empty_tables_render_as_no_rows_and_long_tables_are_cut() -> None:
    assert markdown_table(pd.DataFrame()) == "_(no rows)_"
    assert markdown_table(pd.DataFrame({"a": []})) == "_(no rows)_"
    long = markdown_table(pd.DataFrame({"a": range(100)}), max_rows=5)
    assert long.count("\n| ") == 5 and "First 5 of 100 rows" in long
    assert "a \\| b" in markdown_table(pd.DataFrame({"x": ["a | b"]})), "pipes in cells are escaped"


def test_metric_names_are_read_with_or_without_a_scope_prefix() -> None:
    summary = pattern_summary(
        {
            "truth_recall_verify_code_leak": 0.5,
            "test.truth_recall_refuse.code_leak": 0.25,
            "label_pr_auc_code_leak": 0.75,
            "truth_recall_verify": 0.9,  # the overall figure is not a pattern
            "unrelated_truth_recall_verify_x": 1.0,
        }
    )
    assert summary.to_dict("records") == [
        {
            "pattern": "code_leak",
            "truth recall at verify": 0.5,
            "truth recall at refuse": 0.25,
            "label PR-AUC": 0.75,
        }
    ]


def test_the_run_naming_scheme_groups_patterns_pooled_rows_bots_and_tiers() -> None:
    # training/run.py's keys: the model at its own thresholds has no scorer prefix; folds are medians.
    metrics = {
        "truth_recall_verify_welcome_cycling": 0.8,
        "truth_recall_refuse_welcome_cycling": 0.4,
        "truth_recall_verify_code_leak": math.nan,
        "truth_recall_verify_seed_patterns": 0.7,
        "truth_recall_verify_seed_patterns_macro": 0.65,
        "truth_recall_verify_bot_spray": 0.99,
        "truth_recall_verify_tier_rotating": 0.2,
        "truth_recall_verify_tier_naive": 0.95,
        "seed_rules_truth_recall_welcome_cycling": 0.1,
        "fold_median_truth_recall_verify_welcome_cycling": 0.3,
        "label_pr_auc": 0.9,
        "truth_pr_auc": 0.8,
        "fold_median_label_pr_auc": 0.85,
        "fold_count": 3,
        "calib_label_ece": 0.02,
    }
    params = {
        **PARAMS,
        "rows.dropped_valid_label_not_known_at_deploy": 11,
        "rows.dropped_calib_label_not_known_at_deploy": 22,
    }
    params.pop("presume_legit_after")
    card = _card(metrics=metrics, params=params)
    assert not NAN_WORD.search(card)
    patterns = _section(card, "### Per abuse pattern")
    main, rest = patterns.split("**Bots**")
    bots, tiers = rest.split("**By evasion tier**")
    assert "| welcome_cycling | 0.800 | 0.400 |" in main and f"| code_leak | {NA} | {NA} |" in main
    assert main.index("code_leak") < main.index("| seed_patterns |") < main.index("seed_patterns_macro")
    assert "label PR-AUC" not in patterns, "no per-pattern label PR-AUC given: no column of n/a"
    assert "| bot_spray | 0.990 |" in bots and "bot_spray" not in main
    assert "| tier_rotating | 0.200 |" in tiers and "tier_" not in main
    assert "0.100" not in patterns and "0.300" not in patterns, "other scorers and fold medians stay out"
    assert "- truth-based PR-AUC (test window): 0.800" in card
    assert "median over 3 rolling-origin folds: 0.850" in card
    assert "- expected calibration error (calibration window): 0.020" in card
    assert "11 validation and 22 calibration rows" in card
    assert "`presumed_legit` above" in card, "the presumed-legit source stands for the unrecorded maturity"


def test_without_any_truth_metric_the_truth_table_is_summarised_by_its_groups() -> None:
    truth = pd.DataFrame(
        {
            "pattern": ["welcome_cycling", "seed_patterns", "spray", "code_spray"],
            "group": ["seed", "headline", "bot", "other"],
            "abusive_rows": [8, 17, 40, 7],
            "recall_verify": ["n/a", 0.5, 0.99, "n/a"],
            "mean_score": [1.0, 2.0, 3.0, 4.0],
        }
    )
    card = _card(metrics={"fold_count": 3.0}, tables={"truth_patterns": truth})
    patterns = _section(card, "### Per abuse pattern")
    main, bots = patterns.split("**Bots**")
    assert "| pattern | abusive_rows | recall_verify |" in main, "the summary keeps the recall columns"
    assert main.index("code_spray") < main.index("| seed_patterns |"), "pooled rows come last"
    assert "| spray | 40 | 0.990 |" in bots, "the table's group says what a bot is"
    assert "median over 3 rolling-origin folds" in card
    assert not NAN_WORD.search(card)


def test_patterns_too_small_for_a_metric_still_get_a_row_from_the_truth_table() -> None:
    # flatten_metrics drops NaN, so a slice below the row minimum has no metric at all.
    truth = pd.DataFrame(
        {
            "pattern": ["welcome_cycling", "intro_reset", "seed_patterns"],
            "group": ["seed", "seed", "headline"],
            "recall_verify": [0.8, "n/a", 0.7],
            "recall_refuse": [0.4, np.nan, 0.3],
        }
    )
    card = _card(metrics={"truth_recall_verify_welcome_cycling": 0.8}, tables={"truth_patterns": truth})
    patterns = _section(card, "### Per abuse pattern")
    assert f"| intro_reset | {NA} | {NA} |" in patterns
    assert patterns.index("intro_reset") < patterns.index("| seed_patterns |")
    assert "| welcome_cycling | 0.800 | n/a |" in patterns, "the metric, not the table, for a known slice"
    assert not NAN_WORD.search(card)


@pytest.mark.parametrize(
    ("value", "text"),
    [(None, NA), (math.nan, NA), (np.float32("nan"), NA), (math.inf, NA), ("NaN", NA), (pd.NA, NA),
     (0.12345, "0.123"), (3, "3"), (12345, "12,345"), (12345.0, "12,345"), (True, "True"), ("x", "x")],
)
def test_fmt(value: object, text: str) -> None:
    assert fmt(value) == text
