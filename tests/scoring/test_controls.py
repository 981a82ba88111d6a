"""Campaign controls and allow/deny lists: validation, matching, the decision they give, and their store."""

from __future__ import annotations

import json
import sqlite3
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from features.identity import IdentityConfig, IdentityResolver
from features.velocity import SqliteVelocity
from scoring.artifact import LoadedModel
from scoring.controls import (
    CampaignControl,
    Controls,
    InvalidControl,
    ListEntry,
    list_key,
)
from scoring.controls_store import ControlsRefresher, ControlsStore
from scoring.policy import band_for, decide
from scoring.records import Records
from scoring.rules import default_rules
from scoring.schemas import ScoreRequest, to_event_record
from scoring.scorer import Scorer, ScorerConfig
from tests.scoring.conftest import STRICT, FakeOnline, FakeResolver

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
RISKY = {"device_stats__distinct_accounts_24h": 6.0, "household_stats__distinct_accounts_30d": 4.0,
         "code_stats__attempts_1h": 3.0}


def _req(request_id: str, code: str = "WELCOME10", **extra: Any) -> ScoreRequest:
    body: dict[str, Any] = {
        "request_id": request_id,
        "promotion": {"code": code, "type": "welcome", "per_customer_limit": 1},
        "account": {"account_id": f"acct-{request_id}"},
        "email": f"{request_id}@example.com",
        "device": {"device_id": f"dev-{request_id}-0001"},
        "shipping_address": {"line1": f"{len(request_id)} Main St", "postal_code": "10001"},
        "payment": {"fingerprint": f"fp-{request_id}"},
        "ip": "198.51.100.7",
    }
    body.update(extra)
    return ScoreRequest.model_validate(body)


def _scorer(
    tmp_path: Path, features: dict[str, float] | None = None, model: LoadedModel | None = None
) -> Scorer:
    return Scorer(FakeResolver(), FakeOnline(features or {}), SqliteVelocity(tmp_path / "velocity.db"), model,
                  default_rules(), Records(tmp_path / "scores.db"),
                  ScorerConfig(feature_deadline_ms=5000.0, request_deadline_ms=10000.0))


@pytest.fixture
def model(artifact_dir: Path) -> LoadedModel:
    return LoadedModel.from_dir(artifact_dir)


def _keys(req: ScoreRequest) -> dict[str, Any]:
    return FakeResolver().resolve(to_event_record(req)).as_dict()


def _controls(campaigns: list[CampaignControl] = (), entries: list[ListEntry] = ()) -> Controls:  # type: ignore[assignment]
    return Controls.of(list(campaigns), list(entries), 1)


def _logged_context(tmp_path: Path, request_id: str) -> dict[str, Any]:
    with sqlite3.connect(tmp_path / "scores.db") as conn:
        row = conn.execute(
            "SELECT context_json, decision FROM scores WHERE request_id = ?", (request_id,)
        ).fetchone()
    return {**json.loads(row[0]), "logged_decision": row[1]}


def _agrees(resp: Any) -> None:
    # What the contract promises every answer: points add up, and score, band and decision agree.
    assert sum(s.points for s in resp.signals) == resp.score
    assert resp.band == band_for(resp.score, {"clean": 0, "low": 10, "medium": 30, "high": 60})


# -- validation -------------------------------------------------------------------------------------


def test_a_control_or_entry_that_cannot_apply_is_refused_naming_its_field() -> None:
    with pytest.raises(InvalidControl, match=r"^refuse_threshold: must be at least"):
        CampaignControl("X", verify_threshold=80, refuse_threshold=82)
    with pytest.raises(InvalidControl, match=r"^verify_threshold: expected"):
        CampaignControl("X", verify_threshold=101)
    with pytest.raises(InvalidControl, match=r"^mode: expected one of active, paused, monitor"):
        CampaignControl("X", mode="off")  # type: ignore[arg-type]
    with pytest.raises(InvalidControl, match=r"^kind: expected one of"):
        ListEntry("deny", "shoe_size", "abc", "why")
    with pytest.raises(InvalidControl, match=r"^list: expected one of allow, deny"):
        ListEntry("grey", "email", "abc", "why")  # type: ignore[arg-type]
    with pytest.raises(InvalidControl, match=r"^reason:"):
        ListEntry("deny", "email", "abc", "  ")


