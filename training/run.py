"""One training run, end to end: validate, split, train, calibrate, evaluate, explain, log and register.

``train_model`` is the single call the command line and notebooks make. Everything before the final
MLflow step is pure computation on the frame; the run's tables are also returned as DataFrames so a
notebook can show them without reading MLflow back.

What is measured, and against what
----------------------------------
Calibration, thresholds and early stopping use only labels known at the deploy cutoff (the start of
the test window; :func:`training.split.labels_as_of`). The test window is then measured twice: against
the store's final labels (``label_*``) and, when the frame carries simulator truth, against
``is_abuse_true`` (``truth_*``). The truth headline is the six seed patterns; ``bot_spray`` is reported
apart. Rolling-origin folds (``folds``, oldest first, the last one being the registered model's own
split) repeat the whole fit at earlier origins; the MEDIAN over folds is the headline
(``fold_median_*``), the per-fold figures are the ``folds`` table.

Metric names (MLflow keys, also ``TrainingResult.metrics``)
------------------------------------------------------------
``[<scorer>_]<source>_<measure>[_<action>][_<slice>]``, flat (no dots), with:

* ``source``: ``label`` (the store's labels) or ``truth`` (simulator ground truth);
* ``action``: ``verify`` (score at or above the row's promotion-type verify threshold, refusals
  included) or ``refuse``;
* ``slice``: a seed pattern (``welcome_cycling``, ``referral_self``, ``code_leak``, ``intro_reset``,
  ``sample_stacking``, ``wholesale_guest``), ``seed_patterns`` (the six pooled: the headline),
  ``seed_patterns_macro`` (mean of the per-pattern recalls shown), ``bot_spray`` or another abusive
  pattern, ``trap_<trap>`` (honest look-alikes), ``pattern_<pattern>`` (honest rows of one truth
  pattern, e.g. ``pattern_legit_wholesale``), ``tier_<tier>`` (truth evasion tier);
* no ``scorer``: the registered model at its own thresholds on the test window. ``seed_rules_``,
  ``model_``, ``logistic_regression_``, ``rules_``: each scorer cut to flag the same share of truly
  honest rows as the seed rules do (:func:`training.evaluate.compare_at_equal_legit_rate`).

The keys:

* ``label_{rows,positives,pr_auc,roc_auc,recall_at_fpr_0_5pct,recall_at_fpr_1pct,
  precision_at_capacity,ece,brier,value_at_risk,value_saved,value_lost,false_positive_cost,
  net_saving}`` and the same with ``truth_``;
* ``label_flag_rate_legit_{verify,refuse}``, ``label_trap_flag_rate_verify`` (labeled-legit rows
  flagged: what the audit showed to be mostly unlabeled abusers);
* ``truth_recall_{verify,refuse}_<slice>``,
  ``truth_honest_flag_rate_{verify,refuse}[_trap_<trap>|_pattern_<honest pattern>]``;
* ``<scorer>_truth_recall_<slice>`` and ``<scorer>_truth_honest_flag_rate`` (without truth:
  ``<scorer>_label_recall_abuse`` and ``<scorer>_label_legit_flag_rate``);
* ``fold_median_<key>`` for every test-window key above without a scorer, and ``fold_count``;
* ``calib_label_ece`` (on the calibration window's known labels).

A slice with fewer than :data:`training.evaluate.MIN_TRUTH_ROWS` truly abusive (or honest) rows has
no metric at all (its table cell is NaN, printed ``n/a``). The nested ``test.*`` and ``calib.ece``
keys of earlier runs are still logged as aliases of the ``label_*`` ones, for readers not yet moved.
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightgbm as lgb
import numpy as np
import pandas as pd
from sklearn.pipeline import Pipeline

from features.definitions import FEATURE_SERVICE
from scoring.artifact import write_artifact
from scoring.calibration import apply_calibrator, to_score
from scoring.policy import DEFAULT_BANDS, threshold_for
from training import calibrate, evaluate, explain, figures, registry
from training.card import model_card
from training.dataset import EVALUATION_COLUMNS, model_feature_names, validate_training_frame
from training.split import Split, abusers_seen_in_train, rolling_splits
from training.train import TrainParams, matrix, predict_proba, train_baseline, train_booster

log = logging.getLogger(__name__)

Baseline = Callable[[pd.DataFrame], np.ndarray]


@dataclass
class TrainingResult:
    """Everything one run produced; tables are plain DataFrames (NaN where a slice is too small)."""

    run_id: str
    model_version: str | None
    artifact_version: str
    metrics: dict[str, float]
    comparison: pd.DataFrame
    patterns: pd.DataFrame
    traps: pd.DataFrame
    seen_unseen: pd.DataFrame
    evasion: pd.DataFrame
    importance: pd.DataFrame
    pattern_contributions: pd.DataFrame
    thresholds: dict[str, dict[str, int]]
    calibrator: dict[str, Any]
    booster: lgb.Booster
    baseline_model: Pipeline
    split: Split
    timings: dict[str, float] = field(default_factory=dict)
    #: Recall per truth pattern at the thresholds, test window and median over folds.
    truth_patterns: pd.DataFrame = field(default_factory=pd.DataFrame)
    #: Share of truly honest rows flagged at verify / refuse, overall and per trap.
    truth_honest: pd.DataFrame = field(default_factory=pd.DataFrame)
    #: Recall of truly abusive seed-pattern rows per truth evasion tier.
    evasion_tiers: pd.DataFrame = field(default_factory=pd.DataFrame)
    #: One row per rolling-origin fold (oldest first) and a last ``median`` row.
    folds: pd.DataFrame = field(default_factory=pd.DataFrame)
    #: Seed rules vs model, logistic regression and rules at the seed rules' honest flag rate.
    seed_rules_comparison: pd.DataFrame = field(default_factory=pd.DataFrame)
    #: Mean |SHAP| summed per feature group.
    group_importance: pd.DataFrame = field(default_factory=pd.DataFrame)


def _golden_rows(test: pd.DataFrame, prob: np.ndarray, n: int = 100, seed: int = 7) -> np.ndarray:
    # Half the riskiest rows, half random ones, so golden checks cover the whole score range.
    top = np.argsort(-prob, kind="stable")[: n // 2]
    rest = np.setdiff1d(np.arange(len(test)), top)
    rng = np.random.default_rng(seed)
    pick = rng.choice(rest, size=min(n - len(top), len(rest)), replace=False)
    return np.sort(np.r_[top, pick])


def _na(table: pd.DataFrame) -> pd.DataFrame:
    """The table as logged and printed: a rate that is not shown reads ``n/a``."""
    return table.astype(object).where(table.notna(), "n/a")


def _fit(
    split: Split, names: list[str], p: TrainParams, c: calibrate.CostModel, b: Mapping[str, int]
) -> tuple[lgb.Booster, dict[str, Any], dict[str, dict[str, int]], np.ndarray]:
    """Booster (early stopping on the known validation labels), calibrator and thresholds of one split."""
    booster = train_booster(split.train, split.valid, names, p)
    p_calib = predict_proba(booster, matrix(split.calib, names), num_threads=p.num_threads)
    # The training window's labels are settled (presumed legit once matured): its abuse share is the
    # base rate known at the cutoff, which corrects the calibration snapshot's over-share of abuse.
    base_rate = float(split.train["label"].mean())
    cal, thresholds = calibrate.fit_calibration(p_calib, split.calib, costs=c, bands=b, base_rate=base_rate)
    return booster, cal, thresholds, p_calib


@dataclass
class _WindowEval:
    """The flat metrics and truth tables of one test window scored by one fitted model."""

    metrics: dict[str, float]
    truth_patterns: pd.DataFrame
    truth_honest: pd.DataFrame
    evasion_tiers: pd.DataFrame


def _evaluate_window(
    test: pd.DataFrame,
    prob: np.ndarray,
    thresholds: Mapping[str, Mapping[str, int]],
    costs: calibrate.CostModel,
    review_per_day: int,
) -> _WindowEval:
    """Label and truth metrics of a test window under the module's naming scheme (see the docstring)."""
    scores = to_score(prob)
    out: dict[str, float] = {}
    for source, target in (("label", "label"), ("truth", evaluate.TRUTH)):
        if source == "truth" and not evaluate.has_truth(test):
            continue
        core = evaluate.core_metrics(
            test, prob, thresholds, costs=costs, review_per_day=review_per_day, target=target
        )
        out.update({f"{source}_{k}": v for k, v in core.items()})
    verify, refuse = evaluate.flags_at_thresholds(test, scores, thresholds)
    legit = test["label"].to_numpy() == 0
    if legit.any():
        out["label_flag_rate_legit_verify"] = float(verify[legit].mean())
        out["label_flag_rate_legit_refuse"] = float(refuse[legit].mean())
    out["label_trap_flag_rate_verify"] = evaluate.trap_fpr(test, scores, thresholds)
    patterns = evaluate.truth_pattern_table(test, scores, thresholds)
    honest = evaluate.truth_honest_table(test, scores, thresholds)
    tiers = evaluate.evasion_tier_table(test, scores, thresholds)
    for row in patterns.to_dict("records"):
        for action in ("verify", "refuse"):
            out[f"truth_recall_{action}_{row['pattern']}"] = float(row[f"recall_{action}"])
    seed = patterns[patterns["group"] == "seed"]
    for action in ("verify", "refuse"):
        shown = seed[f"recall_{action}"].astype(float).dropna()
        if len(shown):
            out[f"truth_recall_{action}_seed_patterns_macro"] = float(shown.mean())
    for row in honest.to_dict("records"):
        tag = "" if row["slice"] == "all" else "_" + str(row["slice"]).replace(":", "_", 1)
        for action in ("verify", "refuse"):
            out[f"truth_honest_flag_rate_{action}{tag}"] = float(row[f"flag_rate_{action}"])
    for row in tiers.to_dict("records"):
        for action in ("verify", "refuse"):
            out[f"truth_recall_{action}_tier_{row['tier']}"] = float(row[f"recall_{action}"])
    return _WindowEval(registry.flatten_metrics(out), patterns, honest, tiers)


