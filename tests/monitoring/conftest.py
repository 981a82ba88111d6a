"""Scoring frames shared by the drift tests: a reference window, a resample of it, and a bot farm."""

from __future__ import annotations

import pandas as pd
import pytest

from tests.monitoring.frames import scoring_frame


@pytest.fixture(scope="session")
def reference() -> pd.DataFrame:
    """The champion's reference window."""
    return scoring_frame(seed=11, n=3000)


@pytest.fixture(scope="session")
def resample() -> pd.DataFrame:
    """Another draw from the reference's population: nothing moved."""
    return scoring_frame(seed=12, n=2000)


@pytest.fixture(scope="session")
def bot_farm() -> pd.DataFrame:
    """A window where a bot farm on datacenter IPs makes up 15% of requests (signals logged as JSON)."""
    return scoring_frame(seed=13, n=2000, bot_share=0.15, signals_as_json=True)
