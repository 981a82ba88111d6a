"""Time-ordered train / validation / calibration / test windows with a label-delay gap.

Layout by event time, oldest first: ``train | gap | valid | calib | test``. The model is pretended to be
trained at ``label_cutoff`` (the end of the gap): training rows whose label arrived after it are dropped,
because that label was not known yet. The gap is as long as the label delay, so the later windows are
never scored by a model that saw labels from their own period. No random split anywhere: abuse rings
repeat, and a random split would leak an actor's future into its past.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd


@dataclass(frozen=True)
class Split:
    """The four windows and the boundaries that define them."""

    train: pd.DataFrame
    valid: pd.DataFrame
    calib: pd.DataFrame
    test: pd.DataFrame
    train_end: pd.Timestamp
    label_cutoff: pd.Timestamp
    valid_start: pd.Timestamp
    calib_start: pd.Timestamp
    test_start: pd.Timestamp
    test_end: pd.Timestamp
    dropped_unlabeled: int

    def windows(self) -> dict[str, str]:
        """The boundaries as ISO strings, for logging."""
        return {
            "train_end": self.train_end.isoformat(),
            "label_cutoff": self.label_cutoff.isoformat(),
            "valid_start": self.valid_start.isoformat(),
            "calib_start": self.calib_start.isoformat(),
            "test_start": self.test_start.isoformat(),
            "test_end": self.test_end.isoformat(),
        }


def time_split(
    frame: pd.DataFrame, *, test_days: float, valid_days: float, calib_days: float, gap_days: float
) -> Split:
    """Split a training frame by event time ``ts`` into train | gap | valid | calib | test.

    Rows in the gap are unused. Training rows whose ``label_ts`` is after the label cutoff (= the end
    of the gap) are dropped. Raises ValueError when a window would be empty.
    """
    for name in ("ts", "label_ts"):
        if name not in frame.columns:
            raise ValueError(f"time_split needs column {name!r}")
    for name, value in (("test_days", test_days), ("valid_days", valid_days), ("calib_days", calib_days)):
        if value <= 0:
            raise ValueError(f"{name} must be positive, got {value}")
    if gap_days < 0:
        raise ValueError(f"gap_days must be >= 0, got {gap_days}")
    ts = pd.to_datetime(frame["ts"], utc=True)
    test_end = ts.max() + pd.Timedelta(seconds=1)
    test_start = test_end - pd.Timedelta(days=test_days)
    calib_start = test_start - pd.Timedelta(days=calib_days)
    valid_start = calib_start - pd.Timedelta(days=valid_days)
    train_end = valid_start - pd.Timedelta(days=gap_days)
    label_cutoff = valid_start
    in_train = ts < train_end
    known = pd.to_datetime(frame["label_ts"], utc=True) <= label_cutoff
    parts = {
        "train": frame[in_train & known],
        "valid": frame[(ts >= valid_start) & (ts < calib_start)],
        "calib": frame[(ts >= calib_start) & (ts < test_start)],
        "test": frame[ts >= test_start],
    }
    for name, part in parts.items():
        if part.empty:
            raise ValueError(
                f"{name} window is empty: the frame spans {ts.min()} to {ts.max()}, which is too short "
                f"for test={test_days}d calib={calib_days}d valid={valid_days}d gap={gap_days}d"
            )
    return Split(
        train=parts["train"].reset_index(drop=True),
        valid=parts["valid"].reset_index(drop=True),
        calib=parts["calib"].reset_index(drop=True),
        test=parts["test"].reset_index(drop=True),
        train_end=train_end,
        label_cutoff=label_cutoff,
        valid_start=valid_start,
        calib_start=calib_start,
        test_start=test_start,
        test_end=test_end,
        dropped_unlabeled=int((in_train & ~known).sum()),
    )


def abusers_seen_in_train(split: Split) -> set[str]:
    """Actors with at least one abuse-labeled row in the training window (needs ``actor_id``)."""
    if "actor_id" not in split.train.columns:
        return set()
    train = split.train
    return set(train.loc[(train["label"] == 1) & train["actor_id"].notna(), "actor_id"].astype(str))
