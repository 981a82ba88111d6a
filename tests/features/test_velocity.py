"""Velocity counters and redemption caps: freshness, windows, idempotency, caps and their atomicity.

Behaviour tests run against both backends. The Redis ones use the real server on 127.0.0.1:6379 under
a unique key prefix and skip (visibly) when it does not answer, unless PROMOGUARD_REQUIRE_SERVICES=1.
"""

from __future__ import annotations

import math
import multiprocessing as mp
import os
import socket
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import redis

from features.velocity import (
    GLOBAL_IDENTITY,
    RedisVelocity,
    Reservation,
    SqliteVelocity,
    VelocityStore,
    VelocityUnavailable,
    cap_identities,
    redis_client,
)

REDIS_URL = "redis://127.0.0.1:6379/0"
NOW = 1_700_000_000.0


# --- fixtures ---------------------------------------------------------------------------------------


@pytest.fixture
def require_redis() -> Iterator[redis.Redis]:
    """A client for the local Redis; skips with the reason when absent (fails when services are required)."""
    client = redis_client(REDIS_URL, socket_timeout_s=0.5)
    try:
        client.ping()
    except (redis.RedisError, OSError) as exc:
        client.close()
        reason = f"Redis not answering at {REDIS_URL}: {type(exc).__name__}: {exc}"
        if os.environ.get("PROMOGUARD_REQUIRE_SERVICES") == "1":
            pytest.fail(reason)
        pytest.skip(reason)
    yield client
    client.close()


def _unique_prefix() -> str:
    return f"pgtest:{uuid.uuid4().hex}:"


def _delete_prefix(client: redis.Redis, prefix: str) -> None:
    keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
    if keys:
        client.delete(*keys)


@pytest.fixture
def redis_prefix(require_redis: redis.Redis) -> Iterator[str]:
    """A key prefix no other test uses; every key under it is deleted afterwards."""
    prefix = _unique_prefix()
    yield prefix
    _delete_prefix(require_redis, prefix)


def _make_store(kind: str, request: pytest.FixtureRequest, tmp_path: Path, **kwargs: Any) -> VelocityStore:
    if kind == "sqlite":
        return SqliteVelocity(tmp_path / "velocity.sqlite", **kwargs)
    if kind == "sqlite-scratch":
        return SqliteVelocity(tmp_path / "velocity.sqlite", scratch=True, **kwargs)
    client = request.getfixturevalue("require_redis")
    prefix = request.getfixturevalue("redis_prefix")
    return RedisVelocity(client, prefix=prefix, **kwargs)


# The scratch file (a replay's) answers as the shared one does.
BACKENDS = ["sqlite", "sqlite-scratch", pytest.param("redis", marks=pytest.mark.services)]


@pytest.fixture(params=BACKENDS)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[VelocityStore]:
    """Each behaviour test runs once per backend."""
    made = _make_store(request.param, request, tmp_path)
    yield made
    if request.param != "redis":
        made.close()


@pytest.fixture(params=BACKENDS)
def short_retention_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[VelocityStore]:
    """A store that keeps members for 100 seconds only."""
    made = _make_store(request.param, request, tmp_path, retention_s=100)
    yield made
    if request.param != "redis":
        made.close()


# --- windowed sets ----------------------------------------------------------------------------------


def test_record_then_read_in_the_same_second_sees_the_attempt(store: VelocityStore) -> None:
    ts = NOW + 0.25
    assert store.read([("device_code:d1:WELCOME", NOW)]) == [0]
    assert store.record("req-1", ts, [("device_code:d1:WELCOME", "req-1"), ("code:WELCOME", "req-1")])
    assert store.read([("device_code:d1:WELCOME", NOW), ("code:WELCOME", NOW)]) == [1, 1]


def test_members_older_than_since_are_not_counted(store: VelocityStore) -> None:
    for i, age_s in enumerate([7200, 1800, 60, 0]):
        store.record(f"req-{i}", NOW - age_s, [("device_attempts:d1", f"req-{i}")])
    hour_ago, day_ago = NOW - 3600, NOW - 86_400
    assert store.read([("device_attempts:d1", hour_ago), ("device_attempts:d1", day_ago)]) == [3, 4]
    # since is inclusive: a member seen exactly at the window start counts.
    assert store.cardinality("device_attempts:d1", NOW - 1800) == 3


def test_a_retried_request_counts_once_and_changes_nothing(store: VelocityStore) -> None:
    updates = [("code:SPRING", "req-1"), ("device_accounts:d1", "acct-a")]
    assert store.record("req-1", NOW, updates) is True
    # The retry carries a different member: if it were applied, the distinct count would move.
    assert (
        store.record("req-1", NOW + 1, [("code:SPRING", "req-1b"), ("device_accounts:d1", "acct-b")]) is False
    )
    assert store.read([("code:SPRING", NOW - 10), ("device_accounts:d1", NOW - 10)]) == [1, 1]


