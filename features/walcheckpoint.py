"""WAL checkpoints of a SQLite file in a background thread instead of inside a request's commit.

In WAL mode SQLite copies the log back into the database ("checkpoints") from whichever commit pushes
the log past 1000 pages, and that commit then pays for the copy and an fsync: a few milliseconds every
few dozen requests on the serving path, which is what its p99 is made of. A :class:`Checkpointer`
turns automatic checkpoints off for the connections of one file (:func:`disable_autocheckpoint`) and
runs a ``PASSIVE`` checkpoint every ``interval_s`` on a connection of its own. A passive checkpoint
never waits for readers or writers, so it cannot stall a request; what it cannot copy yet it copies on
a later round. The WAL file therefore stays small without any request paying for it.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import threading
from pathlib import Path

logger = logging.getLogger(__name__)

#: Seconds between two background checkpoints.
DEFAULT_INTERVAL_S = 0.5


def disable_autocheckpoint(conn: sqlite3.Connection) -> None:
    """Stop ``conn``'s commits from checkpointing (a :class:`Checkpointer` does it instead)."""
    conn.execute("PRAGMA wal_autocheckpoint = 0")


class Checkpointer:
    """A daemon thread checkpointing one WAL database every ``interval_s`` seconds until closed."""

    def __init__(self, path: str | Path, interval_s: float = DEFAULT_INTERVAL_S) -> None:
        """Start checkpointing ``path`` (which must exist and be in WAL mode)."""
        if interval_s <= 0:
            raise ValueError(f"interval_s must be > 0, got {interval_s}")
        self.path = str(path)
        self.interval_s = float(interval_s)
        self.rounds = 0
        self._stop = threading.Event()
        name = f"wal-checkpoint:{Path(path).name}"
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        conn: sqlite3.Connection | None = None
        while not self._stop.wait(self.interval_s):
            try:
                if conn is None:
                    conn = sqlite3.connect(self.path, timeout=0, isolation_level=None)
                conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
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

    def close(self) -> None:
        """Stop the thread after one last checkpoint."""
        self._stop.set()
        self._thread.join(timeout=5)
