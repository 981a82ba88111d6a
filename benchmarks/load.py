"""/score under wrk: promoguard against two floors, side by side in one run.

The floors: a bare BentoML endpoint (``benchmarks/bare_service.py``) and promoguard's own service with
scoring answering a constant (``benchmarks/framework_service.py``: the guard, validation, metrics and
response, no state and no model). The gap between the two floors is what the service adds around
scoring; the gap from the second floor to promoguard is scoring itself.

Prints one table (figure | promoguard | scoring off | bare | promoguard / bare | scoring off / bare):

* sequential latency: one connection, one request at a time (``wrk -t1 -c1``), p50 and p99;
* saturation throughput: 16 connections kept busy (``wrk -t1 -c16``), requests per second, with the
  service's CPU time per request and its rules-fallback answers over that step;
* a paced step at 80% of promoguard's saturation rate, for both services: an open-loop Python pacer
  (wrk's fixed-rate mode is wrk2's, which Debian does not ship) sends on a fixed schedule and measures
  latency from each request's scheduled time; it counts errors, rules-fallback answers
  (``"fallback": "rules"``) and degraded answers, and the CPU time per request.

CPU time is the user + system time of the service's process tree (``bentoml serve``, its circus
arbiter and its workers, each worker in a process group of its own), read from ``/proc/<pid>/stat``
before and after a step.

The three services run with ``bentoml serve`` and the real service's default workers (one per CPU) and
threads. The world is built as ``benchmarks/serve.py`` builds it (40,000 simulated events over 60
days, features materialised, a model trained and promoted as champion: about 75 MB), or reused from
``--root`` / ``PROMOGUARD_BENCH_ROOT``; the service runs on a private copy. wrk's Lua script sends the
bodies of ``--bodies`` random events of that world (account, email, phone, shipping and billing address,
card fingerprint, device id and local IP, public IP, cart and promotion), one after the other, each
under a request id of its own. The load generator shares the host's CPUs with the service.

Usage: ``python benchmarks/load.py [--root WORLD] [--seconds 20] [--env PROMOGUARD_X=value ...]``.
``--env`` sets a variable for every service (``PROMOGUARD_LOG_QUEUE=false`` measures without the
queue). Without ``wrk`` on the PATH (``make wrk`` installs it) the script says so and exits 0.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from serve import _Connections as Connections  # noqa: E402
from serve import build_world, copy_world, no_telemetry, print_aligned, request_bodies  # noqa: E402

from promoguard.demo import free_port  # noqa: E402

BODIES = 4000
WARMUP_S = 4.0
SATURATION_CONNECTIONS = 16
PACED_SHARE = 0.8
PLACEHOLDER = "__RID__"

#: wrk's script: a fresh request id per request, bodies taken in turn, answers counted per kind.
LUA = r"""
local bodies = {}
local threads = {}
local created = 0

function setup(thread)
  created = created + 1
  thread:set("tid", created)
  table.insert(threads, thread)
end

