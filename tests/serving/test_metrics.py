"""The service's Prometheus series (serving.metrics): labels, bounded campaigns, caps, drift, HTTP errors."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

from scoring.schemas import ScoreRequest, ScoreResponse, Signal
from serving import metrics as metrics_module
from serving.metrics import (
    DRIFT_REFRESH_S,
    NO_DRIFT_REPORT,
    OTHER_CAMPAIGN,
    CampaignLabels,
    ServiceMetrics,
    cap_reasons,
    drift_status,
    route_of,
    service_metrics,
)
from serving.service import RequestGuard

ATTEMPTS = "promoguard_campaign_attempts_total"
OUTCOMES = "promoguard_campaign_outcomes_total"
CAPS = "promoguard_cap_exceeded_total"


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


def _metrics(registry: CollectorRegistry, limit: int = 50, clock: FakeClock | None = None) -> ServiceMetrics:
    return ServiceMetrics(registry, limit, clock or FakeClock())


def _request(
    code: str = "WELCOME10", discount: float | None = 10.0, promo_type: str = "welcome"
) -> ScoreRequest:
    return ScoreRequest.model_validate({
        "request_id": "r-1",
        "promotion": {"code": code, "type": promo_type, "discount_value": discount},
    })


def _signal(name: str, code: str, points: int = 60) -> Signal:
    return Signal(name=name, code=code, description="d", points=points, source="rule")  # type: ignore[arg-type]


def _response(decision: str = "allow", fallback: str | None = None, signals: list[Signal] | None = None,
              latency_ms: float = 4.0) -> ScoreResponse:
    band = {"allow": "clean", "watch": "low", "verify": "medium", "refuse": "high"}[decision]
    return ScoreResponse.model_validate({
        "request_id": "r-1", "score": {"clean": 5, "low": 20, "medium": 40, "high": 80}[band], "band": band,
        "decision": decision, "signals": [s.model_dump() for s in signals or []],
        "model_version": None if fallback else "3", "degraded": fallback is not None, "fallback": fallback,
        "latency_ms": latency_ms,
    })


def _value(registry: CollectorRegistry, name: str, **labels: str) -> float:
    value = registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


def test_a_scored_attempt_is_counted_by_path_campaign_and_stake(registry: CollectorRegistry) -> None:
    m = _metrics(registry)
    m.observe_score(_request(discount=12.5), _response("verify", latency_ms=30.0))
    m.observe_score(_request(discount=12.5), _response("verify", fallback="rules", latency_ms=180.0))
    m.observe_score(_request(discount=None), _response("allow"))
    assert _value(registry, "promoguard_score_requests_total", promo_type="welcome", decision="verify",
                  band="medium", path="model") == 1
    assert _value(registry, "promoguard_score_requests_total", promo_type="welcome", decision="verify",
                  band="medium", path="rules") == 1
    assert _value(registry, ATTEMPTS, campaign="WELCOME10", decision="verify") == 2
    assert _value(registry, ATTEMPTS, campaign="WELCOME10", decision="allow") == 1
    # The stake is the sum of discount values; an attempt without one adds nothing.
    assert _value(registry, "promoguard_campaign_discount_at_stake_total", campaign="WELCOME10",
                  decision="verify") == 25.0
    assert _value(registry, "promoguard_campaign_discount_at_stake_total", campaign="WELCOME10",
                  decision="allow") == 0
    # Latency in seconds, bucketed around the 50 ms and 200 ms deadlines.
    assert _value(registry, "promoguard_score_latency_seconds_bucket", path="model", le="0.05") == 2
    assert _value(registry, "promoguard_score_latency_seconds_bucket", path="rules", le="0.1") == 0
    assert _value(registry, "promoguard_score_latency_seconds_bucket", path="rules", le="0.2") == 1


def test_only_the_first_n_campaigns_get_a_label_of_their_own(registry: CollectorRegistry) -> None:
    m = _metrics(registry, limit=3)
    for i in range(10):
        m.observe_score(_request(code=f"SPRAY{i}"), _response())
    m.observe_score(_request(code="SPRAY0"), _response())
    text = generate_latest(registry).decode()
    series = [line for line in text.splitlines() if line.startswith("promoguard_campaign_attempts_total{")]
    assert len(series) == 4, series
    assert _value(registry, ATTEMPTS, campaign="SPRAY0", decision="allow") == 2
    assert _value(registry, ATTEMPTS, campaign=OTHER_CAMPAIGN, decision="allow") == 7


def test_campaign_labels_are_stable_and_never_admit_the_other_label() -> None:
    labels = CampaignLabels(2)
    assert labels.label(OTHER_CAMPAIGN) == OTHER_CAMPAIGN
    assert [labels.label(c) for c in ("A", "B", "C", "A", "B")] == ["A", "B", "other", "A", "B"]
    assert labels.admitted == {"A", "B"}
    assert CampaignLabels(0).label("A") == OTHER_CAMPAIGN
    with pytest.raises(ValueError, match=">= 0"):
        CampaignLabels(-1)


def test_limit_campaigns_applies_the_configured_bound(registry: CollectorRegistry) -> None:
    m = _metrics(registry)
    m.limit_campaigns(1)
    m.observe_score(_request(code="A"), _response())
    m.observe_score(_request(code="B"), _response())
    assert _value(registry, "promoguard_campaign_attempts_total", campaign="other", decision="allow") == 1


def test_cap_signals_are_counted_once_per_answer(registry: CollectorRegistry) -> None:
    m = _metrics(registry)
    capped = [_signal("customer_cap_reached", "CUSTOMER_CAP_REACHED"),
              _signal("email_alias", "EMAIL_ALIAS", 10)]
    m.observe_score(_request(), _response("refuse", signals=capped))
    m.observe_score(_request(promo_type="sitewide"),
                    _response("refuse", signals=[_signal("single_use_code_spent", "SINGLE_USE_SPENT")]))
    m.observe_score(_request(), _response("allow", signals=[_signal("email_alias", "EMAIL_ALIAS", 10)]))
    assert _value(registry, "promoguard_cap_exceeded_total", reason="customer_cap_reached",
                  promo_type="welcome") == 1
    assert _value(registry, CAPS, reason="single_use_spent", promo_type="sitewide") == 1
    assert cap_reasons(["SINGLE_USE_SPENT", "SINGLE_USE_SPENT", "IP_TOR"]) == ["single_use_spent"]


def test_the_cap_codes_are_the_codes_of_the_shipped_cap_rules() -> None:
    import yaml

    table = Path(__file__).resolve().parents[2] / "scoring" / "rules.yaml"
    rules = yaml.safe_load(table.read_text(encoding="utf-8"))["rules"]
    codes = {rule["id"]: rule["code"] for rule in rules}
    assert {codes["customer_cap_reached"], codes["single_use_code_spent"]} == metrics_module.CAP_REASON_CODES


def test_outcomes_and_feedback_are_counted(registry: CollectorRegistry) -> None:
    m = _metrics(registry)
    m.observe_outcome("WELCOME10", "redeemed")
    m.observe_outcome(None, "abandoned")
    m.feedback.labels(label="abuse").inc()
    assert _value(registry, OUTCOMES, campaign="WELCOME10", outcome="redeemed") == 1
    assert _value(registry, OUTCOMES, campaign="other", outcome="abandoned") == 1
    assert _value(registry, "promoguard_feedback_total", label="abuse") == 1


def test_http_errors_are_counted_by_bounded_route_and_status(registry: CollectorRegistry) -> None:
    m = _metrics(registry)
    m.observe_http_error("/score", 401)
    m.observe_http_error("/decisions/abc-123", 404)
    m.observe_http_error("/wp-admin/login.php", 404)
    m.observe_http_error("/score", 200)
    m.observe_http_error("/outcome", 503)
    assert _value(registry, "promoguard_http_errors_total", route="/score", status="401") == 1
    assert _value(registry, "promoguard_http_errors_total", route="/decisions", status="404") == 1
    assert _value(registry, "promoguard_http_errors_total", route="other", status="404") == 1
    assert _value(registry, "promoguard_http_errors_total", route="/outcome", status="503") == 1
    assert _value(registry, "promoguard_http_errors_total", route="/score", status="200") == 0
    assert route_of("/scores") == "other" and route_of("/metrics") == "/metrics"


def test_build_info_carries_the_version(registry: CollectorRegistry) -> None:
    m = _metrics(registry)
    m.set_build_info("1.2.3")
    assert _value(registry, "promoguard_build_info", version="1.2.3") == 1


def _write_report(reports: Path, status: str, mtime: float) -> None:
    reports.mkdir(parents=True, exist_ok=True)
    path = reports / "latest.json"
    path.write_text(json.dumps({"status": status, "exit_code": 0}), encoding="utf-8")
    os.utime(path, (mtime, mtime))


def test_drift_status_follows_the_latest_report(registry: CollectorRegistry, tmp_path: Path) -> None:
    clock = FakeClock()
    m = _metrics(registry, clock=clock)
    reports = tmp_path / "reports"
    m.watch_drift(reports)
    assert _value(registry, "promoguard_drift_status") == NO_DRIFT_REPORT
    _write_report(reports, "amber", 1_000_000)
    # Looked at again only after the refresh interval, so a request never reads the file.
    m.observe_score(_request(), _response())
    assert _value(registry, "promoguard_drift_status") == NO_DRIFT_REPORT
    clock.now += DRIFT_REFRESH_S
    m.observe_score(_request(), _response())
    assert _value(registry, "promoguard_drift_status") == 1
    _write_report(reports, "red", 1_000_100)
    clock.now += DRIFT_REFRESH_S
    m.refresh_drift()
    assert _value(registry, "promoguard_drift_status") == 2


_WORKER = """
import sys
from pathlib import Path
from prometheus_client import CollectorRegistry
from serving.metrics import ServiceMetrics
metrics = ServiceMetrics(CollectorRegistry())
if sys.argv[1] == "watch":
    metrics.watch_drift(Path(sys.argv[2]))
