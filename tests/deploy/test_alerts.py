"""Prometheus alert rules: promtool checks and unit-tests them, and they read only exported series."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.deploy.promql import DEPLOY, SCRAPE_SERIES, alert_expressions, metric_names

PROMETHEUS = DEPLOY / "prometheus"
RUNBOOK = DEPLOY.parent / "docs" / "runbook.md"
#: Every alert the brief of the on-call rota names (tests below check each exists and is unit-tested).
REQUIRED_ALERTS = {
    "PromoguardCampaignAttemptSpike", "PromoguardCampaignRedemptionSpike", "PromoguardFrictionShareJump",
    "PromoguardFallbackRateHigh", "PromoguardScoreLatencyP95High", "PromoguardScoreLatencyP95AtDeadline",
    "PromoguardServerErrors", "PromoguardDriftRed", "PromoguardCapExceededSurge",
}


def _promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        pytest.skip("promtool is not on PATH (Debian's `prometheus` package provides it)")
    return found


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        list(args), capture_output=True, text=True, timeout=120, check=False, cwd=PROMETHEUS
    )


def test_promtool_checks_the_rules() -> None:
    result = _run(_promtool(), "check", "rules", "alerts.yml")
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_unit_tests_pass() -> None:
    result = _run(_promtool(), "test", "rules", "alerts_test.yml")
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_checks_the_scrape_config(tmp_path: Path) -> None:
    # The config names the rules where the container mounts them; check it against the file here.
    config = yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text(encoding="utf-8"))
    config["rule_files"] = [str(PROMETHEUS / "alerts.yml")]
    local = tmp_path / "prometheus.yml"
    local.write_text(yaml.safe_dump(config), encoding="utf-8")
    result = _run(_promtool(), "check", "config", str(local))
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_required_alert_exists_and_is_unit_tested() -> None:
    alerts = alert_expressions()
    assert set(alerts) >= REQUIRED_ALERTS
    tests = yaml.safe_load((PROMETHEUS / "alerts_test.yml").read_text(encoding="utf-8"))
    tested = {case["alertname"] for group in tests["tests"] for case in group.get("alert_rule_test", [])}
    assert set(alerts) <= tested, sorted(set(alerts) - tested)


def test_alerts_read_only_promoguard_series_and_name_a_runbook_section() -> None:
    rules = yaml.safe_load((PROMETHEUS / "alerts.yml").read_text(encoding="utf-8"))
    runbook = RUNBOOK.read_text(encoding="utf-8") if RUNBOOK.exists() else ""
    for group in rules["groups"]:
        for rule in group["rules"]:
            names = metric_names(rule["expr"])
            assert names, rule["alert"]
            foreign = {n for n in names if not n.startswith("promoguard_") and n not in SCRAPE_SERIES}
            assert not foreign, (rule["alert"], foreign)
            assert rule["labels"]["severity"] in {"page", "ticket"}
            anchor = rule["annotations"]["runbook"].split("#", 1)[1]
            assert f"{{#{anchor}}}" in runbook or _slug_in(anchor, runbook), (rule["alert"], anchor)


def _slug_in(anchor: str, markdown: str) -> bool:
    # A markdown heading's anchor: lower case, punctuation dropped, spaces as hyphens.
    import re

    for line in markdown.splitlines():
        if line.startswith("#"):
            title = line.lstrip("#").strip().lower()
            if re.sub(r"\s+", "-", re.sub(r"[^\w\s-]", "", title)) == anchor:
                return True
    return False
