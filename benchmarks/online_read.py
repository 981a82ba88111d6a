"""Online read latency of one request with every entity view: Feast SDK vs the store's fast path.

Builds a small feature set in a temporary folder, applies and materializes it into SQLite and (when
it answers) the Redis at 127.0.0.1:6379, then times ``OnlineFeatures.read`` and prints one table.
Usage: ``python benchmarks/online_read.py [--reads 1000] [--entities 200]``.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
import time
import uuid
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd

from config.quiet import quiet_third_party_warnings
from features.definitions import feature_views
from features.store import OnlineFeatures, StoreConfig, apply_and_materialize, join_keys

T0 = datetime(2024, 3, 1, tzinfo=UTC)


def write_sources(features_dir: Path, entities: int, rng: np.random.Generator) -> None:
    """One row per entity and view, with random values of the catalog dtypes."""
    features_dir.mkdir(parents=True, exist_ok=True)
    for view in feature_views():
        df = pd.DataFrame({k: [f"{k}-{i}" for i in range(entities)] for k in view.join_keys})
        ts = pd.Series([T0 + timedelta(minutes=i) for i in range(entities)]).astype("datetime64[us, UTC]")
        df["event_timestamp"] = ts
        df["created_timestamp"] = ts
        for f in view.features:
            if f.dtype == "int64":
                df[f.name] = rng.integers(0, 50, entities).astype("int64")
            else:
                df[f.name] = rng.uniform(0, 30, entities)
        df.to_parquet(features_dir / f"{view.name}.parquet", index=False)


def time_reads(online: OnlineFeatures, rows: list[dict[str, str | None]]) -> tuple[float, float]:
    """p50 and p99 in milliseconds of one ``read`` per row (after a warm-up)."""
    for row in rows[:50]:
        online.read(row)
    samples = []
    for row in rows:
        start = time.perf_counter()
        online.read(row)
        samples.append((time.perf_counter() - start) * 1000)
    return float(np.percentile(samples, 50)), float(np.percentile(samples, 99))


def redis_answers() -> bool:
    """True when the Redis at 127.0.0.1:6379 answers a ping."""
    try:
        import redis

        return bool(redis.Redis(host="127.0.0.1", port=6379, socket_timeout=0.5).ping())
    except Exception:
        return False


def main() -> None:
    """Run the benchmark and print the table."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--reads", type=int, default=1000)
    parser.add_argument("--entities", type=int, default=200)
    args = parser.parse_args()
    quiet_third_party_warnings()  # the table is the output, as the command line's is
    rng = np.random.default_rng(7)
    results: list[tuple[str, str, float, float]] = []
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        cfg = StoreConfig(feast_dir=base / "feast", features_dir=base / "features")
        write_sources(cfg.features_dir, args.entities, rng)
        picks = rng.integers(0, args.entities, args.reads)
        rows: list[dict[str, str | None]] = [{k: f"{k}-{i}" for k in join_keys()} for i in picks]
        profiles = [("sqlite", cfg)]
        project = f"bench_{uuid.uuid4().hex[:8]}"
        if redis_answers():
            profiles.append(
                ("redis", replace(cfg, feast_dir=base / project, online_store="redis", project=project))
            )
        for name, pcfg in profiles:
            with contextlib.redirect_stdout(sys.stderr):  # Feast's progress; stdout is the table
                apply_and_materialize(pcfg, T0 + timedelta(days=30))
            for label, fast in (("sdk get_online_features", False), ("fast path", True)):
                online = OnlineFeatures(pcfg, fast=fast, refresh_registry=False)
                results.append((label, name, *time_reads(online, rows)))
        if len(profiles) > 1:
            import redis

            client = redis.Redis(host="127.0.0.1", port=6379)
            for key in client.scan_iter(match=f"*{project}", count=1000):
                client.delete(key)
    views = len(feature_views())
    print(f"\nOnline read of one request ({views} views, {args.reads} reads, {args.entities} entities/view)")
    print(f"{'path':<26}{'store':<8}{'p50 ms':>10}{'p99 ms':>10}")
    for label, store, p50, p99 in results:
        print(f"{label:<26}{store:<8}{p50:>10.3f}{p99:>10.3f}")
    if len(profiles) == 1:
        print("(redis skipped: 127.0.0.1:6379 does not answer)")


if __name__ == "__main__":
    main()
