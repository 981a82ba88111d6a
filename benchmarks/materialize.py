"""Materialization of a simulated world into the SQLite online store: Feast's own layout vs the packed one.

Simulates and builds a world with the command line in a temporary folder (or takes a built one with
``--root``), then applies and materializes it once per layout into a folder of its own and prints one
table: events, layout, seconds, MB on disk, rows. ``feast`` is Feast's row-per-feature SQLite store
(the layout before ``features/online_store.py``), ``packed`` the store serving uses now; with
``--redis`` (and a Redis at 127.0.0.1:6379) the Redis profile too, which reports no file size.
Usage: ``python benchmarks/materialize.py [--events 20000] [--root PATH] [--layouts feast,packed]``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sqlite3
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import replace
from pathlib import Path

import pandas as pd

from config.quiet import quiet_third_party_warnings
from features.pipeline import default_as_of
from features.store import StoreConfig, apply, materialize
from promoguard.settings import Settings

_CLI = str(Path(sys.executable).with_name("promoguard"))


def build_world(root: Path, events: int) -> None:
    """Simulate ``events`` attempts and build their features under ``root``, as ``make demo`` does."""
    env = {**os.environ, "PROMOGUARD_ROOT": str(root)}
    for step in (["simulate", "--events", str(events)], ["features", "build"]):
        subprocess.run([_CLI, *step], check=True, env=env, stdout=subprocess.DEVNULL)


def disk_mb(folder: Path) -> float:
    """Megabytes of every file under ``folder`` (the online store and its journal)."""
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / 1e6


def online_rows(path: Path) -> int:
    """Rows over every table of a SQLite online store."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        names = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        return sum(int(conn.execute(f'SELECT count(*) FROM "{n}"').fetchone()[0]) for n in names)
    finally:
        conn.close()


def run(settings: Settings, layout: str, work: Path) -> dict[str, object]:
    """Apply and materialize ``settings``' features with one layout; time and size the result."""
    base = StoreConfig.from_settings(settings)
    if layout == "redis":
        project = f"pgbench_{uuid.uuid4().hex[:8]}"
        cfg = replace(base, feast_dir=work / project, online_store="redis", project=project)
    else:
        cfg = replace(
            base, feast_dir=work / f"feast_{layout}", online_store="sqlite", sqlite_layout=layout  # type: ignore[arg-type]
        )
    keys = pd.read_parquet(settings.features_dir / "keys.parquet", columns=["ts"])
    end = default_as_of(keys).to_pydatetime()
    apply(cfg)
    started = time.perf_counter()
    materialize(cfg, end=end)
    seconds = time.perf_counter() - started
    row: dict[str, object] = {"layout": layout, "seconds": round(seconds, 1)}
    if layout == "redis":
        import redis

        client = redis.Redis(host="127.0.0.1", port=6379)
        row["MB on disk"] = "n/a"
        row["rows"] = sum(1 for _ in client.scan_iter(match=f"*{project}", count=5000))
        for key in client.scan_iter(match=f"*{project}", count=5000):
            client.delete(key)
    else:
        registry_mb = (cfg.feast_dir / "registry.db").stat().st_size / 1e6
        row["MB on disk"] = round(disk_mb(cfg.feast_dir) - registry_mb, 1)
        row["rows"] = online_rows(cfg.feast_dir / "online.db")
    return row


def main() -> None:
    """Parse the options, build or take a world, materialize it per layout and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=20_000, help="attempts to simulate (without --root)")
    parser.add_argument("--root", type=Path, default=None, help="a world with data/features already built")
    parser.add_argument("--layouts", default="feast,packed", help="comma-separated: feast, packed, redis")
    parser.add_argument("--redis", action="store_true", help="also the Redis profile")
    args = parser.parse_args()
    quiet_third_party_warnings()  # the table is the output, as the command line's is
    layouts = [v for v in args.layouts.split(",") if v] + (["redis"] if args.redis else [])
    with tempfile.TemporaryDirectory(prefix="pg-materialize-") as tmp:
        work = Path(tmp)
        root = args.root
        if root is None:
            root = work / "world"
            build_world(root, args.events)
        settings = Settings.from_env(root=root)
        events = len(pd.read_parquet(settings.raw_dir / "events.parquet", columns=["request_id"]))
        with contextlib.redirect_stdout(sys.stderr):  # Feast's progress; stdout is the table
            rows = [{"events": events, **run(settings, layout, work)} for layout in layouts]
    print(pd.DataFrame(rows).to_string(index=False))


if __name__ == "__main__":
    main()
