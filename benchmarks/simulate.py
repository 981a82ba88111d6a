"""Simulator throughput: events generated per second and peak memory at two sizes (one table).

Each size runs in a fresh child process so that peak RSS belongs to that size alone.
Usage: ``python benchmarks/simulate.py [N ...]`` (default: 100000 1000000).
"""

from __future__ import annotations

import json
import subprocess
import sys

_CHILD = """
import json, resource, sys, time
from simulation.simulate import SimulationConfig, simulate_history
from simulation.simulate import _ip_space
_ip_space()  # one-time decode of the shipped cloud ranges, not per-history work
started = time.perf_counter()
history = simulate_history(SimulationConfig(n_events=int(sys.argv[1])))
seconds = time.perf_counter() - started
peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"events": len(history.events), "seconds": seconds, "peak_mb": peak_mb}))
"""


def run(n_events: int) -> dict[str, float]:
    """Simulate ``n_events`` in a child process and return its events, seconds and peak RSS."""
    out = subprocess.run(
        [sys.executable, "-c", _CHILD, str(n_events)], check=True, capture_output=True, text=True
    )
    result: dict[str, float] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    """Print one table: events, seconds, events/s, peak RSS MB per size."""
    sizes = [int(a) for a in sys.argv[1:]] or [100_000, 1_000_000]
    print(f"{'events':>10} {'seconds':>9} {'events/s':>10} {'peak RSS MB':>12}")
    for n in sizes:
        r = run(n)
        print(
            f"{int(r['events']):>10,} {r['seconds']:>9.1f} {r['events'] / r['seconds']:>10,.0f} "
            f"{r['peak_mb']:>12,.0f}"
        )


if __name__ == "__main__":
    main()
