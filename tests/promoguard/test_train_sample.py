"""``promoguard train --max-rows``: the sample is drawn before the retrieval, and the run says so."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pandas as pd
import pytest
from typer.testing import CliRunner

import training.dataset
import training.run
from promoguard.cli import app


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """A root with the inputs `train` checks for: ten attempts, all labeled."""
    (tmp_path / "data" / "features").mkdir(parents=True)
    (tmp_path / "data" / "raw").mkdir(parents=True)
    ids = [f"r{i}" for i in range(10)]
    pd.DataFrame({"request_id": ids}).to_parquet(tmp_path / "data" / "features" / "keys.parquet")
    pd.DataFrame({"request_id": ids}).to_parquet(tmp_path / "data" / "raw" / "labels.parquet")
    return tmp_path


def test_train_draws_max_rows_before_the_retrieval_and_says_from_how_many(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    asked: list[int | None] = []
    trained: list[pd.DataFrame] = []

    def assemble(keys: pd.DataFrame, labels: pd.DataFrame, historical: Any, truth: Any, **kw: Any) -> Any:
        asked.append(kw.get("max_rows"))
        frame = pd.DataFrame({"request_id": keys["request_id"].head(kw["max_rows"] or len(keys))})
        frame.attrs[training.dataset.LABELED_ATTEMPTS] = len(keys)
        return frame

    def train_model(frame: pd.DataFrame, **kwargs: Any) -> Any:
        trained.append(frame)
        empty = pd.DataFrame({"-": []})
        return SimpleNamespace(
            run_id="run", model_version=None, comparison=empty, patterns=empty, traps=empty, evasion=empty,
            timings={"train": 0.1},
        )

    monkeypatch.setattr(training.dataset, "assemble_training_frame", assemble)
    monkeypatch.setattr(training.run, "train_model", train_model)
    args = ["train", "--root", str(root), "--presume-legit-after", "0", "--no-replay"]
    result = CliRunner().invoke(app, [*args, "--max-rows", "4"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert asked == [4] and len(trained[-1]) == 4
    assert "training frame: 4 labeled attempts (a uniform sample of 10)" in result.output
    result = CliRunner().invoke(app, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert asked[-1] is None and "training frame: 10 labeled attempts in" in result.output
    refused = CliRunner().invoke(app, [*args, "--max-rows", "0"])
    assert refused.exit_code == 2 and "--max-rows" in refused.output
