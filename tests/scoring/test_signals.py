"""Signals: points add up to the score, are sorted, and describe actual values."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from scoring.artifact import LoadedModel
from scoring.rules import RuleHit
from scoring.signals import merge_signals, model_signals, rule_signals, split_points


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
    device = next(s for s in sigs if s.name == "shared device")
    assert device.description == "device used by 6 accounts in the last 24 h"
    assert device.points > 0


def test_small_contributions_are_grouped_as_other_factors() -> None:
    contrib = np.array([3.0, 1.0, 0.5, 0.5, 0.0])
    names = ["a", "b", "c", "d"]
    sigs = model_signals(contrib, names, np.zeros(4), score=60, baseline_points=10, specs={}, top_k=1)
    assert [s.name for s in sigs] == ["baseline", "a", "other factors"]
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
