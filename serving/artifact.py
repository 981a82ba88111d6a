"""The model artifact as serving sees it: load, verify, predict, explain, and the local model cache.

Training writes a directory with ``model.txt`` (LightGBM's native text format) and ``manifest.json``
(see docs/contracts.md). :meth:`LoadedModel.from_dir` refuses anything it cannot trust: a missing
file, a ``model.txt`` whose sha256 differs from the manifest, or a booster that does not reproduce
the manifest's golden predictions. Predictions take a float64 numpy row in manifest order: LightGBM on
a numpy row with ``num_threads=1`` costs about 0.1 ms, a pandas row about 0.9 ms.

:func:`fetch_champion` is the only place that talks to MLflow. It runs at service start, never on the
request path, and falls back to the newest cached version when the registry cannot be reached.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightgbm as lgb
import numpy as np

logger = logging.getLogger(__name__)

MODEL_FILE = "model.txt"
MANIFEST_FILE = "manifest.json"
DEFAULT_BANDS: dict[str, int] = {"clean": 0, "low": 10, "medium": 30, "high": 60}
DEFAULT_THRESHOLDS: dict[str, dict[str, int]] = {"default": {"watch": 30, "verify": 60, "refuse": 85}}
# Golden values are compared with an absolute tolerance far below what any score can see, so a
# platform's last-bit float difference passes while a different model never does.
_GOLDEN_ATOL = 1e-9


class ArtifactError(RuntimeError):
    """The model artifact is missing, malformed, tampered with, or does not reproduce its golden rows."""


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x)) if x >= 0 else math.exp(x) / (1.0 + math.exp(x))


@dataclass(frozen=True)
class Calibrator:
    """Maps the booster's output to a calibrated probability (isotonic on probability, Platt on margin)."""

    kind: str
    x: np.ndarray | None = None
    y: np.ndarray | None = None
    a: float = 1.0
    b: float = 0.0

    @classmethod
    def from_manifest(cls, spec: Mapping[str, Any] | None) -> Calibrator:
        """Parse the manifest's ``calibrator`` entry; ``None`` means identity."""
        if spec is None:
            return cls(kind="identity")
        kind = spec.get("kind")
        if kind == "isotonic":
            x = np.asarray(spec.get("x", []), dtype=np.float64)
            y = np.asarray(spec.get("y", []), dtype=np.float64)
            if x.size == 0 or x.shape != y.shape or np.any(np.diff(x) < 0):
                raise ArtifactError("manifest.calibrator: isotonic x and y must be equal-length, x sorted")
            return cls(kind="isotonic", x=x, y=y)
        if kind == "platt":
            try:
                return cls(kind="platt", a=float(spec["a"]), b=float(spec["b"]))
            except (KeyError, TypeError, ValueError):
                raise ArtifactError("manifest.calibrator: platt needs numeric a and b") from None
        raise ArtifactError(f"manifest.calibrator.kind: expected isotonic or platt, got {kind!r}")

    def __call__(self, raw: float, probability: float) -> float:
        """Calibrated probability for one prediction."""
        if self.kind == "isotonic":
            assert self.x is not None and self.y is not None
            return float(np.interp(probability, self.x, self.y))
        if self.kind == "platt":
            return _sigmoid(self.a * raw + self.b)
        return probability


def probability_to_score(calibrated: float) -> int:
    """Score 0-100 from a calibrated probability (the contract: round, then clip)."""
    return int(min(100, max(0, round(100.0 * calibrated))))


def band_for(score: int, bands: Mapping[str, int]) -> str:
    """The band whose lower bound is the highest one not above ``score``."""
    best, best_floor = "clean", -1
    for name, floor in bands.items():
        if floor <= score and floor > best_floor:
            best, best_floor = name, floor
    return best


