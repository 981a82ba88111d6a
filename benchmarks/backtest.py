"""Backtest replay speed: attempts replayed per second through the service's decision path (one table).

Replays the whole history of a world (warm-up included, every attempt scored by the real ``Scorer``:
identity, velocity, caps, rules, model, scoring log), once with the champion alone and once with the
champion and the rules side by side (two forked processes), and prints attempts, wall seconds,
attempts per second and milliseconds per attempt. The budget is the 200k-event demo world in at most
3 minutes on 2 cores.

Usage: ``python benchmarks/backtest.py [--root EXISTING_WORLD] [--days N]``. Without ``--root`` (or
``PROMOGUARD_BENCH_ROOT``) a small world is built in a temporary folder with the command line.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd


def main() -> None:
    """Time the replay of a world's history with one and with two configurations."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default=os.environ.get("PROMOGUARD_BENCH_ROOT"))
    parser.add_argument("--days", type=float, default=None, help="Replay only the last N days.")
    args = parser.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from benchmarks.serve import build_world
    from config.quiet import quiet_mlflow
    from promoguard.backtest import Window, run_backtest
    from promoguard.settings import Settings

    quiet_mlflow()  # the table is the output, as the command line's is
    with tempfile.TemporaryDirectory(prefix="promoguard-bench-backtest-") as tmp:
        root = Path(args.root) if args.root else Path(tmp)
        if not args.root:
            build_world(root)
        settings = Settings.from_env({}, root=root)
        events = pd.read_parquet(settings.raw_dir / "events.parquet", columns=["ts"])
        ts = pd.to_datetime(events["ts"], utc=True)
        end = ts.max() + pd.Timedelta(microseconds=1)
        start = ts.min() if args.days is None else end - pd.Timedelta(days=args.days)
        window = Window(start, end, start)
        print(f"{'configurations':<18} {'attempts':>9} {'seconds':>8} {'attempts/s':>11} {'ms/attempt':>11}")
        for configurations in (["champion"], ["champion", "rules"]):
            started = time.perf_counter()
            report = run_backtest(settings, window=window, configurations=configurations)
            seconds = time.perf_counter() - started
            n = report["window"]["attempts"] * len(configurations)
            print(
                f"{'+'.join(configurations):<18} {n:>9,} {seconds:>8.1f} {n / seconds:>11,.0f} "
                f"{1000 * seconds / n:>11.2f}"
            )


if __name__ == "__main__":
    main()
