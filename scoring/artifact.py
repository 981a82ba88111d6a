"""The model artifact contract: write, load, verify, predict and explain a model directory.

Training writes a directory with ``model.txt`` (LightGBM's native text format, never a pickle) and
``manifest.json`` (see docs/contracts.md): feature order, Feast feature service, calibrator, bands,
thresholds, signal specs, golden predictions and the sha256 of ``model.txt``. :func:`write_artifact`
is the one writer; :meth:`LoadedModel.from_dir` the one reader, and it refuses anything it cannot
trust: a missing file, a ``model.txt`` whose sha256 differs from the manifest, or a booster that does
not reproduce the manifest's golden predictions. Serving, promotion, batch scoring, drift and replays
all read through it.

Single-row predictions take a float64 numpy row in manifest order: LightGBM on a numpy row with
``num_threads=1`` costs about 0.1 ms, a pandas row about 0.9 ms. Fetching an artifact from the
registry is an edge of its own (``serving.model_cache`` for the service, ``training.registry`` for
training and promotion); this module only reads and writes directories.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import lightgbm as lgb
import numpy as np

from scoring.calibration import Calibrator, CalibratorError, probability_to_score, sigmoid, to_score
from scoring.policy import DEFAULT_BANDS, DEFAULT_THRESHOLDS

MODEL_FILE = "model.txt"
MANIFEST_FILE = "manifest.json"
#: How many golden rows training writes into the manifest.
GOLDEN_ROWS = 100
# Golden probabilities are compared with an absolute tolerance far below what any score can see, so
# the request path's own sigmoid (last-bit different from LightGBM's) passes while a different model
# never does. The raw margin is the same leaf values summed in the same order wherever LightGBM runs,
# so it is held to a few ulps.
_GOLDEN_ATOL = 1e-9
_RAW_ATOL = 1e-13


class ArtifactError(RuntimeError):
    """The model artifact is missing, malformed, tampered with, or does not reproduce its golden rows."""


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def tree_shap(booster: lgb.Booster, x: np.ndarray, *, num_threads: int = 1) -> np.ndarray:
    """Exact TreeSHAP per row: ``(n, features + 1)``, last column the expected value; sums to the margin."""
    return np.asarray(booster.predict(x, pred_contrib=True, num_threads=num_threads), dtype=np.float64)


def _json_floats(row: np.ndarray) -> list[float | None]:
    # JSON has no NaN: missing is null, and readers take null back as NaN.
    return [None if math.isnan(v) else float(v) for v in row.tolist()]


def write_artifact(
    dst_dir: Path,
    booster: lgb.Booster,
    *,
    feature_names: Sequence[str],
    calibrator: Mapping[str, Any],
    bands: Mapping[str, int],
    thresholds: Mapping[str, Mapping[str, int]],
    signals: Mapping[str, Mapping[str, str]],
    golden_x: np.ndarray,
    model_version: str,
    feature_service: str,
) -> Path:
    """Write model.txt and manifest.json into ``dst_dir``; golden rows are scored by the saved booster."""
    if list(booster.feature_name()) != list(feature_names):
        raise ArtifactError("booster feature names differ from the manifest feature order")
    missing = [f for f in feature_names if f not in signals]
    if missing:
        raise ArtifactError(f"no signal for feature(s) {missing[:5]}")
    dst_dir.mkdir(parents=True, exist_ok=True)
    model_path = dst_dir / MODEL_FILE
    model_path.write_text(booster.model_to_string(), encoding="utf-8")
    # Golden values come from the booster as readers will load it (from the text file), not from memory.
    saved = lgb.Booster(model_file=str(model_path))
    x = np.asarray(golden_x, dtype=np.float64)[:GOLDEN_ROWS]
    raw = np.asarray(saved.predict(x, raw_score=True, num_threads=1), dtype=np.float64)
    prob = Calibrator.from_manifest(calibrator).apply(
        np.asarray(saved.predict(x, num_threads=1), dtype=np.float64)
    )
    scores = to_score(prob)
    manifest = {
        "model_version": model_version,
        "created_at": datetime.now(UTC).isoformat(),
        "feature_service": feature_service,
        "feature_names": list(feature_names),
        "calibrator": dict(calibrator),
        "bands": dict(bands),
        "thresholds": {k: dict(v) for k, v in thresholds.items()},
        "signals": {k: dict(v) for k, v in signals.items()},
        "golden": [
            {
                "x": _json_floats(x[i]),
                "raw": float(raw[i]),
                "probability": float(prob[i]),
                "score": int(scores[i]),
            }
            for i in range(len(x))
        ],
        "model_sha256": sha256_file(model_path),
    }
    (dst_dir / MANIFEST_FILE).write_text(json.dumps(manifest, indent=1, allow_nan=False), encoding="utf-8")
    return dst_dir


def read_manifest(model_dir: str | Path) -> dict[str, Any]:
    """Parse manifest.json of an artifact directory; ArtifactError when missing or not JSON."""
    path = Path(model_dir) / MANIFEST_FILE
    if not path.is_file():
        raise ArtifactError(f"model artifact {Path(model_dir)}: {MANIFEST_FILE} is missing")
    try:
        data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ArtifactError(f"{path}: not valid JSON ({exc})") from None
    return data


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
    def feature_service(self) -> str | None:
        """The Feast feature service the model was trained on."""
        value = self.manifest.get("feature_service")
        return None if value is None else str(value)

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
        manifest = read_manifest(root)
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
        if list(booster.feature_name()) != list(manifest["feature_names"]):
            raise ArtifactError(
                f"{manifest_path}: feature_names ({len(manifest['feature_names'])} names) differ from "
                f"model.txt's feature names ({booster.num_feature()})"
            )
        try:
            calibrator = Calibrator.from_manifest(manifest.get("calibrator"))
        except CalibratorError as exc:
            raise ArtifactError(f"{manifest_path}: {exc}") from None
        model = cls(booster, manifest, calibrator, root)
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
                abs(raw - float(row["raw"])) > _RAW_ATOL
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
        prob = sigmoid(raw)
        calibrated = self.calibrator(raw, prob)
        return raw, prob, calibrated, probability_to_score(calibrated)

    def contributions(self, x_row: np.ndarray) -> np.ndarray:
        """TreeSHAP contributions on the margin scale: one per feature, then the expected value last."""
        return np.asarray(tree_shap(self.booster, np.asarray(x_row, dtype=np.float64).reshape(1, -1))[0])

    def explain(self, x_row: np.ndarray) -> tuple[int, np.ndarray]:
        """``(score, contributions)`` from one TreeSHAP pass: the contributions sum to the raw margin,
        so the request path does not walk the trees a second time just to score."""
        contrib = self.contributions(x_row)
        raw = float(contrib.sum())
        return probability_to_score(self.calibrator(raw, sigmoid(raw))), contrib

    def score_of_margin(self, raw: float) -> float:
        """Unrounded score (0-100) the calibrated pipeline gives a raw margin; used to price signals."""
        return 100.0 * self.calibrator(raw, sigmoid(raw))

    def predict_many(self, x: np.ndarray, *, num_threads: int = 1) -> tuple[np.ndarray, np.ndarray]:
        """``(calibrated probabilities, scores)`` for a float64 matrix in manifest order."""
        prob = np.asarray(self.booster.predict(x, num_threads=num_threads), dtype=np.float64)
        calibrated = self.calibrator.apply(prob)
        return calibrated, to_score(calibrated)

    def contributions_many(self, x: np.ndarray, *, num_threads: int = 1) -> np.ndarray:
        """TreeSHAP contributions for a matrix: one row per attempt, the expected value last."""
        return tree_shap(self.booster, x, num_threads=num_threads)
