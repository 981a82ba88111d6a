"""Signals: points add up to the score, are sorted, and describe actual values."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from scoring.artifact import LoadedModel
from scoring.rules import RuleHit
from scoring.schemas import Signal
from scoring.signals import (
    compose_signals,
    merge_signals,
    model_signals,
    rule_signals,
    split_points,
    top_concept_names,
)


@given(st.integers(-100, 100), st.lists(st.floats(-5, 5, allow_nan=False), min_size=1, max_size=30))
@settings(max_examples=200, deadline=None)
def test_split_points_always_adds_up(total: int, weights: list[float]) -> None:
    parts = split_points(total, weights)
    assert len(parts) == len(weights)
    if abs(sum(weights)) >= 1e-12:
        assert sum(parts) == total


def test_model_signals_add_up_to_the_score_for_real_contributions(artifact_dir: Path) -> None:
    model = LoadedModel.from_dir(artifact_dir)
    rng = np.random.default_rng(1)
    for _ in range(50):
        x = np.array([rng.integers(0, 8), rng.integers(0, 6), rng.integers(0, 9), rng.integers(0, 2)], float)
        _, _, _, score = model.predict(x)
        contrib = model.contributions(x)
        base = round(model.score_of_margin(float(contrib[-1])))
        sigs = model_signals(contrib, model.feature_names, x, score, base, model.signal_specs, top_k=2)
        assert sum(s.points for s in sigs) == score
        assert all(s.source == "model" for s in sigs)


def test_descriptions_use_manifest_templates_with_actual_values(artifact_dir: Path) -> None:
    model = LoadedModel.from_dir(artifact_dir)
    x = np.array([6.0, 0.0, 1.0, 1.0])
    _, _, _, score = model.predict(x)
    contrib = model.contributions(x)
    base = round(model.score_of_margin(float(contrib[-1])))
    sigs = model_signals(contrib, model.feature_names, x, score, base, model.signal_specs)
    device = next(s for s in sigs if s.code == "DEVICE_SHARED_ACCOUNTS")
    assert device.name == "device_shared_accounts"
    assert device.description == "device used by 6 accounts in the last 24 hours"
    assert device.points > 0


def test_small_contributions_are_grouped_as_other_factors() -> None:
    contrib = np.array([3.0, 1.0, 0.5, 0.5, 0.0])
    names = ["device_stats__attempts_1h", "email_disposable", "phone_voip", "ip_is_tor"]
    sigs = model_signals(contrib, names, np.zeros(4), score=60, baseline_points=10, top_k=1)
    assert [s.name for s in sigs] == ["baseline", "device_attempts", "other factors"]
    assert [s.code for s in sigs] == ["BASELINE", "DEVICE_ATTEMPTS", "OTHER_FACTORS"]
    assert sum(s.points for s in sigs) == 60


def test_merged_signals_are_sorted_by_points_and_rule_points_only_count_on_the_rules_path() -> None:
    hits = [RuleHit("device_missing", "no device", 10, "verify", "identity"),
            RuleHit("disposable_email", "disposable", 20, "none", "identity")]
    priced = merge_signals(rule_signals(hits, priced=True))
    assert [s.points for s in priced] == [20, 10]
    unpriced = rule_signals(hits, priced=False)
    assert all(s.points == 0 for s in unpriced)
    mixed = merge_signals(unpriced, priced)
    assert [s.points for s in mixed] == sorted((s.points for s in mixed), reverse=True)


def test_the_deciding_rule_comes_first_with_its_lift_and_absorbs_the_model_concept_of_its_code() -> None:
    model = [Signal(name="baseline", code="BASELINE", description="typical", points=5, source="model"),
             Signal(name="device_missing", code="DEVICE_MISSING", description="no device", points=4,
                    source="model"),
             Signal(name="code_age", code="CODE_AGE", description="new code, no history yet", points=12,
                    source="model")]
    hits = [RuleHit("device_missing", "no valid device id", 10, "verify", "identity", "DEVICE_MISSING"),
            RuleHit("disposable_email", "disposable", 20, "none", "identity", "EMAIL_DISPOSABLE")]
    out = compose_signals(model, rule_signals(hits, priced=False), deciding="device_missing", lift=34)
    assert [s.name for s in out] == ["device_missing", "code_age", "baseline", "disposable_email"]
    # The rule speaks for the concept once: its words, the model's 4 points plus the 34-point lift.
    assert out[0].points == 38 and out[0].source == "identity" and out[0].code == "DEVICE_MISSING"
    assert sum(s.points for s in out) == 21 + 34


def test_batch_top_signals_use_the_request_paths_concept_names() -> None:
    names = ["device_stats__distinct_accounts_24h", "device_stats__distinct_accounts_30d", "email_disposable",
             "made_up"]
    contrib = np.array([[0.5, 0.75, 1.0, 9.0, -2.0], [-1.0, 0.0, 0.5, 0.0, 0.1]])
    assert top_concept_names(names, contrib, top=2) == [["device_shared_accounts", "email_disposable"],
                                                        ["email_disposable"]]
