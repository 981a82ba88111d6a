"""The backtest replays exactly what the service answers, and its command writes the ledger.

Parity: the same recorded attempts are sent over HTTP to a freshly started service and replayed by the
backtest engine with the same model, rules, online store and clock; every score and decision must
match. The command: ``promoguard backtest --compare`` on the world writes the JSON and HTML ledger.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx
import pandas as pd
import pytest

from promoguard.settings import Settings
from tests.e2e.conftest import run_cli
from tests.e2e.test_service_e2e import copy_world, serve

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("world")]

#: Generous deadlines: this test is about equal answers, not about the rules fallback under load.
PATIENT = {"PROMOGUARD_FEATURE_DEADLINE_MS": "10000", "PROMOGUARD_REQUEST_DEADLINE_MS": "20000"}


def _attempts(settings: Settings, n: int = 240) -> tuple[list[dict[str, object]], list[str]]:
    """The world's last ``n`` attempts as bodies (with new request ids) and their recorded outcomes."""
    from replay.requests import request_bodies

    events = pd.read_parquet(settings.raw_dir / "events.parquet").sort_values("ts", kind="stable").tail(n)
    promotions = pd.read_parquet(settings.raw_dir / "promotions.parquet")
    bodies = request_bodies(events, promotions)
    for i, body in enumerate(bodies):
        body["request_id"] = f"parity-{i:04d}"
    return bodies, events["outcome"].astype(str).tolist()


def test_replayed_answers_equal_the_service_answers_over_http(world: Settings, tmp_path: Path) -> None:
    from config.resolver import identity_resolver
    from features.store import OnlineFeatures, StoreConfig
    from promoguard.backtest import replayer_for
    from replay.engine import replay

    settings = copy_world(world, tmp_path / "world")
    bodies, outcomes = _attempts(settings)
    served: dict[str, tuple[int, str, bool]] = {}
    with serve(settings, PATIENT) as svc, httpx.Client(base_url=svc.url, timeout=30.0) as client:
        for body, outcome in zip(bodies, outcomes, strict=True):
            # The service counts on its own clock; the replay on the body's timestamp: make them one.
            body["timestamp"] = pd.Timestamp(time.time(), unit="s", tz="UTC").isoformat()
            answer = client.post("/score", json=body).json()
            served[str(body["request_id"])] = (answer["score"], answer["decision"], answer["degraded"])
            honoured = outcome == "redeemed" and answer["decision"] != "refuse"
            reported = {"request_id": body["request_id"], "outcome": "redeemed" if honoured else "abandoned"}
            client.post("/outcome", json=reported).raise_for_status()

    online = OnlineFeatures(StoreConfig.from_settings(settings))
    try:
        with replayer_for(settings, "champion", identity_resolver(settings)) as replayer:
            replayed = replay(bodies, outcomes, online, replayer)
    finally:
        online.close()
    assert not any(degraded for _, _, degraded in served.values()), "the service fell back to the rules"
    answers = zip(replayed["request_id"], replayed["score"], replayed["decision"], strict=True)
    mismatches = [
        (rid, served[rid][:2], (score, decision))
        for rid, score, decision in answers
        if served[rid][:2] != (score, decision)
    ]
    assert not mismatches, mismatches[:10]
    # The slice is not trivially all-allow: caps, rules and the model all had a say somewhere.
    assert replayed["decision"].nunique() >= 2


def test_backtest_command_writes_the_ledger_for_two_configurations(world: Settings, tmp_path: Path) -> None:
    settings = copy_world(world, tmp_path / "world")
    output = run_cli("backtest", "--root", str(settings.root), "--days", "2", "--warm-days", "1",
                     "--compare", "rules")
    assert "backtest: decisions per promotion type" in output
    reports = sorted(settings.reports_dir.glob("backtest-*.json"))
    assert len(reports) == 1 and reports[0].with_suffix(".html").exists()
    report = json.loads(reports[0].read_text())
    assert [r["name"] for r in report["runs"]] == ["champion", "rules"]
    assert report["runs"][1]["configuration"]["model_version"] is None
    assert report["compare"]["attempts"] == report["window"]["attempts"] > 0
    for row in report["campaigns"]:
        for key in ("campaign", "promo_type", "attempts", "allowed", "watched", "verified", "refused",
                    "discount_saved", "discount_lost", "honest_refused", "honest_verified", "pattern_recall"):
            assert key in row, key
    assert sum(r["attempts"] for r in report["campaigns"]) == report["window"]["attempts"]
    html = reports[0].with_suffix(".html").read_text()
    assert "<svg" in html and "per campaign" in html


def test_training_headline_and_promotion_gate_come_from_the_replay(world: Settings, tmp_path: Path) -> None:
    from training.registry import version_run

    settings = copy_world(world, tmp_path / "world")
    # A five-day test window and one warm day (the backtest test above warms one too): this test is about
    # where the figures come from, not their size, and replaying both versions is most of its time.
    output = run_cli("train", "--root", str(settings.root), "--test-days", "5", "--gap-days", "7",
                     "--replay-warm-days", "1")
    assert "headline: the test window replayed through the service's decision path" in output
    _, params, metrics = version_run(settings.mlflow_tracking_uri, settings.model_name, "2")
    # The new version and the champion it would replace, on the same attempts.
    assert params["replay.champion_version"] == "1"
    for key in ("replay_honest_refused_rate", "replay_champion_honest_refused_rate", "replay_truth_recall"):
        assert 0.0 <= metrics[key] <= 1.0, key
    promoted = run_cli("promote", "--root", str(settings.root), "--version", "2")
    assert "replayed" in promoted and "honest" in promoted
