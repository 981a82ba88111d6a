"""End-to-end /score latency over HTTP under an open-loop load, against a bare BentoML floor.

Prints one table: per profile (bare BentoML endpoint, promoguard on SQLite, promoguard on Redis when
Redis answers) and rate (default 50, 100, 200 requests/s for ``--seconds`` each), the p50/p90/p99/p99.9
latency measured from each request's *scheduled* send time (so a stalled server shows up as queueing,
not as fewer requests: open loop), the errors, the share of answers from the rules fallback, and the
service's CPU time per request (all its processes, user + system). Latency on a shared 2-core host
moves with the host's speed from hour to hour; CPU per request moves less and says how many requests
a core can take.

Usage: ``python benchmarks/serve.py [--root EXISTING_WORLD] [--seconds 60] [--rates 50,100,200]``.
Without ``--root`` (or ``PROMOGUARD_BENCH_ROOT``) a world is built in a temporary folder with the same
command-line steps as the end-to-end tests. Either way the service runs on a private copy, so the
world's scoring log is never touched. Request bodies are drawn from the world's raw events. The load
generator runs on the same machine as the service and takes CPU from it; note the host's load.

The bare floor is :class:`Bare` below, started with ``bentoml serve benchmarks.serve:Bare``.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Collection, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import bentoml
from pydantic import BaseModel, ConfigDict

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

WORLD_EVENTS, WORLD_DAYS, WORLD_SEED = 40_000, 60, 11
WARMUP_S, WARMUP_RATE = 3.0, 20.0
BODIES = 2000


# --- the floor: a trivial BentoML endpoint with the same body and settings as the service --------------


class BareRequest(BaseModel):
    """Any /score body (the floor does not validate beyond JSON)."""

    model_config = ConfigDict(extra="allow")
    request_id: str


class BareResponse(BaseModel):
    """A constant answer of the same shape as a real one, without signals."""

    request_id: str
    score: int
    decision: str


@bentoml.service(name="bare", workers=1, threads=8, traffic={"timeout": 5})
class Bare:
    """The cheapest /score BentoML can serve: parse, answer, nothing else."""

    @bentoml.api(route="/score", input_spec=BareRequest, output_spec=BareResponse)
    def score(self, **body: Any) -> BareResponse:
        """Answer every request with score 0."""
        return BareResponse(request_id=str(body["request_id"]), score=0, decision="allow")


# --- world, bodies, services ---------------------------------------------------------------------------


def build_world(root: Path) -> None:
    """Run simulate -> features -> train -> promote under ``root`` with the command line."""
    cli = str(Path(sys.executable).parent / "promoguard")
    steps = [
        ["simulate", "--events", str(WORLD_EVENTS), "--days", str(WORLD_DAYS), "--seed", str(WORLD_SEED)],
        ["features", "build"], ["features", "apply"], ["features", "materialize"],
        ["train", "--test-days", "10", "--gap-days", "7"], ["promote"],
    ]
    for step in steps:
        print(f"building world: promoguard {' '.join(step)}", file=sys.stderr)
        subprocess.run([cli, *step, "--root", str(root)], check=True, stdout=subprocess.DEVNULL)


def world_source(root: str | None, scratch: Path) -> Path:
    """The built world at ``root``, or one built now under ``scratch`` when no root is given."""
    if root:
        return Path(root).resolve()
    source = scratch / "world"
    source.mkdir()
    build_world(source)
    return source


def copy_world(source: Path, dest: Path) -> None:
    """Copy what the service reads (raw data, features, Feast store, MLflow) into ``dest``."""
    for part in ("data/raw", "data/features", "data/feast", "mlflow"):
        shutil.copytree(source / part, dest / part)


def private_world(root: str | None, scratch: Path, name: str) -> tuple[Path, list[dict[str, Any]]]:
    """A private copy of the world (``root``, or one built under ``scratch``) at ``scratch / name``,
    with :data:`BODIES` request bodies of its events in a fixed shuffled order."""
    source = world_source(root, scratch)
    bodies = request_bodies(source, BODIES)
    random.Random(5).shuffle(bodies)
    copy = scratch / name
    copy_world(source, copy)
    return copy, bodies


def no_telemetry() -> None:
    """Turn off BentoML's, MLflow's and great-expectations' usage reporting unless the caller set it."""
    for name in ("BENTOML_DO_NOT_TRACK", "MLFLOW_DISABLE_TELEMETRY"):
        os.environ.setdefault(name, "true")
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")


def request_bodies(root: Path, count: int, seed: int = 7) -> list[dict[str, Any]]:
    """``count`` /score bodies from random raw events, with each code's policy from the promotions table."""
    import pandas as pd

    from replay.requests import request_bodies as bodies_of

    events = pd.read_parquet(root / "data" / "raw" / "events.parquet")
    promos = pd.read_parquet(root / "data" / "raw" / "promotions.parquet")
    bodies = bodies_of(events.sample(n=min(count, len(events)), random_state=seed), promos)
    for body in bodies:
        # Each send gets a fresh id; the service stamps its own time.
        body["request_id"] = ""
        body.pop("timestamp", None)
    return bodies


