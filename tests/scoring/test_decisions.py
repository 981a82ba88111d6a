"""Decision records: frozen answers, versions, inputs, history, and counterfactuals that really change it."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from scoring.artifact import LoadedModel
from scoring.decisions import decision_record
from scoring.policy import DECISIONS, decide, stricter
from scoring.records import Records
from scoring.rules import RulesTable, default_rules, evaluate_rules
from scoring.schemas import DecisionRecord, OutcomeRequest, ScoreRequest
from scoring.scorer import Scorer, ScorerConfig, feature_row
from tests.scoring.conftest import FakeOnline, FakeResolver, FakeVelocity

QUIET = {
    "device_stats__distinct_accounts_24h": 0.0,
    "household_stats__distinct_accounts_30d": 0.0,
    "code_stats__attempts_1h": 0.0,
}
CROWDED = {
    "device_stats__distinct_accounts_24h": 9.0,
    "household_stats__distinct_accounts_30d": 4.0,
    "code_stats__attempts_1h": 1.0,
}
RAW_EMAIL = "jane.doe+promo@mailinator.com"


def _req(request_id: str, **extra: Any) -> ScoreRequest:
    body: dict[str, Any] = {
        "request_id": request_id,
        "promotion": {"code": "WELCOME10", "type": "welcome", "per_customer_limit": 1},
        "account": {"account_id": "acct-1"},
        "email": RAW_EMAIL,
        "device": {"device_id": "dev-1234abcd"},
        "shipping_address": {"line1": "1 Main St", "postal_code": "10001"},
        "payment": {"fingerprint": "fp-1"},
        "ip": "198.51.100.7",
    }
    body.update(extra)
    return ScoreRequest.model_validate(body)


@pytest.fixture
def model(artifact_dir: Path) -> LoadedModel:
    return LoadedModel.from_dir(artifact_dir)


def _scorer(tmp_path: Path, model: LoadedModel | None, values: dict[str, float]) -> Scorer:
    return Scorer(
        FakeResolver(),
        FakeOnline(values),
        FakeVelocity(),
        model,
        default_rules(),
        Records(tmp_path / "scores.db"),
        ScorerConfig(feature_deadline_ms=60_000.0, request_deadline_ms=60_000.0),
    )


def _record(scorer: Scorer, request_id: str) -> DecisionRecord:
    record = decision_record(scorer.records, request_id, scorer.model, scorer.rules)
    assert record is not None
    return record


def rescore_without(record: DecisionRecord, model: LoadedModel | None, rules: RulesTable) -> str:
    """The decision from the record's own inputs with its counterfactual applied, recomputed here."""
    cf = record.counterfactual
    assert cf is not None and record.policy is not None
    neutral = cf.neutralised
    inputs = {**record.features, **record.rule_inputs, **neutral}
    outcome = evaluate_rules(inputs, rules, skip_codes=set(cf.rules_left_out))
    if record.answer.fallback is None:
        assert model is not None
        known = {k: v for k, v in {**record.features, **neutral}.items() if v is not None}
        score = model.predict(feature_row(model.feature_names, known))[3]
    else:
        score = outcome.score
    table = {"default": record.policy.thresholds}
    return stricter(decide(score, record.policy.promo_type, table), outcome.hard_decision)


def test_a_refusal_by_a_hard_rule_records_what_would_have_allowed_it(
    tmp_path: Path, model: LoadedModel
) -> None:
    scorer = _scorer(tmp_path, model, QUIET)
    first = scorer.score(_req("first"))
    scorer.outcome(OutcomeRequest(request_id="first", outcome="redeemed"))
    again = scorer.score(_req("again", account={"account_id": "acct-2"}, email="other@example.com"))
    assert first.decision in ("allow", "watch") and again.decision == "refuse"
    record = _record(scorer, "again")
    assert record.answer == again  # frozen: the answer exactly as checkout got it
    assert record.model_version == "7" and record.rules_version == scorer.rules.label
    assert record.deciding_rule == "customer_cap_reached"
    assert record.policy is not None and record.policy.thresholds == scorer.policy().for_promotion("welcome")
    assert record.rule_inputs["customer_cap_reached"] is True
    assert {"resolve", "features", "model", "rules", "total"} <= set(record.timings_ms)
    cf = record.counterfactual
    assert cf is not None and cf.found
    assert [s.code for s in cf.signals] == ["CUSTOMER_CAP_REACHED"]
    assert (
        cf.explanation == f"would have been {'allowed' if cf.decision == 'allow' else 'allowed on watch'} "
        "if the per-customer limit had not been reached"
    )
    assert DECISIONS.index(rescore_without(record, model, scorer.rules)) < DECISIONS.index("refuse")
    assert rescore_without(record, model, scorer.rules) == cf.decision


