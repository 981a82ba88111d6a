"""The loss ledger: replayed decisions joined with discounts and ground truth, per campaign.

Pure functions over frames. A row is an attempt; its truth is the simulator's ``truth.parquet`` when
the history has one, otherwise the labels as known when the report is made. Money follows the seed
guide's framing:

* ``discount_saved``: discount withheld from abuse, i.e. abusive attempts refused or sent to
  verification (a verification is assumed to stop an abuser; :data:`VERIFY_STOPS` says how often);
* ``discount_lost``: discount given to abuse, i.e. abusive attempts allowed or watched, plus the
  verified ones verification did not stop;
* ``honest_refused`` / ``honest_verified``: honest attempts refused a discount or sent to
  verification, the cost this product must keep near zero.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

#: Share of abusive attempts that verification stops (the rest slip through and count as lost).
VERIFY_STOPS = 0.9

#: Campaign of an attempt whose code the catalog does not know (mistyped, sprayed or expired).
UNKNOWN_CAMPAIGN = "(codes not in the catalog)"

#: Patterns that are not abuse in the simulator's truth (honest shoppers and look-alikes).
_DECISIONS = ("allow", "watch", "verify", "refuse")

#: Least truly-abusive attempts of a pattern before its recall is reported (else "n/a").
MIN_PATTERN_ROWS = 20


def attempts_frame(
    decisions: pd.DataFrame,
    events: pd.DataFrame,
    promotions: pd.DataFrame | None,
    truth: pd.DataFrame | None,
    labels: pd.DataFrame | None,
) -> pd.DataFrame:
    """One row per replayed attempt: decision, campaign, promo type, discount, ``abuse`` and ``pattern``.

    ``abuse`` comes from ``truth`` (``is_abuse``) when given, else from ``labels`` (abuse = 1, legit or
    unlabeled = 0); ``truth_source`` says which. ``pattern`` is the truth's pattern (None without it).
    """
    cols = ["request_id", "promo_code", "promo_type", "promo_valid", "discount_value"]
    out = decisions.merge(events[cols], on="request_id", how="left", validate="one_to_one")
    campaign = pd.Series(UNKNOWN_CAMPAIGN, index=out.index, dtype=object)
    if promotions is not None and not promotions.empty:
        by_code = promotions.drop_duplicates("promo_code", keep="last").set_index("promo_code")["campaign"]
        campaign = out["promo_code"].map(by_code).fillna(UNKNOWN_CAMPAIGN).astype(object)
    out["campaign"] = campaign
    # A refused or invalid code gives no discount away, so only valid codes carry money.
    out["discount"] = np.where(out["promo_valid"].eq(True), out["discount_value"].fillna(0.0), 0.0)
    if truth is not None:
        t = truth.drop_duplicates("request_id").set_index("request_id")
        out["abuse"] = out["request_id"].map(t["is_abuse"]).fillna(False).astype(bool)
        out["pattern"] = out["request_id"].map(t["pattern"]).where(out["abuse"], None)
        out["truth_source"] = "truth"
    else:
        abusive: set[str] = set()
        if labels is not None and not labels.empty:
            abusive = set(labels.loc[labels["label"].astype(str) == "abuse", "request_id"].astype(str))
        out["abuse"] = out["request_id"].astype(str).isin(abusive)
        out["pattern"] = None
        out["truth_source"] = "labels"
    return out


def _summary(group: pd.DataFrame, verify_stops: float) -> dict[str, Any]:
    d = group["decision"]
    abuse = group["abuse"].to_numpy(dtype=bool)
    disc = group["discount"].to_numpy(dtype=np.float64)
    refused = (d == "refuse").to_numpy()
    verified = (d == "verify").to_numpy()
    passed = ~(refused | verified)
    saved = disc[abuse & refused].sum() + verify_stops * disc[abuse & verified].sum()
    lost = disc[abuse & passed].sum() + (1 - verify_stops) * disc[abuse & verified].sum()
    honest = ~abuse
    caught = abuse & (refused | verified)
    return {
        "attempts": len(group),
        "allowed": int((d == "allow").sum()),
        "watched": int((d == "watch").sum()),
        "verified": int(verified.sum()),
        "refused": int(refused.sum()),
        "abusive": int(abuse.sum()),
        "honest": int(honest.sum()),
        "recall": float(caught.sum() / abuse.sum()) if abuse.any() else None,
        "honest_refused": int((honest & refused).sum()),
        "honest_verified": int((honest & verified).sum()),
        "honest_refused_rate": float((honest & refused).sum() / honest.sum()) if honest.any() else None,
        "discount_saved": round(float(saved), 2),
        "discount_lost": round(float(lost), 2),
    }


def pattern_recall(frame: pd.DataFrame, min_rows: int = MIN_PATTERN_ROWS) -> dict[str, float | None]:
    """Share of each pattern's truly abusive attempts verified or refused (None below ``min_rows``)."""
    abusive = frame[frame["abuse"] & frame["pattern"].notna()]
    out: dict[str, float | None] = {}
    for pattern, rows in abusive.groupby("pattern", sort=True):
        caught = rows["decision"].isin(("verify", "refuse")).mean()
        out[str(pattern)] = float(caught) if len(rows) >= min_rows else None
    return out


