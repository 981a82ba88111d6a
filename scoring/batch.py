"""Scoring a whole frame with a model artifact, the way the service scores one request.

The drift report's reference side, offline scoring of an event batch and the promotion gate read
frames, not requests: :func:`feature_matrix` builds the model's matrix from a frame and
:func:`score_frame` returns one scoring-log-shaped row per attempt (score, band, decision, top
signals and every model feature), using the same calibrator, bands, thresholds and signal names as
the request path.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from scoring.artifact import LoadedModel
from scoring.policy import bands_for, by_score_many, normalize_thresholds
from scoring.signals import top_concept_names


def feature_matrix(frame: pd.DataFrame, feature_names: Sequence[str]) -> np.ndarray:
    """Float64 feature matrix in model order; absent columns are all-missing (NaN)."""
    out = np.full((len(frame), len(feature_names)), np.nan, dtype=np.float64)
    for j, name in enumerate(feature_names):
        if name in frame.columns:
            out[:, j] = pd.to_numeric(frame[name], errors="coerce").to_numpy(
                dtype=np.float64, na_value=np.nan
            )
    return out


def score_frame(model: LoadedModel, window: pd.DataFrame, *, top: int = 3) -> pd.DataFrame:
    """Score a frame of attempts with an artifact, in the scoring log's shape.

    ``window`` needs request_id, ts, promo_type and the model's features (promo_code, label and pattern
    when present). Returns ts, request_id, promo_code, promo_type, campaign, score, band, decision,
    fallback (None), top_signals, label, pattern and every model feature. This path has no rules: it
    is the model's answer, used where the request-time inputs are not available, decided as the
    request path decides a score (a score alone asks at most for verification).
    """
    names = model.feature_names
    x = feature_matrix(window, names)
    _, scores = model.predict_many(x, num_threads=2)
    contrib = model.contributions_many(x, num_threads=2)[:, : len(names)]
    # The same reason concepts the request path logs, so both sides of a drift report name them alike.
    top_signals = top_concept_names(names, contrib, top)
    codes = window["promo_code"] if "promo_code" in window.columns else window["promo_type"]
    out = pd.DataFrame(
        {
            "ts": pd.to_datetime(window["ts"], utc=True).to_numpy(),
            "request_id": window["request_id"].astype(str).to_numpy(),
            "promo_code": codes.astype(str).to_numpy(),
            "promo_type": window["promo_type"].astype(str).to_numpy(),
            "score": scores,
            "band": bands_for(scores, model.bands),
            "decision": by_score_many(
                scores, window["promo_type"].to_numpy(), normalize_thresholds(model.thresholds, model.bands)
            ),
            "fallback": None,
            "top_signals": top_signals,
            "label": window["label"].astype("float64").to_numpy() if "label" in window.columns else np.nan,
        }
    )
    out["ts"] = pd.to_datetime(out["ts"], utc=True)
    out["campaign"] = out["promo_code"]
    if "pattern" in window.columns:
        out["pattern"] = window["pattern"].to_numpy()
    return pd.concat([out, pd.DataFrame(x, columns=names, index=out.index)], axis=1)
