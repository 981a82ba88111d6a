"""From the booster's output to a score: the calibrator and the probability -> 0-100 score contract.

The calibrator is fitted by training (on a held-out window) and travels in the manifest as plain
numbers, so every reader applies it with numpy alone. Two entry points share one definition: a scalar
call for the request path (no array allocation, about a microsecond) and :meth:`Calibrator.apply` for
whole columns (training, batch scoring, promotion).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np


class CalibratorError(ValueError):
    """The manifest's calibrator entry cannot be read; the message names the field."""


def sigmoid(x: float) -> float:
    """Logistic function, stable for large ``|x|``."""
    return 1.0 / (1.0 + math.exp(-x)) if x >= 0 else math.exp(x) / (1.0 + math.exp(x))


def logit(p: np.ndarray) -> np.ndarray:
    """Log-odds of probabilities, clipped away from 0 and 1."""
    q = np.clip(np.asarray(p, dtype=np.float64), 1e-12, 1 - 1e-12)
    return np.asarray(np.log(q / (1 - q)), dtype=np.float64)


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
                raise CalibratorError("manifest.calibrator: isotonic x and y must be equal-length, x sorted")
            return cls(kind="isotonic", x=x, y=y)
        if kind == "platt":
            try:
                return cls(kind="platt", a=float(spec["a"]), b=float(spec["b"]))
            except (KeyError, TypeError, ValueError):
                raise CalibratorError("manifest.calibrator: platt needs numeric a and b") from None
        raise CalibratorError(f"manifest.calibrator.kind: expected isotonic or platt, got {kind!r}")

    def __call__(self, raw: float, probability: float) -> float:
        """Calibrated probability for one prediction (its raw margin and booster probability)."""
        if self.kind == "isotonic":
            assert self.x is not None and self.y is not None
            return float(np.interp(probability, self.x, self.y))
        if self.kind == "platt":
            return sigmoid(self.a * raw + self.b)
        return probability

    def apply(self, probabilities: np.ndarray) -> np.ndarray:
        """Calibrated probabilities for a column of booster probabilities (Platt goes through the logit)."""
        p = np.asarray(probabilities, dtype=np.float64)
        if self.kind == "isotonic":
            assert self.x is not None and self.y is not None
            return np.asarray(np.interp(p, self.x, self.y), dtype=np.float64)
        if self.kind == "platt":
            z = self.a * logit(p) + self.b
            return np.asarray(1.0 / (1.0 + np.exp(-z)), dtype=np.float64)
        return p


def apply_calibrator(spec: Mapping[str, Any], probabilities: np.ndarray) -> np.ndarray:
    """Calibrated probabilities from a manifest ``calibrator`` entry (training's dict form)."""
    return Calibrator.from_manifest(spec).apply(probabilities)


def probability_to_score(calibrated: float) -> int:
    """Score 0-100 from one calibrated probability: round half to even, then clip (as :func:`to_score`)."""
    return int(min(100, max(0, round(100.0 * calibrated))))


def to_score(probabilities: np.ndarray) -> np.ndarray:
    """Scores 0-100 for a column of calibrated probabilities (the same contract as the scalar)."""
    return np.clip(np.round(100.0 * np.asarray(probabilities, dtype=np.float64)), 0, 100).astype(np.int64)
