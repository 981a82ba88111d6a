"""Invariants held on every answer, over generated requests, on the model path and the rules path.

The score agrees with the decision (refuse is high, verify at least medium, allow below the verify
threshold, and the policy table gives back the same decision for the score, a refusal excepted: a
score alone never refuses, so every refusal is a hard rule's), the points add up, the
deciding rule comes first and the rest are sorted, every signal carries an enumerated code and a
readable description, whatever thresholds the artifact or the configuration brought.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from scoring.artifact import LoadedModel
from scoring.policy import band_for, by_score, threshold_problems
from scoring.reasons import REASON_CODES
from scoring.records import Records
from scoring.rules import default_rules
from scoring.schemas import ScoreRequest, ScoreResponse
from scoring.scorer import Scorer, ScorerConfig, promo_is_limited, thresholds_for
from tests.scoring.conftest import FakeOnline, FakeResolver, FakeVelocity

#: Thresholds as an early training run wrote them: watch never reachable, refuse in the medium band.
UNREACHABLE = {
    "default": {"watch": 30, "verify": 30, "refuse": 60},
    "welcome": {"watch": 30, "verify": 30, "refuse": 30},
    "referral": {"watch": 20, "verify": 45, "refuse": 45},
    "sitewide": {"watch": 30, "verify": 101, "refuse": 101},
}
_BAD_TEXT = re.compile(r"\bnan\b|\bNone\b|\bunknown\b|\d+\.\d{3,}|[{}]", re.IGNORECASE)
_RANK = {"allow": 0, "watch": 1, "verify": 2, "refuse": 3}


@pytest.fixture(scope="module")
def scorers(artifact_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Scorer]]:
    root = tmp_path_factory.mktemp("invariants")
    config = {"feature_deadline_ms": 60_000.0, "request_deadline_ms": 60_000.0}
    odd_model = LoadedModel.from_dir(artifact_dir)
    odd_model.manifest["thresholds"] = UNREACHABLE
    built = {
        "model": Scorer(
            FakeResolver(),
            FakeOnline({}),
            FakeVelocity(),
            LoadedModel.from_dir(artifact_dir),
            default_rules(),
            Records(root / "model.db"),
            ScorerConfig(**config),
        ),
        "model_odd_thresholds": Scorer(
            FakeResolver(),
            FakeOnline({}),
            FakeVelocity(),
            odd_model,
            default_rules(),
            Records(root / "odd.db"),
            ScorerConfig(**config),
        ),
        "rules": Scorer(
            FakeResolver(),
            FakeOnline({}),
            FakeVelocity(),
            None,
            default_rules(),
            Records(root / "rules.db"),
            ScorerConfig(thresholds=UNREACHABLE, **config),
        ),
    }
    yield built
    for scorer in built.values():
        scorer.close()


_count = st.one_of(st.none(), st.sampled_from([0.0, 0.0, 0.0, 1.0, 2.0, 4.0, 12.0]))
features = st.fixed_dictionaries(
    {
        "device_stats__distinct_accounts_24h": _count,
        "household_stats__distinct_accounts_30d": _count,
        "code_stats__attempts_1h": _count,
        "device_stats__invalid_24h": _count,
        "code_stats__redeemed_total": st.one_of(st.none(), st.integers(0, 2).map(float)),
        "household_code_stats__redeemed_total": _count,
        "network_stats__attempts_1h": st.one_of(st.none(), st.integers(0, 40).map(float)),
    }
)

promotions = st.fixed_dictionaries(
    {
        "code": st.sampled_from(["WELCOME10", "ONCE-1", "ONCE-2", "REF-7", "VIP"]),
        "type": st.sampled_from(
            ["welcome", "referral", "intro_offer", "free_sample", "wholesale", "sitewide"]
        ),
    },
    optional={
        "single_use": st.booleans(),
        "per_customer_limit": st.integers(1, 2),
        "eligible_segment": st.just("wholesale"),
        "valid": st.booleans(),
        "referrer_account_id": st.sampled_from(["acct-1", "acct-2"]),
    },
)

bodies = st.fixed_dictionaries(
    {
        "promotion": promotions,
        "device": st.fixed_dictionaries(
            {"device_id": st.sampled_from(["dev-1234abcd", "dev-5678efgh", "dev-9abc0def", "0000"])}
        ),
    },
    optional={
        "account": st.one_of(
            st.just({"is_guest": True}),
            st.fixed_dictionaries(
                {"account_id": st.sampled_from(["acct-1", "acct-2", "acct-3"])},
                optional={"segment": st.sampled_from(["wholesale", "retail"])},
            ),
        ),
        "email": st.sampled_from(
            ["shopper@example.com", "a+promo@example.com", "x@mailinator.com", "not-an-email"]
        ),
        "shipping_address": st.fixed_dictionaries({"line1": st.sampled_from(["1 Main St", "9 Far Rd"])}),
        "payment": st.fixed_dictionaries({"fingerprint": st.sampled_from(["fp-1", "fp-2"])}),
        "ip": st.sampled_from(["198.51.100.7", "3.1.2.3"]),
    },
)


def check_invariants(scorer: Scorer, req: ScoreRequest, resp: ScoreResponse) -> None:
    """Every invariant of one answer (shared with the HTTP tests)."""
    policy = scorer.policy()
    assert threshold_problems(policy.thresholds, policy.bands) == []
    ptype = req.promotion.type
    assert 0 <= resp.score <= 100
    assert sum(s.points for s in resp.signals) == resp.score
    assert resp.band == band_for(resp.score, policy.bands)
    # The score agrees with the decision in the policy table itself (the promotion type's thresholds,
    # raised for a valid sitewide promotion without limit or segment)...
    promo = req.promotion
    own = thresholds_for(ptype, {"promo_type": ptype, "promo_valid": promo.valid,
                                 "promo_limited": promo_is_limited(promo),
                                 "promo_eligible_segment": promo.eligible_segment}, policy)
    if resp.decision != "refuse":
        assert resp.decision == by_score(resp.score, ptype, {"default": own}), resp
    # ...and so in its band.
    if resp.decision == "refuse":
        assert resp.band == "high" and resp.score >= own["refuse"], resp
    if resp.decision == "verify":
        assert resp.band in ("medium", "high"), resp
    if resp.decision == "allow":
        assert resp.score < own["verify"], resp
    rules = {r.id: r for r in scorer.rules.rules}
    # A model concept is named by its code, which may also be a rule's id (device_missing): only a
    # signal the rules produced can be the deciding rule.
    by_rule = [s for s in resp.signals if s.name in rules and s.source != "model"]
    first = resp.signals[0] if resp.signals else None
    deciding = first is not None and first in by_rule and rules[first.name].action == resp.decision
    rest = resp.signals[1:] if deciding else resp.signals
    assert [s.points for s in rest] == sorted((s.points for s in rest), reverse=True), resp.signals
    if any(rules[s.name].action == resp.decision for s in by_rule):
        assert deciding, f"the deciding rule is not first: {resp.signals}"
    # A score alone asks at most for verification: every refusal is a hard rule's, named first.
    if resp.decision == "refuse":
        assert deciding, f"refused without a refusing rule: {resp.signals}"
    codes = [s.code for s in resp.signals]
    assert set(codes) <= set(REASON_CODES)
    assert len(codes) == len(set(codes)), codes
    for s in resp.signals:
        assert s.description and not _BAD_TEXT.search(s.description), s


@given(which=st.sampled_from(["model", "model_odd_thresholds", "rules"]), body=bodies, values=features)
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow], database=None)
def test_every_answer_agrees_with_its_decision(
    scorers: dict[str, Scorer], which: str, body: dict[str, Any], values: dict[str, float | None]
) -> None:
    scorer = scorers[which]
    assert isinstance(scorer.online, FakeOnline)
    scorer.online.values = {k: v for k, v in values.items() if v is not None}
    req = ScoreRequest.model_validate({"request_id": uuid.uuid4().hex, **body})
    resp = scorer.score(req)
    check_invariants(scorer, req, resp)
    event(f"{which}: {resp.decision}")
    assert resp.fallback == (None if which != "rules" else "rules")
