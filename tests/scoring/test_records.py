"""Records: idempotency on request_id, append-only log, and no raw identity in the database file.

The behaviours every scoring-log backend promises run against both, the SQLite file and the
PostgreSQL state database (``records``); what only one of them does is tested on its own
(PostgreSQL's in ``test_records_pg.py``).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from scoring.records import IdempotencyConflict, Records, RecordsLike, ScoreRecord
from scoring.records_pg import PostgresRecords
from scoring.rules import default_rules
from scoring.schemas import ScoreRequest
from scoring.scorer import Scorer, ScorerConfig, body_sha256
from tests.scoring.conftest import FakeOnline, FakeResolver, FakeVelocity
from tests.scoring.test_records_pg import schema, url  # noqa: F401 - a fresh PostgreSQL schema per test

RAW = {
    "email": "jane.doe+promo@example.com",
    "phone": "+1 415 555 0134",
    "line1": "742 Evergreen Terrace",
    "ip": "203.0.113.77",
    "local_ip": "192.168.77.12",
    "device": "dev-7f3a9c1e",
    "fingerprint": "fp_4242abcd",
}


def _record(request_id: str, digest: str, score: int = 10) -> ScoreRecord:
    response = {"request_id": request_id, "score": score}
    return ScoreRecord(request_id, digest, datetime.now(UTC), "CODE", "welcome", score, "low", "allow", None,
                       False, "1", 1.0, [], {"f": 1.0, "g": float("nan")}, {"device_key": "abc"}, "v",
                       response)


@pytest.fixture(params=["sqlite", "sqlite-scratch", "postgres"])
def records(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[RecordsLike]:
    """A scoring log of each backend (PostgreSQL in a fresh schema; skipped without the server), and the
    scratch SQLite file a replay keeps."""
    made: RecordsLike = (
        Records(tmp_path / "s.db") if request.param == "sqlite"
        else Records(tmp_path / "s.db", scratch=True) if request.param == "sqlite-scratch"
        else PostgresRecords(request.getfixturevalue("url"))
    )
    yield made
    made.close()


def test_same_request_id_and_body_returns_the_first_response(records: RecordsLike) -> None:
    assert records.lookup("r1", "h1") is None
    assert records.append(_record("r1", "h1", score=10)) == {"request_id": "r1", "score": 10}
    assert records.lookup("r1", "h1") == {"request_id": "r1", "score": 10}
    # A concurrent twin that computed another answer still gets the stored first one.
    assert records.append(_record("r1", "h1", score=99)) == {"request_id": "r1", "score": 10}
    assert records.count("scores") == 1


def test_a_different_body_under_the_same_request_id_is_a_conflict_naming_it(records: RecordsLike) -> None:
    records.append(_record("order-17", "h1"))
    with pytest.raises(IdempotencyConflict, match="order-17"):
        records.lookup("order-17", "h2")
    with pytest.raises(IdempotencyConflict):
        records.append(_record("order-17", "h2"))


def test_scoring_log_is_append_only(tmp_path: Path) -> None:
    records = Records(tmp_path / "s.db")
    records.append(_record("r1", "h1"))
    conn = sqlite3.connect(tmp_path / "s.db")
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        conn.execute("UPDATE scores SET decision = 'allow'")
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        conn.execute("DELETE FROM scores")


def test_feedback_rows_follow_the_label_contract(tmp_path: Path) -> None:
    records = Records(tmp_path / "s.db")
    records.add_feedback("r1", "abuse", "manual_review", datetime(2026, 11, 21, tzinfo=UTC))
    conn = sqlite3.connect(tmp_path / "s.db")
    cols = [r[1] for r in conn.execute("PRAGMA table_info(feedback)")]
    assert cols == ["request_id", "label", "label_source", "label_ts"]
    assert conn.execute("SELECT label, label_source FROM feedback").fetchone() == ("abuse", "manual_review")


def test_no_raw_identity_reaches_the_database_file(tmp_path: Path) -> None:
    records = Records(tmp_path / "s.db")
    scorer = Scorer(FakeResolver(), FakeOnline({}), FakeVelocity(), None, default_rules(), records,
                    ScorerConfig(feature_deadline_ms=5000.0))
    for i in range(3):
        scorer.score(ScoreRequest.model_validate({
            "request_id": f"r{i}", "promotion": {"code": "WELCOME", "type": "welcome"},
            "email": RAW["email"], "phone": RAW["phone"], "ip": RAW["ip"],
            "shipping_address": {"line1": RAW["line1"], "postal_code": "97403"},
            "billing_address": {"line1": RAW["line1"], "postal_code": "97403"},
            "device": {"device_id": RAW["device"], "local_ip": RAW["local_ip"]},
            "payment": {"fingerprint": RAW["fingerprint"]},
        }))
    records.close()
    blob = b"".join(p.read_bytes() for p in tmp_path.iterdir() if p.name.startswith("s.db"))
    assert b"r0" in blob  # the file really holds the attempts
    for name, value in RAW.items():
        for form in {value, value.lower(), value.replace(" ", "")}:
            assert form.encode() not in blob, f"raw {name} found in the scoring database"


def test_body_hash_ignores_key_order_and_whitespace() -> None:
    a = ScoreRequest.model_validate_json('{"request_id": "r", "promotion": {"code": "X", "type": "welcome"}}')
    b = ScoreRequest.model_validate_json('{"promotion":{"type":"welcome","code":"X"},"request_id":"r"}')
    c = ScoreRequest.model_validate_json('{"request_id": "r", "promotion": {"code": "Y", "type": "welcome"}}')
    assert body_sha256(a) == body_sha256(b) != body_sha256(c)


def test_a_log_written_by_an_earlier_release_gains_the_decision_record_columns(tmp_path: Path) -> None:
    conn = sqlite3.connect(tmp_path / "old.db")
    conn.execute(
        "CREATE TABLE scores (request_id TEXT PRIMARY KEY, body_sha256 TEXT NOT NULL, ts TEXT NOT NULL, "
        "promo_code TEXT NOT NULL, promo_type TEXT NOT NULL, score INTEGER NOT NULL, band TEXT NOT NULL, "
        "decision TEXT NOT NULL, fallback TEXT, degraded INTEGER NOT NULL, model_version TEXT, "
        "latency_ms REAL NOT NULL, signals_json TEXT NOT NULL, features_json TEXT NOT NULL, "
        "keys_json TEXT NOT NULL, rules_version TEXT, response_json TEXT NOT NULL)"
    )
    conn.execute("INSERT INTO scores VALUES ('old', 'h', '2026-01-01T00:00:00+00:00', 'C', 'welcome', 1, "
                 "'clean', 'allow', NULL, 0, '1', 1.0, '[]', '{}', '{}', 'v', '{}')")
    conn.commit()
    conn.close()
    records = Records(tmp_path / "old.db")
    rec = _record("new", "h2")
    rec = ScoreRecord(*[getattr(rec, f) for f in rec.__dataclass_fields__ if f not in ("timings", "context")],
                      timings={"total": 1.5}, context={"deciding_rule": None, "lift": float("nan")})
    records.append(rec)
    row = records.scored("new")
    assert row is not None and row["timings_json"] == '{"total":1.5}'
    assert row["context_json"] == '{"deciding_rule":null,"lift":null}'
    old = records.scored("old")
    assert old is not None and old["context_json"] is None
    assert Records(tmp_path / "old.db").scored("new") is not None  # opening again adds nothing twice


def test_history_lists_outcomes_and_labels_of_one_attempt_oldest_first(records: RecordsLike) -> None:
    when = datetime(2026, 11, 21, tzinfo=UTC)
    records.add_outcome("r1", "abandoned", "released", when)
    records.add_outcome("r2", "redeemed", "confirmed", when)
    records.add_feedback("r1", "abuse", "manual_review", when)
    records.add_feedback("r1", "legit", "customer_support", when)
    outcomes, feedback = records.history("r1")
    assert [o["outcome"] for o in outcomes] == ["abandoned"]
    assert [(f["label"], f["source"]) for f in feedback] == [
        ("abuse", "manual_review"), ("legit", "customer_support")]


# --- retention: prune -------------------------------------------------------------------------------


def _at(request_id: str, ts: datetime, digest: str = "h") -> ScoreRecord:
    rec = _record(request_id, digest)
    return ScoreRecord(**{**vars(rec), "ts": ts})


def test_prune_removes_old_decisions_with_their_follow_ups_and_keeps_the_rest(tmp_path: Path) -> None:
    from datetime import timedelta

    from scoring.records import ShadowRecord

    now = datetime(2026, 6, 1, tzinfo=UTC)
    records = Records(tmp_path / "s.db")
    old, edge, new = now - timedelta(days=91), now - timedelta(days=90), now - timedelta(days=1)
    for rid, ts in (("old", old), ("edge", edge), ("new", new)):
        records.append(_at(rid, ts))
        records.add_outcome(rid, "redeemed", "confirmed", ts)
        # The label of the old decision arrives late, inside retention: it still leaves with it.
        records.add_feedback(rid, "abuse", "manual_review", now)
        records.append_shadow([ShadowRecord(rid, ts, "CODE", "welcome", 10, "allow", False, None, "1", "v",
                                            20, "watch", None, "2", "v")])
    counts = records.prune(now, days=90)
    assert (counts.scores, counts.outcomes, counts.feedback, counts.shadow) == (1, 1, 1, 1)
    assert records.scored("old") is None and records.history("old") == ([], [])
    for rid in ("edge", "new"):  # exactly 90 days old is kept
        assert records.scored(rid) is not None
        outcomes, labels = records.history(rid)
        assert len(outcomes) == 1 and len(labels) == 1
    assert records.count("shadow") == 2
    # Idempotent, and the log is append-only again for everyone else.
    assert records.prune(now, days=90).scores == 0
    conn = sqlite3.connect(tmp_path / "s.db")
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        conn.execute("DELETE FROM scores")
    conn.close()
    records.close()


def test_a_large_prune_goes_in_batches_a_writer_gets_between(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The service keeps appending while maintenance prunes: it waits for one batch, never the whole prune."""
    from datetime import timedelta

    import scoring.records as records_module

    monkeypatch.setattr(records_module, "PRUNE_BATCH", 3)
    now = datetime(2026, 6, 1, tzinfo=UTC)
    old, new = now - timedelta(days=91), now - timedelta(days=1)
    records = Records(tmp_path / "s.db")
    # Another connection to the file, as the service is, that gives up at once on a taken lock.
    service = Records(tmp_path / "s.db", busy_timeout_ms=0)
    for i in range(10):
        records.append(_at(f"old-{i}", old + timedelta(seconds=i)))
        records.add_outcome(f"old-{i}", "redeemed", "confirmed", old)
    records.append(_at("new", new))
    prune_batch = records._prune_batch  # noqa: SLF001 - wrapped to write between two batches
    appended: list[str] = []

    def batch_then_a_service_append(cutoff: str, limit: int) -> records_module.PruneCounts:
        counts = prune_batch(cutoff, limit)
        request_id = f"meanwhile-{len(appended)}"
        service.append(_at(request_id, now))
        appended.append(request_id)
        return counts

    monkeypatch.setattr(records, "_prune_batch", batch_then_a_service_append)
    counts = records.prune(now, days=90)
    assert (counts.scores, counts.outcomes) == (10, 10)
    assert len(appended) == 4  # batches of 3, 3, 3 and 1
    assert all(records.scored(f"old-{i}") is None for i in range(10))
    assert records.scored("new") is not None
    assert all(records.scored(request_id) is not None for request_id in appended)
    conn = sqlite3.connect(tmp_path / "s.db")
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        conn.execute("DELETE FROM scores")
    conn.close()
    service.close()
    records.close()


