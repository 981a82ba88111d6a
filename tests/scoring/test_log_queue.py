"""QueuedRecords: the scoring log's writes off the request path, without losing an answer or idempotency.

Every promise runs against the SQLite records and, when PostgreSQL answers on 127.0.0.1:5432, against
PostgresRecords in a schema of its own (dropped afterwards).
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg2
import pytest

from scoring.log_queue import QueuedRecords
from scoring.records import IdempotencyConflict, Records, RecordsLike, ScoreRecord

PG_BASE = "postgresql://postgres@127.0.0.1:5432/test"


def _record(request_id: str, digest: str = "h1", score: int = 10) -> ScoreRecord:
    response = {"request_id": request_id, "score": score}
    return ScoreRecord(request_id, digest, datetime.now(UTC), "CODE", "welcome", score, "low", "allow", None,
                       False, "1", 1.0, [], {"f": 1.0}, {"device_key": "abc"}, "v", response)


@pytest.fixture
def pg_schema(postgres_available: None) -> Iterator[str]:
    name = f"logq_{uuid.uuid4().hex[:12]}"
    admin = psycopg2.connect(PG_BASE, connect_timeout=2)
    admin.autocommit = True
    with admin.cursor() as cur:
        cur.execute(f"CREATE SCHEMA {name}")
    try:
        yield f"{PG_BASE}?options=-csearch_path%3D{name}"
    finally:
        with admin.cursor() as cur:
            cur.execute(f"DROP SCHEMA {name} CASCADE")
        admin.close()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.services)])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[RecordsLike]:
    """A fresh records backend of each kind."""
    if request.param == "sqlite":
        made: RecordsLike = Records(tmp_path / "scores.db")
    else:
        from scoring.records_pg import PostgresRecords

        made = PostgresRecords(request.getfixturevalue("pg_schema"))
    yield made
    made.close()


class Gate:
    """A backend wrapper whose writes wait until opened (so records stay queued), or fail while broken."""

    def __init__(self, inner: RecordsLike) -> None:
        self.inner = inner
        self.open = threading.Event()
        self.broken = False
        self.batches: list[int] = []

    def append_many(self, recs: list[ScoreRecord]) -> list[ScoreRecord]:
        self.open.wait(30)
        if self.broken:
            raise OSError("disk full")
        self.batches.append(len(recs))
        skipped: list[ScoreRecord] = self.inner.append_many(recs)  # type: ignore[attr-defined]
        return skipped

    def close(self) -> None:
        pass  # the fixture closes the backend, so that tests can read it after the queue closed

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def _queued(backend: RecordsLike, **kwargs: Any) -> tuple[QueuedRecords, Gate]:
    gate = Gate(backend)
    return QueuedRecords(gate, linger_s=0.0, **kwargs), gate  # type: ignore[arg-type]


def test_an_append_returns_at_once_and_is_written_in_batches(backend: RecordsLike) -> None:
    queue, gate = _queued(backend)
    for i in range(50):
        assert queue.append(_record(f"r{i}", score=i)) == {"request_id": f"r{i}", "score": i}
    assert queue.pending == 50
    gate.open.set()
    assert queue.flush(30)
    assert backend.count("scores") == 50
    assert len(gate.batches) < 50  # several records per transaction
    queue.close()


def test_a_retry_before_the_write_gets_the_same_answer_and_a_changed_body_conflicts(
    backend: RecordsLike,
) -> None:
    queue, gate = _queued(backend)
    queue.append(_record("order-1", "h1", score=42))
    assert backend.lookup("order-1", "h1") is None  # not written yet
    assert queue.lookup("order-1", "h1") == {"request_id": "order-1", "score": 42}
    with pytest.raises(IdempotencyConflict, match="order-1"):
        queue.lookup("order-1", "h2")
    with pytest.raises(IdempotencyConflict):
        queue.append(_record("order-1", "h2"))
    gate.open.set()
    queue.flush(30)
    # The same answers once written.
    assert queue.lookup("order-1", "h1") == {"request_id": "order-1", "score": 42}
    with pytest.raises(IdempotencyConflict):
        queue.lookup("order-1", "h2")
    queue.close()


def test_concurrent_twins_all_get_the_first_answer_and_one_row_is_written(backend: RecordsLike) -> None:
    queue, gate = _queued(backend)
    twins = 8
    start = threading.Barrier(twins, timeout=30)
    answers: list[Any] = [None] * twins

    def twin(i: int) -> None:
        start.wait()
        answers[i] = queue.append(_record("twin", "h1", score=i))

    threads = [threading.Thread(target=twin, args=(i,)) for i in range(twins)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len({a["score"] for a in answers}) == 1, answers
    gate.open.set()
    queue.flush(30)
    assert backend.count("scores") == 1
    assert backend.lookup("twin", "h1") == answers[0]
    queue.close()


def test_scored_and_history_see_a_queued_record_as_the_backend_will_store_it(backend: RecordsLike) -> None:
    queue, gate = _queued(backend)
    queue.append(_record("r1"))
    queued_row = queue.scored("r1")
    assert queued_row is not None and queued_row["decision"] == "allow"
    assert queue.history("r1") == ([], [])
    assert queue.scored("missing") is None
    gate.open.set()
    queue.flush(30)
    assert queue.scored("r1") == queued_row  # the row read back is the row the queue showed
    queue.close()


def test_a_full_queue_writes_synchronously(backend: RecordsLike) -> None:
    queue, gate = _queued(backend, maxsize=2)
    queue.append(_record("q1"))
    queue.append(_record("q2"))
    # The writer holds q1 (and maybe q2) while the gate is shut: the third goes straight to the backend.
    queue.append(_record("sync"))
    assert backend.lookup("sync", "h1") is not None
    gate.open.set()
    queue.close()
    assert backend.count("scores") == 3


def test_close_writes_everything_still_queued(backend: RecordsLike) -> None:
    queue, gate = _queued(backend)
    for i in range(20):
        queue.append(_record(f"c{i}"))
    gate.open.set()
    queue.close()
    assert backend.count("scores") == 20


def test_a_failed_write_is_kept_and_retried_and_only_its_exception_type_is_logged(
    backend: RecordsLike, caplog: pytest.LogCaptureFixture
) -> None:
    queue, gate = _queued(backend)
    gate.broken = True
    gate.open.set()
    with caplog.at_level(logging.WARNING, logger="scoring.log_queue"):
        queue.append(_record("kept", "h1", score=7))
        assert not queue.flush(0.5)  # refused so far, still queued
    assert queue.lookup("kept", "h1") == {"request_id": "kept", "score": 7}
    assert any("OSError" in r.getMessage() for r in caplog.records)
    assert not any("disk full" in r.getMessage() for r in caplog.records)
    gate.broken = False
    assert queue.flush(30)
    assert backend.lookup("kept", "h1") == {"request_id": "kept", "score": 7}
    queue.close()


def test_a_twin_already_written_by_another_process_keeps_the_logged_answer(
    backend: RecordsLike, caplog: pytest.LogCaptureFixture
) -> None:
    backend.append(_record("other", "h1", score=1))
    queue, gate = _queued(backend)
    gate.open.set()
    # The lookup sees the other process's row: a retry gets the logged answer.
    assert queue.lookup("other", "h1") == {"request_id": "other", "score": 1}
    with caplog.at_level(logging.WARNING, logger="scoring.log_queue"):
        # A twin racing it (its lookup ran before that row was written) is kept out of the log, said so.
        queue.append(_record("other", "h1", score=2))
        queue.flush(30)
    assert backend.lookup("other", "h1") == {"request_id": "other", "score": 1}
    assert backend.count("scores") == 1
    assert any("request_id=other" in r.getMessage() for r in caplog.records)
    queue.close()


def test_append_many_keeps_the_first_row_of_an_id_and_returns_the_ones_it_skipped(
    backend: RecordsLike,
) -> None:
    backend.append(_record("a", score=1))
    skipped = backend.append_many([_record("a", score=2), _record("b", score=3)])  # type: ignore[attr-defined]
    assert [r.request_id for r in skipped] == ["a"]
    assert backend.lookup("a", "h1") == {"request_id": "a", "score": 1}
    assert backend.lookup("b", "h1") == {"request_id": "b", "score": 3}
