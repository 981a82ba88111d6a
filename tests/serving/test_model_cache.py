"""The service's model cache: falls back to the newest cached version; concurrent workers share one."""

from __future__ import annotations

import shutil
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from scoring.artifact import ArtifactError, LoadedModel
from serving.model_cache import fetch_champion


def test_unreachable_registry_falls_back_to_newest_cached_version(artifact_dir: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    shutil.copytree(artifact_dir, cache / "3")
    shutil.copytree(artifact_dir, cache / "12")
    # A scheme no MLflow store handles fails at once, like a registry that cannot be reached.
    got = fetch_champion("unreachable-registry://nowhere", "promo-abuse", cache)
    assert got == cache / "12"
    with pytest.raises(ArtifactError, match="no cached version"):
        fetch_champion("unreachable-registry://nowhere", "promo-abuse", tmp_path / "empty")


def test_workers_fetching_the_champion_at_once_all_get_the_complete_model(
    artifact_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import mlflow.artifacts
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    exp = client.create_experiment("fetch", artifact_location=(tmp_path / "artifacts").as_uri())
    run_id = client.create_run(exp).info.run_id
    client.log_artifacts(run_id, str(artifact_dir), "model")
    client.create_registered_model("promo-abuse")
    version = client.create_model_version(
        "promo-abuse", source=f"{client.get_run(run_id).info.artifact_uri}/model", run_id=run_id
    ).version
    client.set_registered_model_alias("promo-abuse", "champion", version)

    # Every worker of a service starts at once: hold each download until all have begun theirs.
    workers = 4
    started = threading.Barrier(workers, timeout=30)
    download = mlflow.artifacts.download_artifacts

    def held_download(*args: Any, **kwargs: Any) -> str:
        started.wait()
        return str(download(*args, **kwargs))

    monkeypatch.setattr(mlflow.artifacts, "download_artifacts", held_download)
    cache = tmp_path / "cache"
    with ThreadPoolExecutor(workers) as pool:
        got = list(pool.map(lambda _: fetch_champion(uri, "promo-abuse", cache), range(workers)))
    assert got == [cache / str(version)] * workers
    assert LoadedModel.from_dir(got[0]).version == LoadedModel.from_dir(artifact_dir).version
    assert [p.name for p in cache.iterdir()] == [str(version)]  # no staging folder left behind
