"""The exploration holdout: a deterministic share of model verify/refuse answers let through, and marked."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest

from config.settings import InvalidSettings, Settings
from scoring.artifact import LoadedModel
from scoring.policy import exploration_share, explores, unit_draw
from scoring.records import Records, exploration_frame
from scoring.rules import default_rules
from scoring.schemas import ScoreRequest, ScoreResponse
from scoring.scorer import Scorer, ScorerConfig
from tests.scoring.conftest import FakeOnline, FakeResolver, FakeVelocity

#: The tiny model scores 62 with a disposable email on a device of 2 accounts, 77 on a device of 6.
VERIFY_FEATURES = {"device_stats__distinct_accounts_24h": 2.0, "household_stats__distinct_accounts_30d": 2.0,
                   "code_stats__attempts_1h": 1.0}
REFUSE_FEATURES = {**VERIFY_FEATURES, "device_stats__distinct_accounts_24h": 6.0}
# Under the strict model's thresholds (conftest) those scores are 62 and 77: verify, and over refuse.


class BlockingVelocity(FakeVelocity):
    """Every reservation is refused: the promotion's cap is reached on this device."""

    def reserve(self, request_id: str, scope: str, identities: Any, limit: int, ttl_s: float, now: float,
                **_: Any) -> Any:
        class Blocked:
            status = "exhausted"
            blocked_by = "device:abc"
            matched: tuple[str, ...] = ("device:abc",)

        return Blocked()


class HoldingVelocity(FakeVelocity):
    """Every reservation is granted and held (whatever the keyword arguments of the cap policy)."""

    def reserve(self, request_id: str, scope: str, identities: Any, limit: int, ttl_s: float, now: float,
                **_: Any) -> Any:
        self.held[request_id] = (scope, list(identities))

        class Held:
            status = "reserved"
            blocked_by = None
            matched: tuple[str, ...] = ()

        return Held()


def _req(request_id: str, promo: dict[str, Any] | None = None, **extra: Any) -> ScoreRequest:
    body: dict[str, Any] = {
        "request_id": request_id,
        "promotion": {"code": "SPRING", "type": "intro_offer", **(promo or {})},
        "account": {"account_id": "acct-1"},
        "email": "someone@mailinator.com",
        "device": {"device_id": "dev-1234abcd"},
        "ip": "198.51.100.7",
    }
    body.update(extra)
    return ScoreRequest.model_validate(body)


def _scorer(path: Path, model: LoadedModel | None, shares: dict[str, float], features: dict[str, float],
            velocity: Any = None) -> Scorer:
    return Scorer(FakeResolver(), FakeOnline(features), velocity if velocity is not None else FakeVelocity(),
                  model, default_rules(), Records(path),
                  ScorerConfig(feature_deadline_ms=5000.0, request_deadline_ms=10000.0, exploration=shares))


def _logged(path: Path, request_id: str) -> tuple[str, int | None, str | None]:
    with sqlite3.connect(path) as conn:
        row = conn.execute("SELECT decision, explored, would_be_decision FROM scores WHERE request_id = ?",
                           (request_id,)).fetchone()
    return row[0], row[1], row[2]


def test_the_draw_is_a_fixed_function_of_the_request_id() -> None:
    assert unit_draw("req-1", "explore") == unit_draw("req-1", "explore")
    assert unit_draw("req-1", "explore") != unit_draw("req-2", "explore")
    assert unit_draw("req-1", "explore") != unit_draw("req-1", "shadow")
    drawn = sum(explores(f"req-{i}", 0.1) for i in range(5000))
    assert 400 < drawn < 600
    assert not any(explores(f"req-{i}", 0.0) for i in range(1000))
    assert all(explores(f"req-{i}", 1.0) for i in range(1000))


def test_the_share_of_a_promotion_type_falls_back_to_the_default_entry() -> None:
    shares = {"welcome": 0.2, "default": 0.05}
    assert exploration_share(shares, "welcome") == 0.2
    assert exploration_share(shares, "referral") == 0.05
    assert exploration_share({"welcome": 0.2}, "referral") == 0.0
    assert exploration_share({}, None) == 0.0


