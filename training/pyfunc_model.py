"""The registered model as an MLflow pyfunc: one calibrated probability of abuse per input row.

``mlflow.pyfunc.load_model("models:/promo-abuse@champion")`` loads :class:`PromoAbuseModel`, whose
``load_context`` reads (and verifies) the very artifact directory serving uses, through
:meth:`scoring.artifact.LoadedModel.from_dir`; ``predict`` gives what
:meth:`~scoring.artifact.LoadedModel.predict_many` gives: the calibrated probability.

The model is logged as code (MLflow's "models from code"): this file is copied into the logged model
and run when the model loads, so nothing is unpickled, and the loader needs the promoguard package only
for :mod:`scoring` (plus mlflow, lightgbm, numpy and pandas). That is why this module imports nothing from
training and ends with :func:`mlflow.models.set_model`. Decisions are not part of this interface: they
come from the manifest's per-promotion thresholds, which the scoring service applies.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
from mlflow.models import set_model
from mlflow.pyfunc.model import PythonModel

from scoring.artifact import LoadedModel
from scoring.batch import feature_matrix

#: Key of the artifact directory inside the pyfunc model (``artifacts/<key>/`` holds model.txt + manifest).
ARTIFACT_KEY = "artifact"
#: Name of the single output column of the signature.
OUTPUT = "probability"


def model_signature(feature_names: Sequence[str]) -> Any:
    """Input: every model feature as a float (NaN = missing), in manifest order; output: the probability."""
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, DataType, Schema

    inputs = Schema([ColSpec(DataType.double, name) for name in feature_names])
    return ModelSignature(inputs=inputs, outputs=Schema([ColSpec(DataType.double, OUTPUT)]))


class PromoAbuseModel(PythonModel):
    """Calibrated probability of abuse for each row of a frame holding the model's features."""

    def __init__(self) -> None:
        """Stateless until ``load_context`` gives it the artifact directory."""
        self._model: LoadedModel | None = None

    def load_context(self, context: Any) -> None:
        """Load and verify (sha256, golden rows) the artifact directory logged with the model."""
        self._model = LoadedModel.from_dir(context.artifacts[ARTIFACT_KEY])

    @property
    def model(self) -> LoadedModel:
        """The loaded artifact; RuntimeError before ``load_context``."""
        if self._model is None:
            raise RuntimeError("PromoAbuseModel: load_context has not run")
        return self._model

    def predict(
        self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None
    ) -> np.ndarray:
        """One float64 calibrated probability per row; absent or non-numeric features count as missing."""
        model = self.model
        if isinstance(model_input, pd.DataFrame):
            frame = model_input
        elif isinstance(model_input, Mapping):
            frame = pd.DataFrame({k: np.atleast_1d(v) for k, v in model_input.items()})
        else:
            frame = pd.DataFrame(np.asarray(model_input, dtype=np.float64), columns=model.feature_names)
        return model.predict_many(feature_matrix(frame, model.feature_names))[0]


# What MLflow loads when it runs this file as the logged model's code.
set_model(PromoAbuseModel())
