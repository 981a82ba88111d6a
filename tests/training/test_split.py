"""Time split with a label-delay gap."""

from __future__ import annotations

import pandas as pd
import pytest

from training.split import abusers_seen_in_train, time_split


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
