"""The MLflow edge of training: run logging, registration, downloading an artifact, and promotion.

The artifact itself (``model.txt`` + ``manifest.json``, written by :func:`scoring.artifact.write_artifact`
and verified by :meth:`scoring.artifact.LoadedModel.from_dir`) is defined in :mod:`scoring`; this
module only moves it in and out of the registry.

A run's ``model/`` folder is an MLflow pyfunc model (:mod:`training.pyfunc_model`) that carries the
artifact directory as ``model/artifacts/artifact/``; registered versions point at ``model/``, so
``mlflow.pyfunc.load_model("models:/<name>@champion")`` gives calibrated probabilities while the service
(``serving.model_cache``) and :func:`load_artifact` find the artifact by its ``manifest.json``. Runs
logged before the pyfunc wrapper hold the artifact directly in ``model/``; both layouts load.
"""

from __future__ import annotations

import hashlib
import json
import math
import subprocess
import tempfile
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from scoring.artifact import MANIFEST_FILE, ArtifactError, LoadedModel, read_manifest
from scoring.batch import feature_matrix, score_frame
from scoring.calibration import to_score
from training.dataset import sampled_from
from training.evaluate import trap_fpr
from training.split import Split

MODEL_DIR = "model"
TEST_WINDOW_PATH = "evaluation/test_window.parquet"
CHAMPION = "champion"
#: The model card, at the run's artifact root; also the registered version's description.
MODEL_CARD_PATH = "model_card.md"
FIGURES_DIR = "figures"
#: MLflow's SQL stores keep at most 5000 characters of a model version description.
DESCRIPTION_LIMIT = 5000
#: The run tag MLflow's UI shows as the source commit.
GIT_COMMIT_TAG = "mlflow.source.git.commit"
#: The input tag MLflow reads as a dataset's role in a run.
DATASET_CONTEXT_TAG = "mlflow.data.context"
_REPO_ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class PromotionDecision:
    """Whether the candidate became champion, and why (or why not)."""

    promoted: bool
    reasons: list[str] = field(default_factory=list)
    metrics: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class TrainingDataset:
    """What a run trained on, logged as the run's dataset input (context ``training``); never its rows.

    ``name`` is the Feast feature service the frame came through (the dataset's name in MLflow).
    ``frame``, when given, is the training frame: its column schema and a content digest are logged.
    ``rows`` (per window, e.g. train/valid/calib/test, and ``labeled_before_sampling`` when the frame is
    a sample), ``windows`` (window boundaries, ISO strings) and ``label_sources`` (rows per label source)
    go into the dataset's profile and, as ``rows.*`` / ``window.*`` / ``label_source.*``, into the
    input's tags; ``source`` says where the frame came from.
    """

    name: str
    frame: pd.DataFrame | None = None
    rows: Mapping[str, int] = field(default_factory=dict)
    windows: Mapping[str, str] = field(default_factory=dict)
    label_sources: Mapping[str, int] = field(default_factory=dict)
    source: str = "feast point-in-time retrieval"

    @classmethod
    def from_split(
        cls, split: Split, *, feature_service: str, frame: pd.DataFrame | None = None
    ) -> TrainingDataset:
        """Row counts, boundaries and label sources of a time split (``frame``: the frame it split)."""
        parts = {"train": split.train, "valid": split.valid, "calib": split.calib, "test": split.test}
        rows = {name: len(part) for name, part in parts.items()}
        rows["dropped_label_not_yet_known"] = int(split.dropped_unlabeled)
        # A frame drawn as a sample (assemble_training_frame's max_rows) says what it was drawn from.
        drawn_from = None if frame is None else sampled_from(frame)
        if drawn_from is not None:
            rows["labeled_before_sampling"] = drawn_from
        for window in ("valid", "calib"):
            dropped = getattr(split, f"dropped_{window}", None)
            if dropped is not None:
                rows[f"dropped_{window}_label_not_known_at_deploy"] = int(dropped)
        sources: dict[str, int] = {}
        for part in parts.values():
            if "label_source" in part.columns:
                for key, n in part["label_source"].fillna("unknown").astype(str).value_counts().items():
                    sources[str(key)] = sources.get(str(key), 0) + int(n)
        return cls(
            name=feature_service, frame=frame, rows=rows, windows=split.windows(), label_sources=sources
        )

    def params(self) -> dict[str, Any]:
        """``rows.*``, ``window.*`` and ``label_source.*`` as run params (what the model card's Data
        section reads)."""
        out: dict[str, Any] = {f"rows.{k}": v for k, v in self.rows.items()}
        out.update({f"window.{k}": v for k, v in self.windows.items()})
        out.update({f"label_source.{k}": v for k, v in self.label_sources.items()})
        return out

    def tags(self) -> dict[str, str]:
        """Input tags: the context, rows per window, window boundaries and label sources."""
        out = {DATASET_CONTEXT_TAG: "training", **{k: str(v) for k, v in self.params().items()}}
        return {k[:255]: v[:500] for k, v in out.items()}

    def entity(self) -> Any:
        """The ``mlflow.entities.Dataset`` to log: schema and digest of the frame, counts as its profile."""
        from mlflow.data.code_dataset_source import CodeDatasetSource
        from mlflow.entities import Dataset

        profile: dict[str, Any] = {f"rows.{k}": int(v) for k, v in self.rows.items()}
        profile.update({f"label_source.{k}": int(v) for k, v in self.label_sources.items()})
        profile.update({f"window.{k}": str(v) for k, v in self.windows.items()})
        digest = hashlib.sha256(json.dumps([self.name, profile], sort_keys=True).encode())
        schema = None
        if self.frame is not None:
            profile["num_rows"] = len(self.frame)
            profile["num_elements"] = int(self.frame.size)
            schema = json.dumps({"mlflow_colspec": _frame_schema(self.frame).to_dict()})
            digest.update(_content_hash(self.frame))
            digest.update(json.dumps([str(c) for c in self.frame.columns]).encode())
        source = CodeDatasetSource(tags={"feature_service": self.name, "source": self.source})
        return Dataset(
            name=self.name,
            digest=digest.hexdigest()[:16],
            source_type="code",
            source=source.to_json(),
            schema=schema,
            profile=json.dumps(profile),
        )


