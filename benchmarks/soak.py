"""A soak over HTTP: /score at a steady rate for minutes while `promoguard maintenance` runs on a schedule.

Prints one table, a row per minute of the soak:

* requests sent so far, and the latency (p50 and p99 from each request's scheduled send), errors and
  rules-fallback answers of that minute;
* the service's state in MB: each SQLite file (the scoring log, and on the embedded profile the
  velocity store and the identity graph) without its write-ahead log, and with ``--profile redis`` the
  Redis's used memory (velocity, caps and graph), with their growth per 1,000 requests over that minute;
* the write-ahead logs together (bounded by the service's checkpointers, not by retention);
* the maintenance runs that finished in that minute and how long each took, with the seconds of each
  store's retention in brackets (the command's own "took" line; the rest is the process's start).

The service is the real one (``bentoml serve``, its default workers) on a private copy of the world
that ``benchmarks/serve.py`` builds or reuses (``--root`` / ``PROMOGUARD_BENCH_ROOT``). The load is
``benchmarks/serve.py``'s open-loop pacer on the bodies of random world events. Maintenance is the
operator's command, ``promoguard maintenance --root``, run as a separate process every ``--every``
seconds while the load goes on. ``--profile redis`` puts velocity, caps and the identity graph on a
private ``redis-server`` started for the run (as ``benchmarks/faults.py`` does); the online store and
the scoring log stay on SQLite.

Retention is shortened so that it applies within the soak: decisions and identity-graph entries are
kept ``--retention-minutes`` (the defaults are 90 and 400 days). The velocity store cannot keep less
than its longest window (30 days), so it grows for the whole soak; ``benchmarks/disk.py`` shows it
level off over simulated days.

Usage: ``python benchmarks/soak.py [--root WORLD] [--profile sqlite|redis] [--rate 200] [--minutes 10]
[--retention-minutes 3] [--every 60]``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from faults import _pct as percentile  # noqa: E402
from faults import private_redis  # noqa: E402
from serve import _open_loop, no_telemetry, print_aligned, private_world, promoguard_service  # noqa: E402

from promoguard.settings import Settings  # noqa: E402

#: The service's state files under its serving folder, in the table's order, per profile.
STATE_FILES = {
    "sqlite": (("scoring log", "scores.db"), ("velocity", "velocity.db"), ("graph", "graph.db")),
    "redis": (("scoring log", "scores.db"),),
}


@dataclass
class Maintenance:
    """``promoguard maintenance`` every ``every_s`` seconds in a thread, until stopped."""

    root: Path
    env: dict[str, str]
    every_s: float
    #: (monotonic time it finished, seconds it took, exit status, seconds per store) per run.
    runs: list[tuple[float, float, int, str]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        """Start the schedule; the first run comes ``every_s`` seconds from now (never when 0)."""
        if self.every_s <= 0:
            return
        self._thread = threading.Thread(target=self._run, name="maintenance", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the schedule and wait for a run in progress."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def _run(self) -> None:
        cli = str(Path(sys.executable).parent / "promoguard")
        while not self._stop.wait(self.every_s):
            started = time.monotonic()
            done = subprocess.run([cli, "maintenance", "--root", str(self.root)], env=self.env,
                                  capture_output=True, text=True, check=False)
            self.runs.append((time.monotonic(), time.monotonic() - started, done.returncode,
                              store_seconds(done.stdout)))


def store_seconds(output: str) -> str:
    """The seconds per store of ``promoguard maintenance``'s "took" line, shortened: ``log 1.2, ...``."""
    took = re.search(r"took (.*)", " ".join(output.split()))
    if took is None:
        return ""
    parts = re.findall(r"(scoring log|velocity|identity graph)\S*(?: \(\w+\))? ([\d.]+) s", took.group(1))
    short = {"scoring log": "log", "velocity": "velocity", "identity graph": "graph"}
    return ", ".join(f"{short[name]} {float(seconds):.1f}" for name, seconds in parts)


def file_mb(path: Path) -> float:
    """Size of ``path`` in MB, 0 when it does not exist."""
    try:
        return path.stat().st_size / 1e6
    except FileNotFoundError:
        return 0.0


@contextmanager
def state_backend(profile: str) -> Iterator[tuple[dict[str, str], Callable[[], dict[str, float]]]]:
    """The service's extra settings for ``profile`` and a reader of the MB held outside SQLite files."""
    if profile == "sqlite":
        yield {}, dict
        return
    import redis

    with private_redis() as (_, port):
        client = redis.Redis(host="127.0.0.1", port=port, socket_timeout=5.0)

        def used() -> dict[str, float]:
            return {"redis": int(client.info("memory")["used_memory"]) / 1e6}

        yield {"PROMOGUARD_VELOCITY": "redis", "PROMOGUARD_REDIS_URL": f"redis://127.0.0.1:{port}/0"}, used
        client.close()


