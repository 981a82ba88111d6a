"""PostgresRecords: the SQLite records' behaviour, shared by every replica, against a real PostgreSQL.

Each test gets a schema of its own (the URL's ``options=-csearch_path=...``), dropped afterwards, so tests
running in parallel never see each other's rows. Skips (visibly) when PostgreSQL does not answer on
127.0.0.1:5432, unless PROMOGUARD_REQUIRE_SERVICES=1.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd
import psycopg2
import pytest
from typer.testing import CliRunner

from promoguard.cli import app
from scoring.records import (
    IdempotencyConflict,
    Records,
    ScoreRecord,
    ShadowRecord,
    exploration_frame,
    scoring_frame,
    shadow_frame,
)
from scoring.records_pg import PostgresRecords, RecordsUnavailable
from scoring.rules import default_rules
from scoring.schemas import ScoreRequest
from scoring.scorer import Scorer, ScorerConfig
from scoring.state import log_source, open_records
from tests.scoring.conftest import FakeOnline, FakeResolver, FakeVelocity

pytestmark = pytest.mark.services

BASE = "postgresql://postgres@127.0.0.1:5432/test"
RAW = {
    "email": "jane.doe+promo@example.com",
    "phone": "+1 415 555 0134",
    "line1": "742 Evergreen Terrace",
    "ip": "203.0.113.77",
    "local_ip": "192.168.77.12",
    "device": "dev-7f3a9c1e",
    "fingerprint": "fp_4242abcd",
}


def url_for(schema: str) -> str:
    """The test database with ``schema`` first on the search_path."""
    return f"{BASE}?options=-csearch_path%3D{schema}"


def _admin() -> Any:
    conn = psycopg2.connect(BASE, connect_timeout=2)
    conn.autocommit = True
    return conn


@pytest.fixture
def schema(postgres_available: None) -> Iterator[str]:
    """A fresh schema, dropped with everything in it afterwards."""
    name = f"records_{uuid.uuid4().hex[:12]}"
    admin = _admin()
    with admin.cursor() as cur:
        cur.execute(f"CREATE SCHEMA {name}")
    try:
        yield name
    finally:
        with admin.cursor() as cur:
            cur.execute(f"DROP SCHEMA {name} CASCADE")
        admin.close()


@pytest.fixture
def url(schema: str) -> str:
    return url_for(schema)


@pytest.fixture
def records(url: str) -> Iterator[PostgresRecords]:
    made = PostgresRecords(url)
    yield made
    made.close()


def _record(request_id: str, digest: str, score: int = 10, ts: datetime | None = None,
            context: dict[str, Any] | None = None) -> ScoreRecord:
    response = {"request_id": request_id, "score": score}
    return ScoreRecord(request_id, digest, ts or datetime.now(UTC), "CODE", "welcome", score, "low", "allow",
                       None, False, "1", 1.0, [{"name": "device_missing", "points": 5}],
                       {"f": 1.0, "g": float("nan")}, {"device_key": "abc"}, "v", response, context=context)


def _shadow(request_id: str, ts: datetime) -> ShadowRecord:
    return ShadowRecord(request_id, ts, "CODE", "welcome", 10, "allow", False, None, "1", "v", 20, "watch",
                        None, "2", "v")


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# --- idempotency --------------------------------------------------------------------------------------


def test_concurrent_twins_on_two_replicas_store_one_row_and_all_get_its_answer(url: str) -> None:
    replicas = [PostgresRecords(url), PostgresRecords(url)]
    twins = 8
    start = threading.Barrier(twins, timeout=30)
    answers: list[Any] = [None] * twins

    def twin(i: int) -> None:
        start.wait()
        # Same body (digest), each computed its own score: exactly one is stored, everyone gets it.
        try:
            answers[i] = replicas[i % 2].append(_record("twin", "h1", score=i))
        except IdempotencyConflict as exc:  # pragma: no cover - would be a failure below
            answers[i] = exc

    threads = [threading.Thread(target=twin, args=(i,)) for i in range(twins)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert all(isinstance(a, dict) for a in answers), answers
    assert len({a["score"] for a in answers}) == 1, answers
    assert replicas[0].count("scores") == 1
    # Twins with another body lose with a conflict, on either replica.
    for replica in replicas:
        with pytest.raises(IdempotencyConflict):
            replica.append(_record("twin", "h2"))
        replica.close()


def test_replicas_starting_together_on_a_new_database_create_the_schema_once(url: str) -> None:
    errors: list[BaseException] = []
    made: list[PostgresRecords] = []
    start = threading.Barrier(4, timeout=30)

    def open_one() -> None:
        start.wait()
        try:
            made.append(PostgresRecords(url))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=open_one) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors and len(made) == 4
    made[0].append(_record("r1", "h1"))
    assert all(m.lookup("r1", "h1") is not None for m in made)
    for m in made:
        m.close()


# --- the log and its follow-ups ---------------------------------------------------------------------


def test_scoring_log_is_append_only(records: PostgresRecords, url: str) -> None:
    records.append(_record("r1", "h1"))
    conn = psycopg2.connect(url)
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            refused = ("UPDATE scores SET decision = 'allow'", "DELETE FROM scores", "TRUNCATE scores")
            for statement in refused:
                with pytest.raises(psycopg2.Error, match="append-only"):
                    cur.execute(statement)
            # Only prune's own transaction may delete: a session-wide setting of the same name does not.
            cur.execute("SET promoguard.prune_scores = 'on'")
            with pytest.raises(psycopg2.Error, match="append-only"):
                cur.execute("DELETE FROM scores")
    finally:
        conn.close()
    assert records.count("scores") == 1


def test_rows_match_the_sqlite_file_value_for_value(records: PostgresRecords, tmp_path: Path) -> None:
    sqlite = Records(tmp_path / "s.db")
    ts = datetime(2026, 11, 21, 12, tzinfo=UTC)
    rec = _record("r1", "h1", ts=ts, context={"deciding_rule": None, "lift": float("nan"),
                                              "explored_from": "verify"})
    rec = ScoreRecord(**{**vars(rec), "timings": {"total": 1.5}})
    for backend in (records, sqlite):
        backend.append(rec)
        backend.add_outcome("r1", "redeemed", "confirmed", ts)
        backend.add_feedback("r1", "abuse", "manual_review", ts)
    pg_row, sqlite_row = records.scored("r1"), sqlite.scored("r1")
    assert pg_row == sqlite_row
    assert pg_row is not None and pg_row["explored"] == 1 and pg_row["would_be_decision"] == "verify"
    assert pg_row["timings_json"] == '{"total":1.5}'
    assert pg_row["context_json"] == '{"deciding_rule":null,"explored_from":"verify","lift":null}'
    assert records.history("r1") == sqlite.history("r1")
    assert records.scored("never") is None
    sqlite.close()


def test_feedback_rows_follow_the_label_contract(records: PostgresRecords, url: str) -> None:
    records.add_feedback("r1", "abuse", "manual_review", datetime(2026, 11, 21, tzinfo=UTC))
    conn = psycopg2.connect(url)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT request_id, label, label_source, label_ts FROM feedback")
            assert cur.fetchone() == ("r1", "abuse", "manual_review", "2026-11-21T00:00:00+00:00")
            cur.execute("SELECT column_name FROM information_schema.columns WHERE table_name = 'feedback' "
                        "AND table_schema = current_schema() ORDER BY ordinal_position")
            # The contract's columns first; seq keeps arrival order (PostgreSQL has no rowid).
            columns = [r[0] for r in cur.fetchall()]
            assert columns == ["request_id", "label", "label_source", "label_ts", "seq"]
    finally:
        conn.close()


def test_shadow_rows_keep_the_first_per_request(records: PostgresRecords) -> None:
    ts = datetime(2026, 11, 21, tzinfo=UTC)
    assert records.append_shadow([]) == 0
    assert records.append_shadow([_shadow("s1", ts), _shadow("s2", ts)]) == 2
    assert records.append_shadow([_shadow("s2", ts), _shadow("s3", ts)]) == 1
    assert records.count("shadow") == 3
    with pytest.raises(ValueError, match="table"):
        records.count("scores; DROP TABLE scores")


def test_no_raw_identity_reaches_the_database(records: PostgresRecords, url: str) -> None:
    scorer = Scorer(FakeResolver(), FakeOnline({}), FakeVelocity(), None, default_rules(), records,
                    ScorerConfig(feature_deadline_ms=5000.0))
    for i in range(3):
        answer = scorer.score(ScoreRequest.model_validate({
            "request_id": f"r{i}", "promotion": {"code": "WELCOME", "type": "welcome"},
            "email": RAW["email"], "phone": RAW["phone"], "ip": RAW["ip"],
            "shipping_address": {"line1": RAW["line1"], "postal_code": "97403"},
            "billing_address": {"line1": RAW["line1"], "postal_code": "97403"},
            "device": {"device_id": RAW["device"], "local_ip": RAW["local_ip"]},
            "payment": {"fingerprint": RAW["fingerprint"]},
        }))
        # A rules-only answer is degraded by design (no model), not because of the records.
        assert answer.fallback == "rules"
    conn = psycopg2.connect(url)
    try:
        with conn.cursor() as cur:
            dump = []
            for table in ("scores", "outcomes", "feedback", "shadow"):
                cur.execute(f"SELECT * FROM {table}")
                dump.append(repr(cur.fetchall()))
    finally:
        conn.close()
    blob = "\n".join(dump)
    assert "r0" in blob  # the database really holds the attempts
    for name, value in RAW.items():
        for form in {value, value.lower(), value.replace(" ", "")}:
            assert form not in blob, f"raw {name} found in the state database"


# --- retention: prune -------------------------------------------------------------------------------


def test_prune_removes_old_decisions_with_their_follow_ups_and_keeps_the_rest(
    records: PostgresRecords, url: str
) -> None:
    now = datetime(2026, 6, 1, tzinfo=UTC)
    old, edge, new = now - timedelta(days=91), now - timedelta(days=90), now - timedelta(days=1)
    for rid, ts in (("old", old), ("edge", edge), ("new", new)):
        records.append(_record(rid, "h", ts=ts))
        records.add_outcome(rid, "redeemed", "confirmed", ts)
        # The label of the old decision arrives late, inside retention: it still leaves with it.
        records.add_feedback(rid, "abuse", "manual_review", now)
        records.append_shadow([_shadow(rid, ts)])
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
    conn = psycopg2.connect(url)
    conn.autocommit = True
    try:
        with conn.cursor() as cur, pytest.raises(psycopg2.Error, match="append-only"):
            cur.execute("DELETE FROM scores")
    finally:
        conn.close()


def test_maintenance_prunes_the_shared_database(
    url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    now = datetime.now(UTC)
    records = PostgresRecords(url)
    for i, age in enumerate((45, 5)):
        records.append(_record(f"m{i}", "h", ts=now - timedelta(days=age)))
        records.add_feedback(f"m{i}", "legit", "manual_review", now)
    for name in ("PROMOGUARD_VELOCITY", "PROMOGUARD_ONLINE_STORE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("PROMOGUARD_STATE_URL", url)
    monkeypatch.setenv("PROMOGUARD_SCORES_RETENTION_DAYS", "30")
    result = CliRunner().invoke(app, ["maintenance", "--root", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "scoring log" in result.output
    assert records.scored("m0") is None and records.scored("m1") is not None
    assert records.count("feedback") == 1
    # Nothing went to a local file: the shared database is the log.
    assert not (tmp_path / "data" / "serving" / "scores.db").exists()
    records.close()


# --- the readers over the shared database -----------------------------------------------------------


def test_shadow_report_and_drift_read_the_shared_database(
    url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from config.settings import Settings
    from promoguard.drift import scoring_log

    now = datetime.now(UTC)
    records = PostgresRecords(url)
    for i in range(3):
        ts = now - timedelta(hours=i)
        records.append(_record(f"d{i}", "h", ts=ts, context={"explored_from": "verify"}))
        records.append_shadow([_shadow(f"d{i}", ts)])
    records.add_feedback("d0", "legit", "manual_review", now)
    records.close()
    monkeypatch.setenv("PROMOGUARD_STATE_URL", url)
    result = CliRunner().invoke(app, ["shadow-report", "--days", "7", "--root", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "exploration: attempts let through" in result.output
    written = list((tmp_path / "data" / "reports").glob("shadow-*.json"))
    assert len(written) == 1 and '"attempts": 3' in written[0].read_text()
    frame = scoring_log(Settings.from_env({"PROMOGUARD_STATE_URL": url}, root=tmp_path))
    assert sorted(frame["request_id"]) == ["d0", "d1", "d2"]


def test_the_readers_give_the_same_frames_from_the_database_as_from_the_file(
    records: PostgresRecords, url: str, tmp_path: Path
) -> None:
    sqlite = Records(tmp_path / "s.db")
    base = datetime(2026, 11, 21, tzinfo=UTC)
    for backend in (records, sqlite):
        for i in range(4):
            ts = base + timedelta(hours=i)
            context = {"explored_from": "verify"} if i % 2 else None
            backend.append(_record(f"r{i}", "h", score=10 * i, ts=ts, context=context))
            backend.append_shadow([_shadow(f"r{i}", ts)])
        backend.add_feedback("r1", "legit", "manual_review", base)
        backend.add_feedback("r1", "abuse", "manual_review", base)
        backend.add_outcome("r3", "redeemed", "confirmed", base)
    since = base + timedelta(minutes=30)
    for reader in (scoring_frame, shadow_frame, exploration_frame):
        from_db, from_file = reader(url, since), reader(tmp_path / "s.db", since)
        # Three attempts since; two of them explored.
        assert len(from_db) == (2 if reader is exploration_frame else 3)
        pd.testing.assert_frame_equal(from_db, from_file)
    assert scoring_frame(url).set_index("request_id").loc["r1", "label"] == 1.0
    sqlite.close()


def test_the_factory_chooses_the_file_or_the_database(url: str, tmp_path: Path) -> None:
    local = open_records(None, tmp_path)
    assert isinstance(local, Records) and local.path == tmp_path / "scores.db"
    local.close()
    shared = open_records(url, tmp_path)
    assert isinstance(shared, PostgresRecords) and "postgres@" not in repr(shared)
    shared.close()
    assert log_source(None, tmp_path) == tmp_path / "scores.db" and log_source(url, tmp_path) == url
    with pytest.raises(ValueError, match="postgresql://") as err:
        open_records("mysql://user:s3cret@db/x", tmp_path)
    assert "s3cret" not in str(err.value)


# --- a sick database: fail fast, and the scorer still answers ---------------------------------------


def _request(request_id: str) -> ScoreRequest:
    return ScoreRequest.model_validate({
        "request_id": request_id, "promotion": {"code": "WELCOME", "type": "welcome"},
        "email": RAW["email"], "device": {"device_id": RAW["device"]}, "ip": RAW["ip"],
    })


def test_an_unreachable_database_fails_fast_and_the_scorer_answers_degraded(
    caplog: pytest.LogCaptureFixture,
) -> None:
    secret_url = f"postgresql://promoguard:s3cret-pw@127.0.0.1:{_closed_port()}/state"
    caplog.set_level(logging.WARNING)
    started = time.perf_counter()
    records = PostgresRecords(secret_url)  # a replica may start while the database is away
    with pytest.raises(RecordsUnavailable) as err:
        records.lookup("r1", "h1")
    with pytest.raises(RecordsUnavailable):
        records.append(_record("r1", "h1"))
    scorer = Scorer(FakeResolver(), FakeOnline({}), FakeVelocity(), None, default_rules(), records,
                    ScorerConfig(feature_deadline_ms=5000.0))
    answer = scorer.score(_request("r1"))
    assert time.perf_counter() - started < 2.0
    assert answer.degraded and answer.decision in ("allow", "watch", "verify", "refuse")
    assert "scoring log lookup failed: RecordsUnavailable" in caplog.text
    assert "scoring log append failed: RecordsUnavailable" in caplog.text
    assert "s3cret" not in caplog.text and "s3cret" not in str(err.value) and "s3cret" not in repr(records)
    records.close()


def test_a_model_answer_is_still_given_when_only_the_log_fails(artifact_dir: Path) -> None:
    from scoring.artifact import LoadedModel

    records = PostgresRecords(f"postgresql://postgres@127.0.0.1:{_closed_port()}/test")
    model = LoadedModel.from_dir(artifact_dir)
    scorer = Scorer(FakeResolver(), FakeOnline({}), FakeVelocity(), model, default_rules(), records,
                    ScorerConfig(feature_deadline_ms=5000.0, request_deadline_ms=5000.0))
    answer = scorer.score(_request("r1"))
    # The log is not an input of the decision: the model still answers, and the answer says degraded.
    assert answer.degraded and answer.fallback is None and answer.model_version == model.version
    records.close()


def test_a_stuck_database_is_given_up_after_the_statement_timeout_and_used_again_after(
    url: str, schema: str
) -> None:
    quick = PostgresRecords(url, statement_timeout_ms=300)
    quick.append(_record("r1", "h1"))
    holder = _admin()
    try:
        with holder.cursor() as cur:
            cur.execute("BEGIN")
            cur.execute(f"LOCK TABLE {schema}.scores IN ACCESS EXCLUSIVE MODE")
            started = time.perf_counter()
            with pytest.raises(RecordsUnavailable):
                quick.lookup("r1", "h1")
            assert time.perf_counter() - started < 2.0
            cur.execute("ROLLBACK")
    finally:
        holder.close()
    assert quick.lookup("r1", "h1") == {"request_id": "r1", "score": 10}
    quick.close()


def test_after_the_database_drops_its_connections_the_next_calls_reconnect(url: str) -> None:
    name = f"promoguard-test-{uuid.uuid4().hex[:8]}"
    records = PostgresRecords(url, application_name=name, retry_after_s=0.2)
    records.append(_record("r1", "h1"))
    admin = _admin()
    try:
        with admin.cursor() as cur:
            # What a restart of the server does to the pool's connections (only this test's ones).
            cur.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = %s",
                        (name,))
            assert cur.fetchall()
    finally:
        admin.close()
    answers = []
    for _ in range(3):
        try:
            answers.append(records.lookup("r1", "h1"))
        except RecordsUnavailable:
            answers.append(None)
    # At most the call that found its connection dead fails; the pool does not hand out the others.
    assert answers[1:] == [{"request_id": "r1", "score": 10}] * 2
    records.close()


class _FlakyRecords(Records):
    """SQLite records whose lookup or append fails on demand, like a database that comes and goes."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.lookup_fails = False
        self.append_fails = False

    def lookup(self, request_id: str, body_sha256: str) -> dict[str, Any] | None:
        if self.lookup_fails:
            raise RecordsUnavailable("down")
        return super().lookup(request_id, body_sha256)

    def append(self, rec: ScoreRecord) -> dict[str, Any]:
        if self.append_fails:
            raise RecordsUnavailable("down")
        return super().append(rec)


def test_a_log_that_fails_one_call_degrades_that_answer_and_a_conflict_stays_a_conflict(
    tmp_path: Path, artifact_dir: Path
) -> None:
    from scoring.artifact import LoadedModel

    records = _FlakyRecords(tmp_path / "s.db")
    scorer = Scorer(FakeResolver(), FakeOnline({}), FakeVelocity(), LoadedModel.from_dir(artifact_dir),
                    default_rules(), records,
                    ScorerConfig(feature_deadline_ms=5000.0, request_deadline_ms=5000.0))
    assert not scorer.score(_request("r0")).degraded  # the model answers: nothing else degrades it
    records.lookup_fails = True
    first = scorer.score(_request("r1"))
    records.lookup_fails = False
    # Logged as given, degraded: a retry once the log is back gets that very answer.
    assert first.degraded and scorer.score(_request("r1")) == first
    assert records.count("scores") == 2
    records.append_fails = True
    unlogged = scorer.score(_request("r2"))
    assert unlogged.degraded and unlogged.fallback is None and records.count("scores") == 2
    records.append_fails = False
    changed = _request("r1").model_copy(update={"ip": "198.51.100.9"})
    with pytest.raises(IdempotencyConflict):
        scorer.score(changed)
    records.close()
