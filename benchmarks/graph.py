"""The identity graph: the batch build over a simulated history, and online resolution per request.

Prints one table:

* ``batch``: :func:`features.graph.build_graph` over the keys of ``--events`` simulated events (default
  1,000,000): seconds and events per second (the target is 60 s for a million);
* ``online <store>``: p50 and p99 milliseconds of one :meth:`resolve` (one attempt, atomic, idempotent)
  against SQLite (WAL file in a temporary folder) and Redis (127.0.0.1:6379, throwaway key prefix),
  replaying the first ``--online`` attempts of the same history in time order, so persons form as they
  would in production.

The keys come from the simulator through the identity layer (normalised and keyed), which is what the
batch build reads in ``promoguard features build``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import pandas as pd
import redis

from features.graph import RedisGraph, SqliteGraph, attempts_in_order, build_graph, timed_resolutions
from features.identity import IdentityConfig, IdentityResolver, resolve_frame
from features.velocity import redis_client
from simulation.simulate import SimulationConfig, simulate_history


def _keys(n_events: int) -> pd.DataFrame:
    history = simulate_history(SimulationConfig(n_events=n_events, seed=11))
    return resolve_frame(history.events, IdentityResolver(IdentityConfig(pepper="benchmark-pepper")))


def _percentiles(ms: list[float]) -> tuple[float, float]:
    ordered = sorted(ms)
    return statistics.median(ordered), ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]


def main() -> None:
    """Build the keys, time the batch build and the online stores, print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--online", type=int, default=5_000)
    parser.add_argument(
        "--keys", type=Path, help="Read the keys from this parquet, or write them there first."
    )
    args = parser.parse_args()

    started = time.perf_counter()
    if args.keys is not None and args.keys.exists():
        keys = pd.read_parquet(args.keys)
    else:
        keys = _keys(args.events)
        if args.keys is not None:
            keys.to_parquet(args.keys, index=False)
    print(f"keys of {len(keys):,} simulated events in {time.perf_counter() - started:.1f} s", file=sys.stderr)

    started = time.perf_counter()
    frame, _ = build_graph(keys)
    batch_s = time.perf_counter() - started
    persons = frame["person_id"].nunique()
    linked = float((frame["person_linked_evidence"] > 0).mean())

    attempts = list(attempts_in_order(keys.head(args.online)))
    rows: list[tuple[str, str, str, str]] = [
        ("batch build", f"{len(keys):,} events", f"{batch_s:.1f} s",
         f"{len(keys) / batch_s:,.0f} events/s; {persons:,} persons, {linked:.1%} of attempts linked"),
    ]
    with tempfile.TemporaryDirectory() as tmp:
        # As the service opens it: WAL checkpoints in the background.
        store = SqliteGraph(Path(tmp) / "graph.db", checkpoint_interval_s=0.5)
        p50, p99 = _percentiles(timed_resolutions(store, attempts))
        store.close()
        rows.append(("online sqlite", f"{len(attempts):,} resolutions", f"p50 {p50:.3f} ms",
                     f"p99 {p99:.3f} ms"))
    client = redis_client("redis://127.0.0.1:6379/0", socket_timeout_s=1.0)
    prefix = f"pgbench:{uuid.uuid4().hex}:g:"
    try:
        client.ping()
        p50, p99 = _percentiles(timed_resolutions(RedisGraph(client, prefix=prefix), attempts))
        rows.append(("online redis", f"{len(attempts):,} resolutions", f"p50 {p50:.3f} ms",
                     f"p99 {p99:.3f} ms"))
    except (redis.RedisError, OSError) as exc:
        rows.append(("online redis", "not run", type(exc).__name__, "no Redis at 127.0.0.1:6379"))
    finally:
        stale = list(client.scan_iter(match=f"{prefix}*", count=1000))
        for start in range(0, len(stale), 1000):
            client.delete(*stale[start:start + 1000])

    print("| step | size | time | detail |")
    print("| --- | --- | --- | --- |")
    for row in rows:
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
