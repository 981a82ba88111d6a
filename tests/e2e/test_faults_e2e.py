"""Fast under faults, over real HTTP: a frozen Redis behind velocity opens the breakers, answers stay quick.

The service runs against a private ``redis-server`` (started here on a free port, no persistence) that
backs the velocity counters, caps and identity graph; the online store stays SQLite. The Redis process
is frozen with SIGSTOP (a hung server: connections accepted, nothing answered), then resumed with
SIGCONT. Timings are compared with each other and with the configured socket timeout, never with an
absolute number a loaded machine could miss.
"""

from __future__ import annotations

import os
import random
import re
import shutil
import signal
import socket
import statistics
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from typing import Any

import httpx
import pandas as pd
import pytest

from promoguard.settings import Settings
from tests.e2e.test_service_e2e import (
    assert_contract,
    copy_world,
    free_port,
    fresh_shopper,
    limited_bodies,
    new_request_id,
    promo_code,
    serve,
    shows_service_log,
    summary,
)

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("world")]

#: A socket timeout long enough that waiting it out is unmistakable next to a fail-fast answer.
SOCKET_TIMEOUT_S = 0.25
#: Recovery is a cool-down (2 s) and one probe per breaker; this only bounds a broken test.
RECOVERY_LIMIT_S = 30.0


@contextmanager
def private_redis() -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    """A throwaway redis-server on a free port, no persistence; (process, port) while the block runs."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server is not installed")
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
                pytest.fail(f"redis-server did not start on port {port}")
            time.sleep(0.1)
        yield proc, port
    finally:
        with suppress(ProcessLookupError):
            # A frozen server ignores SIGTERM until it runs again.
            os.kill(proc.pid, signal.SIGCONT)
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def metric(text: str, name: str, dependency: str) -> float | None:
    """One ``name{dependency=...}`` value of a Prometheus text page (None when absent)."""
    pattern = rf'^{re.escape(name)}{{[^}}]*dependency="{re.escape(dependency)}"[^}}]*}} ([0-9.eE+-]+)$'
    found = re.search(pattern, text, flags=re.MULTILINE)
    return None if found is None else float(found.group(1))


def post_score(http: httpx.Client, body: dict[str, Any]) -> dict[str, Any]:
    """POST /score; require 200 and a JSON answer."""
    resp = http.post("/score", json=body)
    assert resp.status_code == 200, f"/score answered {resp.status_code}: {resp.text[:300]}"
    answer: dict[str, Any] = resp.json()
    return answer


@shows_service_log
def test_frozen_redis_opens_the_breakers_answers_fast_from_the_rules_and_recovers(
    world: Settings, tmp_path_factory: pytest.TempPathFactory
) -> None:
    promotions = pd.read_parquet(world.raw_dir / "promotions.parquet")
    code = promo_code(promotions, "welcome")
    settings = copy_world(world, tmp_path_factory.mktemp("faults-world"))
    with private_redis() as (redis_proc, port):
        env = {
            "PROMOGUARD_VELOCITY": "redis",
            "PROMOGUARD_REDIS_URL": f"redis://127.0.0.1:{port}/0",
            "PROMOGUARD_REDIS_TIMEOUT_S": str(SOCKET_TIMEOUT_S),
        }
        with serve(settings, env) as svc, httpx.Client(base_url=svc.url, timeout=30.0) as http:
            for body in limited_bodies("faults-up", 3, 41, code):
                answer = post_score(http, body)
                assert_contract(answer, body["request_id"], model_path=True)
            page = http.get("/metrics").text
            for dependency in ("velocity", "identity_graph", "online_features"):
                assert metric(page, "promoguard_breaker_state", dependency) == 0, dependency

            os.kill(redis_proc.pid, signal.SIGSTOP)
            frozen = limited_bodies("faults-frozen", 40, 42, code)
            answers = [post_score(http, body) for body in frozen]
            for body, answer in zip(frozen, answers, strict=True):
                assert_contract(answer, body["request_id"], model_path=False)
                assert answer["decision"] in {"allow", "watch", "verify"}, summary(answer)
            latencies = [float(a["latency_ms"]) for a in answers]
            timeout_ms = SOCKET_TIMEOUT_S * 1000.0
            # Before the breakers open, requests wait out their socket timeouts...
            assert max(latencies[:3]) >= timeout_ms, latencies[:3]
            # ...and once open, answers come from the rules without asking Redis at all.
            last = latencies[-20:]
            assert statistics.median(last) < timeout_ms / 2, last
            # A probe per breaker every cool-down may still wait out one timeout.
            assert sum(ms < timeout_ms for ms in last) >= 15, last
            assert statistics.median(last) < statistics.median(latencies[:3]) / 2, latencies

            page = http.get("/metrics").text
            for dependency in ("velocity", "identity_graph"):
                assert (metric(page, "promoguard_breaker_state", dependency) or 0) >= 1, dependency
                assert (metric(page, "promoguard_breaker_opened_total", dependency) or 0) >= 1, dependency
            assert metric(page, "promoguard_breaker_state", "online_features") == 0
            detail = http.get("/health/detail")
            assert detail.status_code == 200 and detail.json()["degraded"] is True, detail.text
            # Still ready (the rules answer), and the readiness answer says how.
            ready = http.get("/readyz")
            assert ready.status_code == 200 and ready.json()["degraded"] is True, ready.text

            # A single-use code cannot be checked now: it asks for verification instead of failing open.
            once = {"code": f"ONCE-{new_request_id('x')[-8:]}", "type": "sitewide", "single_use": True}
            body = fresh_shopper(random.Random(43), request_id=new_request_id("faults-once"), promotion=once)
            answer = post_score(http, body)
            assert_contract(answer, body["request_id"], model_path=False)
            assert answer["decision"] == "verify", summary(answer)
            assert answer["signals"][0]["code"] == "CAP_STORE_UNAVAILABLE", summary(answer)

            os.kill(redis_proc.pid, signal.SIGCONT)
            recovered: dict[str, Any] | None = None
            started = time.monotonic()
            i = 0
            while time.monotonic() - started < RECOVERY_LIMIT_S:
                (body,) = limited_bodies(f"faults-back-{i}", 1, 100 + i, code)
                answer = post_score(http, body)
                if answer["fallback"] is None:
                    recovered = answer
                    assert_contract(answer, body["request_id"], model_path=True)
                    break
                i += 1
                time.sleep(0.2)
            assert recovered is not None, f"still on the rules {RECOVERY_LIMIT_S:.0f}s after Redis resumed"
            # Every worker's breakers close at their next call: poll until none is left open.
            while time.monotonic() - started < RECOVERY_LIMIT_S:
                page = http.get("/metrics").text
                states = [metric(page, "promoguard_breaker_state", d) for d in ("velocity", "identity_graph")]
                if states == [0, 0]:
                    break
                post_score(http, limited_bodies(f"faults-close-{i}", 1, 300 + i, code)[0])
                i += 1
                time.sleep(0.2)
            else:
                pytest.fail(f"breakers still not closed after Redis resumed:\n{page[-2000:]}")
            detail = http.get("/health/detail")
            assert detail.json()["degraded"] is False, detail.text
