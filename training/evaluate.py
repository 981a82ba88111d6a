"""Evaluation of scores against labels and against truth: ranking, calibration, money, slices, baselines.

Pure functions over arrays and frames (no files, no MLflow). Two sources of "abuse" are kept apart:

* ``label``: what the store knows (reviews, feedback, attempts presumed legit after a while). Most
  abuse is never labeled, so label metrics count missed abusers as honest shoppers flagged.
* ``is_abuse_true``: the simulator's ground truth, present only for simulated histories. The truth
  functions here return empty tables when it is absent.

The six seed patterns (:data:`SEED_PATTERNS`) are the headline; code-spraying bots
(:data:`BOT_PATTERNS`) are reported apart, because they are most of the labeled abuse and easy.
Recall per slice is shown only from :data:`MIN_TRUTH_ROWS` truly abusive rows up (NaN below).
Operating points are compared at EQUAL flag rate among legit rows, because a model that flags more
of everything always "catches more"; against the seed rules, at the seed rules' own honest flag rate.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import lightgbm as lgb
import numpy as np
import pandas as pd
from sklearn.metrics import average_precision_score, brier_score_loss, roc_auc_score

from features.events import BOT_PATTERNS, SEED_PATTERNS
from features.graph import GRAPH_COLUMNS
from scoring.calibration import apply_calibrator, to_score
from scoring.policy import threshold_per_row
from training.calibrate import CostModel
from training.train import matrix, predict_proba

Scorer = Callable[[pd.DataFrame], np.ndarray]

#: Truly abusive (or honest) rows a slice needs before its rate is shown; below it the rate is NaN.
MIN_TRUTH_ROWS = 20
#: Column of simulator ground truth (``True`` = the attempt is abuse).
TRUTH = "is_abuse_true"
#: Hard identities whose use of a code makes a one-per-customer redemption a repeat (seed rule R1).
SEED_RULE_IDENTITIES: tuple[str, ...] = ("device", "household", "payment", "phone")


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


def has_truth(frame: pd.DataFrame) -> bool:
    """True when the frame carries simulator ground truth for at least one row."""
    return TRUTH in frame.columns and bool(frame[TRUTH].notna().any())


def target_values(frame: pd.DataFrame, target: str = "label") -> tuple[np.ndarray, np.ndarray]:
    """``(known, y)``: which rows have the target (``label`` or ``is_abuse_true``) and its 0/1 value."""
    col = frame[target]
    known = col.notna().to_numpy()
    y = np.zeros(len(frame), dtype=np.int64)
    y[known] = col[known].astype(bool).to_numpy().astype(np.int64)
    return known, y


def value_at_thresholds(
    frame: pd.DataFrame,
    scores: np.ndarray,
    thresholds: Mapping[str, Mapping[str, int]],
    costs: CostModel,
    *,
    target: str = "label",
) -> dict[str, float]:
    """Discount value saved and lost at the chosen thresholds, and what false positives cost.

    ``target`` says who is an abuser: ``label`` (the store's labels) or ``is_abuse_true`` (truth).
    """
    known, y = target_values(frame, target)
    frame, scores, y = frame[known], np.asarray(scores)[known], y[known]
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
    target: str = "label",
) -> dict[str, float]:
    """PR-AUC, ROC-AUC, recall at 0.5 % / 1 % FPR, precision at review capacity, ECE, Brier, value.

    Against ``target``: ``label`` (default) or ``is_abuse_true``; rows without it are left out.
    """
    known, y = target_values(frame, target)
    frame, y = frame[known], y[known]
    p = np.asarray(prob, dtype=np.float64)[known]
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
    out.update(value_at_thresholds(frame, scores, thresholds, costs or CostModel(), target=target))
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


def flags_at_thresholds(
    frame: pd.DataFrame, scores: np.ndarray, thresholds: Mapping[str, Mapping[str, int]]
) -> tuple[np.ndarray, np.ndarray]:
    """``(verify, refuse)`` per row: the score reaches the row's promotion-type verify (refuse) threshold.

    "Flagged at verify" includes the refused rows: it is everything the shopper is stopped for.
    """
    types = frame["promo_type"].to_numpy()
    s = np.asarray(scores)
    return (
        s >= threshold_per_row(types, thresholds, "verify"),
        s >= threshold_per_row(types, thresholds, "refuse"),
    )


def _rate(flags: np.ndarray, min_rows: int) -> float:
    return float(flags.mean()) if len(flags) >= max(min_rows, 1) else float("nan")


def _truth_groups(frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(known, abusive, pattern)``: rows with truth, truly abusive rows, and the pattern as strings."""
    known, y = target_values(frame, TRUTH)
    pattern = (
        frame["pattern"].astype(object).where(frame["pattern"].notna(), "unknown").astype(str).to_numpy()
        if "pattern" in frame.columns
        else np.full(len(frame), "unknown", dtype=object)
    )
    return known, known & (y == 1), pattern


def pattern_group(pattern: str) -> str:
    """``seed`` for the six seed patterns, ``bot`` for code-spraying bots, ``other`` for anything else."""
    return "seed" if pattern in SEED_PATTERNS else "bot" if pattern in BOT_PATTERNS else "other"


TRUTH_PATTERN_COLUMNS = (
    "pattern",
    "group",
    "abusive_rows",
    "labeled_abuse",
    "recall_verify",
    "recall_refuse",
    "mean_score",
)


def truth_pattern_table(
    frame: pd.DataFrame,
    scores: np.ndarray,
    thresholds: Mapping[str, Mapping[str, int]],
    *,
    min_rows: int = MIN_TRUTH_ROWS,
) -> pd.DataFrame:
    """Recall per truth pattern at the operating thresholds, over truly abusive rows only.

    One row per seed pattern (always, in catalogue order), then ``seed_patterns`` (the six pooled: the
    headline), then bots and any other abusive pattern present. ``labeled_abuse`` is the share of
    those rows the store labeled abuse: what label metrics can see of the pattern. Recall and mean
    score are NaN below ``min_rows`` truly abusive rows. Empty without truth.
    """
    if not has_truth(frame):
        return pd.DataFrame(columns=list(TRUTH_PATTERN_COLUMNS))
    _, abusive, pattern = _truth_groups(frame)
    verify, refuse = flags_at_thresholds(frame, scores, thresholds)
    labeled = frame["label"].to_numpy() == 1 if "label" in frame.columns else np.zeros(len(frame), bool)
    s = np.asarray(scores, dtype=np.float64)
    present = sorted(set(pattern[abusive]) - set(SEED_PATTERNS))
    extra = [p for p in present if p in BOT_PATTERNS] + [p for p in present if p not in BOT_PATTERNS]
    slices: list[tuple[str, str, np.ndarray]] = [(p, "seed", abusive & (pattern == p)) for p in SEED_PATTERNS]
    slices.append(("seed_patterns", "headline", abusive & np.isin(pattern, SEED_PATTERNS)))
    slices += [(p, pattern_group(p), abusive & (pattern == p)) for p in extra]
    rows = []
    for name, group, m in slices:
        n = int(m.sum())
        rows.append(
            {
                "pattern": name,
                "group": group,
                "abusive_rows": n,
                "labeled_abuse": float(labeled[m].mean()) if n else float("nan"),
                "recall_verify": _rate(verify[m], min_rows),
                "recall_refuse": _rate(refuse[m], min_rows),
                "mean_score": float(s[m].mean()) if n >= max(min_rows, 1) else float("nan"),
            }
        )
    return pd.DataFrame(rows, columns=list(TRUTH_PATTERN_COLUMNS))


def truth_honest_table(
    frame: pd.DataFrame,
    scores: np.ndarray,
    thresholds: Mapping[str, Mapping[str, int]],
    *,
    min_rows: int = MIN_TRUTH_ROWS,
) -> pd.DataFrame:
    """Share of truly honest rows flagged at verify and at refuse: ``all``, per trap, then per pattern.

    Slices are ``all``, ``trap:<trap>`` for the honest look-alikes (households, carrier-grade NAT, VPN
    users, movers, typos; ``trap:none`` for the rest) and ``pattern:<pattern>`` (which honest behaviour
    is flagged, e.g. ``pattern:legit_wholesale``). An abuser's honest attempt counts as honest here.
    NaN below ``min_rows`` honest rows; empty without truth.
    """
    cols = ["slice", "honest_rows", "flag_rate_verify", "flag_rate_refuse"]
    if not has_truth(frame):
        return pd.DataFrame(columns=cols)
    known, abusive, pattern = _truth_groups(frame)
    honest = known & ~abusive
    verify, refuse = flags_at_thresholds(frame, scores, thresholds)
    trap = (
        frame["trap"].astype(object).where(frame["trap"].notna(), "none").astype(str).to_numpy()
        if "trap" in frame.columns
        else np.full(len(frame), "none", dtype=object)
    )
    slices = [("all", honest)] + [(f"trap:{t}", honest & (trap == t)) for t in sorted(set(trap[honest]))]
    if "pattern" in frame.columns:
        named = sorted(set(pattern[honest]) - {"unknown"})
        slices += [(f"pattern:{p}", honest & (pattern == p)) for p in named]
    rows = [
        {
            "slice": name,
            "honest_rows": int(m.sum()),
            "flag_rate_verify": _rate(verify[m], min_rows),
            "flag_rate_refuse": _rate(refuse[m], min_rows),
        }
        for name, m in slices
    ]
    return pd.DataFrame(rows, columns=cols)


def evasion_tier_table(
    frame: pd.DataFrame,
    scores: np.ndarray,
    thresholds: Mapping[str, Mapping[str, int]],
    *,
    min_rows: int = MIN_TRUTH_ROWS,
) -> pd.DataFrame:
    """Recall of truly abusive seed-pattern rows per truth evasion tier (needs ``evasion``).

    Tiers are the simulator's: naive, careful, sophisticated, rotating. Bots are left out, as in the
    headline. NaN below ``min_rows`` rows; empty without truth or tiers.
    """
    cols = ["tier", "abusive_rows", "recall_verify", "recall_refuse"]
    if not has_truth(frame) or "evasion" not in frame.columns:
        return pd.DataFrame(columns=cols)
    _, abusive, pattern = _truth_groups(frame)
    seed = abusive & np.isin(pattern, SEED_PATTERNS)
    tier = frame["evasion"].astype(object).where(frame["evasion"].notna(), "unknown").astype(str).to_numpy()
    verify, refuse = flags_at_thresholds(frame, scores, thresholds)
    order = {"none": 0, "naive": 1, "careful": 2, "sophisticated": 3, "rotating": 4}
    tiers = sorted(set(tier[seed]), key=lambda t: (order.get(t, 99), t))
    rows = []
    for t in tiers:
        m = seed & (tier == t)
        rows.append(
            {
                "tier": t,
                "abusive_rows": int(m.sum()),
                "recall_verify": _rate(verify[m], min_rows),
                "recall_refuse": _rate(refuse[m], min_rows),
            }
        )
    return pd.DataFrame(rows, columns=cols)


def _column(frame: pd.DataFrame, name: str) -> np.ndarray:
    """A numeric column with missing values (and a missing column) as 0."""
    if name not in frame.columns:
        return np.zeros(len(frame), dtype=np.float64)
    return np.nan_to_num(pd.to_numeric(frame[name], errors="coerce").to_numpy(np.float64), nan=0.0)


def seed_rules(frame: pd.DataFrame) -> np.ndarray:
    """The seed catalogue's one-line rules over training-frame columns: 1 where any rule fires, else 0.

    A missing column counts as 0, so a frame without the promotion-context columns flags nothing.

    * R1 (code leak, intro reset, sample stacking, welcome cycling): "Tie codes to identity, not just
      to discount-redemption count. Even if 10,000 strangers use the code once, none of your prior
      customers can redeem it again." A one-per-customer code (``one_per_customer == 1``) already
      redeemed by this device, household, payment instrument or phone
      (``max({e}_code_stats__redeemed_total) > 0``).
    * R2 (wholesale and VIP codes in guest checkout): "Server-side validation of customer-tag
      eligibility at checkout, independent of login state." A wholesale code used as a guest
      (``promo_is_wholesale == 1 and is_guest == 1``).
    * R3 (referral self-redemption): "Match the sharer's identity against the redeemer's identity
      across all five signals. If they overlap on phone, address, IP, or device, withhold the
      credit." A referral whose sharer shares a hard identity with the redeemer, or is the redeemer's
      own account (``promo_is_referral == 1 and (referrer_shared_hard_kinds >= 1 or
      referrer_is_account == 1)``).
    """
    redeemed = np.max(
        np.column_stack([_column(frame, f"{e}_code_stats__redeemed_total") for e in SEED_RULE_IDENTITIES]),
        axis=1,
    )
    r1 = (_column(frame, "one_per_customer") == 1) & (redeemed > 0)
    r2 = (_column(frame, "promo_is_wholesale") == 1) & (_column(frame, "is_guest") == 1)
    r3 = (_column(frame, "promo_is_referral") == 1) & (
        (_column(frame, "referrer_shared_hard_kinds") >= 1) | (_column(frame, "referrer_is_account") == 1)
    )
    return (r1 | r2 | r3).astype(np.int64)


def cut_for_legit_count(scores: np.ndarray, legit: np.ndarray, k: int) -> float:
    """Cut such that flagging ``scores > cut`` flags at most ``k`` legit rows (exactly ``k`` without ties)."""
    s = np.sort(np.asarray(scores, dtype=np.float64)[legit])[::-1]
    if k <= 0:
        return float(s[0]) if s.size else float("inf")
    if k >= s.size:
        return float("-inf")
    return float(s[k])


def compare_at_equal_legit_rate(
    frame: pd.DataFrame,
    flags: np.ndarray,
    scores_by_model: Mapping[str, np.ndarray],
    *,
    reference: str = "seed_rules",
    min_rows: int = MIN_TRUTH_ROWS,
) -> pd.DataFrame:
    """Recall per pattern of a 0/1 rule set and of scored models cut to flag the same legit rows' share.

    Legit means truly honest when the frame has truth, else labeled legit (and then the only slice is
    ``abuse``). The rule set's share of flagged legit rows sets the rate; each model's cut flags as
    many legit rows as the rules do (ties at the cut are not flagged, so a coarse score may flag
    fewer: its achieved rate is the ``legit_flag_rate`` row). Rows: ``legit_flag_rate``, then
    ``seed_patterns`` and each pattern as in :func:`truth_pattern_table` (or ``abuse``); one column
    per scorer, ``reference`` first; recall NaN below ``min_rows`` abusive rows.
    """
    truth = has_truth(frame)
    known, y = target_values(frame, TRUTH if truth else "label")
    legit, abusive = known & (y == 0), known & (y == 1)
    f = np.asarray(flags).astype(bool)
    flagged: dict[str, np.ndarray] = {reference: f}
    k = int(f[legit].sum())
    for name, s in scores_by_model.items():
        s = np.asarray(s, dtype=np.float64)
        flagged[name] = s > cut_for_legit_count(s, legit, k)
    if truth:
        _, _, pattern = _truth_groups(frame)
        present = sorted(set(pattern[abusive]) - set(SEED_PATTERNS))
        extra = [p for p in present if p in BOT_PATTERNS] + [p for p in present if p not in BOT_PATTERNS]
        slices = [("seed_patterns", abusive & np.isin(pattern, SEED_PATTERNS))]
        slices += [(p, abusive & (pattern == p)) for p in (*SEED_PATTERNS, *extra)]
    else:
        slices = [("abuse", abusive)]
    rows: list[dict[str, Any]] = [
        {"slice": "legit_flag_rate", "rows": int(legit.sum())}
        | {n: _rate(v[legit], 1) for n, v in flagged.items()}
    ]
    for name, m in slices:
        rows.append(
            {"slice": name, "rows": int(m.sum())} | {n: _rate(v[m], min_rows) for n, v in flagged.items()}
        )
    return pd.DataFrame(rows, columns=["slice", "rows", *flagged])


def _reset(f: pd.DataFrame, columns: Sequence[str]) -> None:
    for col in columns:
        # Counts restart at zero; an identity never seen before has no age.
        f[col] = np.nan if col.endswith(("first_seen_days", "hours_since_first_use")) else 0.0


#: Views of an identity an abuser replaces when rotating it (the home network and LAN stay).
ROTATED_VIEWS: tuple[str, ...] = (
    "device_stats",
    "household_stats",
    "payment_stats",
    "phone_stats",
    "email_stats",
    "account_stats",
)


def _rotated(col: str) -> bool:
    view = col.partition("__")[0] if "__" in col else ""
    # Identity x code pairs (``device_code_stats``) and identity x type views (``*_type_stats``) go too;
    # the code's own popularity (``code_stats``) is not the shopper's.
    return view in ROTATED_VIEWS or view.endswith(("_code_stats", "_type_stats"))


def _evade_one(f: pd.DataFrame, part: str) -> None:
    if part == "fresh_device":
        _reset(f, [c for c in f.columns if c.startswith(("device_stats__", "device_code_stats__"))])
        f["device_missing"] = 0
    elif part == "email_alias_removed":
        _reset(f, [c for c in f.columns if c.startswith("email_stats__")])
        f["email_is_alias"] = 0
    elif part == "residential_proxy":
        _reset(f, [c for c in f.columns if c.startswith("network_stats__")])
        for flag in ("ip_is_datacenter", "ip_is_tor", "ip_is_proxy_or_vpn"):
            f[flag] = 0
    elif part == "slower_pace":
        for col in f.columns:
            if "__" in col and col.endswith(("_1h", "_24h")):
                f[col] = 0.0
    elif part == "rotate_hard_identity":
        # Every identity the shopper can replace is new: device, household (new address), card, phone,
        # email and account, their use of this code and of this promotion type, and the referrer link.
        _reset(f, [c for c in f.columns if _rotated(c)])
        for col in ("referrer_shared_hard_kinds", "referrer_is_account", "device_missing", "email_is_alias",
                    "referrer_same_person", "referrer_same_household", "person_linked_evidence",
                    "person_code_attempts", "person_type_attempts"):
            if col in f.columns:
                f[col] = 0
        # A stranger to the identity graph: one person with its one new account, alone at a new address.
        for col in ("person_accounts", "person_emails", "household_accounts"):
            if col in f.columns:
                f[col] = 1
    else:
        raise ValueError(f"unknown evasion group {part!r}")


def evade(frame: pd.DataFrame, group: str) -> pd.DataFrame:
    """A copy of the frame as it would look after the changes of ``group`` (``a+b`` combines groups).

    ``fresh_device``, ``email_alias_removed``, ``residential_proxy`` and ``slower_pace`` change one
    thing; ``rotate_hard_identity`` replaces every identity the shopper can replace (device,
    household, card, phone, email and account, with their code-pair and promotion-type views and
    the referrer link) and keeps only the public network and the home LAN: the residue.
    """
    f = frame.copy()
    for part in group.split("+"):
        _evade_one(f, part)
    return f


EVASION_GROUPS: tuple[str, ...] = (
    "fresh_device",
    "email_alias_removed",
    "residential_proxy",
    "slower_pace",
    "rotate_hard_identity",
    "fresh_device+residential_proxy+slower_pace",
    "rotate_hard_identity+slower_pace",
    "rotate_hard_identity+residential_proxy+slower_pace",
)


def evasion_table(
    booster: lgb.Booster,
    calibrator: Mapping[str, Any],
    test_frame: pd.DataFrame,
    feature_names: Sequence[str],
    *,
    thresholds: Mapping[str, Mapping[str, int]] | None = None,
    action: str = "verify",
    num_threads: int = 2,
    abusive: np.ndarray | None = None,
) -> pd.DataFrame:
    """Recall of test abusers at the ``action`` threshold after each attacker-controllable change.

    Each group changes what an abuser can change (a fresh device, no email alias, a residential proxy,
    a slower pace, every hard identity rotated, and combinations joined by ``+``) and re-scores;
    ``recall_drop`` is what that evasion buys them. ``abusive`` picks the abusers (default: rows
    labeled abuse; the run passes the truly abusive seed-pattern rows when truth exists).
    """
    th = thresholds or {"default": {"watch": 30, "verify": 60, "refuse": 85}}
    mask = test_frame["label"].to_numpy() == 1 if abusive is None else np.asarray(abusive, dtype=bool)
    abusers = test_frame[mask]
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
        r = recall(evade(abusers, group))
        rows.append({"group": group, "abusers": len(abusers), "recall": r, "recall_drop": base - r})
    return pd.DataFrame(rows)


#: Request-time context columns describing the promotion and the shopper's eligibility.
_PROMOTION_CONTEXT = ("is_guest", "one_per_customer", "segment_ineligible")


def feature_group(name: str) -> str:
    """The group a model feature belongs to, for importance by group.

    Identity views by view name (``device_stats``, ``code_stats``, ``device_type_stats``...), all
    identity x code views as ``code_pairs``, the request-time identity flags as ``request_flags``,
    the promotion columns (``promo_is_*``, ``is_guest``, ``one_per_customer``, ``segment_ineligible``)
    as ``promotion_context``, the referral link columns as ``referrer`` and the identity graph's
    person and household columns as ``identity_graph``.
    """
    from training.dataset import FLAG_COLUMNS

    if name in FLAG_COLUMNS:
        return "request_flags"
    if name.startswith("promo_is_") or name in _PROMOTION_CONTEXT:
        return "promotion_context"
    if name.startswith("referrer_"):
        return "referrer"
    if name in GRAPH_COLUMNS:
        return "identity_graph"
    view = name.partition("__")[0]
    return "code_pairs" if view.endswith("_code_stats") else view


#: What a feature group measures: who the shopper is (identity), how the code is being used by
#: everyone (code popularity), or what the promotion and request are (context).
_CONTEXT_GROUPS = frozenset({"promotion_context", "request_flags"})


def group_source(group: str) -> str:
    """``identity``, ``code popularity`` or ``context`` for a :func:`feature_group` name."""
    if group == "code_stats":
        return "code popularity"
    if group in _CONTEXT_GROUPS:
        return "context"
    return "identity"


def source_importance(groups: pd.DataFrame) -> pd.DataFrame:
    """The :func:`group_importance` table rolled up by :func:`group_source`, with each source's share."""
    src = groups.assign(source=groups["group"].map(group_source))
    out = src.groupby("source", sort=False).agg(
        features=("features", "sum"), mean_abs_contribution=("mean_abs_contribution", "sum")
    ).reset_index()
    total = float(out["mean_abs_contribution"].sum())
    out["share"] = out["mean_abs_contribution"] / total if total > 0 else np.nan
    return out.sort_values("mean_abs_contribution", ascending=False, kind="stable").reset_index(drop=True)


def group_importance(contrib: np.ndarray, feature_names: Sequence[str]) -> pd.DataFrame:
    """Mean |SHAP| per feature summed within each :func:`feature_group`, largest first, with its share."""
    names = list(feature_names)
    per_feature = np.abs(np.asarray(contrib)[:, : len(names)]).mean(axis=0)
    df = pd.DataFrame({"group": [feature_group(n) for n in names], "imp": per_feature})
    g = df.groupby("group", sort=False)["imp"]
    out = pd.DataFrame({"features": g.size(), "mean_abs_contribution": g.sum()}).reset_index()
    total = float(out["mean_abs_contribution"].sum())
    out["share"] = out["mean_abs_contribution"] / total if total > 0 else np.nan
    return out.sort_values("mean_abs_contribution", ascending=False, kind="stable").reset_index(drop=True)
