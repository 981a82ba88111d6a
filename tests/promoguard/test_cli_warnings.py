"""Third-party warnings a user cannot act on are silenced by name for every command, and only those."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from promoguard.cli import app


def test_every_command_silences_the_third_party_warnings_it_names(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import warnings

    for name in ("PROMOGUARD_VELOCITY", "PROMOGUARD_ONLINE_STORE"):
        monkeypatch.delenv(name, raising=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = CliRunner().invoke(app, ["maintenance", "--root", str(tmp_path)])
        assert result.exit_code == 0, result.output
        # What importing Feast does, after the command started: a filter in front of ours.
        warnings.simplefilter("once", DeprecationWarning)
        warnings.warn("fetch_arrow_table() is deprecated, use to_arrow_table() instead.", DeprecationWarning,
                      stacklevel=1)
        warnings.warn("The spark data source API is an experimental feature in alpha development.",
                      RuntimeWarning, stacklevel=1)
        warnings.warn("something else is deprecated", DeprecationWarning, stacklevel=1)
    # The named library rename and Feast's Spark notice are silenced; any other warning still shows.
    assert [str(w.message) for w in caught] == ["something else is deprecated"]


def test_a_service_worker_silences_the_same_warnings_and_only_those() -> None:
    import warnings

    from config.quiet import quiet_third_party_warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        quiet_third_party_warnings()  # what PromoGuard.__init__ calls first in every worker
        warnings.simplefilter("once", DeprecationWarning)
        warnings.warn("Accessing the 'model_fields' attribute on the instance is deprecated. Instead, ...",
                      DeprecationWarning, stacklevel=1)
        warnings.warn("something else is deprecated", DeprecationWarning, stacklevel=1)
    assert [str(w.message) for w in caught] == ["something else is deprecated"]


_READ_BACK = """
import sys
from pathlib import Path

if sys.argv[1] == "quiet":
    from config.quiet import quiet_mlflow

    quiet_mlflow()
from mlflow import MlflowClient
from mlflow.artifacts import download_artifacts

folder = Path(sys.argv[2])
uri = f"sqlite:///{folder / 'mlflow.db'}"
client = MlflowClient(tracking_uri=uri)
run = client.create_run(client.create_experiment("e", artifact_location=str(folder / "artifacts")))
for name in ("a", "b", "c"):
    (folder / name).write_text(name)
    client.log_artifact(run.info.run_id, str(folder / name), "model")
download_artifacts(run_id=run.info.run_id, artifact_path="model", dst_path=str(folder / "back"),
                   tracking_uri=uri)
"""


@pytest.mark.parametrize("mode", ["quiet", "loud"])
def test_reading_a_model_back_from_mlflow_prints_nothing(tmp_path: Path, mode: str) -> None:
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"}
    done = subprocess.run([sys.executable, "-c", _READ_BACK, mode, str(tmp_path)], env=env,
                          capture_output=True, text=True, timeout=180, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    assert sorted(p.name for p in (tmp_path / "back" / "model").iterdir()) == ["a", "b", "c"]
    # Without quiet_mlflow (the "loud" control) MLflow does draw it, and announces its tables.
    assert ("Downloading artifacts" in done.stderr) is (mode == "loud")
    assert ("Creating initial MLflow database tables" in done.stderr) is (mode == "loud")
