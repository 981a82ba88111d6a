"""Named signals whose points add up to the score, from TreeSHAP contributions and rule hits.

The model path explains a score with LightGBM's exact TreeSHAP (``pred_contrib=True``): one
contribution per feature on the raw-margin scale plus the expected value. Margins are not points, and
the calibrator is non-linear, so the translation is:

* ``baseline`` = the score the calibrated pipeline gives the expected margin (what a typical attempt
  scores before any signal);
* contributions are summed per reason concept (:mod:`scoring.reasons`: one identity view and feature
  family, e.g. every window of "device used by N accounts" is ``DEVICE_SHARED_ACCOUNTS``), and the
  rest of the score, ``score - baseline``, is split across concepts in proportion to their signed
  sums, rounded with the largest-remainder method so the integers add up exactly;
* the ``top_k`` largest concepts by absolute points are named and described by their most telling
  member, in human units; the remainder becomes one ``other factors`` signal.

So the signal points always sum to the score. A concept pushing risk down gets negative points.

Cost trade-off: exact TreeSHAP is linear in trees x leaves x depth; about 4 ms a row for 300 trees of
31 leaves, which would dominate a 5 ms budget. Training therefore caps the model (about 15 leaves,
at most 200 trees), bringing it near 1 ms. The alternatives were worse for a fraud team: sampling-based
SHAP is slower and noisy, and explaining only high scores would leave the allow decisions unexplained
in the audit log. The cost is measured by a benchmark script, never by a timed test.

Rule and identity hits join the same list: on the rules path their points are the score; on the model
path they carry 0 points (the model already priced the same facts) but still name the reason. A rule
hit and a model concept with the same reason code are one signal (the rule's words, the model's
points). The rule that decided the answer comes first; when it decided more strictly than the score,
the points that lift the score into its decision's band are its own, so the points still add up.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping, Sequence

import numpy as np

from scoring.reasons import BASELINE_CODE, OTHER_CODE, describe_group, grouping
from scoring.rules import RuleHit
from scoring.schemas import Signal

OTHER = "other factors"
BASELINE = "baseline"


def split_points(total: int, weights: Sequence[float]) -> list[int]:
    """Integers proportional to signed ``weights`` that add up to exactly ``total``.

    All zero weights give all zeros (and then ``total`` must be placed by the caller).
    """
    denom = float(sum(weights))
    if not weights or abs(denom) < 1e-12:
        return [0] * len(weights)
    exact = [total * w / denom for w in weights]
    floors = [math.floor(x) for x in exact]
    short = total - sum(floors)
    order = sorted(range(len(exact)), key=lambda i: (floors[i] - exact[i], i))
    for i in order[:short]:
        floors[i] += 1
    return floors


def model_signals(
    contributions: np.ndarray,
    feature_names: Sequence[str],
    values: np.ndarray,
    score: int,
    baseline_points: int,
    specs: Mapping[str, Mapping[str, str]] | None = None,
    top_k: int = 6,
    absent: Collection[str] = (),
) -> list[Signal]:
    """Named model signals (plus ``baseline`` and ``other factors``) whose points sum to ``score``.

    ``contributions`` is one TreeSHAP row (features then expected value), ``values`` the feature row
    that produced it, ``absent`` the identities the request did not carry (see
    :func:`scoring.reasons.absent_identities`). Signals are reason concepts, grouped and described from
    the feature names alone; ``specs`` (the manifest's per-feature templates) is no longer read and is
    kept for callers that pass it. Features no catalog knows count toward ``other factors``.
    """
    del specs
    plan = grouping(tuple(feature_names), frozenset(absent))
    contrib = np.asarray(contributions, dtype=np.float64)[: len(feature_names)]
    sums = np.bincount(np.asarray(plan.group_of, dtype=np.int64), weights=contrib,
                       minlength=len(plan.codes) + 1)
    points = split_points(score - baseline_points, [float(c) for c in sums])
    out = [Signal(name=BASELINE, code=BASELINE_CODE, points=baseline_points, source="model",
                  description="typical risk of an attempt before any signal")]
    assigned = sum(points)
    ranked = sorted((g for g in range(len(plan.codes)) if points[g] != 0), key=lambda g: (-abs(points[g]), g))
    named = ranked[:top_k]
    for g in named:
        code = plan.codes[g]
        out.append(Signal(name=code.lower(), code=code,  # type: ignore[arg-type]
                          description=describe_group(plan, g, values, contrib, absent),
                          points=points[g], source="model"))
    rest = score - baseline_points - sum(points[g] for g in named)
    if rest != 0 or assigned != score - baseline_points:
        out.append(Signal(name=OTHER, code=OTHER_CODE, points=rest, source="model",
                          description="smaller contributions of the remaining features"))
    return out


def rule_signals(hits: Sequence[RuleHit], priced: bool) -> list[Signal]:
    """Signals for rule hits: with their points on the rules path, 0 points next to a model score."""
    return [
        Signal(name=h.rule_id, code=h.code, description=h.description,  # type: ignore[arg-type]
               points=h.points if priced else 0, source=h.source)
        for h in hits
    ]


def compose_signals(
    model: Sequence[Signal], rules: Sequence[Signal], deciding: str | None = None, lift: int = 0
) -> list[Signal]:
    """One list: rule signals absorb the model concept of their code; the deciding rule first.

    ``deciding`` is the rule id whose hard action is the answer's decision (None when the score alone
    decided); ``lift`` the points it added to lift the score into its decision's band. The rest follow
    strongest first (ties by name so the order is deterministic). Points add up to the model score (or
    the rules score) plus ``lift``.
    """
    by_code: dict[str, int] = {}
    merged: list[Signal] = []
    for s in model:
        if s.code not in (BASELINE_CODE, OTHER_CODE):
            by_code[s.code] = len(merged)
        merged.append(s)
    absorbed: set[int] = set()
    for r in rules:
        points = r.points + (lift if r.name == deciding else 0)
        j = by_code.pop(r.code, None)
        if j is not None:
            points += merged[j].points
            absorbed.add(j)
        merged.append(r.model_copy(update={"points": points}))
    out = [s for i, s in enumerate(merged) if i not in absorbed]
    first = [s for s in out if deciding is not None and s.name == deciding and s.source != "model"][:1]
    rest = sorted((s for s in out if not first or s is not first[0]), key=lambda s: (-s.points, s.name))
    return first + rest


def merge_signals(*groups: Sequence[Signal]) -> list[Signal]:
    """One list, strongest first (ties by name so the order is deterministic)."""
    merged = [s for group in groups for s in group]
    return sorted(merged, key=lambda s: (-s.points, s.name))


#: Signals that name no cause: the typical risk and the remainder. They never rank as a top signal.
PSEUDO_SIGNALS = frozenset({BASELINE, OTHER})


def top_signal_names(names: Sequence[str], weights: Sequence[float], top: int = 3) -> list[str]:
    """The ``top`` names with the largest positive weight (points or contributions), pseudo-signals excluded.

    The one definition behind the ``top_signals`` column of the scoring log and of batch scoring.
    """
    ranked = sorted(
        (i for i, w in enumerate(weights) if float(w) > 0 and names[i] not in PSEUDO_SIGNALS),
        key=lambda i: (-float(weights[i]), i),
    )
    return [str(names[i]) for i in ranked[:top]]


def top_concept_names(
    feature_names: Sequence[str], contributions: np.ndarray, top: int = 3
) -> list[list[str]]:
    """Per row of TreeSHAP ``contributions``, the ``top`` reason concepts with the largest positive sum.

    The batch form of what the request path logs as ``top_signals`` (concept names such as
    ``device_shared_accounts``, the same grouping as :func:`model_signals`), so a reference frame scored
    offline and the scoring log name their signals alike. Features no catalog knows are left out.
    """
    plan = grouping(tuple(feature_names))
    contrib = np.asarray(contributions, dtype=np.float64)[:, : len(feature_names)]
    onehot = np.zeros((len(feature_names), len(plan.codes) + 1), dtype=np.float64)
    onehot[np.arange(len(feature_names)), np.asarray(plan.group_of, dtype=np.int64)] = 1.0
    sums = (contrib @ onehot)[:, : len(plan.codes)]
    names = [code.lower() for code in plan.codes]
    return [top_signal_names(names, row, top) for row in sums]
