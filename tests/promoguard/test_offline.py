"""Offline batch scoring: each attempt must get its own pre-event feature row, never a neighbour's."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from features.definitions import feature_views
from promoguard.offline import batch_window, join_pre_event_features
from training.dataset import FLAG_COLUMNS

T0 = pd.Timestamp("2026-06-01 12:00:00", tz="UTC")


def _keys() -> pd.DataFrame:
    """Three attempts: two by one identity at the same instant (a tie), one later without a device."""
    keys: dict[str, object] = {
        "request_id": ["r1", "r2", "r3"],
        "ts": [T0, T0, T0 + pd.Timedelta(hours=1)],
        "promo_code": ["WELCOME", "WELCOME", "WELCOME"],
        "promo_type": ["welcome"] * 3,
        "discount_value": [10.0] * 3,
        "email_is_alias": [True, None, False],
    }
    for view in feature_views():
        for key in view.join_keys:
            if key != "promo_code":
                keys[key] = ["a", "a", "b"]
    keys["device_key"] = ["a", "a", None]
    return pd.DataFrame(keys)


def _frames() -> dict[str, pd.DataFrame]:
    """Per view: entity a at T0 (value 1), a at T0+1h (value 2, a later state), b at T0+1h (value 3)."""
    frames = {}
    for view in feature_views():
        rows = pd.DataFrame(
            {
                **{k: ["WELCOME"] * 3 if k == "promo_code" else ["a", "a", "b"] for k in view.join_keys},
                "event_timestamp": [T0, T0 + pd.Timedelta(hours=1), T0 + pd.Timedelta(hours=1)],
            }
        )
        for f in view.features:
            rows[f.name] = [1.0, 2.0, 3.0]
        frames[view.name] = rows
    return frames


def test_each_attempt_gets_the_row_stamped_at_its_own_time() -> None:
    out = join_pre_event_features(_keys(), _frames())
    features = [c for c in out.columns if "__" in c]
    assert len(features) == sum(len(v.features) for v in feature_views())
    # r1 and r2 tie at T0 and share entity a's T0 row, not a's later state.
    assert (out.loc[out["request_id"] == "r1", features].to_numpy() == 1.0).all()
    assert (out.loc[out["request_id"] == "r2", features].to_numpy() == 1.0).all()
    non_device = [c for c in features if not c.startswith("device_")]
    assert (out.loc[out["request_id"] == "r3", non_device].to_numpy() == 3.0).all()


def test_a_missing_join_key_gives_missing_features_for_that_view_only() -> None:
    out = join_pre_event_features(_keys(), _frames()).set_index("request_id")
    device = [c for c in out.columns if c.startswith(("device_stats__", "device_code_stats__"))]
    assert out.loc["r3", device].isna().all()
    assert out.loc["r3", "phone_stats__attempts_24h"] == 3.0


def test_flags_become_zero_one_integers_and_absent_flags_are_not_raised() -> None:
    out = join_pre_event_features(_keys(), _frames())
    assert out["email_is_alias"].tolist() == [1, 0, 0]
    for flag in FLAG_COLUMNS:
        assert out[flag].dtype == np.int64
    assert (out["ip_is_tor"] == 0).all()
    assert not [c for c in out.columns if c.endswith("_key")], "join keys do not leave the join"


def test_join_names_the_missing_view_or_column() -> None:
    frames = _frames()
    name = next(iter(frames))
    del frames[name]
    with pytest.raises(ValueError, match=name):
        join_pre_event_features(_keys(), frames)
    with pytest.raises(ValueError, match="promo_type"):
        join_pre_event_features(_keys().drop(columns=["promo_type"]), _frames())


def test_batch_window_keeps_the_last_days_and_optionally_labeled_rows() -> None:
    frame = pd.DataFrame(
        {
            "ts": pd.date_range("2026-06-01", periods=10, freq="D", tz="UTC"),
            "label": [np.nan, 1.0] * 5,
        }
    )
    assert len(batch_window(frame, 3)) == 3
    assert len(batch_window(frame, None)) == 10
    labeled = batch_window(frame, 4, labeled_only=True)
    assert labeled["label"].notna().all() and len(labeled) == 2
    with pytest.raises(ValueError, match="days"):
        batch_window(frame, 0)
    with pytest.raises(ValueError, match="label"):
        batch_window(frame.drop(columns=["label"]), 3, labeled_only=True)
