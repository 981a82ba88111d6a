"""Shadow scoring and the exploration holdout: what a challenger would have decided, and how both fare.

A *challenger* is a registered model version and/or a rules table, compared with the live ones on live
traffic. :func:`shadow_record` scores one live request with it, on the inputs the live path read
(features, keys and flags, the reservation's outcome, referral kinds: the request's
:class:`scoring.scorer.RequestContext`) through the scorer's own code
(:meth:`scoring.scorer.Scorer.challenger_verdict`), and writes nothing but the row it returns: no
velocity counter, no reservation. :mod:`serving.shadow` runs it off the request path.

The report half is pure functions over the frames :func:`scoring.records.shadow_frame` and
:func:`scoring.records.exploration_frame` read: agreement and decision mix of live and challenger, and,
once labels arrive through ``/feedback``, recall and honest refusals per campaign (campaign = promo
code, as the scoring log has it) and the false-positive rate measured on the explored attempts. Only
labels are truth here (abuse / legit; an unlabelled attempt counts in neither); outcomes are counted
beside them, because a redeemed discount says the shopper paid, not that the shopper was honest.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from scoring.artifact import LoadedModel
from scoring.policy import DECISIONS, EXPLORABLE
from scoring.records import ShadowRecord
from scoring.rules import RulesTable
from scoring.schemas import ScoreResponse
from scoring.scorer import Policy, RequestContext, Scorer, Verdict, build_policy

#: Decisions that put friction on the shopper: a challenger catching abuse means one of these.
FRICTION: tuple[str, ...] = EXPLORABLE


@dataclass(frozen=True)
class Challenger:
    """A model and/or a rules table to compare with the live ones (None: the live one is kept)."""

    model: LoadedModel | None = None
    rules: RulesTable | None = None

    def describe(self) -> str:
        """``model 12 + rules 2026-12-01.1+ab12cd34ef56`` (the parts the challenger changes)."""
        parts = []
        if self.model is not None:
            parts.append(f"model {self.model.version}")
        if self.rules is not None:
            parts.append(f"rules {self.rules.label}")
        return " + ".join(parts) or "the live model and rules"


def challenger_policy(scorer: Scorer, challenger: Challenger) -> Policy:
    """Bands and thresholds the challenger decides with: its own model's, else the live ones."""
    if challenger.model is not None:
        return build_policy(challenger.model.bands, challenger.model.thresholds)
    return scorer.policy()


def live_policy_decision(verdict: Verdict, response: ScoreResponse) -> tuple[str, bool]:
    """The live policy's decision (before exploration) and whether exploration let the attempt through.

    ``response`` wins when it is not ``verdict``'s answer (a concurrent twin's logged answer).
    """
    if response.decision != verdict.decision:
        return response.decision, False
    return verdict.explored_from or verdict.decision, verdict.explored_from is not None


def shadow_record(
    scorer: Scorer,
    challenger: Challenger,
    policy: Policy,
    ctx: RequestContext,
    verdict: Verdict,
    response: ScoreResponse,
) -> ShadowRecord:
    """The challenger's answer to one live request, beside the live one, as a shadow-table row."""
    started = time.perf_counter()
    model = challenger.model if challenger.model is not None else scorer.model
    rules = challenger.rules if challenger.rules is not None else scorer.rules
    answer, on_model = scorer.challenger_verdict(ctx, model, rules, policy)
    live_decision, explored = live_policy_decision(verdict, response)
    req = ctx.req
    return ShadowRecord(
        request_id=req.request_id,
        ts=datetime.fromtimestamp(ctx.now, UTC),
        promo_code=req.promotion.code,
        promo_type=req.promotion.type,
        live_score=response.score,
        live_decision=live_decision,
        live_explored=explored,
        live_fallback=response.fallback,
        live_model_version=response.model_version,
        live_rules_version=scorer.rules.label,
        challenger_score=answer.score,
        challenger_decision=answer.decision,
        challenger_fallback=None if on_model else "rules",
        challenger_model_version=model.version if on_model and model is not None else None,
        challenger_rules_version=rules.label,
        challenger_deciding_rule=answer.deciding_rule,
        shadow_ms=round((time.perf_counter() - started) * 1000.0, 3),
    )


