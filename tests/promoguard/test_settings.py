"""Settings are built explicitly from the environment with absolute paths and named errors.

One class serves the command line and the service; every variable name the two former classes read
keeps working, unknown ``PROMOGUARD_*`` variables are refused by name, and README's table lists exactly
the variables the class reads.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from config.settings import NOT_SETTINGS, InvalidSettings
from promoguard.settings import DEV_PEPPER, Settings

REPO = Path(__file__).resolve().parents[2]


def test_defaults_use_absolute_paths_under_the_root(tmp_path: Path) -> None:
    settings = Settings.from_env({}, root=tmp_path)
    assert settings.mlflow_tracking_uri == f"sqlite:///{tmp_path.resolve()}/mlflow/mlflow.db"
    assert settings.raw_dir == tmp_path.resolve() / "data" / "raw"
    assert settings.serving_dir == tmp_path.resolve() / "data" / "serving"
    assert settings.uses_dev_pepper and settings.pepper == DEV_PEPPER
    assert settings.model_name == "promo-abuse" and settings.velocity_backend == "sqlite"
    assert settings.tor_exit_source is None and settings.proxy_source is None


def test_a_relative_root_is_resolved_and_the_argument_overrides_the_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    settings = Settings.from_env({"PROMOGUARD_ROOT": "world"})
    assert settings.root == tmp_path.resolve() / "world"
    assert settings.mlflow_tracking_uri == f"sqlite:///{settings.root / 'mlflow' / 'mlflow.db'}"
    overridden = Settings.from_env({"PROMOGUARD_ROOT": "world"}, root=Path("other"))
    assert overridden.root == tmp_path.resolve() / "other"


def test_environment_overrides_and_invalid_values_name_the_variable(tmp_path: Path) -> None:
    env = {"PROMOGUARD_PEPPER": "s3cret", "PROMOGUARD_ONLINE_STORE": "redis", "PROMOGUARD_API_KEYS": "a,b"}
    settings = Settings.from_env(env, root=tmp_path)
    assert not settings.uses_dev_pepper
    assert settings.online_store == "redis" and settings.velocity_backend == "redis"
    assert settings.api_keys == ("a", "b")
    with pytest.raises(ValueError, match="PROMOGUARD_ENGINE='hadoop': expected one of numpy, duckdb, spark"):
        Settings.from_env({"PROMOGUARD_ENGINE": "hadoop"}, root=tmp_path)


#: Every variable either former settings class read, with a value and what it must set.
LEGACY_VARIABLES: list[tuple[str, str, str, Any]] = [
    ("PROMOGUARD_PEPPER", "pepper-1", "pepper", "pepper-1"),
    ("PROMOGUARD_PHONE_REGION", "gb", "default_phone_region", "GB"),
    ("PROMOGUARD_ENGINE", "duckdb", "pipeline_engine", "duckdb"),
    ("PROMOGUARD_ONLINE_STORE", "redis", "online_store", "redis"),
    ("PROMOGUARD_VELOCITY", "redis", "velocity_backend", "redis"),
    ("PROMOGUARD_REDIS_URL", "redis://cache:6380/2", "redis_url", "redis://cache:6380/2"),
    ("PROMOGUARD_REDIS_TIMEOUT_S", "0.25", "redis_socket_timeout_s", 0.25),
    ("PROMOGUARD_MLFLOW_URI", "http://mlflow:5000", "mlflow_tracking_uri", "http://mlflow:5000"),
    ("PROMOGUARD_MODEL_NAME", "promo-abuse-eu", "model_name", "promo-abuse-eu"),
    ("PROMOGUARD_TOR_EXIT_LIST", "https://feeds.example/tor.txt", "tor_exit_list", "https://feeds.example/tor.txt"),
    ("PROMOGUARD_PROXY_LIST", "/etc/feeds/proxy.txt", "proxy_list", "/etc/feeds/proxy.txt"),
    ("PROMOGUARD_IPINTEL_URL", "https://ipintel.example/v1", "ipintel_http_url", "https://ipintel.example/v1"),
    ("PROMOGUARD_IPINTEL_FAIL_OPEN", "false", "ipintel_fail_open", False),
    ("PROMOGUARD_API_KEYS", " k1, k2 ,,", "api_keys", ("k1", "k2")),
    ("PROMOGUARD_REQUIRE_API_KEY", "no", "require_api_key", False),
    ("PROMOGUARD_RATE_LIMIT_PER_MINUTE", "120", "rate_limit_per_minute", 120),
    ("PROMOGUARD_MAX_BODY_BYTES", "8192", "max_body_bytes", 8192),
    ("PROMOGUARD_FEATURE_DEADLINE_MS", "25", "feature_deadline_ms", 25.0),
    ("PROMOGUARD_REQUEST_DEADLINE_MS", "150.5", "request_deadline_ms", 150.5),
    ("PROMOGUARD_SEED", "11", "seed", 11),
]


@pytest.mark.parametrize(("variable", "value", "field", "expected"), LEGACY_VARIABLES)
def test_every_variable_the_former_classes_read_still_sets_its_field(
    variable: str, value: str, field: str, expected: Any, tmp_path: Path
) -> None:
    settings = Settings.from_env({variable: value}, root=tmp_path)
    assert getattr(settings, field) == expected
    assert Settings.variables()[field] == variable


def test_path_variables_become_absolute_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    settings = Settings.from_env({
        "PROMOGUARD_ROOT": str(tmp_path), "PROMOGUARD_MODEL_DIR": "model", "PROMOGUARD_RULES": "rules.yaml",
    })
    assert settings.model_dir == tmp_path.resolve() / "model"
    assert settings.rules_path == tmp_path.resolve() / "rules.yaml"


def test_velocity_follows_the_online_store_unless_set(tmp_path: Path) -> None:
    assert Settings.from_env({"PROMOGUARD_ONLINE_STORE": "redis"}, root=tmp_path).velocity_backend == "redis"
    both = {"PROMOGUARD_ONLINE_STORE": "redis", "PROMOGUARD_VELOCITY": "sqlite"}
    assert Settings.from_env(both, root=tmp_path).velocity_backend == "sqlite"


def test_an_empty_variable_counts_as_unset(tmp_path: Path) -> None:
    env = dict.fromkeys(
        ("PROMOGUARD_PEPPER", "PROMOGUARD_MLFLOW_URI", "PROMOGUARD_ENGINE", "PROMOGUARD_API_KEYS"), ""
    )
    settings = Settings.from_env(env, root=tmp_path)
    assert settings.uses_dev_pepper and settings.pipeline_engine == "numpy" and settings.api_keys == ()
    assert settings.mlflow_tracking_uri.endswith("/mlflow/mlflow.db")


@pytest.mark.parametrize(
    ("variable", "value", "expected"),
    [
        ("PROMOGUARD_VELOCITY", "memcached", "expected one of sqlite, redis"),
        ("PROMOGUARD_ONLINE_STORE", "dynamo", "expected one of sqlite, redis"),
        ("PROMOGUARD_REQUEST_DEADLINE_MS", "fast", "expected a number"),
        ("PROMOGUARD_REDIS_TIMEOUT_S", "0", "expected greater than 0"),
        ("PROMOGUARD_RATE_LIMIT_PER_MINUTE", "lots", "expected a whole number"),
        ("PROMOGUARD_REQUIRE_API_KEY", "maybe", "expected true or false"),
        ("PROMOGUARD_IPINTEL_URL", "ftp://intel", "expected an http:// or https:// URL"),
        ("PROMOGUARD_MODEL_NAME", "../other", "expected to match pattern"),
        ("PROMOGUARD_PHONE_REGION", "USA", "expected to match pattern"),
    ],
)
def test_a_bad_value_is_refused_naming_the_variable(variable: str, value: str, expected: str) -> None:
    with pytest.raises(InvalidSettings) as caught:
        Settings.from_env({variable: value})
    assert str(caught.value).startswith(f"{variable}={value!r}: {expected}")


def test_every_bad_value_is_reported_at_once() -> None:
    with pytest.raises(InvalidSettings) as caught:
        Settings.from_env({"PROMOGUARD_ENGINE": "x", "PROMOGUARD_MAX_BODY_BYTES": "-1"})
    message = str(caught.value)
    assert "PROMOGUARD_ENGINE='x'" in message and "PROMOGUARD_MAX_BODY_BYTES='-1'" in message


def test_an_unknown_promoguard_variable_is_refused_naming_it_and_the_likely_intent() -> None:
    with pytest.raises(InvalidSettings) as caught:
        Settings.from_env({"PROMOGUARD_MODLE_NAME": "promo-abuse-eu"})
    message = str(caught.value)
    assert message.startswith("PROMOGUARD_MODLE_NAME: not a promoguard setting")
    assert "did you mean PROMOGUARD_MODEL_NAME?" in message
    assert "promo-abuse-eu" not in message


def test_variables_that_configure_no_deployable_and_other_prefixes_are_accepted() -> None:
    env = {name: "1" for name in NOT_SETTINGS} | {"PROMOGUARDIAN": "x", "HOME": "/root"}
    assert Settings.from_env(env).pipeline_engine == "numpy"
    assert set(NOT_SETTINGS) == {
        "PROMOGUARD_REQUIRE_SERVICES", "PROMOGUARD_BENCH_ROOT", "PROMOGUARD_FEATURES_DIR"
    }


def test_secrets_never_appear_in_errors_or_reprs() -> None:
    settings = Settings.from_env({
        "PROMOGUARD_PEPPER": "pepper-secret", "PROMOGUARD_API_KEYS": "key-secret",
        "PROMOGUARD_IPINTEL_API_KEY": "intel-secret",
    })
    assert not {"pepper-secret", "key-secret", "intel-secret"} & set(re.findall(r"[\w-]+", repr(settings)))
    with pytest.raises(InvalidSettings) as caught:
        Settings.from_env({"PROMOGUARD_PEPER": "pepper-secret"})
    assert "pepper-secret" not in str(caught.value) and "PROMOGUARD_PEPPER?" in str(caught.value)


def test_a_given_mapping_is_the_only_source_and_without_one_the_process_environment_is(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("PROMOGUARD_ENGINE", "spark")
    monkeypatch.setenv("PROMOGUARD_ROOT", str(tmp_path))
    assert Settings.from_env({}).pipeline_engine == "numpy"
    from_process = Settings.from_env()
    assert from_process.pipeline_engine == "spark" and from_process.root == tmp_path.resolve()
    monkeypatch.setenv("PROMOGUARD_ENGNE", "spark")
    with pytest.raises(InvalidSettings, match="PROMOGUARD_ENGNE: not a promoguard setting"):
        Settings.from_env()
    with pytest.raises(ValidationError, match="PROMOGUARD_ENGNE"):
        Settings()


def test_settings_are_frozen(tmp_path: Path) -> None:
    settings = Settings.from_env({}, root=tmp_path)
    with pytest.raises(ValidationError):
        settings.model_name = "other"  # type: ignore[misc]


def test_importing_the_deployables_reads_no_setting() -> None:
    env = {**os.environ, "PROMOGUARD_ENGINE": "not-an-engine", "PROMOGUARD_UNKNOWN": "1"}
    code = "import config.settings, promoguard.cli, serving.service"
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]


def _readme_table_variables() -> list[str]:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    section = text.split("\n## Configuration\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"^\| `(PROMOGUARD_[A-Z0-9_]+)` \|", section, flags=re.MULTILINE)


def test_the_readme_table_lists_exactly_the_variables_the_settings_read() -> None:
    documented = _readme_table_variables()
    assert len(documented) == len(set(documented)), "a variable is listed twice"
    read = set(Settings.variables().values())
    assert sorted(read - set(documented)) == [], "read by Settings but missing from README's table"
    assert sorted(set(documented) - read) == [], "in README's table but not read by Settings"


def test_the_readme_names_the_variables_that_are_not_settings() -> None:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    section = text.split("\n## Configuration\n", 1)[1].split("\n## ", 1)[0]
    assert all(f"`{name}" in section for name in NOT_SETTINGS)
    assert not set(NOT_SETTINGS) & set(_readme_table_variables())
