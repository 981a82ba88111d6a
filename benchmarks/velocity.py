"""Latency of the velocity hot path: one record() with 12 updates and one read() with 12 queries.

Prints one table: p50 and p99 in milliseconds per call, SQLite (WAL, one file in a temporary folder)
vs Redis (the server at PROMOGUARD_REDIS_URL, default 127.0.0.1:6379, under a throwaway key prefix).
A request touches about a dozen counters, so this is the velocity share of one /score call.

The "contended" row records while another thread of the process runs Python, as the other request
threads of a serving worker do: a thread that leaves the interpreter for SQLite or a socket may wait a
switch interval (5 ms) to come back, so the number of such trips a call makes decides its time there.

The last row per backend reads one crowded counter (a promotion attempted twice a second for a day,
172,800 members) over 1 and 24 hours: what a popular code's own counters cost each request.
"""

from __future__ import annotations

import os
import random
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import redis

from features.velocity import (
    RedisVelocity,
    SqliteVelocity,
    VelocityStore,
    VelocityUnavailable,
    redis_client,
)

CALLS = 2000
WARMUP = 200
COUNTERS = 12
DEVICES = 500
CODES = 20
#: Members of the crowded counter: two a second over the last 24 hours.
CROWDED_RATE = 2.0
CROWDED = "code:CROWDED"


def _percentiles(samples_s: list[float]) -> tuple[float, float]:
    ms = sorted(s * 1000 for s in samples_s)
    return statistics.median(ms), ms[min(len(ms) - 1, int(0.99 * len(ms)))]


def _time(fn: Callable[[int], object], n: int) -> list[float]:
    out = []
    for i in range(n):
        start = time.perf_counter()
        fn(i)
        out.append(time.perf_counter() - start)
    return out


def _updates(rng: random.Random, request_id: str) -> list[tuple[str, str]]:
    device, code = f"d{rng.randrange(DEVICES)}", f"C{rng.randrange(CODES)}"
    household, payment, network = (
        f"h{rng.randrange(DEVICES)}",
        f"p{rng.randrange(DEVICES)}",
        f"n{rng.randrange(50)}",
    )
    account = f"a{rng.randrange(5 * DEVICES)}"
    return [
        (f"device_code:{device}:{code}", request_id),
        (f"household_code:{household}:{code}", request_id),
        (f"payment_code:{payment}:{code}", request_id),
        (f"network_code:{network}:{code}", request_id),
        (f"code:{code}", request_id),
        (f"device:{device}", request_id),
        (f"household:{household}", request_id),
        (f"payment:{payment}", request_id),
        (f"network:{network}", request_id),
        (f"device_invalid:{device}", request_id),
        (f"device_accounts:{device}", account),
        (f"code_devices:{code}", device),
    ][:COUNTERS]


def _bench(store: VelocityStore) -> dict[str, tuple[float, float]]:
    rng = random.Random(7)
    base = time.time() - CALLS

    def record(i: int) -> None:
        rid = uuid.uuid4().hex
        store.record(rid, base + i, _updates(rng, rid))

    def read(i: int) -> None:
        now = base + CALLS
        store.read(
            [(c, now - 3600 if k % 2 else now - 86_400) for k, (c, _) in enumerate(_updates(rng, "x"))]
        )

    _time(record, WARMUP)
    rec = _time(record, CALLS)
    stop = threading.Event()

    def spin() -> None:
        while not stop.is_set():
            sum(range(1000))

    spinner = threading.Thread(target=spin, daemon=True)
    spinner.start()
    try:
        contended = _time(record, CALLS // 10)
    finally:
        stop.set()
        spinner.join()
    _time(read, WARMUP)
    rd = _time(read, CALLS)
    now = base + CALLS
    _load_crowded(store, now)

    def read_crowded(i: int) -> None:
        # A fraction of a second past each call, as real reads fall anywhere within a minute.
        since = now + (i % 60) * 0.997
        store.read([(CROWDED, since - 3600), (CROWDED, since - 86_400)])

    _time(read_crowded, WARMUP // 10)
    crowded = _time(read_crowded, CALLS // 10)
    return {
        "record (12 updates)": _percentiles(rec),
        "record (12 updates), contended": _percentiles(contended),
        "read (12 queries)": _percentiles(rd),
        f"read crowded counter ({int(CROWDED_RATE * 86_400):,} members; 1 h + 24 h)": _percentiles(crowded),
    }


def _load_crowded(store: VelocityStore, now: float) -> None:
    """Fill :data:`CROWDED` in bulk, through each backend's own storage (add() would take minutes)."""
    members = [(f"r{i}", now - 86_400 + i / CROWDED_RATE) for i in range(int(CROWDED_RATE * 86_400))]
    if isinstance(store, SqliteVelocity):
        with store._tx(immediate=True) as conn:  # noqa: SLF001 - bulk load; its triggers still run
            conn.executemany(
                "INSERT INTO vset (counter, member, ts) VALUES (?, ?, ?)",
                [(CROWDED, member, ts) for member, ts in members],
            )
    elif isinstance(store, RedisVelocity):
        key = store._vkey(CROWDED)  # noqa: SLF001 - the counter's own sorted set
        for start in range(0, len(members), 10_000):
            store.client.zadd(key, dict(members[start : start + 10_000]))


def main() -> None:
    """Run both backends and print the table."""
    rows: list[tuple[str, str, str, str]] = []
    with tempfile.TemporaryDirectory() as tmp:
        sqlite_store = SqliteVelocity(Path(tmp) / "velocity.sqlite")
        for op, (p50, p99) in _bench(sqlite_store).items():
            rows.append(("sqlite", op, f"{p50:.3f}", f"{p99:.3f}"))
        sqlite_store.close()

    url = os.environ.get("PROMOGUARD_REDIS_URL", "redis://127.0.0.1:6379/0")
    client = redis_client(url, socket_timeout_s=1.0)
    prefix = f"pgbench:{uuid.uuid4().hex}:"
    try:
        client.ping()
        for op, (p50, p99) in _bench(RedisVelocity(client, prefix=prefix)).items():
            rows.append(("redis", op, f"{p50:.3f}", f"{p99:.3f}"))
    except (redis.RedisError, OSError, VelocityUnavailable) as exc:
        rows.append(("redis", f"unavailable ({type(exc).__name__})", "-", "-"))
    finally:
        try:
            keys = list(client.scan_iter(match=f"{prefix}*", count=5000))
            for start in range(0, len(keys), 1000):
                client.delete(*keys[start : start + 1000])
        except (redis.RedisError, OSError):
            pass
        client.close()

    header = ("backend", "operation", "p50 ms", "p99 ms")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(4)]
    print(f"velocity: {CALLS} calls per operation after {WARMUP} warm-up, {COUNTERS} counters per call")
    for row in [header, tuple("-" * w for w in widths), *rows]:
        print(
            "  ".join(
                cell.ljust(w) if i < 2 else cell.rjust(w)
                for i, (cell, w) in enumerate(zip(row, widths, strict=True))
            )
        )


if __name__ == "__main__":
    main()
