"""Dashboards and alerts against the real service: every series they read is one it exports.

The service is a real ``bentoml serve`` (``promoguard.demo.running_service``, as the end-to-end tests
start it) on the tiny test artifact, with two workers, shadow scoring on and a red drift report in
place. A few attempts are scored (a spent single-use code, a conflict, a bad body, an outcome, a
label), ``/metrics`` is scraped, and each metric name in each dashboard panel and alert rule must be
in it. When Debian's ``prometheus`` server is installed, it scrapes the service and evaluates every
dashboard expression through its HTTP API.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from promoguard.demo import free_port, running_service
from promoguard.settings import Settings
from tests.deploy.promql import DEPLOY, SCRAPE_SERIES, alert_expressions, dashboard_expressions, metric_names

pytestmark = pytest.mark.slow

REPO = DEPLOY.parent
SINGLE_USE = {"code": "ONCE-ONLY", "type": "sitewide", "single_use": True, "discount_value": 25.0}


def _body(request_id: str, promotion: dict[str, Any], device: str, **extra: Any) -> dict[str, Any]:
    return {
        "request_id": request_id,
        "promotion": promotion,
        "account": {"account_id": f"acct-{device}", "created_at": "2026-01-02T09:00:00Z"},
        "email": f"{device}@example.com",
        "device": {"device_id": f"3f0c7a52-9b1e-4d5e-8c11-{device:0>12}"},
        "payment": {"fingerprint": f"fp_{device}"},
        "cart": {"total": 80.0, "currency": "USD"},
        **extra,
    }


def _scrape(url: str) -> dict[str, float]:
    """Every sample of /metrics, by ``name{sorted labels}``."""
    text = httpx.get(f"{url}/metrics", timeout=10).text
    samples: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            samples[f"{sample.name}{{{labels}}}"] = sample.value
    return samples


def _names(samples: dict[str, float]) -> set[str]:
    return {key.split("{", 1)[0] for key in samples}


def _total(samples: dict[str, float], name: str, **labels: str) -> float:
    wanted = [f"{k}={v}" for k, v in labels.items()]
    return sum(
        value for key, value in samples.items()
        if key.split("{", 1)[0] == name and all(part in key for part in wanted)
    )


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory, artifact_dir: Path) -> Iterator[tuple[str, Path]]:
    """The running service with traffic already scored; yields its URL and its log file."""
    root = tmp_path_factory.mktemp("dash-svc")
    shutil.copytree(artifact_dir, root / "model")
    reports = root / "data" / "reports"
    reports.mkdir(parents=True)
    (reports / "latest.json").write_text(json.dumps({"status": "red", "exit_code": 2}), encoding="utf-8")
    settings = Settings.from_env({}, root=root)
    extra = {
        "PROMOGUARD_MODEL_DIR": str(root / "model"),
        "PROMOGUARD_REQUIRE_API_KEY": "false",
        "PROMOGUARD_SHADOW_SHARE": "1",
        "PROMOGUARD_SHADOW_RULES": str(REPO / "scoring" / "rules.yaml"),
        "BENTOML_HOME": str(root / "bentoml"),
    }
    log_path = root / "service.log"
    with log_path.open("wb") as log:
        try:
            with running_service(settings, free_port(), extra_env=extra, log=log) as url:
                _traffic(url)
                yield url, log_path
        except RuntimeError as exc:
            pytest.fail(f"the service did not start: {exc}\n{log_path.read_text(errors='replace')[-3000:]}")


def _traffic(url: str) -> None:
    with httpx.Client(base_url=url, timeout=30) as client:
        for i, code in enumerate(("WELCOME10", "WELCOME10", "SPRING5", "FREESAMPLE")):
            promo = {"code": code, "type": "welcome", "discount_value": 10.0, "per_customer_limit": 1}
            assert client.post("/score", json=_body(f"dash-{i}", promo, str(i))).status_code == 200
        assert client.post("/score", json=_body("dash-once-1", SINGLE_USE, "101")).status_code == 200
        redeemed = client.post("/outcome", json={"request_id": "dash-once-1", "outcome": "redeemed"})
        assert redeemed.status_code == 200, redeemed.text
        second = client.post("/score", json=_body("dash-once-2", SINGLE_USE, "202"))
        assert second.status_code == 200
        assert "SINGLE_USE_SPENT" in {s["code"] for s in second.json()["signals"]}, second.json()
        changed = _body("dash-0", {"code": "OTHER"}, "0")
        assert client.post("/score", json=changed).status_code == 409
        assert client.post("/score", json={"request_id": "x", "unknown": 1}).status_code == 400
        label = {"request_id": "dash-1", "label": "abuse", "source": "manual_review"}
        labelled = client.post("/feedback", json=label)
        assert labelled.status_code == 200
    # The shadow worker logs off the request path: wait for its first rows.
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if "promoguard_shadow_scored_total" in _names(_scrape(url)):
            return
        time.sleep(0.5)


def test_the_service_exports_the_new_series_with_their_values(service: tuple[str, Path]) -> None:
    url, _ = service
    samples = _scrape(url)
    # Two workers write to one multiprocess folder: /metrics adds them up whichever worker answered.
    assert _total(samples, "promoguard_score_requests_total") == 6
    assert _total(samples, "promoguard_campaign_attempts_total", campaign="WELCOME10") == 2
    assert _total(samples, "promoguard_campaign_attempts_total", campaign="ONCE-ONLY") == 2
    assert _total(samples, "promoguard_campaign_discount_at_stake_total", campaign="ONCE-ONLY") == 50.0
    outcomes = "promoguard_campaign_outcomes_total"
    assert _total(samples, outcomes, campaign="ONCE-ONLY", outcome="redeemed") == 1
    assert _total(samples, "promoguard_cap_exceeded_total", reason="single_use_spent") == 1
    assert _total(samples, "promoguard_http_errors_total", route="/score", status="409") == 1
    assert _total(samples, "promoguard_http_errors_total", route="/score", status="400") == 1
    assert _total(samples, "promoguard_request_errors_total", kind="conflict") == 1
    assert _total(samples, "promoguard_feedback_total", label="abuse") == 1
    assert _total(samples, "promoguard_drift_status") == 2
    build = [key for key in samples if key.startswith("promoguard_build_info{")]
    assert build and all("version=" in key for key in build)


def _used_names() -> dict[str, set[str]]:
    used = {f"alert {name}": metric_names(expr) for name, expr in alert_expressions().items()}
    used.update({f"dashboard {name}": metric_names(expr) for name, expr in dashboard_expressions().items()})
    return used


def test_every_series_the_dashboards_and_alerts_read_is_exported(service: tuple[str, Path]) -> None:
    url, _ = service
    exported = _names(_scrape(url))
    used = _used_names()
    assert len(used) > 30
    missing = {where: names - exported - SCRAPE_SERIES for where, names in used.items()}
    missing = {where: names for where, names in missing.items() if names}
    assert not missing, missing


def test_dashboards_are_well_formed() -> None:
    from tests.deploy.promql import dashboards

    boards = dashboards()
    assert set(boards) == {"promoguard-executive.json", "promoguard-oncall.json", "promoguard-debug.json"}
    uids = [board["uid"] for board in boards.values()]
    assert len(set(uids)) == len(uids)
    for name, board in boards.items():
        ids = [panel["id"] for panel in board["panels"]]  # type: ignore[index, union-attr]
        assert len(set(ids)) == len(ids), name
        assert all(panel["targets"] for panel in board["panels"]), name  # type: ignore[index, union-attr]


# --- the optional check with a real Prometheus server ------------------------------------------------


def _grafana_to_promql(expr: str) -> str:
    # The variables Grafana fills in before it sends a query.
    return (expr.replace("$__rate_interval", "1m").replace("$__range", "5m")
            .replace('"$campaign"', '".*"'))


@pytest.fixture(scope="module")
def prometheus(service: tuple[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A Prometheus server scraping the service every second; yields its base URL."""
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.skip("no prometheus server binary on PATH (Debian's `prometheus` package provides it)")
    url, _ = service
    work = tmp_path_factory.mktemp("prometheus")
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(DEPLOY / "prometheus" / "alerts.yml")],
        "scrape_configs": [
            {"job_name": "promoguard", "static_configs": [{"targets": [url.split("//", 1)[1]]}]},
        ],
    }
    (work / "prometheus.yml").write_text(yaml.safe_dump(config), encoding="utf-8")
    port = free_port()
    with (work / "prometheus.log").open("wb") as log:
        proc = subprocess.Popen(
            [binary, f"--config.file={work / 'prometheus.yml'}", f"--storage.tsdb.path={work / 'data'}",
             f"--web.listen-address=127.0.0.1:{port}"],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, (work / "prometheus.log").read_text(errors="replace")[-3000:]
            try:
                params = {"query": "count_over_time(up[1m])"}
                query = httpx.get(f"{base}/api/v1/query", params=params, timeout=2)
                result = query.json()["data"]["result"] if query.status_code == 200 else []
                # A rate over one minute needs two scrapes at least.
                if result and float(result[0]["value"][1]) >= 3:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "prometheus did not scrape the service within 60 s"
            time.sleep(0.5)
        yield base
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def test_prometheus_scrapes_the_service_and_evaluates_every_dashboard_expression(prometheus: str) -> None:
    up = httpx.get(f"{prometheus}/api/v1/query", params={"query": 'up{job="promoguard"}'}, timeout=5).json()
    assert up["data"]["result"] and up["data"]["result"][0]["value"][1] == "1"
    for where, expr in dashboard_expressions().items():
        params = {"query": _grafana_to_promql(expr)}
        answer = httpx.get(f"{prometheus}/api/v1/query", params=params, timeout=10)
        assert answer.status_code == 200 and answer.json()["status"] == "success", (where, answer.text)
    stake = httpx.get(f"{prometheus}/api/v1/query", timeout=10, params={
        "query": 'sum(promoguard_campaign_discount_at_stake_total{campaign="ONCE-ONLY"})'}).json()
    assert float(stake["data"]["result"][0]["value"][1]) == 50.0


def test_prometheus_loads_every_alert_rule_and_evaluates_it_without_error(prometheus: str) -> None:
    deadline = time.monotonic() + 20
    while True:
        groups = httpx.get(f"{prometheus}/api/v1/rules", timeout=5).json()["data"]["groups"]
        rules = [rule for group in groups for rule in group["rules"]]
        if rules and all(rule.get("health") == "ok" for rule in rules):
            break
        assert time.monotonic() < deadline, [(r["name"], r.get("health"), r.get("lastError")) for r in rules]
        time.sleep(0.5)
    assert {rule["name"] for rule in rules} == set(alert_expressions())
    # The drift report the service started with is red: that rule's condition holds (pending or firing).
    drift = next(rule for rule in rules if rule["name"] == "PromoguardDriftRed")
    assert drift["state"] in {"pending", "firing"}
