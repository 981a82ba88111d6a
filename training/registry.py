"""The MLflow edge of training: run logging, registration, downloading an artifact, and promotion.

The artifact itself (``model.txt`` + ``manifest.json``, written by :func:`scoring.artifact.write_artifact`
and verified by :meth:`scoring.artifact.LoadedModel.from_dir`) is defined in :mod:`scoring`; this
module only moves it in and out of the registry.
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from scoring.artifact import LoadedModel, read_manifest
from scoring.batch import feature_matrix, score_frame
from scoring.calibration import to_score
from training.evaluate import trap_fpr

MODEL_DIR = "model"
TEST_WINDOW_PATH = "evaluation/test_window.parquet"
CHAMPION = "champion"


@dataclass(frozen=True)
class PromotionDecision:
    """Whether the candidate became champion, and why (or why not)."""

    promoted: bool
    reasons: list[str] = field(default_factory=list)
    metrics: dict[str, float] = field(default_factory=dict)


def normalize_tracking_uri(uri: str) -> str:
    """Pin ``postgresql://`` to the psycopg2 driver that is installed.

    SQLAlchemy 2.1 maps a bare ``postgresql://`` to psycopg 3, which this environment does not ship.
    """
    if uri.startswith(("postgresql://", "postgres://")):
        return "postgresql+psycopg2://" + uri.split("://", 1)[1]
    return uri


def _client(tracking_uri: str) -> Any:
    from mlflow.tracking import MlflowClient

    uri = normalize_tracking_uri(tracking_uri)
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def default_artifact_root(tracking_uri: str) -> str | None:
    """For a ``sqlite:///path/mlflow.db`` store, ``path/artifacts`` (so nothing lands in the cwd)."""
    if tracking_uri.startswith("sqlite:///"):
        return (Path(tracking_uri.removeprefix("sqlite:///")).parent / "artifacts").resolve().as_uri()
    return None


def ensure_experiment(tracking_uri: str, name: str, artifact_root: str | None = None) -> str:
    """Experiment id for ``name``, created with an explicit artifact location when new."""
    client = _client(tracking_uri)
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return str(exp.experiment_id)
    root = artifact_root or default_artifact_root(tracking_uri)
    location = f"{root.rstrip('/')}/{name}" if root else None
    return str(client.create_experiment(name, artifact_location=location))


def _flatten(prefix: str, value: Any, out: dict[str, float]) -> None:
    if isinstance(value, Mapping):
        for k, v in value.items():
            _flatten(f"{prefix}.{k}" if prefix else str(k), v, out)
    elif isinstance(value, int | float | np.integer | np.floating) and not isinstance(value, bool):
        fv = float(value)
        if math.isfinite(fv):
            out[prefix] = fv


def flatten_metrics(metrics: Mapping[str, Any]) -> dict[str, float]:
    """Nested metric dicts -> ``a.b.c`` keys with finite floats (MLflow rejects NaN)."""
    out: dict[str, float] = {}
    _flatten("", metrics, out)
    return out


def log_training_run(
    tracking_uri: str,
    *,
    experiment: str,
    model_dir: Path,
    params: Mapping[str, Any],
    metrics: Mapping[str, Any],
    tables: Mapping[str, pd.DataFrame],
    figures: Mapping[str, Path],
    test_window: pd.DataFrame,
    tags: Mapping[str, str] | None = None,
    artifact_root: str | None = None,
    run_name: str | None = None,
) -> str:
    """Log one run (params, flattened metrics, tables, figures, model dir, test window); return its id."""
    client = _client(tracking_uri)
    exp_id = ensure_experiment(tracking_uri, experiment, artifact_root)
    run = client.create_run(exp_id, run_name=run_name, tags=dict(tags or {}))
    run_id = str(run.info.run_id)
    try:
        for k, v in params.items():
            client.log_param(run_id, k, str(v)[:6000])
        from mlflow.entities import Metric

        now = int(datetime.now(UTC).timestamp() * 1000)
        flat = flatten_metrics(metrics)
        batch = [Metric(key=k, value=v, timestamp=now, step=0) for k, v in flat.items()]
        for i in range(0, len(batch), 500):
            client.log_batch(run_id, metrics=batch[i : i + 500])
        with tempfile.TemporaryDirectory() as tmp:
            tdir = Path(tmp)
            for name, table in tables.items():
                path = tdir / f"{name}.csv"
                table.to_csv(path, index=False)
                client.log_artifact(run_id, str(path), "tables")
            window = tdir / Path(TEST_WINDOW_PATH).name
            test_window.to_parquet(window, index=False)
            client.log_artifact(run_id, str(window), str(Path(TEST_WINDOW_PATH).parent))
        for fig in figures.values():
            client.log_artifact(run_id, str(fig), "figures")
        client.log_artifacts(run_id, str(model_dir), MODEL_DIR)
    except Exception:
        client.set_terminated(run_id, "FAILED")
        raise
    client.set_terminated(run_id, "FINISHED")
    return run_id


