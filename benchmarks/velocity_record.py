"""What one velocity record writes and costs on a world's own counters, on one connection or two.

``benchmarks/velocity.py`` times the store on synthetic counters. This one fills a private copy of a
world's velocity store the way serving does (the service's ``Scorer`` scores ``--fill`` bodies in
process), works out the updates that ``--records`` further requests would record (their identity
keys through the scorer's own step, then :func:`scoring.scorer.attempt_updates`), and
replays them through :class:`features.velocity.SqliteVelocity` on copies of the filled file:

* one store: every record on one connection, as a lone thread of one worker would;
* two stores taking turns on one file: each record on the other connection, as a worker's threads
  and the two workers do; SQLite drops a connection's page cache whenever another connection has
  written to the file;
* 2 KiB and 1 KiB pages: the same file rebuilt with a smaller page size, one connection;
* without the per-minute counts' triggers, and without the members' time index: not options (reads
  need both), only what each costs of a record.

Checkpoints are held off during a run, so the log's growth is what the records wrote. Columns: the
median and p99 wall time of a record, the process CPU a record, and KB of write-ahead log a record.

Prints one table. Usage: ``python benchmarks/velocity_record.py [--root WORLD] [--fill 10000]
[--records 3000]``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from serve import no_telemetry, print_aligned, private_world  # noqa: E402

from promoguard.settings import Settings  # noqa: E402

#: A checkpoint interval longer than any run: the background thread turns the commits' own
#: checkpoints off and then never runs, so the log keeps every frame the records wrote.
NO_CHECKPOINTS_S = 86_400.0

Updates = list[tuple[str, list[tuple[str, str]]]]
#: A change to a copy of the velocity file, made before or after the stores open it.
Change = Callable[[Path], None]


def filled_store(root: str | None, scratch: Path, fill: int, records: int) -> tuple[Path, Updates, float]:
    """Score ``fill`` bodies on a private world.

    Returns its velocity file, the updates of ``records`` more requests and the store's retention.
    """
    from scoring.schemas import ScoreRequest
    from scoring.scorer import attempt_updates
    from serving.service import build_scorer

    world, bodies = private_world(root, scratch, "velocity-record")
    settings = Settings.from_env({}, root=world)
    scorer = build_scorer(settings)
    try:
        for i in range(fill):
            scorer.score(ScoreRequest.model_validate({**bodies[i % len(bodies)], "request_id": f"fill-{i}"}))
        updates: Updates = []
        for i in range(fill, fill + records):
            req = ScoreRequest.model_validate({**bodies[i % len(bodies)], "request_id": f"record-{i}"})
            # The scorer's own identity step, so that the rows carry exactly the keys serving records.
            row = scorer._resolve(req, "", time.perf_counter(), time.thread_time()).row  # noqa: SLF001
            updates.append((req.request_id, attempt_updates(row)))
    finally:
        scorer.close()
    path = settings.serving_dir / "velocity.db"
    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    return path, updates, settings.velocity_retention_days * 86_400


def _rebuild(path: Path, page_size: int) -> None:
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode = DELETE")
        conn.execute(f"PRAGMA page_size = {page_size}")
        conn.execute("VACUUM")
        conn.execute("PRAGMA journal_mode = WAL")
    finally:
        conn.close()


def _drop(*statements: str) -> Change:
    def change(path: Path) -> None:
        with sqlite3.connect(path) as conn:
            for statement in statements:
                conn.execute(statement)
    return change


def replay(
    source: Path, work: Path, updates: Updates, retention_s: float, stores: int,
    prepare: Change | None, after_open: Change | None,
) -> tuple[float, float, float, float]:
    """Record ``updates`` on a copy of ``source`` through ``stores`` stores in turn: p50, p99, CPU, log KB."""
    from features.velocity import SqliteVelocity

    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    path = work / "velocity.db"
    shutil.copy(source, path)
    if prepare is not None:
        prepare(path)
    opened = [SqliteVelocity(path, retention_s=retention_s, checkpoint_interval_s=NO_CHECKPOINTS_S)
              for _ in range(stores)]
    try:
        if after_open is not None:
            # The store creates its index when it opens; the share of it is measured without.
            after_open(path)
        base = time.time()
        wall: list[float] = []
        cpu = time.process_time()
        for i, (request_id, pairs) in enumerate(updates):
            started = time.perf_counter()
            opened[i % stores].record(request_id, base + i * 0.01, pairs)
            wall.append(time.perf_counter() - started)
        cpu_ms = (time.process_time() - cpu) * 1000 / len(updates)
        log_kb = (work / "velocity.db-wal").stat().st_size / 1024 / len(updates)
    finally:
        for store in opened:
            store.close()
    ms = sorted(w * 1000 for w in wall)
    return statistics.median(ms), ms[min(len(ms) - 1, int(0.99 * len(ms)))], cpu_ms, log_kb


def main() -> None:
    """Fill, replay each variant once, print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default=os.environ.get("PROMOGUARD_BENCH_ROOT"),
                        help="a built world (default: build the 40k-event world first)")
    parser.add_argument("--fill", type=int, default=10_000, help="requests scored before the records")
    parser.add_argument("--records", type=int, default=3_000, help="records replayed per variant")
    args = parser.parse_args()
    no_telemetry()

    variants: list[tuple[str, int, Change | None, Change | None]] = [
        ("one connection", 1, None, None),
        ("two connections taking turns", 2, None, None),
        ("2 KiB pages, one connection", 1, lambda p: _rebuild(p, 2048), None),
        ("1 KiB pages, one connection", 1, lambda p: _rebuild(p, 1024), None),
        ("share: without the per-minute counts' triggers", 1,
         _drop("DROP TRIGGER vset_counted", "DROP TRIGGER vset_moved"), None),
        ("share: without the members' time index", 1, None, _drop("DROP INDEX vset_by_time")),
    ]
    rows: list[tuple[str, ...]] = []
    with tempfile.TemporaryDirectory(prefix="pg-velocity-record-") as tmp:
        scratch = Path(tmp)
        source, updates, retention_s = filled_store(args.root, scratch, args.fill, args.records)
        counters = statistics.mean(len(pairs) for _, pairs in updates)
        for name, stores, prepare, after_open in variants:
            p50, p99, cpu_ms, log_kb = replay(source, scratch / "replay", updates, retention_s, stores,
                                              prepare, after_open)
            rows.append((name, f"{p50:.3f}", f"{p99:.3f}", f"{cpu_ms:.3f}", f"{log_kb:.0f}"))
    header = ("variant", "p50 ms", "p99 ms", "CPU ms/record", "log KB/record")
    print(f"velocity record on a world's counters: {args.records:,} records of {counters:.1f} updates "
          f"each after {args.fill:,} scored requests; load average {os.getloadavg()[0]:.2f}")
    print_aligned([header, *rows])


if __name__ == "__main__":
    main()