def campaign_ledger(frame: pd.DataFrame, verify_stops: float = VERIFY_STOPS) -> list[dict[str, Any]]:
    """One ledger row per campaign, largest first, with per-pattern recall where truth exists."""
    rows = []
    for (campaign, ptype), group in frame.groupby(["campaign", "promo_type"], sort=True, dropna=False):
        row = {"campaign": campaign, "promo_type": ptype, **_summary(group, verify_stops)}
        row["pattern_recall"] = pattern_recall(group) if (group["truth_source"] == "truth").any() else {}
        rows.append(row)
    rows.sort(key=lambda r: (-r["attempts"], str(r["campaign"])))
    return rows


def type_ledger(frame: pd.DataFrame, verify_stops: float = VERIFY_STOPS) -> list[dict[str, Any]]:
    """The same figures per promotion type."""
    return [
        {"promo_type": ptype, **_summary(group, verify_stops)}
        for ptype, group in frame.groupby("promo_type", sort=True, dropna=False)
    ]


def totals(frame: pd.DataFrame, verify_stops: float = VERIFY_STOPS) -> dict[str, Any]:
    """The figures over every attempt, with bots apart from the seed patterns when truth exists."""
    out = _summary(frame, verify_stops)
    out["pattern_recall"] = pattern_recall(frame)
    if frame["pattern"].notna().any():
        bots = frame["pattern"].eq("bot_spray")
        seed = frame["abuse"] & frame["pattern"].notna() & ~bots
        out["recall_seed_patterns"] = (
            float(frame.loc[seed, "decision"].isin(("verify", "refuse")).mean()) if seed.any() else None
        )
        out["recall_bots"] = (
            float(frame.loc[bots, "decision"].isin(("verify", "refuse")).mean()) if bots.any() else None
        )
    return out


def agreement(a: pd.DataFrame, b: pd.DataFrame, names: Sequence[str] = ("a", "b")) -> dict[str, Any]:
    """How two replays of the same attempts agree: share of equal decisions and the switch matrix."""
    joined = a[["request_id", "decision"]].merge(
        b[["request_id", "decision"]], on="request_id", suffixes=("_a", "_b"), validate="one_to_one"
    )
    matrix = (
        pd.crosstab(joined["decision_a"], joined["decision_b"])
        .reindex(index=list(_DECISIONS), columns=list(_DECISIONS), fill_value=0)
        .to_numpy(dtype=np.int64)
    )
    at = {d: i for i, d in enumerate(_DECISIONS)}
    return {
        "configurations": list(names),
        "attempts": len(joined),
        "same_decision": float((joined["decision_a"] == joined["decision_b"]).mean())
        if len(joined)
        else None,
        "switches": {
            f"{x}->{y}": int(matrix[at[x], at[y]]) for x in _DECISIONS for y in _DECISIONS if x != y
        },
    }
