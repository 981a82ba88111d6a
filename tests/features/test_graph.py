"""The identity graph: persons joined by two strong signals, bounded, the same in batch and online."""

from __future__ import annotations

import os
import sqlite3
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import redis

from features.graph import (
    GRAPH_COLUMNS,
    Attempt,
    GraphConfig,
    MemoryGraph,
    RedisGraph,
    SqliteGraph,
    build_graph,
    explain,
    replay_online,
)
from features.identity import IdentityConfig, IdentityResolver, resolve_frame
from features.velocity import redis_client

T0 = pd.Timestamp("2026-03-01", tz="UTC")
REDIS_URL = "redis://127.0.0.1:6379/0"


def _keys(rows: list[dict[str, Any]]) -> pd.DataFrame:
    """A keys frame: request ids and times in order, every key column present (None when not given)."""
    out = []
    for i, row in enumerate(rows):
        full = {f"{k}_key": None for k in ("account", "device", "payment", "phone", "email", "household")}
        full.update(request_id=f"r{i:03d}", ts=T0 + pd.Timedelta(minutes=i), promo_code="WELCOME10",
                    promo_type="welcome", referrer_key=None)
        full.update(row)
        out.append(full)
    return pd.DataFrame(out)


def _persons(frame: pd.DataFrame) -> list[str]:
    return list(frame["person_id"])


# --- the seed rule: two strong signals make a person ----------------------------------------------


def test_a_welcome_cycler_keeping_device_and_card_is_one_person_across_fresh_accounts() -> None:
    frame, _ = build_graph(_keys([
        dict(account_key=f"acct{i}", email_key=f"mail{i}", device_key="dev", payment_key="card")
        for i in range(4)
    ]))
    assert len(set(_persons(frame))) == 1
    assert list(frame["person_accounts"]) == [1.0, 2.0, 3.0, 4.0]
    assert list(frame["person_code_attempts"]) == [0.0, 1.0, 2.0, 3.0]
    assert list(frame["person_evidence"]) == ["", "device,payment", "device,payment", "device,payment"]
    assert list(frame["person_linked_evidence"]) == [0.0, 2.0, 2.0, 2.0]


def test_one_shared_strong_signal_is_not_a_person() -> None:
    # A family: one address, each member with their own device, card, phone and email.
    frame, _ = build_graph(_keys([
        dict(account_key=f"acct{i}", email_key=f"mail{i}", device_key=f"dev{i}", payment_key=f"card{i}",
             phone_key=f"ph{i}", household_key="home")
        for i in range(3)
    ]))
    assert len(set(_persons(frame))) == 3
    assert list(frame["household_accounts"]) == [1.0, 2.0, 3.0]
    assert list(frame["person_code_attempts"]) == [0.0, 0.0, 0.0]


def test_the_same_account_is_the_same_person_even_on_a_new_device_and_card() -> None:
    frame, _ = build_graph(_keys([
        dict(account_key="acct", device_key="dev1", payment_key="card1"),
        dict(account_key="acct", device_key="dev2", payment_key="card2"),
    ]))
    assert len(set(_persons(frame))) == 1
    assert frame.loc[1, "person_evidence"] == "account"


def test_an_attempt_reaching_two_persons_merges_them() -> None:
    frame, _ = build_graph(_keys([
        dict(account_key="a", device_key="dev", payment_key="card"),
        dict(account_key="b", phone_key="ph", email_key="mail"),
        # Device and card of the first, phone and email of the second: both are this person.
        dict(account_key="c", device_key="dev", payment_key="card", phone_key="ph", email_key="mail"),
        # Now the phone and the email alone reach the merged person.
        dict(account_key="d", phone_key="ph", email_key="mail"),
    ]))
    persons = _persons(frame)
    assert persons[0] != persons[1]
    assert persons[2] == persons[0] and persons[3] == persons[0]
    assert frame.loc[3, "person_accounts"] == 4.0


# --- bounds: a shared tablet, a library PC, a chain of single links ---------------------------------