# --- the report --------------------------------------------------------------------------------------


def _share(part: int, whole: int) -> float | None:
    return None if whole == 0 else part / whole


def agreement(frame: Any) -> dict[str, Any]:
    """How often live and challenger agree: on the decision, on friction, and by how many points.

    ``frame`` is :func:`scoring.records.shadow_frame`'s. ``matrix`` counts live decision (rows) by
    challenger decision (columns); ``by_promo_type`` repeats the figures per promotion type.
    """
    n = len(frame)
    live, challenger = frame["live_decision"], frame["challenger_decision"]
    live_friction, challenger_friction = live.isin(FRICTION), challenger.isin(FRICTION)
    diff = frame["challenger_score"].astype(float) - frame["live_score"].astype(float)
    matrix = {
        row: {col: int(((live == row) & (challenger == col)).sum()) for col in DECISIONS} for row in DECISIONS
    }
    by_type = [
        {"promo_type": str(ptype), "attempts": len(group),
         "agreement": _share(int((group["live_decision"] == group["challenger_decision"]).sum()), len(group))}
        for ptype, group in frame.groupby("promo_type", sort=True)
    ]
    return {
        "attempts": n,
        "agreement": _share(int((live == challenger).sum()), n),
        "friction_agreement": _share(int((live_friction == challenger_friction).sum()), n),
        "challenger_stricter": int((challenger_friction & ~live_friction).sum()),
        "challenger_looser": int((live_friction & ~challenger_friction).sum()),
        "mean_score_change": float(diff.mean()) if n else None,
        "mean_abs_score_change": float(diff.abs().mean()) if n else None,
        "both_on_model_path": int((frame["live_fallback"].isna() & frame["challenger_fallback"].isna())
                                  .sum()),
        "matrix": matrix,
        "by_promo_type": by_type,
    }


def decision_mix(frame: Any) -> list[dict[str, Any]]:
    """One row per decision: how many attempts live and challenger gave it, and their shares."""
    n = len(frame)
    rows = []
    for decision in DECISIONS:
        live = int((frame["live_decision"] == decision).sum())
        challenger = int((frame["challenger_decision"] == decision).sum())
        rows.append({
            "decision": decision,
            "live": live,
            "live_share": _share(live, n),
            "challenger": challenger,
            "challenger_share": _share(challenger, n),
        })
    return rows


def _side(group: Any, column: str, prefix: str) -> dict[str, Any]:
    abuse = group["label"] == "abuse"
    legit = group["label"] == "legit"
    friction = group[column].isin(FRICTION)
    refused = group[column] == "refuse"
    verified = group[column] == "verify"
    n_abuse, n_legit = int(abuse.sum()), int(legit.sum())
    return {
        f"{prefix}_recall": _share(int((abuse & friction).sum()), n_abuse),
        f"{prefix}_honest_refused": int((legit & refused).sum()),
        f"{prefix}_honest_verified": int((legit & verified).sum()),
        f"{prefix}_honest_refused_rate": _share(int((legit & refused).sum()), n_legit),
    }


def campaign_figures(frame: Any) -> list[dict[str, Any]]:
    """Per campaign (largest first): labelled attempts, recall and honest refusals of live and challenger.

    Recall is the share of attempts labelled abuse that got verify or refuse; honest refusals are
    attempts labelled legit that were refused (and, beside them, sent to verification). None where the
    campaign has no label of that kind yet.
    """
    rows = []
    for campaign, group in frame.groupby("campaign", sort=True):
        rows.append({
            "campaign": str(campaign),
            "attempts": len(group),
            "labelled": int(group["label"].notna().sum()),
            "abuse": int((group["label"] == "abuse").sum()),
            "legit": int((group["label"] == "legit").sum()),
            "redeemed": int((group["outcome"] == "redeemed").sum()),
            **_side(group, "live_decision", "live"),
            **_side(group, "challenger_decision", "challenger"),
        })
    rows.sort(key=lambda r: (-r["attempts"], r["campaign"]))
    return rows


