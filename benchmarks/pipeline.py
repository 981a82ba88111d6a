"""Batch feature pipeline throughput: synthetic keys frames through build_features + write_features.

Prints one table: events, engine, seconds, rows written, events/s. The default in-process engine
("numpy", two threads, see features.pipeline) runs at every size; the same SQL that Spark runs, on
DuckDB ("duckdb", threads=2), and on Spark (local[2]) run at the smallest size only. Keys are drawn
from pools sized like a mid-size store's history (e.g. 200k devices and 150k households per million
events, 50 promotion codes), spread over 60 days, so windows hold realistic numbers of earlier events.

Usage: ``python -m benchmarks.pipeline [--sizes 100000,1000000] [--sql/--no-sql] [--spark/--no-spark]``.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from features.pipeline import KEY_COLUMNS, build_features, write_features

#: Pool size per million events for each key column.
POOLS_PER_MILLION: dict[str, int] = {
    "device_key": 200_000,
    "household_key": 150_000,
    "address_key": 160_000,
    "bill_household_key": 150_000,
    "payment_key": 180_000,
    "phone_key": 170_000,
    "email_key": 300_000,
    "account_key": 250_000,
    "network_key": 40_000,
    "ip_key": 120_000,
    "local_ip_key": 60_000,
    "referrer_key": 20_000,
}
CODES = 50
DAYS = 60


def synthetic_keys(n: int, seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """A keys frame and labels frame of ``n`` events with keys drawn from realistic pools."""
    rng = np.random.default_rng(seed)
    start = pd.Timestamp("2026-01-01", tz="UTC")
    ts = start + pd.to_timedelta(np.sort(rng.integers(0, DAYS * 86_400 * 1000, n)), unit="ms")
    frame = pd.DataFrame(
        {
            "request_id": np.char.add("r", np.arange(n).astype(str)).astype(object),
            "ts": ts,
            "promo_code": np.char.add("CODE", rng.integers(0, CODES, n).astype(str)).astype(object),
            "promo_type": "welcome",
            "promo_valid": rng.random(n) > 0.1,
            "outcome": np.array(["redeemed", "abandoned", "rejected"], dtype=object)[
                rng.choice(3, n, p=[0.6, 0.3, 0.1])
            ],
            "discount_value": 10.0,
            "is_guest": rng.random(n) < 0.25,
            "account_segment": None,
        }
    )
    for column in KEY_COLUMNS:
        pool = max(1, POOLS_PER_MILLION[column] * n // 1_000_000)
        # Zipf-like reuse: a few identities are very busy, most appear once or twice.
        idx = np.minimum((rng.pareto(1.2, n) * pool / 20).astype(np.int64), pool - 1)
        keys = np.char.add(column[:2], np.char.zfill(idx.astype(str), 30)).astype(object)
        keys[rng.random(n) < 0.05] = None
        frame[column] = keys
    frame.loc[frame["is_guest"], "account_key"] = None
    created = frame["ts"] - pd.to_timedelta(rng.integers(0, 90 * 86_400, n), unit="s")
    frame["account_created_at"] = created.where(~frame["is_guest"])
    picked = rng.random(n) < 0.05
    labels = pd.DataFrame(
        {
            "request_id": frame.loc[picked, "request_id"].to_numpy(),
            "label": np.where(rng.random(int(picked.sum())) < 0.4, "abuse", "legit").astype(object),
            "label_source": "manual_review",
            "label_ts": (
                frame.loc[picked, "ts"]
                + pd.to_timedelta(rng.integers(3600, 14 * 86_400, int(picked.sum())), unit="s")
            ).to_numpy(),
        }
    )
    labels["label_ts"] = pd.to_datetime(labels["label_ts"], utc=True)
    return frame, labels


def run(n: int, engine: str) -> tuple[float, int]:
    """Build and write features for ``n`` events; return seconds and rows written."""
    keys, labels = synthetic_keys(n)
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        frames = build_features(keys, labels, engine=engine)  # type: ignore[arg-type]
        write_features(frames, Path(tmp))
        seconds = time.perf_counter() - started
    return seconds, sum(len(f) for f in frames.values())


def main() -> None:
    """Run the configured sizes and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="100000,1000000")
    parser.add_argument("--sql", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--spark", action=argparse.BooleanOptionalAction, default=True)
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    plan = [(n, "numpy") for n in sizes]
    if args.sql:
        plan.append((min(sizes), "duckdb"))
    if args.spark:
        plan.append((min(sizes), "spark"))
    # Rows print as each run finishes so a long run still leaves the earlier figures behind.
    header = f"{'events':>10}  {'engine':<7}  {'seconds':>8}  {'rows written':>12}  {'events/s':>10}"
    print(header, flush=True)
    for n, engine in plan:
        seconds, rows = run(n, engine)
        print(f"{n:>10,}  {engine:<7}  {seconds:>8.1f}  {rows:>12,}  {n / seconds:>10,.0f}", flush=True)


if __name__ == "__main__":
    main()
