"""``promoguard maintenance``: retention of the scoring log and the velocity store, with counts printed."""

from __future__ import annotations

import re
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from typer.testing import CliRunner

from features.graph import Attempt, SqliteGraph, explain
from features.velocity import SqliteVelocity
from promoguard.cli import app
from scoring.records import Records, ScoreRecord


def _record(request_id: str, ts: datetime) -> ScoreRecord:
    return ScoreRecord(request_id, "h", ts, "CODE", "welcome", 10, "low", "allow", None, False, "1", 1.0, [],
                       {"f": 1.0}, {"device_key": "abc"}, "v", {"request_id": request_id, "score": 10})


def _count(output: str, store: str, removed: str) -> int:
    match = re.search(rf"{re.escape(store)}[^│]*│\s*{removed}\s*│\s*(\d+)", output)
    assert match, f"no {store} / {removed} row in:\n{output}"
    return int(match.group(1))


@pytest.fixture
def serving_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A scoring log and a velocity store with some rows past retention and some inside it."""
    for name in ("PROMOGUARD_VELOCITY", "PROMOGUARD_ONLINE_STORE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("PROMOGUARD_SCORES_RETENTION_DAYS", "30")
    serving = tmp_path / "data" / "serving"
    now = datetime.now(UTC)
    records = Records(serving / "scores.db")
    for i, age in enumerate((45, 40, 5)):
        records.append(_record(f"r{i}", now - timedelta(days=age)))
        records.add_feedback(f"r{i}", "legit", "manual_review", now)
    records.close()
    velocity = SqliteVelocity(serving / "velocity.db")
    t = now.timestamp()
    velocity.record("old", t - 40 * 86_400, [("idle-counter", "a"), ("idle-counter", "b")])
    velocity.record("new", t - 86_400, [("live-counter", "c")])
    velocity.reserve("hold", "CODE", ["device:d1"], 1, 60, t - 3600)
    velocity.close()
    graph = SqliteGraph(serving / "graph.db")
    graph.resolve(Attempt("g-old", t - 500 * 86_400, "CODE", "welcome", {"account": "a1", "device": "d1"}))
    graph.resolve(Attempt("g-new", t - 86_400, "CODE", "welcome", {"account": "a2", "device": "d2"}))
    graph.close()
    return serving


def test_maintenance_prints_what_it_removed_and_keeps_the_rest(serving_dir: Path, tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["maintenance", "--root", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert _count(result.output, "scoring log", "scores") == 2
    assert _count(result.output, "scoring log", "feedback") == 2
    assert _count(result.output, "velocity", "members") == 2
    assert _count(result.output, "velocity", "requests") == 1
    assert _count(result.output, "velocity", "holds") == 1
    # The time each store's retention took, so that an operator sees which one is slow.
    took = re.search(
        r"took\s+scoring\s+log\s+[\d.]+\s+s,\s+velocity\s+\(sqlite\)\s+[\d.]+\s+s,"
        r"\s+identity\s+graph\s+\(sqlite\)\s+[\d.]+\s+s",
        result.output,
    )
    assert took, result.output
    records = Records(serving_dir / "scores.db")
    assert records.count("scores") == 1 and records.scored("r2") is not None
    records.close()
    velocity = SqliteVelocity(serving_dir / "velocity.db")
    assert velocity.cardinality("live-counter", 0.0) == 1
    assert velocity.cardinality("idle-counter", 0.0) == 0
    velocity.close()
    # The identity graph forgets what was not seen for PROMOGUARD_GRAPH_RETENTION_DAYS (400 by default):
    # the old attempt's resolution, person and keys (account, device).
    assert _count(result.output, "identity graph", "entries") == 4
    graph = SqliteGraph(serving_dir / "graph.db")
    assert explain(graph.view(), "g-old") is None and explain(graph.view(), "g-new") is not None
    graph.close()
    # A second run finds nothing left to remove.
    again = CliRunner().invoke(app, ["maintenance", "--root", str(tmp_path), "--vacuum"])
    assert again.exit_code == 0, again.output
    assert _count(again.output, "scoring log", "scores") == 0
    assert _count(again.output, "velocity", "members") == 0


def test_maintenance_without_stores_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("PROMOGUARD_VELOCITY", "PROMOGUARD_ONLINE_STORE"):
        monkeypatch.delenv(name, raising=False)
    result = CliRunner().invoke(app, ["maintenance", "--root", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "nothing to prune" in result.output


def test_maintenance_refuses_a_velocity_retention_below_the_longest_window(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PROMOGUARD_VELOCITY_RETENTION_DAYS", "7")
    result = CliRunner().invoke(app, ["maintenance", "--root", str(tmp_path)])
    assert result.exit_code == 2
    assert "PROMOGUARD_VELOCITY_RETENTION_DAYS" in result.output


def test_maintenance_starts_without_the_data_science_stack(serving_dir: Path, tmp_path: Path) -> None:
    # Maintenance runs beside a busy service: every module it imports is CPU the service's requests
    # wait for. pandas, numpy and pandera alone were two thirds of its start.
    script = (
        "import sys\n"
        "from promoguard.cli import app\n"
        "try:\n"
        "    app(['maintenance', '--root', sys.argv[1]])\n"
        "except SystemExit as exc:\n"
        "    assert not exc.code, exc.code\n"
        "print('loaded:', sorted(m for m in ('pandas', 'numpy', 'pandera', 'pyarrow') if m in sys.modules))\n"
    )
    done = subprocess.run([sys.executable, "-c", script, str(tmp_path)], capture_output=True, text=True,
                          check=False, timeout=120)
    assert done.returncode == 0, done.stderr
    assert _count(done.stdout, "scoring log", "scores") == 2
    assert "loaded: []" in done.stdout
