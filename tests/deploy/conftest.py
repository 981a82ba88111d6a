"""Deploy tests reuse the scoring package's tiny real artifact for the running service."""

from tests.scoring.conftest import artifact_dir

__all__ = ["artifact_dir"]