def redis_answers(host: str = "127.0.0.1", port: int = 6379) -> bool:
    """True when a TCP connection to Redis succeeds."""
    import socket

    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


@contextmanager
def bare_service(log_dir: Path) -> Iterator[str]:
    """The floor endpoint as its own ``bentoml serve`` process."""
    from promoguard.demo import free_port, running_service
    from promoguard.settings import Settings

    settings = Settings.from_env({}, root=REPO)
    env = {"BENTOML_HOME": str(log_dir / "bentoml")}
    with (log_dir / "bare.log").open("wb") as log, running_service(
        settings, free_port(), extra_env=env, log=log, service="benchmarks.serve:Bare"
    ) as url:
        yield url


@contextmanager
def promoguard_service(root: Path, extra_env: Mapping[str, str]) -> Iterator[str]:
    """The real service on ``root`` (open access: the benchmark measures scoring, not the key check)."""
    from promoguard.demo import free_port, running_service
    from promoguard.settings import Settings

    settings = Settings.from_env({}, root=root)
    env = {"PROMOGUARD_REQUIRE_API_KEY": "false", "PROMOGUARD_RATE_LIMIT_PER_MINUTE": "1000000", **extra_env}
    name = extra_env.get("PROMOGUARD_VELOCITY", "sqlite")
    with (root / f"service-{name}.log").open("wb") as log, running_service(
        settings, free_port(), extra_env=env, log=log
    ) as url:
        yield url


# --- the open-loop load --------------------------------------------------------------------------------


class _Connections:
    """Keep-alive HTTP/1.1 connections for the load generator, opened on demand and reused.

    A minimal client on asyncio streams: the requests are pre-encoded and the answer is read by its
    Content-Length. A full client (httpx) costs about a millisecond of CPU per request in the same
    process, which on a 2-core host is taken from the service being measured.
    """

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []

    async def post(self, path: str, body: bytes) -> tuple[int, bytes]:
        """Send one POST and return the status code and body.

        A kept-alive connection the server has closed meanwhile is replaced once, as any HTTP client
        does; a fresh connection that fails is an error.
        """
        head = (f"POST {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\n\r\n").encode()
        while self.idle:
            reader, writer = self.idle.pop()
            try:
                return await self._exchange(reader, writer, head + body)
            except (ConnectionError, asyncio.IncompleteReadError, IndexError):
                continue
        reader, writer = await asyncio.open_connection(self.host, self.port)
        return await self._exchange(reader, writer, head + body)

    async def _exchange(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                        request: bytes) -> tuple[int, bytes]:
        try:
            writer.write(request)
            status_line = await reader.readline()
            if not status_line:
                raise ConnectionResetError("closed by the server")
            length = 0
            while True:
                line = await reader.readline()
                if line in (b"\r\n", b""):
                    break
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            payload = await reader.readexactly(length)
        except BaseException:
            writer.close()
            raise
        self.idle.append((reader, writer))
        return int(status_line.split()[1]), payload

    def close(self) -> None:
        """Close every idle connection."""
        for _, writer in self.idle:
            writer.close()
        self.idle.clear()


async def _open_loop(url: str, bodies: list[dict[str, Any]], rate: float, seconds: float,
                     label: str) -> tuple[list[float], int, int, int]:
    """Send ``rate`` requests/s for ``seconds`` on a fixed schedule; latencies (s) from scheduled time."""
    import json
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    pool = _Connections(parts.hostname or "127.0.0.1", parts.port or 80)
    total = int(rate * seconds)
    run = uuid.uuid4().hex[:8]
    # Encoded before the clock starts, so the generator spends its time on the wire only.
    payloads = [json.dumps({**bodies[i % len(bodies)], "request_id": f"bench-{label}-{run}-{i}"}).encode()
                for i in range(total)]
    latencies: list[float] = []
    counts = {"errors": 0, "fallback": 0}

    async def one(i: int, when: float) -> None:
        delay = when - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        try:
            status, answer = await asyncio.wait_for(pool.post("/score", payloads[i]), timeout=10.0)
            if status != 200:
                counts["errors"] += 1
            elif b'"fallback":"rules"' in answer.replace(b" ", b""):
                counts["fallback"] += 1
        except (TimeoutError, OSError, asyncio.IncompleteReadError, ValueError, IndexError):
            counts["errors"] += 1
        latencies.append(time.perf_counter() - when)

    start = time.perf_counter() + 0.2
    await asyncio.gather(*(one(i, start + i / rate) for i in range(total)))
    pool.close()
    return latencies, total, counts["errors"], counts["fallback"]


def service_cpu_s() -> float:
    """CPU seconds (user + system) used so far by this process's children: the running service."""
    import psutil

    total = 0.0
    for child in psutil.Process().children(recursive=True):
        try:
            times = child.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += times.user + times.system
    return total


