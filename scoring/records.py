"""The service's own records: idempotency, the append-only scoring log, outcomes and feedback.

One SQLite file in WAL mode (readers never block the writer; a busy timeout keeps a stuck writer
from stalling requests). Rows hold hashed identity keys and feature values only: the raw email,
phone, address and IP of a request never reach this file. The ``feedback`` table follows the label
contract (``request_id, label, label_source, label_ts``) so training can read it as labels.

Idempotency rides on the log's primary key: a retry with the same ``request_id`` and the same body
(its canonical sha256) gets the first stored response back; a different body under the same id is an
:class:`IdempotencyConflict`.

The same row is the decision record (``GET /decisions/{request_id}``): the answer as given, the model
and rules versions, every model input, the hashed keys and flags, and in ``context_json`` what
re-scoring the answer needs besides the features (the rules' other inputs, the deciding rule, the
bands and thresholds that applied) plus ``timings_json``, milliseconds per step. Both columns were
added to existing logs in place (``ALTER TABLE ... ADD COLUMN``); rows written before stay NULL there.

Exploration (:func:`scoring.policy.explores`) lets a few would-be verify/refuse answers through: such a
row has ``explored = 1`` and the decision the policy would have given in ``would_be_decision``, while
``decision`` is what checkout got (allow); the record's ``context`` keeps it too, as ``explored_from``.
Both columns were added the same way (NULL: not explored).

The ``shadow`` table holds, per shadowed request, the live decision beside a challenger's (a model
version and/or rules table scored off the request path on the same inputs, :mod:`serving.shadow`);
``promoguard shadow-report`` reads it with :func:`shadow_frame`.

Behind several replicas the same tables live in PostgreSQL (:class:`scoring.records_pg.PostgresRecords`,
chosen by :func:`scoring.state.open_records`); :class:`RecordsLike` is what both offer the service, and
the readers below take either this file's path or the database's ``postgresql://`` URL.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

import orjson

from sqlitekit.sqlitewrite import WriteLock
from sqlitekit.walcheckpoint import Checkpointer, open_scratch, open_wal, rewind_log

_NO_DELETE_TRIGGER = """CREATE TRIGGER IF NOT EXISTS scores_no_delete BEFORE DELETE ON scores
        BEGIN SELECT RAISE(ABORT, 'scores is append-only'); END"""

#: Days of decisions :meth:`Records.prune` keeps unless told otherwise (``PROMOGUARD_SCORES_RETENTION_DAYS``).
DEFAULT_RETENTION_DAYS = 90.0

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS scores (
        request_id TEXT PRIMARY KEY, body_sha256 TEXT NOT NULL, ts TEXT NOT NULL,
        promo_code TEXT NOT NULL, promo_type TEXT NOT NULL, score INTEGER NOT NULL, band TEXT NOT NULL,
        decision TEXT NOT NULL, fallback TEXT, degraded INTEGER NOT NULL, model_version TEXT,
        latency_ms REAL NOT NULL, signals_json TEXT NOT NULL, features_json TEXT NOT NULL,
        keys_json TEXT NOT NULL, rules_version TEXT, response_json TEXT NOT NULL,
        timings_json TEXT, context_json TEXT)""",
    """CREATE TABLE IF NOT EXISTS feedback (
        request_id TEXT NOT NULL, label TEXT NOT NULL, label_source TEXT NOT NULL, label_ts TEXT NOT NULL)""",
    "CREATE INDEX IF NOT EXISTS feedback_request ON feedback (request_id)",
    """CREATE TABLE IF NOT EXISTS outcomes (
        request_id TEXT NOT NULL, outcome TEXT NOT NULL, reservation TEXT NOT NULL, ts TEXT NOT NULL)""",
    "CREATE INDEX IF NOT EXISTS outcomes_request ON outcomes (request_id)",
    # live_decision is the policy's decision before any exploration (live_explored says when it was let
    # through): the shadow compares two policies, not the holdout.
    """CREATE TABLE IF NOT EXISTS shadow (
        request_id TEXT PRIMARY KEY, ts TEXT NOT NULL, promo_code TEXT NOT NULL, promo_type TEXT NOT NULL,
        live_score INTEGER NOT NULL, live_decision TEXT NOT NULL, live_explored INTEGER NOT NULL,
        live_fallback TEXT, live_model_version TEXT, live_rules_version TEXT,
        challenger_score INTEGER NOT NULL, challenger_decision TEXT NOT NULL, challenger_fallback TEXT,
        challenger_model_version TEXT, challenger_rules_version TEXT, challenger_deciding_rule TEXT,
        shadow_ms REAL)""",
    "CREATE INDEX IF NOT EXISTS shadow_ts ON shadow (ts)",
    # Append-only: the audit trail of decisions cannot be rewritten through this database.
    """CREATE TRIGGER IF NOT EXISTS scores_no_update BEFORE UPDATE ON scores
        BEGIN SELECT RAISE(ABORT, 'scores is append-only'); END""",
    _NO_DELETE_TRIGGER,
)


