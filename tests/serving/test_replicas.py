"""Two replicas behind one load balancer: any of them answers any call about an attempt.

Two real ``promoguard serve`` processes, each with a root (and so a serving folder) of its own, share
their state the way production does: the records in one PostgreSQL schema (``PROMOGUARD_STATE_URL``)
and the velocity counters and reservations in one Redis (``PROMOGUARD_VELOCITY=redis``). A call the
load balancer sends to the other replica must find what the first one did.

Isolation from tests running beside these: a fresh PostgreSQL schema, dropped afterwards; the Redis
database number :data:`REDIS_DB`, which no other test uses, and identities, codes and request ids new
to every run (the service's keys expire by themselves). The services answer from the rules (no model),
which starts them fastest.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psutil
import psycopg2
import pytest

from promoguard.demo import free_port
from tests.conftest import require_service

pytestmark = [pytest.mark.slow, pytest.mark.services, pytest.mark.xdist_group("replicas")]

API_KEY = "replica-key"
PG_BASE = "postgresql://postgres@127.0.0.1:5432/test"
#: The Redis database of this module: the other tests use database 0 with key prefixes.
REDIS_DB = 11
HEADERS = {"X-API-Key": API_KEY}


@dataclass(frozen=True)
class Replicas:
    """The two services, the schema they share, and what makes this run's requests unique."""

    a: str
    b: str
    schema: str
    run: str
    roots: tuple[Path, Path]
    state_url: str

    def count(self, table: str, request_id: str) -> int:
        """Rows of ``table`` about ``request_id``, read straight from the shared database."""
        conn = psycopg2.connect(PG_BASE, connect_timeout=2)
        try:
            with conn.cursor() as cur:
                query = f"SELECT count(*) FROM {self.schema}.{table} WHERE request_id = %s"
                cur.execute(query, (request_id,))
                return int(cur.fetchone()[0])
        finally:
            conn.close()


def _start(root: Path, port: int, env: dict[str, str]) -> subprocess.Popen[bytes]:
    root.mkdir(parents=True, exist_ok=True)
    with (root / "serve.log").open("wb") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "promoguard", "serve", "--port", str(port), "--root", str(root)],
            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )


