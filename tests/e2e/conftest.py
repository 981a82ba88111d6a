"""A small but complete promoguard world, built once per test session through the real command line.

simulate -> features build -> features apply -> features materialize -> train -> promote, on a short
simulated history in a temporary root. Every end-to-end test (and the notebooks) runs against it, so
they all see the same trained champion, Feast store and data.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from promoguard.cli import app
from promoguard.settings import Settings

#: Small enough to build in about a minute on 2 cores, large enough for every pattern to appear.
WORLD_EVENTS = 40_000
WORLD_DAYS = 60
WORLD_SEED = 11


def run_cli(*args: str) -> str:
    """Run one promoguard command in-process; fail the test with its output when it fails."""
    result = CliRunner().invoke(app, list(args), catch_exceptions=False)
    if result.exit_code != 0:
        pytest.fail(f"promoguard {' '.join(args)} exited {result.exit_code}:\n{result.output[-4000:]}")
    return result.output


def build_world(root: Path) -> Settings:
    """Build the whole embedded-default pipeline under ``root`` and return its settings."""
    r = str(root)
    run_cli("simulate", "--events", str(WORLD_EVENTS), "--days", str(WORLD_DAYS),
            "--seed", str(WORLD_SEED), "--root", r)
    run_cli("features", "build", "--root", r)
    run_cli("features", "apply", "--root", r)
    run_cli("features", "materialize", "--root", r)
    # The replayed headline is exercised by its own test; the shared world skips it to stay quick.
    run_cli("train", "--root", r, "--test-days", "10", "--gap-days", "7", "--no-replay")
    run_cli("promote", "--root", r)
    return Settings.from_env({}, root=root)


@pytest.fixture(scope="session")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    """The built world; PROMOGUARD_ROOT points at it while the session runs."""
    root = tmp_path_factory.mktemp("world")
    previous = os.environ.get("PROMOGUARD_ROOT")
    settings = build_world(root)
    os.environ["PROMOGUARD_ROOT"] = str(settings.root)
    try:
        yield settings
    finally:
        if previous is None:
            os.environ.pop("PROMOGUARD_ROOT", None)
        else:
            os.environ["PROMOGUARD_ROOT"] = previous