@dataclass
class LoadedModel:
    """A verified booster with its manifest: everything serving needs from training."""

    booster: lgb.Booster
    manifest: dict[str, Any]
    calibrator: Calibrator
    path: Path

    @property
    def version(self) -> str:
        """The manifest's model_version."""
        return str(self.manifest["model_version"])

    @property
    def feature_names(self) -> list[str]:
        """Feature order of the numpy row."""
        return list(self.manifest["feature_names"])

    @property
    def bands(self) -> dict[str, int]:
        """Band lower bounds."""
        return dict(self.manifest.get("bands") or DEFAULT_BANDS)

    @property
    def thresholds(self) -> dict[str, dict[str, int]]:
        """Decision thresholds per promotion type plus ``default``."""
        return dict(self.manifest.get("thresholds") or DEFAULT_THRESHOLDS)

    @property
    def signal_specs(self) -> dict[str, dict[str, str]]:
        """Per feature: display name and description template with ``{value}``."""
        return dict(self.manifest.get("signals") or {})

    @classmethod
    def from_dir(cls, path: str | Path, verify: bool = True) -> LoadedModel:
        """Load and verify an artifact directory; raise ArtifactError naming what is wrong."""
        root = Path(path)
        model_path, manifest_path = root / MODEL_FILE, root / MANIFEST_FILE
        for required in (model_path, manifest_path):
            if not required.is_file():
                raise ArtifactError(f"model artifact {root}: {required.name} is missing")
        try:
            manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise ArtifactError(f"{manifest_path}: not valid JSON ({exc})") from None
        for key in ("model_version", "feature_names", "model_sha256"):
            if key not in manifest:
                raise ArtifactError(f"{manifest_path}: field {key!r} is missing")
        actual = sha256_file(model_path)
        if actual != manifest["model_sha256"]:
            raise ArtifactError(
                f"{model_path}: sha256 {actual[:12]}... does not match manifest model_sha256 "
                f"{str(manifest['model_sha256'])[:12]}...; the artifact was modified"
            )
        try:
            booster = lgb.Booster(model_file=str(model_path))
        except lgb.basic.LightGBMError as exc:
            raise ArtifactError(f"{model_path}: LightGBM cannot load it ({exc})") from None
        if booster.num_feature() != len(manifest["feature_names"]):
            raise ArtifactError(
                f"{manifest_path}: feature_names has {len(manifest['feature_names'])} names, "
                f"the booster expects {booster.num_feature()}"
            )
        model = cls(booster, manifest, Calibrator.from_manifest(manifest.get("calibrator")), root)
        if verify:
            model.verify_golden()
        return model

    def verify_golden(self) -> int:
        """Re-predict every golden row; raise ArtifactError on the first mismatch. Returns rows checked.

        ``probability`` in a golden row is the booster's probability (sigmoid of the raw margin); a
        calibrated probability is accepted too, since both are fixed by the artifact.
        """
        golden = self.manifest.get("golden") or []
        if not golden:
            raise ArtifactError(f"{self.path / MANIFEST_FILE}: golden predictions are missing")
        for i, row in enumerate(golden):
            x = np.asarray(row["x"], dtype=np.float64)
            raw, prob, calibrated, score = self.predict(x)
            expected_prob = float(row["probability"])
            if (
                abs(raw - float(row["raw"])) > _GOLDEN_ATOL
                or min(abs(prob - expected_prob), abs(calibrated - expected_prob)) > _GOLDEN_ATOL
                or score != int(row["score"])
            ):
                raise ArtifactError(
                    f"golden row {i}: the booster gives raw={raw!r} score={score}, manifest says "
                    f"raw={row['raw']!r} score={row['score']}; model and manifest do not belong together"
                )
        return len(golden)

    def predict(self, x_row: np.ndarray) -> tuple[float, float, float, int]:
        """``(raw_margin, probability, calibrated, score)`` for one float64 row in manifest order."""
        row = np.asarray(x_row, dtype=np.float64).reshape(1, -1)
        raw = float(self.booster.predict(row, raw_score=True, num_threads=1)[0])
        prob = _sigmoid(raw)
        calibrated = self.calibrator(raw, prob)
        return raw, prob, calibrated, probability_to_score(calibrated)

    def contributions(self, x_row: np.ndarray) -> np.ndarray:
        """TreeSHAP contributions on the margin scale: one per feature, then the expected value last."""
        row = np.asarray(x_row, dtype=np.float64).reshape(1, -1)
        return np.asarray(self.booster.predict(row, pred_contrib=True, num_threads=1)[0], dtype=np.float64)

    def explain(self, x_row: np.ndarray) -> tuple[int, np.ndarray]:
        """``(score, contributions)`` from one TreeSHAP pass: the contributions sum to the raw margin,
        so the request path does not walk the trees a second time just to score."""
        contrib = self.contributions(x_row)
        raw = float(contrib.sum())
        return probability_to_score(self.calibrator(raw, _sigmoid(raw))), contrib

    def score_of_margin(self, raw: float) -> float:
        """Unrounded score (0-100) the calibrated pipeline gives a raw margin; used to price signals."""
        return 100.0 * self.calibrator(raw, _sigmoid(raw))