def test_distinct_counts_each_member_once_with_its_latest_time(store: VelocityStore) -> None:
    store.record("r1", NOW - 5000, [("device_accounts:d1", "acct-a")])
    store.record("r2", NOW - 10, [("device_accounts:d1", "acct-b")])
    store.record("r3", NOW - 5, [("device_accounts:d1", "acct-a")])
    # acct-a was seen again recently, so it is inside the last hour despite its first sighting.
    assert store.cardinality("device_accounts:d1", NOW - 3600) == 2
    # An out-of-order older sighting must not move a member's time backwards.
    store.add("device_accounts:d1", "acct-b", NOW - 9000)
    assert store.cardinality("device_accounts:d1", NOW - 3600) == 2
    assert store.cardinality("device_accounts:d1", NOW - 7) == 1


def test_counters_are_independent_and_read_answers_in_query_order(store: VelocityStore) -> None:
    store.record("r1", NOW, [("network_invalid:n1", "r1"), ("device_invalid:d1", "r1")])
    store.record("r2", NOW, [("network_invalid:n1", "r2")])
    queries = [("device_invalid:d1", NOW), ("never_written", NOW), ("network_invalid:n1", NOW)]
    assert store.read(queries) == [1, 0, 2]
    assert store.read([]) == []


def test_members_past_retention_are_pruned_when_the_counter_is_written(
    short_retention_store: VelocityStore,
) -> None:
    s = short_retention_store
    s.record("old", NOW - 1000, [("code:X", "old")])
    s.record("new", NOW, [("code:X", "new")])
    # Asking for everything ever seen shows only what retention keeps.
    assert s.cardinality("code:X", 0.0) == 1


def test_bad_input_gets_an_error_naming_the_field(store: VelocityStore) -> None:
    with pytest.raises(ValueError, match="request_id"):
        store.record("", NOW, [("c", "m")])
    with pytest.raises(ValueError, match=r"updates\[1\]\.member"):
        store.record("r", NOW, [("c", "m"), ("c", "")])
    with pytest.raises(ValueError, match="ts"):
        store.record("r", float("nan"), [("c", "m")])
    with pytest.raises(ValueError, match="ts must be epoch seconds >= 0"):
        store.record("r", -1.0, [("c", "m")])
    with pytest.raises(ValueError, match=r"queries\[0\]\.since_ts"):
        store.read([("c", "yesterday")])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="limit"):
        store.reserve("r", "CODE", ["device:d1"], 0, 60, NOW)
    with pytest.raises(ValueError, match="identities"):
        store.reserve("r", "CODE", [], 1, 60, NOW)
    with pytest.raises(ValueError, match="ttl_s"):
        store.reserve("r", "CODE", ["device:d1"], 1, 0, NOW)
    # Nothing was recorded by the rejected calls.
    assert store.record("r", NOW, [("c", "m")]) is True


# --- caps -------------------------------------------------------------------------------------------


def test_single_use_code_reserves_once_and_names_the_global_limit(store: VelocityStore) -> None:
    first = store.reserve("r1", "LEAKED50", [GLOBAL_IDENTITY], 1, 600, NOW)
    second = store.reserve("r2", "LEAKED50", [GLOBAL_IDENTITY], 1, 600, NOW + 1)
    assert first.reserved and first.expires_at == NOW + 600
    assert second.status == "exhausted" and second.blocked_kind == GLOBAL_IDENTITY
    assert not second.reserved


