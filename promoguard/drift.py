"""`promoguard drift`: gather the champion's reference and the recent scoring log, write the report."""

from __future__ import annotations

import tempfile
from datetime import timedelta
from pathlib import Path

import pandas as pd
from rich.console import Console

from promoguard.settings import Settings

#: Exit status when there is nothing to compare (no champion or no scored attempts yet).
NOTHING_TO_COMPARE = 3


def current_frame(settings: Settings, days: float) -> pd.DataFrame:
    """The last ``days`` of the service's scoring log (hashed keys stay behind)."""
    from scoring.records import scoring_frame

    log = settings.serving_dir / "scores.db"
    if not log.exists():
        return pd.DataFrame()
    frame = scoring_frame(log)
    if frame.empty:
        return frame
    since = frame["ts"].max() - timedelta(days=days)
    return frame[frame["ts"] >= since].reset_index(drop=True)


def drift_report(settings: Settings, *, days: float, events: Path | None, console: Console) -> int:
    """Write the drift report and return the scheduler exit status (0 green, 1 amber, 2 red, 3 none)."""
    from monitoring.drift import drift_features, exit_code, run_drift
    from training.registry import reference_scoring_frame

    if events is not None and not events.exists():
        console.print(f"[red]no such events file[/red] {events}: pass a parquet in the event contract")
        return NOTHING_TO_COMPARE
    with tempfile.TemporaryDirectory() as tmp:
        try:
            reference = reference_scoring_frame(settings.mlflow_tracking_uri, settings.model_name, Path(tmp))
        except Exception as exc:  # no registry, no champion: say what to run
            console.print(
                f"[red]no champion reference[/red] ({type(exc).__name__}): run `promoguard train` "
                "and `promoguard promote` first"
            )
            return NOTHING_TO_COMPARE
    if events is not None:
        from promoguard.offline import score_events

        # Only the batch's last days are compared; the days before are the history its features need.
        with console.status(f"scoring {events.name} offline with the champion"):
            current = score_events(settings, events, days=days)
        current_label = f"offline batch {events.name}, last {days:g} days"
    else:
        current = current_frame(settings, days)
        current_label = f"scoring log, last {days:g} days"
    if current.empty:
        console.print("[yellow]nothing scored yet[/yellow]: send traffic to the service or pass --events")
        return NOTHING_TO_COMPARE
    features = drift_features(reference)
    with console.status(f"comparing {len(current):,} recent attempts with {len(reference):,} reference rows"):
        result, paths = run_drift(
            reference,
            current,
            features,
            settings.reports_dir,
            title="promoguard drift report",
            reference_label="champion test window",
            current_label=current_label,
        )
    for line in result.summary:
        console.print(f"  - {line}")
    code = exit_code(result)
    console.print(f"status [bold]{result.status}[/bold] (exit {code}); report: {paths.html}")
    console.print(f"machine-readable: {paths.json}")
    return code
