"""`promoguard drift` on the live scoring log, the fraud team's main use, after real HTTP traffic.

A real ``bentoml serve`` process (on a copy of the session's world, so the shared world's log stays
empty) scores a few hundred attempts replayed from the world's last days; ``promoguard drift`` then
compares that log with the champion's test window, first before any label has arrived (the log has no
labels and never has the simulator's ``pattern``), then after feedback for some of the attempts.

The replay is not a calm week: the online store already holds the replayed days, so windowed counts
look inflated and the report may well be amber or red. What is asserted is that the report exists,
exits with its own status, reads like a report (a few findings, one row per promotion type and busy
code, features under their signal names) and that the badge follows what the fraud team acts on.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pandas as pd
import pytest
from typer.testing import CliRunner

from monitoring.drift import MAX_FINDINGS
from promoguard.cli import app
from promoguard.settings import Settings
from tests.e2e.test_service_e2e import Service, body_from_event, copy_world, serve

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("world")]

#: Attempts replayed through the service: enough for every promotion type, small enough to be quick.
TRAFFIC = 300
FEEDBACK = 60
SEED = 17
_SEVERITY = {"green": 0, "amber": 1, "red": 2}


@dataclass(frozen=True)
class Sent:
    """One replayed attempt: the id the service logged it under and the world event it came from."""

    request_id: str
    source_id: str


@dataclass(frozen=True)
class LiveRun:
    """One `promoguard drift` run on the live log: exit code, output and the JSON report."""

    exit_code: int
    output: str
    report: dict[str, Any]


def _promotion(event: dict[str, Any], promotions: pd.DataFrame) -> dict[str, Any]:
    """The /score promotion block of a world event, with the store's policy from the promotions table."""
    promo: dict[str, Any] = {
        "code": event["promo_code"],
        "type": event["promo_type"],
        "valid": event.get("promo_valid") is not False,
    }
    if event.get("discount_value") is not None:
        promo["discount_value"] = float(event["discount_value"])
    if event["promo_code"] in promotions.index:
        policy = promotions.loc[event["promo_code"]]
        promo["single_use"] = bool(policy["single_use"])
        if not pd.isna(policy["per_customer_limit"]):
            promo["per_customer_limit"] = int(policy["per_customer_limit"])
    return promo


def _replayed_events(world: Settings) -> list[dict[str, Any]]:
    """TRAFFIC attempts from the world's last week (abuse included), each as a plain dict."""
    events = pd.read_parquet(world.raw_dir / "events.parquet")
    recent = events[events["ts"] >= events["ts"].max() - pd.Timedelta(days=7)]
    sample = recent.sample(TRAFFIC, random_state=SEED)
    sample = sample.astype(object).where(sample.notna(), None)
    return [{str(k): v for k, v in row.items()} for row in sample.to_dict("records")]


