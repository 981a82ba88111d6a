"""Evaluation of scores against labels: ranking, calibration, money, slices, baselines and evasion.

Pure functions over arrays and frames (no files, no MLflow). Operating points are compared at EQUAL
false-positive rate, because a model that flags more of everything always "catches more".
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import lightgbm as lgb
import numpy as np
import pandas as pd
from sklearn.metrics import average_precision_score, brier_score_loss, roc_auc_score

from scoring.calibration import apply_calibrator, to_score
from scoring.policy import threshold_per_row
from training.calibrate import CostModel
from training.train import matrix, predict_proba

Scorer = Callable[[pd.DataFrame], np.ndarray]


def _safe(fn: Callable[..., float], y: np.ndarray, p: np.ndarray) -> float:
    return float(fn(y, p)) if 0 < y.sum() < len(y) else float("nan")


def operating_threshold(y: np.ndarray, p: np.ndarray, fpr: float) -> float:
    """Smallest cut such that flagging ``p > cut`` keeps the false-positive rate at or below ``fpr``."""
    legit = np.sort(np.asarray(p, dtype=np.float64)[np.asarray(y) == 0])[::-1]
    if legit.size == 0:
        return float("-inf")
    k = int(np.floor(fpr * legit.size))
    return float(legit[min(k, legit.size - 1)])


def recall_at_fpr(y: np.ndarray, p: np.ndarray, fpr: float) -> float:
    """Share of positives flagged at the cut that keeps FPR <= ``fpr`` (ties count as not flagged)."""
    y = np.asarray(y)
    p = np.asarray(p, dtype=np.float64)
    if y.sum() == 0:
        return float("nan")
    return float(np.mean(p[y == 1] > operating_threshold(y, p, fpr)))


def expected_calibration_error(y: np.ndarray, p: np.ndarray, bins: int = 10) -> float:
    """ECE with equal-width probability bins: sum of |mean p - mean y| weighted by bin share."""
    y = np.asarray(y, dtype=np.float64)
    p = np.asarray(p, dtype=np.float64)
    idx = np.clip((p * bins).astype(np.int64), 0, bins - 1)
    total = 0.0
    for b in range(bins):
        m = idx == b
        if m.any():
            total += m.mean() * abs(p[m].mean() - y[m].mean())
    return float(total)


def precision_at_capacity(ts: pd.Series, y: np.ndarray, p: np.ndarray, per_day: int) -> float:
    """Precision of a review queue that takes the ``per_day`` highest-risk attempts of each day."""
    df = pd.DataFrame({"day": pd.to_datetime(ts, utc=True).dt.floor("D").to_numpy(), "y": y, "p": p})
    rank = df.groupby("day")["p"].rank(method="first", ascending=False)
    picked = df.loc[rank <= per_day, "y"]
    return float(picked.mean()) if len(picked) else float("nan")


def value_at_thresholds(
    frame: pd.DataFrame, scores: np.ndarray, thresholds: Mapping[str, Mapping[str, int]], costs: CostModel
) -> dict[str, float]:
    """Discount value saved and lost at the chosen thresholds, and what false positives cost."""
    y = frame["label"].to_numpy(np.int64)
    d = frame["discount_value"].to_numpy(np.float64)
    types = frame["promo_type"].to_numpy()
    refuse = scores >= threshold_per_row(types, thresholds, "refuse")
    verify = (scores >= threshold_per_row(types, thresholds, "verify")) & ~refuse
    abuse = y == 1
    saved = d[abuse & refuse].sum() + costs.verify_stops * d[abuse & verify].sum()
    at_risk = d[abuse].sum()
    legit_cost = (
        costs.refuse_legit_multiplier * d[~abuse & refuse] + costs.churn_cost
    ).sum() + costs.verify_friction * (~abuse & verify).sum()
    return {
        "value_at_risk": float(at_risk),
        "value_saved": float(saved),
        "value_lost": float(at_risk - saved),
        "false_positive_cost": float(legit_cost),
        "net_saving": float(saved - legit_cost),
    }


def core_metrics(
    frame: pd.DataFrame,
    prob: np.ndarray,
    thresholds: Mapping[str, Mapping[str, int]],
    *,
    costs: CostModel | None = None,
    review_per_day: int = 200,
) -> dict[str, float]:
    """PR-AUC, ROC-AUC, recall at 0.5 % / 1 % FPR, precision at review capacity, ECE, Brier, value."""
    y = frame["label"].to_numpy(np.int64)
    p = np.asarray(prob, dtype=np.float64)
    scores = to_score(p)
    out = {
        "rows": float(len(y)),
        "positives": float(y.sum()),
        "pr_auc": _safe(average_precision_score, y, p),
        "roc_auc": _safe(roc_auc_score, y, p),
        "recall_at_fpr_0_5pct": recall_at_fpr(y, p, 0.005),
        "recall_at_fpr_1pct": recall_at_fpr(y, p, 0.01),
        "precision_at_capacity": precision_at_capacity(frame["ts"], y, p, review_per_day),
        "ece": expected_calibration_error(y, p),
        "brier": float(brier_score_loss(y, p)) if len(y) else float("nan"),
    }
    out.update(value_at_thresholds(frame, scores, thresholds, costs or CostModel()))
    return out


def pattern_table(
    frame: pd.DataFrame, scores: np.ndarray, thresholds: Mapping[str, Mapping[str, int]]
) -> pd.DataFrame:
    """Recall per abuse pattern at the verify and refuse thresholds (needs a ``pattern`` column)."""
    if "pattern" not in frame.columns:
        return pd.DataFrame(columns=["pattern", "rows", "recall_verify", "recall_refuse", "mean_score"])
    types = frame["promo_type"].to_numpy()
    flagged_v = scores >= threshold_per_row(types, thresholds, "verify")
    flagged_r = scores >= threshold_per_row(types, thresholds, "refuse")
    df = pd.DataFrame(
        {"pattern": frame["pattern"].to_numpy(), "v": flagged_v, "r": flagged_r, "s": scores}
    ).dropna(subset=["pattern"])
    g = df.groupby("pattern")
    return pd.DataFrame(
        {
            "rows": g.size(),
            "recall_verify": g["v"].mean(),
            "recall_refuse": g["r"].mean(),
            "mean_score": g["s"].mean(),
        }
    ).reset_index()


def trap_table(
    frame: pd.DataFrame, scores: np.ndarray, thresholds: Mapping[str, Mapping[str, int]]
) -> pd.DataFrame:
    """False-positive rate among LEGIT rows per trap (households, cgnat, vpn) and for non-trap legit rows."""
    types = frame["promo_type"].to_numpy()
    legit = frame["label"].to_numpy() == 0
    trap = frame["trap"].fillna("none").astype(str).to_numpy() if "trap" in frame.columns else None
    if trap is None:
        trap = np.full(len(frame), "none", dtype=object)
    df = pd.DataFrame(
        {
            "trap": trap,
            "v": scores >= threshold_per_row(types, thresholds, "verify"),
            "r": scores >= threshold_per_row(types, thresholds, "refuse"),
        }
    )[legit]
    g = df.groupby("trap")
    return pd.DataFrame(
        {"legit_rows": g.size(), "fpr_verify": g["v"].mean(), "fpr_refuse": g["r"].mean()}
    ).reset_index()


def trap_fpr(frame: pd.DataFrame, scores: np.ndarray, thresholds: Mapping[str, Mapping[str, int]]) -> float:
    """Verify-threshold false-positive rate over all legit trap rows (nan without trap rows)."""
    t = trap_table(frame, scores, thresholds)
    t = t[t["trap"] != "none"]
    if t.empty:
        return float("nan")
    return float((t["fpr_verify"] * t["legit_rows"]).sum() / t["legit_rows"].sum())


def compare_at_equal_fpr(
    y: np.ndarray, scores_by_model: Mapping[str, np.ndarray], fprs: Sequence[float] = (0.005, 0.01, 0.02)
) -> pd.DataFrame:
    """Side-by-side table: each model's recall and precision at the same false-positive rates."""
    y = np.asarray(y)
    rows: list[dict[str, Any]] = []
    for name, s in scores_by_model.items():
        s = np.asarray(s, dtype=np.float64)
        row: dict[str, Any] = {"model": name, "pr_auc": _safe(average_precision_score, y, s)}
        for f in fprs:
            cut = operating_threshold(y, s, f)
            flagged = s > cut
            tag = f"{f * 100:g}pct"
            row[f"recall_at_fpr_{tag}"] = float(flagged[y == 1].mean()) if y.sum() else float("nan")
            row[f"precision_at_fpr_{tag}"] = float(y[flagged].mean()) if flagged.any() else float("nan")
        rows.append(row)
    return pd.DataFrame(rows)


