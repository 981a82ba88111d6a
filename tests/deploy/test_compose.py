"""deploy/compose.yaml, the production profile: checked by docker compose when present, else structurally."""

from __future__ import annotations

import re
import shutil
import subprocess
from typing import Any

import pytest
import yaml

from config.settings import Settings
from tests.deploy.promql import DEPLOY

COMPOSE = DEPLOY / "compose.yaml"
REPLICAS = ("promoguard-1", "promoguard-2")
#: Values for the variables the file requires from the operator's shell.
OPERATOR_ENV = {
    "PROMOGUARD_PEPPER": "a-production-secret",
    "PROMOGUARD_API_KEYS": "key-a,key-b",
    "POSTGRES_PASSWORD": "pw",
}
_INTERPOLATION = re.compile(r"\$\{(\w+)(?:(:?[-?])([^}]*))?\}")


def _interpolate(text: str, env: dict[str, str]) -> str:
    """Compose's ${VAR}, ${VAR:-default} and ${VAR:?message} with ``env``; a missing required one fails."""

    def one(match: re.Match[str]) -> str:
        name, op, arg = match.group(1), match.group(2), match.group(3)
        if name in env:
            return env[name]
        if op in (":-", "-"):
            return arg
        if op in (":?", "?"):
            raise AssertionError(f"${{{name}}} is required: {arg}")
        return ""

    return _INTERPOLATION.sub(one, text)


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(_interpolate(COMPOSE.read_text(encoding="utf-8"), OPERATOR_ENV))
    return loaded


def _compose_command() -> list[str] | None:
    docker = shutil.which("docker")
    if docker:
        probe = subprocess.run([docker, "compose", "version"], capture_output=True, check=False)
        if probe.returncode == 0:
            return [docker, "compose"]
    legacy = shutil.which("docker-compose")
    return [legacy] if legacy else None


def test_docker_compose_accepts_the_file() -> None:
    command = _compose_command()
    if command is None:
        pytest.skip("neither `docker compose` nor `docker-compose` is installed: structural tests stand in")
    result = subprocess.run(
        [*command, "-f", str(COMPOSE), "config", "--quiet"], capture_output=True, text=True, check=False,
        env={**OPERATOR_ENV, "PATH": "/usr/local/bin:/usr/bin:/bin"}, timeout=60,
    )
    assert result.returncode == 0, result.stderr


def test_a_required_secret_cannot_be_left_out() -> None:
    with pytest.raises(AssertionError, match="PROMOGUARD_PEPPER"):
        _interpolate(COMPOSE.read_text(encoding="utf-8"), {})


def test_the_production_services_are_all_there(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert {"redis", "postgres", "mlflow", "proxy", "prometheus", *REPLICAS} <= set(services)
    image = services[REPLICAS[0]]["image"]
    assert all(services[name]["image"] == image for name in REPLICAS)
    assert services["mlflow"]["image"] == image  # the server runs the pinned MLflow of the clients
    for name, service in services.items():
        for dependency in service.get("depends_on", []):
            assert dependency in services, (name, dependency)


def _environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment", {})
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {str(k): str(v) for k, v in env.items()}


def test_every_promoguard_variable_is_a_setting_and_the_replicas_settings_build(
    compose: dict[str, Any],
) -> None:
    known = set(Settings.variables().values())
    for name, service in compose["services"].items():
        env = _environment(service)
        unknown = {key for key in env if key.startswith("PROMOGUARD_") and key not in known}
        assert not unknown, (name, unknown)
    env = _environment(compose["services"][REPLICAS[0]])
    settings = Settings.from_env({k: v for k, v in env.items() if k.startswith("PROMOGUARD_")})
    assert settings.online_store == "redis" and settings.velocity_backend == "redis"
    assert settings.redis_url.startswith("redis://redis:")
    assert settings.mlflow_tracking_uri == "http://mlflow:5000"
    # Shared state: a retry, an outcome or a list change may reach either replica.
    assert settings.state_url == "postgresql://mlflow:pw@postgres:5432/promoguard"
    init = (DEPLOY / "postgres" / "init.sql").read_text(encoding="utf-8")
    assert "CREATE DATABASE promoguard" in init
    assert any(v.endswith("/docker-entrypoint-initdb.d/promoguard.sql:ro")
               for v in compose["services"]["postgres"]["volumes"])
    for name in (*REPLICAS, "jobs"):
        assert "postgres" in compose["services"][name]["depends_on"], name
    assert settings.require_api_key and settings.api_keys == ("key-a", "key-b")
    assert not settings.uses_dev_pepper


def test_mlflow_runs_on_postgres_with_an_artifact_volume(compose: dict[str, Any]) -> None:
    mlflow = compose["services"]["mlflow"]
    command = " ".join(mlflow["command"])
    assert "--backend-store-uri=postgresql://mlflow:pw@postgres:5432/mlflow" in command
    destination = re.search(r"--artifacts-destination=(\S+)", command)
    assert destination is not None
    mounts = {volume.split(":")[1]: volume.split(":")[0] for volume in mlflow["volumes"]}
    assert mounts[destination.group(1)] in compose["volumes"]
    assert "mlflow" in re.search(r"--allowed-hosts=(\S+)", command).group(1).split(",")  # type: ignore[union-attr]


def test_volumes_are_declared_and_mounted_files_exist(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (DEPLOY / source).is_file(), (name, source)
            else:
                assert source in compose["volumes"], (name, source)
    replica_mounts = {tuple(compose["services"][name]["volumes"]) for name in REPLICAS}
    assert len(replica_mounts) == 1  # both replicas see the same Feast registry and reports


def test_ports_published_are_the_proxy_mlflow_and_prometheus(compose: dict[str, Any]) -> None:
    services = compose["services"]
    published = {name: service["ports"] for name, service in services.items() if "ports" in service}
    assert set(published) == {"proxy", "mlflow", "prometheus"}
    for name in REPLICAS:
        assert compose["services"][name]["expose"] == ["3000"]
    assert any(str(port).endswith(":8080") for port in published["proxy"])


def test_prometheus_scrapes_both_replicas_and_loads_the_rules(compose: dict[str, Any]) -> None:
    config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text(encoding="utf-8"))
    targets = {t for job in config["scrape_configs"] for sc in job["static_configs"] for t in sc["targets"]}
    assert targets == {f"{name}:3000" for name in REPLICAS}
    assert all(job.get("metrics_path", "/metrics") == "/metrics" for job in config["scrape_configs"])
    mounted = {v.split(":")[1] for v in compose["services"]["prometheus"]["volumes"]}
    assert set(config["rule_files"]) <= mounted


def test_the_proxy_balances_both_replicas(compose: dict[str, Any]) -> None:
    conf = (DEPLOY / "nginx" / "nginx.conf").read_text(encoding="utf-8")
    upstream = re.search(r"upstream promoguard \{(.*?)\}", conf, re.S)
    assert upstream is not None
    servers = set(re.findall(r"server\s+([\w-]+):3000", upstream.group(1)))
    assert servers == set(REPLICAS)
    assert "proxy_pass http://promoguard;" in conf
    assert "location = /metrics" in conf  # scraped per replica, never through the proxy


def test_the_jobs_service_runs_the_command_line_on_the_same_data(compose: dict[str, Any]) -> None:
    jobs = compose["services"]["jobs"]
    assert jobs["profiles"] == ["jobs"]
    assert jobs["entrypoint"][-2:] == ["-m", "promoguard"]
    assert jobs["volumes"] == compose["services"][REPLICAS[0]]["volumes"]
    assert _environment(jobs) == _environment(compose["services"][REPLICAS[0]])