@pytest.fixture(scope="module")
def live(world: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    """The real service on a private copy of the world."""
    settings = copy_world(world, tmp_path_factory.mktemp("live-drift-world"))
    with serve(settings) as svc:
        yield svc


@pytest.fixture(scope="module")
def sent(live: Service, world: Settings) -> list[Sent]:
    """Replay the attempts through POST /score (a few in parallel, as checkout would)."""
    promotions = pd.read_parquet(world.raw_dir / "promotions.parquet").set_index("promo_code")
    events = _replayed_events(world)
    with httpx.Client(base_url=live.url, timeout=30.0) as client:

        def score(event: dict[str, Any]) -> Sent:
            body = body_from_event(event, _promotion(event, promotions), f"live-{uuid.uuid4().hex[:12]}")
            answer = client.post("/score", json=body)
            assert answer.status_code == 200, f"/score answered {answer.status_code}: {answer.text[:300]}"
            return Sent(body["request_id"], str(event["request_id"]))

        with ThreadPoolExecutor(4) as pool:
            return list(pool.map(score, events))


def _drift(settings: Settings) -> LiveRun:
    result = CliRunner().invoke(app, ["drift", "--root", str(settings.root)], catch_exceptions=False)
    latest = settings.reports_dir / "latest.json"
    report = json.loads(latest.read_text(encoding="utf-8")) if latest.exists() else {}
    return LiveRun(result.exit_code, result.output, report)


@pytest.fixture(scope="module")
def before_feedback(live: Service, sent: list[Sent]) -> LiveRun:
    """`promoguard drift` on the log before any label arrived."""
    return _drift(live.settings)


@pytest.fixture(scope="module")
def after_feedback(live: Service, sent: list[Sent], before_feedback: LiveRun, world: Settings) -> LiveRun:
    """Feedback for the first FEEDBACK attempts (their world labels, or legit), then drift again."""
    labels = pd.read_parquet(world.raw_dir / "labels.parquet").drop_duplicates("request_id", keep="last")
    label_of = dict(zip(labels["request_id"], labels["label"], strict=True))
    with httpx.Client(base_url=live.url, timeout=30.0) as client:
        for attempt in sent[:FEEDBACK]:
            body = {"request_id": attempt.request_id, "label": label_of.get(attempt.source_id, "legit")}
            answer = client.post("/feedback", json={**body, "source": "manual_review"})
            assert answer.status_code == 200, f"/feedback answered {answer.status_code}: {answer.text[:300]}"
    return _drift(live.settings)


def _acted_on(report: dict[str, Any]) -> str:
    metrics = report["metrics"]
    statuses = [metrics["score"]["status"], metrics["fallback"]["status"]]
    statuses += [c["status"] for c in (*metrics["decisions"], *metrics["bands"], *metrics["groups"])]
    return max(statuses, key=_SEVERITY.__getitem__)


def test_drift_runs_on_the_live_log_before_any_label_arrived(
    before_feedback: LiveRun, sent: list[Sent]
) -> None:
    run = before_feedback
    assert run.report, f"no report written:\n{run.output[-3000:]}"
    assert run.exit_code == run.report["exit_code"] in (0, 1, 2), run.output[-3000:]
    assert run.report["n_current"] == len(sent) == TRAFFIC
    assert run.report["current_label"].startswith("scoring log")
    labels = run.report["metrics"]["labels"]
    assert labels["labeled_share_current"] == 0.0
    assert labels["by_pattern"][0]["pattern"] == "all labeled"
    assert all(p["labeled_current"] is None for p in labels["by_pattern"][1:]), "the log has no patterns"
    assert f"status {run.report['status']} (exit {run.exit_code})" in run.output


def test_drift_runs_on_the_live_log_after_feedback(after_feedback: LiveRun) -> None:
    run = after_feedback
    assert run.exit_code == run.report["exit_code"] in (0, 1, 2), run.output[-3000:]
    labels = run.report["metrics"]["labels"]
    assert labels["by_pattern"][0]["labeled_current"] == FEEDBACK
    assert labels["labeled_share_current"] == pytest.approx(FEEDBACK / TRAFFIC)
    assert any("labeled so far" in note for note in run.report["notes"])


def test_the_live_report_reads_like_a_report(before_feedback: LiveRun) -> None:
    report = before_feedback.report
    assert 1 <= len(report["summary"]) <= MAX_FINDINGS
    # Every model input is logged (the identity flags included), so nothing is "not logged".
    assert report["not_logged"] == [], [n["name"] for n in report["not_logged"]]
    features = {f["name"]: f for f in report["features"]}
    assert features["code_stats__hours_since_first_use"]["display_name"] == "code_age"
    assert features["code_stats__hours_since_first_use"]["comparison"] == "rate"
    assert features["ip_is_tor"]["display_name"] == "ip_tor"
    groups = report["metrics"]["groups"]
    types = {g["promo_type"] for g in groups}
    codes = [g for g in groups if g["dimension"] == "campaign"]
    # A code has its own row only with min_group_rows requests on both sides; the rest are folded.
    min_rows = report["thresholds"]["min_group_rows"]
    assert all(g["n_reference"] >= min_rows and g["n_current"] >= min_rows for g in codes), codes
    assert len(groups) <= 2 * len(types) + len(codes), [g["value"] for g in groups]


def test_the_badge_follows_what_the_fraud_team_acts_on(before_feedback: LiveRun) -> None:
    report = before_feedback.report
    acted = _acted_on(report)
    explains = [f["status"] for f in report["features"]] + (["red"] if report["violations"] else [])
    floor = "amber" if "red" in explains else "green"
    expected = max(acted, floor, key=_SEVERITY.__getitem__)
    assert report["status"] == expected, (report["status"], acted, floor, report["summary"])


def test_live_report_page_is_written(before_feedback: LiveRun, live: Service) -> None:
    page = Path(live.settings.reports_dir / "latest.html").read_text(encoding="utf-8")
    assert "<h2>Per promotion type and code</h2>" in page
    assert "<script" not in page.lower()
