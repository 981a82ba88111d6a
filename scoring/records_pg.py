"""The service's records in PostgreSQL: one database shared by every replica behind a load balancer.

:class:`PostgresRecords` behaves exactly as :class:`scoring.records.Records` (the SQLite file of one
replica): the same tables, columns and values, the same idempotency on ``request_id``, the same
append-only scoring log and the same retention. With it a retry, an ``/outcome`` or a ``/feedback`` that
reaches another replica finds the attempt the first one scored.

Choices worth knowing:

* Rows are stored as the SQLite file stores them (timestamps as ISO-8601 UTC text, flags as 0/1, JSON as
  text), so a decision record, the drift and shadow reports and an export read the same values whichever
  backend wrote them. ``outcomes`` and ``feedback`` gain a ``seq`` column, last, because PostgreSQL has
  no ``rowid`` to keep the order in which follow-ups arrived.
* Idempotency rides on the primary key as in SQLite: ``INSERT ... ON CONFLICT DO NOTHING``; the
  statement of a concurrent twin waits for the first insert to commit, then finds its row.
* ``scores`` is append-only: a trigger refuses UPDATE, DELETE and TRUNCATE. :meth:`PostgresRecords.prune`
  alone deletes, inside its own transaction, by setting the transaction-local ``promoguard.prune_scores``
  to that transaction's id, which the trigger checks: the setting ends with the transaction, and a
  session-wide SET of it matches no transaction, so every other statement is refused.
* The request path must never wait on a sick database: connections open with a short
  ``connect_timeout`` and TCP keepalives, every statement runs under ``statement_timeout`` (lock waits
  included), a request waits a bounded time for a pooled connection, and after a failed connect
  calls fail at once for ``retry_after_s`` instead of each paying the timeout again. Every failure of
  the database is raised as :class:`RecordsUnavailable`; the scorer answers anyway, degraded.
* The schema is created on the first connection (``CREATE TABLE IF NOT EXISTS``) under an advisory lock,
  so replicas starting together do not race on the catalog, and a replica started while the database
  is down still starts: it creates the schema once the database answers.
* The URL may hold a password: it is never logged nor put in an error message.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg2
import psycopg2.extensions
import psycopg2.extras

from scoring.records import (
    DEFAULT_RETENTION_DAYS,
    SCORE_COLUMNS,
    SHADOW_COLUMNS,
    IdempotencyConflict,
    PruneCounts,
    ScoreRecord,
    ShadowRecord,
    history_rows,
    score_values,
    shadow_values,
)

logger = logging.getLogger(__name__)

#: The transaction-local setting that lets :meth:`PostgresRecords.prune` delete from ``scores``.
PRUNE_SETTING = "promoguard.prune_scores"

#: Key of the advisory lock that serialises schema creation across replicas (any constant will do).
_SCHEMA_LOCK = 0x70726F6D6F  # "promo"

_APPEND_ONLY_FUNCTION = f"""CREATE OR REPLACE FUNCTION scores_append_only() RETURNS trigger
    LANGUAGE plpgsql AS $$
    BEGIN
        IF TG_OP = 'DELETE' AND current_setting('{PRUNE_SETTING}', true) = txid_current()::text THEN
            RETURN OLD;
        END IF;
        RAISE EXCEPTION 'scores is append-only';
    END $$"""


def _create_trigger(name: str, when: str) -> str:
    # PostgreSQL 15 has no CREATE TRIGGER IF NOT EXISTS, and CREATE OR REPLACE TRIGGER would lock the
    # table against the other replicas' inserts at every start: create it only when it is missing.
    return f"""DO $$ BEGIN
        IF NOT EXISTS (SELECT 1 FROM pg_trigger WHERE tgname = '{name}' AND tgrelid = 'scores'::regclass)
        THEN CREATE TRIGGER {name} {when} ON scores EXECUTE FUNCTION scores_append_only();
        END IF;
    END $$"""


_SCHEMA = (
    # Same columns, same order and same value types as the SQLite file (scoring.records._SCHEMA plus the
    # columns added there since), so ``scored`` returns the same row on both.
    """CREATE TABLE IF NOT EXISTS scores (
        request_id TEXT PRIMARY KEY, body_sha256 TEXT NOT NULL, ts TEXT NOT NULL,
        promo_code TEXT NOT NULL, promo_type TEXT NOT NULL, score INTEGER NOT NULL, band TEXT NOT NULL,
        decision TEXT NOT NULL, fallback TEXT, degraded INTEGER NOT NULL, model_version TEXT,
        latency_ms DOUBLE PRECISION NOT NULL, signals_json TEXT NOT NULL, features_json TEXT NOT NULL,
        keys_json TEXT NOT NULL, rules_version TEXT, response_json TEXT NOT NULL,
        timings_json TEXT, context_json TEXT, explored INTEGER, would_be_decision TEXT)""",
    "CREATE INDEX IF NOT EXISTS scores_ts ON scores (ts)",
    """CREATE TABLE IF NOT EXISTS feedback (
        request_id TEXT NOT NULL, label TEXT NOT NULL, label_source TEXT NOT NULL, label_ts TEXT NOT NULL,
        seq BIGINT GENERATED ALWAYS AS IDENTITY)""",
    "CREATE INDEX IF NOT EXISTS feedback_request ON feedback (request_id)",
    """CREATE TABLE IF NOT EXISTS outcomes (
        request_id TEXT NOT NULL, outcome TEXT NOT NULL, reservation TEXT NOT NULL, ts TEXT NOT NULL,
        seq BIGINT GENERATED ALWAYS AS IDENTITY)""",
    "CREATE INDEX IF NOT EXISTS outcomes_request ON outcomes (request_id)",
    """CREATE TABLE IF NOT EXISTS shadow (
        request_id TEXT PRIMARY KEY, ts TEXT NOT NULL, promo_code TEXT NOT NULL, promo_type TEXT NOT NULL,
        live_score INTEGER NOT NULL, live_decision TEXT NOT NULL, live_explored INTEGER NOT NULL,
        live_fallback TEXT, live_model_version TEXT, live_rules_version TEXT,
        challenger_score INTEGER NOT NULL, challenger_decision TEXT NOT NULL, challenger_fallback TEXT,
        challenger_model_version TEXT, challenger_rules_version TEXT, challenger_deciding_rule TEXT,
        shadow_ms DOUBLE PRECISION)""",
    "CREATE INDEX IF NOT EXISTS shadow_ts ON shadow (ts)",
    # Append-only: the audit trail of decisions cannot be rewritten through this database.
    _APPEND_ONLY_FUNCTION,
    _create_trigger("scores_append_only", "BEFORE UPDATE OR DELETE"),
    # TRUNCATE fires no row trigger: refuse it with a statement one.
    _create_trigger("scores_no_truncate", "BEFORE TRUNCATE"),
)

_INSERT_SCORE = (
    "INSERT INTO scores (request_id, body_sha256, ts, promo_code, promo_type, score, band, decision, "
    "fallback, degraded, model_version, latency_ms, signals_json, features_json, keys_json, rules_version, "
    "response_json, timings_json, context_json, explored, would_be_decision) "
    f"VALUES ({', '.join(['%s'] * 21)}) ON CONFLICT (request_id) DO NOTHING"
)


#: Many rows per statement (psycopg2.extras.execute_values): the new ones' ids come back.
_INSERT_SCORES_RETURNING = (
    f"INSERT INTO scores ({', '.join(SCORE_COLUMNS)}) VALUES %s ON CONFLICT (request_id) DO NOTHING "
    "RETURNING request_id"
)


class RecordsUnavailable(RuntimeError):
    """The state database could not be reached or did not answer in time (the cause is chained)."""


def is_state_url(value: object) -> bool:
    """True for a ``postgresql://`` (or ``postgres://``) URL, False for a path or None."""
    return isinstance(value, str) and value.startswith(("postgresql://", "postgres://"))


