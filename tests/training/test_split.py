"""Time split with a label-delay gap."""

from __future__ import annotations

import itertools

import pandas as pd
import pytest

from training.split import abusers_seen_in_train, labels_as_of, rolling_splits, time_split


def test_windows_follow_event_time_with_the_gap_between_train_and_validation(frame: pd.DataFrame) -> None:
    s = time_split(frame, test_days=14, valid_days=7, calib_days=14, gap_days=10)
    assert s.train["ts"].max() < s.train_end
    assert s.valid_start - s.train_end == pd.Timedelta(days=10)
    assert s.valid["ts"].min() >= s.valid_start
    assert s.valid["ts"].max() < s.calib["ts"].min()
    assert s.calib["ts"].max() < s.test["ts"].min()
    gap_rows = frame[(frame["ts"] >= s.train_end) & (frame["ts"] < s.valid_start)]
    assert len(gap_rows) > 0
    used = (
        set(s.train["request_id"])
        | set(s.valid["request_id"])
        | set(s.calib["request_id"])
        | set(s.test["request_id"])
    )
    assert used.isdisjoint(set(gap_rows["request_id"]))


def test_training_rows_whose_label_arrived_after_the_cutoff_are_dropped(frame: pd.DataFrame) -> None:
    s = time_split(frame, test_days=14, valid_days=7, calib_days=14, gap_days=5)
    assert (s.train["label_ts"] <= s.label_cutoff).all()
    late = frame[(frame["ts"] < s.train_end) & (frame["label_ts"] > s.label_cutoff)]
    assert len(late) > 0
    assert s.dropped_unlabeled == len(late)
    assert set(late["request_id"]).isdisjoint(set(s.train["request_id"]))


def test_a_frame_too_short_for_the_windows_is_refused(frame: pd.DataFrame) -> None:
    with pytest.raises(ValueError, match="train window is empty"):
        time_split(frame, test_days=60, valid_days=30, calib_days=30, gap_days=10)


def test_abusers_seen_in_train_are_actors_with_an_abuse_label_in_train(frame: pd.DataFrame) -> None:
    s = time_split(frame, test_days=14, valid_days=7, calib_days=14, gap_days=5)
    seen = abusers_seen_in_train(s)
    assert seen == set(s.train.loc[s.train["label"] == 1, "actor_id"])
    legit_only = set(s.train.loc[s.train["label"] == 0, "actor_id"]) - seen
    assert legit_only and seen.isdisjoint(legit_only)


def test_labels_as_of_keeps_exactly_the_labels_that_had_arrived() -> None:
    frame = pd.DataFrame(
        {
            "label": [1, 0, 1, 0],
            "label_ts": pd.to_datetime(
                ["2026-01-01T00:00:00", "2026-01-02T00:00:00", "2026-01-02T00:00:01", "2026-02-01T00:00:00"],
                utc=True,
            ),
        },
        index=[10, 11, 12, 13],
    )
    known = labels_as_of(frame, pd.Timestamp("2026-01-02", tz="UTC"))
    assert list(known.index) == [10, 11], (
        "a label arriving exactly at the cutoff is known, one second later is not"
    )


def test_validation_and_calibration_use_only_labels_known_when_the_model_is_deployed(
    frame: pd.DataFrame,
) -> None:
    s = time_split(frame, test_days=14, valid_days=10, calib_days=14, gap_days=7)
    assert s.deploy_cutoff == s.test_start
    assert (s.valid["label_ts"] <= s.deploy_cutoff).all() and (s.calib["label_ts"] <= s.deploy_cutoff).all()
    ts = frame["ts"]
    in_calib = frame[(ts >= s.calib_start) & (ts < s.test_start)]
    late = in_calib[in_calib["label_ts"] > s.deploy_cutoff]
    assert len(late) > 0 and s.dropped_calib == len(late)
    assert set(late["request_id"]).isdisjoint(set(s.calib["request_id"]))
    assert len(s.calib) + len(late) == len(in_calib)
    # The test window is judged with everything learned later: its late labels stay.
    assert (s.test["label_ts"] > s.deploy_cutoff).any()
    assert s.windows()["deploy_cutoff"] == s.test_start.isoformat()


def test_rolling_origin_folds_tile_the_latest_test_windows_each_with_its_own_cutoffs(
    frame: pd.DataFrame,
) -> None:
    days = {"test_days": 14, "valid_days": 10, "calib_days": 14, "gap_days": 7}
    folds = rolling_splits(frame, folds=3, **days)
    assert len(folds) == 3
    last = time_split(frame, **days)
    assert folds[-1].test_start == last.test_start and folds[-1].test["request_id"].equals(
        last.test["request_id"]
    )
    for older, newer in itertools.pairwise(folds):
        assert older.test_end == newer.test_start, "adjacent, non-overlapping test windows"
        assert older.test["ts"].max() < newer.test["ts"].min()
    for f in folds:
        assert (f.train["ts"] < f.train_end).all() and (f.train["label_ts"] <= f.label_cutoff).all()
        assert (f.calib["label_ts"] <= f.deploy_cutoff).all()
        assert f.test["ts"].min() >= f.test_start and f.test["ts"].max() < f.test_end
    # Folds too early for the windows are left out rather than failing the run.
    assert 3 < len(rolling_splits(frame, folds=20, **days)) < 20
    with pytest.raises(ValueError, match="folds"):
        rolling_splits(frame, folds=0, **days)
