"""Real-time velocity counters and redemption caps, fresh to the second.

Every scored promo attempt and every honored redemption updates state that the very next request
reads. Two primitives cover it:

* **Windowed sets.** A counter is a set of members, each kept with the latest time it was seen.
  ``cardinality(counter, since_ts)`` counts members seen at or after ``since_ts``. Attempt counts are
  windowed sets of request ids; distinct counts are windowed sets of identity keys. Which counters
  exist is decided by the feature catalog; this module only stores and counts them.
* **Caps.** A capped promotion (single use, or a per-customer limit) reserves one use per hard
  identity at scoring time, atomically with the check, and the reservation is later confirmed (the
  redemption happened) or released (abandoned). Unconfirmed reservations expire by themselves.

Two backends implement :class:`VelocityStore`: :class:`SqliteVelocity` (WAL mode, one connection per
thread, ``BEGIN IMMEDIATE`` so check-and-reserve is atomic across threads and processes) for a single
host, and :class:`RedisVelocity` (sorted sets and Lua scripts, one atomic round trip per call) for
replicas. Every backend failure surfaces as :class:`VelocityUnavailable`, which serving turns into the
rules fallback. Counter names, members and identities are opaque strings built from hashed identity
keys; raw identity never reaches this module.
"""

from __future__ import annotations

import fnmatch
import functools
import math
import os
import sqlite3
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from sqlitekit.sqlitewrite import WriteLock, insert_rows, transaction
from sqlitekit.walcheckpoint import Checkpointer, ThreadConnections, open_scratch, open_wal, rewind_log

DEFAULT_RETENTION_S = 31 * 86_400
DEFAULT_PREFIX = "pg:"
#: The identity list of a single-use code: one global use, whoever redeems it.
GLOBAL_IDENTITY = "*"

ReservationStatus = Literal["reserved", "exhausted"]

# A confirmed use never expires; holds expire at their own time. Storing both as one "expires at"
# number makes "held + confirmed" a single range count in both backends.
_CONFIRMED = math.inf


class VelocityUnavailable(RuntimeError):
    """The velocity backend did not answer in time or failed; callers fall back to rules."""


@dataclass(frozen=True)
class Reservation:
    """The answer to one :meth:`VelocityStore.reserve` call.

    ``blocked_by`` names the identity that was at its limit (``None`` when reserved); ``matched`` lists
    every identity that was at its limit, also when too few of them to block (then the use was still
    reserved); ``duplicate`` is true when the same ``request_id`` had already been answered and this is
    that stored answer.
    """

    request_id: str
    status: ReservationStatus
    blocked_by: str | None = None
    expires_at: float | None = None
    duplicate: bool = False
    matched: tuple[str, ...] = ()

    @property
    def reserved(self) -> bool:
        """True when the use was reserved for this request."""
        return self.status == "reserved"

    @property
    def blocked_kind(self) -> str | None:
        """The kind of identity that hit the limit (e.g. ``device``), ``*`` for a single-use code."""
        return None if self.blocked_by is None else identity_kind(self.blocked_by)


@dataclass(frozen=True)
class VelocityPruneCounts:
    """What :meth:`SqliteVelocity.prune` / :meth:`RedisVelocity.prune` removed.

    ``members``: counter members older than their counter's horizon; ``requests``: idempotency markers
    of recorded requests past retention; ``holds``: cap holds past their expiry (never a confirmed
    use); ``reservations``: reservation records, other than confirmed ones, created before retention.
    """

    members: int = 0
    requests: int = 0
    holds: int = 0
    reservations: int = 0


def _horizon(counter: str, windows: Sequence[tuple[str, float]], default_s: float) -> float:
    """Seconds a counter's members are kept: the first matching ``(glob, seconds)``, else ``default_s``."""
    for pattern, seconds in windows:
        if fnmatch.fnmatchcase(counter, pattern):
            return seconds
    return default_s


def _check_windows(windows: Sequence[tuple[str, float]]) -> list[tuple[str, float]]:
    checked = []
    for i, pair in enumerate(windows):
        if not isinstance(pair, tuple | list) or len(pair) != 2:
            raise ValueError(f"windows[{i}] must be a (glob pattern, seconds) pair")
        pattern = _check_text(f"windows[{i}].pattern", pair[0])
        seconds = _check_ts(f"windows[{i}].seconds", pair[1])
        if seconds <= 0:
            raise ValueError(f"windows[{i}].seconds must be > 0, got {seconds}")
        checked.append((pattern, seconds))
    return checked


class VelocityStore(Protocol):
    """Windowed distinct counters and redemption caps; the interface serving codes against."""

    def add(self, counter: str, member: str, ts: float) -> None:
        """Keep ``member`` in ``counter`` with the latest of its timestamps."""
        ...

    def cardinality(self, counter: str, since_ts: float) -> int:
        """Number of distinct members of ``counter`` last seen at or after ``since_ts``."""
        ...

    def record(self, request_id: str, ts: float, updates: Sequence[tuple[str, str]]) -> bool:
        """Apply all ``(counter, member)`` adds at ``ts`` atomically, once per ``request_id``."""
        ...

    def read(self, queries: Sequence[tuple[str, float]]) -> list[int]:
        """Answer many ``(counter, since_ts)`` cardinality queries in one round trip."""
        ...

    def reserve(
        self,
        request_id: str,
        scope: str,
        identities: Sequence[str],
        limit: int,
        ttl_s: float,
        now: float,
        *,
        quorum: int = 1,
        decisive: Sequence[str] = (),
    ) -> Reservation:
        """Reserve one use of ``scope`` for every identity unless enough of them are at ``limit``.

        Blocked when ``quorum`` identities are at their limit, or any ``decisive`` one is.
        """
        ...

    def confirm(self, request_id: str) -> bool:
        """Turn a held reservation into a use; False when there was nothing to confirm."""
        ...

    def release(self, request_id: str, *, confirmed: bool = False) -> bool:
        """Free a held reservation (``confirmed``: a confirmed use too); False when there was none."""
        ...

    def close(self) -> None:
        """Release connections."""
        ...


