"""Drift comparisons: a resample stays green, a bot farm turns red, and the live log's shape just works.

The live scoring log differs from the offline reference: no ``pattern`` (simulator truth), labels only
once feedback arrives, a feature the service does not log yet, ages that grow with the calendar and
one-off codes by the hundred. None of that may crash a report or turn it red.
"""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest

from features.definitions import feature_names
from monitoring.drift import (
    MAX_FINDINGS,
    DriftThresholds,
    ExitCode,
    compute_drift,
    exit_code,
    parse_signals,
)
from tests.monitoring.frames import DISPLAY_NAMES, FEATURES, FLAGS, SOME_FEATURES, as_scoring_log

AGES = tuple(n for n in feature_names() if n.endswith(("first_seen_days", "hours_since_first_use")))
TOTALS = tuple(n for n in feature_names() if n.endswith(("abuse_labels", "redeemed_total")))


def test_same_distribution_resample_is_green_with_no_feature_flagged(reference, resample):
    result = compute_drift(reference, resample, FEATURES)

    flagged = [(f.name, f.status, f.reasons) for f in result.features if f.status != "green"]
    assert flagged == []
    assert result.status == "green"
    assert exit_code(result) == ExitCode.GREEN == 0
    assert result.summary == ["no drift: scores, decisions, promotions and features match the reference"]


def test_bot_farm_is_red_and_the_summary_names_the_shifted_features_by_their_signal_names(
    reference, bot_farm
):
    result = compute_drift(reference, bot_farm, FEATURES, display_names=DISPLAY_NAMES)

    status = {f.name: f.status for f in result.features}
    assert status["device_stats__distinct_accounts_24h"] == "red"
    assert status["ip_is_datacenter"] == "red"
    assert status["device_stats__attempts_7d"] == "green"
    assert result.status == "red"
    assert exit_code(result) == ExitCode.RED == 2
    feature_line = next(s for s in result.summary if "features moved" in s or "feature moved" in s)
    assert "device_many_accounts_24h" in feature_line and "ip_datacenter" in feature_line
    assert "device_stats__distinct_accounts_24h" not in feature_line, "the fraud team reads signal names"
    named = next(f for f in result.features if f.name == "ip_is_datacenter")
    assert named.display_name == "ip_datacenter"
    mix_line = next(s for s in result.summary if s.startswith("decisions and bands moved"))
    assert re.search(r"sent to verification [\d.]+% -> [\d.]+%", mix_line), mix_line
    assert [c.name for c in result.decisions] == ["allow", "watch", "verify", "refuse"]
    assert [c.name for c in result.bands] == ["clean", "low", "medium", "high"]
    verify = next(c for c in result.decisions if c.name == "verify")
    assert verify.share_current > verify.share_reference + 0.06


def test_summary_is_a_few_ranked_findings_led_by_what_the_fraud_team_acts_on(reference, bot_farm):
    current = bot_farm.copy()
    current.loc[current.index[:200], "fallback"] = "rules"

    summary = compute_drift(reference, current, FEATURES).summary

    assert 1 <= len(summary) <= MAX_FINDINGS
    assert len(summary) == len(set(summary))
    kinds = [
        "score distribution",
        "decisions and bands",
        "rules fallback",
        "promotions moved",
        "features moved",
    ]
    order = [
        next(i for i, line in enumerate(summary) if k in line) for k in kinds if any(k in s for s in summary)
    ]
    assert order == sorted(order), summary
    assert summary[0].startswith("the score distribution shifted"), summary
    assert re.fullmatch(
        r"\d+ features? moved \(\d+ red, \d+ amber\), led by [^,]+(, [^,]+){0,2}", summary[-1]
    )


def test_bot_farm_shifts_the_signal_mix_even_when_signals_arrive_as_json(reference, bot_farm):
    result = compute_drift(reference, bot_farm, FEATURES)

    top = result.signals[0]
    assert top.name in ("device_stats__distinct_accounts_24h", "ip_is_datacenter")
    assert top.share_reference == 0.0
    assert top.share_current == pytest.approx(0.15, abs=0.03)
    assert top.status == "red"


def test_labels_report_share_delay_and_abuse_rate_per_pattern(reference, bot_farm):
    labels = compute_drift(reference, bot_farm, FEATURES).labels

    assert labels.available
    assert labels.labeled_share_current == pytest.approx(0.5, abs=0.05)
    assert 15 < labels.median_delay_hours_current < 40
    by_pattern = {p.pattern: p for p in labels.by_pattern}
    assert by_pattern["bot_farm"].labeled_reference == 0
    assert by_pattern["bot_farm"].abuse_rate_current == 1.0
    assert by_pattern["none"].abuse_rate_current == 0.0
    assert by_pattern["all labeled"].labeled_current == int(bot_farm["label"].notna().sum())