def open_connection(
    url: str, connect_timeout_s: float, statement_timeout_ms: int, application_name: str = "promoguard"
) -> Any:
    """A new autocommit connection; statements bounded by ``statement_timeout_ms`` (0: unbounded)."""
    conn = psycopg2.connect(
        url,
        connect_timeout=max(1, round(connect_timeout_s)),
        application_name=application_name,
        # A host that vanished is noticed within seconds, not after the kernel's two hours.
        keepalives=1, keepalives_idle=5, keepalives_interval=1, keepalives_count=3,
        tcp_user_timeout=int(connect_timeout_s * 1000) + 1000,
    )
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            # Set here, not in the URL's ``options``, which an operator may use for the search_path.
            # The statement timeout also bounds lock waits; a transaction left open by a stuck client
            # would hold its locks against every replica: the server ends it.
            cur.execute(
                "SELECT set_config('statement_timeout', %s, false), "
                "set_config('idle_in_transaction_session_timeout', %s, false)",
                (str(statement_timeout_ms), str(statement_timeout_ms * 10)),
            )
    except BaseException:
        conn.close()
        raise
    return conn


def read_only_connection(url: str, connect_timeout_s: float = 5.0) -> Any:
    """A read-only connection for the log's readers (reports, drift): no statement timeout."""
    try:
        conn = open_connection(url, connect_timeout_s, 0)
    except psycopg2.Error as exc:
        raise RecordsUnavailable(f"the state database did not answer ({type(exc).__name__})") from exc
    conn.readonly = True
    return conn