def _content_hash(frame: pd.DataFrame) -> bytes:
    """Row hashes of every column pandas can hash (a column of lists or dicts counts by its dtype only)."""
    parts = []
    for name in frame.columns:
        try:
            hashed = pd.util.hash_pandas_object(frame[name], index=False, categorize=False)
            parts.append(hashed.to_numpy().tobytes())
        except TypeError:
            parts.append(f"{name}:{frame[name].dtype}:{len(frame)}".encode())
    return hashlib.sha256(b"".join(parts)).digest()


def _frame_schema(frame: pd.DataFrame) -> Any:
    """An MLflow column schema from the dtypes alone (no pass over the values)."""
    from mlflow.types import ColSpec, DataType, Schema

    kinds = {"f": DataType.double, "i": DataType.long, "u": DataType.long, "b": DataType.boolean}
    specs: list[Any] = []
    for name, dtype in frame.dtypes.items():
        kind = "M" if isinstance(dtype, pd.DatetimeTZDtype) else getattr(dtype, "kind", "O")
        dt = DataType.datetime if kind == "M" else kinds.get(kind, DataType.string)
        specs.append(ColSpec(dt, str(name)))
    return Schema(specs)


def source_commit(repo_root: Path = _REPO_ROOT) -> str | None:
    """``git rev-parse HEAD`` of the checkout the code runs from; None without git or a repository."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=repo_root,
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    sha = out.stdout.strip()
    return sha if out.returncode == 0 and len(sha) in (40, 64) else None


def _pip_requirements() -> list[str]:
    from importlib.metadata import PackageNotFoundError, version

    reqs = []
    for dist in ("mlflow", "lightgbm", "numpy", "pandas"):
        try:
            reqs.append(f"{dist}=={version(dist)}")
        except PackageNotFoundError:
            reqs.append(dist)
    return reqs


def save_pyfunc(artifact_dir: Path, dst: Path) -> Path:
    """Write the pyfunc model wrapping ``artifact_dir`` (model.txt + manifest.json) into ``dst``."""
    import mlflow.pyfunc

    from training import pyfunc_model

    manifest = read_manifest(artifact_dir)
    with warnings.catch_warnings():
        # The signature is explicit; an input example would only copy rows of features into the run.
        warnings.filterwarnings("ignore", message=".*input example was not provided", category=UserWarning)
        mlflow.pyfunc.save_model(
            path=str(dst),
            # Logged as code: the file is copied into the model and run on load; nothing is pickled.
            python_model=Path(pyfunc_model.__file__),
            artifacts={pyfunc_model.ARTIFACT_KEY: str(artifact_dir)},
            signature=pyfunc_model.model_signature(manifest["feature_names"]),
            pip_requirements=_pip_requirements(),
            metadata={
                "model_version": str(manifest.get("model_version")),
                "feature_service": str(manifest.get("feature_service")),
                "output": "calibrated probability of abuse per row",
                "needs": "the promoguard package's scoring modules importable",
            },
        )
    return dst


def artifact_dir(path: Path) -> Path:
    """The folder holding ``manifest.json`` in a downloaded ``model/`` (pyfunc-wrapped or bare)."""
    root = Path(path)
    if (root / MANIFEST_FILE).is_file():
        return root
    found = sorted(p.parent for p in root.rglob(MANIFEST_FILE))
    if not found:
        raise ArtifactError(f"{root}: no {MANIFEST_FILE} in the downloaded model")
    return found[0]


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
    model_card: str | None = None,
    dataset: TrainingDataset | None = None,
) -> str:
    """Log one run and return its id.

    Logged: params, flattened metrics, ``tables/*.csv``, ``figures/*``, the test window, and ``model/``:
    the pyfunc model wrapping the artifact directory ``model_dir``. ``model_card`` (markdown) goes to
    ``model_card.md`` (and becomes the description of a version :func:`register` makes from the run);
    ``dataset`` is logged as the run's training dataset input, its row counts, windows and label sources
    also as params where ``params`` lacks them. The source commit is tagged when the code runs from a
    git checkout.
    """
    client = _client(tracking_uri)
    exp_id = ensure_experiment(tracking_uri, experiment, artifact_root)
    run_tags = dict(tags or {})
    if GIT_COMMIT_TAG not in run_tags:
        commit = source_commit()
        if commit:
            run_tags[GIT_COMMIT_TAG] = commit
    run = client.create_run(exp_id, run_name=run_name, tags=run_tags)
    run_id = str(run.info.run_id)
    try:
        all_params = dict(params)
        if dataset is not None:
            all_params.update({k: v for k, v in dataset.params().items() if k not in all_params})
        for k, v in all_params.items():
            client.log_param(run_id, k, str(v)[:6000])
        if dataset is not None:
            _log_dataset(client, run_id, dataset)
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
            if model_card is not None:
                card = tdir / MODEL_CARD_PATH
                card.write_text(model_card, encoding="utf-8")
                client.log_artifact(run_id, str(card))
            client.log_artifacts(run_id, str(save_pyfunc(Path(model_dir), tdir / "pyfunc")), MODEL_DIR)
        for fig in figures.values():
            client.log_artifact(run_id, str(fig), FIGURES_DIR)
    except Exception:
        client.set_terminated(run_id, "FAILED")
        raise
    client.set_terminated(run_id, "FINISHED")
    return run_id


def _log_dataset(client: Any, run_id: str, dataset: TrainingDataset) -> None:
    from mlflow.entities import DatasetInput, InputTag

    tags = [InputTag(key=k, value=v) for k, v in dataset.tags().items()]
    client.log_inputs(run_id, datasets=[DatasetInput(dataset=dataset.entity(), tags=tags)])


def _description(card: str) -> str:
    if len(card) <= DESCRIPTION_LIMIT:
        return card
    note = f"\n\n... (cut at {DESCRIPTION_LIMIT} characters: the whole card is the run's {MODEL_CARD_PATH})"
    return card[: DESCRIPTION_LIMIT - len(note)] + note


def run_model_card(tracking_uri: str, run_id: str) -> str | None:
    """The run's ``model_card.md``, or None when the run has none."""
    client = _client(tracking_uri)
    if not any(f.path == MODEL_CARD_PATH for f in client.list_artifacts(run_id)):
        return None
    with tempfile.TemporaryDirectory() as tmp:
        return _download(tracking_uri, run_id, MODEL_CARD_PATH, Path(tmp)).read_text(encoding="utf-8")


def run_figures(tracking_uri: str, run_id: str, dst_dir: Path) -> list[Path]:
    """Download the run's figures into ``dst_dir``; the PNGs among them, sorted (empty when none)."""
    client = _client(tracking_uri)
    if not any(f.path == FIGURES_DIR and f.is_dir for f in client.list_artifacts(run_id)):
        return []
    local = _download(tracking_uri, run_id, FIGURES_DIR, Path(dst_dir))
    return sorted(local.rglob("*.png"))


def register(tracking_uri: str, name: str, run_id: str, *, description: str | None = None) -> str:
    """Register the run's ``model`` directory as a new version of ``name``; return the version.

    Without ``description`` the run's model card (if it has one) becomes the version's description,
    cut to what the registry stores.
    """
    from mlflow.exceptions import MlflowException

    client = _client(tracking_uri)
    try:
        client.create_registered_model(name)
    except MlflowException as exc:
        if "already exists" not in str(exc).lower() and "RESOURCE_ALREADY_EXISTS" not in str(exc):
            raise
    if description is None:
        card = run_model_card(tracking_uri, run_id)
        description = None if card is None else _description(card)
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
    return artifact_dir(_download(tracking_uri, str(mv.run_id), MODEL_DIR, Path(dst_dir)))


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
    replay: Mapping[str, float] | None = None,
    honest_refusal_tolerance: float = 0.001,
    honest_verification_tolerance: float = 0.005,
    dry_run: bool = False,
) -> PromotionDecision:
    """Move alias ``champion`` to the candidate only if it beats the champion on the candidate's test window.

    Both models score the same stored test window: the candidate must have a higher PR-AUC (by more than
    ``min_pr_auc_gain``), a trap false-positive rate no worse than the champion's (+ tolerance), and a
    score distribution shift (PSI) below ``max_score_shift``. No champion yet: promoted as first champion.
    ``replay`` holds both models' figures from a replay of the same attempts through the service's whole
    decision path, caps and hard rules included (``candidate_honest_refused_rate`` and
    ``champion_honest_refused_rate``): a candidate that refuses more honest shoppers than the champion
    by more than ``honest_refusal_tolerance`` is refused, whatever its PR-AUC. A score alone never
    refuses (:func:`scoring.policy.by_score`), so a model's friction on honest shoppers is
    verification: with ``candidate_honest_verified_rate`` and ``champion_honest_verified_rate`` in
    ``replay``, a candidate that verifies more of them by more than ``honest_verification_tolerance``
    is refused too.
    ``dry_run``: the same checks and reasons, but neither the alias nor the version's tags change
    (``promoted`` then says whether the candidate would be promoted).
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
        if not dry_run:
            client.set_registered_model_alias(name, CHAMPION, str(cand.version))
        return PromotionDecision(True, ["first champion"])
    if str(champ.version) == str(cand.version):
        return PromotionDecision(False, [f"version {cand.version} is already the champion"])
    with tempfile.TemporaryDirectory() as tmp:
        tdir = Path(tmp)
        cand_dir = artifact_dir(_download(tracking_uri, str(cand.run_id), MODEL_DIR, tdir / "candidate"))
        champ_dir = artifact_dir(_download(tracking_uri, str(champ.run_id), MODEL_DIR, tdir / "champion"))
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
    if replay is not None:
        ok = _honest_gate(replay, "refused", honest_refusal_tolerance, reasons) and ok
        # Verification figures are optional: a caller may pass the refusal figures alone.
        if {"candidate_honest_verified_rate", "champion_honest_verified_rate"} <= replay.keys():
            ok = _honest_gate(replay, "verified", honest_verification_tolerance, reasons) and ok
        m.update({f"replay_{k}": float(v) for k, v in replay.items()})
    if dry_run:
        return PromotionDecision(ok, reasons, m)
    if ok:
        client.set_registered_model_alias(name, CHAMPION, str(cand.version))
    client.set_model_version_tag(name, str(cand.version), "promotion", "; ".join(reasons)[:5000])
    return PromotionDecision(ok, reasons, m)


#: How a gate's reason names what the replay gave honest shoppers: (verb, after "honest shoppers", noun).
_GATE_WORDS = {
    "refused": ("refuses", "", "refusals"),
    "verified": ("sends", " to verification", "verifications"),
}


def _honest_gate(replay: Mapping[str, float], decision: str, tolerance: float, reasons: list[str]) -> bool:
    """True when the candidate's replay gives honest shoppers ``decision`` (refused, verified) no more
    often than the champion's (+ tolerance)."""
    cand, champ = replay[f"candidate_honest_{decision}_rate"], replay[f"champion_honest_{decision}_rate"]
    verb, where, noun = _GATE_WORDS[decision]
    if cand > champ + tolerance:
        reasons.append(
            f"replayed through caps and hard rules it {verb} {cand:.2%} of honest shoppers{where} against "
            f"the champion's {champ:.2%} on the same attempts (tolerance {tolerance:.2%})"
        )
        return False
    reasons.append(f"replayed honest {noun} {cand:.2%} against the champion's {champ:.2%}")
    return True


def version_run(
    tracking_uri: str, name: str, version: str | int
) -> tuple[str, dict[str, str], dict[str, float]]:
    """The run behind a registered version (or alias): its id, params and latest metrics."""
    client = _client(tracking_uri)
    run = client.get_run(str(_version(client, name, version).run_id))
    return str(run.info.run_id), dict(run.data.params), dict(run.data.metrics)


def add_to_run(
    tracking_uri: str,
    run_id: str,
    *,
    metrics: Mapping[str, float],
    params: Mapping[str, Any] | None = None,
    files: Sequence[Path] = (),
) -> None:
    """Add metrics, params and files to a finished run (a replay of the model the run trained)."""
    from mlflow.entities import Metric, Param

    client = _client(tracking_uri)
    now = int(datetime.now(UTC).timestamp() * 1000)
    client.log_batch(
        run_id,
        metrics=[Metric(key=k, value=float(v), timestamp=now, step=0) for k, v in metrics.items()],
        params=[Param(k, str(v)) for k, v in (params or {}).items()],
    )
    for path in files:
        client.log_artifact(run_id, str(path), "replay")


def champion_version(tracking_uri: str, name: str) -> str | None:
    """The version the champion alias points at (None when there is none)."""
    from mlflow.exceptions import MlflowException

    try:
        return str(_client(tracking_uri).get_model_version_by_alias(name, CHAMPION).version)
    except MlflowException:
        return None


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
