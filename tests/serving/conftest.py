"""Serving tests use the scoring package's fixtures: the tiny real artifact and the fake backends."""

from tests.scoring.conftest import artifact_dir

__all__ = ["artifact_dir"]