def run_load(
    url: str, bodies: list[dict[str, Any]], rate: float, seconds: float, label: str
) -> dict[str, Any]:
    """One measured load step after a short warm-up; a table row."""
    asyncio.run(_open_loop(url, bodies, WARMUP_RATE, WARMUP_S, f"{label}-warm"))
    cpu_before = service_cpu_s()
    latencies, sent, errors, fallback = asyncio.run(_open_loop(url, bodies, rate, seconds, label))
    cpu_ms = (service_cpu_s() - cpu_before) * 1000.0 / sent if sent else float("nan")
    ms = sorted(x * 1000.0 for x in latencies)

    def pct(q: float) -> float:
        return ms[min(len(ms) - 1, max(0, math.ceil(q * len(ms)) - 1))] if ms else float("nan")

    return {"rate": rate, "sent": sent, "p50": pct(0.5), "p90": pct(0.9), "p99": pct(0.99),
            "p999": pct(0.999), "errors": errors, "fallback": fallback / sent if sent else 0.0,
            "cpu_ms": cpu_ms}


def speed_probe_s() -> float:
    """Seconds a fixed pure-Python loop takes here: how fast the shared host runs at the moment."""
    started = time.perf_counter()
    total = 0
    for i in range(3_000_000):
        total += i
    return time.perf_counter() - started


def print_aligned(
    lines: Sequence[Sequence[str]], left: Collection[int] = (0,), sep: str = "  ", rule_sep: str | None = None
) -> None:
    """Print ``lines`` as columns, the first a header underlined with dashes.

    The columns numbered in ``left`` are aligned left, the others right; ``sep`` joins the cells and
    ``rule_sep`` (default ``sep``) the dashes under the header.
    """
    widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]))]
    rule = (sep if rule_sep is None else rule_sep).join("-" * w for w in widths)
    for n, line in enumerate(lines):
        print(sep.join(c.ljust(w) if i in left else c.rjust(w)
                       for i, (c, w) in enumerate(zip(line, widths, strict=True))))
        if n == 0:
            print(rule)


def print_table(rows: list[tuple[str, dict[str, Any]]], seconds: float, probes: tuple[float, float]) -> None:
    """The one table this script prints."""
    load = os.getloadavg()
    print(f"/score over HTTP, open loop, {seconds:g} s per rate, latency from the scheduled send; host load "
          f"average {load[0]:.2f} on {os.cpu_count()} CPUs (load generator and service share them); speed "
          f"probe (3M-step Python loop) {probes[0]:.2f} s before, {probes[1]:.2f} s after")
    header = ("profile", "req/s", "sent", "p50 ms", "p90 ms", "p99 ms", "p99.9 ms", "errors", "fallback",
              "CPU ms/req")
    lines = [header] + [
        (name, f"{r['rate']:g}", str(r["sent"]), f"{r['p50']:.1f}", f"{r['p90']:.1f}", f"{r['p99']:.1f}",
         f"{r['p999']:.1f}", str(r["errors"]), f"{100 * r['fallback']:.1f}%", f"{r['cpu_ms']:.2f}")
        for name, r in rows
    ]
    print_aligned(lines)


def main() -> None:
    """Build or reuse a world, then measure every profile at every rate and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default=os.environ.get("PROMOGUARD_BENCH_ROOT"),
                        help="an existing built world to reuse (default: build one in a temporary folder)")
    parser.add_argument("--seconds", type=float, default=60.0, help="measured seconds per rate")
    parser.add_argument("--rates", default="50,100,200", help="comma-separated requests per second")
    args = parser.parse_args()
    rates = [float(r) for r in args.rates.split(",") if r.strip()]
    no_telemetry()

    with tempfile.TemporaryDirectory(prefix="pg-bench-") as tmp:
        scratch = Path(tmp)
        source = world_source(args.root, scratch)
        bodies = request_bodies(source, BODIES)
        random.Random(3).shuffle(bodies)

        profiles: list[tuple[str, Any]] = [("bare bentoml", lambda: bare_service(scratch))]
        sqlite_root = scratch / "sqlite"
        copy_world(source, sqlite_root)
        profiles.append(("promoguard sqlite", lambda: promoguard_service(sqlite_root, {})))
        if redis_answers():
            redis_root = scratch / "redis"
            copy_world(source, redis_root)
            env = {"PROMOGUARD_ONLINE_STORE": "redis", "PROMOGUARD_VELOCITY": "redis"}
            profiles.append(("promoguard redis", lambda: promoguard_service(redis_root, env)))

        # The copies above leave gigabytes of dirty pages (the online store alone is ~2 GB on the demo
        # world); written back during a step, they slowed every fsync of the service measured.
        os.sync()
        probe_before = speed_probe_s()
        rows: list[tuple[str, dict[str, Any]]] = []
        for name, start in profiles:
            with start() as url:
                for rate in rates:
                    print(f"measuring {name} at {rate:g} req/s", file=sys.stderr)
                    rows.append((name, run_load(url, bodies, rate, args.seconds, name.split()[-1])))
        print_table(rows, args.seconds, (probe_before, speed_probe_s()))
        if not redis_answers():
            print("(Redis did not answer on 127.0.0.1:6379: the Redis profile was left out)")


if __name__ == "__main__":
    main()