class _Pool:
    """At most ``size`` connections, opened on demand; a caller waits at most ``wait_s`` for a free one.

    psycopg2's ThreadedConnectionPool raises at once when every connection is taken instead of waiting a
    moment, and knows nothing of a dead server; this one also fails fast after a failed connect.
    """

    def __init__(
        self, url: str, size: int, wait_s: float, connect_timeout_s: float, statement_timeout_ms: int,
        retry_after_s: float, application_name: str,
    ) -> None:
        self._url = url
        self._application_name = application_name
        self._wait_s = wait_s
        self._connect_timeout_s = connect_timeout_s
        self._statement_timeout_ms = statement_timeout_ms
        self._retry_after_s = retry_after_s
        self._slots = threading.BoundedSemaphore(size)
        self._lock = threading.Lock()
        self._idle: list[Any] = []
        self._pid = os.getpid()
        self._down_until = 0.0
        self._ready = False
        self._closed = False

    def acquire(self) -> Any:
        """A connection for one call; RecordsUnavailable when none can be had in time."""
        if self._closed:
            raise RecordsUnavailable("the records are closed")
        if time.monotonic() < self._down_until:
            # The last connect failed a moment ago: fail now rather than pay connect_timeout again.
            raise RecordsUnavailable("the state database was unreachable a moment ago")
        if not self._slots.acquire(timeout=self._wait_s):
            raise RecordsUnavailable(f"no free state database connection within {self._wait_s:.1f}s")
        try:
            with self._lock:
                if os.getpid() != self._pid:
                    # A forked child must not use (nor close) its parent's sockets.
                    self._idle, self._pid = [], os.getpid()
                conn = self._idle.pop() if self._idle else None
            return conn if conn is not None else self._open()
        except BaseException:
            self._slots.release()
            raise

    def _open(self) -> Any:
        try:
            conn = open_connection(self._url, self._connect_timeout_s, self._statement_timeout_ms,
                            self._application_name)
        except psycopg2.Error as exc:
            self._down_until = time.monotonic() + self._retry_after_s
            raise RecordsUnavailable(f"the state database did not answer ({type(exc).__name__})") from exc
        if not self._ready:
            try:
                _create_schema(conn)
            except psycopg2.Error as exc:
                _close_quietly(conn)
                reason = f"the state database refused the schema ({type(exc).__name__})"
                raise RecordsUnavailable(reason) from exc
            self._ready = True
        return conn

    def release(self, conn: Any, reusable: bool) -> None:
        """Give a connection back: kept when healthy and idle, closed otherwise."""
        try:
            healthy = (
                reusable and not self._closed and not conn.closed
                and conn.get_transaction_status() == psycopg2.extensions.TRANSACTION_STATUS_IDLE
            )
            if healthy:
                with self._lock:
                    self._idle.append(conn)
                return
            _close_quietly(conn)
        finally:
            self._slots.release()

    def drop_idle(self) -> None:
        """Close every idle connection: one died, so the others (same server) most likely did too."""
        with self._lock:
            idle, self._idle = self._idle, []
        for conn in idle:
            _close_quietly(conn)

    def close(self) -> None:
        """Close idle connections now; those in use are closed when they come back."""
        self._closed = True
        self.drop_idle()


def _close_quietly(conn: Any) -> None:
    with suppress(psycopg2.Error):
        conn.close()


def _create_schema(conn: Any) -> None:
    """Create the tables, indexes and the append-only trigger when missing (one replica at a time)."""
    with conn, conn.cursor() as cur:
        cur.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK,))
        for statement in _SCHEMA:
            cur.execute(statement)