def seen_unseen_table(
    frame: pd.DataFrame, scores: np.ndarray, thresholds: Mapping[str, Mapping[str, int]], seen: set[str]
) -> pd.DataFrame:
    """Recall at the verify threshold for abusers seen in training vs new abusers."""
    if "actor_id" not in frame.columns:
        return pd.DataFrame(columns=["actors", "rows", "recall_verify"])
    abuse = frame["label"].to_numpy() == 1
    flagged = scores >= threshold_per_row(frame["promo_type"].to_numpy(), thresholds, "verify")
    group = np.where(frame["actor_id"].astype(str).isin(seen).to_numpy(), "seen_in_train", "unseen")
    df = pd.DataFrame({"actors": group, "f": flagged})[abuse]
    g = df.groupby("actors")
    return pd.DataFrame({"rows": g.size(), "recall_verify": g["f"].mean()}).reset_index()


def _evade(frame: pd.DataFrame, group: str) -> pd.DataFrame:
    f = frame.copy()

    def reset(prefixes: tuple[str, ...]) -> None:
        for col in f.columns:
            if col.startswith(prefixes):
                # Counts restart at zero; an identity never seen before has no age.
                f[col] = np.nan if col.endswith(("first_seen_days", "hours_since_first_use")) else 0.0

    if group == "fresh_device":
        reset(("device_stats__", "device_code_stats__"))
        f["device_missing"] = 0
    elif group == "email_alias_removed":
        reset(("email_stats__",))
        f["email_is_alias"] = 0
    elif group == "residential_proxy":
        reset(("network_stats__",))
        for flag in ("ip_is_datacenter", "ip_is_tor", "ip_is_proxy_or_vpn"):
            f[flag] = 0
    elif group == "slower_pace":
        for col in f.columns:
            if "__" in col and col.endswith(("_1h", "_24h")):
                f[col] = 0.0
    else:
        raise ValueError(f"unknown evasion group {group!r}")
    return f