#: Columns of the fold table printed by default (the table itself keeps every metric).
FOLD_SUMMARY_COLUMNS: tuple[str, ...] = (
    "fold",
    "test_start",
    "test_rows",
    "label_pr_auc",
    "truth_pr_auc",
    "truth_recall_verify_seed_patterns",
    "truth_recall_refuse_seed_patterns",
    "truth_recall_verify_bot_spray",
    "truth_honest_flag_rate_verify",
    "truth_honest_flag_rate_refuse",
)


def _fold_table(rows: list[dict[str, Any]]) -> tuple[pd.DataFrame, dict[str, float]]:
    """Per-fold rows plus a ``median`` row, and the ``fold_median_*`` metrics (NaN-skipping medians)."""
    table = pd.DataFrame(rows)
    metric_cols = [
        c for c in table.columns if c not in ("fold", "test_start", "test_end") and not c.startswith("rows_")
    ]
    medians: dict[str, float] = {}
    for col in metric_cols:
        values = pd.to_numeric(table[col], errors="coerce").dropna()
        if len(values):
            medians[col] = float(values.median())
    median_row: dict[str, Any] = {"fold": "median", "test_start": "", "test_end": ""}
    median_row.update({c: medians.get(c, np.nan) for c in metric_cols})
    rows_cols = [c for c in table.columns if c.startswith("rows_")]
    median_row.update({c: np.nan for c in rows_cols})
    table = pd.concat([table, pd.DataFrame([median_row])], ignore_index=True)
    first = [c for c in FOLD_SUMMARY_COLUMNS if c in table.columns]
    table = table[first + [c for c in table.columns if c not in first]]
    return table, {f"fold_median_{k}": v for k, v in medians.items() if k != "test_rows"}


