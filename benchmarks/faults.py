"""/score latency while the velocity Redis freezes and resumes, with the circuit breakers on and off.

Prints one table: per profile (breakers on, the default; breakers off, ``PROMOGUARD_BREAKER_FAILURES=0``)
and phase (before, during and after a freeze), the p50/p99/max latency from each request's *scheduled*
send time (open loop, as ``benchmarks/serve.py`` measures), the answers slower than 1 s, the errors and
the share answered by the rules fallback. Each profile gets its own private ``redis-server`` (free port,
no persistence) behind velocity, caps and the identity graph; the online store stays SQLite. Under a
steady load the Redis process is frozen with SIGSTOP for ``--freeze`` seconds (a hung server: it
accepts connections and answers nothing), then resumed with SIGCONT. A request belongs to the phase
its send was scheduled in. The last column is how often each breaker opened during the phase (all
workers, read from ``/metrics`` at the phase's end).

Usage: ``python benchmarks/faults.py [--root EXISTING_WORLD] [--rate 130] [--before 6] [--freeze 9]
[--after 9] [--profiles on,off]``. Without ``--root`` (or ``PROMOGUARD_BENCH_ROOT``) a world is built
in a temporary folder first, as ``benchmarks/serve.py`` does. Latency on a shared 2-core host moves
with the host's load; compare the profiles of one run, not runs of different hours.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks.serve import (  # noqa: E402 - the repository must be importable first
    WARMUP_RATE,
    WARMUP_S,
    _Connections,
    _open_loop,
    build_world,
    copy_world,
    print_aligned,
    promoguard_service,
    request_bodies,
)
from promoguard.demo import free_port  # noqa: E402

BODIES = 2000
PHASES = ("before", "during", "after")
DEPENDENCIES = ("velocity", "identity_graph", "online_features")


@dataclass(frozen=True)
class Sent:
    """One request of the load: when it was scheduled (s from the start), how long it took, how it ended."""

    at_s: float
    latency_s: float
    ok: bool
    fallback: bool


@contextmanager
def private_redis() -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    """A throwaway redis-server on a free port; resumed and stopped when the block ends."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("redis-server is not installed: this benchmark freezes a private Redis")
    port = free_port()
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 15.0
        while True:
            with suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
                sock.sendall(b"PING\r\n")
                if sock.recv(64).startswith(b"+PONG"):
                    break
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"redis-server did not start on port {port}")
            time.sleep(0.1)
        yield proc, port
    finally:
        with suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGCONT)
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


async def _load_with_freeze(
    url: str, bodies: list[dict[str, Any]], rate: float, seconds: float, pid: int, freeze_at: float,
    resume_at: float,
) -> tuple[list[Sent], list[dict[str, float]]]:
    """``rate`` requests/s for ``seconds``; SIGSTOP ``pid`` at ``freeze_at`` s, SIGCONT at ``resume_at``.

    Returns every request and the breakers' openings so far at the end of each phase.
    """
    parts = urlsplit(url)
    pool = _Connections(parts.hostname or "127.0.0.1", parts.port or 80)
    total = int(rate * seconds)
    run = uuid.uuid4().hex[:8]
    # Encoded before the clock starts, so the generator spends its time on the wire only.
    payloads = [json.dumps({**bodies[i % len(bodies)], "request_id": f"faults-{run}-{i}"}).encode()
                for i in range(total)]
    out: list[Sent] = []
    start = time.perf_counter() + 0.2

    async def one(i: int) -> None:
        when = start + i / rate
        delay = when - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        ok = fallback = False
        try:
            status, answer = await asyncio.wait_for(pool.post("/score", payloads[i]), timeout=10.0)
            ok = status == 200
            fallback = ok and b'"fallback":"rules"' in answer.replace(b" ", b"")
        except (TimeoutError, OSError, asyncio.IncompleteReadError, ValueError, IndexError):
            pass
        out.append(Sent(when - start, time.perf_counter() - when, ok, fallback))

    async def signal_at(offset: float, sig: signal.Signals) -> None:
        await asyncio.sleep(max(0.0, start + offset - time.perf_counter()))
        # Read before the signal, so that the openings counted belong to the phase that just ended.
        opened.append(await asyncio.to_thread(breakers_opened, url))
        os.kill(pid, sig)

    opened: list[dict[str, float]] = []
    await asyncio.gather(
        signal_at(freeze_at, signal.SIGSTOP), signal_at(resume_at, signal.SIGCONT),
        *(one(i) for i in range(total)),
    )
    pool.close()
    opened.append(await asyncio.to_thread(breakers_opened, url))
    return out, opened


def _pct(sorted_ms: list[float], q: float) -> float:
    if not sorted_ms:
        return float("nan")
    return sorted_ms[min(len(sorted_ms) - 1, max(0, math.ceil(q * len(sorted_ms)) - 1))]


def phase_row(sent: list[Sent]) -> dict[str, Any]:
    """Latency percentiles, answers over 1 s, errors and the fallback share of one phase's requests."""
    ms = sorted(s.latency_s * 1000.0 for s in sent)
    return {
        "sent": len(sent), "p50": _pct(ms, 0.5), "p99": _pct(ms, 0.99), "max": ms[-1] if ms else float("nan"),
        "over_1s": sum(m > 1000.0 for m in ms), "errors": sum(not s.ok for s in sent),
        "fallback": sum(s.fallback for s in sent) / len(sent) if sent else 0.0,
    }


