"""Command-line tests use the scoring package's tiny real artifact as the model they register."""

from tests.scoring.conftest import artifact_dir

__all__ = ["artifact_dir"]