def test_strangers_on_a_library_pc_stay_strangers_and_the_pc_stops_linking() -> None:
    config = GraphConfig(max_persons_per_key=3)
    rows = [dict(account_key=f"acct{i}", device_key="library-pc", payment_key=f"card{i}") for i in range(6)]
    # Later, a stranger on the library PC whose card is the second visitor's: one strong signal of that
    # person (the card), the PC no longer counts, so no merge.
    rows.append(dict(account_key="late", device_key="library-pc", payment_key="card1"))
    frame, graph = build_graph(_keys(rows), config)
    assert len(set(_persons(frame))) == 7
    assert graph.get("k:device:library-pc")["s"] is True


def test_a_chain_of_single_links_does_not_merge_a_town() -> None:
    # Each neighbour shares exactly one strong identity with the next: never two with anyone.
    kinds = ["device_key", "payment_key", "phone_key", "email_key", "household_key"]
    rows = []
    for i in range(40):
        rows.append({"account_key": f"acct{i}", kinds[i % 5]: f"shared{i}",
                     kinds[(i + 1) % 5]: f"shared{i + 1}"})
    frame, _ = build_graph(_keys(rows))
    assert len(set(_persons(frame))) == 40


def test_a_merge_that_would_make_a_crowd_is_not_made() -> None:
    config = GraphConfig(max_accounts_per_person=3)
    rows = [dict(account_key=f"a{i}", device_key="dev-a", payment_key="card-a") for i in range(3)]
    rows += [dict(account_key=f"b{i}", device_key="dev-b", payment_key="card-b") for i in range(3)]
    # One attempt carrying both persons' device and card: it may join one of them, not merge the two.
    rows.append(dict(account_key="x", device_key="dev-a", payment_key="card-a", phone_key="p"))
    rows.append(dict(account_key="y", device_key="dev-a", payment_key="card-b", email_key="dev-b"))
    rows.append(dict(account_key="z", device_key="dev-b", payment_key="card-b", phone_key="p"))
    frame, _ = build_graph(_keys(rows), config)
    assert frame.loc[0, "person_id"] != frame.loc[3, "person_id"]
    assert frame["person_accounts"].max() <= 3


# --- households and referrals -----------------------------------------------------------------------


def test_a_referrer_resolving_to_the_redeemer_is_the_same_person() -> None:
    frame, _ = build_graph(_keys([
        dict(account_key="referrer", device_key="dev", payment_key="card", household_key="home"),
        # The redeemer: a new account on the referrer's device and card.
        dict(account_key="new", device_key="dev", payment_key="card", referrer_key="referrer",
             promo_code="REF-1", promo_type="referral"),
        # A friend at another address with nothing in common.
        dict(account_key="friend", device_key="dev9", payment_key="card9", household_key="far",
             referrer_key="referrer", promo_code="REF-1", promo_type="referral"),
        # A flatmate at the referrer's address, with their own device and card.
        dict(account_key="flatmate", device_key="dev8", payment_key="card8", household_key="home",
             referrer_key="referrer", promo_code="REF-1", promo_type="referral"),
    ]))
    assert list(frame["referrer_same_person"]) == [0.0, 1.0, 0.0, 0.0]
    assert list(frame["referrer_same_household"]) == [0.0, 0.0, 0.0, 1.0]


def test_the_batch_frame_has_one_row_per_attempt_in_input_order() -> None:
    keys = _keys([dict(account_key=f"a{i}", device_key="d") for i in range(5)]).iloc[::-1]
    frame, _ = build_graph(keys)
    assert list(frame["request_id"]) == list(keys["request_id"])
    assert set(GRAPH_COLUMNS) <= set(frame.columns)


# --- online stores: atomic, idempotent, the same persons as the batch -------------------------------