EVASION_GROUPS: tuple[str, ...] = ("fresh_device", "email_alias_removed", "residential_proxy", "slower_pace")


def evasion_table(
    booster: lgb.Booster,
    calibrator: Mapping[str, Any],
    test_frame: pd.DataFrame,
    feature_names: Sequence[str],
    *,
    thresholds: Mapping[str, Mapping[str, int]] | None = None,
    action: str = "verify",
    num_threads: int = 2,
) -> pd.DataFrame:
    """Recall of test abusers at the ``action`` threshold after each attacker-controllable change.

    Each group changes one thing an abuser can cheaply change (a fresh device, no email alias, a
    residential proxy, a slower pace) and re-scores; ``recall_drop`` is what that evasion buys them.
    """
    th = thresholds or {"default": {"watch": 30, "verify": 60, "refuse": 85}}
    abusers = test_frame[test_frame["label"] == 1]
    cut = threshold_per_row(abusers["promo_type"].to_numpy(), th, action)

    def recall(f: pd.DataFrame) -> float:
        if f.empty:
            return float("nan")
        p = apply_calibrator(
            calibrator, predict_proba(booster, matrix(f, feature_names), num_threads=num_threads)
        )
        return float(np.mean(to_score(p) >= cut))

    base = recall(abusers)
    rows = [{"group": "none", "abusers": len(abusers), "recall": base, "recall_drop": 0.0}]
    for group in EVASION_GROUPS:
        r = recall(_evade(abusers, group))
        rows.append({"group": group, "abusers": len(abusers), "recall": r, "recall_drop": base - r})
    return pd.DataFrame(rows)