def test_the_same_request_id_gets_the_same_decision_on_any_worker(
    tmp_path: Path, strict_model: LoadedModel
) -> None:
    ids = [f"r-{i}" for i in range(40)]
    one = _scorer(tmp_path / "a.db", strict_model, {"default": 0.5}, VERIFY_FEATURES)
    other = _scorer(tmp_path / "b.db", strict_model, {"default": 0.5}, VERIFY_FEATURES)
    first = [one.score(_req(i)) for i in ids]
    again = [other.score(_req(i)) for i in reversed(ids)][::-1]
    assert [r.decision for r in first] == [r.decision for r in again]
    assert {r.decision for r in first} == {"allow", "verify"}
    assert [r.decision == "allow" for r in first] == [explores(i, 0.5) for i in ids]


def test_a_retry_of_an_explored_request_gets_the_explored_answer(
    tmp_path: Path, strict_model: LoadedModel
) -> None:
    scorer = _scorer(tmp_path / "s.db", strict_model, {"default": 1.0}, VERIFY_FEATURES)
    first = scorer.score(_req("r-1"))
    assert first.decision == "allow"
    assert scorer.score(_req("r-1")) == first


def test_share_zero_never_explores(tmp_path: Path, strict_model: LoadedModel) -> None:
    for shares in ({}, {"default": 0.0}, {"welcome": 1.0}):
        scorer = _scorer(tmp_path / f"{len(shares)}-{sum(shares.values())}.db", strict_model, shares,
                         VERIFY_FEATURES)
        answers = [scorer.score(_req(f"r-{i}")) for i in range(30)]
        assert {a.decision for a in answers} == {"verify"}
        assert exploration_frame(scorer.records.path).empty


# A score over the refuse threshold still only asks for verification (scoring.policy.by_score).
@pytest.mark.parametrize(("features", "would_be"), [(VERIFY_FEATURES, "verify"), (REFUSE_FEATURES, "verify")])
def test_share_one_explores_every_model_verification_keeping_score_and_signals(
    tmp_path: Path, strict_model: LoadedModel, features: dict[str, float], would_be: str
) -> None:
    plain = _scorer(tmp_path / "plain.db", strict_model, {}, features)
    explored = _scorer(tmp_path / "explored.db", strict_model, {"default": 1.0}, features)
    for i in range(10):
        before, after = plain.score(_req(f"r-{i}")), explored.score(_req(f"r-{i}"))
        assert before.decision == would_be and before.fallback is None
        assert after.decision == "allow"
        assert after.model_dump(exclude={"decision", "latency_ms"}) == before.model_dump(
            exclude={"decision", "latency_ms"})
        assert _logged(explored.records.path, f"r-{i}") == ("allow", 1, would_be)
        assert _logged(plain.records.path, f"r-{i}") == (would_be, None, None)


def test_explored_rows_are_marked_in_the_log_with_the_would_be_decision(
    tmp_path: Path, strict_model: LoadedModel
) -> None:
    scorer = _scorer(tmp_path / "s.db", strict_model, {"intro_offer": 0.5}, REFUSE_FEATURES)
    answers = {f"r-{i}": scorer.score(_req(f"r-{i}")) for i in range(40)}
    frame = exploration_frame(scorer.records.path)
    explored = {rid for rid, a in answers.items() if a.decision == "allow"}
    assert set(frame["request_id"]) == explored and 0 < len(explored) < 40
    assert set(frame["would_be_decision"]) == {"verify"} and set(frame["decision"]) == {"allow"}
    assert set(frame["campaign"]) == {"SPRING"}
    for rid in set(answers) - explored:
        assert _logged(scorer.records.path, rid) == ("verify", None, None)
    # The decision record keeps the answer as checkout got it.
    row = scorer.records.scored(next(iter(explored)))
    assert row is not None and ScoreResponse.model_validate_json(row["response_json"]).decision == "allow"