def breakers_opened(url: str) -> dict[str, float]:
    """How often each breaker opened so far, all workers together, from ``/metrics``."""
    import httpx

    text = httpx.get(f"{url}/metrics", timeout=10.0).text
    found: dict[str, float] = {}
    for dep in DEPENDENCIES:
        match = re.search(
            rf'^promoguard_breaker_opened_total{{[^}}]*dependency="{dep}"[^}}]*}} ([0-9.eE+-]+)$', text, re.M
        )
        found[dep] = 0.0 if match is None else float(match.group(1))
    return found


def opened_between(before: dict[str, float], after: dict[str, float]) -> str:
    """The breakers that opened between two readings: ``velocity 3, identity_graph 2`` (or ``none``)."""
    parts = [f"{dep} {after[dep] - before.get(dep, 0.0):g}" for dep in DEPENDENCIES
             if after[dep] - before.get(dep, 0.0) > 0]
    return ", ".join(parts) or "none"


def measure(
    source: Path, scratch: Path, profile: str, bodies: list[dict[str, Any]], args: argparse.Namespace
) -> list[tuple[str, str, dict[str, Any], str]]:
    """One profile: its own world copy, Redis and service; a row per phase."""
    root = scratch / f"breakers-{profile}"
    copy_world(source, root)
    os.sync()
    with private_redis() as (redis_proc, port):
        env = {"PROMOGUARD_VELOCITY": "redis", "PROMOGUARD_REDIS_URL": f"redis://127.0.0.1:{port}/0"}
        if profile == "off":
            env["PROMOGUARD_BREAKER_FAILURES"] = "0"
        with promoguard_service(root, env) as url:
            asyncio.run(_open_loop(url, bodies, WARMUP_RATE, WARMUP_S, "warm"))
            seconds = args.before + args.freeze + args.after
            print(f"measuring breakers {profile}: {args.rate:g} req/s for {seconds:g} s, Redis frozen "
                  f"from {args.before:g} s to {args.before + args.freeze:g} s", file=sys.stderr)
            warm = breakers_opened(url)
            sent, opened = asyncio.run(_load_with_freeze(url, bodies, args.rate, seconds, redis_proc.pid,
                                                         args.before, args.before + args.freeze))
    bounds = {"before": (0.0, args.before), "during": (args.before, args.before + args.freeze),
              "after": (args.before + args.freeze, math.inf)}
    readings = [warm, *opened]
    return [(f"breakers {profile}", phase,
             phase_row([s for s in sent if bounds[phase][0] <= s.at_s < bounds[phase][1]]),
             opened_between(readings[k], readings[k + 1]))
            for k, phase in enumerate(PHASES)]


def print_table(rows: list[tuple[str, str, dict[str, Any], str]], args: argparse.Namespace) -> None:
    """The one table this script prints."""
    load = os.getloadavg()
    print(f"/score over HTTP, open loop at {args.rate:g} req/s, velocity and identity graph on a private "
          f"Redis frozen (SIGSTOP) for {args.freeze:g} s after {args.before:g} s, then resumed for "
          f"{args.after:g} s; latency from the scheduled send; host load average {load[0]:.2f} on "
          f"{os.cpu_count()} CPUs")
    header = ("profile", "phase", "sent", "p50 ms", "p99 ms", "max ms", "> 1 s", "errors", "fallback",
              "breakers opened")
    lines = [header] + [
        (name, phase, str(r["sent"]), f"{r['p50']:.1f}", f"{r['p99']:.1f}", f"{r['max']:.1f}",
         str(r["over_1s"]), str(r["errors"]), f"{100 * r['fallback']:.1f}%", opened)
        for name, phase, r, opened in rows
    ]
    print_aligned(lines, left=(0, 1, 9))


def main() -> None:
    """Build or reuse a world, then measure each profile through a freeze and print the table."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--root", default=os.environ.get("PROMOGUARD_BENCH_ROOT"),
                        help="an existing built world to reuse (default: build one in a temporary folder)")
    parser.add_argument("--rate", type=float, default=130.0, help="requests per second")
    parser.add_argument("--before", type=float, default=6.0, help="seconds of load before the freeze")
    parser.add_argument("--freeze", type=float, default=9.0, help="seconds Redis stays frozen")
    parser.add_argument("--after", type=float, default=9.0, help="seconds of load after Redis resumes")
    parser.add_argument("--profiles", default="on,off", help="breakers on, off, or both (comma-separated)")
    args = parser.parse_args()
    profiles = [p.strip() for p in args.profiles.split(",") if p.strip()]
    if not profiles or set(profiles) - {"on", "off"}:
        parser.error("--profiles takes on, off or on,off")
    if shutil.which("redis-server") is None:
        # `make bench` runs every script: a host without Redis skips this one, as serve.py skips its profile.
        print("(redis-server is not installed: the Redis freeze benchmark was left out)")
        return
    for name in ("BENTOML_DO_NOT_TRACK", "MLFLOW_DISABLE_TELEMETRY"):
        os.environ.setdefault(name, "true")
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")

    with tempfile.TemporaryDirectory(prefix="pg-faults-") as tmp:
        scratch = Path(tmp)
        source = Path(args.root).resolve() if args.root else scratch / "world"
        if not args.root:
            source.mkdir()
            build_world(source)
        bodies = request_bodies(source, BODIES)
        rows: list[tuple[str, str, dict[str, Any], str]] = []
        for profile in profiles:
            rows += measure(source, scratch, profile, bodies, args)
        print_table(rows, args)


if __name__ == "__main__":
    main()