def _wait_ready(url: str, proc: subprocess.Popen[bytes], log: Path, deadline: float) -> None:
    while True:
        if proc.poll() is not None:
            pytest.fail(f"replica exited with {proc.returncode}:\n{log.read_text(errors='replace')[-3000:]}")
        try:
            if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            pytest.fail(f"replica not ready in time:\n{log.read_text(errors='replace')[-3000:]}")
        time.sleep(0.3)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM the command (it stops the service it started); kill what is left, by pid, if it hangs."""
    try:
        started = psutil.Process(proc.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        started = []
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    _, alive = psutil.wait_procs(started, timeout=10)
    for child in alive:
        child.kill()


@pytest.fixture(scope="module")
def replicas(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Replicas]:
    """Two ready replicas on one schema and one Redis database; both stopped and the schema dropped after."""
    # The rule of the postgres_available / redis_available fixtures, here for a whole module.
    require_service("PostgreSQL", "127.0.0.1", 5432)
    require_service("Redis", "127.0.0.1", 6379)
    run = uuid.uuid4().hex[:10]
    schema = f"replicas_{run}"
    admin = psycopg2.connect(PG_BASE, connect_timeout=2)
    admin.autocommit = True
    with admin.cursor() as cur:
        cur.execute(f"CREATE SCHEMA {schema}")
    base = tmp_path_factory.mktemp("replicas")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PROMOGUARD_")}
    state_url = f"{PG_BASE}?options=-csearch_path%3D{schema}"
    env.update({
        "PROMOGUARD_STATE_URL": state_url,
        "PROMOGUARD_VELOCITY": "redis",
        "PROMOGUARD_REDIS_URL": f"redis://127.0.0.1:6379/{REDIS_DB}",
        # A busy test machine must not turn these calls into degraded answers.
        "PROMOGUARD_REDIS_TIMEOUT_S": "2",
        "PROMOGUARD_FEATURE_DEADLINE_MS": "3000",
        "PROMOGUARD_REQUEST_DEADLINE_MS": "4000",
        "PROMOGUARD_API_KEYS": API_KEY,
        "PROMOGUARD_REQUIRE_API_KEY": "true",
        "BENTOML_DO_NOT_TRACK": "true",
    })
    ports = {name: free_port() for name in ("a", "b")}
    procs = {name: _start(base / name, port, env) for name, port in ports.items()}
    try:
        deadline = time.monotonic() + 120
        for name, port in ports.items():
            _wait_ready(f"http://127.0.0.1:{port}", procs[name], base / name / "serve.log", deadline)
        yield Replicas(f"http://127.0.0.1:{ports['a']}", f"http://127.0.0.1:{ports['b']}", schema, run,
                       (base / "a", base / "b"), state_url)
    finally:
        for proc in procs.values():
            _stop(proc)
        with admin.cursor() as cur:
            cur.execute(f"DROP SCHEMA {schema} CASCADE")
        admin.close()


def _body(rep: Replicas, request_id: str, **extra: Any) -> dict[str, Any]:
    """An attempt at a capped welcome code by a shopper new to this run."""
    body: dict[str, Any] = {
        "request_id": f"{rep.run}-{request_id}",
        "timestamp": "2026-11-21T12:00:00Z",
        "promotion": {"code": f"WELCOME-{rep.run}", "type": "welcome", "per_customer_limit": 1},
        "account": {"account_id": f"acct-{rep.run}-{request_id}", "created_at": "2026-11-20T09:00:00Z"},
        "email": f"shopper-{rep.run}-{request_id}@example.com",
        "device": {"device_id": str(uuid.uuid4())},
        "payment": {"fingerprint": f"fp_{rep.run}_{request_id}"},
        "ip": "203.0.113.77",
        "cart": {"total": 42.5, "currency": "USD", "items": [{"sku": "A1", "quantity": 2}]},
    }
    body.update(extra)
    return body


def _post(url: str, path: str, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(f"{url}{path}", json=body, headers=HEADERS, timeout=15)


def test_a_retry_on_the_other_replica_gets_the_first_answer_and_is_not_scored_again(
    replicas: Replicas,
) -> None:
    body = _body(replicas, "retry")
    first = _post(replicas.a, "/score", body)
    assert first.status_code == 200, first.text
    retry = _post(replicas.b, "/score", body)
    assert retry.status_code == 200, retry.text
    # Exactly A's answer, latency included: B did not score it again, it returned the logged answer.
    assert retry.json() == first.json()
    assert replicas.count("scores", body["request_id"]) == 1
    changed = _post(replicas.b, "/score", {**body, "ip": "198.51.100.9"})
    assert changed.status_code == 409 and body["request_id"] in changed.text


def test_an_outcome_on_the_other_replica_confirms_the_reservation_and_the_record_shows_it(
    replicas: Replicas,
) -> None:
    body = _body(replicas, "outcome")
    rid = body["request_id"]
    answer = _post(replicas.a, "/score", body).json()
    assert answer["decision"] != "refuse", answer  # a refused attempt holds no reservation to confirm
    outcome = _post(replicas.b, "/outcome", {"request_id": rid, "outcome": "redeemed"})
    assert outcome.status_code == 200, outcome.text
    assert outcome.json() == {"request_id": rid, "outcome": "redeemed", "reservation": "confirmed"}
    label = _post(replicas.b, "/feedback", {"request_id": rid, "label": "legit", "source": "manual_review"})
    assert label.status_code == 200 and label.json()["stored"] is True
    assert replicas.count("outcomes", rid) == 1 and replicas.count("feedback", rid) == 1
    for url in (replicas.b, replicas.a):
        record = httpx.get(f"{url}/decisions/{rid}", headers=HEADERS, timeout=30)
        assert record.status_code == 200, record.text
        shown = record.json()
        assert shown["answer"] == answer
        assert [(o["outcome"], o["reservation"]) for o in shown["outcomes"]] == [("redeemed", "confirmed")]
        assert [f["label"] for f in shown["feedback"]] == ["legit"]
    # The cap is shared too: the same shopper's next attempt, on either replica, finds the use spent.
    again = _post(replicas.b, "/score", {**body, "request_id": f"{rid}-again"}).json()
    assert again["decision"] in ("verify", "refuse"), again


def test_calls_about_an_attempt_nobody_scored_are_404_on_every_replica(replicas: Replicas) -> None:
    rid = f"{replicas.run}-never"
    for url in (replicas.a, replicas.b):
        assert _post(url, "/outcome", {"request_id": rid, "outcome": "redeemed"}).status_code == 404
        assert _post(url, "/feedback", {"request_id": rid, "label": "abuse"}).status_code == 404
        assert httpx.get(f"{url}/decisions/{rid}", headers=HEADERS, timeout=10).status_code == 404


def test_no_replica_keeps_a_scoring_log_of_its_own(replicas: Replicas) -> None:
    assert _post(replicas.a, "/score", _body(replicas, "local")).status_code == 200
    for root in replicas.roots:
        assert (root / "data").is_dir() and not list(root.rglob("scores.db*"))


def _until(check: Any, seconds: float = 20.0) -> Any:
    deadline = time.monotonic() + seconds
    while not (value := check()):
        if time.monotonic() > deadline:
            pytest.fail(f"not applied within {seconds:.0f} s")
        time.sleep(0.25)
    return value


def test_a_pause_and_a_deny_entry_made_once_apply_on_every_replica(replicas: Replicas) -> None:
    from typer.testing import CliRunner

    from promoguard.cli import app

    sent = iter(range(1000))

    def decision(url: str, **extra: Any) -> dict[str, Any]:
        answer: dict[str, Any] = _post(url, "/score", _body(replicas, f"ctl-{next(sent)}", **extra)).json()
        return answer

    code = f"PAUSE-{replicas.run}"
    promotion = {"code": code, "type": "sitewide"}
    result = CliRunner().invoke(app, ["campaign", "pause", code.lower(), "--reason", "leaked",
                                      "--root", str(replicas.roots[0])],
                                env={"PROMOGUARD_STATE_URL": replicas.state_url})
    assert result.exit_code == 0, result.output
    for url in (replicas.a, replicas.b):
        refused = _until(lambda u=url: (a := decision(u, promotion=promotion))["decision"] == "refuse" and a)
        assert refused["signals"][0]["code"] == "CAMPAIGN_PAUSED"
    card = f"fp_deny_{replicas.run}"
    entry = {"kind": "payment", "value": card, "reason": "chargeback ring"}
    assert _post(replicas.a, "/lists/deny", entry).status_code == 201
    paying = {"payment": {"fingerprint": card}}
    for url in (replicas.a, replicas.b):
        denied = _until(lambda u=url: (a := decision(u, **paying))["decision"] == "refuse" and a)
        assert denied["signals"][0]["code"] == "DENY_LISTED"