def test_a_model_verification_names_the_concepts_whose_absence_allows_it(
    tmp_path: Path, model: LoadedModel
) -> None:
    scorer = _scorer(tmp_path, model, CROWDED)
    resp = scorer.score(_req("crowd", promotion={"code": "INTRO5", "type": "intro_offer"}))
    assert resp.decision in ("verify", "refuse") and resp.fallback is None
    record = _record(scorer, "crowd")
    assert record.deciding_rule is None
    cf = record.counterfactual
    assert cf is not None and cf.found, cf
    assert "DEVICE_SHARED_ACCOUNTS" in {s.code for s in cf.signals}
    assert cf.neutralised["device_stats__distinct_accounts_24h"] == 0.0
    assert "this device had not been used by other accounts" in cf.explanation
    assert rescore_without(record, model, scorer.rules) == cf.decision
    assert DECISIONS.index(cf.decision or "refuse") < DECISIONS.index(resp.decision)


def test_the_rules_path_record_re_scores_with_the_rules(tmp_path: Path) -> None:
    scorer = _scorer(tmp_path, None, QUIET)
    resp = scorer.score(_req("nodev", device={"device_id": "0000"}, email="shopper@example.com"))
    assert resp.decision == "verify" and resp.fallback == "rules"
    record = _record(scorer, "nodev")
    cf = record.counterfactual
    assert cf is not None and cf.found
    assert cf.explanation == "would have been allowed if a valid device id had been sent"
    assert cf.neutralised == {"device_missing": 0.0} and cf.rules_left_out == ["DEVICE_MISSING"]
    assert rescore_without(record, None, scorer.rules) == "allow"


def test_allowed_answers_have_no_counterfactual_and_the_record_keeps_later_outcomes_and_labels(
    tmp_path: Path, model: LoadedModel
) -> None:
    scorer = _scorer(tmp_path, model, QUIET)
    resp = scorer.score(_req("calm"))
    assert resp.decision in ("allow", "watch")
    scorer.outcome(OutcomeRequest(request_id="calm", outcome="redeemed"))
    scorer.records.add_feedback("calm", "legit", "manual_review", datetime(2026, 11, 23, tzinfo=UTC))
    record = _record(scorer, "calm")
    assert record.counterfactual is None
    assert [(o.outcome, o.reservation) for o in record.outcomes] == [("redeemed", "confirmed")]
    assert [(f.label, f.source) for f in record.feedback] == [("legit", "manual_review")]
    assert decision_record(scorer.records, "never", scorer.model, scorer.rules) is None


def test_a_counterfactual_is_not_invented_when_the_model_or_rules_changed(
    tmp_path: Path, model: LoadedModel
) -> None:
    scorer = _scorer(tmp_path, model, CROWDED)
    scorer.score(_req("crowd", promotion={"code": "INTRO5", "type": "intro_offer"}))
    other_rules = RulesTable(version="x", rules=default_rules().rules, digest="f" * 64)
    cf = decision_record(scorer.records, "crowd", model, other_rules).counterfactual  # type: ignore[union-attr]
    assert cf is not None and not cf.found and "rules table changed" in (cf.note or "")
    cf = decision_record(scorer.records, "crowd", None, scorer.rules).counterfactual  # type: ignore[union-attr]
    assert cf is not None and not cf.found and "model 7 answered, no model is loaded" in (cf.note or "")


def test_the_record_holds_hashed_keys_only(tmp_path: Path, model: LoadedModel) -> None:
    scorer = _scorer(tmp_path, model, CROWDED)
    scorer.score(_req("crowd"))
    blob = json.dumps(_record(scorer, "crowd").model_dump(mode="json"))
    assert RAW_EMAIL not in blob and "198.51.100.7" not in blob and "1 Main St" not in blob
    assert "fp-1" not in blob and "dev-1234abcd" not in blob


def test_the_model_alone_does_not_put_friction_on_a_valid_sitewide_code_without_limits(
    tmp_path: Path, model: LoadedModel
) -> None:
    # The same crowded device: verified or refused on an intro offer, only watched on a sitewide code
    # that nobody can claim twice, where no seed pattern has anything to game.
    scorer = _scorer(tmp_path, model, CROWDED)
    limited = scorer.score(_req("intro", promotion={"code": "INTRO5", "type": "intro_offer"}))
    open_code = scorer.score(_req("site", promotion={"code": "SITE5", "type": "sitewide"}))
    assert limited.decision in ("verify", "refuse")
    assert open_code.decision == "watch" and open_code.score < 95
    record = _record(scorer, "site")
    assert record.policy is not None and record.policy.thresholds["verify"] == 95
    # A limit, a segment or an invalid code brings the sitewide type's own thresholds back.
    capped = scorer.score(_req("site-capped", promotion={"code": "SITE6", "type": "sitewide",
                                                          "per_customer_limit": 3}))
    assert capped.decision in ("verify", "refuse")
