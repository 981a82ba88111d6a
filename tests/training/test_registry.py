"""The model artifact, MLflow logging and registration, loading, verification and promotion."""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import mlflow
import mlflow.pyfunc
import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient

from scoring.artifact import ArtifactError, LoadedModel, read_manifest, write_artifact
from scoring.batch import feature_matrix
from scoring.policy import DEFAULT_BANDS
from training.calibrate import fit_isotonic
from training.card import model_card
from training.dataset import LABELED_ATTEMPTS
from training.explain import signal_catalog
from training.registry import (
    CHAMPION,
    DESCRIPTION_LIMIT,
    GIT_COMMIT_TAG,
    MODEL_CARD_PATH,
    TrainingDataset,
    artifact_dir,
    load_artifact,
    log_training_run,
    promote,
    psi,
    register,
    run_figures,
    run_model_card,
    source_commit,
)
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

    # A higher PR-AUC does not buy promotion when the replay, caps and rules included, refuses more
    # honest shoppers than the champion does on the same attempts.
    harsher = {"candidate_honest_refused_rate": 0.012, "champion_honest_refused_rate": 0.004}
    gated = promote(store, name, "2", max_score_shift=10.0, replay=harsher, dry_run=True)
    assert not gated.promoted
    assert any("refuses 1.20% of honest shoppers against the champion's 0.40%" in r for r in gated.reasons)
    assert any("beats champion" in r for r in gated.reasons)
    kinder = {"candidate_honest_refused_rate": 0.004, "champion_honest_refused_rate": 0.004}
    assert promote(store, name, "2", max_score_shift=10.0, replay=kinder, dry_run=True).promoted
    # A score alone never refuses, so the model's friction on honest shoppers is verification: gated too.
    busier = {**kinder, "candidate_honest_verified_rate": 0.031, "champion_honest_verified_rate": 0.020}
    checked = promote(store, name, "2", max_score_shift=10.0, replay=busier, dry_run=True)
    assert not checked.promoted
    assert any("sends 3.10% of honest shoppers to verification against the champion's 2.00%" in r
               for r in checked.reasons)
    within = {**busier, "candidate_honest_verified_rate": 0.022}
    assert promote(store, name, "2", max_score_shift=10.0, replay=within, dry_run=True).promoted
    # Verification figures alone are no replay: the refusal gate cannot be skipped.
    verified_only = {k: v for k, v in within.items() if "verified" in k}
    with pytest.raises(KeyError, match="candidate_honest_refused_rate"):
        promote(store, name, "2", max_score_shift=10.0, replay=verified_only, dry_run=True)

    preview = promote(store, name, "2", max_score_shift=10.0, dry_run=True)
    assert preview.promoted, preview.reasons
    client = MlflowClient(tracking_uri=store, registry_uri=store)
    assert str(client.get_model_version_by_alias(name, CHAMPION).version) == "1", "a dry run moves nothing"
    assert "promotion" not in client.get_model_version(name, "2").tags

    better = promote(store, name, "2", max_score_shift=10.0)
    assert better.promoted, better.reasons
    assert better.reasons == preview.reasons
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


@pytest.fixture
def registry_uri(store: str) -> Iterator[str]:
    """``store`` as mlflow's global tracking and registry URI (what ``models:/`` URIs resolve against)."""
    before = mlflow.get_tracking_uri(), mlflow.get_registry_uri()
    mlflow.set_tracking_uri(store)
    mlflow.set_registry_uri(store)
    yield store
    mlflow.set_tracking_uri(before[0])
    mlflow.set_registry_uri(before[1])


def _logged(
    trained: tuple, names: list[str], frame: pd.DataFrame, store: str, tmp_path: Path, **kwargs: Any
) -> tuple[str, Path]:
    split, _ = trained
    model_dir = _artifact(trained, names, tmp_path / "model")
    figure = tmp_path / "pr_curve.png"
    figure.write_bytes(b"\x89PNG\r\n\x1a\n")
    run_id = log_training_run(
        store,
        experiment="pyfunc",
        model_dir=model_dir,
        params={"feature_service": "promo_abuse_v1", "rows.train": len(split.train)},
        metrics={"test": {"pr_auc": 0.5}},
        tables={"patterns": pd.DataFrame({"pattern": ["code_spray"], "recall_verify": [0.5]})},
        figures={"pr_curve": figure},
        test_window=split.test[["request_id", "label"]],
        **kwargs,
    )
    return run_id, model_dir


def test_the_champion_loads_as_a_pyfunc_that_gives_the_calibrated_probability(
    trained: tuple, names: list[str], frame: pd.DataFrame, registry_uri: str, tmp_path: Path
) -> None:
    split, _ = trained
    name = "promo-abuse-pyfunc"
    card = model_card(
        model_name=name, artifact_version="test", feature_service="promo_abuse_v1", params={},
        metrics={"truth_recall_verify_code_spray": 0.8}, tables={},
    )
    run_id, model_dir = _logged(
        trained, names, frame, registry_uri, tmp_path, model_card=card,
        dataset=TrainingDataset.from_split(split, feature_service="promo_abuse_v1", frame=frame),
    )
    version = register(registry_uri, name, run_id)
    client = MlflowClient(tracking_uri=registry_uri, registry_uri=registry_uri)
    client.set_registered_model_alias(name, CHAMPION, version)

    uri = f"models:/{name}@{CHAMPION}"
    pyfunc = mlflow.pyfunc.load_model(uri)
    expected = LoadedModel.from_dir(model_dir).predict_many(feature_matrix(split.test, names))[0]
    got = np.asarray(pyfunc.predict(split.test[names]), dtype=np.float64)
    assert got.shape == (len(split.test),)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-9)
    # Columns in another order, extra columns and integer dtypes are all taken by name.
    shuffled = split.test[[*reversed(names), "label"]].copy()
    np.testing.assert_allclose(np.asarray(pyfunc.predict(shuffled)), expected, rtol=0, atol=1e-9)

    signature = mlflow.models.get_model_info(uri).signature
    assert signature.inputs.input_names() == names
    assert {t.name for t in signature.inputs.input_types()} == {"double"}
    assert signature.outputs.input_names() == ["probability"]

    # The card is a run artifact and the version's description.
    assert client.get_model_version(name, version).description == card
    assert run_model_card(registry_uri, run_id) == card
    assert [p.name for p in run_figures(registry_uri, run_id, tmp_path / "figs")] == ["pr_curve.png"]


