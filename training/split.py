"""Time-ordered train / validation / calibration / test windows, labels as known at each step.

Layout by event time, oldest first: ``train | gap | valid | calib | test``. Two moments matter:

* ``label_cutoff`` (the end of the gap): the booster is pretended to be trained then. Training rows
  whose label arrived after it are dropped, because that label was not known yet; the gap is as long
  as the label delay, so the later windows are never scored by a model that saw labels from their
  own period.
* ``deploy_cutoff`` (the end of the calibration window = the start of the test window): the model is
  deployed then. Early stopping, calibration and thresholds use the validation and calibration rows
  through :func:`labels_as_of` at that moment: a row whose label had not arrived by then is dropped,
  not presumed legit and not given the label it got later. Dropping keeps every label used one the
  store really had; its price is that the fastest labels (reviews, feedback) are over-represented,
  which the truth-based metrics on the test window measure rather than hide.

:func:`rolling_splits` repeats the same layout at earlier origins (rolling-origin evaluation), each fold
with its own cutoffs. No random split anywhere: abuse rings repeat, and a random split would leak an
actor's future into its past.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import pandas as pd

log = logging.getLogger(__name__)


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
    #: Validation / calibration rows whose label was not known yet at ``deploy_cutoff``.
    dropped_valid: int = 0
    dropped_calib: int = 0

    @property
    def deploy_cutoff(self) -> pd.Timestamp:
        """When the model goes live: labels used by calibration, thresholds and early stopping end here."""
        return self.test_start

    def windows(self) -> dict[str, str]:
        """The boundaries as ISO strings, for logging."""
        return {
            "train_end": self.train_end.isoformat(),
            "label_cutoff": self.label_cutoff.isoformat(),
            "valid_start": self.valid_start.isoformat(),
            "calib_start": self.calib_start.isoformat(),
            "test_start": self.test_start.isoformat(),
            "deploy_cutoff": self.deploy_cutoff.isoformat(),
            "test_end": self.test_end.isoformat(),
        }


def labels_as_of(frame: pd.DataFrame, cutoff: pd.Timestamp) -> pd.DataFrame:
    """The label snapshot at ``cutoff``: only rows whose label had arrived (``label_ts <= cutoff``).

    Rows whose label arrived later are dropped rather than presumed legit: the frame's one label per
    attempt is its final label, so a late row carries a label nobody had at ``cutoff``, and presuming
    it legit would invent one. Row order and the index are kept.
    """
    if "label_ts" not in frame.columns:
        raise ValueError("labels_as_of needs column 'label_ts'")
    known = pd.to_datetime(frame["label_ts"], utc=True) <= pd.Timestamp(cutoff)
    return frame[known.to_numpy()]


def time_split(
    frame: pd.DataFrame,
    *,
    test_days: float,
    valid_days: float,
    calib_days: float,
    gap_days: float,
    end: pd.Timestamp | None = None,
) -> Split:
    """Split a training frame by event time ``ts`` into train | gap | valid | calib | test.

    ``end`` (exclusive) ends the test window; by default just after the last event. Rows in the gap and
    from ``end`` on are unused. Training rows whose ``label_ts`` is after the label cutoff (= the end
    of the gap) are dropped; validation and calibration rows whose label was not known at the deploy
    cutoff (= the start of the test window) are dropped (:func:`labels_as_of`). Test rows keep their
    final label: evaluation may use what was learned later. Raises ValueError when a window is empty.
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
    test_end = ts.max() + pd.Timedelta(seconds=1) if end is None else pd.Timestamp(end)
    test_start = test_end - pd.Timedelta(days=test_days)
    calib_start = test_start - pd.Timedelta(days=calib_days)
    valid_start = calib_start - pd.Timedelta(days=valid_days)
    train_end = valid_start - pd.Timedelta(days=gap_days)
    label_cutoff = valid_start
    label_ts = pd.to_datetime(frame["label_ts"], utc=True)
    in_train = ts < train_end
    known = label_ts <= label_cutoff
    in_valid = (ts >= valid_start) & (ts < calib_start)
    in_calib = (ts >= calib_start) & (ts < test_start)
    parts = {
        "train": frame[in_train & known],
        "valid": labels_as_of(frame[in_valid], test_start),
        "calib": labels_as_of(frame[in_calib], test_start),
        "test": frame[(ts >= test_start) & (ts < test_end)],
    }
    for name, part in parts.items():
        if part.empty:
            raise ValueError(
                f"{name} window is empty: the frame spans {ts.min()} to {ts.max()}, which is too short "
                f"for test={test_days}d calib={calib_days}d valid={valid_days}d gap={gap_days}d "
                f"ending {test_end}, or no label of the window was known at {test_start}"
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
        dropped_valid=int(in_valid.sum()) - len(parts["valid"]),
        dropped_calib=int(in_calib.sum()) - len(parts["calib"]),
    )


def rolling_splits(
    frame: pd.DataFrame,
    *,
    folds: int,
    test_days: float,
    valid_days: float,
    calib_days: float,
    gap_days: float,
) -> list[Split]:
    """Rolling-origin folds, oldest first: the same layout ending ``test_days`` earlier each time.

    The last fold is exactly :func:`time_split` of the whole frame, so its test windows tile the most
    recent ``folds * test_days`` days without overlap. Each fold's labels are as known at its own
    cutoffs. A fold too early for its windows is left out (logged), so fewer folds may come back.
    """
    if folds < 1:
        raise ValueError(f"folds must be >= 1, got {folds}")
    last = time_split(
        frame, test_days=test_days, valid_days=valid_days, calib_days=calib_days, gap_days=gap_days
    )
    out = [last]
    for k in range(1, folds):
        end = last.test_end - pd.Timedelta(days=test_days * k)
        try:
            out.append(
                time_split(
                    frame,
                    test_days=test_days,
                    valid_days=valid_days,
                    calib_days=calib_days,
                    gap_days=gap_days,
                    end=end,
                )
            )
        except ValueError as exc:
            log.warning("rolling-origin fold ending %s left out: %s", end.isoformat(), exc)
            break
    return out[::-1]


def abusers_seen_in_train(split: Split) -> set[str]:
    """Actors with at least one abuse-labeled row in the training window (needs ``actor_id``)."""
    if "actor_id" not in split.train.columns:
        return set()
    train = split.train
    return set(train.loc[(train["label"] == 1) & train["actor_id"].notna(), "actor_id"].astype(str))