#: The shadow table's columns, in order.
SHADOW_COLUMNS = (
    "request_id", "ts", "promo_code", "promo_type", "live_score", "live_decision", "live_explored",
    "live_fallback", "live_model_version", "live_rules_version", "challenger_score", "challenger_decision",
    "challenger_fallback", "challenger_model_version", "challenger_rules_version", "challenger_deciding_rule",
    "shadow_ms",
)

#: Columns added to the scores table after its first release: (name, SQL type).
_ADDED_COLUMNS = (
    ("timings_json", "TEXT"), ("context_json", "TEXT"),
    ("explored", "INTEGER"), ("would_be_decision", "TEXT"),
)


class IdempotencyConflict(ValueError):
    """The request_id was already used with a different body."""

    def __init__(self, request_id: str) -> None:
        """Name the reused request_id in the message."""
        super().__init__(
            f"request_id {request_id!r} was already scored with a different body; "
            "use a new request_id for a new attempt"
        )
        self.request_id = request_id


@dataclass(frozen=True)
class ScoreRecord:
    """One row of the scoring log; ``keys`` are hashed identity keys, never raw identity."""

    request_id: str
    body_sha256: str
    ts: datetime
    promo_code: str
    promo_type: str
    score: int
    band: str
    decision: str
    fallback: str | None
    degraded: bool
    model_version: str | None
    latency_ms: float
    signals: list[dict[str, Any]]
    features: Mapping[str, float | None]
    keys: Mapping[str, Any]
    rules_version: str | None
    response: Mapping[str, Any]
    #: Milliseconds per step of the request path.
    timings: Mapping[str, float] | None = None
    #: What re-scoring needs besides the features: rule inputs, deciding rule, policy; and, for an
    #: attempt exploration let through, ``explored_from``: the decision the policy would have given
    #: (it fills the ``explored`` and ``would_be_decision`` columns).
    context: Mapping[str, Any] | None = None

    @property
    def would_be_decision(self) -> str | None:
        """The policy's decision an explored attempt would have got (None unless explored)."""
        value = (self.context or {}).get("explored_from")
        return None if value is None else str(value)


@dataclass(frozen=True)
class PruneCounts:
    """Rows :meth:`Records.prune` deleted, per table."""

    scores: int
    outcomes: int
    feedback: int
    shadow: int


@dataclass(frozen=True)
class ShadowRecord:
    """One shadowed request: the live answer and a challenger's answer on the same inputs."""

    request_id: str
    ts: datetime
    promo_code: str
    promo_type: str
    live_score: int
    #: The live policy's decision (before exploration; ``live_explored`` says it was let through).
    live_decision: str
    live_explored: bool
    live_fallback: str | None
    live_model_version: str | None
    live_rules_version: str | None
    challenger_score: int
    challenger_decision: str
    challenger_fallback: str | None
    challenger_model_version: str | None
    challenger_rules_version: str | None
    challenger_deciding_rule: str | None = None
    #: Milliseconds the challenger took, in the shadow worker.
    shadow_ms: float | None = None