def test_one_threshold_given_alone_moves_the_other_out_of_its_way() -> None:
    own = {"watch": 25, "verify": 55, "refuse": 80}
    assert CampaignControl("X", verify_threshold=90).thresholds(own) == {
        "watch": 25, "verify": 90, "refuse": 95}
    assert CampaignControl("X", refuse_threshold=40).thresholds(own) == {
        "watch": 25, "verify": 35, "refuse": 40}
    assert CampaignControl("X").thresholds(own) is None


def test_list_keys_are_the_identity_layers_own_keyed_hashes() -> None:
    resolver = IdentityResolver(IdentityConfig(pepper="secret-pepper"))
    keys = resolver.resolve({"email": "Jane.Doe+promo@Gmail.com", "ip": "203.0.113.77",
                             "phone": "+1 415 555 0134", "device_id": "3f0c7a52-9b1e-4d5e-8c11-2a9e5f6b7c80",
                             "account_id": "a-1"})
    assert list_key(resolver, "email", "janedoe@gmail.com") == keys.email_key
    assert list_key(resolver, "ip", "203.0.113.77") == keys.ip_key
    assert list_key(resolver, "network", "203.0.113.5") == keys.network_key
    assert list_key(resolver, "phone", "(415) 555-0134") == keys.phone_key
    assert list_key(resolver, "device", "3f0c7a52-9b1e-4d5e-8c11-2a9e5f6b7c80") == keys.device_key
    assert list_key(resolver, "account", "a-1") == keys.account_key
    assert "janedoe" not in list_key(resolver, "email", "janedoe@gmail.com")
    with pytest.raises(InvalidControl, match=r"^kind: household entries are given by key"):
        list_key(resolver, "household", "1 Main St")
    with pytest.raises(InvalidControl, match=r"^value: not a valid email"):
        list_key(resolver, "email", "not an email")


def test_deny_wins_over_allow_and_expired_entries_match_nothing() -> None:
    keys = {"email_key": "e1", "device_key": "d1"}
    allow = ListEntry("allow", "email", "e1", "staff")
    deny = ListEntry("deny", "device", "d1", "chargeback ring")
    assert _controls(entries=[allow, deny]).match(keys, None, NOW).entry == deny  # type: ignore[union-attr]
    assert _controls(entries=[allow]).match(keys, None, NOW).entry == allow  # type: ignore[union-attr]
    expired = ListEntry("deny", "device", "d1", "old", expires_at=NOW - timedelta(seconds=1))
    assert _controls(entries=[expired]).match(keys, None, NOW) is None
    # The request path passes epoch seconds.
    assert _controls(entries=[expired]).match(keys, None, NOW.timestamp()) is None
    assert _controls(entries=[deny]).match(keys, None, NOW.timestamp()).entry == deny  # type: ignore[union-attr]
    person = ListEntry("deny", "person", "p-9", "ring leader")
    assert _controls(entries=[person]).match(keys, "p-9", NOW).entry == person  # type: ignore[union-attr]


# -- the decision they give -------------------------------------------------------------------------


def test_a_paused_campaign_is_refused_with_its_reason_in_any_letter_case(tmp_path: Path) -> None:
    scorer = _scorer(tmp_path)
    scorer.controls = _controls([CampaignControl("Welcome10", mode="paused", reason="code leaked")])
    resp = scorer.score(_req("p1", code="welcome10"))
    assert resp.decision == "refuse" and resp.band == "high"
    assert resp.signals[0].code == "CAMPAIGN_PAUSED"
    assert resp.signals[0].description == "campaign paused: code leaked"
    _agrees(resp)
    assert _logged_context(tmp_path, "p1")["campaign_control"]["mode"] == "paused"
    assert scorer.score(_req("p2", code="SPRING5")).decision != "refuse"


def test_a_deny_entry_refuses_and_says_why(tmp_path: Path) -> None:
    scorer = _scorer(tmp_path)
    req = _req("d1")
    card = _keys(req)["payment_key"]
    scorer.controls = _controls(entries=[ListEntry("deny", "payment", card, "card ring")])
    resp = scorer.score(req)
    assert resp.decision == "refuse" and resp.signals[0].code == "DENY_LISTED"
    assert resp.signals[0].description == "the payment is on the deny list: card ring"
    _agrees(resp)
    assert _logged_context(tmp_path, "d1")["list_entry"] == {"list": "deny", "kind": "payment",
                                                             "reason": "card ring"}


