"""WriteLock: write transactions that wait for the file lock by polling, never by SQLite's sleeps."""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path

import pytest

from sqlitekit import sqlitewrite
from sqlitekit.sqlitewrite import MAX_VARIABLES, WriteLock, insert_rows


def _open(path: Path, busy_timeout_ms: int = 1000) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.execute(f"PRAGMA busy_timeout = {busy_timeout_ms}")
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("CREATE TABLE IF NOT EXISTS t (x INTEGER)")
    return conn


def _busy_timeout(conn: sqlite3.Connection) -> int:
    return int(conn.execute("PRAGMA busy_timeout").fetchone()[0])


def test_write_waits_for_another_connection_to_release_the_lock(tmp_path: Path) -> None:
    path = tmp_path / "w.db"
    holder, conn = _open(path), _open(path)
    holder.execute("BEGIN IMMEDIATE")
    holder.execute("INSERT INTO t VALUES (1)")
    # Released from another thread while the write below is polling for the lock.
    threading.Timer(0.05, lambda: holder.execute("COMMIT")).start()
    with WriteLock(timeout_s=5).transaction(conn, busy_timeout_ms=1000):
        conn.execute("INSERT INTO t VALUES (2)")
    assert sorted(r[0] for r in conn.execute("SELECT x FROM t")) == [1, 2]
    assert _busy_timeout(conn) == 1000
    holder.close()
    conn.close()


