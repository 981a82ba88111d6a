"""The model artifact, MLflow logging and registration, loading, verification and promotion."""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from scoring.artifact import ArtifactError, LoadedModel, read_manifest, write_artifact
from scoring.policy import DEFAULT_BANDS
from training.calibrate import fit_isotonic
from training.explain import signal_catalog
from training.registry import load_artifact, promote, psi
from training.run import train_model
from training.train import TrainParams, matrix, predict_proba

SMALL = TrainParams(max_rounds=60)
WINDOWS = {"test_days": 14, "valid_days": 10, "calib_days": 14, "gap_days": 7}


def _rules(frame: pd.DataFrame) -> np.ndarray:
    """A transparent rule set: datacenter IPs and aliases add fixed points."""
    return np.asarray(40 * frame["ip_is_datacenter"] + 30 * frame["email_is_alias"], dtype=np.float64)


def _artifact(trained: tuple, names: list[str], dst: Path) -> Path:
    split, booster = trained
    cal = fit_isotonic(predict_proba(booster, matrix(split.calib, names)), split.calib["label"].to_numpy())
    return write_artifact(
        dst,
        booster,
        feature_names=names,
        calibrator=cal,
        bands=DEFAULT_BANDS,
        thresholds={"default": {"watch": 30, "verify": 60, "refuse": 85}},
        signals=signal_catalog(names),
        golden_x=matrix(split.test, names),
        model_version="test",
        feature_service="promo_abuse_v1",
    )


def test_artifact_follows_the_contract_and_reproduces_its_golden_predictions(
    trained: tuple, names: list[str], tmp_path: Path
) -> None:
    model_dir = _artifact(trained, names, tmp_path / "model")
    assert sorted(p.name for p in model_dir.iterdir()) == ["manifest.json", "model.txt"]
    manifest = read_manifest(model_dir)
    assert manifest["feature_names"] == names and manifest["feature_service"] == "promo_abuse_v1"
    assert len(manifest["golden"]) == 100 and set(manifest["signals"]) == set(names)
    assert manifest["calibrator"]["kind"] == "isotonic"
    assert set(manifest["golden"][0]) >= {"x", "raw", "probability", "score"}
    assert any(g["x"][i] is None for g in manifest["golden"] for i in range(len(names)))
    LoadedModel.from_dir(model_dir)


def test_a_tampered_model_file_fails_verification(trained: tuple, names: list[str], tmp_path: Path) -> None:
    model_dir = _artifact(trained, names, tmp_path / "model")
    text = (model_dir / "model.txt").read_text()
    (model_dir / "model.txt").write_text(text.replace("shrinkage=", "shrinkage=0", 1))
    with pytest.raises(ArtifactError, match="sha256"):
        LoadedModel.from_dir(model_dir)


def test_a_golden_mismatch_fails_verification_even_with_a_matching_hash(
    trained: tuple, names: list[str], tmp_path: Path
) -> None:
    model_dir = _artifact(trained, names, tmp_path / "model")
    manifest = json.loads((model_dir / "manifest.json").read_text())
    manifest["golden"][3]["raw"] += 1e-12
    (model_dir / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match="golden row 3"):
        LoadedModel.from_dir(model_dir)


def test_psi_is_zero_for_identical_scores_and_grows_with_shift() -> None:
    rng = np.random.default_rng(0)
    a = rng.integers(0, 40, 5000)
    assert psi(a, a) == pytest.approx(0.0)
    assert psi(a, a + 30) > psi(a, a + 5) > 0.0


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A throwaway sqlite tracking store; artifacts land beside it."""
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"


def test_train_log_register_load_and_promote(frame: pd.DataFrame, store: str, tmp_path: Path) -> None:
    name = "promo-abuse-test"
    few = ["account_stats__first_seen_days", "code_stats__hours_since_first_use"]
    crippled = train_model(
        frame, tracking_uri=store, model_name=name, feature_names=few, params=SMALL, validate=False, **WINDOWS
    )
    assert crippled.model_version == "1"
    first = promote(store, name, "1", max_score_shift=10.0)
    assert first.promoted and first.reasons == ["first champion"]

    full = train_model(frame, tracking_uri=store, model_name=name, baseline=_rules, params=SMALL, **WINDOWS)
    assert full.model_version == "2"
    assert {"model", "logistic_regression", "rules"} == set(full.comparison["model"])
    assert {"welcome_cycling", "code_spray"} <= set(full.patterns["pattern"])
    assert full.metrics["test.pr_auc"] > crippled.metrics["test.pr_auc"]

    loaded = load_artifact(store, name, "2", tmp_path / "v2")
    LoadedModel.from_dir(loaded)
    manifest = read_manifest(loaded)
    assert manifest["feature_names"] == full.booster.feature_name()
    assert manifest["thresholds"] == full.thresholds

    better = promote(store, name, "2", max_score_shift=10.0)
    assert better.promoted, better.reasons
    assert (
        read_manifest(load_artifact(store, name, "champion", tmp_path / "champ"))["model_sha256"]
        == (manifest["model_sha256"])
    )

    again = train_model(
        frame, tracking_uri=store, model_name=name, feature_names=few, params=SMALL, validate=False, **WINDOWS
    )
    worse = promote(store, name, again.model_version or "", max_score_shift=10.0)
    assert not worse.promoted
    assert any("does not beat champion v2" in r for r in worse.reasons)

    shifted = promote(store, name, again.model_version or "", max_score_shift=0.0)
    assert not shifted.promoted and any("PSI" in r for r in shifted.reasons)


def _postgres_up() -> bool:
    try:
        import psycopg2

        psycopg2.connect(
            host="127.0.0.1", port=5432, user="postgres", dbname="test", connect_timeout=2
        ).close()
        return True
    except Exception:
        return False


@pytest.mark.services
def test_log_register_and_load_through_a_postgres_tracking_store(
    trained: tuple, names: list[str], tmp_path: Path
) -> None:
    if not _postgres_up():
        if os.environ.get("PROMOGUARD_REQUIRE_SERVICES") == "1":
            pytest.fail("PostgreSQL at 127.0.0.1:5432 (database test) is required but does not answer")
        pytest.skip("PostgreSQL at 127.0.0.1:5432 (database test) does not answer")
    from training.registry import log_training_run, register

    uri = "postgresql://postgres@127.0.0.1:5432/test"
    tag = uuid.uuid4().hex[:8]
    model_dir = _artifact(trained, names, tmp_path / "model")
    split, _ = trained
    run_id = log_training_run(
        uri,
        experiment=f"promoguard-test-{tag}",
        model_dir=model_dir,
        params={"feature_service": "promo_abuse_v1"},
        metrics={"test": {"pr_auc": 0.5}},
        tables={"empty": pd.DataFrame({"a": [1]})},
        figures={},
        test_window=split.test[["request_id", "label"]],
        artifact_root=(tmp_path / "artifacts").as_uri(),
    )
    version = register(uri, f"promo-abuse-test-{tag}", run_id)
    loaded = load_artifact(uri, f"promo-abuse-test-{tag}", version, tmp_path / "loaded")
    LoadedModel.from_dir(loaded)
    assert read_manifest(loaded)["model_sha256"] == read_manifest(model_dir)["model_sha256"]
