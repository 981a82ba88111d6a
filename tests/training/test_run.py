"""One whole training run on a small frame with truth: metric names, folds, seed rules, tables, figures."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from training.dataset import synthetic_training_frame
from training.evaluate import SEED_PATTERNS
from training.run import TrainingResult, train_model
from training.train import TrainParams


def _rules(frame: pd.DataFrame) -> np.ndarray:
    return np.asarray(40 * frame["ip_is_datacenter"] + 30 * frame["email_is_alias"], dtype=np.float64)


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[TrainingResult, str]:
    """A 3-fold run whose truly abusive rows are 50 % welcome cycling, 40 % bots and 10 % code leaks."""
    frame = synthetic_training_frame(8000, seed=5)
    abusive = frame.index[frame["is_abuse_true"]]
    kinds = np.array(["welcome_cycling"] * 5 + ["bot_spray"] * 4 + ["code_leak"])
    frame.loc[abusive, "pattern"] = kinds[np.arange(len(abusive)) % len(kinds)]
    store = f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"
    result = train_model(
        frame,
        tracking_uri=store,
        baseline=_rules,
        params=TrainParams(max_rounds=40, num_threads=1),
        validate=False,
        register=False,
        explain_rows=300,
        folds=3,
        test_days=14,
        valid_days=10,
        calib_days=14,
        gap_days=7,
    )
    return result, store


def test_metric_names_carry_source_pattern_and_scorer_and_nothing_nan_is_logged(run: tuple) -> None:
    result, _ = run
    m = result.metrics
    for key in (
        "label_pr_auc",
        "truth_pr_auc",
        "truth_recall_verify_welcome_cycling",
        "truth_recall_refuse_welcome_cycling",
        "truth_recall_verify_seed_patterns",
        "truth_recall_verify_bot_spray",
        "truth_honest_flag_rate_verify",
        "truth_honest_flag_rate_refuse",
        "seed_rules_truth_recall_welcome_cycling",
        "model_truth_recall_seed_patterns",
        "logistic_regression_truth_recall_seed_patterns",
        "rules_truth_recall_seed_patterns",
        "seed_rules_truth_honest_flag_rate",
        "fold_median_truth_recall_verify_seed_patterns",
        "calib_label_ece",
    ):
        assert key in m, key
    assert all(np.isfinite(v) for v in m.values())
    assert all("." not in k for k in m if not k.startswith(("test.", "calib.")))
    assert m["test.pr_auc"] == m["label_pr_auc"], "the old name stays as an alias"
    # Too few truly abusive code leaks in the test window: the table says n/a, no metric is logged.
    patterns = result.truth_patterns.set_index("pattern")
    assert patterns.loc["code_leak", "abusive_rows"] < 20 and np.isnan(
        patterns.loc["code_leak", "recall_verify"]
    )
    assert "truth_recall_verify_code_leak" not in m
    assert list(patterns.index[: len(SEED_PATTERNS)]) == list(SEED_PATTERNS)
    # The seed-pattern headline leaves the bots out.
    seed = patterns.loc["seed_patterns"]
    assert seed["abusive_rows"] == patterns.loc[list(SEED_PATTERNS), "abusive_rows"].sum()
    assert m["truth_recall_verify_seed_patterns"] == pytest.approx(seed["recall_verify"])


def test_three_rolling_origin_folds_and_the_headline_is_their_median(run: tuple) -> None:
    result, _ = run
    folds = result.folds
    assert list(folds["fold"]) == ["1", "2", "3", "median"]
    per_fold = folds.iloc[:3]
    assert list(per_fold["test_start"]) == sorted(per_fold["test_start"])
    for key in ("truth_recall_verify_seed_patterns", "label_pr_auc", "truth_honest_flag_rate_verify"):
        median = float(np.nanmedian(per_fold[key].astype(float)))
        assert result.metrics[f"fold_median_{key}"] == pytest.approx(median)
        assert float(folds.iloc[3][key]) == pytest.approx(median)
    # The last fold is the registered model's own split.
    assert per_fold.iloc[2]["label_pr_auc"] == pytest.approx(result.metrics["label_pr_auc"])
    assert per_fold.iloc[2]["test_start"] == result.split.test_start.isoformat()
    assert "fold_median_recall_verify" in result.truth_patterns.columns


def test_seed_rules_are_compared_at_their_own_honest_flag_rate(run: tuple) -> None:
    result, _ = run
    table = result.seed_rules_comparison.set_index("slice")
    assert list(table.columns) == ["rows", "seed_rules", "model", "logistic_regression", "rules"]
    rate = table.loc["legit_flag_rate"]
    # Continuous scores flag exactly as many truly honest rows; the coarse rules score at most as many.
    assert rate["model"] == pytest.approx(rate["seed_rules"])
    assert rate["logistic_regression"] == pytest.approx(rate["seed_rules"])
    assert rate["rules"] <= rate["seed_rules"] + 1e-12
    assert result.metrics["seed_rules_truth_honest_flag_rate"] == pytest.approx(rate["seed_rules"])
    assert {"seed_patterns", *SEED_PATTERNS, "bot_spray"} <= set(table.index)


def test_tables_and_figures_are_returned_and_logged(run: tuple) -> None:
    from mlflow import MlflowClient

    result, store = run
    assert not result.truth_honest.empty and result.truth_honest.iloc[0]["slice"] == "all"
    assert {"rotate_hard_identity", "rotate_hard_identity+slower_pace"} <= set(result.evasion["group"])
    assert not result.evasion_tiers.empty
    assert {"group", "features", "mean_abs_contribution", "share"} == set(result.group_importance.columns)
    client = MlflowClient(tracking_uri=store)
    figures = {Path(a.path).name for a in client.list_artifacts(result.run_id, "figures")}
    assert {"shap_beeswarm.png", "pr_curve.png", "calibration.png", "score_histograms.png"} <= figures
    tables = {Path(a.path).name for a in client.list_artifacts(result.run_id, "tables")}
    for name in ("truth_patterns", "truth_honest", "folds", "seed_rules_comparison", "group_importance"):
        assert f"{name}.csv" in tables
    logged = client.get_run(result.run_id).data.metrics
    assert set(logged) == set(result.metrics)
