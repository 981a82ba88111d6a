"""Background WAL checkpoints: writes reach the database file without any commit checkpointing."""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path

import pytest

from features.velocity import SqliteVelocity
from sqlitekit.walcheckpoint import (
    Checkpointer,
    ThreadConnections,
    disable_autocheckpoint,
    open_wal,
    rewind_log,
)


def _rows_in_database_file(path: Path) -> int:
    """Rows the database file itself holds; -1 when a checkpoint was writing it as it was read."""
    # immutable=1 reads the database file alone, ignoring the WAL: only checkpointed rows show. It also
    # takes no lock, so a checkpoint copying pages at that moment can show a torn file: not yet.
    conn = sqlite3.connect(f"{path.as_uri()}?immutable=1", uri=True)
    try:
        return int(conn.execute("SELECT count(*) FROM t").fetchone()[0])
    except sqlite3.DatabaseError as exc:
        if "malformed" not in str(exc):
            raise
        return -1
    finally:
        conn.close()


def _writer(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None)
    # The table is created before WAL mode so that the database file has it from the start.
    conn.execute("CREATE TABLE IF NOT EXISTS t (x INTEGER)")
    conn.execute("PRAGMA journal_mode = WAL")
    disable_autocheckpoint(conn)
    return conn


def _wait_for(condition, timeout_s: float = 10.0) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return False


def test_without_a_checkpointer_commits_stay_in_the_log(tmp_path: Path) -> None:
    path = tmp_path / "plain.db"
    conn = _writer(path)
    conn.executemany("INSERT INTO t VALUES (?)", [(i,) for i in range(2000)])
    assert _rows_in_database_file(path) == 0
    conn.close()


def test_rewind_log_skips_a_log_a_reader_is_on_without_waiting_and_rewinds_it_after(tmp_path: Path) -> None:
    path = tmp_path / "rewind.db"
    conn = _writer(path)
    conn.execute("PRAGMA busy_timeout = 2000")
    conn.executemany("INSERT INTO t VALUES (?)", [(i,) for i in range(2000)])
    reader = sqlite3.connect(path, isolation_level=None)
    reader.execute("BEGIN")
    assert reader.execute("SELECT count(*) FROM t").fetchone()[0] == 2000  # holds its snapshot
    statements: list[str] = []
    conn.set_trace_callback(statements.append)
    assert not rewind_log(conn, 2000)
    # The checkpoint ran with no busy handler (it holds writers back while it waits), then the
    # connection's own timeout came back.
    assert statements == [
        "PRAGMA busy_timeout = 0", "PRAGMA wal_checkpoint(TRUNCATE)", "PRAGMA busy_timeout = 2000",
    ]
    conn.set_trace_callback(None)
    reader.execute("COMMIT")
    reader.close()
    assert rewind_log(conn, 2000)
    assert (tmp_path / "rewind.db-wal").stat().st_size == 0
    assert _rows_in_database_file(path) == 2000
    conn.close()


def test_opening_a_new_file_another_process_is_writing_waits_for_it(tmp_path: Path) -> None:
    """Two workers open a new state file at once: the one that finds the other's write lock waits."""
    path = tmp_path / "new.db"
    # Committed from a timer's thread below.
    sibling = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    sibling.execute("CREATE TABLE t (x INTEGER)")
    # The sibling holds the write lock of a file not yet in WAL mode: SQLite refuses the journal-mode
    # change at once here, without its busy handler.
    sibling.execute("BEGIN IMMEDIATE")
    sibling.execute("INSERT INTO t VALUES (1)")
    done = threading.Timer(0.2, lambda: sibling.execute("COMMIT"))
    done.start()
    conn = open_wal(str(path), 10_000, background_checkpoints=True)
    done.join()
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("SELECT count(*) FROM t").fetchone()[0] == 1
    conn.close()
    sibling.close()


def test_opening_a_file_held_past_the_busy_timeout_fails_with_the_lock_error(tmp_path: Path) -> None:
    path = tmp_path / "held.db"
    sibling = sqlite3.connect(path, isolation_level=None)
    sibling.execute("CREATE TABLE t (x INTEGER)")
    sibling.execute("BEGIN IMMEDIATE")
    with pytest.raises(sqlite3.OperationalError, match="locked"):
        open_wal(str(path), 0, background_checkpoints=True)
    sibling.execute("ROLLBACK")
    sibling.close()