@pytest.mark.parametrize("labeled", [False, True], ids=["no feedback yet", "with feedback"])
def test_a_live_scoring_log_without_pattern_compares_with_a_patterned_reference(reference, resample, labeled):
    # The scoring log never has the simulator's pattern, and has no labels until feedback arrives: the
    # report must still run (this used to be KeyError: 'pattern' on the fraud team's main path).
    current = as_scoring_log(resample, labeled=labeled)

    result = compute_drift(reference, current, SOME_FEATURES)

    labels = result.labels
    assert labels.available
    overall = labels.by_pattern[0]
    assert overall.pattern == "all labeled"
    assert overall.labeled_reference == int(reference["label"].notna().sum())
    per_pattern = {p.pattern: p for p in labels.by_pattern[1:]}
    assert set(per_pattern) == {"bot_farm", "none", "welcome_cycling"} - {"bot_farm"}
    assert all(p.labeled_current is None and np.isnan(p.abuse_rate_current) for p in per_pattern.values())
    if labeled:
        assert overall.labeled_current == int(current["label"].notna().sum()) > 0
        assert labels.labeled_share_current == pytest.approx(0.5, abs=0.05)
    else:
        assert overall.labeled_current == 0 and labels.labeled_share_current == 0.0
        assert np.isnan(labels.median_delay_hours_current)
    assert result.status == "green"


def test_a_feature_one_side_does_not_log_is_listed_as_not_logged_never_as_drift(reference, resample):
    current = resample.drop(columns=list(FLAGS))
    ref = reference.drop(columns=["device_stats__attempts_1h"])

    result = compute_drift(ref, current, FEATURES, display_names=DISPLAY_NAMES)

    not_logged = {n.name: n for n in result.not_logged}
    assert set(not_logged) == {*FLAGS, "device_stats__attempts_1h"}
    assert not_logged["ip_is_datacenter"].missing_from == "current"
    assert not_logged["ip_is_datacenter"].display_name == "ip_datacenter"
    assert not_logged["device_stats__attempts_1h"].missing_from == "reference"
    compared = {f.name for f in result.features}
    assert compared.isdisjoint(not_logged)
    assert [f.name for f in result.features if f.status != "green"] == []
    assert result.status == "green"
    assert any("not in the current window" in n and "ip_datacenter" in n for n in result.notes)


def test_features_that_grow_with_the_calendar_are_compared_by_rate_and_stay_green(reference, resample):
    # Three months later every returning entity is older and every running total is higher, while new
    # entities keep arriving as they did.
    current = resample.copy()
    for name in AGES:
        day = 24 if name.endswith("hours_since_first_use") else 1
        returning = current[name] >= day
        current.loc[returning, name] = current.loc[returning, name] + 90 * day
    for name in TOTALS:
        current[name] = current[name] * 3 + 5 * (current[name] > 0)

    result = compute_drift(reference, current, FEATURES)

    by_name = {f.name: f for f in result.features}
    for name in (*AGES, *TOTALS):
        assert by_name[name].comparison == "rate", name
    assert "first seen less than 1 days" in by_name["device_stats__first_seen_days"].rate
    assert by_name["code_stats__redeemed_total"].rate == "share above zero"
    moved = [
        (n, by_name[n].status, by_name[n].reasons) for n in (*AGES, *TOTALS) if by_name[n].status != "green"
    ]
    assert moved == []
    assert by_name["device_stats__attempts_7d"].comparison == "distribution"


