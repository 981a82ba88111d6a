"""Taking a SQLite file's write lock promptly when threads and processes share it.

SQLite lets one writer at a time into a file. A connection that finds the lock taken calls its busy
handler, and the stock one behind ``busy_timeout`` sleeps 1, 2, 5, 10, 15, 20, 25, 25, 25, 50, 50 and
then 100 ms between attempts, without being woken when the lock frees. A serving write holds the lock
for well under a millisecond, so a request that loses one race usually sleeps far longer than it
waits: with two worker processes and eight threads each writing on every request, that is what the
serving p99 was made of (hundreds of milliseconds at 200 requests/s).

:class:`WriteLock` replaces the sleeps with two cheaper waits. Threads of one process queue on a
:class:`threading.Lock`, which hands over the moment it is released. The one thread that holds it then
asks SQLite for the file lock with the busy handler off and polls while another process writes: first
after ``poll_s`` (0.2 ms), each wait then twice the last, up to ``max_poll_s`` (1 ms). A lost race
usually ends within the first polls; the doubling keeps a long wait (a checkpoint's sync, a host
short of CPU) from costing a failed ``BEGIN`` every 0.2 ms, CPU the writer holding the lock needs to
finish. Both waits are bounded by the same timeout, after which the caller gets the
``sqlite3.OperationalError`` ("database is locked") it would have got from SQLite.

:func:`transaction` is the same commit-or-roll-back block for reads, which need no lock.

:func:`insert_rows` keeps a write transaction short where threads share the interpreter: Python's
sqlite3 releases the interpreter lock around every step of a statement, once a row under
``executemany``, and a thread taking it back while another runs Python can wait a whole switch
interval (5 ms). Inside a write transaction that wait holds the file lock for every other writer.
"""

from __future__ import annotations

import functools
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

#: Seconds before the second attempt at a file lock held by another process.
DEFAULT_POLL_S = 0.0002
#: The longest wait between two attempts: the doubling stops there.
DEFAULT_MAX_POLL_S = 0.001
#: Bound variables per statement in :func:`insert_rows`: SQLite's limit before 3.32 (32766 since).
MAX_VARIABLES = 999


def is_busy(exc: sqlite3.OperationalError) -> bool:
    """True when ``exc`` is SQLite saying another connection holds the lock it needs."""
    text = str(exc).lower()
    return "locked" in text or "busy" in text


@contextmanager
def _committed(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    # Commit an open transaction after the block; roll it back when the block or the commit fails, so
    # that the connection is never left mid-transaction (a failed COMMIT, on a full disk say, can).
    try:
        yield conn
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


@contextmanager
def transaction(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """A deferred transaction on ``conn`` (an autocommit connection) around the block: one snapshot."""
    conn.execute("BEGIN")
    with _committed(conn):
        yield conn


class WriteLock:
    """Write transactions on one SQLite file: one thread per process at a time, quick to hand over.

    The connections of one process that write to the file should share an instance: its threads then
    queue fairly; connections with an instance of their own poll each other like other processes.
    """

    def __init__(
        self, timeout_s: float, poll_s: float = DEFAULT_POLL_S, max_poll_s: float = DEFAULT_MAX_POLL_S
    ) -> None:
        """Wait at most ``timeout_s`` for the lock, polling other processes from every ``poll_s`` to
        every ``max_poll_s``."""
        if timeout_s < 0:
            raise ValueError(f"timeout_s must be >= 0, got {timeout_s}")
        if poll_s <= 0:
            raise ValueError(f"poll_s must be > 0, got {poll_s}")
        if max_poll_s < poll_s:
            raise ValueError(f"max_poll_s must be >= poll_s ({poll_s}), got {max_poll_s}")
        self.timeout_s = float(timeout_s)
        self.poll_s = float(poll_s)
        self.max_poll_s = float(max_poll_s)
        self._threads = threading.Lock()

    @contextmanager
    def transaction(self, conn: sqlite3.Connection, busy_timeout_ms: int) -> Iterator[sqlite3.Connection]:
        """A ``BEGIN IMMEDIATE`` transaction on ``conn`` (an autocommit connection) around the block.

        It commits after the block and rolls back when the block or the commit fails. Whatever
        happens, the thread queue is left and ``conn``'s own busy timeout (``busy_timeout_ms``, which
        its reads rely on) is back in place.
        """
        deadline = time.monotonic() + self.timeout_s
        if not self._threads.acquire(timeout=self.timeout_s):
            raise sqlite3.OperationalError("database is locked (by a thread of this process)")
        try:
            conn.execute("PRAGMA busy_timeout = 0")
            wait = self.poll_s
            try:
                while True:
                    try:
                        conn.execute("BEGIN IMMEDIATE")
                        break
                    except sqlite3.OperationalError as exc:
                        remaining = deadline - time.monotonic()
                        if not is_busy(exc) or remaining <= 0:
                            raise
                    # The last sleep is cut to the deadline: the writer waits its whole timeout, no less.
                    time.sleep(min(wait, remaining))
                    wait = min(2 * wait, self.max_poll_s)
            finally:
                conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
            with _committed(conn):
                yield conn
        finally:
            self._threads.release()


def insert_rows(conn: sqlite3.Connection, head: str, rows: Sequence[Sequence[Any]], tail: str = "") -> None:
    """``{head} VALUES (?, ...), (?, ...) {tail}`` for every row of ``rows``, all of one width.

    One statement for up to :data:`MAX_VARIABLES` values, where ``executemany`` would step SQLite once
    a row. With another thread of the process running Python, a velocity record of 12 updates took
    94 ms at the median through ``executemany`` and 37 ms through this; 0.30 ms either way with no
    other thread (``benchmarks/velocity.py``, "contended"). Rows are applied in order, so a later
    row's conflict clause sees an earlier row of the same statement. The statement journal a
    many-row statement keeps belongs in memory (``PRAGMA temp_store = MEMORY``, as
    :func:`sqlitekit.walcheckpoint.open_wal` sets it): in a temporary file it doubled that record.
    """
    if not rows:
        return
    width = len(rows[0])
    per_statement = max(1, MAX_VARIABLES // width)
    for start in range(0, len(rows), per_statement):
        chunk = rows[start : start + per_statement]
        conn.execute(_values_sql(head, tail, width, len(chunk)), [value for row in chunk for value in row])


@functools.lru_cache(maxsize=256)
def _values_sql(head: str, tail: str, width: int, count: int) -> str:
    # Cached: the same few texts come back on every request, and sqlite3's own statement cache is
    # keyed by the text, so it has to be built identically anyway.
    row = "(" + ", ".join("?" * width) + ")"
    return f"{head} VALUES {', '.join([row] * count)}" + (f" {tail}" if tail else "")