def test_waits_between_attempts_double_up_to_the_longest_poll(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "w.db"
    holder, conn = _open(path), _open(path)
    holder.execute("BEGIN IMMEDIATE")
    waits: list[float] = []
    real_sleep = time.sleep
    writer = threading.get_ident()

    def recorded_sleep(seconds: float) -> None:
        # The patch reaches every thread of the process: a thread another test left running slept 1 s
        # here once, and no other thread's sleep is one of the writer's waits.
        if threading.get_ident() == writer:
            waits.append(seconds)
        real_sleep(seconds)

    monkeypatch.setattr(sqlitewrite.time, "sleep", recorded_sleep)
    threading.Timer(0.05, lambda: holder.execute("COMMIT")).start()
    started = time.perf_counter()
    with WriteLock(timeout_s=5, poll_s=0.0002, max_poll_s=0.001).transaction(conn, 1000):
        conn.execute("INSERT INTO t VALUES (2)")
    waited_s = time.perf_counter() - started
    # A 50 ms hold is met by a few quick polls, then one attempt a millisecond: not 250 attempts.
    assert waits[:4] == pytest.approx([0.0002, 0.0004, 0.0008, 0.001])
    assert set(waits[3:]) == {0.001}
    # However long the hold lasted on this host: the three short waits, then at most one a millisecond.
    assert len(waits) <= 3 + (waited_s - 0.0014) / 0.001 + 1
    holder.close()
    conn.close()


def test_write_gives_up_with_database_locked_after_its_timeout(tmp_path: Path) -> None:
    path = tmp_path / "w.db"
    holder, conn = _open(path), _open(path, busy_timeout_ms=700)
    holder.execute("BEGIN IMMEDIATE")
    started = time.monotonic()
    lock = WriteLock(timeout_s=0.05)
    with pytest.raises(sqlite3.OperationalError, match="locked"), lock.transaction(conn, 700):
        pass
    assert time.monotonic() - started >= 0.05
    assert not conn.in_transaction
    # The connection's own busy timeout, which its reads rely on, is back.
    assert _busy_timeout(conn) == 700
    holder.execute("ROLLBACK")
    holder.close()
    conn.close()


def test_a_failing_block_is_rolled_back_and_the_lock_freed(tmp_path: Path) -> None:
    path = tmp_path / "w.db"
    conn, other = _open(path, busy_timeout_ms=300), _open(path)
    lock = WriteLock(timeout_s=1)
    with pytest.raises(RuntimeError, match="checkout"), lock.transaction(conn, 300):
        conn.execute("INSERT INTO t VALUES (1)")
        raise RuntimeError("checkout went away")
    assert not conn.in_transaction
    assert _busy_timeout(conn) == 300
    # Both the thread queue and the file lock are free again: another writer gets in at once.
    with lock.transaction(other, 1000):
        other.execute("INSERT INTO t VALUES (2)")
    assert [r[0] for r in conn.execute("SELECT x FROM t")] == [2]
    conn.close()
    other.close()


def test_threads_of_one_process_take_turns_and_lose_no_write(tmp_path: Path) -> None:
    path = tmp_path / "w.db"
    lock = WriteLock(timeout_s=10)
    errors: list[BaseException] = []

    def write(n: int) -> None:
        conn = _open(path)
        try:
            for i in range(50):
                with lock.transaction(conn, 1000):
                    conn.execute("INSERT INTO t VALUES (?)", (n * 1000 + i,))
        except BaseException as exc:  # collected: a thread's exception would otherwise vanish
            errors.append(exc)
        finally:
            conn.close()

    _open(path).close()
    threads = [threading.Thread(target=write, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    check = _open(path)
    assert check.execute("SELECT count(DISTINCT x) FROM t").fetchone()[0] == 8 * 50
    check.close()


def test_write_lock_rejects_bad_settings() -> None:
    with pytest.raises(ValueError, match="timeout_s"):
        WriteLock(timeout_s=-1)
    with pytest.raises(ValueError, match="poll_s"):
        WriteLock(timeout_s=1, poll_s=0)
    with pytest.raises(ValueError, match="max_poll_s"):
        WriteLock(timeout_s=1, poll_s=0.001, max_poll_s=0.0005)


def test_insert_rows_writes_many_rows_in_one_statement(tmp_path: Path) -> None:
    conn = _open(tmp_path / "w.db")
    conn.execute("CREATE TABLE kv (k TEXT PRIMARY KEY, n INTEGER)")
    statements: list[str] = []
    conn.set_trace_callback(statements.append)
    insert_rows(conn, "INSERT INTO kv (k, n)", [(f"k{i}", i) for i in range(25)])
    # One trip through SQLite, where executemany would make 25, each a chance to lose the interpreter.
    assert len(statements) == 1
    assert conn.execute("SELECT count(*), sum(n) FROM kv").fetchone() == (25, sum(range(25)))
    conn.close()


def test_insert_rows_splits_at_the_variable_limit_and_applies_rows_in_order(tmp_path: Path) -> None:
    conn = _open(tmp_path / "w.db")
    conn.execute("CREATE TABLE kv (k TEXT PRIMARY KEY, n INTEGER)")
    per_statement = MAX_VARIABLES // 2
    rows = [(f"k{i}", 1) for i in range(per_statement + 10)] + [("k0", 5)]
    statements: list[str] = []
    conn.set_trace_callback(statements.append)
    insert_rows(conn, "INSERT INTO kv (k, n)", rows, "ON CONFLICT (k) DO UPDATE SET n = n + excluded.n")
    assert len(statements) == 2
    assert conn.execute("SELECT count(*) FROM kv").fetchone()[0] == per_statement + 10
    # The last row's conflict clause saw the first row, written by an earlier statement.
    assert conn.execute("SELECT n FROM kv WHERE k = 'k0'").fetchone()[0] == 6
    # Within one statement too: a repeated key updates the row its earlier occurrence inserted.
    replace = "ON CONFLICT (k) DO UPDATE SET n = excluded.n"
    insert_rows(conn, "INSERT INTO kv (k, n)", [("z", 1), ("z", 2)], replace)
    assert conn.execute("SELECT n FROM kv WHERE k = 'z'").fetchone()[0] == 2
    statements.clear()
    insert_rows(conn, "INSERT INTO kv (k, n)", [])
    assert statements == []
    conn.close()