class PostgresRecords:
    """PostgreSQL-backed scoring log, outcomes, feedback and shadow rows; safe to share across threads."""

    def __init__(
        self,
        url: str,
        *,
        pool_size: int = 8,
        connect_timeout_s: float = 2.0,
        statement_timeout_ms: int = 1000,
        pool_wait_s: float = 1.0,
        retry_after_s: float = 1.0,
        application_name: str = "promoguard",
    ) -> None:
        """Prepare a pool for ``url`` (a ``postgresql://`` URL; its ``options`` may set a search_path).

        Nothing is required of the database yet: the schema is created by the first connection, here
        when the database answers, else by the first call that reaches it. ``pool_size`` is per process
        (the service's threads per worker are enough); ``statement_timeout_ms`` bounds every statement of
        the request path and ``retry_after_s`` how long calls fail fast after a failed connect.
        ``application_name`` names the connections in ``pg_stat_activity``.
        """
        if not is_state_url(url):
            raise ValueError("expected a postgresql:// URL")
        if pool_size < 1:
            raise ValueError(f"pool_size must be >= 1, got {pool_size}")
        self._url = url
        self._connect_timeout_s = float(connect_timeout_s)
        self._application_name = application_name
        self._pool = _Pool(url, pool_size, pool_wait_s, self._connect_timeout_s, int(statement_timeout_ms),
                           retry_after_s, application_name)
        try:
            self._pool.release(self._pool.acquire(), True)
        except RecordsUnavailable as exc:
            if not isinstance(exc.__cause__, psycopg2.OperationalError):
                # The database answers but refuses the schema (rights, search_path): a configuration
                # error that must stop the start, not degrade every answer.
                raise
            # A replica started while the database is away answers degraded until it is back.
            logger.warning("state database unavailable at start (%s): answers degraded until it answers",
                           type(exc.__cause__).__name__)

    def __repr__(self) -> str:
        """No URL: it may hold a password."""
        return f"{type(self).__name__}(<state database>)"

    @contextmanager
    def _cursor(self, transaction: bool = False) -> Iterator[Any]:
        """A cursor on a pooled connection (in one transaction when asked); every database error becomes
        :class:`RecordsUnavailable` (the cause chained), so callers catch one type."""
        conn = self._pool.acquire()
        try:
            if transaction:
                with conn, conn.cursor() as cur:
                    yield cur
            else:
                with conn.cursor() as cur:
                    yield cur
        except psycopg2.Error as exc:
            if conn.closed:
                # The server went away under this connection: the idle ones are as dead.
                self._pool.drop_idle()
            raise RecordsUnavailable(f"the state database failed ({type(exc).__name__})") from exc
        finally:
            # Kept only when still open and idle (a timed-out statement leaves it usable).
            self._pool.release(conn, True)

    def close(self) -> None:
        """Close the pool's connections."""
        self._pool.close()

    def lookup(self, request_id: str, body_sha256: str) -> dict[str, Any] | None:
        """The stored response for a retry, None when new; IdempotencyConflict for a changed body."""
        with self._cursor() as cur:
            cur.execute("SELECT body_sha256, response_json FROM scores WHERE request_id = %s", (request_id,))
            row = cur.fetchone()
        if row is None:
            return None
        if row[0] != body_sha256:
            raise IdempotencyConflict(request_id)
        stored: dict[str, Any] = json.loads(row[1])
        return stored

    def append(self, rec: ScoreRecord) -> dict[str, Any]:
        """Append one attempt; when a concurrent twin (on any replica) got there first, return what it
        stored (IdempotencyConflict when its body differs)."""
        values = score_values(rec)
        with self._cursor() as cur:
            cur.execute(_INSERT_SCORE, values)
            inserted = cur.rowcount == 1
        if inserted:
            return dict(rec.response)
        stored = self.lookup(rec.request_id, rec.body_sha256)
        if stored is None:
            # Only a prune between the two statements can do this: the twin's row is gone, ours too.
            raise RecordsUnavailable(f"request_id {rec.request_id!r} was neither stored nor found")
        return stored

    def append_many(self, recs: Sequence[ScoreRecord]) -> list[ScoreRecord]:
        """Append attempts in one transaction (one statement per page of rows); returns those whose
        ``request_id`` was already logged (left as they were: the caller asks :meth:`lookup`)."""
        if not recs:
            return []
        with self._cursor(transaction=True) as cur:
            inserted = psycopg2.extras.execute_values(
                cur, _INSERT_SCORES_RETURNING, [score_values(rec) for rec in recs], page_size=200, fetch=True
            )
        new = {str(row[0]) for row in inserted}
        return [rec for rec in recs if rec.request_id not in new]

    def scored(self, request_id: str) -> dict[str, Any] | None:
        """The logged row of a scored attempt (decision, promo fields, keys), or None."""
        with self._cursor() as cur:
            cur.execute("SELECT * FROM scores WHERE request_id = %s", (request_id,))
            row = cur.fetchone()
            names = [d[0] for d in cur.description]
        return None if row is None else dict(zip(names, row, strict=True))

    def history(self, request_id: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """Outcomes and feedback received for a scored attempt, oldest first."""
        with self._cursor() as cur:
            cur.execute(
                "SELECT outcome, reservation, ts FROM outcomes WHERE request_id = %s ORDER BY seq",
                (request_id,),
            )
            outcomes = cur.fetchall()
            cur.execute(
                "SELECT label, label_source, label_ts FROM feedback WHERE request_id = %s ORDER BY seq",
                (request_id,),
            )
            feedback = cur.fetchall()
        return history_rows(outcomes, feedback)

    def add_outcome(self, request_id: str, outcome: str, reservation: str, ts: datetime) -> None:
        """Log what checkout did with an attempt."""
        with self._cursor() as cur:
            cur.execute(
                "INSERT INTO outcomes (request_id, outcome, reservation, ts) VALUES (%s, %s, %s, %s)",
                (request_id, outcome, reservation, ts.astimezone(UTC).isoformat()),
            )

    def add_feedback(self, request_id: str, label: str, source: str, ts: datetime) -> None:
        """Store a label in the label contract's shape."""
        with self._cursor() as cur:
            cur.execute(
                "INSERT INTO feedback (request_id, label, label_source, label_ts) VALUES (%s, %s, %s, %s)",
                (request_id, label, source, ts.astimezone(UTC).isoformat()),
            )

    def append_shadow(self, recs: Sequence[ShadowRecord]) -> int:
        """Log challenger answers in one transaction; a request already shadowed keeps its first row.

        Returns how many rows were new. Called by the shadow worker, never on the request path.
        """
        if not recs:
            return 0
        values = [shadow_values(r) for r in recs]
        with self._cursor(transaction=True) as cur:
            # executemany's rowcount is the sum over the rows: the ones the conflict skipped add 0.
            cur.executemany(
                f"INSERT INTO shadow ({', '.join(SHADOW_COLUMNS)}) VALUES ({', '.join(['%s'] * 17)}) "
                "ON CONFLICT (request_id) DO NOTHING",
                values,
            )
            return max(0, int(cur.rowcount))

    def prune(
        self, now: datetime, days: float = DEFAULT_RETENTION_DAYS, *, vacuum: bool = False
    ) -> PruneCounts:
        """Delete the decisions logged more than ``days`` before ``now``, with their outcomes, labels and
        shadow rows; returns how many rows of each table went.

        A decision and what followed it leave together, whenever the follow-up arrived, so no label or
        outcome outlives the attempt it is about. All in one transaction, the only one allowed to delete
        from ``scores`` (``promoguard.prune_scores``, local to it). A request id pruned here is new again
        to :meth:`lookup`. PostgreSQL reuses the freed space; ``vacuum=True`` also gives it back to the
        file system (``VACUUM FULL``: it locks each table while it rewrites it, so run it off-peak).
        Runs on a connection of its own, without the request path's statement timeout.
        """
        if days <= 0:
            raise ValueError(f"days must be > 0, got {days}")
        cutoff = (now.astimezone(UTC) - timedelta(days=days)).isoformat()
        try:
            conn = open_connection(self._url, self._connect_timeout_s, 0, self._application_name)
        except psycopg2.Error as exc:
            raise RecordsUnavailable(f"the state database did not answer ({type(exc).__name__})") from exc
        try:
            _create_schema(conn)
            with conn, conn.cursor() as cur:
                # Local to this transaction, and valued with its id: a session-wide SET of the same name
                # (or one left from an earlier transaction) never matches a later transaction.
                cur.execute("SELECT set_config(%s, txid_current()::text, true)", (PRUNE_SETTING,))
                old = "SELECT request_id FROM scores WHERE ts < %s"
                counts = []
                for statement in (
                    f"DELETE FROM outcomes WHERE request_id IN ({old})",
                    f"DELETE FROM feedback WHERE request_id IN ({old})",
                    "DELETE FROM shadow WHERE ts < %s",
                    "DELETE FROM scores WHERE ts < %s",
                ):
                    cur.execute(statement, (cutoff,))
                    counts.append(int(cur.rowcount))
            if vacuum:
                with conn.cursor() as cur:
                    for table in ("scores", "outcomes", "feedback", "shadow"):
                        cur.execute(f"VACUUM FULL {table}")
        except psycopg2.Error as exc:
            raise RecordsUnavailable(f"the state database failed the prune ({type(exc).__name__})") from exc
        finally:
            conn.close()
        return PruneCounts(outcomes=counts[0], feedback=counts[1], shadow=counts[2], scores=counts[3])

    def count(self, table: str) -> int:
        """Rows in one of the service's tables (scores, outcomes, feedback, shadow)."""
        if table not in ("scores", "outcomes", "feedback", "shadow"):
            raise ValueError(f"table: expected scores, outcomes, feedback or shadow, got {table!r}")
        with self._cursor() as cur:
            cur.execute(f"SELECT count(*) FROM {table}")
            row = cur.fetchone()
        return int(row[0])