function init(args)
  for line in io.lines(os.getenv("LOAD_BODIES")) do
    local head, tail = line:match("^(.-)__RID__(.*)$")
    bodies[#bodies + 1] = {head, tail}
  end
  run = os.getenv("LOAD_RUN")
  sent, fallback, degraded = 0, 0, 0
  headers = {["Content-Type"] = "application/json"}
end

function request()
  sent = sent + 1
  local b = bodies[((sent + tid * 7919) % #bodies) + 1]
  return wrk.format("POST", "/score", headers, b[1] .. run .. "-" .. tid .. "-" .. sent .. b[2])
end

function response(status, headers, body)
  if status == 200 then
    if body:find('"fallback":"rules"', 1, true) then fallback = fallback + 1 end
    if body:find('"degraded":true', 1, true) then degraded = degraded + 1 end
  end
end

function done(summary, latency, requests)
  local f, d = 0, 0
  for _, t in ipairs(threads) do
    f = f + t:get("fallback")
    d = d + t:get("degraded")
  end
  local e = summary.errors
  io.write(string.format(
    'LOADJSON {"requests":%d,"duration_us":%d,"p50_us":%d,"p99_us":%d,"socket_errors":%d,' ..
    '"status_errors":%d,"fallback":%d,"degraded":%d}\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    e.connect + e.read + e.write + e.timeout, e.status, f, d))
end
"""


@dataclass
class Step:
    """What one load step measured."""

    requests: int
    seconds: float
    p50_ms: float
    p99_ms: float
    errors: int
    fallback: int
    degraded: int
    cpu_ms_per_request: float

    @property
    def rate(self) -> float:
        """Answered requests per second."""
        return self.requests / self.seconds if self.seconds else float("nan")


# --- the service's CPU time --------------------------------------------------------------------------------


def tree_cpu_s(root_pid: int) -> float:
    """User + system CPU seconds of ``root_pid`` and every live process below it.

    The tree, not the process group: circus starts each BentoML worker in a process group of its own.
    """
    tick = os.sysconf("SC_CLK_TCK")
    parent: dict[int, int] = {}
    ticks: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            text = (entry / "stat").read_text()
        except OSError:
            continue
        # The command name may hold spaces and parentheses: the fields start after the last ')'.
        fields = text[text.rindex(")") + 2:].split()
        pid = int(entry.name)
        parent[pid] = int(fields[1])
        ticks[pid] = int(fields[11]) + int(fields[12])
    total = 0
    for pid, own in ticks.items():
        walk = pid
        while walk > 1 and walk != root_pid:
            walk = parent.get(walk, 0)
        if walk == root_pid:
            total += own
    return total / tick


# --- the services --------------------------------------------------------------------------------------


@contextmanager
def service(root: Path, name: str, target: str | None, env: Mapping[str, str]) -> Iterator[tuple[str, int]]:
    """``bentoml serve`` of ``target`` (default: promoguard) on ``root``; yields its URL and process id."""
    from promoguard.demo import SERVICE, start_service, stop_service, wait_ready
    from promoguard.settings import Settings

    settings = Settings.from_env({}, root=root)
    port = free_port()
    full_env = {"PROMOGUARD_REQUIRE_API_KEY": "false", "PROMOGUARD_RATE_LIMIT_PER_MINUTE": "100000000",
                **env}
    if target is not None:
        # The floor imports its service module from the repository, whatever the working folder.
        full_env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)
    with (root / f"service-{name}.log").open("wb") as log:
        proc = start_service(settings, port, extra_env=full_env, log=log, service=target or SERVICE)
        try:
            url = f"http://127.0.0.1:{port}"
            wait_ready(url, proc)
            yield url, proc.pid
        finally:
            stop_service(proc)


# --- the load ------------------------------------------------------------------------------------------


def run_wrk(url: str, script: Path, bodies: Path, connections: int, seconds: float, pid: int) -> Step:
    """One closed-loop wrk step; CPU per request from the service's process group."""
    env = {**os.environ, "LOAD_BODIES": str(bodies), "LOAD_RUN": uuid.uuid4().hex[:10]}
    before, started = tree_cpu_s(pid), time.perf_counter()
    done = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{seconds:g}s", "--timeout", "10s", "-s", str(script), url],
        env=env, capture_output=True, text=True, check=True,
    )
    cpu = tree_cpu_s(pid) - before
    line = next((x for x in done.stdout.splitlines() if x.startswith("LOADJSON ")), None)
    if line is None:
        raise RuntimeError(f"wrk printed no summary: {done.stdout[-500:]} {done.stderr[-500:]}")
    data = json.loads(line.removeprefix("LOADJSON "))
    requests = int(data["requests"])
    seconds_run = data["duration_us"] / 1e6 or (time.perf_counter() - started)
    return Step(requests, seconds_run, data["p50_us"] / 1000.0, data["p99_us"] / 1000.0,
                int(data["socket_errors"]) + int(data["status_errors"]), int(data["fallback"]),
                int(data["degraded"]), cpu * 1000.0 / requests if requests else float("nan"))


async def _paced(url: str, payloads: list[bytes], rate: float) -> tuple[list[float], int, int, int]:
    """Send ``payloads`` at ``rate`` per second on a fixed schedule; latency (s) from the scheduled time."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    pool = Connections(parts.hostname or "127.0.0.1", parts.port or 80)
    latencies: list[float] = []
    counts = {"errors": 0, "fallback": 0, "degraded": 0}

    async def one(payload: bytes, when: float) -> None:
        delay = when - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        try:
            status, answer = await asyncio.wait_for(pool.post("/score", payload), timeout=10.0)
            compact = answer.replace(b" ", b"")
            if status != 200:
                counts["errors"] += 1
            else:
                counts["fallback"] += b'"fallback":"rules"' in compact
                counts["degraded"] += b'"degraded":true' in compact
        except (TimeoutError, OSError, asyncio.IncompleteReadError, ValueError, IndexError):
            counts["errors"] += 1
        latencies.append(time.perf_counter() - when)

    start = time.perf_counter() + 0.2
    await asyncio.gather(*(one(p, start + i / rate) for i, p in enumerate(payloads)))
    pool.close()
    return latencies, counts["errors"], counts["fallback"], counts["degraded"]


def run_paced(url: str, bodies: list[str], rate: float, seconds: float, pid: int) -> Step:
    """One open-loop step at ``rate`` requests/s for ``seconds``."""
    total = max(1, int(rate * seconds))
    run = uuid.uuid4().hex[:10]
    # Encoded before the clock starts, so the pacer spends its time on the wire only.
    payloads = [bodies[i % len(bodies)].replace(PLACEHOLDER, f"{run}-p-{i}").encode() for i in range(total)]
    before = tree_cpu_s(pid)
    latencies, errors, fallback, degraded = asyncio.run(_paced(url, payloads, rate))
    cpu = tree_cpu_s(pid) - before
    ms = sorted(x * 1000.0 for x in latencies)

    def pct(q: float) -> float:
        return ms[min(len(ms) - 1, max(0, math.ceil(q * len(ms)) - 1))]

    return Step(total, total / rate, pct(0.5), pct(0.99), errors, fallback, degraded, cpu * 1000.0 / total)


def measure(url: str, pid: int, script: Path, bodies_file: Path, bodies: list[str], seconds: float,
            paced_rate: float | None) -> dict[str, Step]:
    """Warm-up, then the sequential, saturation and (when ``paced_rate``) paced steps."""
    run_wrk(url, script, bodies_file, 4, WARMUP_S, pid)
    steps = {
        "sequential": run_wrk(url, script, bodies_file, 1, seconds, pid),
        "saturation": run_wrk(url, script, bodies_file, SATURATION_CONNECTIONS, seconds, pid),
    }
    rate = paced_rate if paced_rate is not None else PACED_SHARE * steps["saturation"].rate
    steps["paced"] = run_paced(url, bodies, rate, seconds, pid)
    return steps


# --- the table -----------------------------------------------------------------------------------------


#: What each step of :func:`measure` reports, in the table's order: (label, step, Step field, format).
FIGURES: tuple[tuple[str, str, str, str], ...] = (
    ("sequential p50 ms (1 connection)", "sequential", "p50_ms", "{:.2f}"),
    ("sequential p99 ms (1 connection)", "sequential", "p99_ms", "{:.2f}"),
    (f"saturation req/s ({SATURATION_CONNECTIONS} connections)", "saturation", "rate", "{:.0f}"),
    ("saturation CPU ms/request", "saturation", "cpu_ms_per_request", "{:.2f}"),
    ("saturation errors", "saturation", "errors", "{:.0f}"),
    # A rules-only answer is far cheaper than a scored one: a saturation rate made of them is not
    # the scorer's throughput.
    ("saturation fallback answers", "saturation", "fallback", "{:.0f}"),
    (f"paced req/s ({PACED_SHARE:.0%} of promoguard saturation)", "paced", "rate", "{:.0f}"),
    ("paced p50 ms (from scheduled send)", "paced", "p50_ms", "{:.2f}"),
    ("paced p99 ms (from scheduled send)", "paced", "p99_ms", "{:.2f}"),
    ("paced CPU ms/request", "paced", "cpu_ms_per_request", "{:.2f}"),
    ("paced errors", "paced", "errors", "{:.0f}"),
    ("paced fallback answers", "paced", "fallback", "{:.0f}"),
    ("paced degraded answers", "paced", "degraded", "{:.0f}"),
)
#: The figures whose ratio to the bare floor the table shows.
RATIO_FIGURES = ("sequential", "saturation req", "saturation CPU", "paced p", "paced CPU")


def print_table(pg: dict[str, Step], framework: dict[str, Step], bare: dict[str, Step], seconds: float,
                env: Mapping[str, str]) -> None:
    """The one table this script prints."""

    def ratio(a: float, b: float) -> str:
        return f"{a / b:.2f}x" if b else "-"

    load = os.getloadavg()
    settings = " ".join(f"{k}={v}" for k, v in sorted(env.items())) or "defaults"
    print(f"/score under wrk, {seconds:g} s per step, settings: {settings}; host load average "
          f"{load[0]:.2f} on {os.cpu_count()} CPUs (wrk, the pacer and the services share them)")
    lines = [("figure", "promoguard", "scoring off", "bare", "promoguard / bare", "scoring off / bare")]
    for name, step, field, fmt in FIGURES:
        a, f, b = (float(getattr(run[step], field)) for run in (pg, framework, bare))
        shown = name.startswith(RATIO_FIGURES)
        lines.append((name, fmt.format(a), fmt.format(f), fmt.format(b),
                      ratio(a, b) if shown else "", ratio(f, b) if shown else ""))
    print_aligned(lines, sep=" | ", rule_sep="-|-")


def main() -> None:
    """Build or reuse a world, measure promoguard then its two floors, and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default=os.environ.get("PROMOGUARD_BENCH_ROOT"),
                        help="an existing built world to reuse (default: build one in a temporary folder)")
    parser.add_argument("--seconds", type=float, default=20.0, help="measured seconds per step")
    parser.add_argument("--bodies", type=int, default=BODIES,
                        help="distinct request bodies drawn from the world")
    parser.add_argument("--env", action="append", default=[], metavar="NAME=VALUE",
                        help="a variable for every service (repeatable)")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        print("wrk is not installed (make wrk, or apt-get install -y wrk): no load benchmark")
        return
    env = dict(item.split("=", 1) for item in args.env)
    no_telemetry()

    with tempfile.TemporaryDirectory(prefix="pg-load-") as tmp:
        scratch = Path(tmp)
        source = Path(args.root).resolve() if args.root else scratch / "world"
        if not args.root:
            source.mkdir()
            build_world(source)
        raw = request_bodies(source, args.bodies)
        random.Random(5).shuffle(raw)
        bodies = [json.dumps({**body, "request_id": PLACEHOLDER}, separators=(",", ":")) for body in raw]
        bodies_file, script = scratch / "bodies.jsonl", scratch / "load.lua"
        bodies_file.write_text("\n".join(bodies) + "\n")
        script.write_text(LUA)
        pg_root = scratch / "promoguard"
        copy_world(source, pg_root)
        os.sync()

        print("measuring promoguard", file=sys.stderr)
        with service(pg_root, "promoguard", None, env) as (url, pid):
            pg = measure(url, pid, script, bodies_file, bodies, args.seconds, None)
        print("measuring promoguard with scoring off", file=sys.stderr)
        with service(pg_root, "framework", "benchmarks.framework_service:PromoGuard", env) as (url, pid):
            framework = measure(url, pid, script, bodies_file, bodies, args.seconds, pg["paced"].rate)
        print("measuring the bare floor", file=sys.stderr)
        with service(pg_root, "bare", "benchmarks.bare_service:Bare", env) as (url, pid):
            bare = measure(url, pid, script, bodies_file, bodies, args.seconds, pg["paced"].rate)
        print_table(pg, framework, bare, args.seconds, env)


if __name__ == "__main__":
    main()