def test_a_quorum_blocks_on_two_matching_identities_or_one_decisive(store: VelocityStore) -> None:
    first = store.reserve("r1", "WELCOME", ["device:d1", "payment:p1", "account:a1"], 1, 600, NOW)
    assert first.reserved and first.matched == ()
    # One strong identity seen before: still reserved, and the match is reported.
    one = store.reserve("r2", "WELCOME", ["device:d1", "payment:p9", "account:a2"], 1, 600, NOW + 1,
                        quorum=2, decisive=["account:a2"])
    assert one.reserved and one.matched == ("device:d1",)
    # Two strong identities at their limit: blocked, both named, also on a retry.
    two = store.reserve("r3", "WELCOME", ["device:d1", "payment:p1", "account:a3"], 1, 600, NOW + 2,
                        quorum=2, decisive=["account:a3"])
    assert two.status == "exhausted" and set(two.matched) == {"device:d1", "payment:p1"}
    assert two.blocked_kind in {"device", "payment"}
    again = store.reserve("r3", "WELCOME", ["device:d1", "payment:p1", "account:a3"], 1, 600, NOW + 3,
                          quorum=2, decisive=["account:a3"])
    assert again.duplicate and again.status == "exhausted" and set(again.matched) == set(two.matched)
    # The same account again: decisive on its own.
    same_account = store.reserve("r4", "WELCOME", ["device:d7", "account:a1"], 1, 600, NOW + 4,
                                 quorum=2, decisive=["account:a1"])
    assert same_account.status == "exhausted" and same_account.matched == ("account:a1",)
    with pytest.raises(ValueError, match="decisive"):
        store.reserve("r5", "WELCOME", ["device:d1"], 1, 600, NOW, quorum=2, decisive=["account:zz"])
    with pytest.raises(ValueError, match="quorum"):
        store.reserve("r5", "WELCOME", ["device:d1"], 1, 600, NOW, quorum=0)


def test_a_retried_reservation_gets_the_same_answer_flagged_duplicate(store: VelocityStore) -> None:
    first = store.reserve("r1", "LEAKED50", ["*"], 1, 600, NOW)
    blocked = store.reserve("r2", "LEAKED50", ["*"], 1, 600, NOW)
    again_first = store.reserve("r1", "LEAKED50", ["*"], 1, 600, NOW + 5)
    again_blocked = store.reserve("r2", "LEAKED50", ["*"], 1, 600, NOW + 5)
    assert (again_first.status, again_first.expires_at, again_first.duplicate) == (
        first.status,
        first.expires_at,
        True,
    )
    assert (again_blocked.status, again_blocked.blocked_by, again_blocked.duplicate) == (
        "exhausted",
        "*",
        True,
    )
    assert not first.duplicate and not blocked.duplicate


def test_confirmed_use_outlives_the_hold_ttl(store: VelocityStore) -> None:
    assert store.reserve("r1", "ONCE", ["*"], 1, 60, NOW).reserved
    assert store.confirm("r1") is True
    assert store.confirm("r1") is False  # a second confirm changes nothing
    later = store.reserve("r2", "ONCE", ["*"], 1, 60, NOW + 86_400)
    assert later.status == "exhausted"
    assert store.release("r1") is False  # a confirmed use is not freed by an abandon


def test_a_reversed_order_gives_its_confirmed_use_back(store: VelocityStore) -> None:
    assert store.reserve("r1", "ONCE", ["*"], 1, 60, NOW).reserved
    assert store.confirm("r1") is True
    assert store.release("r1") is False  # an abandon after the redemption frees nothing
    assert store.release("r1", confirmed=True) is True
    assert store.release("r1", confirmed=True) is False
    assert store.confirm("r1") is False
    assert store.reserve("r2", "ONCE", ["*"], 1, 60, NOW + 86_400).reserved


def test_released_reservation_frees_the_use(store: VelocityStore) -> None:
    assert store.reserve("r1", "ONCE", ["*"], 1, 600, NOW).reserved
    assert store.release("r1") is True
    assert store.release("r1") is False
    assert store.confirm("r1") is False  # released holds cannot be confirmed afterwards
    assert store.reserve("r2", "ONCE", ["*"], 1, 600, NOW + 1).reserved


def test_expired_hold_frees_itself(store: VelocityStore) -> None:
    assert store.reserve("r1", "ONCE", ["*"], 1, 60, NOW).reserved
    assert store.reserve("r2", "ONCE", ["*"], 1, 60, NOW + 59).status == "exhausted"
    assert store.reserve("r3", "ONCE", ["*"], 1, 60, NOW + 60).reserved


def test_confirm_after_the_hold_expired_still_counts_the_redemption(store: VelocityStore) -> None:
    assert store.reserve("r1", "ONCE", ["*"], 1, 60, NOW).reserved
    assert store.confirm("r1") is True
    assert store.reserve("r2", "ONCE", ["*"], 1, 60, NOW + 3600).status == "exhausted"


def test_unknown_request_ids_confirm_and_release_nothing(store: VelocityStore) -> None:
    assert store.confirm("never-seen") is False
    assert store.release("never-seen") is False


def test_per_customer_limit_two_allows_two_per_identity(store: VelocityStore) -> None:
    ids = ["device:d1", "payment:p1"]
    assert store.reserve("r1", "SAMPLE", ids, 2, 600, NOW).reserved
    assert store.reserve("r2", "SAMPLE", ids, 2, 600, NOW).reserved
    third = store.reserve("r3", "SAMPLE", ids, 2, 600, NOW)
    assert third.status == "exhausted" and third.blocked_kind == "device"


