"""A drift run from the two sides to the exit code: the one call for the command line and the notebook.

The edges (``promoguard drift``, the drift notebook) fetch the champion's reference (its scored test
window and manifest) and read the scoring log or score a batch; everything from there is here:
choosing the window of the log (:func:`log_window`), deciding that there is nothing to compare,
comparing, validating and writing the report (:func:`run_drift`), and the exit code
(:class:`~monitoring.drift.ExitCode`: 0 green, 1 amber, 2 red, 3 nothing to compare, 4 failed).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from monitoring.catalog import display_names as names_from_specs
from monitoring.drift import DriftResult, DriftThresholds, ExitCode, compute_drift, exit_code, with_violations
from monitoring.render import ReportPaths, write_report
from monitoring.validation import build_suite, validate_current

DEFAULT_TITLE = "promoguard drift report"


@dataclass(frozen=True)
class Reference:
    """The champion's side of a report: its scored test window, its model inputs and their names."""

    frame: pd.DataFrame
    feature_names: tuple[str, ...]
    display_names: Mapping[str, str] = field(default_factory=dict)
    model_version: str = ""


@dataclass(frozen=True)
class DriftOutcome:
    """How a drift run ended: the exit code, one line saying why, and the report when one was written."""

    code: ExitCode
    message: str
    result: DriftResult | None = None
    paths: ReportPaths | None = None


def reference_from_manifest(frame: pd.DataFrame, manifest: Mapping[str, Any]) -> Reference:
    """The reference side from the champion's scored window and its manifest (inputs, signal names)."""
    features = manifest.get("feature_names")
    if not isinstance(features, list) or not features:
        raise ValueError("manifest: feature_names is missing or empty")
    return Reference(
        frame=frame,
        feature_names=tuple(str(f) for f in features),
        display_names=names_from_specs(manifest.get("signals") or {}),
        model_version=str(manifest.get("model_version") or ""),
    )


def check_days(days: float) -> float:
    """The window length in days; ValueError unless it is a positive, finite number."""
    if not (isinstance(days, int | float) and math.isfinite(days) and days > 0):
        raise ValueError(f"days: expected a positive number of days, got {days!r}")
    return float(days)


def log_window(log: pd.DataFrame, days: float) -> pd.DataFrame:
    """The last ``days`` of a scoring log, ending at its latest attempt (empty stays empty).

    The window ends at the log's last attempt rather than at the clock, so that a replayed or paused
    log is still compared over the days it has; ``ts`` is the log's UTC timestamp.
    """
    days = check_days(days)
    if log.empty:
        return log
    ts = pd.to_datetime(log["ts"], utc=True, format="ISO8601")
    since = ts.max() - pd.Timedelta(days=days)
    return log[(ts >= since).to_numpy()].reset_index(drop=True)


def run_drift(
    reference: pd.DataFrame,
    current: pd.DataFrame,
    feature_names: Sequence[str],
    out_dir: Path,
    thresholds: DriftThresholds | None = None,
    *,
    display_names: Mapping[str, str] | None = None,
    title: str = DEFAULT_TITLE,
    reference_label: str = "reference",
    current_label: str = "current",
) -> tuple[DriftResult, ReportPaths]:
    """Compute drift, validate the current window against a suite built from the reference, write the report.

    Only the features both sides carry are validated: a feature the log does not carry is "not logged",
    not a failed check. ``exit_code(result)`` of the returned result is the status to exit with.
    """
    result = compute_drift(reference, current, feature_names, thresholds, display_names=display_names)
    compared = [f.name for f in result.features]
    violations = validate_current(current, build_suite(reference, compared))
    result = with_violations(result, violations)
    paths = write_report(
        result, violations, out_dir, title=title, reference_label=reference_label, current_label=current_label
    )
    return result, paths


def drift_outcome(
    reference: Reference,
    current: pd.DataFrame,
    out_dir: Path,
    *,
    current_label: str,
    reference_label: str | None = None,
    thresholds: DriftThresholds | None = None,
) -> DriftOutcome:
    """Compare ``current`` with the champion's reference and write the report; nothing to compare is 3.

    Bad frames raise ValueError (the caller's "failed", exit 4) before anything is written.
    """
    if current.empty:
        return DriftOutcome(
            ExitCode.NOTHING_TO_COMPARE,
            "nothing scored in the window: send traffic to the service or pass --events",
        )
    if reference.frame.empty:
        return DriftOutcome(ExitCode.NOTHING_TO_COMPARE, "the champion's reference window has no rows")
    result, paths = run_drift(
        reference.frame,
        current,
        reference.feature_names,
        out_dir,
        thresholds,
        display_names=reference.display_names,
        reference_label=reference_label or "champion test window",
        current_label=current_label,
    )
    code = exit_code(result)
    return DriftOutcome(code, f"status {result.status} (exit {int(code)})", result, paths)
