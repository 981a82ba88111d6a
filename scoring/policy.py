"""Bands and decisions: what a 0-100 score means for checkout, per promotion type.

Bands are named lower bounds (``clean`` 0-9, ``low`` 10-29, ``medium`` 30-59, ``high`` 60-100 by
default); thresholds give, per promotion type plus ``default``, the score at which an attempt is put
on watch, sent to verification or refused. Training chooses both and writes them into the manifest;
every reader takes them from there. Scalar functions serve one request; the ``*_many`` variants apply
the same table to whole columns.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd

DEFAULT_BANDS: dict[str, int] = {"clean": 0, "low": 10, "medium": 30, "high": 60}
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


def stricter(a: str, b: str | None) -> str:
    """The stricter of two decisions (``None`` is no opinion)."""
    if b is None:
        return a
    return a if _DECISION_ORDER[a] >= _DECISION_ORDER[b] else b
