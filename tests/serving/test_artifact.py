"""The model artifact: a real tiny LightGBM model verifies; tampering fails; the cache falls back."""

from __future__ import annotations

import json
import shutil
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from serving.artifact import ArtifactError, LoadedModel, band_for, fetch_champion


def test_real_artifact_verifies_and_predicts(artifact_dir: Path) -> None:
    model = LoadedModel.from_dir(artifact_dir)
    assert model.version == "7"
    assert model.verify_golden() == 100
    raw, prob, calibrated, score = model.predict(np.array([5.0, 4.0, 2.0, 1.0]))
    assert 0 <= score <= 100 and 0 <= calibrated <= 1 and 0 < prob < 1
    low = model.predict(np.array([0.0, 0.0, 0.0, 0.0]))
    assert low[0] < raw


def test_contributions_sum_to_the_raw_margin(artifact_dir: Path) -> None:
    model = LoadedModel.from_dir(artifact_dir)
    x = np.array([3.0, np.nan, 1.0, 0.0])
    contrib = model.contributions(x)
    assert contrib.shape == (5,)
    assert contrib.sum() == pytest.approx(model.predict(x)[0], abs=1e-9)


def test_one_shap_pass_scores_every_golden_row_like_predict(artifact_dir: Path) -> None:
    model = LoadedModel.from_dir(artifact_dir)
    manifest = json.loads((artifact_dir / "manifest.json").read_text())
    for row in manifest["golden"]:
        x = np.array([np.nan if v is None else v for v in row["x"]], dtype=np.float64)
        score, contrib = model.explain(x)
        assert score == model.predict(x)[3] == row["score"]
        assert np.array_equal(contrib, model.contributions(x))


def test_tampered_model_file_is_refused(artifact_dir: Path, tmp_path: Path) -> None:
    copy = Path(shutil.copytree(artifact_dir, tmp_path / "m"))
    text = (copy / "model.txt").read_text()
    (copy / "model.txt").write_text(text.replace("leaf_value=", "leaf_value=0", 1))
    with pytest.raises(ArtifactError, match="sha256"):
        LoadedModel.from_dir(copy)


def test_golden_rows_that_do_not_match_are_refused(artifact_dir: Path, tmp_path: Path) -> None:
    copy = Path(shutil.copytree(artifact_dir, tmp_path / "m"))
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["golden"][3]["raw"] += 0.01
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match="golden row 3"):
        LoadedModel.from_dir(copy)


def test_missing_files_are_named(tmp_path: Path) -> None:
    with pytest.raises(ArtifactError, match=r"model\.txt is missing"):
        LoadedModel.from_dir(tmp_path)


def test_bands_follow_lower_bounds() -> None:
    bands = {"clean": 0, "low": 10, "medium": 30, "high": 60}
    assert [band_for(s, bands) for s in (0, 9, 10, 29, 30, 59, 60, 100)] == [
        "clean", "clean", "low", "low", "medium", "medium", "high", "high"]


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