def register(tracking_uri: str, name: str, run_id: str, *, description: str | None = None) -> str:
    """Register the run's ``model`` directory as a new version of ``name``; return the version."""
    from mlflow.exceptions import MlflowException

    client = _client(tracking_uri)
    try:
        client.create_registered_model(name)
    except MlflowException as exc:
        if "already exists" not in str(exc).lower() and "RESOURCE_ALREADY_EXISTS" not in str(exc):
            raise
    source = f"{client.get_run(run_id).info.artifact_uri.rstrip('/')}/{MODEL_DIR}"
    mv = client.create_model_version(name, source=source, run_id=run_id, description=description)
    return str(mv.version)


def latest_version(tracking_uri: str, name: str) -> str:
    """The newest registered version of ``name``; raise LookupError when there is none."""
    versions = _client(tracking_uri).search_model_versions(f"name='{name}'")
    if not versions:
        raise LookupError(f"no registered versions of {name!r}: run `promoguard train` first")
    return str(max(int(v.version) for v in versions))


def _version(client: Any, name: str, alias_or_version: str | int) -> Any:
    ref = str(alias_or_version)
    if ref.isdigit():
        return client.get_model_version(name, ref)
    return client.get_model_version_by_alias(name, ref)


def _download(tracking_uri: str, run_id: str, path: str, dst: Path) -> Path:
    import mlflow.artifacts

    dst.mkdir(parents=True, exist_ok=True)
    local = mlflow.artifacts.download_artifacts(
        run_id=run_id,
        artifact_path=path,
        dst_path=str(dst),
        tracking_uri=normalize_tracking_uri(tracking_uri),
    )
    return Path(local)


def load_artifact(tracking_uri: str, name: str, alias_or_version: str | int, dst_dir: Path) -> Path:
    """Download a registered version's (or alias's) artifact directory into ``dst_dir``; return its path."""
    mv = _version(_client(tracking_uri), name, alias_or_version)
    return _download(tracking_uri, str(mv.run_id), MODEL_DIR, Path(dst_dir))


def score_with_artifact(model_dir: Path, frame: pd.DataFrame) -> np.ndarray:
    """Calibrated probabilities for ``frame`` with the artifact in ``model_dir`` (its own feature order)."""
    model = LoadedModel.from_dir(model_dir, verify=False)
    return model.predict_many(feature_matrix(frame, model.feature_names), num_threads=2)[0]


def psi(expected_scores: np.ndarray, actual_scores: np.ndarray, bins: int = 10) -> float:
    """Population stability index between two 0-100 score samples (equal-width bins)."""
    edges = np.linspace(0, 100, bins + 1)
    edges[-1] = 100.0001
    e = np.histogram(np.asarray(expected_scores, dtype=np.float64), bins=edges)[0] / max(
        len(expected_scores), 1
    )
    a = np.histogram(np.asarray(actual_scores, dtype=np.float64), bins=edges)[0] / max(len(actual_scores), 1)
    e, a = np.clip(e, 1e-4, None), np.clip(a, 1e-4, None)
    return float(np.sum((a - e) * np.log(a / e)))