def test_a_spent_single_use_code_is_never_explored(tmp_path: Path, strict_model: LoadedModel) -> None:
    spent = {**REFUSE_FEATURES, "code_stats__redeemed_total": 3.0}
    scorer = _scorer(tmp_path / "s.db", strict_model, {"default": 1.0}, spent)
    for i in range(10):
        answer = scorer.score(_req(f"r-{i}", {"single_use": True}))
        assert answer.decision == "refuse" and answer.signals[0].name == "single_use_code_spent"
        assert _logged(scorer.records.path, f"r-{i}") == ("refuse", None, None)


def test_a_reached_cap_is_never_explored(tmp_path: Path, strict_model: LoadedModel) -> None:
    scorer = _scorer(tmp_path / "s.db", strict_model, {"default": 1.0}, REFUSE_FEATURES,
                     velocity=BlockingVelocity())
    for i in range(10):
        answer = scorer.score(_req(f"r-{i}", {"per_customer_limit": 1}))
        assert answer.decision == "refuse"
        assert _logged(scorer.records.path, f"r-{i}") == ("refuse", None, None)


def test_hard_rules_and_the_rules_fallback_are_never_explored(
    tmp_path: Path, strict_model: LoadedModel
) -> None:
    # A code reserved for another segment is a hard refuse rule: the rule decides, not the model's threshold.
    scorer = _scorer(tmp_path / "a.db", strict_model, {"default": 1.0}, VERIFY_FEATURES)
    answer = scorer.score(_req("r-1", {"eligible_segment": "vip"}))
    assert answer.decision == "refuse" and answer.signals[0].name == "segment_not_eligible"
    assert _logged(scorer.records.path, "r-1") == ("refuse", None, None)
    # Without a model the rules' points are the score: no model judgment to measure.
    rules_only = _scorer(tmp_path / "b.db", None, {"default": 1.0},
                         {**REFUSE_FEATURES, "household_stats__distinct_accounts_30d": 9.0})
    answers = [rules_only.score(_req(f"r-{i}", {"type": "welcome"}, ip="3.1.1.1")) for i in range(5)]
    assert all(a.fallback == "rules" and a.decision in ("verify", "refuse") for a in answers)
    assert exploration_frame(rules_only.records.path).empty


def test_an_explored_capped_attempt_keeps_its_hold(tmp_path: Path, strict_model: LoadedModel) -> None:
    velocity = HoldingVelocity()
    scorer = _scorer(tmp_path / "s.db", strict_model, {"default": 1.0}, REFUSE_FEATURES, velocity=velocity)
    answer = scorer.score(_req("r-1", {"per_customer_limit": 3}))
    assert answer.decision == "allow" and _logged(scorer.records.path, "r-1") == ("allow", 1, "verify")
    # Let through, it is a use of the cap like any allowed attempt: the hold is not given back.
    assert "r-1" in velocity.held


@pytest.mark.parametrize(
    ("value", "expected"),
    [("0.02", {"default": 0.02}), ('{"welcome": 0.1, "default": 0.01}', {"welcome": 0.1, "default": 0.01}),
     ("", {})],
)
def test_the_exploration_setting_takes_one_share_or_a_share_per_type(
    value: str, expected: dict[str, float], tmp_path: Path
) -> None:
    settings = Settings.from_env({"PROMOGUARD_EXPLORATION": value}, root=tmp_path)
    assert settings.exploration_shares == expected
    hash(settings)


@pytest.mark.parametrize(
    ("value", "message"),
    [("lots", "expected a share 0-1 or a JSON object"),
     ('{"welcom": 0.1}', "unknown promotion type 'welcom'"),
     ("1.5", "must be between 0 and 1"),
     ("[0.1]", "expected a share 0-1 or a JSON object")],
)
def test_a_bad_exploration_setting_names_the_variable(value: str, message: str, tmp_path: Path) -> None:
    with pytest.raises(InvalidSettings, match="PROMOGUARD_EXPLORATION") as caught:
        Settings.from_env({"PROMOGUARD_EXPLORATION": value}, root=tmp_path)
    assert message in str(caught.value)
