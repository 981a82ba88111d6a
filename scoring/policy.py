"""Bands and decisions: what a 0-100 score means for checkout, per promotion type.

Bands are named lower bounds; thresholds give, per promotion type plus ``default``, the score at which
an attempt is put on watch, sent to verification or refused. Training chooses both and writes them
into the manifest; every reader takes them from there. Scalar functions serve one request; the
``*_many`` variants apply the same table to whole columns.

The one table (defaults; a manifest may move the numbers, never the constraints):

=========  ======  ==========================================================================
band       scores  decisions a score in it can get
=========  ======  ==========================================================================
clean      0-9     allow
low        10-29   allow, watch (a threshold may sit in low)
medium     30-59   allow, watch, verify (verify threshold >= 30)
high       60-100  watch, verify, refuse (refuse threshold >= 60)
=========  ======  ==========================================================================

=================  =====  ======  ======  =====================================================
thresholds         watch  verify  refuse  constraint
=================  =====  ======  ======  =====================================================
default            30     60      85      low <= watch <= high; medium <= verify;
                                          high <= refuse <= 100; watch + 5 <= verify;
                                          verify + 5 <= refuse
=================  =====  ======  ======  =====================================================

So every decision has scores of its own for every promotion type, and a decision always agrees with
its score: refuse means the high band, verify at least the medium band, allow a score below the
watch (hence the verify) threshold. In the decision path a score alone asks at most for verification
(:func:`by_score`): refusal takes a hard rule's evidence, or an operator's refuse threshold, and the
refuse threshold is then the score a refusal stands at. :func:`normalize_thresholds` enforces the
constraints when a table is loaded, moving as little as it can (see its docstring); a hard rule that
decides more strictly than the score lifts the score to its decision's threshold (:func:`lift_to`).
"""

from __future__ import annotations

import hashlib
import itertools
import logging
from collections.abc import Mapping

import numpy as np
import pandas as pd

logger = logging.getLogger(__name__)

DEFAULT_BANDS: dict[str, int] = {"clean": 0, "low": 10, "medium": 30, "high": 60}
BAND_NAMES: tuple[str, ...] = ("clean", "low", "medium", "high")
#: The least distance between two thresholds of one promotion type, so each decision has scores.
MIN_GAP = 5
#: The highest threshold a score can reach.
MAX_THRESHOLD = 100
DEFAULT_THRESHOLDS: dict[str, dict[str, int]] = {"default": {"watch": 30, "verify": 60, "refuse": 85}}
#: A threshold no 0-100 score reaches.
NEVER = 101
DECISIONS: tuple[str, ...] = ("allow", "watch", "verify", "refuse")
_DECISION_ORDER = {name: rank for rank, name in enumerate(DECISIONS)}
_ACTIONS = ("refuse", "verify", "watch")


def band_for(score: int, bands: Mapping[str, int]) -> str:
    """The band whose lower bound is the highest one not above ``score``."""
    best, best_floor = "clean", -1
    for name, floor in bands.items():
        if floor <= score and floor > best_floor:
            best, best_floor = name, floor
    return best


def bands_for(scores: np.ndarray, bands: Mapping[str, int] | None = None) -> np.ndarray:
    """Band name per score, from band lower bounds (the column form of :func:`band_for`)."""
    ordered = sorted((bands or DEFAULT_BANDS).items(), key=lambda kv: kv[1])
    names = np.array([k for k, _ in ordered], dtype=object)
    idx = np.searchsorted(np.array([v for _, v in ordered]), np.asarray(scores), side="right") - 1
    return np.asarray(names[np.clip(idx, 0, len(names) - 1)])


def threshold_for(promo_type: str | None, action: str, thresholds: Mapping[str, Mapping[str, int]]) -> int:
    """The ``action`` threshold of a promotion type: its own, else the ``default`` table's, else never."""
    default = thresholds.get("default") or DEFAULT_THRESHOLDS["default"]
    table = thresholds.get(promo_type or "") or default
    return int(table.get(action, default.get(action, NEVER)))


def decide(score: int, promo_type: str | None, thresholds: Mapping[str, Mapping[str, int]]) -> str:
    """Decision (allow | watch | verify | refuse) for one score under its promotion type's thresholds."""
    for action in _ACTIONS:
        if score >= threshold_for(promo_type, action, thresholds):
            return action
    return "allow"