"""


def test_a_starting_worker_does_not_hide_the_report_the_others_read(tmp_path: Path) -> None:
    # Worker A has read a red report; worker B has built its series and is still loading its model.
    multiproc = tmp_path / "prometheus"
    multiproc.mkdir()
    reports = tmp_path / "reports"
    _write_report(reports, "red", 1_000_000)
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(multiproc)}
    for step in (["watch", str(reports)], ["start"]):
        subprocess.run([sys.executable, "-c", _WORKER, *step], env=env, check=True, timeout=120)
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(multiproc))
    assert registry.get_sample_value("promoguard_drift_status") == 2


@pytest.mark.parametrize(("content", "expected"), [
    ('{"status": "green"}', 0), ('{"status": "amber"}', 1), ('{"status": "red"}', 2),
    ('{"status": "purple"}', NO_DRIFT_REPORT), ("not json", NO_DRIFT_REPORT), ("[1, 2]", NO_DRIFT_REPORT),
])
def test_drift_status_reads_the_badge(tmp_path: Path, content: str, expected: int) -> None:
    assert drift_status(tmp_path) == NO_DRIFT_REPORT
    (tmp_path / "latest.json").write_text(content, encoding="utf-8")
    assert drift_status(tmp_path) == expected


def test_the_worker_shares_one_set_of_series() -> None:
    assert service_metrics() is service_metrics()
    names = {metric.name for metric in REGISTRY.collect()}
    assert {"promoguard_score_requests", "promoguard_http_errors", "promoguard_drift_status"} <= names


async def _ok_app(scope: Any, receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b""})


async def _crash_app(scope: Any, receive: Any, send: Any) -> None:
    raise RuntimeError("boom")


def _call(guard: RequestGuard, path: str, headers: list[tuple[bytes, bytes]]) -> int:
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "GET", "path": path, "headers": headers}
    asyncio.run(guard(scope, receive, send))
    return int(sent[0]["status"])


def _shared_errors(route: str, status: str) -> float:
    value = REGISTRY.get_sample_value("promoguard_http_errors_total", {"route": route, "status": status})
    return 0.0 if value is None else value


def test_the_guard_counts_its_own_rejections_and_the_app_errors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PROMOGUARD_ROOT", str(tmp_path))
    monkeypatch.setenv("PROMOGUARD_API_KEYS", "k1")
    before_401 = _shared_errors("/decisions", "401")
    before_500 = _shared_errors("/livez", "500")
    guard = RequestGuard(_ok_app)
    assert _call(guard, "/decisions/x", []) == 401
    assert _call(guard, "/decisions/x", [(b"x-api-key", b"k1")]) == 200
    assert _shared_errors("/decisions", "401") == before_401 + 1
    with pytest.raises(RuntimeError, match="boom"):
        _call(RequestGuard(_crash_app), "/livez", [])
    assert _shared_errors("/livez", "500") == before_500 + 1