def test_the_pyfunc_layout_still_serves_the_artifact_to_the_service_and_to_promotion(
    trained: tuple, names: list[str], frame: pd.DataFrame, store: str, tmp_path: Path
) -> None:
    from serving.model_cache import fetch_champion

    name = "promo-abuse-layout"
    run_id, model_dir = _logged(trained, names, frame, store, tmp_path)
    version = register(store, name, run_id)
    assert promote(store, name, version).reasons == ["first champion"]
    sha = read_manifest(model_dir)["model_sha256"]

    cached = fetch_champion(store, name, tmp_path / "cache")
    assert cached == tmp_path / "cache" / version
    assert LoadedModel.from_dir(cached).manifest["model_sha256"] == sha
    loaded = load_artifact(store, name, CHAMPION, tmp_path / "loaded")
    assert loaded.parent.name == "artifacts" and read_manifest(loaded)["model_sha256"] == sha
    # No card: the version has no description, and the run no figures folder is fine too.
    client = MlflowClient(tracking_uri=store, registry_uri=store)
    assert not client.get_model_version(name, version).description
    assert run_model_card(store, run_id) is None


def test_the_run_records_its_training_dataset_and_source_commit(
    trained: tuple, names: list[str], frame: pd.DataFrame, store: str, tmp_path: Path
) -> None:
    split, _ = trained
    dataset = TrainingDataset.from_split(split, feature_service="promo_abuse_v1", frame=frame)
    assert dataset.rows["train"] == len(split.train) and dataset.windows == split.windows()
    run_id, _ = _logged(trained, names, frame, store, tmp_path, dataset=dataset)
    run = MlflowClient(tracking_uri=store).get_run(run_id)

    (logged,) = run.inputs.dataset_inputs
    assert logged.dataset.name == "promo_abuse_v1"
    tags = {t.key: t.value for t in logged.tags}
    assert tags["mlflow.data.context"] == "training"
    assert tags["rows.test"] == str(len(split.test))
    assert tags["window.label_cutoff"] == split.windows()["label_cutoff"]
    profile = json.loads(logged.dataset.profile)
    assert profile["num_rows"] == len(frame) and profile["rows.calib"] == len(split.calib)
    schema = json.loads(logged.dataset.schema)["mlflow_colspec"]
    assert {c["name"] for c in schema} == {str(c) for c in frame.columns}
    # The same frame gives the same digest; the metadata-only form logs without a frame.
    assert dataset.entity().digest == TrainingDataset.from_split(
        split, feature_service="promo_abuse_v1", frame=frame.copy()
    ).entity().digest
    assert TrainingDataset("promo_abuse_v1").entity().schema is None
    assert "labeled_before_sampling" not in dataset.rows
    # A frame drawn as a sample of more labeled attempts says how many.
    sampled = frame.copy()
    sampled.attrs[LABELED_ATTEMPTS] = len(frame) * 10
    rows = TrainingDataset.from_split(split, feature_service="promo_abuse_v1", frame=sampled).rows
    assert rows["labeled_before_sampling"] == len(frame) * 10

    # Window params the caller did not log are added; the ones it logged are kept as they were.
    assert run.data.params["rows.train"] == str(len(split.train))
    assert run.data.params["window.test_end"] == split.windows()["test_end"]
    commit = source_commit()
    assert run.data.tags.get(GIT_COMMIT_TAG) == commit, "tagged when known, absent otherwise"


def test_source_commit_is_none_outside_a_git_checkout(tmp_path: Path) -> None:
    assert source_commit(tmp_path) is None


def test_a_long_card_is_cut_to_what_the_registry_keeps_and_an_old_layout_still_loads(
    trained: tuple, names: list[str], frame: pd.DataFrame, store: str, tmp_path: Path
) -> None:
    card = "# card\n" + "x" * (2 * DESCRIPTION_LIMIT)
    run_id, model_dir = _logged(trained, names, frame, store, tmp_path, model_card=card)
    version = register(store, "promo-abuse-long-card", run_id)
    client = MlflowClient(tracking_uri=store, registry_uri=store)
    description = client.get_model_version("promo-abuse-long-card", version).description
    assert len(description) <= DESCRIPTION_LIMIT and MODEL_CARD_PATH in description
    # A bare artifact directory (runs logged before the pyfunc wrapper) is its own artifact dir.
    assert artifact_dir(model_dir) == model_dir
    with pytest.raises(ArtifactError, match=r"no manifest\.json"):
        artifact_dir(tmp_path / "figs-none")


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
