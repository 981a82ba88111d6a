"""The rules table: every hard rule, soft points, determinism, and the frame evaluator agreeing."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import pytest

from scoring.rules import RulesError, default_rules, evaluate_rules, parse_rules, rules_score_frame

CLEAN: dict[str, Any] = {
    "promo_type": "welcome", "promo_limited": False, "promo_single_use": False, "device_missing": False,
    "ip_is_tor": False, "ip_is_datacenter": False, "segment_mismatch": False,
    "referral_shares_hard_identity": False, "single_use_spent": False, "customer_cap_reached": False,
}


def _run(**changes: Any) -> Any:
    return evaluate_rules({**CLEAN, **changes}, default_rules())


def test_clean_request_has_no_hard_decision_and_zero_score() -> None:
    outcome = _run()
    assert outcome.hard_decision is None and outcome.score == 0 and outcome.signals == ()


def test_spent_single_use_code_is_refused() -> None:
    outcome = _run(promo_single_use=True, single_use_spent=True, code_redeemed_before=3.0)
    assert outcome.hard_decision == "refuse"
    hit = next(s for s in outcome.signals if s.rule_id == "single_use_code_spent")
    assert hit.code == "SINGLE_USE_SPENT"
    assert hit.description == (
        "this single-use code was already claimed by an earlier checkout (redeemed 3 times)")
    # Claimed by a held reservation, not yet redeemed: the count is left out, never "0 times" or "unknown".
    held = _run(promo_single_use=True, single_use_spent=True)
    assert held.signals[0].description == "this single-use code was already claimed by an earlier checkout"


def test_per_customer_cap_reached_is_refused_naming_the_identity() -> None:
    outcome = _run(customer_cap_reached=True, promo_per_customer_limit=1, cap_blocked_identity="home network")
    assert outcome.hard_decision == "refuse"
    assert outcome.signals[0].description == (
        "per-customer limit of 1 use already reached on this home network")


def test_missing_device_asks_for_verification_on_a_limited_promotion_only() -> None:
    assert _run(device_missing=True, promo_limited=True).hard_decision == "verify"
    assert _run(device_missing=True, promo_limited=False).hard_decision is None


@pytest.mark.parametrize("flag", ["ip_is_tor", "ip_is_datacenter"])
def test_anonymous_network_on_limited_promotion_is_verified(flag: str) -> None:
    assert _run(promo_limited=True, **{flag: True}).hard_decision == "verify"
    assert _run(promo_limited=False, **{flag: True}).hard_decision is None


def test_referral_sharing_a_hard_identity_with_the_referrer_is_refused_only_for_referrals() -> None:
    shared = {"referral_shares_hard_identity": True, "referral_shared_identity": "shipping household"}
    outcome = _run(promo_type="referral", **shared)
    assert outcome.hard_decision == "refuse"
    assert any("(same shipping household)" in s.description for s in outcome.signals)
    assert _run(promo_type="sitewide", **shared).hard_decision is None


def test_segment_restricted_code_outside_its_segment_is_refused() -> None:
    outcome = _run(promo_type="wholesale", segment_mismatch=True, promo_eligible_segment="wholesale",
                   account_is_guest=False, shopper_segment="in the consumer segment")
    assert outcome.hard_decision == "refuse"
    assert outcome.signals[0].description == (
        "code reserved for another segment (wholesale); the shopper is in the consumer segment")


def test_segment_restricted_code_in_guest_checkout_is_verified_not_refused() -> None:
    # An honest trade buyer who skipped logging in cannot show the segment: verification, not refusal.
    outcome = _run(promo_type="wholesale", segment_mismatch=True, promo_eligible_segment="wholesale",
                   account_is_guest=True, shopper_segment="a guest")
    assert outcome.hard_decision == "verify"
    assert outcome.signals[0].code == "SEGMENT_INELIGIBLE"


def test_refuse_wins_over_verify() -> None:
    assert _run(device_missing=True, segment_mismatch=True, account_is_guest=False).hard_decision == "refuse"


def test_soft_rules_describe_actual_values_and_score_is_capped_at_100() -> None:
    outcome = _run(device_stats__distinct_accounts_24h=4.0)
    assert outcome.score == 25
    assert outcome.signals[0].description == "device used by 4 accounts in the last 24 hours"
    assert outcome.signals[0].code == "DEVICE_SHARED_ACCOUNTS"
    many = _run(device_missing=True, segment_mismatch=True, customer_cap_reached=True,
                email_disposable=True, device_stats__distinct_accounts_24h=9.0)
    assert many.score == 100 and sum(s.points for s in many.signals) == 100


def test_missing_inputs_never_match() -> None:
    outcome = evaluate_rules({"promo_type": "welcome"}, default_rules())
    assert outcome.signals == () and outcome.hard_decision is None


def test_evaluation_is_deterministic() -> None:
    inputs = {**CLEAN, "device_missing": True, "email_disposable": True, "network_stats__attempts_1h": 50.0}
    assert evaluate_rules(inputs, default_rules()) == evaluate_rules(dict(inputs), default_rules())


def test_malformed_tables_are_rejected_naming_the_rule() -> None:
    base = {"id": "r", "when": {"eq": ["x", True]}, "points": 5}
    with pytest.raises(RulesError, match="rule r: unknown operator"):
        parse_rules({"version": "1", "rules": [{**base, "when": {"exec": ["x", 1]}}]})
    with pytest.raises(RulesError, match=r"rule r\.action"):
        parse_rules({"version": "1", "rules": [{**base, "action": "ban"}]})
    with pytest.raises(RulesError, match="version"):
        parse_rules({"rules": [base]})
    with pytest.raises(RulesError, match=r"rule r\.code: 'MADE_UP' is not a reason code"):
        parse_rules({"version": "1", "rules": [{**base, "code": "MADE_UP"}]})
    with pytest.raises(RulesError, match=r"\{y\} is not an input of the rule's condition"):
        parse_rules({"version": "1", "rules": [{**base, "code": "CUSTOM_RULE", "description": "{x} {y}"}]})
    with pytest.raises(RulesError, match="unknown format spec"):
        parse_rules({"version": "1", "rules": [{**base, "code": "CUSTOM_RULE", "description": "{x:weeks}"}]})


def test_the_rules_version_tells_apart_an_edit_that_kept_the_version_field() -> None:
    base = {"id": "r", "code": "CUSTOM_RULE", "when": {"eq": ["x", True]}, "points": 5}
    one = parse_rules({"version": "1", "rules": [base]})
    edited = parse_rules({"version": "1", "rules": [{**base, "points": 6}]})
    assert one.version == edited.version == "1"
    assert one.label != edited.label and one.label.startswith("1+")
    assert default_rules().label.startswith(default_rules().version + "+")


def test_frame_scores_match_row_by_row_evaluation() -> None:
    rng = np.random.default_rng(0)
    n = 60
    frame = pd.DataFrame({
        "promo_type": rng.choice(["welcome", "referral", "sitewide", "free_sample"], n),
        "promo_limited": rng.random(n) < 0.5,
        "device_missing": rng.random(n) < 0.2,
        "ip_is_tor": rng.random(n) < 0.1,
        "ip_is_datacenter": rng.random(n) < 0.2,
        "email_disposable": rng.random(n) < 0.3,
        "device_stats__distinct_accounts_24h": np.where(rng.random(n) < 0.2, np.nan, rng.integers(0, 6, n)),
        "household_stats__distinct_accounts_30d": rng.integers(0, 6, n).astype(float),
        "device_stats__invalid_24h": rng.integers(0, 5, n).astype(float),
    })
    vector = rules_score_frame(frame)
    rows = [evaluate_rules({str(k): v for k, v in r.items()}, default_rules()).score
            for r in frame.to_dict("records")]
    assert vector.tolist() == rows
    assert vector.max() > 0