def threshold_per_row(
    promo_types: np.ndarray, thresholds: Mapping[str, Mapping[str, int]], action: str
) -> np.ndarray:
    """The ``action`` threshold that applies to each row's promotion type."""
    types = pd.Series(np.asarray(promo_types, dtype=object)).astype(str)
    lookup = {ptype: threshold_for(ptype, action, thresholds) for ptype in types.unique()}
    return types.map(lookup).to_numpy(np.int64)


def decide_many(
    scores: np.ndarray, promo_types: np.ndarray, thresholds: Mapping[str, Mapping[str, int]]
) -> np.ndarray:
    """Decision per row from its promotion type's thresholds (the column form of :func:`decide`)."""
    s = np.asarray(scores)
    watch, verify, refuse = (
        threshold_per_row(promo_types, thresholds, a) for a in ("watch", "verify", "refuse")
    )
    out = np.where(
        s >= refuse, "refuse", np.where(s >= verify, "verify", np.where(s >= watch, "watch", "allow"))
    )
    return np.asarray(out, dtype=object)


def by_score(
    score: int,
    promo_type: str | None,
    thresholds: Mapping[str, Mapping[str, int]],
    *,
    may_refuse: bool = False,
) -> str:
    """What a score decides on its own in the decision path: :func:`decide`, with refuse asked as verify.

    The seeds keep refusal for evidence: a per-customer count at its cap, a single-use code spent, two
    strong identities of an earlier redeemer. Those are hard rules, which refuse whatever the score
    says. A high score without them "requires verification before honoring": an honest shopper
    whose request merely looks unusual (no address for a digital order, no device behind a script
    blocker) is asked to verify, never refused. ``may_refuse``: an operator set a refuse threshold on
    the campaign (``promoguard campaign thresholds``), a human decision that the score refuses there.
    """
    decision = decide(score, promo_type, thresholds)
    return "verify" if decision == "refuse" and not may_refuse else decision


def by_score_many(
    scores: np.ndarray, promo_types: np.ndarray, thresholds: Mapping[str, Mapping[str, int]]
) -> np.ndarray:
    """:func:`by_score` per row, without an operator's refuse threshold (the column form)."""
    out = decide_many(scores, promo_types, thresholds)
    out[out == "refuse"] = "verify"
    return out


def stricter(a: str, b: str | None) -> str:
    """The stricter of two decisions (``None`` is no opinion)."""
    if b is None:
        return a
    return a if _DECISION_ORDER[a] >= _DECISION_ORDER[b] else b


# --- one consistent table ---------------------------------------------------------------------------


def check_bands(bands: Mapping[str, int]) -> dict[str, int]:
    """The bands as ``{clean, low, medium, high}`` lower bounds; ValueError naming what is wrong.

    ``clean`` starts at 0, each band starts at least :data:`MIN_GAP` above the one before, ``high``
    at most at :data:`MAX_THRESHOLD` - :data:`MIN_GAP` (room for verify and refuse inside it).
    """
    missing = [b for b in BAND_NAMES if b not in bands]
    if missing or set(bands) - set(BAND_NAMES):
        raise ValueError(f"bands: expected exactly {BAND_NAMES}, got {sorted(bands)}")
    out = {b: int(bands[b]) for b in BAND_NAMES}
    if out["clean"] != 0:
        raise ValueError(f"bands: clean must start at 0, got {out['clean']}")
    for lower, upper in itertools.pairwise(BAND_NAMES):
        if out[upper] < out[lower] + MIN_GAP:
            raise ValueError(f"bands: {upper} ({out[upper]}) must start at least {MIN_GAP} above {lower} "
                             f"({out[lower]})")
    if out["high"] > MAX_THRESHOLD - MIN_GAP:
        raise ValueError(f"bands: high must start at most at {MAX_THRESHOLD - MIN_GAP}, got {out['high']}")
    return out


