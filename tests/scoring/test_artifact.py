"""The model artifact: a real tiny LightGBM model verifies; tampering fails."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from scoring.artifact import ArtifactError, LoadedModel


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