def _fold_row(i: int, split: Split, window: _WindowEval) -> dict[str, Any]:
    return {
        "fold": str(i),
        "test_start": split.test_start.isoformat(),
        "test_end": split.test_end.isoformat(),
        "rows_train": len(split.train),
        "rows_calib": len(split.calib),
        "test_rows": float(len(split.test)),
        **window.metrics,
    }


def _equal_rate_metrics(table: pd.DataFrame, truth: bool) -> dict[str, float]:
    """``<scorer>_<source>_recall_<slice>`` and the achieved legit flag rate per scorer."""
    source = "truth" if truth else "label"
    out: dict[str, float] = {}
    for row in table.to_dict("records"):
        for scorer in table.columns[2:]:
            if row["slice"] == "legit_flag_rate":
                key = f"{scorer}_truth_honest_flag_rate" if truth else f"{scorer}_label_legit_flag_rate"
            else:
                key = f"{scorer}_{source}_recall_{row['slice']}"
            out[key] = float(row[scorer])
    return registry.flatten_metrics(out)


def _truth_pattern_view(patterns: pd.DataFrame, fold_medians: Mapping[str, float]) -> pd.DataFrame:
    """The per-pattern truth table with the fold-median recalls beside the test window's."""
    if patterns.empty:
        return patterns
    out = patterns.copy()
    for action in ("verify", "refuse"):
        out[f"fold_median_recall_{action}"] = [
            fold_medians.get(f"fold_median_truth_recall_{action}_{p}", np.nan) for p in out["pattern"]
        ]
    return out