def test_a_rush_of_brand_new_devices_still_moves_the_age_rate(reference, resample):
    current = resample.copy()
    rows = current.index[: len(current) // 3]
    current.loc[rows, "device_stats__first_seen_days"] = 0.01  # first seen minutes ago

    result = compute_drift(reference, current, FEATURES)

    device_age = next(f for f in result.features if f.name == "device_stats__first_seen_days")
    assert device_age.status == "red", device_age.reasons


def test_feature_drift_alone_raises_the_badge_to_amber_at_most(reference, resample):
    # Features moved, but scores, decisions, bands, fallback and promotions did not: explain, not act.
    current = resample.copy()
    current["ip_is_datacenter"] = (np.random.default_rng(5).random(len(current)) < 0.5).astype(float)
    current["device_stats__attempts_24h"] = current["device_stats__attempts_24h"] + 4

    result = compute_drift(reference, current, FEATURES)

    assert {f.name for f in result.features if f.status == "red"} >= {
        "ip_is_datacenter",
        "device_stats__attempts_24h",
    }
    assert result.status == "amber"
    assert exit_code(result) == ExitCode.AMBER == 1
    assert result.summary[0].startswith("2 features moved (2 red, 0 amber)"), result.summary


def test_a_promotion_type_whose_verify_share_jumps_turns_the_badge_red(reference, resample):
    current = resample.copy()
    rows = current.index[(current["promo_type"] == "welcome").to_numpy()]
    current.loc[rows[: len(rows) // 3], "decision"] = "verify"

    result = compute_drift(reference, current, SOME_FEATURES)

    groups = {(g.dimension, g.value): g for g in result.groups}
    assert groups[("promo_type", "welcome")].status == "red"
    assert groups[("campaign", "welcome-spring")].status == "red"
    assert groups[("promo_type", "referral")].status == "green"
    assert groups[("campaign", "welcome-spring")].flagged_share_current > 0.3
    assert result.status == "red"
    line = next(s for s in result.summary if s.startswith("promotions moved"))
    # One entry per type, its codes that moved riding along.
    assert re.search(r": welcome [\d.]+% -> [\d.]+% \(welcome-\w+ [\d.]+% -> [\d.]+%", line), line
    assert "welcome-spring" in line, line


def test_single_use_codes_fold_into_their_promotion_type(reference, resample):
    # Every referral request carries its own one-off code; one welcome code is busy on both sides.
    ref, cur = as_scoring_log(reference, labeled=True), as_scoring_log(resample, labeled=True)
    for frame in (ref, cur):
        referral = (frame["promo_type"] == "referral").to_numpy()
        frame.loc[referral, "campaign"] = [f"REF-{i:05d}" for i in range(int(referral.sum()))]
        frame.loc[referral, "promo_code"] = frame.loc[referral, "campaign"]
        welcome = (frame["promo_type"] == "welcome").to_numpy()
        frame.loc[welcome, "campaign"] = np.where(
            np.arange(int(welcome.sum())) % 10 == 0, "WELCOME-1X", "WELCOME10"
        )

    result = compute_drift(ref, cur, SOME_FEATURES, DriftThresholds(min_group_rows=100))

    rows = [(g.dimension, g.value) for g in result.groups]
    assert len(rows) <= 3 * len(set(reference["promo_type"])), rows
    assert not any(value.startswith("REF-") for _, value in rows)
    assert ("promo_type", "referral") in rows
    assert ("other codes", "referral: other codes") not in rows, (
        "no busy referral code: the type row says it all"
    )
    assert ("campaign", "WELCOME10") in rows
    assert ("other codes", "welcome: other codes") in rows
    welcome = {g.value: g for g in result.groups if g.promo_type == "welcome"}
    assert (
        welcome["welcome"].n_current
        == welcome["WELCOME10"].n_current + welcome["welcome: other codes"].n_current
    )
    assert rows.index(("promo_type", "welcome")) < rows.index(("campaign", "WELCOME10"))


def test_rules_fallback_spike_is_red_and_explained(reference, resample):
    current = resample.copy()
    current.loc[current.index[:200], "fallback"] = "rules"

    result = compute_drift(reference, current, SOME_FEATURES)

    assert result.fallback.status == "red"
    assert result.status == "red"
    assert any("rules fallback answered 10%" in s for s in result.summary)


def test_missing_rate_jump_flags_a_feature(reference, resample):
    current = resample.copy()
    current.loc[current.index[:600], "payment_stats__attempts_24h"] = np.nan

    result = compute_drift(reference, current, FEATURES)

    feature = next(f for f in result.features if f.name == "payment_stats__attempts_24h")
    assert feature.status == "red"
    assert any("missing 0% -> 30%" in r for r in feature.reasons)


def test_thresholds_are_overridable(reference, resample):
    current = resample.copy()
    current.loc[current.index[:30], "fallback"] = "rules"  # 1.5% + background

    default = compute_drift(reference, current, SOME_FEATURES)
    lenient = compute_drift(
        reference, current, SOME_FEATURES, DriftThresholds(fallback_amber=0.05, fallback_red=0.1)
    )

    assert default.fallback.status == "amber"
    assert lenient.fallback.status == "green"


def test_bad_input_names_the_side_and_field(reference, resample):
    with pytest.raises(ValueError, match=r"current: missing required column\(s\) score"):
        compute_drift(reference, resample.drop(columns=["score"]), FEATURES)
    bad = resample.copy()
    bad["score"] = bad["score"].astype(object)
    bad.loc[bad.index[0], "score"] = "high"
    with pytest.raises(ValueError, match=r"current\.score: 1 non-numeric"):
        compute_drift(reference, bad, FEATURES)
    with pytest.raises(ValueError, match=r"reference: the scoring frame has no rows"):
        compute_drift(reference.iloc[0:0], resample, FEATURES)
    with pytest.raises(ValueError, match=r"thresholds\.psi"):
        DriftThresholds(psi_amber=0.3, psi_red=0.2)


def test_parse_signals_accepts_lists_json_and_signal_objects():
    assert parse_signals(["a", "b"]) == ["a", "b"]
    assert parse_signals('["a", "b"]') == ["a", "b"]
    assert parse_signals('[{"name": "a", "points": 12}]') == ["a"]
    assert parse_signals("a, b") == ["a", "b"]
    assert parse_signals(None) == [] and parse_signals("") == [] and parse_signals(float("nan")) == []


def test_exit_codes_are_distinct_and_documented():
    assert [int(c) for c in ExitCode] == [0, 1, 2, 3, 4]
    assert ExitCode.NOTHING_TO_COMPARE == 3 and ExitCode.FAILED == 4
    assert pd.Series([c.name for c in ExitCode]).is_unique