def test_an_allow_entry_allows_a_risky_attempt_but_not_past_a_reached_cap(
    tmp_path: Path, model: LoadedModel
) -> None:
    scorer = _scorer(tmp_path, RISKY, model)
    first = _req("a1")
    baseline = scorer.score(first)
    assert baseline.decision in ("verify", "refuse")  # the risky features alone ask for friction
    again = _req("a2", account={"account_id": "acct-a1"}, email="a1@example.com",
                 device={"device_id": "dev-a1-0001"}, payment={"fingerprint": "fp-a1"})
    scorer.controls = _controls(entries=[ListEntry("allow", "account", _keys(first)["account_key"], "staff")])
    # Another product's intro offer: a cap of its own, which this account has not used yet.
    third = _req("a3", account={"account_id": "acct-a1"}, promotion={"code": "OTHER", "type": "intro_offer",
                                                                     "per_customer_limit": 1})
    resp = scorer.score(third)
    assert resp.decision == "allow" and resp.signals[0].code == "ALLOW_LISTED" and resp.signals[0].points < 0
    # Under the type's watch threshold: the score agrees with the decision.
    assert resp.score < scorer.policy().for_promotion("intro_offer")["watch"]
    _agrees(resp)
    # The same shopper's second welcome claim: the cap is the store's own promise, the list cannot lift it.
    capped = scorer.score(again)
    assert capped.decision == "refuse" and capped.signals[0].code == "CUSTOMER_CAP_REACHED"


def test_forced_verification_lifts_allow_and_watch_but_leaves_a_refusal(tmp_path: Path) -> None:
    scorer = _scorer(tmp_path)
    scorer.controls = _controls([CampaignControl("WELCOME10", force_verify=True, reason="bot wave")])
    resp = scorer.score(_req("v1"))
    assert resp.decision == "verify" and resp.signals[0].code == "FORCED_VERIFICATION"
    assert decide(resp.score, "welcome", {"default": {"watch": 30, "verify": 60, "refuse": 85}}) != "allow"
    _agrees(resp)
    spent = _req("v2", promotion={"code": "WELCOME10", "type": "welcome", "single_use": True})
    scorer.score(spent)
    again = scorer.score(_req("v3", promotion={"code": "WELCOME10", "type": "welcome", "single_use": True}))
    assert again.decision == "refuse" and again.signals[0].code == "SINGLE_USE_SPENT"


def test_monitor_only_answers_allow_and_logs_what_it_would_have_decided(
    tmp_path: Path, model: LoadedModel
) -> None:
    scorer = _scorer(tmp_path, RISKY, model)
    would = scorer.score(_req("m0")).decision
    assert would in ("verify", "refuse")
    scorer.controls = _controls([CampaignControl("WELCOME10", mode="monitor")])
    resp = scorer.score(_req("m1"))
    assert resp.decision == "allow"
    context = _logged_context(tmp_path, "m1")
    assert context["monitored_from"] == would and context["logged_decision"] == "allow"


def test_campaign_thresholds_replace_the_promotion_types(tmp_path: Path, model: LoadedModel) -> None:
    scorer = _scorer(tmp_path, RISKY, model)
    before = scorer.score(_req("t0"))
    scorer.controls = _controls([CampaignControl("WELCOME10", verify_threshold=95, refuse_threshold=100)])
    after = scorer.score(_req("t1"))
    assert before.decision in ("verify", "refuse") and after.decision in ("allow", "watch")
    assert _logged_context(tmp_path, "t1")["policy"]["thresholds"]["verify"] == 95


def test_a_score_alone_refuses_only_under_an_operators_refuse_threshold(
    tmp_path: Path, strict_model: LoadedModel
) -> None:
    scorer = _scorer(tmp_path, RISKY, strict_model)
    asked = scorer.score(_req("s0"))
    # Over the type's refuse threshold, and no hard rule matched: the score alone asks to verify.
    assert asked.score >= STRICT["default"]["refuse"] and asked.decision == "verify"
    assert not _logged_context(tmp_path, "s0")["policy"]["score_may_refuse"]
    scorer.controls = _controls([CampaignControl("WELCOME10", verify_threshold=10, refuse_threshold=15)])
    refused = scorer.score(_req("s1"))
    assert refused.score == asked.score and refused.decision == "refuse"
    assert _logged_context(tmp_path, "s1")["policy"]["score_may_refuse"]


# -- the store --------------------------------------------------------------------------------------