@pytest.fixture
def redis_graph() -> Iterator[RedisGraph]:
    client = redis_client(REDIS_URL, socket_timeout_s=1.0)
    try:
        client.ping()
    except (redis.RedisError, OSError) as exc:
        client.close()
        reason = f"Redis not answering at {REDIS_URL}: {type(exc).__name__}"
        if os.environ.get("PROMOGUARD_REQUIRE_SERVICES") == "1":
            pytest.fail(reason)
        pytest.skip(reason)
    prefix = f"pgtest:{uuid.uuid4().hex}:g:"
    store = RedisGraph(client, prefix=prefix)
    yield store
    keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
    if keys:
        client.delete(*keys)
    client.close()


def _store(kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> Any:
    if kind == "sqlite":
        return SqliteGraph(tmp_path / "graph.db")
    if kind == "memory":
        return MemoryGraph()
    return request.getfixturevalue("redis_graph")


STORES = ["sqlite", "memory", pytest.param("redis", marks=pytest.mark.services)]


@pytest.fixture(scope="module")
def world_keys() -> pd.DataFrame:
    """The keys of a small simulated history: abusers and honest shoppers the graph has to tell apart."""
    from simulation.simulate import SimulationConfig, simulate_history

    history = simulate_history(SimulationConfig(n_events=3_000, days=20, seed=5))
    return resolve_frame(history.events, IdentityResolver(IdentityConfig(pepper="graph-test-pepper")))


@pytest.mark.parametrize("kind", STORES)
def test_replaying_history_online_gives_the_batch_persons(
    kind: str, tmp_path: Path, request: pytest.FixtureRequest, world_keys: pd.DataFrame
) -> None:
    batch, _ = build_graph(world_keys)
    store = _store(kind, tmp_path, request)
    online = {r.request_id: r for r in replay_online(store, world_keys)}
    assert len(online) == len(batch)
    for row in batch.itertuples(index=False):
        got = online[str(row.request_id)]
        assert got.person_id == row.person_id, row.request_id
        assert ",".join(got.evidence) == row.person_evidence
        assert got.features() == {c: getattr(row, c) for c in GRAPH_COLUMNS}
    # Persons really formed: some attempts joined earlier ones, most shoppers stayed alone.
    assert 0 < (batch["person_linked_evidence"] > 0).mean() < 0.9


@pytest.mark.parametrize("kind", STORES)
def test_resolving_the_same_request_twice_returns_the_first_answer_and_counts_once(
    kind: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    store = _store(kind, tmp_path, request)
    first = Attempt("a", 1.0e9, "W", "welcome", {"account": "x", "device": "d", "payment": "c"})
    again = store.resolve(first)
    assert store.resolve(first) == again
    second = store.resolve(
        Attempt("b", 1.0e9 + 60, "W", "welcome", {"account": "y", "device": "d", "payment": "c"})
    )
    assert second.person_id == again.person_id
    assert second.person_code_attempts == 1 and second.person_accounts == 2


@pytest.mark.parametrize(
    "kind", ["sqlite", "sqlite, two workers", pytest.param("redis", marks=pytest.mark.services)]
)
def test_concurrent_resolutions_lose_no_attempt(
    kind: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    # Four writers on one person: each waits its turn (SQLite) or retries a changed read (Redis). Two
    # SQLite stores on one file are two worker processes, each with its own thread queue: they take
    # turns through the file's lock alone.
    if kind.startswith("sqlite"):
        workers = 2 if "two" in kind else 1
        stores = [SqliteGraph(tmp_path / "graph.db", busy_timeout_ms=5000) for _ in range(workers)]
    else:
        stores = [_store(kind, tmp_path, request)]
    errors: list[BaseException] = []

    def work(worker: int) -> None:
        try:
            store = stores[worker % len(stores)]
            for i in range(25):
                store.resolve(Attempt(f"w{worker}-{i}", 1.0e9 + i, "W", "welcome",
                                      {"account": f"acct-{worker}-{i}", "device": "dev", "payment": "card"}))
        except BaseException as exc:  # surfaced by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    last = stores[0].resolve(
        Attempt("last", 2.0e9, "W", "welcome", {"account": "z", "device": "dev", "payment": "card"})
    )
    # Every one of the hundred attempts was counted on the one person they all are.
    assert last.person_code_attempts == 100 and last.person_accounts == 101
    # A retry reaching another worker gets the first answer.
    retry = stores[-1].resolve(Attempt("w0-0", 0.0, "W", "welcome", {"account": "other"}))
    assert retry.person_id == last.person_id


def test_explain_returns_hashes_counts_and_evidence_only(tmp_path: Path) -> None:
    store = SqliteGraph(tmp_path / "graph.db")
    store.resolve(Attempt("a", 1.7e9, "W", "welcome", {"account": "k1", "device": "kd", "payment": "kc",
                                                      "household": "kh"}))
    store.resolve(Attempt("b", 1.7e9 + 3 * 86_400, "W", "welcome", {"account": "k2", "device": "kd",
                                                                   "payment": "kc", "household": "kh"}))
    view = explain(store.view(), "b")
    assert view is not None
    assert view.evidence == ("device", "household", "payment")
    assert view.person["accounts"] == 2 and view.person["account_keys"] == ["k1", "k2"]
    assert [a["request_id"] for a in view.person["linked_attempts"]] == ["a", "b"]
    assert view.person["promotion_codes"] == {"W": 2}
    assert view.household is not None and view.household["attempts"] == 2
    assert explain(store.view(), "never") is None


def test_a_large_prune_goes_in_batches_a_resolution_gets_between(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Maintenance on a live graph: another worker's resolution waits for one batch, not the whole prune."""
    import features.graph as graph

    monkeypatch.setattr(graph, "PRUNE_BATCH", 2)
    day = 86_400.0
    store = SqliteGraph(tmp_path / "graph.db", GraphConfig(retention_days=30))
    # Another worker's store on the file: a lock of its own, and it gives up at once on a taken one.
    service = SqliteGraph(tmp_path / "graph.db", GraphConfig(retention_days=30), busy_timeout_ms=0)
    for i in range(5):
        store.resolve(Attempt(f"old-{i}", 1.0e9 + i, "W", "welcome", {"account": f"a{i}", "device": f"d{i}"}))
    conn = sqlite3.connect(tmp_path / "graph.db")
    before = conn.execute("SELECT count(*) FROM graph").fetchone()[0]
    conn.close()
    resolved: list[str] = []
    original = graph.WriteLock.transaction

    @contextmanager
    def resolving_between(self: Any, conn: Any, busy_timeout_ms: int) -> Iterator[Any]:
        with original(self, conn, busy_timeout_ms) as tx:
            yield tx
        if self is store._writes and len(resolved) < 3:  # noqa: SLF001 - the prune's lock, not the service's
            request_id = f"meanwhile-{len(resolved)}"
            service.resolve(Attempt(request_id, 1.0e9 + 45 * day, "W", "welcome", {"account": request_id}))
            resolved.append(request_id)

    monkeypatch.setattr(graph.WriteLock, "transaction", resolving_between)
    removed = store.prune(now=1.0e9 + 45 * day)
    assert removed == before
    assert len(resolved) >= 3
    for i in range(5):
        assert explain(store.view(), f"old-{i}") is None
    for request_id in resolved:
        assert explain(store.view(), request_id) is not None
    service.close()
    store.close()


def test_prune_forgets_links_older_than_the_retention(tmp_path: Path) -> None:
    store = SqliteGraph(tmp_path / "graph.db", GraphConfig(retention_days=30))
    day = 86_400.0
    store.resolve(Attempt("old", 1.0e9, "W", "welcome", {"account": "a", "device": "d", "payment": "c"}))
    store.resolve(Attempt("new", 1.0e9 + 40 * day, "W", "welcome", {"account": "b", "device": "e",
                                                                    "payment": "f"}))
    removed = store.prune(now=1.0e9 + 45 * day)
    assert removed > 0
    assert explain(store.view(), "old") is None and explain(store.view(), "new") is not None
    # The old person is gone: the same device and card found a new person.
    again = store.resolve(Attempt("back", 1.0e9 + 46 * day, "W", "welcome",
                                  {"account": "c", "device": "d", "payment": "c"}))
    assert again.evidence == () and again.person_code_attempts == 0
