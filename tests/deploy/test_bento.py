"""The bento: ``bentoml build`` of bentofile.yaml packs the service, its data files and its pins."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
BENTOML = Path(sys.executable).parent / "bentoml"
#: The packages the service and the batch commands import: the container cannot run without them.
PACKAGES = (
    "config", "sqlitekit", "features", "scoring", "serving", "promoguard", "training", "monitoring", "replay",
    "simulation",
)


def _requirements_module() -> ModuleType:
    # deploy/ holds no package (layering forbids a new top-level one); load the script by its path.
    spec = importlib.util.spec_from_file_location("deploy_requirements", REPO / "deploy" / "requirements.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _uv_available() -> bool:
    # `bentoml build` pip-installs uv into the environment when it finds none: a test must not do that.
    if shutil.which("uv") or (Path(sys.executable).parent / "uv").exists():
        return True
    return importlib.util.find_spec("uv") is not None


def test_pinned_requirements_are_fresh() -> None:
    module = _requirements_module()
    written = (REPO / "deploy" / "requirements.txt").read_text(encoding="utf-8")
    stale = "deploy/requirements.txt is stale: run .venv/bin/python deploy/requirements.py"
    assert written == module.render(), stale
    pins = module.constraint_pins(REPO / "constraints.txt")
    for line in written.splitlines():
        if line and not line.startswith("#"):
            name, version = line.split("==")
            assert pins[name] == version
    # A serving image carries no notebook, Spark or test tooling.
    assert not {"pyspark", "jupyterlab", "pytest", "ruff"} & {
        line.split("==")[0] for line in written.splitlines() if "==" in line
    }


def test_bentofile_names_the_service_and_its_packages() -> None:
    config = yaml.safe_load((REPO / "bentofile.yaml").read_text(encoding="utf-8"))
    assert config["service"] == "serving.service:PromoGuard"
    included = " ".join(config["include"])
    for package in PACKAGES:
        assert f"{package}/" in included, package
    assert config["python"]["requirements_txt"] == "deploy/requirements.txt"


@pytest.fixture(scope="module")
def bento(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One ``bentoml build`` into a private BENTOML_HOME; the built bento's folder."""
    if not BENTOML.exists():
        pytest.skip(f"no bentoml command beside {sys.executable}")
    if not _uv_available():
        pytest.skip("uv is not installed: `bentoml build` would pip-install it (add uv to constraints.txt)")
    home = tmp_path_factory.mktemp("bentoml-home")
    env = {
        **os.environ,
        "BENTOML_HOME": str(home),
        "BENTOML_DO_NOT_TRACK": "true",
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "GX_ANALYTICS_ENABLED": "false",
    }
    result = subprocess.run(
        [str(BENTOML), "build", str(REPO), "--output", "tag"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300, check=False,
    )
    assert result.returncode == 0, f"bentoml build failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    built = [p for p in (home / "bentos" / "promoguard").iterdir() if p.is_dir() and p.name != "latest"]
    assert len(built) == 1, built
    return built[0]


def test_the_bento_holds_the_service_its_data_files_and_pins(bento: Path) -> None:
    src = bento / "src"
    assert (src / "serving" / "service.py").is_file()
    assert (src / "serving" / "metrics.py").is_file()
    assert (src / "scoring" / "rules.yaml").is_file()
    assert (src / "features" / "feature_repo" / "feature_store.yaml").is_file()
    for package in PACKAGES:
        assert (src / package / "__init__.py").is_file(), package
    # Tests, run-time state and caches stay out of the image.
    assert not (src / "tests").exists() and not (src / "data").exists()
    assert not list(src.rglob("__pycache__"))
    meta = yaml.safe_load((bento / "bento.yaml").read_text(encoding="utf-8"))
    assert meta["service"] == "serving.service:PromoGuard"
    routes = {route["route"] for route in meta["schema"]["routes"]}
    assert {"/score", "/outcome", "/feedback"} <= routes
    requirements = (bento / "env" / "python" / "requirements.txt").read_text(encoding="utf-8")
    assert "lightgbm==" in requirements and "bentoml==" in requirements
    # LightGBM needs OpenMP at run time: the image installs it.
    assert "libgomp1" in (bento / "env" / "docker" / "Dockerfile").read_text(encoding="utf-8")
