"""``promoguard export-decisions``: a window of decisions for finance, what was at stake, no identity."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from typer.testing import CliRunner

from promoguard.cli import app
from scoring.records import DECISION_EXPORT_COLUMNS, Records, ScoreRecord

NOW = datetime.now(UTC)


def _record(request_id: str, code: str, decision: str, ts: datetime = NOW, **context: Any) -> ScoreRecord:
    signals = [{"name": "x", "code": "CUSTOMER_CAP_REACHED", "description": "d", "points": 90,
                "source": "rule"}] if decision == "refuse" else []
    return ScoreRecord(
        request_id=request_id, body_sha256="x", ts=ts, promo_code=code, promo_type="welcome", score=90,
        band="high", decision=decision, fallback=None, degraded=False, model_version="7", latency_ms=1.0,
        signals=signals, features={}, keys={"email_key": "secret-hash-1"}, rules_version="r1",
        response={"request_id": request_id}, context=context,
    )


@pytest.fixture
def root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.delenv("PROMOGUARD_STATE_URL", raising=False)
    records = Records(tmp_path / "data" / "serving" / "scores.db")
    records.append(_record("r1", "SPRING5", "refuse", discount_value=20.0))
    records.append(_record("r2", "SPRING5", "allow", explored_from="verify", discount_value=20.0))
    records.append(_record("r3", "spring5", "allow", monitored_from="refuse", discount_value=20.0))
    records.append(_record("r4", "WELCOME", "allow", discount_value=5.0))
    records.append(_record("old", "SPRING5", "refuse", NOW - timedelta(days=30), discount_value=20.0))
    records.add_outcome("r2", "redeemed", "confirmed", NOW)
    records.add_feedback("r1", "abuse", "chargeback_team", NOW)
    records.close()
    return tmp_path


def test_the_export_holds_a_windows_decisions_with_what_the_policy_would_have_done(root: Path) -> None:
    out = root / "spring.csv"
    result = CliRunner().invoke(app, ["export-decisions", "--days", "7", "--campaign", "Spring5",
                                      "--out", str(out), "--root", str(root)])
    assert result.exit_code == 0, result.output
    frame = pd.read_csv(out).set_index("request_id")
    assert list(frame.reset_index().columns) == list(DECISION_EXPORT_COLUMNS)
    assert sorted(frame.index) == ["r1", "r2", "r3"]  # the old one is outside the window, WELCOME filtered
    assert frame.loc["r1", "deciding_reason"] == "CUSTOMER_CAP_REACHED"
    assert frame.loc["r1", "label"] == "abuse"
    assert (frame.loc["r2", "would_be_decision"], frame.loc["r2", "why_not"]) == ("verify", "explored")
    assert frame.loc["r2", "outcome"] == "redeemed"
    assert (frame.loc["r3", "would_be_decision"], frame.loc["r3", "why_not"]) == ("refuse", "monitor_only")
    assert frame["discount_value"].sum() == 60.0
    assert "secret-hash-1" not in out.read_text()
    assert "SPRING5" in result.output and "wrote 3 decisions" in result.output


def test_a_bad_time_is_named(root: Path) -> None:
    result = CliRunner().invoke(app, ["export-decisions", "--since", "yesterday", "--root", str(root)])
    assert result.exit_code == 2 and "--since: expected an ISO-8601 time" in result.output