@pytest.fixture(params=["sqlite", "postgres"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ControlsStore]:
    if request.param == "sqlite":
        yield ControlsStore(None, tmp_path)
        return
    request.getfixturevalue("postgres_available")
    import psycopg2

    schema = "controls_" + uuid.uuid4().hex[:12]
    admin = psycopg2.connect(host="127.0.0.1", port=5432, user="postgres", dbname="test", connect_timeout=2)
    admin.autocommit = True
    admin.cursor().execute(f"CREATE SCHEMA {schema}")
    try:
        url = f"postgresql://postgres@127.0.0.1:5432/test?options=-csearch_path%3D{schema}"
        yield ControlsStore(url, tmp_path)
    finally:
        admin.cursor().execute(f"DROP SCHEMA {schema} CASCADE")
        admin.close()


def test_every_change_is_stored_and_audited_with_who_and_when(store: ControlsStore) -> None:
    assert store.version() == 0 and store.load().campaigns == {}
    store.update_campaign("SPRING5", "ana", "pause", mode="paused", reason="leaked on a forum")
    store.update_campaign("spring5", "ben", "verify", force_verify=True)
    control = store.campaign("Spring5")
    assert control is not None and control.mode == "paused" and control.force_verify
    assert control.updated_by == "ben" and control.reason == "leaked on a forum"
    store.add_entry(ListEntry("deny", "device", "k1", "ring", expires_at=NOW + timedelta(days=1)), "ana")
    assert store.remove_entry("deny", "device", "missing", "ana") is False
    audit = store.audit()
    assert [(a.actor, a.action) for a in audit] == [("ana", "list add"), ("ben", "verify"), ("ana", "pause")]
    assert audit[2].target == "campaign:SPRING5" and audit[2].detail["reason"] == "leaked on a forum"
    assert datetime.fromisoformat(audit[0].ts) <= datetime.now(UTC)
    snapshot = store.load()
    assert snapshot.version == audit[0].id and snapshot.campaign("SPRING5") is not None
    assert snapshot.match({"device_key": "k1"}, None, NOW) is not None
    assert store.remove_entry("deny", "device", "k1", "ben") is True
    assert store.load().match({"device_key": "k1"}, None, NOW) is None


def test_a_refused_change_records_nothing(store: ControlsStore) -> None:
    with pytest.raises(InvalidControl):
        store.update_campaign("X", "ana", "thresholds", verify_threshold=90, refuse_threshold=91)
    assert store.version() == 0 and store.campaigns() == []


def test_the_refresher_publishes_a_change_and_keeps_the_last_snapshot_when_the_store_fails(
    tmp_path: Path
) -> None:
    store = ControlsStore(None, tmp_path)
    seen: list[Controls] = []
    refresher = ControlsRefresher(store, seen.append, interval_s=3600)
    try:
        assert len(seen) == 1 and not refresher.refresh()  # nothing moved: nothing reloaded
        store.update_campaign("X1", "ana", "pause", mode="paused")
        assert refresher.refresh() and seen[-1].campaign("x1") is not None
        broken = ControlsStore("postgresql://postgres@127.0.0.1:1/test", tmp_path, timeout_s=1)
        refresher.store = broken
        assert not refresher.refresh() and len(seen) == 2
    finally:
        refresher.close()


def test_a_decision_record_says_an_operator_control_decided_not_a_signal(tmp_path: Path) -> None:
    from scoring.decisions import decision_record

    scorer = _scorer(tmp_path)
    scorer.controls = _controls([CampaignControl("WELCOME10", mode="paused")])
    scorer.score(_req("rec1"))
    record = decision_record(scorer.records, "rec1", None, scorer.rules)
    assert record is not None and record.deciding_rule == "campaign_paused"
    assert record.counterfactual is not None and not record.counterfactual.found
    assert "operator's control decided it (campaign_paused)" in record.counterfactual.note
    assert record.controls["campaign_control"]["mode"] == "paused" and record.let_through is None


def test_a_monitor_only_decision_record_shows_what_the_policy_decided(
    tmp_path: Path, model: LoadedModel
) -> None:
    from scoring.decisions import decision_record

    scorer = _scorer(tmp_path, RISKY, model)
    scorer.controls = _controls([CampaignControl("WELCOME10", mode="monitor")])
    assert scorer.score(_req("mon1")).decision == "allow"
    record = decision_record(scorer.records, "mon1", model, scorer.rules)
    assert record is not None and record.answer.decision == "allow"
    assert record.let_through == "monitor_only" and record.would_be_decision in ("verify", "refuse")