def promote(
    tracking_uri: str,
    name: str,
    candidate_version: str | int,
    *,
    max_score_shift: float = 0.25,
    min_pr_auc_gain: float = 0.0,
    trap_fpr_tolerance: float = 0.005,
) -> PromotionDecision:
    """Move alias ``champion`` to the candidate only if it beats the champion on the candidate's test window.

    Both models score the same stored test window: the candidate must have a higher PR-AUC (by more than
    ``min_pr_auc_gain``), a trap false-positive rate no worse than the champion's (+ tolerance), and a
    score distribution shift (PSI) below ``max_score_shift``. No champion yet: promoted as first champion.
    """
    from mlflow.exceptions import MlflowException
    from sklearn.metrics import average_precision_score

    client = _client(tracking_uri)
    cand = _version(client, name, candidate_version)
    try:
        champ = client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException:
        champ = None
    if champ is None:
        client.set_registered_model_alias(name, CHAMPION, str(cand.version))
        return PromotionDecision(True, ["first champion"])
    if str(champ.version) == str(cand.version):
        return PromotionDecision(False, [f"version {cand.version} is already the champion"])
    with tempfile.TemporaryDirectory() as tmp:
        tdir = Path(tmp)
        cand_dir = _download(tracking_uri, str(cand.run_id), MODEL_DIR, tdir / "candidate")
        champ_dir = _download(tracking_uri, str(champ.run_id), MODEL_DIR, tdir / "champion")
        window = pd.read_parquet(_download(tracking_uri, str(cand.run_id), TEST_WINDOW_PATH, tdir / "window"))
        LoadedModel.from_dir(cand_dir)  # verified: sha256 and golden rows
        p_cand = score_with_artifact(cand_dir, window)
        p_champ = score_with_artifact(champ_dir, window)
        th_cand = read_manifest(cand_dir)["thresholds"]
        th_champ = read_manifest(champ_dir)["thresholds"]
    y = window["label"].to_numpy()
    s_cand, s_champ = to_score(p_cand), to_score(p_champ)
    m = {
        "candidate_pr_auc": float(average_precision_score(y, p_cand)),
        "champion_pr_auc": float(average_precision_score(y, p_champ)),
        "candidate_trap_fpr": trap_fpr(window, s_cand, th_cand),
        "champion_trap_fpr": trap_fpr(window, s_champ, th_champ),
        "score_psi": psi(s_champ, s_cand),
    }
    reasons: list[str] = []
    ok = True
    if m["candidate_pr_auc"] <= m["champion_pr_auc"] + min_pr_auc_gain:
        ok = False
        reasons.append(
            f"PR-AUC {m['candidate_pr_auc']:.4f} does not beat champion v{champ.version} "
            f"{m['champion_pr_auc']:.4f} on the same test window"
        )
    else:
        reasons.append(f"PR-AUC {m['candidate_pr_auc']:.4f} beats champion {m['champion_pr_auc']:.4f}")
    traps_known = not (math.isnan(m["candidate_trap_fpr"]) or math.isnan(m["champion_trap_fpr"]))
    if traps_known and m["candidate_trap_fpr"] > m["champion_trap_fpr"] + trap_fpr_tolerance:
        ok = False
        reasons.append(
            f"trap false-positive rate {m['candidate_trap_fpr']:.4f} "
            f"is worse than {m['champion_trap_fpr']:.4f}"
        )
    if m["score_psi"] >= max_score_shift:
        ok = False
        reasons.append(f"score shift PSI {m['score_psi']:.3f} >= max_score_shift {max_score_shift}")
    if ok:
        client.set_registered_model_alias(name, CHAMPION, str(cand.version))
    client.set_model_version_tag(name, str(cand.version), "promotion", "; ".join(reasons)[:5000])
    return PromotionDecision(ok, reasons, m)


def reference_scoring_frame(
    tracking_uri: str, name: str, dst_dir: Path, *, top: int = 3
) -> tuple[LoadedModel, pd.DataFrame]:
    """The champion and its test window scored by it: the "then" side of a drift report.

    The model comes back too, so a caller reads its manifest without downloading the artifact again.
    """
    model = LoadedModel.from_dir(load_artifact(tracking_uri, name, CHAMPION, Path(dst_dir)))
    mv = _version(_client(tracking_uri), name, CHAMPION)
    window_path = _download(tracking_uri, str(mv.run_id), TEST_WINDOW_PATH, Path(dst_dir) / "evaluation")
    return model, score_frame(model, pd.read_parquet(window_path), top=top)
