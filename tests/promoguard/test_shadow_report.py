"""``promoguard shadow-report``: agreement, decision mix, per-campaign recall and the exploration holdout."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
from typer.testing import CliRunner

from promoguard.cli import app
from promoguard.errors import ExitCode
from scoring.records import Records, ScoreRecord, ShadowRecord, exploration_frame, shadow_frame
from scoring.shadow import agreement, decision_mix, shadow_report

NOW = datetime.now(UTC)

#: (request_id, campaign, live decision, challenger decision, label)
SHADOWED = [
    ("s1", "SPRING", "verify", "refuse", "abuse"),
    ("s2", "SPRING", "allow", "allow", "legit"),
    ("s3", "SPRING", "refuse", "verify", "legit"),
    ("s4", "WELCOME", "allow", "refuse", "abuse"),
    ("s5", "WELCOME", "watch", "watch", None),
]
#: (request_id, would-be decision, label)
EXPLORED = [
    ("e1", "verify", "legit"), ("e2", "refuse", "abuse"), ("e3", "verify", "legit"), ("e4", "verify", None),
]


def _shadow(request_id: str, campaign: str, live: str, challenger: str, ts: datetime = NOW) -> ShadowRecord:
    return ShadowRecord(
        request_id=request_id, ts=ts, promo_code=campaign, promo_type="sitewide", live_score=50,
        live_decision=live, live_explored=False, live_fallback=None, live_model_version="7",
        live_rules_version="r1", challenger_score=55, challenger_decision=challenger,
        challenger_fallback=None, challenger_model_version="8", challenger_rules_version="r1",
    )


def _explored(request_id: str, would_be: str) -> ScoreRecord:
    return ScoreRecord(
        request_id=request_id, body_sha256="x", ts=NOW, promo_code="SPRING", promo_type="sitewide", score=80,
        band="high", decision="allow", fallback=None, degraded=False, model_version="7", latency_ms=1.0,
        signals=[], features={}, keys={}, rules_version="r1", response={"request_id": request_id},
        context={"explored_from": would_be},
    )


def _log(root: Path, labels: bool = True) -> Path:
    path = root / "data" / "serving" / "scores.db"
    records = Records(path)
    records.append_shadow([_shadow(r, c, live, ch) for r, c, live, ch, _ in SHADOWED])
    # Outside a 7-day window.
    records.append_shadow([_shadow("old", "SPRING", "allow", "refuse", NOW - timedelta(days=30))])
    for request_id, would_be, _ in EXPLORED:
        records.append(_explored(request_id, would_be))
    if labels:
        for request_id, *_, label in [*SHADOWED, *EXPLORED]:
            if label is not None:
                records.add_feedback(request_id, label, "manual_review", NOW)
        records.add_outcome("e1", "redeemed", "none", NOW)
    records.close()
    return path


def test_agreement_and_decision_mix_of_a_small_frame() -> None:
    frame = pd.DataFrame([
        {"live_decision": live, "challenger_decision": ch, "live_score": 50, "challenger_score": 60,
         "live_fallback": None, "challenger_fallback": None, "promo_type": "sitewide"}
        for _, _, live, ch, _ in SHADOWED
    ])
    figures = agreement(frame)
    assert figures["agreement"] == 2 / 5 and figures["friction_agreement"] == 4 / 5
    assert (figures["challenger_stricter"], figures["challenger_looser"]) == (1, 0)
    assert figures["mean_score_change"] == 10.0 and figures["matrix"]["allow"]["refuse"] == 1
    mix = {r["decision"]: (r["live"], r["challenger"]) for r in decision_mix(frame)}
    assert mix == {"allow": (2, 1), "watch": (1, 1), "verify": (1, 1), "refuse": (1, 2)}


def test_the_report_reads_the_log_with_labels_per_campaign_and_the_explored_false_positive_rate(
    tmp_path: Path,
) -> None:
    path = _log(tmp_path)
    since = NOW - timedelta(days=7)
    shadow = shadow_frame(path, since)
    assert sorted(shadow["request_id"]) == ["s1", "s2", "s3", "s4", "s5"]
    report = shadow_report(shadow, exploration_frame(path, since), since)
    assert report["agreement"]["agreement"] == 0.4 and report["labelled"] == 4
    campaigns = {c["campaign"]: c for c in report["campaigns"]}
    spring, welcome = campaigns["SPRING"], campaigns["WELCOME"]
    assert (spring["abuse"], spring["legit"]) == (1, 2)
    assert (spring["live_recall"], spring["challenger_recall"]) == (1.0, 1.0)
    assert (spring["live_honest_refused"], spring["challenger_honest_refused"]) == (1, 0)
    assert spring["challenger_honest_verified"] == 1 and spring["live_honest_refused_rate"] == 0.5
    assert (welcome["live_recall"], welcome["challenger_recall"]) == (0.0, 1.0)
    assert welcome["live_honest_refused_rate"] is None
    explored = report["exploration"]
    assert (explored["explored"], explored["labelled"], explored["legit"]) == (4, 3, 2)
    assert explored["false_positive_rate"] == 2 / 3 and explored["redeemed"] == 1
    by_decision = {r["would_be_decision"]: r["false_positive_rate"] for r in explored["by_would_be_decision"]}
    assert by_decision == {"refuse": 0.0, "verify": 1.0}
    assert report["challenger"]["model_versions"] == ["8"] and report["notes"] == []


def test_the_command_prints_the_tables_and_writes_the_json(tmp_path: Path) -> None:
    _log(tmp_path)
    result = CliRunner().invoke(app, ["shadow-report", "--days", "7", "--root", str(tmp_path)])
    assert result.exit_code == 0, result.output
    for title in ("live vs challenger", "decision mix", "per campaign", "exploration"):
        assert title in result.output
    (written,) = (tmp_path / "data" / "reports").glob("shadow-*.json")
    report = json.loads(written.read_text())
    assert report["days"] == 7 and report["agreement"]["attempts"] == 5
    assert report["agreement"]["agreement"] == 0.4
    assert [r["live"] for r in report["decision_mix"]] == [2, 1, 1, 1]
    assert [r["challenger"] for r in report["decision_mix"]] == [1, 1, 1, 2]


def test_without_labels_the_command_says_so(tmp_path: Path) -> None:
    _log(tmp_path, labels=False)
    result = CliRunner().invoke(app, ["shadow-report", "--root", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "no labels yet" in result.output and "per campaign" not in result.output
    (written,) = (tmp_path / "data" / "reports").glob("shadow-*.json")
    report = json.loads(written.read_text())
    assert report["labelled"] == 0 and report["campaigns"][0]["live_recall"] is None
    assert report["exploration"]["false_positive_rate"] is None
    assert any("no labels yet for the shadowed attempts" in note for note in report["notes"])


def test_without_a_scoring_log_the_command_names_what_is_missing(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["shadow-report", "--root", str(tmp_path)])
    assert result.exit_code == ExitCode.MISSING_INPUT and "missing" in result.output
    assert "scores.db" in result.output.replace("\n", "")
