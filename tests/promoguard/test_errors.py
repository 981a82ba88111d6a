"""An operator's failures end a command with one line naming the file or variable, and their own exit code."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from promoguard.cli import app
from promoguard.errors import ExitCode, OperatorError, explain, one_line


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("PROMOGUARD_ENGINE", "PROMOGUARD_STATE_URL", "PROMOGUARD_ROOT", "PROMOGUARD_MLFLOW_URI"):
        monkeypatch.delenv(name, raising=False)


def _fails(args: list[str], code: ExitCode, *named: str) -> str:
    result = CliRunner().invoke(app, args)
    assert result.exit_code == code, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, result.output
    assert "Traceback" not in result.output
    for name in named:
        assert name in errors[0]
    return errors[0]


def test_a_bad_variable_is_named_with_the_values_it_may_take(
    tmp_path: Path, clean_env: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PROMOGUARD_ENGINE", "bogus")
    _fails(["features", "build", "--root", str(tmp_path)], ExitCode.CONFIG,
           "PROMOGUARD_ENGINE='bogus'", "numpy, duckdb, spark")


def test_a_truncated_parquet_file_is_named(tmp_path: Path, clean_env: None) -> None:
    raw = tmp_path / "data" / "raw"
    raw.mkdir(parents=True)
    pd.DataFrame({"request_id": [f"r{i}" for i in range(500)]}).to_parquet(raw / "events.parquet")
    pd.DataFrame({"request_id": ["r1"]}).to_parquet(raw / "labels.parquet")
    data = (raw / "events.parquet").read_bytes()
    (raw / "events.parquet").write_bytes(data[: len(data) // 2])
    _fails(["features", "build", "--root", str(tmp_path)], ExitCode.BAD_INPUT,
           str(raw / "events.parquet"), "not a readable parquet file")


def test_a_missing_input_and_a_missing_feature_registry_are_named_with_the_command_that_makes_them(
    tmp_path: Path, clean_env: None
) -> None:
    _fails(["features", "build", "--root", str(tmp_path)], ExitCode.MISSING_INPUT,
           "events.parquet", "promoguard simulate")
    features = tmp_path / "data" / "features"
    features.mkdir(parents=True)
    pd.DataFrame({"ts": pd.to_datetime(["2026-11-01T00:00:00Z"])}).to_parquet(features / "keys.parquet")
    _fails(["features", "materialize", "--root", str(tmp_path)], ExitCode.MISSING_INPUT,
           "registry.db", "promoguard features apply")


def test_an_empty_model_registry_says_which_model_is_missing(tmp_path: Path, clean_env: None) -> None:
    _fails(["promote", "--root", str(tmp_path)], ExitCode.NO_MODEL, "promo-abuse", "promoguard train")


def test_a_state_database_that_does_not_answer_is_its_own_exit_code(
    tmp_path: Path, clean_env: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PROMOGUARD_STATE_URL", "postgresql://postgres@127.0.0.1:1/test")
    _fails(["campaign", "show", "--root", str(tmp_path)], ExitCode.UNAVAILABLE, "OperationalError")


def test_a_bug_is_not_dressed_up_as_an_operator_error() -> None:
    assert explain(KeyError("x")) is None
    assert explain(OperatorError("m", ExitCode.CONFIG)) is not None
    assert one_line("a\n  b\tc") == "a b c"