def _newest_cached(cache_dir: Path) -> Path | None:
    # Dot folders are downloads in progress.
    candidates = [
        p for p in cache_dir.iterdir()
        if p.is_dir() and not p.name.startswith(".") and (p / MANIFEST_FILE).is_file()
    ]
    if not candidates:
        return None

    def order(p: Path) -> tuple[int, float]:
        return (int(p.name) if p.name.isdigit() else -1, p.stat().st_mtime)

    return max(candidates, key=order)


def _install(found: Path, target: Path) -> None:
    """Rename a complete download to ``target`` unless another process installed it first."""
    try:
        os.rename(found, target)
    except OSError:
        if (target / MANIFEST_FILE).is_file():
            return
        # A folder without a manifest is what an interrupted older install left behind.
        shutil.rmtree(target, ignore_errors=True)
        os.rename(found, target)


def fetch_champion(
    tracking_uri: str, model_name: str, cache_dir: str | Path, alias: str = "champion"
) -> Path:
    """Download the ``@champion`` artifacts into ``cache_dir/<version>/`` and return that directory.

    When the registry cannot be reached (or has no champion) the newest cached version is returned
    with a warning; ArtifactError when there is nothing cached either.
    """
    cache = Path(cache_dir)
    cache.mkdir(parents=True, exist_ok=True)
    # MLflow's default HTTP retries back off for minutes; a service start must fall back in seconds.
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    try:
        import mlflow
        from mlflow import MlflowClient

        client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
        version = client.get_model_version_by_alias(model_name, alias)
        target = cache / str(version.version)
        if not (target / MANIFEST_FILE).is_file():
            # Every worker of a service fetches at start, at the same moment: each downloads into its
            # own staging folder and installs it with one rename, so a worker never sees (or deletes)
            # another's half-written copy. The first rename wins; the others drop their copy.
            staging = Path(tempfile.mkdtemp(prefix=f".{version.version}.partial-", dir=cache))
            try:
                mlflow.set_tracking_uri(tracking_uri)
                source = version.source or f"models:/{model_name}/{version.version}"
                downloaded = Path(
                    mlflow.artifacts.download_artifacts(artifact_uri=source, dst_path=str(staging))
                )
                # The artifact files may sit one level down depending on how training logged them.
                found = next((p.parent for p in downloaded.rglob(MANIFEST_FILE)), None)
                if found is None:
                    raise ArtifactError(f"model {model_name} version {version.version}: no {MANIFEST_FILE}")
                _install(found, target)
            finally:
                shutil.rmtree(staging, ignore_errors=True)
        return target
    except ArtifactError:
        raise
    except Exception as exc:
        cached = _newest_cached(cache)
        if cached is None:
            raise ArtifactError(
                f"model registry at {tracking_uri} gave no {model_name}@{alias} ({type(exc).__name__}) "
                f"and {cache} holds no cached version"
            ) from None
        logger.warning(
            "model registry unavailable or without %s@%s (%s); serving cached version %s",
            model_name, alias, type(exc).__name__, cached.name,
        )
        return cached