def threshold_problems(
    thresholds: Mapping[str, Mapping[str, int]], bands: Mapping[str, int] | None = None
) -> list[str]:
    """What breaks the table's constraints, one sentence per promotion type and threshold (empty: valid)."""
    b = check_bands(bands or DEFAULT_BANDS)
    problems: list[str] = []
    types = list(thresholds) if "default" in thresholds else ["default", *thresholds]
    for ptype in types:
        w, v, r = (threshold_for(ptype if ptype != "default" else None, a, thresholds)
                   for a in ("watch", "verify", "refuse"))
        if not b["low"] <= w <= b["high"]:
            problems.append(f"{ptype}: watch {w} is outside the low to high bands ({b['low']}-{b['high']})")
        if not b["medium"] <= v:
            problems.append(f"{ptype}: verify {v} is below the medium band ({b['medium']})")
        if not b["high"] <= r <= MAX_THRESHOLD:
            problems.append(f"{ptype}: refuse {r} is outside the high band ({b['high']}-{MAX_THRESHOLD})")
        if w + MIN_GAP > v:
            problems.append(f"{ptype}: watch {w} is not {MIN_GAP} below verify {v}")
        if v + MIN_GAP > r:
            problems.append(f"{ptype}: verify {v} is not {MIN_GAP} below refuse {r}")
    return problems


def normalize_thresholds(
    thresholds: Mapping[str, Mapping[str, int]], bands: Mapping[str, int] | None = None
) -> dict[str, dict[str, int]]:
    """A complete, valid table (every type has all three thresholds) as close to ``thresholds`` as allowed.

    Moves, in this order, and only as far as needed: refuse into the high band (at most 100), verify
    into ``[medium, refuse - 5]``, watch into ``[low, min(verify - 5, high)]``. So a cost-chosen verify
    or refuse moves only when it broke the band rule, and a watch equal to verify (watch never
    reachable) moves down, which costs nothing: watch is observation, not friction. Each change is
    logged.
    """
    b = check_bands(bands or DEFAULT_BANDS)
    out: dict[str, dict[str, int]] = {}
    types = list(thresholds) if "default" in thresholds else ["default", *thresholds]
    for ptype in types:
        w, v, r = (threshold_for(ptype if ptype != "default" else None, a, thresholds)
                   for a in ("watch", "verify", "refuse"))
        r2 = min(max(r, b["high"]), MAX_THRESHOLD)
        v2 = min(max(v, b["medium"]), r2 - MIN_GAP)
        w2 = min(max(w, b["low"]), v2 - MIN_GAP, b["high"])
        out[ptype] = {"watch": w2, "verify": v2, "refuse": r2}
        if (w2, v2, r2) != (w, v, r):
            logger.info("thresholds for %s moved from watch/verify/refuse %s/%s/%s to %s/%s/%s so that every "
                        "decision is reachable and agrees with its band", ptype, w, v, r, w2, v2, r2)
    return out


def lift_to(
    score: int, decision: str, promo_type: str | None, thresholds: Mapping[str, Mapping[str, int]]
) -> int:
    """The score a hard ``decision`` needs: at least its threshold for the promotion type (allow: as is)."""
    if decision not in _ACTIONS:
        return score
    return max(score, threshold_for(promo_type, decision, thresholds))


# --- exploration: a deterministic holdout of model-threshold friction ---------------------------------

#: The exploration map key that covers every promotion type without a share of its own.
ALL_TYPES = "default"
#: The decisions an exploration may turn into allow: the friction a model threshold puts on a shopper.
EXPLORABLE: tuple[str, ...] = ("verify", "refuse")


def unit_draw(request_id: str, salt: str) -> float:
    """A number in [0, 1) fixed by ``request_id`` (and ``salt``): the same request always draws the same.

    sha256, not Python's ``hash``: the draw must agree across worker processes and restarts, so a
    retry of a request (or its concurrent twin on another worker) gets the same answer.
    """
    digest = hashlib.sha256(f"{salt}:{request_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def exploration_share(shares: Mapping[str, float], promo_type: str | None) -> float:
    """The exploration share of a promotion type: its own, else the ``default`` entry, else 0."""
    if promo_type is not None and promo_type in shares:
        return float(shares[promo_type])
    return float(shares.get(ALL_TYPES, 0.0))


def explores(request_id: str, share: float) -> bool:
    """True when this request falls in the exploration holdout of ``share`` (0 never, 1 always)."""
    return share > 0.0 and unit_draw(request_id, "explore") < share