def identity_kind(identity: str) -> str:
    """The kind part of a ``kind:key`` cap identity (``*`` stays ``*``)."""
    return identity.split(":", 1)[0]


def cap_identities(keys: Mapping[str, str | None], kinds: Iterable[str]) -> list[str]:
    """Cap identities ``kind:key`` for the present ``{kind}_key`` values of ``kinds``.

    ``keys`` holds identity-layer columns (``device_key`` ...); missing kinds are skipped, so a request
    without a device is capped by the hard identities it does carry.
    """
    out: list[str] = []
    for kind in kinds:
        value = keys.get(f"{kind}_key")
        if value:
            out.append(f"{kind}:{value}")
    return out


# --- input checks (shared by both backends) ---------------------------------------------------------


def _check_text(field: str, value: object) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError(f"{field} must be a non-empty string, got {type(value).__name__}")
    return value


def _check_ts(field: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{field} must be a finite number of epoch seconds")
    return float(value)


def _check_written_ts(field: str, value: object) -> float:
    """A time a member is written with: epoch seconds, not before 1970 (the SQLite buckets need >= 0)."""
    ts = _check_ts(field, value)
    if ts < 0:
        raise ValueError(f"{field} must be epoch seconds >= 0, got {ts!r}")
    return ts


def _valid_pairs(pairs: Sequence[Any], second: type) -> bool:
    """True when every item is already a (non-empty str, ``second``) tuple: the common, fast case."""
    return all(
        type(p) is tuple and len(p) == 2 and type(p[0]) is str and p[0] and type(p[1]) is second
        for p in pairs
    )


def _check_updates(updates: Sequence[tuple[str, str]]) -> list[tuple[str, str]]:
    if _valid_pairs(updates, str) and all(member for _, member in updates):
        return list(updates)
    checked = []
    for i, pair in enumerate(updates):
        if not isinstance(pair, tuple | list) or len(pair) != 2:
            raise ValueError(f"updates[{i}] must be a (counter, member) pair")
        checked.append(
            (_check_text(f"updates[{i}].counter", pair[0]), _check_text(f"updates[{i}].member", pair[1]))
        )
    return checked


def _check_queries(queries: Sequence[tuple[str, float]]) -> list[tuple[str, float]]:
    if _valid_pairs(queries, float) and all(math.isfinite(since) for _, since in queries):
        return list(queries)
    checked = []
    for i, pair in enumerate(queries):
        if not isinstance(pair, tuple | list) or len(pair) != 2:
            raise ValueError(f"queries[{i}] must be a (counter, since_ts) pair")
        checked.append(
            (_check_text(f"queries[{i}].counter", pair[0]), _check_ts(f"queries[{i}].since_ts", pair[1]))
        )
    return checked


def _check_quorum(quorum: int, decisive: Sequence[str], idents: Sequence[str]) -> set[str]:
    if isinstance(quorum, bool) or not isinstance(quorum, int) or quorum < 1:
        raise ValueError(f"quorum must be an integer >= 1, got {quorum!r}")
    if isinstance(decisive, str):
        raise ValueError("decisive must be a sequence of identities, not one string")
    unknown = [d for d in decisive if d not in idents]
    if unknown:
        raise ValueError(f"decisive: {unknown[0]!r} is not one of the identities")
    return set(decisive)


def _stored_matched(text: str | None) -> tuple[str, ...]:
    return tuple(v for v in (text or "").split(_SEP) if v)


def _check_reserve(
    request_id: str, scope: str, identities: Sequence[str], limit: int, ttl_s: float, now: float
) -> list[str]:
    _check_text("request_id", request_id)
    _check_text("scope", scope)
    if isinstance(identities, str):
        raise ValueError("identities must be a sequence of strings, not one string")
    idents = [_check_text(f"identities[{i}]", v) for i, v in enumerate(identities)]
    if not idents:
        raise ValueError("identities must not be empty (use ['*'] for a single-use code)")
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise ValueError(f"limit must be an integer >= 1, got {limit!r}")
    if _check_ts("ttl_s", ttl_s) <= 0:
        raise ValueError(f"ttl_s must be > 0, got {ttl_s!r}")
    _check_ts("now", now)
    # Order-preserving de-duplication: the same identity twice must not hold two uses.
    return list(dict.fromkeys(idents))


# --- SQLite -----------------------------------------------------------------------------------------

_SQLITE_SCHEMA = """
CREATE TABLE IF NOT EXISTS vset (
    counter TEXT NOT NULL, member TEXT NOT NULL, ts REAL NOT NULL,
    PRIMARY KEY (counter, member)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS vset_by_time ON vset (counter, ts);
CREATE TABLE IF NOT EXISTS recorded (request_id TEXT PRIMARY KEY, ts REAL NOT NULL) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS recorded_by_time ON recorded (ts);
CREATE TABLE IF NOT EXISTS reservation (
    request_id TEXT PRIMARY KEY, scope TEXT NOT NULL, identities TEXT NOT NULL,
    state TEXT NOT NULL, blocked_by TEXT, expires_at REAL, created_at REAL NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS reservation_by_time ON reservation (created_at);
CREATE TABLE IF NOT EXISTS cap_use (
    scope TEXT NOT NULL, identity TEXT NOT NULL, request_id TEXT NOT NULL, expires_at REAL NOT NULL,
    PRIMARY KEY (scope, identity, request_id)
) WITHOUT ROWID;
"""

#: Width in seconds of the buckets that count a counter's members by the minute of their time.
_BUCKET_S = 60
#: ``PRAGMA user_version`` of a file whose ``vbucket`` counts are kept (at :data:`_BUCKET_S`).
_SCHEMA_VERSION = 2

# vbucket holds, per counter, how many members have their latest time in each minute; triggers keep
# it exact through every insert, move and delete of vset, in the same transaction. Without it a count
# walked every member in the window: a code attempted 20 times a second has 1.7M members in 24 hours,
# 130 ms a read. With it a read sums at most a window of minutes and walks the members of half of one.
_BUCKET_OF = "CAST({}.ts AS INTEGER) / " + str(_BUCKET_S)
_SQLITE_BUCKETS = f"""
CREATE TABLE vbucket (
    counter TEXT NOT NULL, bucket INTEGER NOT NULL, n INTEGER NOT NULL,
    PRIMARY KEY (counter, bucket)
) WITHOUT ROWID;
CREATE TRIGGER vset_counted AFTER INSERT ON vset BEGIN
    INSERT INTO vbucket (counter, bucket, n) VALUES (new.counter, {_BUCKET_OF.format("new")}, 1)
    ON CONFLICT (counter, bucket) DO UPDATE SET n = n + 1;
END;
CREATE TRIGGER vset_uncounted AFTER DELETE ON vset BEGIN
    DELETE FROM vbucket WHERE counter = old.counter AND bucket = {_BUCKET_OF.format("old")} AND n = 1;
    UPDATE vbucket SET n = n - 1 WHERE counter = old.counter AND bucket = {_BUCKET_OF.format("old")};
END;
CREATE TRIGGER vset_moved AFTER UPDATE ON vset
WHEN new.counter IS NOT old.counter OR {_BUCKET_OF.format("new")} != {_BUCKET_OF.format("old")} BEGIN
    DELETE FROM vbucket WHERE counter = old.counter AND bucket = {_BUCKET_OF.format("old")} AND n = 1;
    UPDATE vbucket SET n = n - 1 WHERE counter = old.counter AND bucket = {_BUCKET_OF.format("old")};
    INSERT INTO vbucket (counter, bucket, n) VALUES (new.counter, {_BUCKET_OF.format("new")}, 1)
    ON CONFLICT (counter, bucket) DO UPDATE SET n = n + 1;
END;
INSERT INTO vbucket (counter, bucket, n)
    SELECT counter, {_BUCKET_OF.format("vset")}, count(*) FROM vset GROUP BY 1, 2;
PRAGMA user_version = {_SCHEMA_VERSION};
"""

# Members seen at or after T: the buckets after T's minute plus a walk of T's minute from T to its
# end, or T's minute's bucket on and minus a walk from its start to T, whichever walk is shorter.
_COUNT_SINCE = (
    "((SELECT coalesce(sum(n), 0) FROM vbucket WHERE counter = ? AND bucket >= ?)"
    " + ? * (SELECT count(*) FROM vset WHERE counter = ? AND ts >= ? AND ts < ?))"
)


def _statements(script: str) -> list[str]:
    """The statements of an SQL script, split where :func:`sqlite3.complete_statement` says one ends.

    A trigger's body holds semicolons of its own, so a plain split on ``;`` would cut it.
    """
    statements, pending = [], ""
    for part in script.split(";"):
        pending += part + ";"
        if sqlite3.complete_statement(pending):
            if pending.strip(" \n;"):
                statements.append(pending.strip())
            pending = ""
    return statements


def _count_since_args(counter: str, since_ts: float) -> tuple[str, int, int, str, float, float]:
    """The parameters of :data:`_COUNT_SINCE` for one query; exact, since buckets hold whole seconds."""
    bucket = math.floor(since_ts) // _BUCKET_S
    start = bucket * _BUCKET_S
    if since_ts - start < _BUCKET_S / 2:
        return counter, bucket, -1, counter, start, since_ts
    return counter, bucket + 1, 1, counter, since_ts, start + _BUCKET_S


#: Counters per SQLite statement, well under its limits on result columns and bound parameters.
_CHUNK = 500

# Identities are hashed keys or '*': they never contain a newline, so it is a safe separator.
_SEP = "\n"


class SqliteVelocity:
    """Velocity and caps in one SQLite file in WAL mode; safe across threads and processes.

    Each thread gets its own connection (SQLite connections must not be used concurrently). Writes run
    in ``BEGIN IMMEDIATE`` transactions, which take the write lock up front, so a check followed by a
    reserve cannot interleave with another writer. A short busy timeout keeps a stuck writer from
    stalling a request: the caller gets :class:`VelocityUnavailable` and falls back to rules.

    A count reads per-minute member counts that triggers keep in step with the members, so its cost
    is bounded by the window's minutes rather than the counter's traffic (see :data:`_COUNT_SINCE`).
    """

    def __init__(
        self,
        path: str | Path,
        busy_timeout_ms: int = 50,
        retention_s: float = DEFAULT_RETENTION_S,
        checkpoint_interval_s: float | None = None,
        *,
        scratch: bool = False,
    ) -> None:
        """Open (and create if needed) the store at ``path``.

        With ``checkpoint_interval_s`` WAL checkpoints run in a background thread at that interval
        instead of inside whichever write fills the log (see :mod:`sqlitekit.walcheckpoint`).
        ``scratch=True`` opens a file this process keeps to itself and need not survive a crash (a
        replay's counters): no WAL and no fsync, the same answers for less (a third of the cost on disk).
        """
        if busy_timeout_ms < 0:
            raise ValueError(f"busy_timeout_ms must be >= 0, got {busy_timeout_ms}")
        if retention_s <= 0:
            raise ValueError(f"retention_s must be > 0, got {retention_s}")
        if scratch and checkpoint_interval_s is not None:
            raise ValueError("a scratch store has no WAL to checkpoint: drop checkpoint_interval_s")
        self.path = str(path)
        self.busy_timeout_ms = int(busy_timeout_ms)
        self.retention_s = float(retention_s)
        self._writes = WriteLock(self.busy_timeout_ms / 1000)
        self._pid = os.getpid()
        self._checkpoint_interval_s = checkpoint_interval_s
        background = checkpoint_interval_s is not None
        self._conns = ThreadConnections(
            (lambda: open_scratch(self.path, self.busy_timeout_ms))
            if scratch
            else (lambda: open_wal(self.path, self.busy_timeout_ms, background_checkpoints=background))
        )
        self._checkpointer: Checkpointer | None = None
        with self._tx(immediate=True) as conn:
            # executescript() would commit the open transaction first; run statements one by one.
            for statement in _statements(_SQLITE_SCHEMA):
                conn.execute(statement)
            if conn.execute("PRAGMA user_version").fetchone()[0] < _SCHEMA_VERSION:
                # A file from before the buckets: they are built from its members, in this transaction.
                for statement in _statements(_SQLITE_BUCKETS):
                    conn.execute(statement)
        self._start_checkpointer()

    def _start_checkpointer(self) -> None:
        if self._checkpoint_interval_s is not None:
            self._checkpointer = Checkpointer(self.path, self._checkpoint_interval_s)

    def _conn(self) -> sqlite3.Connection:
        if self._pid != os.getpid():
            # A forked child must not reuse the parent's connections.
            self._conns.reset()
            self._writes = WriteLock(self.busy_timeout_ms / 1000)
            self._pid = os.getpid()
            # Threads do not survive a fork: the child checkpoints for itself.
            self._start_checkpointer()
        try:
            return self._conns.get()
        except sqlite3.Error as exc:
            raise VelocityUnavailable(f"velocity store {self.path!r} cannot be opened: {exc}") from exc

    @contextmanager
    def _tx(self, immediate: bool) -> Iterator[sqlite3.Connection]:
        conn = self._conn()
        # Writers take the file's lock through WriteLock rather than SQLite's busy handler, whose
        # sleeps (up to 100 ms, never woken early) made the serving tail.
        tx = self._writes.transaction(conn, self.busy_timeout_ms) if immediate else transaction(conn)
        try:
            with tx:
                yield conn
        except sqlite3.Error as exc:
            raise VelocityUnavailable(f"velocity store busy or failing: {exc}") from exc

    @staticmethod
    def _add(conn: sqlite3.Connection, pairs: Sequence[tuple[str, str]], ts: float, cutoff: float) -> None:
        rows = [(counter, member, ts) for counter, member in pairs]
        insert_rows(conn, "INSERT INTO vset (counter, member, ts)", rows,
                    "ON CONFLICT (counter, member) DO UPDATE SET ts = max(ts, excluded.ts)")
        # Pruning the touched counters keeps storage bounded without a background job; one statement
        # for all of them, because a request touches ~25 and each statement costs a trip through sqlite3.
        counters = list(dict.fromkeys(counter for counter, _ in pairs))
        for start in range(0, len(counters), _CHUNK):
            chunk = counters[start : start + _CHUNK]
            conn.execute(
                f"DELETE FROM vset WHERE ts < ? AND counter IN ({', '.join('?' * len(chunk))})",
                [cutoff, *chunk],
            )

    def add(self, counter: str, member: str, ts: float) -> None:
        """Keep ``member`` in ``counter`` with the latest of its timestamps."""
        counter, member = _check_text("counter", counter), _check_text("member", member)
        ts = _check_written_ts("ts", ts)
        with self._tx(immediate=True) as conn:
            self._add(conn, [(counter, member)], ts, ts - self.retention_s)

    def cardinality(self, counter: str, since_ts: float) -> int:
        """Number of distinct members of ``counter`` last seen at or after ``since_ts``."""
        return self.read([(counter, since_ts)])[0]

    def record(self, request_id: str, ts: float, updates: Sequence[tuple[str, str]]) -> bool:
        """Apply all adds atomically; False (and no change) when ``request_id`` was already recorded."""
        _check_text("request_id", request_id)
        ts = _check_written_ts("ts", ts)
        pairs = _check_updates(updates)
        cutoff = ts - self.retention_s
        with self._tx(immediate=True) as conn:
            cur = conn.execute(
                "INSERT OR IGNORE INTO recorded (request_id, ts) VALUES (?, ?)", (request_id, ts)
            )
            if cur.rowcount == 0:
                return False
            self._add(conn, pairs, ts, cutoff)
            if _one_in(64):
                conn.execute("DELETE FROM recorded WHERE ts < ?", (cutoff,))
        return True

    def read(self, queries: Sequence[tuple[str, float]]) -> list[int]:
        """Answer many cardinality queries from one consistent snapshot."""
        checked = _check_queries(queries)
        if not checked:
            return []
        # A statement of scalar subqueries per chunk: one trip through the sqlite3 module instead of
        # one per counter (a request asks ~20).
        counts: list[int] = []
        with self._tx(immediate=False) as conn:
            for start in range(0, len(checked), _CHUNK):
                chunk = checked[start : start + _CHUNK]
                sql = "SELECT " + ", ".join([_COUNT_SINCE] * len(chunk))
                args = [v for q in chunk for v in _count_since_args(*q)]
                counts.extend(int(n) for n in conn.execute(sql, args).fetchone())
        return counts

    def reserve(
        self,
        request_id: str,
        scope: str,
        identities: Sequence[str],
        limit: int,
        ttl_s: float,
        now: float,
        *,
        quorum: int = 1,
        decisive: Sequence[str] = (),
    ) -> Reservation:
        """Reserve one use of ``scope`` per identity unless ``quorum`` of them (or a ``decisive`` one) are
        at ``limit``.

        Held (unexpired) plus confirmed uses count toward the limit. Idempotent on ``request_id``: a
        retry gets the stored answer with ``duplicate=True``.
        """
        idents = _check_reserve(request_id, scope, identities, limit, ttl_s, now)
        deciding = _check_quorum(quorum, decisive, idents)
        expires_at = float(now) + float(ttl_s)
        with self._tx(immediate=True) as conn:
            row = conn.execute(
                "SELECT state, blocked_by, expires_at FROM reservation WHERE request_id = ?", (request_id,)
            ).fetchone()
            if row is not None:
                return _stored_answer(request_id, row[0], row[1], row[2])
            matched = []
            for ident in idents:
                conn.execute(
                    "DELETE FROM cap_use WHERE scope = ? AND identity = ? AND expires_at <= ?",
                    (scope, ident, now),
                )
                (used,) = conn.execute(
                    "SELECT count(*) FROM cap_use WHERE scope = ? AND identity = ?", (scope, ident)
                ).fetchone()
                if used >= limit:
                    matched.append(ident)
            blocked = matched[0] if len(matched) >= quorum or deciding & set(matched) else None
            state = "exhausted" if blocked else "held"
            # blocked_by keeps every identity at its limit, so a retry's stored answer names them too.
            conn.execute(
                "INSERT INTO reservation (request_id, scope, identities, state, blocked_by, expires_at, "
                "created_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (request_id, scope, _SEP.join(idents), state, _SEP.join(matched) or None,
                 None if blocked else expires_at, now),
            )
            if blocked is None:
                insert_rows(
                    conn, "INSERT INTO cap_use (scope, identity, request_id, expires_at)",
                    [(scope, ident, request_id, expires_at) for ident in idents],
                )
            if _one_in(64):
                conn.execute(
                    "DELETE FROM reservation WHERE state != 'confirmed' AND created_at < ?",
                    (now - self.retention_s,),
                )
        if blocked:
            return Reservation(request_id, "exhausted", blocked_by=blocked, matched=tuple(matched))
        return Reservation(request_id, "reserved", expires_at=expires_at, matched=tuple(matched))

    @staticmethod
    def _held(
        conn: sqlite3.Connection, request_id: str, *, confirmed: bool = False
    ) -> tuple[str, list[str]] | None:
        """The scope and identities of a reservation still held (``confirmed``: or confirmed)."""
        states = "('held', 'confirmed')" if confirmed else "('held')"
        row = conn.execute(
            f"SELECT scope, identities FROM reservation WHERE request_id = ? AND state IN {states}",
            (request_id,),
        ).fetchone()
        return None if row is None else (row[0], row[1].split(_SEP))

    def confirm(self, request_id: str) -> bool:
        """Turn a held reservation into a permanent use.

        A hold that already expired is still confirmed: the redemption happened and must count.
        """
        _check_text("request_id", request_id)
        with self._tx(immediate=True) as conn:
            held = self._held(conn, request_id)
            if held is None:
                return False
            scope, idents = held
            conn.executemany(
                "INSERT OR REPLACE INTO cap_use (scope, identity, request_id, expires_at) "
                "VALUES (?, ?, ?, ?)",
                [(scope, ident, request_id, _CONFIRMED) for ident in idents],
            )
            conn.execute("UPDATE reservation SET state = 'confirmed' WHERE request_id = ?", (request_id,))
        return True

    def release(self, request_id: str, *, confirmed: bool = False) -> bool:
        """Free a held reservation so another request can use it.

        ``confirmed`` frees a confirmed use too: the order was reversed, so the use never happened.
        """
        _check_text("request_id", request_id)
        with self._tx(immediate=True) as conn:
            held = self._held(conn, request_id, confirmed=confirmed)
            if held is None:
                return False
            scope, idents = held
            conn.executemany(
                "DELETE FROM cap_use WHERE scope = ? AND identity = ? AND request_id = ?",
                [(scope, ident, request_id) for ident in idents],
            )
            conn.execute("UPDATE reservation SET state = 'released' WHERE request_id = ?", (request_id,))
        return True

    def prune(
        self, now: float, *, windows: Sequence[tuple[str, float]] = (), vacuum: bool = False
    ) -> VelocityPruneCounts:
        """Delete what no read can see any more as of ``now`` (epoch seconds); returns the counts.

        Counter members older than their counter's horizon: the first ``(glob pattern, seconds)`` of
        ``windows`` matching the counter's name, else ``retention_s`` (at least the longest window any
        counter is read with). Recorded request ids past ``retention_s``. Cap holds past their expiry
        (a confirm re-inserts its use, so a late confirm still counts). Reservations other than
        confirmed ones created before ``retention_s`` (a confirmed one is a lifetime use and stays).
        Writes prune the counters they touch as they go; this reaches the idle ones. Freed pages are
        reused by later writes; ``vacuum=True`` also returns them to the file system (a full rewrite).
        """
        now = _check_ts("now", now)
        rules = _check_windows(windows)
        cutoff = now - self.retention_s
        members = self._prune_members(now, rules)
        with self._tx(immediate=True) as conn:
            counts = VelocityPruneCounts(
                members=members,
                requests=conn.execute("DELETE FROM recorded WHERE ts < ?", (cutoff,)).rowcount,
                holds=conn.execute("DELETE FROM cap_use WHERE expires_at <= ?", (now,)).rowcount,
                reservations=conn.execute(
                    "DELETE FROM reservation WHERE state != 'confirmed' AND created_at < ?", (cutoff,)
                ).rowcount,
            )
        try:
            conn = self._conn()
            if vacuum:
                conn.execute("VACUUM")
            # Rewind the log the deletes went through; a reader in the way leaves it to the checkpointer.
            rewind_log(conn, self.busy_timeout_ms)
        except sqlite3.Error as exc:
            raise VelocityUnavailable(f"velocity store busy or failing: {exc}") from exc
        return counts

    def _prune_members(self, now: float, rules: Sequence[tuple[str, float]]) -> int:
        """Delete counter members past their horizon; the count deleted.

        No index leads with the time, so finding them walks the whole table (under a second at two
        million members; an index on the time alone would cost every request's write). The walk goes
        in key order, a page of :data:`_CHUNK` stale members per read, and each page is deleted by key
        in a write transaction of its own that checks the time again (a member written meanwhile
        stays). A service writing meanwhile waits for one page at most, never for the walk.
        """
        conn = self._conn()
        if rules:
            horizon = functools.partial(_horizon, windows=rules, default_s=self.retention_s)
            conn.create_function("pg_horizon", 1, horizon, deterministic=True)
            stale, bound = "ts < ? - pg_horizon(counter)", now
        else:
            stale, bound = "ts < ?", now - self.retention_s
        page_sql = (
            f"SELECT counter, member, ts FROM vset WHERE (counter, member) > (?, ?) AND {stale} "
            "ORDER BY counter, member LIMIT ?"
        )
        after: tuple[str, str] = ("", "")
        deleted = 0
        while True:
            with self._tx(immediate=False) as snapshot:
                page = snapshot.execute(page_sql, (*after, bound, _CHUNK)).fetchall()
            if not page:
                return deleted
            with self._tx(immediate=True) as tx:
                deleted += tx.executemany(
                    "DELETE FROM vset WHERE counter = ? AND member = ? AND ts = ?", page
                ).rowcount
            if len(page) < _CHUNK:
                return deleted
            after = (page[-1][0], page[-1][1])

    def close(self) -> None:
        """Stop the checkpointer and close every thread's connection."""
        if self._checkpointer is not None:
            self._checkpointer.close()
            self._checkpointer = None
        self._conns.close()


