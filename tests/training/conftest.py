"""Shared synthetic data for the training tests: small, deterministic, numpy only."""

from __future__ import annotations

import pandas as pd
import pytest

from training.dataset import model_feature_names, synthetic_training_frame


@pytest.fixture(scope="session")
def frame() -> pd.DataFrame:
    """A 4000-row training frame over 120 days with ~6 % abuse and 0-20 day label delays."""
    return synthetic_training_frame(4000, seed=3)


@pytest.fixture(scope="session")
def names() -> list[str]:
    """The model's feature order: the whole feature service, then the request-time flags."""
    return model_feature_names()


@pytest.fixture(scope="session")
def trained(frame: pd.DataFrame, names: list[str]) -> tuple[object, object]:
    """A split of the shared frame and a booster trained on it (small, 2 threads)."""
    from training.split import time_split
    from training.train import TrainParams, train_booster

    split = time_split(frame, test_days=14, valid_days=10, calib_days=14, gap_days=7)
    booster = train_booster(split.train, split.valid, names, TrainParams(max_rounds=80))
    return split, booster
