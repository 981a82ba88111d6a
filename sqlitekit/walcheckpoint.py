"""WAL checkpoints of a SQLite file in a background thread instead of inside a request's commit.

In WAL mode SQLite copies the log back into the database ("checkpoints") from whichever commit pushes
the log past 1000 pages, and that commit then pays for the copy and an fsync: a few milliseconds every
few dozen requests on the serving path, which is what its p99 is made of. A :class:`Checkpointer`
turns automatic checkpoints off for the connections of one file (:func:`disable_autocheckpoint`) and
runs a ``PASSIVE`` checkpoint every ``interval_s`` on a connection of its own. A passive checkpoint
never waits for readers or writers, so it cannot stall a request; what it cannot copy yet it copies on
a later round.

Passive rounds alone never let the log start over under steady traffic. Each round copies every frame
it finds, but writers append more while it copies, and SQLite rewinds the WAL file only when a write
begins with every frame copied and no reader on the log. Measured at 200 requests/s, velocity.db's log
grew to 2.5 GB in a minute (about 200 KB per request: each one touches ~45 random pages), and the
cost of reading through that log grew with it. So when a passive round finds more than
``restart_frames`` frames, the thread also runs ``RESTART`` checkpoints, which take the write lock,
copy the few frames the passive round left and rewind the log. Measured under the serving benchmark,
one holds writers back for 5-30 ms (mostly its fsyncs), which is why it runs only past
``restart_frames`` (32768 frames, 128 MiB with 4 KiB pages: every few seconds at 200 requests/s)
rather than on every round (restarting past 4096 frames pushed the serving p90 from 8 to 14-19 ms).
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path

from sqlitekit.sqlitewrite import is_busy

logger = logging.getLogger(__name__)

#: Seconds between two background checkpoints.
DEFAULT_INTERVAL_S = 0.5
#: Frames (pages) a passive round may find in the log before the log is rewound.
DEFAULT_RESTART_FRAMES = 32768
#: How long the restart attempts go on for while readers still use the log.
DEFAULT_RESTART_WAIT_S = 0.01


def open_wal(path: str, busy_timeout_ms: int, *, background_checkpoints: bool) -> sqlite3.Connection:
    """An autocommit connection to ``path`` in WAL mode, as the serving stores open theirs.

    ``synchronous = NORMAL`` is durable across application crashes in WAL mode (only power loss can drop
    the last transactions). ``check_same_thread=False`` only so that a store's close() can close every
    thread's connection; each is otherwise used by the thread that opened it. With
    ``background_checkpoints`` a :class:`Checkpointer` does the checkpoints, not the commits. Raises
    ``sqlite3.Error``.
    """
    conn = _connect(path, busy_timeout_ms, journal="WAL", synchronous="NORMAL")
    if background_checkpoints:
        disable_autocheckpoint(conn)
    return conn


def open_scratch(path: str, busy_timeout_ms: int) -> sqlite3.Connection:
    """An autocommit connection to ``path`` as scratch state: one process's alone, lost with a crash.

    The rollback journal stays in memory and nothing is fsynced, which is what a backtest replay's
    counters and log need: a temporary file that only its own run reads. Measured on the velocity
    store's record-and-read of one attempt: 0.28 ms instead of 0.87 ms in WAL mode on disk, most of the
    difference being the checkpoints' fsyncs; on tmpfs (``/dev/shm``, where the backtest puts its
    files when it exists) 0.32 ms instead of 0.42. Transactions still roll back. Raises
    ``sqlite3.Error``.
    """
    return _connect(path, busy_timeout_ms, journal="MEMORY", synchronous="OFF")


def _connect(path: str, busy_timeout_ms: int, *, journal: str, synchronous: str) -> sqlite3.Connection:
    conn = sqlite3.connect(
        path, timeout=busy_timeout_ms / 1000, isolation_level=None, check_same_thread=False
    )
    try:
        conn.execute(f"PRAGMA busy_timeout = {busy_timeout_ms}")
        _set_journal_mode(conn, journal, busy_timeout_ms)
        conn.execute(f"PRAGMA synchronous = {synchronous}")
        # A statement that writes many rows (sqlitewrite.insert_rows) keeps a statement journal to undo
        # itself; in a temporary file, that doubled a velocity record (0.25 -> 0.49 ms), in memory not.
        conn.execute("PRAGMA temp_store = MEMORY")
    except BaseException:
        conn.close()
        raise
    return conn


def _set_journal_mode(conn: sqlite3.Connection, journal: str, busy_timeout_ms: int) -> None:
    """Set ``journal``, waiting up to ``busy_timeout_ms`` for a file another connection holds.

    SQLite refuses a journal-mode change at once, without calling the busy handler, while another
    connection holds the file's write lock. That is what two worker processes opening a new file at
    the same moment do to each other, each turning it to WAL: the loser's store failed to open, and
    the worker ran its whole life without it. Tried again every 10 ms until the timeout.
    """
    deadline = time.monotonic() + busy_timeout_ms / 1000
    while True:
        try:
            conn.execute(f"PRAGMA journal_mode = {journal}")
            return
        except sqlite3.OperationalError as exc:
            if not is_busy(exc) or time.monotonic() >= deadline:
                raise
        time.sleep(0.01)


def disable_autocheckpoint(conn: sqlite3.Connection) -> None:
    """Stop ``conn``'s commits from checkpointing (a :class:`Checkpointer` does it instead)."""
    conn.execute("PRAGMA wal_autocheckpoint = 0")