_counter_lock = threading.Lock()
_counter = 0


def _one_in(n: int) -> bool:
    """True once every ``n`` calls: cheap housekeeping that needs no background thread."""
    global _counter
    with _counter_lock:
        _counter += 1
        return _counter % n == 0


def _stored_answer(
    request_id: str, state: str, blocked_by: str | None, expires_at: float | None
) -> Reservation:
    matched = _stored_matched(blocked_by)
    if state == "exhausted":
        first = matched[0] if matched else blocked_by
        return Reservation(request_id, "exhausted", blocked_by=first, duplicate=True, matched=matched)
    return Reservation(request_id, "reserved", expires_at=expires_at, duplicate=True, matched=matched)


# --- Redis ------------------------------------------------------------------------------------------

# KEYS[1] = request marker, KEYS[2..] = counter keys; ARGV = ts, cutoff, retention_s, members...
_RECORD_LUA = """
if not redis.call('SET', KEYS[1], '1', 'NX', 'EX', ARGV[3]) then return 0 end
for i = 2, #KEYS do
  redis.call('ZADD', KEYS[i], 'GT', ARGV[1], ARGV[i + 2])
  redis.call('ZREMRANGEBYSCORE', KEYS[i], '-inf', '(' .. ARGV[2])
  redis.call('EXPIRE', KEYS[i], ARGV[3])
end
return 1
"""