def test_different_identities_and_codes_are_independent(store: VelocityStore) -> None:
    assert store.reserve("r1", "SAMPLE", ["device:d1"], 1, 600, NOW).reserved
    assert store.reserve("r2", "SAMPLE", ["device:d2"], 1, 600, NOW).reserved
    assert store.reserve("r3", "OTHER", ["device:d1"], 1, 600, NOW).reserved
    assert store.reserve("r4", "SAMPLE", ["device:d1"], 1, 600, NOW).status == "exhausted"


def test_limit_hit_on_any_one_hard_identity_blocks_and_holds_nothing(store: VelocityStore) -> None:
    assert store.reserve("r1", "WELCOME", ["device:d1", "household:h1", "payment:p1"], 1, 600, NOW).reserved
    # New device and new household, same card: the card alone blocks.
    blocked = store.reserve("r2", "WELCOME", ["device:d2", "household:h2", "payment:p1"], 1, 600, NOW)
    assert blocked.status == "exhausted"
    assert blocked.blocked_by == "payment:p1" and blocked.blocked_kind == "payment"
    # The blocked attempt did not consume d2 or h2.
    assert store.reserve("r3", "WELCOME", ["device:d2", "household:h2"], 1, 600, NOW).reserved


def test_the_same_identity_listed_twice_holds_one_use(store: VelocityStore) -> None:
    assert store.reserve("r1", "SAMPLE", ["device:d1", "device:d1"], 2, 600, NOW).reserved
    assert store.reserve("r2", "SAMPLE", ["device:d1"], 2, 600, NOW).reserved


def test_cap_identities_keeps_present_hard_keys_with_their_kind() -> None:
    keys = {"device_key": "aa", "household_key": None, "payment_key": "bb", "email_key": "cc"}
    assert cap_identities(keys, ["device", "household", "payment", "phone"]) == ["device:aa", "payment:bb"]
    assert Reservation("r", "exhausted", blocked_by="payment:bb").blocked_kind == "payment"


# --- concurrency ------------------------------------------------------------------------------------


class NaiveSqliteCaps:
    """A deliberately racy cap: count in one transaction, write in another, with a gap between.

    Used only to show that the concurrency test detects a check-then-act race.
    """

    def __init__(self, path: Path, gap_s: float = 0.05) -> None:
        self.path, self.gap_s = str(path), gap_s
        with sqlite3.connect(self.path, timeout=30) as conn:
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("CREATE TABLE IF NOT EXISTS naive_use (scope TEXT, identity TEXT, request_id TEXT)")

    def reserve(
        self, request_id: str, scope: str, identities: Sequence[str], limit: int, ttl_s: float, now: float
    ) -> Reservation:
        conn = sqlite3.connect(self.path, timeout=30)
        try:
            for ident in identities:
                with conn:
                    (used,) = conn.execute(
                        "SELECT count(*) FROM naive_use WHERE scope = ? AND identity = ?", (scope, ident)
                    ).fetchone()
                if used >= limit:
                    return Reservation(request_id, "exhausted", blocked_by=ident)
            time.sleep(self.gap_s)
            with conn:
                conn.executemany(
                    "INSERT INTO naive_use VALUES (?, ?, ?)", [(scope, i, request_id) for i in identities]
                )
            return Reservation(request_id, "reserved", expires_at=now + ttl_s)
        finally:
            conn.close()


WORKERS = 10
ATTEMPTS_PER_WORKER = 10


def _attempt_worker(kind: str, target: str, worker: int, barrier: Any, results: Any) -> None:
    """One process: build its own store, wait for all the others, then try the code repeatedly."""
    made: Any
    if kind == "sqlite":
        # A long busy timeout so every attempt gets an answer: this test is about atomicity; failing
        # fast under contention is covered separately.
        made = SqliteVelocity(target, busy_timeout_ms=10_000)
    elif kind == "naive":
        made = NaiveSqliteCaps(Path(target))
    else:
        made = RedisVelocity(redis_client(REDIS_URL, socket_timeout_s=5.0), prefix=target)
    statuses = []
    barrier.wait(timeout=60)
    for j in range(ATTEMPTS_PER_WORKER):
        statuses.append(made.reserve(f"w{worker}-a{j}", "LEAKED-VIP", ["*"], 1, 600, NOW).status)
    results.put(statuses)


def _race(kind: str, target: str) -> list[str]:
    ctx = mp.get_context("fork")
    barrier, results = ctx.Barrier(WORKERS), ctx.Queue()
    procs = [
        ctx.Process(target=_attempt_worker, args=(kind, target, w, barrier, results)) for w in range(WORKERS)
    ]
    for p in procs:
        p.start()
    statuses: list[str] = []
    try:
        for _ in procs:
            statuses.extend(results.get(timeout=120))
    finally:
        for p in procs:
            p.join(timeout=30)
    assert all(p.exitcode == 0 for p in procs)
    return statuses