def _figures(
    tdir: Path,
    test: pd.DataFrame,
    prob: np.ndarray,
    thresholds: Mapping[str, Mapping[str, int]],
) -> dict[str, Path]:
    """PR curves (label and truth), reliability diagram and per-pattern score histograms."""
    targets = {"label": evaluate.target_values(test, "label")}
    if evaluate.has_truth(test):
        targets["truth"] = evaluate.target_values(test, evaluate.TRUTH)
    out = {
        "pr_curve": figures.pr_curves_png(prob, targets, tdir / "pr_curve.png"),
        "calibration": figures.reliability_png(prob, targets, tdir / "calibration.png"),
    }
    if evaluate.has_truth(test):
        known, y = targets["truth"]
        pattern = test["pattern"].astype(str).to_numpy() if "pattern" in test.columns else None
        abusive = known & (y == 1)
        groups: list[tuple[str, np.ndarray]] = []
        if pattern is not None:
            names = [*evaluate.SEED_PATTERNS, *sorted(set(pattern[abusive]) - set(evaluate.SEED_PATTERNS))]
            groups = [(p, abusive & (pattern == p)) for p in names]
        groups.append(("honest", known & (y == 0)))
        lines = [(a, float(threshold_for("default", a, thresholds))) for a in ("verify", "refuse")]
        out["score_histograms"] = figures.score_histograms_png(
            to_score(prob), groups, tdir / "score_histograms.png", thresholds=lines
        )
    return out