# KEYS[1] = reservation hash, KEYS[2..] = one sorted set per (scope, identity) whose members are
# request ids scored by expiry ('+inf' once confirmed).
# ARGV = now, limit, expires_at, retention_s, hold_ttl_ms, request_id, scope, identities joined,
# quorum, one '1'/'0' per identity saying whether it is decisive, then the identities in KEYS order
# (KEYS[i] <-> ARGV[i + 9]).
# Returns {state, matched identities joined, expires_at, duplicate}.
_RESERVE_LUA = """
local state = redis.call('HGET', KEYS[1], 'state')
if state then
  local v = redis.call('HMGET', KEYS[1], 'blocked_by', 'expires_at')
  return {state, v[1] or '', v[2] or '', 1}
end
local limit = tonumber(ARGV[2])
local matched = {}
local decisive = false
for i = 2, #KEYS do
  redis.call('ZREMRANGEBYSCORE', KEYS[i], '-inf', ARGV[1])
  if redis.call('ZCARD', KEYS[i]) >= limit then
    table.insert(matched, ARGV[i + 9])
    if string.sub(ARGV[10], i - 1, i - 1) == '1' then decisive = true end
  end
end
local who = table.concat(matched, '\\n')
if decisive or #matched >= tonumber(ARGV[9]) then
  redis.call('HSET', KEYS[1], 'state', 'exhausted', 'blocked_by', who,
             'scope', ARGV[7], 'identities', ARGV[8])
  redis.call('EXPIRE', KEYS[1], ARGV[4])
  return {'exhausted', who, '', 0}
end
for i = 2, #KEYS do
  redis.call('ZADD', KEYS[i], ARGV[3], ARGV[6])
  if redis.call('ZCOUNT', KEYS[i], '+inf', '+inf') == 0 then
    -- Keys holding only expiring holds expire themselves, so abandoned codes leave nothing behind.
    local ttl = redis.call('PTTL', KEYS[i])
    if ttl < tonumber(ARGV[5]) then redis.call('PEXPIRE', KEYS[i], ARGV[5]) end
  end
end
redis.call('HSET', KEYS[1], 'state', 'held', 'expires_at', ARGV[3], 'scope', ARGV[7], 'identities', ARGV[8],
           'blocked_by', who)
redis.call('EXPIRE', KEYS[1], ARGV[4])
return {'held', who, ARGV[3], 0}
"""

