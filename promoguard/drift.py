"""`promoguard drift`: the edges of a drift run (MLflow, the scoring log, offline scoring, the console).

Everything between the two sides and the exit code is :mod:`monitoring.report`. This module fetches the
champion's reference (its scored test window and its manifest), reads the service's scoring log or
scores a batch of events offline, prints the findings and turns failures into exit codes of their own
(:class:`monitoring.drift.ExitCode`): 0 green, 1 amber, 2 red, 3 nothing to compare (no champion yet,
nothing scored in the window), 4 failed (bad input, unreadable files, any other error). A failed run
never exits 1, which a scheduler would read as amber.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import pandas as pd
from rich.console import Console

from monitoring.drift import ExitCode
from monitoring.report import DriftOutcome, Reference, check_days, drift_outcome, log_window
from promoguard.settings import Settings

#: MLflow error codes that mean "there is no champion (yet)", as opposed to a registry that failed.
_NOT_FOUND = frozenset({"RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND"})


class NoChampion(LookupError):
    """The registry has no champion to compare with."""


def champion_reference(settings: Settings, dst: Path) -> Reference:
    """The champion's test window scored by the champion, with its manifest's inputs and signal names.

    Raises :class:`NoChampion` when the registry has no such model or alias; other errors propagate.
    """
    from mlflow.exceptions import MlflowException

    from monitoring.report import reference_from_manifest
    from training.registry import CHAMPION, reference_scoring_frame

    uri, name = settings.mlflow_tracking_uri, settings.model_name
    try:
        model, frame = reference_scoring_frame(uri, name, dst)
    except MlflowException as exc:
        if exc.error_code in _NOT_FOUND:
            raise NoChampion(f"no {CHAMPION} for {name!r}: {exc.message}") from exc
        raise
    # The manifest names the model's inputs and their signals.
    return reference_from_manifest(frame, model.manifest)


def scoring_log(settings: Settings) -> pd.DataFrame:
    """The service's whole scoring log as a scoring frame (hashed keys stay behind); empty when none."""
    from scoring.records import scoring_frame

    if settings.state_url:
        # The replicas' shared database holds the log.
        shared: pd.DataFrame = scoring_frame(settings.state_url)
        return shared
    log = settings.serving_dir / "scores.db"
    if not log.exists():
        return pd.DataFrame()
    frame: pd.DataFrame = scoring_frame(log)
    return frame


def _current_side(
    settings: Settings, days: float, events: Path | None, console: Console
) -> tuple[pd.DataFrame, str]:
    if events is None:
        return log_window(scoring_log(settings), days), f"scoring log, last {days:g} days"
    from promoguard.offline import score_events

    # Only the batch's last days are compared; the days before are the history its features need.
    with console.status(f"scoring {events.name} offline with the champion"):
        current = score_events(settings, events, days=days)
    return current, f"offline batch {events.name}, last {days:g} days"


def _run(settings: Settings, days: float, events: Path | None, console: Console) -> DriftOutcome:
    check_days(days)
    if events is not None and not events.exists():
        raise FileNotFoundError(f"no such events file {events}: pass a parquet in the event contract")
    with tempfile.TemporaryDirectory() as tmp:
        reference = champion_reference(settings, Path(tmp))
    current, label = _current_side(settings, days, events, console)
    with console.status(
        f"comparing {len(current):,} recent attempts with {len(reference.frame):,} reference rows"
    ):
        return drift_outcome(reference, current, settings.reports_dir, current_label=label)


def _print(outcome: DriftOutcome, console: Console) -> None:
    if outcome.result is None or outcome.paths is None:
        console.print(f"[yellow]nothing to compare[/yellow]: {outcome.message}")
        return
    for line in outcome.result.summary:
        console.print(f"  - {line}")
    for line in outcome.result.notes:
        console.print(f"    [dim]{line}[/dim]")
    console.print(f"{outcome.message}; report: {outcome.paths.html}")
    console.print(f"machine-readable: {outcome.paths.json}")


def drift_report(settings: Settings, *, days: float, events: Path | None, console: Console) -> int:
    """Write the drift report and return its exit code (see the module docstring for the codes)."""
    try:
        outcome = _run(settings, days, events, console)
    except NoChampion as exc:
        console.print(
            f"[yellow]nothing to compare[/yellow]: {exc}; run `promoguard train` and `promoguard promote`"
        )
        return int(ExitCode.NOTHING_TO_COMPARE)
    except Exception as exc:  # every failure, whatever its kind, must not exit 1 (amber) or 2 (red)
        console.print(f"[red]drift failed[/red] ({type(exc).__name__}): {exc}")
        return int(ExitCode.FAILED)
    _print(outcome, console)
    return int(outcome.code)
