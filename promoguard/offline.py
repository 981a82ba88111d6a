"""Score a batch of events offline with the champion, the way serving would have scored them.

Used by ``promoguard drift --events PATH``: a batch exported from the store (or simulated) is resolved into
identity keys, its point-in-time features are built over the batch itself, each event is joined to its
own pre-event row of every view, the request-time flags are added and the champion scores the result.
The output is a *scoring frame* in the shape :mod:`monitoring.drift` compares.

:func:`join_pre_event_features` and :func:`batch_window` are pure; :func:`score_events` is the edge that
reads the batch and downloads the champion.
"""

from __future__ import annotations

import tempfile
from collections.abc import Mapping
from pathlib import Path

import pandas as pd

from promoguard.settings import Settings

#: Columns of the keys frame that identify an attempt and describe its promotion.
_ATTEMPT_COLUMNS: tuple[str, ...] = ("request_id", "ts", "promo_code", "promo_type", "discount_value")


def join_pre_event_features(keys: pd.DataFrame, frames: Mapping[str, pd.DataFrame]) -> pd.DataFrame:
    """Each attempt with its own pre-event state per feature view, plus the 0/1 request-time flags.

    ``keys`` is the identity layer's keys frame; ``frames`` the output of
    :func:`features.pipeline.build_features` over a history that contains these attempts (see
    :func:`features.pipeline.pre_event_features`).
    """
    from features.pipeline import pre_event_features
    from training.dataset import FLAG_COLUMNS

    missing = [c for c in _ATTEMPT_COLUMNS if c not in keys.columns]
    if missing:
        raise ValueError(f"keys: missing column(s) {', '.join(missing)}")
    out = keys.reset_index(drop=True).copy()
    out["ts"] = pd.to_datetime(out["ts"], utc=True)
    views = pre_event_features(out, frames)
    flags = pd.DataFrame(
        {flag: (out[flag].eq(True) if flag in out.columns else False) for flag in FLAG_COLUMNS},
        index=out.index,
    ).astype("int64")
    base = out[[c for c in out.columns if not c.endswith("_key") and c not in FLAG_COLUMNS]]
    return pd.concat([base, views, flags], axis=1)


def batch_window(frame: pd.DataFrame, days: float | None, *, labeled_only: bool = False) -> pd.DataFrame:
    """The last ``days`` of a joined batch (all of it when ``days`` is None), optionally labeled rows only.

    The window ends at the batch's last attempt; the days before it only serve as the history its
    features were built from, so that entities are not all "first seen" the way a cold start makes them.
    """
    if days is not None and days <= 0:
        raise ValueError(f"days: expected a positive number of days, got {days}")
    out = frame
    if days is not None and len(out):
        since = out["ts"].max() - pd.Timedelta(days=days)
        out = out[out["ts"] > since]
    if labeled_only:
        if "label" not in out.columns:
            raise ValueError("label: labeled_only needs a label column (the batch has no labels)")
        out = out[out["label"].notna()]
    return out.reset_index(drop=True)


def _label_columns(labels: pd.DataFrame) -> pd.DataFrame:
    """request_id, label (1.0 abuse, 0.0 legit) and label_ts: the label columns of a scoring frame."""
    lab = labels[["request_id", "label", "label_ts"]].drop_duplicates("request_id", keep="last").copy()
    lab["label_ts"] = pd.to_datetime(lab["label_ts"], utc=True)
    lab["label"] = (lab["label"].astype(str) == "abuse").astype("float64")
    return lab


def promotions_beside(raw_dir: Path) -> pd.DataFrame | None:
    """The validated promotions catalog in ``raw_dir`` (None when the store exported none)."""
    from features.events import validate_promotions

    path = Path(raw_dir) / "promotions.parquet"
    return validate_promotions(pd.read_parquet(path)) if path.exists() else None


def score_events(
    settings: Settings,
    events_path: Path,
    *,
    labels_path: Path | None = None,
    days: float | None = None,
    labeled_only: bool = False,
) -> pd.DataFrame:
    """Score the events in ``events_path`` with the champion and return the drift report's scoring frame.

    ``labels_path`` defaults to ``labels.parquet`` beside the events (an empty label frame when absent:
    labels then only feed the ``abuse_labels`` features, and the frame has no labels). ``days`` keeps the
    last days of the batch (the rest is history for the features); ``labeled_only`` keeps the attempts
    the label file labels, which is how the champion's reference (its labeled test window) is drawn.
    Simulator ground truth (``truth.parquet`` beside the events) adds the ``pattern`` column.
    """
    from config.resolver import identity_resolver
    from features.context import add_context
    from features.events import LABEL_SCHEMA, validate_events, validate_labels
    from features.identity import resolve_frame
    from features.pipeline import build_features
    from scoring.artifact import LoadedModel
    from scoring.batch import score_frame
    from training.registry import CHAMPION, load_artifact

    events_path = Path(events_path)
    if not events_path.exists():
        raise FileNotFoundError(f"events: {events_path} does not exist")
    events = validate_events(pd.read_parquet(events_path))
    if events.empty:
        raise ValueError(f"events: {events_path} has no rows")
    labels_path = Path(labels_path) if labels_path is not None else events_path.parent / "labels.parquet"
    if labels_path.exists():
        labels = validate_labels(pd.read_parquet(labels_path))
    else:
        labels = pd.DataFrame({c: pd.Series(dtype=object) for c in LABEL_SCHEMA.columns})
    keys = resolve_frame(events, identity_resolver(settings))
    keys = add_context(keys, promotions_beside(events_path.parent))
    del events
    frames = build_features(keys, labels)
    joined = join_pre_event_features(keys, frames)
    joined = joined.merge(_label_columns(labels), on="request_id", how="left")
    truth_path = events_path.parent / "truth.parquet"
    if truth_path.exists():
        truth = pd.read_parquet(truth_path, columns=["request_id", "pattern"]).drop_duplicates("request_id")
        joined = joined.merge(truth, on="request_id", how="left")
    window = batch_window(joined, days, labeled_only=labeled_only)
    if window.empty:
        return pd.DataFrame()
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = load_artifact(settings.mlflow_tracking_uri, settings.model_name, CHAMPION, Path(tmp))
        scored = score_frame(LoadedModel.from_dir(model_dir), window)
    scored["label_ts"] = window["label_ts"].to_numpy()
    return scored