# KEYS[1] = reservation hash, KEYS[2..] = cap sets; ARGV[1] = request id, ARGV[2] = new state,
# ARGV[3] = '1' when a confirmed reservation may be settled too (a reversed order's release).
_SETTLE_LUA = """
local state = redis.call('HGET', KEYS[1], 'state')
if state ~= 'held' and not (state == 'confirmed' and ARGV[3] == '1') then return 0 end
for i = 2, #KEYS do
  if ARGV[2] == 'confirmed' then
    redis.call('ZADD', KEYS[i], '+inf', ARGV[1])
    redis.call('PERSIST', KEYS[i])
  else
    redis.call('ZREM', KEYS[i], ARGV[1])
  end
end
redis.call('HSET', KEYS[1], 'state', ARGV[2])
return 1
"""


def redis_client(url: str, socket_timeout_s: float = 0.05) -> redis.Redis:
    """A Redis client that fails fast instead of hanging on a frozen or unreachable server.

    The library defaults retry with backoff and wait without a socket timeout, which turns one frozen
    server into tens of seconds per request; here every command either answers within
    ``socket_timeout_s`` or raises, and serving falls back to rules.
    """
    if socket_timeout_s <= 0:
        raise ValueError(f"socket_timeout_s must be > 0, got {socket_timeout_s}")
    return redis.Redis.from_url(
        url,
        socket_timeout=socket_timeout_s,
        socket_connect_timeout=socket_timeout_s,
        retry=Retry(NoBackoff(), 0),
        retry_on_error=[],
        health_check_interval=0,
    )


