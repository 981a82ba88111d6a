"""`promoguard drift` through the command line: the live log path, and an exit code for every ending.

The champion's reference is replaced by a synthetic one (the registry is the only edge not exercised
here; the end-to-end tests use the real one); the scoring log is a real SQLite log written through
:class:`scoring.records.Records`, read by the command exactly as in production.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

import promoguard.drift as edge
from monitoring.drift import ExitCode
from monitoring.report import Reference
from promoguard.cli import app
from scoring.records import Records, ScoreRecord
from tests.monitoring.frames import DISPLAY_NAMES, FLAGS, SOME_FEATURES

LOGGED = tuple(f for f in SOME_FEATURES if f not in FLAGS)


def _record(row: pd.Series) -> ScoreRecord:
    signals = [{"name": name, "points": 10 - i} for i, name in enumerate(row["top_signals"])]
    features = {name: float(row[name]) for name in LOGGED}
    ts = row["ts"].floor("us").to_pydatetime()
    return ScoreRecord(
        str(row["request_id"]), "sha", ts, str(row["promo_code"]), str(row["promo_type"]), int(row["score"]),
        str(row["band"]), str(row["decision"]), row["fallback"], row["fallback"] is not None, "v1", 3.0,
        signals, features, {"device_key": "hashed"}, "rules-v1", {"request_id": str(row["request_id"])},
    )  # fmt: skip


def write_log(root: Path, frame: pd.DataFrame, *, feedback: int = 0) -> Path:
    """The service's scoring log under ``root`` with these requests, and feedback for the first few."""
    path = root / "data" / "serving" / "scores.db"
    records = Records(path)
    try:
        for _, row in frame.iterrows():
            records.append(_record(row))
        for _, row in frame.head(feedback).iterrows():
            label = "abuse" if row["score"] >= 60 else "legit"
            records.add_feedback(str(row["request_id"]), label, "manual_review", datetime.now(UTC))
    finally:
        records.close()
    return path


def drift(root: Path, *args: str) -> tuple[int, str]:
    """Run `promoguard drift --root ROOT ARGS`; its exit code and output."""
    result = CliRunner().invoke(app, ["drift", "--root", str(root), *args], catch_exceptions=False)
    return result.exit_code, result.output


@pytest.fixture
def champion(reference: pd.DataFrame, monkeypatch: pytest.MonkeyPatch) -> Iterator[Reference]:
    """A champion whose reference is the synthetic reference window."""
    ref = Reference(reference, SOME_FEATURES, DISPLAY_NAMES, "promo-abuse-test")
    monkeypatch.setattr(edge, "champion_reference", lambda settings, dst: ref)
    yield ref


@pytest.mark.parametrize("feedback", [0, 40], ids=["no labels yet", "with feedback"])
def test_drift_on_the_live_scoring_log_writes_the_report_and_exits_with_its_status(
    champion: Reference, resample: pd.DataFrame, tmp_path: Path, feedback: int
) -> None:
    write_log(tmp_path, resample.head(400), feedback=feedback)

    code, output = drift(tmp_path)

    report = json.loads((tmp_path / "data" / "reports" / "latest.json").read_text(encoding="utf-8"))
    assert code == report["exit_code"] == ExitCode.GREEN, output
    assert report["n_current"] == 400
    assert report["current_label"] == "scoring log, last 7 days"
    assert {n["name"] for n in report["not_logged"]} == set(FLAGS)
    assert report["metrics"]["labels"]["by_pattern"][0]["labeled_current"] == feedback
    assert "status green (exit 0)" in output


def test_a_window_that_moved_exits_red(champion: Reference, bot_farm: pd.DataFrame, tmp_path: Path) -> None:
    frame = bot_farm.head(600).assign(top_signals=lambda f: [json.loads(s) for s in f["top_signals"]])
    write_log(tmp_path, frame)

    code, output = drift(tmp_path)

    assert code == ExitCode.RED, output
    assert "the score distribution shifted" in output


def test_no_champion_is_nothing_to_compare(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import RESOURCE_DOES_NOT_EXIST

    def no_model(*args: object, **kwargs: object) -> object:
        raise MlflowException("Registered Model with name=promo-abuse not found", RESOURCE_DOES_NOT_EXIST)

    monkeypatch.setattr("training.registry.reference_scoring_frame", no_model)

    code, output = drift(tmp_path)

    assert code == ExitCode.NOTHING_TO_COMPARE, output
    assert "nothing to compare" in output and "promoguard promote" in output


def test_nothing_scored_yet_is_nothing_to_compare(champion: Reference, tmp_path: Path) -> None:
    code, output = drift(tmp_path)

    assert code == ExitCode.NOTHING_TO_COMPARE, output
    assert "nothing scored" in output
    assert not (tmp_path / "data" / "reports").exists()


def test_a_missing_events_file_fails_with_its_own_code(champion: Reference, tmp_path: Path) -> None:
    code, output = drift(tmp_path, "--events", str(tmp_path / "no_such_batch.parquet"))

    assert code == ExitCode.FAILED, output
    assert "no_such_batch.parquet" in output.replace("\n", "")


def test_a_window_of_no_days_fails_with_its_own_code(champion: Reference, tmp_path: Path) -> None:
    code, output = drift(tmp_path, "--days", "0")

    assert code == ExitCode.FAILED, output
    assert "days: expected a positive number of days" in output.replace("\n", " ")


def test_an_unreadable_scoring_log_fails_with_its_own_code(champion: Reference, tmp_path: Path) -> None:
    log = tmp_path / "data" / "serving" / "scores.db"
    log.parent.mkdir(parents=True)
    log.write_bytes(b"this is not a SQLite database" * 100)

    code, output = drift(tmp_path)

    assert code == ExitCode.FAILED, output
    assert "drift failed" in output


def test_a_registry_that_breaks_fails_rather_than_reporting_amber(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(settings: object, dst: Path) -> Reference:
        raise OSError("disk I/O error")

    monkeypatch.setattr(edge, "champion_reference", broken)

    code, output = drift(tmp_path)

    assert code == ExitCode.FAILED, output
    assert "OSError" in output and "disk I/O error" in output


def test_a_bad_configuration_fails_rather_than_reporting_red(
    champion: Reference, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PROMOGUARD_NO_SUCH_SETTING", "1")

    code, output = drift(tmp_path)

    assert code == ExitCode.FAILED, output