def exploration_figures(frame: Any) -> dict[str, Any]:
    """What the explored attempts measured: the false-positive rate of the friction they were spared.

    ``frame`` is :func:`scoring.records.exploration_frame`'s. The false-positive rate is the share of
    labelled explored attempts labelled legit: honest shoppers the policy would have verified or
    refused. Given overall, per would-be decision and per promotion type.
    """

    def figures(group: Any) -> dict[str, Any]:
        legit = int((group["label"] == "legit").sum())
        abuse = int((group["label"] == "abuse").sum())
        return {
            "explored": len(group),
            "labelled": legit + abuse,
            "legit": legit,
            "abuse": abuse,
            "false_positive_rate": _share(legit, legit + abuse),
            "redeemed": int((group["outcome"] == "redeemed").sum()),
            "reversed": int((group["outcome"] == "reversed").sum()),
        }

    out = figures(frame)
    out["by_would_be_decision"] = [
        {"would_be_decision": str(d), **figures(g)} for d, g in frame.groupby("would_be_decision", sort=True)
    ]
    out["by_promo_type"] = [
        {"promo_type": str(t), **figures(g)} for t, g in frame.groupby("promo_type", sort=True)
    ]
    return out


def _clean(value: Any) -> Any:
    if isinstance(value, float) and (math.isnan(value) or math.isinf(value)):
        return None
    if isinstance(value, Mapping):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    if hasattr(value, "item") and not isinstance(value, str):
        return _clean(value.item())
    return value


def _versions(frame: Any, column: str) -> list[str]:
    return sorted({str(v) for v in frame[column].dropna().unique()}) if len(frame) else []


def shadow_report(
    shadow: Any, explored: Any, since: datetime | None, made_at: datetime | None = None
) -> dict[str, Any]:
    """The report as plain data (JSON-ready): window, versions, agreement, mix, campaigns, exploration."""
    made = made_at or datetime.now(UTC)
    labelled = int(shadow["label"].notna().sum()) if len(shadow) else 0
    notes: list[str] = []
    if not len(shadow):
        notes.append("no shadowed attempts in the window: is PROMOGUARD_SHADOW_SHARE above 0, with a "
                     "challenger (PROMOGUARD_SHADOW_MODEL or PROMOGUARD_SHADOW_RULES)?")
    elif not labelled:
        notes.append("no labels yet for the shadowed attempts: recall and honest refusals wait for /feedback")
    explored_labelled = int(explored["label"].notna().sum()) if len(explored) else 0
    if not len(explored):
        notes.append("no explored attempts in the window (PROMOGUARD_EXPLORATION is 0 or nothing was drawn)")
    elif not explored_labelled:
        notes.append("no labels yet for the explored attempts: the false-positive rate waits for /feedback")
    report = {
        "made_at": made.isoformat(),
        "since": None if since is None else since.isoformat(),
        "live": {"decision": "the live policy's decision, before exploration",
                 "model_versions": _versions(shadow, "live_model_version"),
                 "rules_versions": _versions(shadow, "live_rules_version")},
        "challenger": {"model_versions": _versions(shadow, "challenger_model_version"),
                       "rules_versions": _versions(shadow, "challenger_rules_version"),
                       "rules_fallbacks": int(shadow["challenger_fallback"].notna().sum())},
        "labelled": labelled,
        "agreement": agreement(shadow),
        "decision_mix": decision_mix(shadow),
        "campaigns": campaign_figures(shadow),
        "exploration": exploration_figures(explored),
        "notes": notes,
    }
    cleaned: dict[str, Any] = _clean(report)
    return cleaned