class RedisVelocity:
    """Velocity and caps in Redis: sorted sets for windows, Lua for atomic record and reserve.

    Each public call is one round trip. Keys start with ``prefix`` so several deployments (or tests)
    can share a server and clean up after themselves. Scripts touch only keys passed in ``KEYS``.
    """

    def __init__(
        self,
        client: redis.Redis,
        prefix: str = DEFAULT_PREFIX,
        retention_s: float = DEFAULT_RETENTION_S,
    ) -> None:
        """Wrap ``client`` (build it with :func:`redis_client`) and register the scripts once."""
        if retention_s <= 0:
            raise ValueError(f"retention_s must be > 0, got {retention_s}")
        self.client = client
        self.prefix = prefix
        self.retention_s = float(retention_s)
        self._retention_arg = str(max(1, math.ceil(retention_s)))
        self._record = client.register_script(_RECORD_LUA)
        self._reserve = client.register_script(_RESERVE_LUA)
        self._settle = client.register_script(_SETTLE_LUA)

    def _vkey(self, counter: str) -> str:
        return f"{self.prefix}v:{counter}"

    def _rkey(self, request_id: str) -> str:
        return f"{self.prefix}rq:{request_id}"

    def _reskey(self, request_id: str) -> str:
        return f"{self.prefix}res:{request_id}"

    def _capkey(self, scope: str, identity: str) -> str:
        return f"{self.prefix}cap:{scope}:{identity}"

    def _call(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except redis.RedisError as exc:
            # Includes ConnectionError and TimeoutError: the server is down, frozen or overloaded.
            raise VelocityUnavailable(f"velocity redis failed: {type(exc).__name__}: {exc}") from exc
        except OSError as exc:
            raise VelocityUnavailable(f"velocity redis unreachable: {exc}") from exc

    def add(self, counter: str, member: str, ts: float) -> None:
        """Keep ``member`` in ``counter`` with the latest of its timestamps."""
        counter, member = _check_text("counter", counter), _check_text("member", member)
        ts = _check_written_ts("ts", ts)
        key = self._vkey(counter)
        pipe = self.client.pipeline(transaction=True)
        pipe.zadd(key, {member: ts}, gt=True)
        pipe.zremrangebyscore(key, "-inf", f"({ts - self.retention_s!r}")
        pipe.expire(key, int(self._retention_arg))
        self._call(pipe.execute)

    def cardinality(self, counter: str, since_ts: float) -> int:
        """Number of distinct members of ``counter`` last seen at or after ``since_ts``."""
        return self.read([(counter, since_ts)])[0]

    def record(self, request_id: str, ts: float, updates: Sequence[tuple[str, str]]) -> bool:
        """Apply all adds atomically in one script; False when ``request_id`` was already recorded."""
        _check_text("request_id", request_id)
        ts = _check_written_ts("ts", ts)
        pairs = _check_updates(updates)
        keys = [self._rkey(request_id)] + [self._vkey(c) for c, _ in pairs]
        args = [repr(ts), repr(ts - self.retention_s), self._retention_arg] + [m for _, m in pairs]
        return bool(self._call(self._record, keys=keys, args=args))

    def read(self, queries: Sequence[tuple[str, float]]) -> list[int]:
        """Answer many cardinality queries in one pipelined round trip."""
        checked = _check_queries(queries)
        if not checked:
            return []
        pipe = self.client.pipeline(transaction=False)
        for counter, since in checked:
            pipe.zcount(self._vkey(counter), repr(since), "+inf")
        return [int(n) for n in self._call(pipe.execute)]

    def reserve(
        self,
        request_id: str,
        scope: str,
        identities: Sequence[str],
        limit: int,
        ttl_s: float,
        now: float,
        *,
        quorum: int = 1,
        decisive: Sequence[str] = (),
    ) -> Reservation:
        """Reserve one use of ``scope`` per identity unless ``quorum`` of them (or a ``decisive`` one) are
        at ``limit`` (one script)."""
        idents = _check_reserve(request_id, scope, identities, limit, ttl_s, now)
        deciding = _check_quorum(quorum, decisive, idents)
        expires_at = float(now) + float(ttl_s)
        keys = [self._reskey(request_id)] + [self._capkey(scope, i) for i in idents]
        hold_ttl_ms = str(math.ceil(ttl_s * 1000) + 1000)
        args = [
            repr(now),
            str(limit),
            repr(expires_at),
            self._retention_arg,
            hold_ttl_ms,
            request_id,
            scope,
            _SEP.join(idents),
            str(quorum),
            "".join("1" if i in deciding else "0" for i in idents),
            *idents,
        ]
        raw = self._call(self._reserve, keys=keys, args=args)
        state, who, exp = _text(raw[0]), _text(raw[1]), _text(raw[2])
        duplicate, matched = bool(int(raw[3])), _stored_matched(who)
        if state == "exhausted":
            first = matched[0] if matched else None
            return Reservation(
                request_id, "exhausted", blocked_by=first, duplicate=duplicate, matched=matched
            )
        expires = float(exp) if exp else None
        return Reservation(request_id, "reserved", expires_at=expires, duplicate=duplicate, matched=matched)

    def _settle_state(self, request_id: str, new_state: str, *, confirmed: bool = False) -> bool:
        _check_text("request_id", request_id)
        rkey = self._reskey(request_id)
        scope_idents = self._call(self.client.hmget, rkey, ["scope", "identities"])
        if scope_idents[0] is None:
            return False
        scope, idents = _text(scope_idents[0]), _text(scope_idents[1]).split(_SEP)
        keys = [rkey] + [self._capkey(scope, i) for i in idents]
        args = [request_id, new_state, "1" if confirmed else "0"]
        return bool(self._call(self._settle, keys=keys, args=args))

    def confirm(self, request_id: str) -> bool:
        """Turn a held reservation into a permanent use (also after its hold expired)."""
        return self._settle_state(request_id, "confirmed")

    def release(self, request_id: str, *, confirmed: bool = False) -> bool:
        """Free a held reservation (``confirmed``: a confirmed use too) so another request can use it."""
        return self._settle_state(request_id, "released", confirmed=confirmed)

    def prune(
        self,
        now: float,
        *,
        windows: Sequence[tuple[str, float]] = (),
        vacuum: bool = False,
        batch: int = 1000,
    ) -> VelocityPruneCounts:
        """Trim every counter and cap set of this prefix as of ``now``; returns the counts.

        The same rules as :meth:`SqliteVelocity.prune`. Redis expires idle keys by itself (every key
        carries a TTL of ``retention_s``), and writes trim the keys they touch, so this only reaches
        members of live keys that no write touched since they aged out. Request markers and
        reservation records expire by TTL and are not counted. ``vacuum`` is accepted for symmetry.
        """
        now = _check_ts("now", now)
        rules = _check_windows(windows)
        members = holds = 0
        try:
            for kind in ("v", "cap"):
                strip = len(f"{self.prefix}{kind}:")
                keys: list[bytes] = []
                for key in self.client.scan_iter(match=f"{self.prefix}{kind}:*", count=batch):
                    keys.append(key)
                    if len(keys) >= batch:
                        members, holds = self._trim(kind, keys, strip, now, rules, members, holds)
                        keys = []
                if keys:
                    members, holds = self._trim(kind, keys, strip, now, rules, members, holds)
        except redis.RedisError as exc:
            raise VelocityUnavailable(f"velocity redis failed: {type(exc).__name__}: {exc}") from exc
        except OSError as exc:
            raise VelocityUnavailable(f"velocity redis unreachable: {exc}") from exc
        return VelocityPruneCounts(members=members, holds=holds)

    def _trim(
        self, kind: str, keys: list[bytes], strip: int, now: float, rules: list[tuple[str, float]],
        members: int, holds: int,
    ) -> tuple[int, int]:
        pipe = self.client.pipeline(transaction=False)
        for key in keys:
            if kind == "cap":
                # Holds are scored by expiry; confirmed uses by +inf, which this never reaches.
                pipe.zremrangebyscore(key, "-inf", repr(now))
            else:
                horizon = _horizon(_text(key)[strip:], rules, self.retention_s)
                pipe.zremrangebyscore(key, "-inf", f"({now - horizon!r}")
        removed = [int(n) for n in pipe.execute()]
        if kind == "cap":
            return members, holds + sum(removed)
        return members + sum(removed), holds

    def close(self) -> None:
        """Close the client's connections."""
        self.client.close()


def _text(value: object) -> str:
    if value is None:
        return ""
    return value.decode() if isinstance(value, bytes) else str(value)


def velocity_store(
    backend: Literal["sqlite", "redis"],
    sqlite_path: str | Path,
    redis_url: str,
    redis_timeout_s: float = 0.05,
    prefix: str = DEFAULT_PREFIX,
    retention_s: float = DEFAULT_RETENTION_S,
) -> VelocityStore:
    """Build the configured backend (the edge where settings become a store)."""
    if backend == "sqlite":
        Path(sqlite_path).parent.mkdir(parents=True, exist_ok=True)
        return SqliteVelocity(sqlite_path, retention_s=retention_s)
    if backend == "redis":
        return RedisVelocity(redis_client(redis_url, redis_timeout_s), prefix=prefix, retention_s=retention_s)
    raise ValueError(f"backend must be 'sqlite' or 'redis', got {backend!r}")
