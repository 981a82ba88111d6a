"""Settings are built explicitly from the environment with absolute paths and named errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from promoguard.settings import DEV_PEPPER, Settings


def test_defaults_use_absolute_paths_under_the_root(tmp_path: Path) -> None:
    settings = Settings.from_env({}, root=tmp_path)
    assert settings.mlflow_tracking_uri == f"sqlite:///{tmp_path.resolve()}/mlflow/mlflow.db"
    assert settings.raw_dir == tmp_path.resolve() / "data" / "raw"
    assert settings.uses_dev_pepper and settings.pepper == DEV_PEPPER


def test_environment_overrides_and_invalid_values_name_the_variable(tmp_path: Path) -> None:
    env = {"PROMOGUARD_PEPPER": "s3cret", "PROMOGUARD_ONLINE_STORE": "redis", "PROMOGUARD_API_KEYS": "a,b"}
    settings = Settings.from_env(env, root=tmp_path)
    assert not settings.uses_dev_pepper
    assert settings.online_store == "redis" and settings.velocity_backend == "redis"
    assert settings.api_keys == ("a", "b")
    with pytest.raises(ValueError, match="PROMOGUARD_ENGINE"):
        Settings.from_env({"PROMOGUARD_ENGINE": "hadoop"}, root=tmp_path)