def test_idempotency_still_holds_for_kept_decisions_after_a_prune(records: RecordsLike) -> None:
    from datetime import timedelta

    now = datetime(2026, 6, 1, tzinfo=UTC)
    records.append(_at("kept", now - timedelta(days=10), digest="h1"))
    records.append(_at("gone", now - timedelta(days=100), digest="h1"))
    records.prune(now, days=90, vacuum=True)
    assert records.lookup("kept", "h1") == {"request_id": "kept", "score": 10}
    with pytest.raises(IdempotencyConflict):
        records.lookup("kept", "h2")
    # Past retention an id is new again.
    assert records.lookup("gone", "h2") is None


def test_prune_rejects_a_non_positive_retention(records: RecordsLike) -> None:
    with pytest.raises(ValueError, match="days"):
        records.prune(datetime.now(UTC), days=0)


def test_a_scratch_log_refuses_a_checkpoint_interval(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="checkpoint_interval_s"):
        Records(tmp_path / "s.db", checkpoint_interval_s=1.0, scratch=True)


def test_a_logged_row_is_strict_json_with_numbers_nulls_and_times_as_written_before(tmp_path: Path) -> None:
    import json

    import numpy as np

    from scoring.records import SCORE_COLUMNS, score_values

    when = datetime(2026, 11, 21, 8, 30, tzinfo=UTC)
    rec = ScoreRecord(
        "r-json", "d", when, "CODE", "welcome", 10, "low", "allow", None, False, "1", 1.0, [],
        {"f": np.float64(0.25), "g": float("nan"), "h": float("inf")},
        {"device_key": "abc", 3: np.int64(7)}, "v", {"z": 1, "a": 2},
        timings={"total": np.float32(1.5)},
        context={"policy": {"lift": [float("-inf"), np.bool_(True)]}, "seen_at": when},
    )
    row = dict(zip(SCORE_COLUMNS, score_values(rec), strict=True))
    # Strict JSON: a reader that refuses NaN and Infinity still reads every column.
    def refuse(constant: str) -> None:
        pytest.fail(f"{constant} is not JSON")

    strict = {k: json.loads(v, parse_constant=refuse)
              for k, v in row.items() if k.endswith("_json") and v is not None}
    assert strict["features_json"] == {"f": 0.25, "g": None, "h": None}
    assert strict["keys_json"] == {"3": 7, "device_key": "abc"}
    assert row["response_json"] == '{"a":2,"z":1}'  # sorted keys, no spaces: one row always reads the same
    assert strict["timings_json"] == {"total": 1.5}
    assert strict["context_json"] == {"policy": {"lift": [None, True]},
                                      "seen_at": "2026-11-21 08:30:00+00:00"}