def test_concurrent_processes_reserve_a_single_use_code_exactly_once_sqlite(tmp_path: Path) -> None:
    path = tmp_path / "velocity.sqlite"
    SqliteVelocity(path).close()
    statuses = _race("sqlite", str(path))
    assert len(statuses) == WORKERS * ATTEMPTS_PER_WORKER
    assert statuses.count("reserved") == 1
    assert statuses.count("exhausted") == len(statuses) - 1


@pytest.mark.services
def test_concurrent_processes_reserve_a_single_use_code_exactly_once_redis(redis_prefix: str) -> None:
    statuses = _race("redis", redis_prefix)
    assert len(statuses) == WORKERS * ATTEMPTS_PER_WORKER
    assert statuses.count("reserved") == 1


def test_the_race_check_detects_a_naive_check_then_write_cap(tmp_path: Path) -> None:
    statuses = _race("naive", str(tmp_path / "naive.sqlite"))
    assert statuses.count("reserved") > 1


def test_threads_sharing_one_sqlite_store_lose_no_updates(tmp_path: Path) -> None:
    shared = SqliteVelocity(tmp_path / "velocity.sqlite", busy_timeout_ms=10_000)

    def work(t: int) -> None:
        for j in range(25):
            shared.record(f"t{t}-{j}", NOW, [("code:X", f"t{t}-{j}"), ("device_accounts:d1", f"acct-{j}")])

    threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert shared.read([("code:X", NOW), ("device_accounts:d1", NOW)]) == [100, 25]
    shared.close()


# --- failing backends -------------------------------------------------------------------------------