def soak(
    url: str, serving_dir: Path, files: tuple[tuple[str, str], ...], outside: Callable[[], dict[str, float]],
    bodies: list[dict[str, object]], rate: float, minutes: int, maintenance: Maintenance,
) -> list[dict[str, str]]:
    """Run the load minute by minute; a table row after each minute."""
    rows: list[dict[str, str]] = []
    sent_total = 0

    def sizes_now() -> dict[str, float]:
        return {**{name: file_mb(serving_dir / file) for name, file in files}, **outside()}

    before = sizes_now()
    for minute in range(1, minutes + 1):
        latencies, sent, errors, fallbacks = asyncio.run(_open_loop(url, bodies, rate, 60.0, f"soak{minute}"))
        sent_total += sent
        now = time.monotonic()
        sizes = sizes_now()
        wal = sum(file_mb(serving_dir / f"{file}-wal") for _, file in files)
        growth_kb = (sum(sizes.values()) - sum(before.values())) * 1000.0 / (sent / 1000.0)
        finished = [r for r in maintenance.runs if now - 60.0 < r[0] <= now]
        ms = sorted(x * 1000.0 for x in latencies)
        rows.append({
            "minute": str(minute),
            "sent": f"{sent_total:,}",
            "p50 ms": f"{percentile(ms, 0.5):.1f}",
            "p99 ms": f"{percentile(ms, 0.99):.1f}",
            "errors": str(errors),
            "fallbacks": str(fallbacks),
            **{f"{name} MB": f"{mb:.1f}" for name, mb in sizes.items()},
            "KB per 1k req": f"{growth_kb:,.0f}",
            "WAL MB": f"{wal:.0f}",
            "maintenance s": ", ".join(
                f"{d:.1f}" + (f" ({parts})" if parts else "") + ("" if rc == 0 else f" (exit {rc})")
                for _, d, rc, parts in finished) or "-",
        })
        before = sizes
    return rows


def print_table(rows: list[dict[str, str]], args: argparse.Namespace) -> None:
    """The one table this script prints."""
    load = os.getloadavg()
    schedule = f"`promoguard maintenance` every {args.every:g} s" if args.every > 0 else "no maintenance"
    print(f"/score soak over HTTP, {args.profile} profile, at {args.rate:g} req/s for {args.minutes} min, "
          f"open loop; {schedule}; decisions and graph entries kept {args.retention_minutes:g} min, velocity "
          f"31 days; host load average {load[0]:.2f} on {os.cpu_count()} CPUs")
    header = list(rows[0])
    print_aligned([header, *([row[h] for h in header] for row in rows)], left=())


def main() -> None:
    """Build or reuse a world, run the soak and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default=os.environ.get("PROMOGUARD_BENCH_ROOT"),
                        help="an existing built world to reuse (default: build one in a temporary folder)")
    parser.add_argument("--profile", choices=("sqlite", "redis"), default="sqlite",
                        help="where velocity, caps and the identity graph live")
    parser.add_argument("--rate", type=float, default=200.0, help="requests per second")
    parser.add_argument("--minutes", type=int, default=10, help="minutes of load")
    parser.add_argument("--retention-minutes", type=float, default=3.0,
                        help="how long decisions and identity-graph entries are kept")
    parser.add_argument("--every", type=float, default=60.0,
                        help="seconds between two maintenance runs (0: no maintenance)")
    args = parser.parse_args()
    no_telemetry()
    retention_days = str(args.retention_minutes / 1440.0)
    retention = {"PROMOGUARD_SCORES_RETENTION_DAYS": retention_days,
                 "PROMOGUARD_GRAPH_RETENTION_DAYS": retention_days}

    with tempfile.TemporaryDirectory(prefix="pg-soak-") as tmp:
        root, bodies = private_world(args.root, Path(tmp), "soak")
        os.sync()
        serving_dir = Settings.from_env({}, root=root).serving_dir
        with state_backend(args.profile) as (backend, outside):
            env = {**retention, **backend}
            with promoguard_service(root, env) as url:
                maintenance = Maintenance(root, {**os.environ, **env}, args.every)
                maintenance.start()
                try:
                    rows = soak(url, serving_dir, STATE_FILES[args.profile], outside, bodies, args.rate,
                                args.minutes, maintenance)
                finally:
                    maintenance.stop()
    print_table(rows, args)


if __name__ == "__main__":
    main()