def train_model(
    frame: pd.DataFrame,
    *,
    tracking_uri: str,
    feature_names: Sequence[str] | None = None,
    model_name: str = "promo-abuse",
    feature_service: str = FEATURE_SERVICE,
    baseline: Baseline | None = None,
    experiment: str = "promo-abuse",
    artifact_root: str | None = None,
    params: TrainParams | None = None,
    costs: calibrate.CostModel | None = None,
    bands: Mapping[str, int] | None = None,
    test_days: float = 14,
    valid_days: float = 7,
    calib_days: float = 14,
    gap_days: float = 14,
    review_per_day: int = 200,
    explain_rows: int = 2000,
    validate: bool = True,
    register: bool = True,
    progress: Callable[[str], None] | None = None,
    folds: int = 3,
) -> TrainingResult:
    """Train, calibrate, evaluate, explain, log and register one model from a training frame.

    ``feature_names`` are the Feast features (default: the whole ``promo_abuse_v1`` service); the model
    also gets the request-time flags and context columns. ``baseline`` scores a frame 0-100 with the
    rule set (the rules fallback), for the side-by-side tables. ``folds`` rolling-origin folds, each
    ``test_days`` earlier than the next, are fitted and measured the same way; the last one is the
    registered model's own split, so ``folds=1`` fits once. A fold too early for the windows, or
    whose calibration window lacks a class, is left out.
    """
    p = params or TrainParams()
    c = costs or calibrate.CostModel()
    b = dict(bands or DEFAULT_BANDS)
    names = model_feature_names(feature_names)
    say = progress or (lambda msg: log.info(msg))
    timings: dict[str, float] = {}
    t0 = time.perf_counter()

    def lap(stage: str) -> None:
        nonlocal t0
        now = time.perf_counter()
        timings[stage] = now - t0
        t0 = now
        say(f"{stage} done in {timings[stage]:.1f}s")

    if validate:
        validate_training_frame(frame, names)
        lap("validate")
    splits = rolling_splits(
        frame,
        folds=folds,
        test_days=test_days,
        valid_days=valid_days,
        calib_days=calib_days,
        gap_days=gap_days,
    )
    split = splits[-1]
    lap("split")

    booster, cal, thresholds, p_calib = _fit(split, names, p, c, b)
    lr = train_baseline(split.train, names, seed=p.seed)
    lap("train")

    test = split.test
    x_test = matrix(test, names)
    p_raw = predict_proba(booster, x_test, num_threads=p.num_threads)
    prob = apply_calibrator(cal, p_raw)
    scores = to_score(prob)
    window = _evaluate_window(test, prob, thresholds, c, review_per_day)
    fold_rows: list[dict[str, Any]] = []
    for i, fold in enumerate(splits[:-1], start=1):
        say(f"fold {i}/{len(splits)}: test from {fold.test_start.date()}")
        try:
            f_booster, f_cal, f_th, _ = _fit(fold, names, p, c, b)
        except ValueError as exc:
            log.warning("fold %d left out: %s", i, exc)
            continue
        f_prob = apply_calibrator(
            f_cal, predict_proba(f_booster, matrix(fold.test, names), num_threads=p.num_threads)
        )
        fold_rows.append(_fold_row(i, fold, _evaluate_window(fold.test, f_prob, f_th, c, review_per_day)))
    fold_rows.append(_fold_row(len(splits), split, window))
    fold_table, fold_medians = _fold_table(fold_rows)
    lap("folds")

    truth = evaluate.has_truth(test)
    calib_ece = evaluate.expected_calibration_error(
        split.calib["label"].to_numpy(), apply_calibrator(cal, p_calib)
    )
    y = test["label"].to_numpy()
    by_model: dict[str, np.ndarray] = {"model": prob, "logistic_regression": lr.predict_proba(x_test)[:, 1]}
    if baseline is not None:
        by_model["rules"] = np.asarray(baseline(test), dtype=np.float64) / 100.0
    comparison = evaluate.compare_at_equal_fpr(y, by_model)
    seed_cmp = evaluate.compare_at_equal_legit_rate(test, evaluate.seed_rules(test), by_model)
    patterns = evaluate.pattern_table(test, scores, thresholds)
    traps = evaluate.trap_table(test, scores, thresholds)
    seen_unseen = evaluate.seen_unseen_table(test, scores, thresholds, abusers_seen_in_train(split))
    abusive = None
    if truth:
        known, yt = evaluate.target_values(test, evaluate.TRUTH)
        pattern = test["pattern"].astype(str).to_numpy() if "pattern" in test.columns else np.array([])
        abusive = known & (yt == 1) & np.isin(pattern, evaluate.SEED_PATTERNS)
    evasion = evaluate.evasion_table(
        booster, cal, test, names, thresholds=thresholds, num_threads=p.num_threads, abusive=abusive
    )
    truth_patterns = _truth_pattern_view(window.truth_patterns, fold_medians)
    metrics: dict[str, Any] = {
        **window.metrics,
        **_equal_rate_metrics(seed_cmp, truth),
        **fold_medians,
        "fold_count": float(len(fold_rows)),
        "calib_label_ece": calib_ece,
        # Aliases of the label metrics under the names earlier runs used.
        "test": {
            **evaluate.core_metrics(test, prob, thresholds, costs=c, review_per_day=review_per_day),
            "trap_fpr_verify": evaluate.trap_fpr(test, scores, thresholds),
        },
        "calib": {"ece": calib_ece},
    }
    lap("evaluate")

    rng = np.random.default_rng(p.seed)
    sample = np.sort(rng.choice(len(test), size=min(explain_rows, len(test)), replace=False))
    contrib = explain.contributions(booster, x_test[sample], num_threads=p.num_threads)
    importance = explain.global_importance(contrib, names)
    groups = evaluate.group_importance(contrib, names)
    patt = test["pattern"].to_numpy()[sample] if "pattern" in test.columns else np.full(len(sample), None)
    pattern_contrib = explain.pattern_contributions(contrib, names, list(patt))
    signals = explain.signal_catalog(names)
    lap("explain")

    with tempfile.TemporaryDirectory() as tmp:
        tdir = Path(tmp)
        figs = {"beeswarm": explain.beeswarm_png(contrib, x_test[sample], names, tdir / "shap_beeswarm.png")}
        figs.update(_figures(tdir, test, prob, thresholds))
        artifact_version = (
            f"{model_name}-{pd.Timestamp.now(tz='UTC').strftime('%Y%m%d%H%M%S')}-{booster.num_trees()}t"
        )
        model_dir = write_artifact(
            tdir / "model",
            booster,
            feature_names=names,
            calibrator=cal,
            bands=b,
            thresholds=thresholds,
            signals=signals,
            golden_x=x_test[_golden_rows(test, prob)],
            model_version=artifact_version,
            feature_service=feature_service,
        )
        keep = ["request_id", "ts", "label", "promo_type", "discount_value"]
        keep += [col for col in ("promo_code",) if col in test.columns]
        keep += [col for col in EVALUATION_COLUMNS if col in test.columns]
        # Every known feature goes into the stored window, so a champion with a different feature list
        # can score the very same rows when this model is proposed for promotion.
        stored = names + [n for n in model_feature_names() if n in test.columns and n not in names]
        stored_window = pd.concat(
            [test[keep].reset_index(drop=True), pd.DataFrame(matrix(test, stored), columns=stored)], axis=1
        )
        run_params: dict[str, Any] = {
            **{f"lgb.{k}": v for k, v in p.as_dict().items()},
            **{f"cost.{k}": v for k, v in c.as_dict().items()},
            **{f"window.{k}": v for k, v in split.windows().items()},
            "feature_service": feature_service,
            "n_features": len(names),
            "num_trees": booster.num_trees(),
            "rows.train": len(split.train),
            "rows.valid": len(split.valid),
            "rows.calib": len(split.calib),
            "rows.test": len(split.test),
            "rows.dropped_label_not_yet_known": split.dropped_unlabeled,
            "rows.dropped_valid_label_not_known_at_deploy": split.dropped_valid,
            "rows.dropped_calib_label_not_known_at_deploy": split.dropped_calib,
            "split.days": f"test={test_days} calib={calib_days} valid={valid_days} gap={gap_days}",
            "folds.requested": folds,
            "folds.evaluated": len(fold_rows),
            "truth": truth,
        }
        tables = {
            "comparison_equal_fpr": comparison,
            "patterns": patterns,
            "traps": traps,
            "seen_unseen": seen_unseen,
            "evasion": evasion,
            "importance": importance,
            "pattern_contributions": pattern_contrib,
            "truth_patterns": _na(truth_patterns),
            "truth_honest": _na(window.truth_honest),
            "evasion_tiers": _na(window.evasion_tiers),
            "folds": _na(fold_table),
            "seed_rules_comparison": _na(seed_cmp),
            "group_importance": groups,
        }
        dataset = registry.TrainingDataset.from_split(split, feature_service=feature_service, frame=frame)
        card = model_card(
            model_name=model_name,
            artifact_version=artifact_version,
            feature_service=feature_service,
            params={**run_params, **dataset.params()},
            metrics=registry.flatten_metrics(metrics),
            tables=tables,
        )
        run_id = registry.log_training_run(
            tracking_uri,
            experiment=experiment,
            model_dir=model_dir,
            params=run_params,
            metrics=metrics,
            tables=tables,
            model_card=card,
            dataset=dataset,
            figures=figs,
            test_window=stored_window,
            tags={"feature_service": feature_service, "artifact_version": artifact_version},
            artifact_root=artifact_root,
        )
    version = registry.register(tracking_uri, model_name, run_id) if register else None
    lap("log")
    return TrainingResult(
        run_id=run_id,
        model_version=version,
        artifact_version=artifact_version,
        metrics=registry.flatten_metrics(metrics),
        comparison=comparison,
        patterns=patterns,
        traps=traps,
        seen_unseen=seen_unseen,
        evasion=evasion,
        importance=importance,
        pattern_contributions=pattern_contrib,
        thresholds=thresholds,
        calibrator=cal,
        booster=booster,
        baseline_model=lr,
        split=split,
        timings=timings,
        truth_patterns=truth_patterns,
        truth_honest=window.truth_honest,
        evasion_tiers=window.evasion_tiers,
        folds=fold_table,
        seed_rules_comparison=seed_cmp,
        group_importance=groups,
    )
