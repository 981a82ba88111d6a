"""Offline feature store scaling: the point-in-time training frame, embedded (DuckDB) vs Feast's Spark store.

For each size, synthetic histories (``benchmarks/pipeline.py``'s keys: realistic key pools, 50 promotion
codes, 60 days) are built into the views' parquet files, applied to Feast and read back as the
training frame ``promoguard train`` assembles (every attempt labeled: the unlabeled presumed legit):

* ``embedded``: the numpy pipeline engine, then Feast's DuckDB/file offline store (the default profile);
* ``spark``: the Spark pipeline engine (up to ``--spark-build-max`` events; the numpy build above that,
  shown as ``numpy``), then Feast's Spark offline store on ``local[2]`` (``features.spark_offline``).

Each (size, path) runs in a fresh process so that peak memory is its own. Peak memory is the resident
set of the whole process tree (the Python driver plus, on Spark, its JVM), sampled every 0.1 s during the
retrieval (``retrieve MB``) and during the build (``build MB``). Prints one table: events, path, build
engine and seconds, apply seconds, retrieval seconds, training rows, the two peaks. A run longer than
``--timeout`` seconds prints ``timed out`` and the next one starts.

Usage: ``python benchmarks/offline_scaling.py [--sizes 100000,300000,1000000] [--paths embedded,spark]
[--spark-build-max 300000] [--driver-memory 2g] [--timeout 3600] [--max-rows N]``. With ``--max-rows``
the retrieval asks for a uniform sample of N labeled attempts, as ``promoguard train --max-rows`` does.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import subprocess
import sys
import tempfile
import threading
import time
from functools import partial
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

#: Days after which an unlabeled attempt counts as legit, as ``promoguard train`` presumes by default.
PRESUME_LEGIT_DAYS = 30.0


class PeakRss:
    """The peak resident memory of this process and all its descendants, sampled on a thread."""

    def __init__(self, interval_s: float = 0.1) -> None:
        """Start sampling every ``interval_s`` seconds."""
        import psutil

        self._me = psutil.Process()
        self._interval = interval_s
        self._stop = threading.Event()
        self.peak = 0
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _tree_rss(self) -> int:
        import psutil

        total = 0
        for proc in [self._me, *self._me.children(recursive=True)]:
            # A child may end between the listing and the read.
            with contextlib.suppress(psutil.Error):
                total += proc.memory_info().rss
        return total

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._tree_rss())
            self._stop.wait(self._interval)

    def stop(self) -> float:
        """Stop sampling; the peak in MB."""
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._tree_rss())
        return self.peak / 1e6


def measure(
    n: int, path: str, work: Path, spark_build_max: int, driver_memory: str, max_rows: int | None = None
) -> dict[str, Any]:
    """Build, apply and retrieve ``n`` events on ``path`` in this process; the figures as a dict.

    ``max_rows`` retrieves a uniform sample of that many labeled attempts (``train --max-rows``).
    """
    import pandas as pd

    from benchmarks.pipeline import synthetic_keys
    from features.pipeline import build_features, write_features
    from features.store import StoreConfig, apply, historical_features
    from training.dataset import assemble_training_frame, presume_unlabeled_legit

    keys, labels = synthetic_keys(n)
    engine = "spark" if path == "spark" and n <= spark_build_max else "numpy"
    cfg = StoreConfig(
        feast_dir=work / "feast",
        features_dir=work / "features",
        offline_store="spark" if path == "spark" else "file",
        spark_driver_memory=driver_memory,
    )
    if path == "spark":
        from features.pipeline import spark_session

        # The JVM starts outside the timed phases: its start-up is paid once per process, not per size.
        spark_session(cfg.spark_master, cfg.spark_driver_memory)
    rss = PeakRss()
    started = time.perf_counter()
    frames = build_features(keys, labels, engine=engine)  # type: ignore[arg-type]
    write_features(frames, cfg.features_dir)
    built = time.perf_counter()
    build_mb = rss.stop()
    del frames
    apply(cfg)
    applied = time.perf_counter()
    labels = presume_unlabeled_legit(keys, labels, maturity_days=PRESUME_LEGIT_DAYS)
    rss = PeakRss()
    started_retrieval = time.perf_counter()
    frame = assemble_training_frame(keys, labels, partial(historical_features, cfg), max_rows=max_rows)
    done = time.perf_counter()
    retrieve_mb = rss.stop()
    assert isinstance(frame, pd.DataFrame)
    return {
        "events": n,
        "path": path,
        "engine": engine,
        "build_s": built - started,
        "apply_s": applied - built,
        "retrieve_s": done - started_retrieval,
        "rows": len(frame),
        "build_mb": build_mb,
        "retrieve_mb": retrieve_mb,
    }


def _row(result: dict[str, Any]) -> str:
    return (
        f"{result['events']:>10,}  {result['path']:<8}  {result['engine']:<6}  {result['build_s']:>8.1f}  "
        f"{result['apply_s']:>7.1f}  {result['retrieve_s']:>10.1f}  {result['rows']:>10,}  "
        f"{result['build_mb']:>9,.0f}  {result['retrieve_mb']:>11,.0f}"
    )


def main() -> None:
    """Run every (size, path) in a child process and print the table row by row."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    # `make bench` runs every script with its defaults: the one size that ends in minutes here. The curve
    # is --sizes 100000,300000,1000000 (hours on two cores; see the README).
    parser.add_argument("--sizes", default="100000")
    parser.add_argument("--paths", default="embedded,spark")
    parser.add_argument("--spark-build-max", type=int, default=300_000)
    parser.add_argument("--driver-memory", default="2g", help="the Spark driver's heap (local: the job's)")
    parser.add_argument("--timeout", type=float, default=3600.0, help="seconds per (size, path) run")
    parser.add_argument(
        "--max-rows", type=int, default=None, help="retrieve a uniform sample of this many (train --max-rows)"
    )
    parser.add_argument("--child", nargs=2, metavar=("EVENTS", "PATH"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        with tempfile.TemporaryDirectory(prefix="promoguard-offline-") as tmp:
            result = measure(
                int(args.child[0]), args.child[1], Path(tmp), args.spark_build_max, args.driver_memory,
                args.max_rows,
            )
        print("RESULT " + json.dumps(result), flush=True)
        return
    sizes = [int(s) for s in args.sizes.split(",")]
    paths = [p.strip() for p in args.paths.split(",")]
    unknown = [p for p in paths if p not in ("embedded", "spark")]
    if unknown:
        parser.error(f"--paths: unknown path(s) {', '.join(unknown)}; expected embedded, spark")
    header = (
        f"{'events':>10}  {'path':<8}  {'build':<6}  {'build s':>8}  {'apply s':>7}  {'retrieve s':>10}  "
        f"{'rows':>10}  {'build MB':>9}  {'retrieve MB':>11}"
    )
    # Rows print as each run finishes so that a long run still leaves the earlier figures behind.
    print(header, flush=True)
    for n in sizes:
        for path in paths:
            command = [
                sys.executable, __file__, "--child", str(n), path,
                "--spark-build-max", str(args.spark_build_max), "--driver-memory", args.driver_memory,
                *([] if args.max_rows is None else ["--max-rows", str(args.max_rows)]),
            ]
            try:
                done = subprocess.run(
                    command, capture_output=True, text=True, timeout=args.timeout, check=False
                )
            except subprocess.TimeoutExpired:
                print(f"{n:>10,}  {path:<8}  timed out after {args.timeout:.0f}s", flush=True)
                continue
            lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
            if done.returncode != 0 or not lines:
                # The JVM's trace ends in "... N more": name the last exception line instead.
                output = (done.stderr or done.stdout).strip().splitlines()
                causes = [x for x in output if ("Error" in x or "Exception" in x) and not x[:1].isspace()]
                cause = (causes or output or ["no output"])[-1].strip()
                print(f"{n:>10,}  {path:<8}  failed ({done.returncode}): {cause[:160]}", flush=True)
                continue
            print(_row(json.loads(lines[-1][len("RESULT "):])), flush=True)


if __name__ == "__main__":
    main()
