"""Training frame validation and assembly."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from training.dataset import (
    FLAG_COLUMNS,
    LABELED_ATTEMPTS,
    TrainingDataError,
    assemble_training_frame,
    feature_kind,
    sample_attempts,
    sampled_from,
    validate_training_frame,
)


def test_a_well_formed_frame_passes_validation(frame: pd.DataFrame, names: list[str]) -> None:
    validate_training_frame(frame, names)


def test_a_bad_frame_fails_with_a_report_naming_each_problem(frame: pd.DataFrame, names: list[str]) -> None:
    bad = frame.drop(columns=["code_stats__attempts_1h"]).copy()
    bad.loc[3, "device_stats__attempts_24h"] = -2.0
    bad.loc[5, "label"] = 2
    bad["phone_stats__attempts_1h"] = np.nan
    with pytest.raises(TrainingDataError) as err:
        validate_training_frame(bad, names)
    report = str(err.value)
    assert "missing column(s) ['code_stats__attempts_1h']" in report
    assert "device_stats__attempts_24h" in report and "-2.0" in report
    assert "'label'" in report and "[2]" in report
    assert "phone_stats__attempts_1h" in report and "non_null" in report
    assert "4 expectation(s)" in report


def test_duplicate_request_ids_and_share_above_one_are_reported(
    frame: pd.DataFrame, names: list[str]
) -> None:
    bad = frame.copy()
    bad.loc[1, "request_id"] = bad.loc[2, "request_id"]
    bad.loc[4, "code_stats__new_account_share_7d"] = 1.5
    with pytest.raises(TrainingDataError, match="request_id") as err:
        validate_training_frame(bad, names)
    assert "code_stats__new_account_share_7d" in str(err.value)


def test_every_catalog_feature_and_flag_has_a_kind(names: list[str]) -> None:
    kinds = {feature_kind(n) for n in names}
    assert kinds == {"count", "distinct", "age", "share", "labels", "flag"}
    assert all(feature_kind(f) == "flag" for f in FLAG_COLUMNS)


def test_assemble_keeps_labeled_attempts_and_joins_features_at_event_time() -> None:
    ts = pd.to_datetime(["2026-01-01T10:00", "2026-01-02T10:00", "2026-01-03T10:00"], utc=True)
    keys = pd.DataFrame(
        {
            "request_id": ["a", "b", "c"],
            "ts": ts,
            "promo_code": ["W1", "W1", "W2"],
            "promo_type": ["welcome"] * 3,
            "discount_value": [10.0, 10.0, 5.0],
            "device_key": ["d1", None, "d2"],
            "email_key": ["e1", "e2", "e3"],
            "email_is_alias": [True, False, None],
            "device_missing": [False, True, False],
        }
    )
    labels = pd.DataFrame(
        {
            "request_id": ["a", "c"],
            "label": ["abuse", "legit"],
            "label_source": ["manual_review"] * 2,
            "label_ts": ts[[0, 2]] + pd.Timedelta(days=3),
        }
    )
    seen: list[pd.DataFrame] = []

    def historical(entity_df: pd.DataFrame) -> pd.DataFrame:
        seen.append(entity_df)
        return pd.DataFrame(
            {
                "request_id": entity_df["request_id"],
                "device_key": entity_df["device_key"],
                "device_stats__attempts_24h": [4, 0],
            }
        )

    truth = pd.DataFrame(
        {"request_id": ["a", "c"], "actor_id": ["x", "y"], "pattern": ["welcome_cycling", None]}
    )
    out = assemble_training_frame(keys, labels, historical, truth)

    entity = seen[0]
    assert list(entity["request_id"]) == ["a", "c"]
    assert {"device_key", "email_key", "promo_code", "event_timestamp"} <= set(entity.columns)
    assert (entity["event_timestamp"] == ts[[0, 2]]).all()
    assert list(out["request_id"]) == ["a", "c"]
    assert list(out["label"]) == [1, 0]
    assert list(out["device_stats__attempts_24h"]) == [4.0, 0.0]
    assert out["device_stats__attempts_24h"].dtype == np.float64
    assert list(out["email_is_alias"]) == [1, 0]
    assert list(out["actor_id"]) == ["x", "y"]
    assert not any(c.endswith("_key") for c in out.columns)


def _labeled_world(n: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    rng = np.random.default_rng(3)
    ts = pd.Timestamp("2026-01-01", tz="UTC") + pd.to_timedelta(np.sort(rng.uniform(0, 90 * 86_400, n)), "s")
    ids = [f"r{i}" for i in range(n)]
    keys = pd.DataFrame({
        "request_id": ids, "ts": ts, "promo_code": "W1", "promo_type": "welcome", "discount_value": 10.0,
        "device_key": [f"d{i % 97}" for i in range(n)],
    })
    abuse = rng.random(n) < 0.1
    labels = pd.DataFrame({
        "request_id": ids, "label": np.where(abuse, "abuse", "legit"), "label_source": "manual_review",
        "label_ts": ts + pd.Timedelta(days=2),
    })
    return keys, labels


def test_a_sample_keeps_the_base_rate_and_the_time_order_and_is_repeatable() -> None:
    keys, labels = _labeled_world(20_000)
    attempts = keys.merge(labels, on="request_id")
    drawn = sample_attempts(attempts, 2_000, seed=4)
    assert len(drawn) == 2_000 and drawn["request_id"].is_unique
    assert set(drawn["request_id"]) <= set(attempts["request_id"])
    assert drawn["ts"].is_monotonic_increasing
    # Uniform: the abuse share and each month's share stay where they were (binomial sd ~0.7 pt here).
    assert abs((drawn["label"] == "abuse").mean() - (attempts["label"] == "abuse").mean()) < 0.025
    months = drawn["ts"].dt.month.value_counts(normalize=True)
    assert (months - attempts["ts"].dt.month.value_counts(normalize=True)).abs().max() < 0.04
    assert sample_attempts(attempts, 2_000, seed=4).equals(drawn)
    assert not sample_attempts(attempts, 2_000, seed=5).equals(drawn)
    assert sample_attempts(attempts, None) is attempts
    assert sample_attempts(attempts, 20_000) is attempts
    with pytest.raises(ValueError, match="max_rows"):
        sample_attempts(attempts, 0)


def test_assemble_with_max_rows_retrieves_only_the_sample() -> None:
    keys, labels = _labeled_world(5_000)
    asked: list[int] = []

    def historical(entity_df: pd.DataFrame) -> pd.DataFrame:
        asked.append(len(entity_df))
        return pd.DataFrame({"request_id": entity_df["request_id"], "device_stats__attempts_24h": 1.0})

    frame = assemble_training_frame(keys, labels, historical, max_rows=800)
    assert asked == [800] and len(frame) == 800
    assert frame.attrs[LABELED_ATTEMPTS] == 5_000
    whole = assemble_training_frame(keys, labels, historical)
    assert asked[-1] == 5_000 and whole.attrs[LABELED_ATTEMPTS] == len(whole) == 5_000
    assert sampled_from(frame) == 5_000 and sampled_from(whole) is None


def test_assemble_names_the_missing_column() -> None:
    keys = pd.DataFrame({"request_id": ["a"], "ts": [pd.Timestamp("2026-01-01", tz="UTC")]})
    labels = pd.DataFrame({"request_id": ["a"], "label": ["abuse"], "label_ts": keys["ts"]})
    with pytest.raises(TrainingDataError, match="promo_code"):
        assemble_training_frame(keys, labels, lambda e: e)


def test_unlabeled_attempts_are_presumed_legit_only_after_the_maturity_window() -> None:
    from training.dataset import PRESUMED_LEGIT, presume_unlabeled_legit

    t0 = pd.Timestamp("2026-06-01", tz="UTC")
    keys = pd.DataFrame({"request_id": ["a", "b", "c"], "ts": [t0, t0 + pd.Timedelta(days=1), t0]})
    labels = pd.DataFrame(
        {
            "request_id": ["a"],
            "label": ["abuse"],
            "label_source": ["manual_review"],
            "label_ts": [t0 + pd.Timedelta(days=3)],
        }
    )
    out = presume_unlabeled_legit(keys, labels, maturity_days=30).set_index("request_id")
    assert out.loc["a", "label"] == "abuse" and out.loc["a", "label_source"] == "manual_review"
    assert set(out.index) == {"a", "b", "c"}
    assert (out.loc[["b", "c"], "label"] == "legit").all()
    assert (out.loc[["b", "c"], "label_source"] == PRESUMED_LEGIT).all()
    assert out.loc["b", "label_ts"] == t0 + pd.Timedelta(days=31)
    with pytest.raises(ValueError, match="maturity_days"):
        presume_unlabeled_legit(keys, labels, maturity_days=0)