def test_checkpointer_copies_committed_writes_into_the_database_file(tmp_path: Path) -> None:
    path = tmp_path / "ckpt.db"
    conn = _writer(path)
    checkpointer = Checkpointer(path, interval_s=0.05)
    try:
        conn.executemany("INSERT INTO t VALUES (?)", [(i,) for i in range(2000)])
        assert _wait_for(lambda: _rows_in_database_file(path) == 2000)
        assert checkpointer.rounds > 0
    finally:
        checkpointer.close()
        conn.close()


def test_checkpointer_rejects_a_non_positive_interval(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="interval_s"):
        Checkpointer(tmp_path / "x.db", interval_s=0)


def test_velocity_store_with_background_checkpoints_keeps_its_counts(tmp_path: Path) -> None:
    store = SqliteVelocity(tmp_path / "v.db", checkpoint_interval_s=0.05)
    try:
        for i in range(200):
            store.record(f"r{i}", 1000.0 + i, [("code:X|attempts", f"r{i}"), ("code:X|devices", f"d{i % 7}")])
        assert store.read([("code:X|attempts", 0.0), ("code:X|devices", 0.0)]) == [200, 7]
    finally:
        store.close()
    reopened = SqliteVelocity(tmp_path / "v.db")
    assert reopened.read([("code:X|attempts", 1100.0)]) == [100]
    reopened.close()


def test_checkpointer_rewinds_a_log_that_readers_and_writers_keep_busy(tmp_path: Path) -> None:
    path = tmp_path / "busy.db"
    writer = _writer(path)
    stop = threading.Event()

    def keep_reading() -> None:
        reader = sqlite3.connect(path, isolation_level=None)
        while not stop.is_set():
            reader.execute("SELECT count(*) FROM t").fetchone()
        reader.close()

    readers = [threading.Thread(target=keep_reading) for _ in range(2)]
    for thread in readers:
        thread.start()
    checkpointer = Checkpointer(path, interval_s=0.02, restart_frames=50, restart_wait_s=0.05)
    try:
        deadline = time.monotonic() + 20
        commits = 0
        while checkpointer.restarts == 0 and time.monotonic() < deadline:
            writer.execute("INSERT INTO t VALUES (?)", (commits,))
            commits += 1
        assert checkpointer.restarts > 0
        # A rewound log is written again from its start. Never rewound, it would hold at least one
        # 4 KiB frame per commit; how much smaller it stays depends on how often the thread gets the
        # CPU, so only the bound that holds whatever the scheduling is asserted.
        for i in range(2000):
            writer.execute("INSERT INTO t VALUES (?)", (i,))
        commits += 2000
        assert (tmp_path / "busy.db-wal").stat().st_size < commits * 4096
    finally:
        stop.set()
        for thread in readers:
            thread.join()
        checkpointer.close()
        writer.close()


@pytest.mark.parametrize(("name", "kwargs"), [("restart_frames", {"restart_frames": -1}),
                                              ("restart_wait_s", {"restart_wait_s": -0.1})])
def test_checkpointer_rejects_negative_restart_settings(tmp_path: Path, name: str, kwargs: dict) -> None:
    with pytest.raises(ValueError, match=name):
        Checkpointer(tmp_path / "x.db", **kwargs)


def test_thread_connections_close_the_connections_of_retired_threads(tmp_path: Path) -> None:
    opened: list[sqlite3.Connection] = []

    def opener() -> sqlite3.Connection:
        conn = open_wal(str(tmp_path / "t.db"), 50, background_checkpoints=True)
        opened.append(conn)
        return conn

    conns = ThreadConnections(opener)
    mine = conns.get()
    assert conns.get() is mine  # one per thread, opened once
    worker = threading.Thread(target=conns.get)
    worker.start()
    worker.join()
    assert len(opened) == 2
    # A new thread arriving after the worker retired closes the worker's connection.
    late = threading.Thread(target=conns.get)
    late.start()
    late.join()
    with pytest.raises(sqlite3.ProgrammingError):
        opened[1].execute("SELECT 1")
    assert mine.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    conns.close()
    with pytest.raises(sqlite3.ProgrammingError):
        mine.execute("SELECT 1")