def rewind_log(conn: sqlite3.Connection, busy_timeout_ms: int) -> bool:
    """Copy the whole log into the database and truncate it, unless a reader or writer is in the way.

    For maintenance after a large delete. ``TRUNCATE`` holds every new writer back while it waits for
    readers, so it is tried once without a busy handler: a service answering meanwhile never waits
    on it, and its checkpointers rewind the log later instead. ``conn``'s busy timeout
    (``busy_timeout_ms``) is put back. True when the log was rewound.
    """
    conn.execute("PRAGMA busy_timeout = 0")
    try:
        busy, _, _ = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
    except sqlite3.OperationalError:
        busy = 1
    finally:
        conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
    return not busy


class Checkpointer:
    """A daemon thread checkpointing one WAL database every ``interval_s`` seconds until closed."""

    def __init__(
        self,
        path: str | Path,
        interval_s: float = DEFAULT_INTERVAL_S,
        restart_frames: int = DEFAULT_RESTART_FRAMES,
        restart_wait_s: float = DEFAULT_RESTART_WAIT_S,
    ) -> None:
        """Start checkpointing ``path`` (which must exist and be in WAL mode)."""
        if interval_s <= 0:
            raise ValueError(f"interval_s must be > 0, got {interval_s}")
        if restart_frames < 0:
            raise ValueError(f"restart_frames must be >= 0, got {restart_frames}")
        if restart_wait_s < 0:
            raise ValueError(f"restart_wait_s must be >= 0, got {restart_wait_s}")
        self.path = str(path)
        self.interval_s = float(interval_s)
        self.restart_frames = int(restart_frames)
        self.restart_wait_s = float(restart_wait_s)
        self.rounds = 0
        #: Rounds that rewound the log.
        self.restarts = 0
        self._stop = threading.Event()
        name = f"wal-checkpoint:{Path(path).name}"
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        conn: sqlite3.Connection | None = None
        while not self._stop.wait(self.interval_s):
            try:
                if conn is None:
                    # No busy handler: neither mode may sleep while it holds other writers back.
                    conn = sqlite3.connect(self.path, timeout=0, isolation_level=None)
                _, frames, _ = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
                if frames > self.restart_frames:
                    # A second passive pass copies what writers appended during the first, so that the
                    # restart, which holds writers back while it copies, has only a few frames left.
                    conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
                    self._restart(conn)
                self.rounds += 1
            except sqlite3.Error as exc:
                # A busy or failing file is retried next round; the request path never waits on it.
                logger.warning("WAL checkpoint of %s failed: %s", self.path, exc)
                if conn is not None:
                    conn.close()
                conn = None
        if conn is not None:
            # Leave the database whole and the log empty when the process stops cleanly.
            with contextlib.suppress(sqlite3.Error):
                conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
            conn.close()

    def _restart(self, conn: sqlite3.Connection) -> None:
        """Copy the last frames and rewind the log (counted in ``restarts``) unless readers stay on it.

        Each ``RESTART`` attempt takes the write lock, copies what the passive round left and gives up
        at once when a reader still uses the log (no busy handler); the attempts are repeated every
        half millisecond, since such readers finish within a millisecond, for ``restart_wait_s``.
        """
        deadline = time.monotonic() + self.restart_wait_s
        while True:
            busy, _, _ = conn.execute("PRAGMA wal_checkpoint(RESTART)").fetchone()
            if not busy:
                self.restarts += 1
                return
            if time.monotonic() > deadline:
                return
            time.sleep(0.0005)

    def close(self) -> None:
        """Stop the thread after one last checkpoint."""
        self._stop.set()
        self._thread.join(timeout=5)


class ThreadConnections:
    """One connection per thread to one SQLite file (connections must not be shared between threads).

    Server thread pools retire idle threads (anyio after 10 s), and a retired thread's connection would
    stay open until :meth:`close`: those are closed as new threads arrive. After a fork the child opens
    its own (:meth:`reset`).
    """

    def __init__(self, opener: Callable[[], sqlite3.Connection]) -> None:
        """Open connections with ``opener`` (which may raise ``sqlite3.Error``)."""
        self._opener = opener
        self.reset()

    def reset(self) -> None:
        """Forget every connection without closing it (a forked child must not touch its parent's)."""
        self._local = threading.local()
        self._lock = threading.Lock()
        self._all: dict[threading.Thread, sqlite3.Connection] = {}

    def get(self) -> sqlite3.Connection:
        """This thread's connection, opened on first use."""
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._opener()
            self._local.conn = conn
            with self._lock:
                for thread in [t for t in self._all if not t.is_alive()]:
                    self._all.pop(thread).close()
                self._all[threading.current_thread()] = conn
        return conn

    def close(self) -> None:
        """Close every thread's connection."""
        with self._lock:
            conns, self._all = list(self._all.values()), {}
        for conn in conns:
            conn.close()
        self._local = threading.local()