class RecordsLike(Protocol):
    """The service's records, whatever holds them: :class:`Records` (one SQLite file, one replica) or
    :class:`scoring.records_pg.PostgresRecords` (one database shared by every replica)."""

    def lookup(self, request_id: str, body_sha256: str) -> dict[str, Any] | None:
        """The stored response for a retry, None when new; IdempotencyConflict for a changed body."""
        ...

    def append(self, rec: ScoreRecord) -> dict[str, Any]:
        """Append one attempt; when a concurrent twin got there first, return what it stored."""
        ...

    def scored(self, request_id: str) -> dict[str, Any] | None:
        """The logged row of a scored attempt, or None."""
        ...

    def history(self, request_id: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """Outcomes and feedback received for a scored attempt, oldest first."""
        ...

    def add_outcome(self, request_id: str, outcome: str, reservation: str, ts: datetime) -> None:
        """Log what checkout did with an attempt."""
        ...

    def add_feedback(self, request_id: str, label: str, source: str, ts: datetime) -> None:
        """Store a label in the label contract's shape."""
        ...

    def append_shadow(self, recs: Sequence[ShadowRecord]) -> int:
        """Log challenger answers; a request already shadowed keeps its first row. Returns the new rows."""
        ...

    def prune(
        self, now: datetime, days: float = DEFAULT_RETENTION_DAYS, *, vacuum: bool = False
    ) -> PruneCounts:
        """Delete decisions older than ``days`` with their outcomes, labels and shadow rows."""
        ...

    def count(self, table: str) -> int:
        """Rows in one of the service's tables (scores, outcomes, feedback, shadow)."""
        ...

    def close(self) -> None:
        """Release the connection(s)."""
        ...


#: Decisions deleted per write transaction by :meth:`Records.prune`: each batch holds the log's write
#: lock for milliseconds, so a service answering meanwhile interleaves its appends with a prune of any size.
PRUNE_BATCH = 500

#: Keys sorted, so that one row always reads the same; numpy scalars as numbers; datetimes through
#: ``str`` (``2026-01-01 00:00:00+00:00``), as the rows written by the standard library have them.
_JSON_OPTIONS = (
    orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS | orjson.OPT_SERIALIZE_NUMPY
    | orjson.OPT_PASSTHROUGH_DATETIME
)


def _json(value: Any) -> str:
    """``value`` as strict JSON text: NaN and infinities (JSON has none) at any depth become null.

    orjson: the six JSON columns of a scoring-log row took a tenth of a millisecond per request with the
    standard library's encoder, about a sixth of that here.
    """
    return orjson.dumps(value, default=str, option=_JSON_OPTIONS).decode()


#: The scores table's columns, in the table's order (what ``SELECT *`` and :meth:`Records.scored` give).
SCORE_COLUMNS = (
    "request_id", "body_sha256", "ts", "promo_code", "promo_type", "score", "band", "decision", "fallback",
    "degraded", "model_version", "latency_ms", "signals_json", "features_json", "keys_json", "rules_version",
    "response_json", "timings_json", "context_json", "explored", "would_be_decision",
)

_INSERT_SCORE = (
    f"INSERT INTO scores ({', '.join(SCORE_COLUMNS)}) VALUES ({', '.join(['?'] * len(SCORE_COLUMNS))})"
)
_INSERT_SCORE_OR_IGNORE = _INSERT_SCORE.replace("INSERT INTO", "INSERT OR IGNORE INTO", 1)


def score_values(rec: ScoreRecord) -> tuple[Any, ...]:
    """The row ``rec`` is stored as, one value per :data:`SCORE_COLUMNS` (JSON as text, flags as 0/1)."""
    return (
        rec.request_id, rec.body_sha256, rec.ts.astimezone(UTC).isoformat(), rec.promo_code,
        rec.promo_type, int(rec.score), rec.band, rec.decision, rec.fallback, int(rec.degraded),
        rec.model_version, float(rec.latency_ms), _json(rec.signals),
        _json(rec.features), _json(dict(rec.keys)), rec.rules_version,
        _json(dict(rec.response)),
        None if rec.timings is None else _json(dict(rec.timings)),
        None if rec.context is None else _json(dict(rec.context)),
        None if rec.would_be_decision is None else 1, rec.would_be_decision,
    )


def shadow_values(r: ShadowRecord) -> tuple[Any, ...]:
    """The row ``r`` is stored as, one value per :data:`SHADOW_COLUMNS`."""
    return (
        r.request_id, r.ts.astimezone(UTC).isoformat(), r.promo_code, r.promo_type, int(r.live_score),
        r.live_decision, int(r.live_explored), r.live_fallback, r.live_model_version,
        r.live_rules_version, int(r.challenger_score), r.challenger_decision, r.challenger_fallback,
        r.challenger_model_version, r.challenger_rules_version, r.challenger_deciding_rule,
        None if r.shadow_ms is None else float(r.shadow_ms),
    )


def history_rows(
    outcomes: Sequence[Sequence[Any]], feedback: Sequence[Sequence[Any]]
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """What :meth:`Records.history` returns, from the (outcome, reservation, ts) and (label, source, ts)
    rows of either backend."""
    return (
        [{"outcome": o, "reservation": r, "ts": t} for o, r, t in outcomes],
        [{"label": lab, "source": src, "ts": t} for lab, src, t in feedback],
    )


def _add_columns(conn: sqlite3.Connection) -> None:
    """Bring a scoring log written by an earlier release up to the current columns."""
    have = {row[1] for row in conn.execute("PRAGMA table_info(scores)")}
    for name, kind in _ADDED_COLUMNS:
        if name in have:
            continue
        try:
            conn.execute(f"ALTER TABLE scores ADD COLUMN {name} {kind}")
        except sqlite3.OperationalError as exc:
            # Another worker added it a moment ago.
            if "duplicate column" not in str(exc):
                raise


class Records:
    """SQLite-backed scoring log, outcomes and feedback; safe to share across threads."""

    def __init__(
        self,
        path: str | Path,
        busy_timeout_ms: int = 2000,
        checkpoint_interval_s: float | None = None,
        *,
        scratch: bool = False,
    ) -> None:
        """Open (and create) the database at ``path``.

        With ``checkpoint_interval_s`` WAL checkpoints run in a background thread instead of inside a
        request's commit (see :mod:`sqlitekit.walcheckpoint`). ``scratch=True`` opens a log this process
        keeps to itself and need not survive a crash (a replay's): no WAL and no fsync.
        """
        if scratch and checkpoint_interval_s is not None:
            raise ValueError("a scratch log has no WAL to checkpoint: drop checkpoint_interval_s")
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._busy_timeout_ms = int(busy_timeout_ms)
        # Worker processes share the file: writes take its lock without SQLite's sleeping busy handler.
        self._writes = WriteLock(busy_timeout_ms / 1000)
        background = checkpoint_interval_s is not None
        self._conn = (
            open_scratch(str(self.path), self._busy_timeout_ms)
            if scratch
            else open_wal(str(self.path), self._busy_timeout_ms, background_checkpoints=background)
        )
        for statement in _SCHEMA:
            self._conn.execute(statement)
        _add_columns(self._conn)
        self._checkpointer: Checkpointer | None = None
        if checkpoint_interval_s is not None:
            self._checkpointer = Checkpointer(self.path, checkpoint_interval_s)

    def close(self) -> None:
        """Stop the checkpointer and close the connection."""
        if self._checkpointer is not None:
            self._checkpointer.close()
            self._checkpointer = None
        with self._lock:
            self._conn.close()

    def lookup(self, request_id: str, body_sha256: str) -> dict[str, Any] | None:
        """The stored response for a retry, None when new; IdempotencyConflict for a changed body."""
        with self._lock:
            row = self._conn.execute(
                "SELECT body_sha256, response_json FROM scores WHERE request_id = ?", (request_id,)
            ).fetchone()
        if row is None:
            return None
        if row[0] != body_sha256:
            raise IdempotencyConflict(request_id)
        stored: dict[str, Any] = json.loads(row[1])
        return stored

    def append(self, rec: ScoreRecord) -> dict[str, Any]:
        """Append one attempt; when a concurrent twin got there first, return what it stored."""
        values = score_values(rec)
        try:
            with self._lock, self._writes.transaction(self._conn, self._busy_timeout_ms):
                self._conn.execute(_INSERT_SCORE, values)
        except sqlite3.IntegrityError:
            stored = self.lookup(rec.request_id, rec.body_sha256)
            if stored is None:
                raise
            return stored
        return dict(rec.response)

    def append_many(self, recs: Sequence[ScoreRecord]) -> list[ScoreRecord]:
        """Append attempts in one transaction; returns those whose ``request_id`` was already logged
        (left as they were: the caller asks :meth:`lookup` what the log holds for them)."""
        if not recs:
            return []
        rows = [score_values(rec) for rec in recs]
        skipped: list[ScoreRecord] = []
        with self._lock, self._writes.transaction(self._conn, self._busy_timeout_ms):
            for rec, values in zip(recs, rows, strict=True):
                if self._conn.execute(_INSERT_SCORE_OR_IGNORE, values).rowcount == 0:
                    skipped.append(rec)
        return skipped

    def scored(self, request_id: str) -> dict[str, Any] | None:
        """The logged row of a scored attempt (decision, promo fields, keys), or None."""
        with self._lock:
            cur = self._conn.execute("SELECT * FROM scores WHERE request_id = ?", (request_id,))
            row = cur.fetchone()
            names = [d[0] for d in cur.description]
        return None if row is None else dict(zip(names, row, strict=True))

    def history(self, request_id: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """Outcomes and feedback received for a scored attempt, oldest first."""
        with self._lock:
            outcomes = self._conn.execute(
                "SELECT outcome, reservation, ts FROM outcomes WHERE request_id = ? ORDER BY rowid",
                (request_id,),
            ).fetchall()
            feedback = self._conn.execute(
                "SELECT label, label_source, label_ts FROM feedback WHERE request_id = ? ORDER BY rowid",
                (request_id,),
            ).fetchall()
        return history_rows(outcomes, feedback)

    def add_outcome(self, request_id: str, outcome: str, reservation: str, ts: datetime) -> None:
        """Log what checkout did with an attempt."""
        with self._lock, self._writes.transaction(self._conn, self._busy_timeout_ms):
            self._conn.execute(
                "INSERT INTO outcomes (request_id, outcome, reservation, ts) VALUES (?,?,?,?)",
                (request_id, outcome, reservation, ts.astimezone(UTC).isoformat()),
            )

    def add_feedback(self, request_id: str, label: str, source: str, ts: datetime) -> None:
        """Store a label in the label contract's shape."""
        with self._lock, self._writes.transaction(self._conn, self._busy_timeout_ms):
            self._conn.execute(
                "INSERT INTO feedback (request_id, label, label_source, label_ts) VALUES (?,?,?,?)",
                (request_id, label, source, ts.astimezone(UTC).isoformat()),
            )

    def append_shadow(self, recs: Sequence[ShadowRecord]) -> int:
        """Log challenger answers in one transaction; a request already shadowed keeps its first row.

        Returns how many rows were new. Called by the shadow worker, never on the request path.
        """
        if not recs:
            return 0
        values = [shadow_values(r) for r in recs]
        with self._lock, self._writes.transaction(self._conn, self._busy_timeout_ms):
            before = self._conn.total_changes
            self._conn.executemany(
                f"INSERT OR IGNORE INTO shadow ({', '.join(SHADOW_COLUMNS)}) "
                "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                values,
            )
            return int(self._conn.total_changes - before)

    def prune(
        self, now: datetime, days: float = DEFAULT_RETENTION_DAYS, *, vacuum: bool = False
    ) -> PruneCounts:
        """Delete the decisions logged more than ``days`` before ``now``, with their outcomes, labels and
        shadow rows; returns how many rows of each table went.

        A decision and what followed it leave together, whenever the follow-up arrived, so no label or
        outcome outlives the attempt it is about. They go oldest first, :data:`PRUNE_BATCH` decisions
        per write transaction, so a service writing to the log meanwhile waits for one batch at most,
        not for the whole prune. ``scores`` is append-only for every other writer: its delete trigger is
        dropped and re-created inside each pruning transaction, so no other connection ever sees the
        log without it. A request id pruned here is new again to :meth:`lookup`. Freed
        pages are reused by later writes, so the file stops growing at its retention size;
        ``vacuum=True`` also gives them back to the file system (a full rewrite: run it off-peak).
        """
        if days <= 0:
            raise ValueError(f"days must be > 0, got {days}")
        cutoff = (now.astimezone(UTC) - timedelta(days=days)).isoformat()
        with self._lock:
            # The index makes the cut a range scan; built by the first prune, not by every open.
            self._conn.execute("CREATE INDEX IF NOT EXISTS scores_ts ON scores (ts)")
        total = PruneCounts(outcomes=0, feedback=0, shadow=0, scores=0)
        while True:
            with self._lock:
                batch = self._prune_batch(cutoff, PRUNE_BATCH)
                # Copy the batch's pages back between batches without holding writers back, so that the
                # log does not carry the whole prune.
                self._conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
            total = PruneCounts(**{k: getattr(total, k) + getattr(batch, k) for k in vars(total)})
            if batch.scores < PRUNE_BATCH and batch.shadow < PRUNE_BATCH:
                break
        with self._lock:
            if vacuum:
                self._conn.execute("VACUUM")
            rewind_log(self._conn, self._busy_timeout_ms)
        return total

    def _prune_batch(self, cutoff: str, limit: int) -> PruneCounts:
        """Delete the ``limit`` oldest decisions before ``cutoff`` with what followed them, and at most
        ``limit`` shadow rows, in one write transaction."""
        with self._writes.transaction(self._conn, self._busy_timeout_ms):
            ids = [row[0] for row in self._conn.execute(
                "SELECT request_id FROM scores WHERE ts < ? ORDER BY ts LIMIT ?", (cutoff, limit)
            )]
            among = f"request_id IN ({', '.join('?' * len(ids))})"
            outcomes = feedback = scores = 0
            if ids:
                outcomes = self._conn.execute(f"DELETE FROM outcomes WHERE {among}", ids).rowcount
                feedback = self._conn.execute(f"DELETE FROM feedback WHERE {among}", ids).rowcount
                self._conn.execute("DROP TRIGGER IF EXISTS scores_no_delete")
                scores = self._conn.execute(f"DELETE FROM scores WHERE {among}", ids).rowcount
                self._conn.execute(_NO_DELETE_TRIGGER)
            shadow = self._conn.execute(
                "DELETE FROM shadow WHERE rowid IN (SELECT rowid FROM shadow WHERE ts < ? LIMIT ?)",
                (cutoff, limit),
            ).rowcount
        return PruneCounts(outcomes=outcomes, feedback=feedback, shadow=shadow, scores=scores)

    def count(self, table: str) -> int:
        """Rows in one of the service's tables (scores, outcomes, feedback, shadow)."""
        if table not in ("scores", "outcomes", "feedback", "shadow"):
            raise ValueError(f"table: expected scores, outcomes, feedback or shadow, got {table!r}")
        with self._lock:
            return int(self._conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0])


def _top_signal_names(signals_json: str, top: int = 3) -> list[str]:
    # Imported here: scoring.signals pulls numpy, pandas and the schemas, which the service's writes
    # and `promoguard maintenance` never need.
    from scoring.signals import top_signal_names

    signals = json.loads(signals_json)
    names = [str(s["name"]) for s in signals]
    return top_signal_names(names, [float(s.get("points", 0)) for s in signals], top)


def scoring_frame(path: str | Path, since: datetime | None = None) -> Any:
    """The scoring log as a drift/retraining frame: one row per attempt, features as columns.

    Columns: ts, request_id, promo_code, promo_type, campaign (= promo_code), score, band, decision,
    fallback, model_version, top_signals (the three largest positive signals, pseudo-signals excluded),
    label (1/0 from /feedback, NaN when none arrived), label_ts, and every logged feature. Hashed keys
    stay behind. ``path``: the SQLite file, or the state database's ``postgresql://`` URL.
    """
    import pandas as pd

    conn = _read_only(path)
    try:
        query = (
            "SELECT request_id, ts, promo_code, promo_type, score, band, decision, fallback, model_version, "
            "signals_json, features_json FROM scores"
        )
        params: tuple[Any, ...] = ()
        if since is not None:
            query += " WHERE ts >= ?"
            params = (since.astimezone(UTC).isoformat(),)
        scores = conn.frame(query, params)
        feedback = conn.frame(f"SELECT request_id, label, label_ts FROM feedback ORDER BY {conn.order}")
    finally:
        conn.close()
    features = pd.DataFrame([json.loads(f) for f in scores["features_json"]], index=scores.index)
    frame = scores.drop(columns=["features_json", "signals_json"]).assign(
        ts=pd.to_datetime(scores["ts"], utc=True, format="ISO8601"),
        campaign=scores["promo_code"],
    )
    names = [_top_signal_names(s) for s in scores["signals_json"]]
    frame["top_signals"] = pd.Series(names, index=frame.index, dtype=object)
    frame = pd.concat([frame, features.astype("float64")], axis=1)
    if len(feedback):
        latest = feedback.drop_duplicates("request_id", keep="last")
        latest = latest.assign(
            label=(latest["label"] == "abuse").astype("float64"),
            label_ts=pd.to_datetime(latest["label_ts"], utc=True, format="ISO8601"),
        )
        frame = frame.merge(latest, on="request_id", how="left")
    else:
        frame["label"] = float("nan")
    return frame


#: Columns of :func:`shadow_frame` besides the shadow table's own.
_TRUTH_COLUMNS = ("label", "label_ts", "outcome")


class _LogReader:
    """Read-only queries over a scoring log, written once (``?`` placeholders) for both places it lives:
    a SQLite file, or the state database named by a ``postgresql://`` URL (:mod:`scoring.records_pg`)."""

    def __init__(self, where: str | Path) -> None:
        from scoring.records_pg import is_state_url, read_only_connection

        self.postgres = is_state_url(where)
        self._conn: Any = (
            read_only_connection(str(where)) if self.postgres
            else sqlite3.connect(f"file:{Path(where)}?mode=ro", uri=True)
        )
        # PostgreSQL has no rowid: there, outcomes and feedback keep their arrival order in ``seq``.
        self.order = "seq" if self.postgres else "rowid"

    def rows(self, query: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Every row of ``query``."""
        cur = self._conn.cursor()
        try:
            cur.execute(query.replace("?", "%s") if self.postgres else query, tuple(params))
            return [tuple(row) for row in cur.fetchall()]
        finally:
            cur.close()

    def frame(self, query: str, params: Sequence[Any] = ()) -> Any:
        """``query`` as a DataFrame (pandas reads SQLite itself; other connections go through a cursor)."""
        import pandas as pd

        if not self.postgres:
            return pd.read_sql_query(query, self._conn, params=tuple(params))
        with self._conn.cursor() as cur:
            cur.execute(query.replace("?", "%s"), tuple(params))
            names = [d[0] for d in cur.description]
            return pd.DataFrame.from_records(cur.fetchall(), columns=names, coerce_float=True)

    def tables(self) -> set[str]:
        """Names of the log's tables."""
        query = (
            "SELECT relname FROM pg_class WHERE relkind IN ('r', 'p') AND pg_table_is_visible(oid)"
            if self.postgres else "SELECT name FROM sqlite_master WHERE type = 'table'"
        )
        return {str(r[0]) for r in self.rows(query)}

    def columns(self, table: str) -> set[str]:
        """Column names of ``table`` (empty when it does not exist)."""
        if self.postgres:
            query = ("SELECT attname FROM pg_attribute WHERE attrelid = to_regclass(?) AND attnum > 0 "
                     "AND NOT attisdropped")
            return {str(r[0]) for r in self.rows(query, (table,))}
        return {str(r[1]) for r in self.rows(f"PRAGMA table_info({table})")}

    def close(self) -> None:
        """Close the connection."""
        self._conn.close()


def _latest(conn: _LogReader, table: str, column: str, ts: str) -> dict[str, tuple[str, str]]:
    """``request_id -> (value, ts)`` of the last row per request (insertion order) of feedback or outcomes."""
    rows = conn.rows(f"SELECT request_id, {column}, {ts} FROM {table} ORDER BY {conn.order}")
    return {str(r): (str(v), str(t)) for r, v, t in rows}


def _with_truth(conn: _LogReader, frame: Any) -> Any:
    """``frame`` with the latest label (abuse / legit / None), its time and the latest outcome per request."""
    tables = conn.tables()
    labels = _latest(conn, "feedback", "label", "label_ts") if "feedback" in tables else {}
    outcomes = _latest(conn, "outcomes", "outcome", "ts") if "outcomes" in tables else {}
    ids = frame["request_id"].astype(str)
    frame["label"] = ids.map(lambda i: labels[i][0] if i in labels else None).astype(object)
    frame["label_ts"] = ids.map(lambda i: labels[i][1] if i in labels else None).astype(object)
    frame["outcome"] = ids.map(lambda i: outcomes[i][0] if i in outcomes else None).astype(object)
    return frame


def _read_only(path: str | Path) -> _LogReader:
    return _LogReader(path)


def shadow_frame(path: str | Path, since: datetime | None = None) -> Any:
    """The shadow table as a frame, one row per shadowed request, with ``campaign`` and its truth so far.

    Columns: every column of the ``shadow`` table, ``campaign`` (= promo_code, as :func:`scoring_frame`),
    ``label`` (abuse / legit / None: the last label received), ``label_ts`` and ``outcome`` (the last
    outcome received, None when none). Empty (same columns) for a log without a shadow table. ``path``
    as :func:`scoring_frame`'s.
    """
    import pandas as pd

    conn = _read_only(path)
    try:
        if "shadow" not in conn.tables():
            return pd.DataFrame(columns=[*SHADOW_COLUMNS, "campaign", *_TRUTH_COLUMNS])
        query = "SELECT * FROM shadow"
        params: tuple[str, ...] = ()
        if since is not None:
            query, params = query + " WHERE ts >= ?", (since.astimezone(UTC).isoformat(),)
        frame = conn.frame(query + " ORDER BY ts", params)
        frame["campaign"] = frame["promo_code"]
        return _with_truth(conn, frame)
    finally:
        conn.close()


def exploration_frame(path: str | Path, since: datetime | None = None) -> Any:
    """The scoring log's explored attempts (``explored = 1``) with ``campaign``, label and outcome so far.

    Columns: request_id, ts, promo_code, promo_type, score, decision (what checkout got), would_be_decision,
    model_version, campaign, label, label_ts, outcome. Empty for a log written before exploration existed.
    ``path`` as :func:`scoring_frame`'s.
    """
    import pandas as pd

    columns = ["request_id", "ts", "promo_code", "promo_type", "score", "decision", "would_be_decision",
               "model_version"]
    conn = _read_only(path)
    try:
        if "explored" not in conn.columns("scores"):
            return pd.DataFrame(columns=[*columns, "campaign", *_TRUTH_COLUMNS])
        query = f"SELECT {', '.join(columns)} FROM scores WHERE explored = 1"
        params: tuple[str, ...] = ()
        if since is not None:
            query, params = query + " AND ts >= ?", (since.astimezone(UTC).isoformat(),)
        frame = conn.frame(query + " ORDER BY ts", params)
        frame["campaign"] = frame["promo_code"]
        return _with_truth(conn, frame)
    finally:
        conn.close()


#: Columns of :func:`decisions_frame`, in order.
DECISION_EXPORT_COLUMNS: tuple[str, ...] = (
    "request_id", "ts", "campaign", "promo_type", "decision", "would_be_decision", "why_not",
    "deciding_reason", "score", "band", "discount_value", "model_version", "rules_version", "degraded",
    "outcome", "label",
)


def _deciding_reason(signals_json: str) -> str | None:
    signals = json.loads(signals_json)
    return str(signals[0]["code"]) if signals else None


def decisions_frame(
    where: str | Path, since: datetime | None = None, until: datetime | None = None,
    campaign: str | None = None,
) -> Any:
    """The decisions of a window, one row per attempt, for finance and incident reports.

    Columns (:data:`DECISION_EXPORT_COLUMNS`): what checkout got (``decision``) and, when exploration or
    a monitor-only campaign let the attempt through, what the policy decided (``would_be_decision``,
    ``why_not``: explored or monitor_only); the first signal's reason code; score and band; the discount
    at stake (``discount_value``, logged since decision records carry it; empty before); the versions,
    the latest outcome and label. No identity key, hashed or not. ``campaign`` is compared
    case-insensitively. ``where`` as :func:`scoring_frame`'s.
    """
    import pandas as pd

    query = ("SELECT request_id, ts, promo_code, promo_type, decision, score, band, model_version, "
             "rules_version, degraded, signals_json, context_json FROM scores WHERE 1 = 1")
    params: list[Any] = []
    if since is not None:
        query += " AND ts >= ?"
        params.append(since.astimezone(UTC).isoformat())
    if until is not None:
        query += " AND ts < ?"
        params.append(until.astimezone(UTC).isoformat())
    if campaign is not None:
        query += " AND LOWER(promo_code) = ?"
        params.append(campaign.strip().lower())
    conn = _read_only(where)
    try:
        frame = conn.frame(query + " ORDER BY ts", params)
        contexts = [json.loads(c) if c else {} for c in frame["context_json"]]
        explored = [c.get("explored_from") for c in contexts]
        monitored = [c.get("monitored_from") for c in contexts]
        frame["would_be_decision"] = [e or m for e, m in zip(explored, monitored, strict=True)]
        frame["why_not"] = ["explored" if e else "monitor_only" if m else None
                            for e, m in zip(explored, monitored, strict=True)]
        frame["discount_value"] = pd.to_numeric(
            pd.Series([c.get("discount_value") for c in contexts], index=frame.index, dtype=object),
            errors="coerce")
        frame["deciding_reason"] = [_deciding_reason(s) for s in frame["signals_json"]]
        frame["campaign"] = frame["promo_code"]
        frame["degraded"] = frame["degraded"].astype(bool)
        frame = _with_truth(conn, frame)
    finally:
        conn.close()
    return frame[list(DECISION_EXPORT_COLUMNS)]

