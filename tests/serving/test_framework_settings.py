"""BentoML's tracing and access log follow PROMOGUARD_TRACING / PROMOGUARD_ACCESS_LOG, read at serve time;
an operator's BENTOML_CONFIG sets the workers and the threads of each."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from config.settings import Settings
from serving.service import ALL_URLS, framework_config

REPO = Path(__file__).resolve().parents[2]

# What BentoML's server would build its middlewares from, after the service configured it.
PROBE = """
import json
from serving.service import PromoGuard
from bentoml._internal.container import BentoMLContainer
PromoGuard.inject_config()
print(json.dumps([BentoMLContainer.api_server_config.logging.access.enabled.get(),
                  BentoMLContainer.config.tracing.excluded_urls.get(),
                  BentoMLContainer.api_server_config.traffic.timeout.get()]))
"""


def test_both_are_off_by_default_and_each_comes_back_on_its_own() -> None:
    assert framework_config(Settings.from_env({})) == {
        "logging": {"access": {"enabled": False}}, "tracing": {"excluded_urls": ALL_URLS}}
    on = framework_config(Settings.from_env({"PROMOGUARD_TRACING": "true", "PROMOGUARD_ACCESS_LOG": "1"}))
    assert on == {"logging": {"access": {"enabled": True}}, "tracing": {}}


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, [False, ALL_URLS, 5]),
        ({"PROMOGUARD_ACCESS_LOG": "true", "PROMOGUARD_TRACING": "true"}, [True, None, 5]),
        # Settings that do not parse leave both off; the start itself is refused elsewhere, by name.
        ({"PROMOGUARD_ENGINE": "not-an-engine"}, [False, ALL_URLS, 5]),
    ],
)
def test_the_service_applies_the_settings_when_bentoml_configures_its_server(
    env: dict[str, str], expected: list[object]
) -> None:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("PROMOGUARD_")}
    done = subprocess.run([sys.executable, "-c", PROBE], cwd=REPO, env={**clean, **env},
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout.strip().splitlines()[-1]) == expected


# What BentoML sizes the server from: the worker count from its merged configuration, each worker's
# thread pool from the service's own (``ServiceAppFactory._to_thread``).
SIZE_PROBE = """
import json
from serving.service import PromoGuard
from bentoml._internal.container import BentoMLContainer
PromoGuard.inject_config()
workers = BentoMLContainer.config.services["promoguard"].workers.get()
print(json.dumps([workers, PromoGuard.config["threads"]]))
"""


@pytest.mark.parametrize(
    ("file", "expected"),
    [
        (None, ["cpu_count", 8]),
        ("services:\n  promoguard:\n    workers: 3\n    threads: 2\n", [3, 2]),
        ("services:\n  promoguard:\n    threads: 16\n", ["cpu_count", 16]),
    ],
)
def test_an_operators_bentoml_config_sets_workers_and_threads(
    tmp_path: Path, file: str | None, expected: list[object]
) -> None:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("PROMOGUARD_", "BENTOML_CONFIG"))}
    if file is not None:
        (tmp_path / "serving.yaml").write_text(file)
        clean["BENTOML_CONFIG"] = str(tmp_path / "serving.yaml")
    done = subprocess.run([sys.executable, "-c", SIZE_PROBE], cwd=REPO, env=clean,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout.strip().splitlines()[-1]) == expected
