"""PROMOGUARD_MODEL_NAME is one name for train, promote and serve.

Before the settings were unified, ``promoguard train`` registered the default name whatever the
variable said, while the service asked the registry for the variable's name and silently answered
every request from the rules. Here the real commands train and promote into a throwaway SQLite
registry (training itself replaced by logging the tiny test artifact, registered under the name the
command passes), and the service's own model loader must find that champion under the configured name.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pandas as pd
import pytest
from typer.testing import CliRunner

import promoguard.demo
import training.dataset
import training.run
from promoguard.cli import app
from promoguard.demo import service_env
from promoguard.settings import Settings
from serving.service import load_model

NAME = "promo-abuse-eu"


def _registered_names(settings: Settings) -> set[str]:
    from mlflow import MlflowClient

    uri = settings.mlflow_tracking_uri
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    return {m.name for m in client.search_registered_models()}


@pytest.fixture
def quick_training(artifact_dir: Path, monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """Stand in for Feast's frame and the booster: log the tiny test artifact, register it as training does.

    Returns the keyword arguments the command passed to ``train_model``.
    """
    from training.registry import MODEL_DIR, ensure_experiment, register

    monkeypatch.setattr(training.dataset, "assemble_training_frame", lambda *args, **kwargs: pd.DataFrame())
    calls: list[dict[str, Any]] = []

    def train_model(frame: pd.DataFrame, **kwargs: Any) -> Any:
        from mlflow import MlflowClient

        calls.append(kwargs)
        uri = kwargs["tracking_uri"]
        client = MlflowClient(tracking_uri=uri, registry_uri=uri)
        run_id = client.create_run(ensure_experiment(uri, "promo-abuse")).info.run_id
        client.log_artifacts(run_id, str(artifact_dir), MODEL_DIR)
        client.set_terminated(run_id)
        empty = pd.DataFrame({"-": []})
        return SimpleNamespace(
            run_id=run_id, model_version=register(uri, kwargs["model_name"], run_id),
            comparison=empty, patterns=empty, traps=empty, evasion=empty, timings={"train": 0.1},
        )

    monkeypatch.setattr(training.run, "train_model", train_model)
    return calls


def _invoke(*args: str) -> str:
    result = CliRunner().invoke(app, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


@pytest.mark.slow
def test_train_promote_and_the_service_loader_all_use_the_configured_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, quick_training: list[dict[str, Any]]
) -> None:
    # The inputs the command checks for; the frame itself comes from the fixture.
    (tmp_path / "data" / "features").mkdir(parents=True)
    (tmp_path / "data" / "raw").mkdir(parents=True)
    pd.DataFrame({"request_id": ["r1"]}).to_parquet(tmp_path / "data" / "features" / "keys.parquet")
    pd.DataFrame({"request_id": ["r1"]}).to_parquet(tmp_path / "data" / "raw" / "labels.parquet")
    monkeypatch.setenv("PROMOGUARD_MODEL_NAME", NAME)
    root = str(tmp_path)

    trained = _invoke("train", "--root", root, "--presume-legit-after", "0", "--no-replay")
    assert f"registered {NAME} version 1" in trained
    assert [call["model_name"] for call in quick_training] == [NAME]
    settings = Settings.from_env(root=tmp_path)
    assert settings.model_name == NAME and _registered_names(settings) == {NAME}

    promoted = _invoke("promote", "--root", root)
    assert f"{NAME} version 1" in promoted and "not promoted" not in promoted

    model = load_model(settings)
    assert model is not None
    assert (settings.serving_dir / "models" / NAME / "1" / "manifest.json").is_file()
    # The default name has no champion in this registry: nothing cached for it may stand in.
    assert load_model(Settings.from_env({}, root=tmp_path)) is None


def test_serve_hands_the_configured_name_to_the_service_process(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    started: list[Settings] = []

    def fake_run_service(settings: Settings, **kwargs: Any) -> int:
        started.append(settings)
        return 0

    monkeypatch.setattr(promoguard.demo, "run_service", fake_run_service)
    monkeypatch.setenv("PROMOGUARD_MODEL_NAME", NAME)
    _invoke("serve", "--root", str(tmp_path))
    assert [s.model_name for s in started] == [NAME]
    env = service_env(started[0])
    assert env["PROMOGUARD_MODEL_NAME"] == NAME
    assert env["PROMOGUARD_MLFLOW_URI"] == started[0].mlflow_tracking_uri
    # What the service process builds from that environment names the same model.
    assert Settings.from_env(env).model_name == NAME


def test_a_bad_environment_stops_a_command_with_the_variable_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PROMOGUARD_MODEL_NAM", NAME)
    result = CliRunner().invoke(app, ["promote", "--root", str(tmp_path)])
    assert result.exit_code == 2
    assert "PROMOGUARD_MODEL_NAM: not a promoguard setting" in result.output
    assert not (tmp_path / "mlflow").exists()
