"""Named signals whose points add up to the score, from TreeSHAP contributions and rule hits.

The model path explains a score with LightGBM's exact TreeSHAP (``pred_contrib=True``): one
contribution per feature on the raw-margin scale plus the expected value. Margins are not points, and
the calibrator is non-linear, so the translation is:

* ``baseline`` = the score the calibrated pipeline gives the expected margin (what a typical attempt
  scores before any signal);
* the rest of the score, ``score - baseline``, is split across features in proportion to their signed
  contributions, rounded with the largest-remainder method so the integers add up exactly;
* the ``top_k`` largest by absolute points are named; the remainder becomes one ``other factors`` signal.

So the signal points always sum to the score. A feature pushing risk down gets negative points.

Cost trade-off: exact TreeSHAP is linear in trees x leaves x depth; about 4 ms a row for 300 trees of
31 leaves, which would dominate a 5 ms budget. Training therefore caps the model (about 15 leaves,
at most 200 trees), bringing it near 1 ms. The alternatives were worse for a fraud team: sampling-based
SHAP is slower and noisy, and explaining only high scores would leave the allow decisions unexplained
in the audit log. The cost is measured by a benchmark script, never by a timed test.

Rule and identity hits join the same list: on the rules path their points are the score; on the model
path they carry 0 points (the model already priced the same facts) but still name the reason.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

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


def _format_value(value: float) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "unknown"
    if float(value).is_integer():
        return str(int(value))
    return f"{value:.2f}"


def model_signals(
    contributions: np.ndarray,
    feature_names: Sequence[str],
    values: np.ndarray,
    score: int,
    baseline_points: int,
    specs: Mapping[str, Mapping[str, str]],
    top_k: int = 6,
) -> list[Signal]:
    """Named model signals (plus ``baseline`` and ``other factors``) whose points sum to ``score``.

    ``contributions`` is one TreeSHAP row (features then expected value), ``values`` the feature row
    that produced it, ``specs`` the manifest's per-feature ``name``/``description`` templates.
    """
    contrib = np.asarray(contributions, dtype=np.float64)[: len(feature_names)]
    points = split_points(score - baseline_points, [float(c) for c in contrib])
    out = [Signal(name=BASELINE, description="typical risk of an attempt before any signal",
                  points=baseline_points, source="model")]
    assigned = sum(points)
    ranked = sorted((i for i, p in enumerate(points) if p != 0), key=lambda i: (-abs(points[i]), i))
    named = ranked[:top_k]
    for i in named:
        feature = feature_names[i]
        spec = specs.get(feature, {})
        template = spec.get("description") or f"{feature} = {{value}}"
        try:
            description = template.format(value=_format_value(float(values[i])))
        except (KeyError, IndexError, ValueError):
            description = f"{feature} = {_format_value(float(values[i]))}"
        out.append(Signal(name=spec.get("name") or feature, description=description, points=points[i],
                          source="model"))
    rest = score - baseline_points - sum(points[i] for i in named)
    if rest != 0 or assigned != score - baseline_points:
        out.append(Signal(name=OTHER, description="smaller contributions of the remaining features",
                          points=rest, source="model"))
    return out


def rule_signals(hits: Sequence[RuleHit], priced: bool) -> list[Signal]:
    """Signals for rule hits: with their points on the rules path, 0 points next to a model score."""
    return [
        Signal(name=h.rule_id, description=h.description, points=h.points if priced else 0, source=h.source)
        for h in hits
    ]


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
