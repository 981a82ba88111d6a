"""CPU per request as the embedded state fills: the service's own ``Scorer``, in process, for minutes.

The HTTP soak (``benchmarks/soak.py``) mixes the state's growth with the host's noise; this takes the
host out. It wires the service's ``Scorer`` as ``bentoml serve`` does (``build_scorer``: model, online
store, SQLite velocity, graph and scoring log) on a private copy of the world, then scores the bodies
of random world events with fresh request ids, back to back, on the real clock, as a soak at full
speed would. Every ``--every`` requests it prints the CPU per request of the last block (the process's
CPU time, the checkpointer threads' included), the velocity store's rows and its most crowded
counter's members.

Prints one table. Usage: ``python benchmarks/growth.py [--root WORLD] [--requests 60000] [--every 10000]``.
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from serve import no_telemetry, print_aligned, private_world  # noqa: E402

from promoguard.settings import Settings  # noqa: E402


def velocity_rows(path: Path) -> tuple[int, int]:
    """Rows of the velocity store's members, and the members of its most crowded counter."""
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as conn:
        rows = conn.execute("SELECT count(*) FROM vset").fetchone()[0]
        top = conn.execute(
            "SELECT max(n) FROM (SELECT count(*) AS n FROM vset GROUP BY counter)"
        ).fetchone()[0]
    return int(rows), int(top or 0)


def main() -> None:
    """Score ``--requests`` bodies and print a row per ``--every``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default=os.environ.get("PROMOGUARD_BENCH_ROOT"),
                        help="a built world (default: build the 40k-event world first)")
    parser.add_argument("--requests", type=int, default=60_000)
    parser.add_argument("--every", type=int, default=10_000)
    args = parser.parse_args()
    no_telemetry()

    from scoring.schemas import ScoreRequest
    from serving.service import build_scorer

    rows: list[tuple[str, ...]] = []
    with tempfile.TemporaryDirectory(prefix="pg-growth-") as tmp:
        root, bodies = private_world(args.root, Path(tmp), "growth")
        settings = Settings.from_env({}, root=root)
        scorer = build_scorer(settings)
        velocity_db = settings.serving_dir / "velocity.db"
        started = time.monotonic()
        try:
            for block in range(args.requests // args.every):
                cpu = time.process_time()
                for i in range(block * args.every, (block + 1) * args.every):
                    body = {**bodies[i % len(bodies)], "request_id": f"growth-{i}"}
                    scorer.score(ScoreRequest.model_validate(body))
                per_request_ms = (time.process_time() - cpu) * 1000 / args.every
                members, crowded = velocity_rows(velocity_db)
                rows.append((f"{(block + 1) * args.every:,}", f"{time.monotonic() - started:.0f}",
                             f"{per_request_ms:.2f}", f"{members:,}", f"{crowded:,}"))
        finally:
            scorer.close()

    header = ("requests", "seconds", "CPU ms per request, last block", "velocity members",
              "most crowded counter")
    print(f"in-process Scorer on the embedded profile, {args.requests:,} requests back to back on the real "
          f"clock; CPU per request over each block of {args.every:,}")
    print_aligned([header, *rows], left=())


if __name__ == "__main__":
    main()
