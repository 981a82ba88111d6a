"""A start that could only answer 401 is refused: keys required (the default) and none configured."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from config.settings import Settings
from serving.service import MissingApiKeys, check_api_keys

REPO = Path(__file__).resolve().parents[2]
BENTOML = Path(sys.executable).parent / "bentoml"


def test_required_keys_without_any_key_are_refused_naming_the_variable() -> None:
    with pytest.raises(MissingApiKeys, match="PROMOGUARD_API_KEYS is empty while PROMOGUARD_REQUIRE_API_KEY"):
        check_api_keys(Settings.from_env({}))
    check_api_keys(Settings.from_env({"PROMOGUARD_API_KEYS": "k1"}))
    check_api_keys(Settings.from_env({"PROMOGUARD_REQUIRE_API_KEY": "false"}))


def _serve(tmp_path: Path, **env: str) -> tuple[int, str]:
    """Run ``bentoml serve``; its exit status and output (a server that does start is stopped, whole)."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("PROMOGUARD_")}
    proc = subprocess.Popen(
        [str(BENTOML), "serve", "serving.service:PromoGuard", "--port", "0", "--host", "127.0.0.1"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
        env={**clean, "PROMOGUARD_ROOT": str(tmp_path), "BENTOML_HOME": str(tmp_path / "bentoml"),
             "BENTOML_DO_NOT_TRACK": "true", "MLFLOW_DISABLE_TELEMETRY": "true", **env},
    )
    try:
        output, _ = proc.communicate(timeout=90)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        output, _ = proc.communicate()
        pytest.fail(f"bentoml serve started instead of refusing:\n{output[-3000:]}")
    return proc.returncode, output


@pytest.mark.parametrize(("env", "named"), [
    ({}, "PROMOGUARD_API_KEYS"),
    ({"PROMOGUARD_API_KEYS": "k1", "PROMOGUARD_ENGINE": "pandas"}, "PROMOGUARD_ENGINE"),
])
def test_bentoml_serve_stops_before_any_worker_with_one_line(
    tmp_path: Path, env: dict[str, str], named: str
) -> None:
    status, output = _serve(tmp_path, **env)
    assert status != 0
    lines = [line for line in output.splitlines() if line.strip()]
    refusal = [line for line in lines if line.startswith("promoguard cannot start:")]
    assert len(refusal) == 1 and named in refusal[0], lines[-20:]
    # Refused in the server process itself: no worker was started, so no traceback and no retry loop.
    assert not any("Traceback" in line or "entry_service" in line for line in lines), lines[-20:]