def test_sqlite_held_write_lock_surfaces_as_unavailable_not_a_hang(tmp_path: Path) -> None:
    path = tmp_path / "velocity.sqlite"
    s = SqliteVelocity(path, busy_timeout_ms=50)
    blocker = sqlite3.connect(path, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    try:
        with pytest.raises(VelocityUnavailable):
            s.record("r1", NOW, [("code:X", "r1")])
        with pytest.raises(VelocityUnavailable):
            s.reserve("r1", "ONCE", ["*"], 1, 60, NOW)
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    # Once the lock is gone the store works again, and the failed calls left nothing behind.
    assert s.record("r1", NOW, [("code:X", "r1")]) is True
    s.close()


def test_sqlite_request_path_prunes_by_index_never_by_scanning_a_table(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The pruning a request does now and then runs under the file's write lock: a scan of a table that
    # keeps a row per request for the retention (31 days) would hold every writer for seconds.
    import features.velocity as velocity_module

    monkeypatch.setattr(velocity_module, "_one_in", lambda n: True)
    statements: list[str] = []
    connect = sqlite3.connect

    def traced(*args: Any, **kwargs: Any) -> sqlite3.Connection:
        conn = connect(*args, **kwargs)
        conn.set_trace_callback(statements.append)
        return conn

    monkeypatch.setattr(sqlite3, "connect", traced)
    path = tmp_path / "velocity.sqlite"
    s = SqliteVelocity(path)
    s.record("r1", NOW, [("code:X", "r1"), ("device:D", "acct")])
    s.reserve("r1", "ONCE", ["*"], 1, 60, NOW)
    s.close()
    monkeypatch.undo()
    deletes = [sql for sql in statements if sql.lstrip().upper().startswith("DELETE")]
    assert len(deletes) >= 3  # the counters', the recorded requests' and the reservations' prunes
    with sqlite3.connect(path) as conn:
        for sql in deletes:
            plan = " | ".join(row[3] for row in conn.execute(f"EXPLAIN QUERY PLAN {sql}"))
            assert "SCAN" not in plan, f"{sql!r} scans: {plan}"


@pytest.fixture
def frozen_server() -> Iterator[int]:
    """A TCP port that accepts connections (via the kernel backlog) and never answers."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    yield sock.getsockname()[1]
    sock.close()


def test_frozen_redis_surfaces_as_unavailable_quickly(frozen_server: int) -> None:
    store = RedisVelocity(redis_client(f"redis://127.0.0.1:{frozen_server}/0"), prefix=_unique_prefix())
    calls = [
        lambda: store.read([("code:X", NOW)] * 12),
        lambda: store.record("r1", NOW, [("code:X", "r1")]),
        lambda: store.reserve("r1", "ONCE", ["*"], 1, 60, NOW),
        lambda: store.confirm("r1"),
    ]
    for call in calls:
        started = time.monotonic()
        with pytest.raises(VelocityUnavailable):
            call()
        # Generous bound: the point is that no retry/backoff turns a frozen server into a hang.
        assert time.monotonic() - started < 2.0


def test_unreachable_redis_surfaces_as_unavailable() -> None:
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()  # nothing listens on this port now
    store = RedisVelocity(redis_client(f"redis://127.0.0.1:{port}/0"), prefix=_unique_prefix())
    with pytest.raises(VelocityUnavailable):
        store.read([("code:X", NOW)])


def test_a_finished_threads_connection_is_closed_when_another_thread_connects(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = SqliteVelocity(tmp_path / "threads.sqlite")
    # The store opens one connection per thread through sqlite3.connect: note which thread opened which.
    opened: dict[threading.Thread, sqlite3.Connection] = {}
    connect = sqlite3.connect

    def recording_connect(*args: Any, **kwargs: Any) -> sqlite3.Connection:
        conn = connect(*args, **kwargs)
        opened.setdefault(threading.current_thread(), conn)
        return conn

    monkeypatch.setattr(sqlite3, "connect", recording_connect)

    def use_once() -> None:
        store.read([("c", 0.0)])

    first = threading.Thread(target=use_once)
    first.start()
    first.join()
    second = threading.Thread(target=use_once)
    second.start()
    second.join()
    # The first thread is gone: its connection was closed, the second one's is still usable.
    with pytest.raises(sqlite3.ProgrammingError):
        opened[first].execute("SELECT 1")
    assert opened[second].execute("SELECT 1").fetchone() == (1,)
    store.close()


# --- retention: prune -------------------------------------------------------------------------------


def test_prune_drops_members_past_retention_and_keeps_the_rest(short_retention_store: VelocityStore) -> None:
    s: Any = short_retention_store
    s.record("old", NOW, [("idle", "a"), ("idle", "b"), ("busy", "a")])
    s.record("new", NOW + 150, [("busy", "b"), ("fresh", "c")])
    # 'idle' is never written again, so no write trimmed it; at NOW + 150 its members are 150 s old.
    assert s.cardinality("idle", 0.0) == 2
    counts = s.prune(NOW + 150)
    assert counts.members == 2
    assert s.cardinality("idle", 0.0) == 0
    assert s.cardinality("busy", 0.0) == 1 and s.cardinality("fresh", 0.0) == 1
    # A second run finds nothing more to do.
    assert s.prune(NOW + 150).members == 0


def test_prune_keeps_members_exactly_at_the_horizon(short_retention_store: VelocityStore) -> None:
    s: Any = short_retention_store
    s.record("r1", NOW, [("c", "at")])
    s.record("r2", NOW - 1, [("d", "before")])
    s.prune(NOW + 100)
    assert s.cardinality("c", 0.0) == 1  # exactly 100 s old: still readable by a 100 s window
    assert s.cardinality("d", 0.0) == 0


def test_prune_uses_the_first_matching_window_per_counter(store: VelocityStore) -> None:
    s: Any = store
    s.record("r1", NOW, [("device_stats|k|attempts", "r1"), ("xref:a:device:k", "seen"), ("other", "x")])
    counts = s.prune(NOW + 2 * 86_400, windows=[("*|attempts", 86_400.0), ("xref:*", 30 * 86_400.0)])
    assert counts.members == 1
    assert s.cardinality("device_stats|k|attempts", 0.0) == 0
    assert s.cardinality("xref:a:device:k", 0.0) == 1
    assert s.cardinality("other", 0.0) == 1  # the store's retention (31 days) applies
    with pytest.raises(ValueError, match="seconds"):
        s.prune(NOW, windows=[("*", 0.0)])


def test_prune_drops_expired_holds_but_never_a_confirmed_use(store: VelocityStore) -> None:
    s: Any = store
    assert s.reserve("held", "CODE", ["device:d1"], 5, 60, NOW).reserved
    assert s.reserve("used", "CODE", ["device:d1"], 5, 60, NOW).reserved
    assert s.confirm("used")
    assert s.reserve("fresh", "CODE", ["device:d1"], 5, 600, NOW).reserved
    counts = s.prune(NOW + 120)
    assert counts.holds == 1
    # 'used' and 'fresh' still count: a limit of 2 is reached, a limit of 3 is not.
    assert not s.reserve("probe2", "CODE", ["device:d1"], 2, 60, NOW + 120).reserved
    assert s.reserve("probe3", "CODE", ["device:d1"], 3, 60, NOW + 120).reserved
    # A confirm that arrives after its hold was pruned still counts the redemption.
    assert s.confirm("held")
    assert not s.reserve("probe4", "CODE", ["device:d1"], 4, 60, NOW + 120).reserved


def test_prune_forgets_old_request_ids_and_unconfirmed_reservations_sqlite(tmp_path: Path) -> None:
    s = SqliteVelocity(tmp_path / "v.db", retention_s=100)
    try:
        assert s.record("req", NOW, [("c", "m")])
        assert not s.record("req", NOW + 10, [("c", "m")])  # idempotent while kept
        s.reserve("gone", "CODE", ["device:d1"], 1, 10, NOW)
        s.reserve("kept", "CODE", ["device:d2"], 1, 10, NOW)
        assert s.confirm("kept")
        counts = s.prune(NOW + 200)
        assert (counts.requests, counts.reservations) == (1, 1)
        # Past retention the id is new again; the confirmed reservation still answers a retry.
        assert s.record("req", NOW + 200, [("c", "m")])
        assert s.reserve("kept", "CODE", ["device:d2"], 1, 10, NOW + 200).duplicate
        assert not s.reserve("gone", "CODE", ["device:d1"], 1, 10, NOW + 200).duplicate
    finally:
        s.close()


def test_prune_walks_in_pages_a_writer_gets_between_and_spares_a_member_refreshed_meanwhile(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Maintenance on a live store: between reading a page of stale members and deleting it another
    process writes at once (no lock is held), and a member it refreshes in that gap is kept."""
    import features.velocity as velocity

    monkeypatch.setattr(velocity, "_CHUNK", 3)
    path = tmp_path / "v.db"
    s = SqliteVelocity(path, retention_s=100)
    # A second store on the file has a lock of its own, as another worker process does; it gives up at
    # once on a taken lock.
    service = SqliteVelocity(path, busy_timeout_ms=0, retention_s=100)
    try:
        for i in range(10):
            assert s.record(f"r{i}", NOW, [(f"counter-{i}", "m")])
        later = NOW + 150
        transaction = s._tx  # noqa: SLF001 - wrapped to act in the gap between a page's read and its delete
        writes = 0

        @contextmanager
        def service_writes_before_each_delete(immediate: bool) -> Iterator[sqlite3.Connection]:
            nonlocal writes
            if immediate:
                writes += 1
                service.add("live", f"m{writes}", later)
                if writes == 2:
                    # counter-4 is on the second page, which has just been read as stale.
                    service.add("counter-4", "m", later)
            with transaction(immediate) as conn:
                yield conn

        monkeypatch.setattr(s, "_tx", service_writes_before_each_delete)
        counts = s.prune(later)
        assert counts.members == 9
        assert writes >= 4  # pages of 3, 3 and 3 stale members, then the rest of the prune
        for i in range(10):
            assert s.cardinality(f"counter-{i}", 0.0) == (1 if i == 4 else 0), i
        assert s.cardinality("live", 0.0) == writes
    finally:
        service.close()
        s.close()


def test_prune_and_vacuum_shrink_the_sqlite_file(tmp_path: Path) -> None:
    path = tmp_path / "v.db"
    s = SqliteVelocity(path, retention_s=100)
    try:
        for i in range(300):
            s.record(f"r{i}", NOW, [(f"counter-{i}", "x" * 200)])
        s.prune(NOW, vacuum=True)
        full = path.stat().st_size
        counts = s.prune(NOW + 1000, vacuum=True)
        assert counts.members == 300
        assert path.stat().st_size < full
    finally:
        s.close()


def test_a_scratch_store_refuses_a_checkpoint_interval(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="checkpoint_interval_s"):
        SqliteVelocity(tmp_path / "v.db", checkpoint_interval_s=1.0, scratch=True)


# --- SQLite: counts by the minute -------------------------------------------------------------------


def _walked(conn: sqlite3.Connection, counter: str, since_ts: float) -> int:
    sql = "SELECT count(*) FROM vset WHERE counter = ? AND ts >= ?"
    return int(conn.execute(sql, (counter, since_ts)).fetchone()[0])


def test_sqlite_counts_match_a_walk_of_the_members_through_adds_moves_and_prunes(tmp_path: Path) -> None:
    # The per-minute buckets are kept by triggers: every insert, every member whose latest time moves
    # to another minute, and every delete (a write's own trim, prune) must leave them exact.
    import random

    rng = random.Random(11)
    path = tmp_path / "v.db"
    s = SqliteVelocity(path, retention_s=3 * 3600)
    counters = ["code:HOT", "device:d1", "network:n1|accounts"]
    members = [f"m{i}" for i in range(40)]
    t = NOW
    with sqlite3.connect(path) as check:
        for step in range(600):
            t += rng.choice([0.0, 0.5, 7.3, 30.0, 59.999, 60.0, 61.25, 600.0])
            updates = [(rng.choice(counters), rng.choice(members)) for _ in range(rng.randint(1, 4))]
            # Some members come back with an older time: the store keeps the latest, moving nothing.
            s.record(f"r{step}", t - rng.choice([0.0, 0.0, 90.0]), updates)
            if step % 97 == 0:
                s.prune(t, windows=[("device:*", 1800.0)])
            queries = [
                (counter, since)
                for counter in counters
                for since in (
                    t - 3600,
                    t - 86_400,
                    float(math.floor(t / 60) * 60),  # exactly at a minute's start
                    float(math.floor(t / 60) * 60 + 30),  # exactly half way
                    t - rng.uniform(0, 3 * 3600),
                    0.0,
                )
            ]
            assert s.read(queries) == [_walked(check, c, since) for c, since in queries], f"step {step}"
        total, minutes, empty = check.execute(
            "SELECT (SELECT count(*) FROM vset), (SELECT coalesce(sum(n), 0) FROM vbucket), "
            "(SELECT count(*) FROM vbucket WHERE n <= 0)"
        ).fetchone()
    assert total > 0 and minutes == total and empty == 0
    s.close()


def _steps_to_read(path: Path, counter: str, since_ts: float) -> int:
    """SQLite virtual-machine steps one read takes (counted every 100): work, without a clock."""
    s = SqliteVelocity(path)
    conn = s._conn()  # noqa: SLF001 - the read's own connection, to count its steps
    steps = [0]

    def tick() -> int:
        steps[0] += 1
        return 0

    conn.set_progress_handler(tick, 100)
    s.read([(counter, since_ts)])
    conn.set_progress_handler(None, 0)
    s.close()
    return steps[0] * 100


def test_sqlite_count_costs_the_same_for_a_crowded_counter_as_for_a_quiet_one(tmp_path: Path) -> None:
    # A promotion's 24-hour attempts counter grows with its traffic; a read that walked its members
    # took 130 ms at 20 attempts a second. Buckets bound it by the window's minutes instead.
    quiet, crowded = tmp_path / "quiet.db", tmp_path / "crowded.db"
    for path, per_minute in ((quiet, 1), (crowded, 100)):
        s = SqliteVelocity(path)
        members = [
            ("code:HOT", f"r{minute}-{k}", NOW - 86_400 + minute * 60 + k * 60 / per_minute)
            for minute in range(24 * 60)
            for k in range(per_minute)
        ]
        with s._tx(immediate=True) as conn:  # noqa: SLF001 - bulk load, the triggers still count
            conn.executemany("INSERT INTO vset (counter, member, ts) VALUES (?, ?, ?)", members)
        s.close()
    since = NOW - 86_400 + 0.25 * 60  # a quarter into a minute: the walk is that quarter
    counted = SqliteVelocity(crowded)
    assert counted.cardinality("code:HOT", since) == 24 * 60 * 100 - 25
    counted.close()
    quiet_steps = _steps_to_read(quiet, "code:HOT", since)
    crowded_steps = _steps_to_read(crowded, "code:HOT", since)
    # 100x the members; the read walks 25 of them more, where a walk of the window would walk 143,975.
    assert crowded_steps < 2 * quiet_steps + 2_000, (quiet_steps, crowded_steps)


def test_a_sqlite_file_from_before_the_buckets_counts_its_members_once_reopened(tmp_path: Path) -> None:
    import features.velocity as velocity_module

    path = tmp_path / "v.db"
    with sqlite3.connect(path) as old:
        for statement in velocity_module._statements(velocity_module._SQLITE_SCHEMA):  # noqa: SLF001 - the old schema
            old.execute(statement)
        old.executemany(
            "INSERT INTO vset (counter, member, ts) VALUES (?, ?, ?)",
            [("code:X", f"m{i}", NOW - i * 37.5) for i in range(200)],
        )
        assert old.execute("PRAGMA user_version").fetchone()[0] == 0
    old.close()
    s = SqliteVelocity(path)
    with sqlite3.connect(path) as check:
        sinces = [NOW - 3600, NOW - 1234.5, NOW - 60, 0.0]
        assert s.read([("code:X", t) for t in sinces]) == [_walked(check, "code:X", t) for t in sinces]
    # Opening it again (another worker) builds nothing twice.
    SqliteVelocity(path).close()
    assert s.cardinality("code:X", 0.0) == 200
    s.record("new", NOW + 1, [("code:X", "new")])
    assert s.cardinality("code:X", NOW) == 2
    s.close()
