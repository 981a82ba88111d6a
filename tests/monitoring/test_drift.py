"""Drift reports: a resample stays green, a new bot farm turns red, and the report stands on its own."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from features.definitions import feature_names
from monitoring.drift import (
    DriftThresholds,
    build_suite,
    compute_drift,
    exit_code,
    parse_signals,
    run_drift,
    validate_current,
    write_report,
)

FLAGS = ("ip_is_datacenter", "ip_is_tor", "email_disposable")
FEATURES = (*feature_names(), *FLAGS)
#: A slice of the catalog (with the features the bot farm moves) where the full one only costs time.
SOME_FEATURES = (*feature_names()[:20], *FLAGS)
PROMO_TYPES = ("welcome", "referral", "intro_offer", "free_sample", "wholesale", "sitewide")
START = pd.Timestamp("2025-03-01", tz="UTC")


def _feature_column(rng: np.random.Generator, name: str, n: int) -> np.ndarray:
    """Plausible values per feature kind: Poisson counts, ages with missing values, shares."""
    feature = name.split("__")[-1]
    if feature in ("first_seen_days", "hours_since_first_use"):
        values = rng.exponential(30.0, n)
        values[rng.random(n) < 0.3] = np.nan
        return values
    if feature == "new_account_share_7d":
        return rng.beta(2, 5, n)
    lam = {"1h": 0.2, "24h": 1.0, "7d": 3.0, "30d": 6.0}.get(feature.rsplit("_", 1)[-1], 0.5)
    return rng.poisson(lam, n).astype(float)


def scoring_frame(
    seed: int, n: int, *, bot_share: float = 0.0, signals_as_json: bool = False
) -> pd.DataFrame:
    """A scoring frame: mostly legit requests, some abuse, optionally a bot farm on datacenter IPs."""
    rng = np.random.default_rng(seed)
    kind = rng.choice(["legit", "abuse", "bot"], n, p=[0.95 - bot_share, 0.05, bot_share])
    is_bot, is_abuse = kind == "bot", kind == "abuse"
    frame = pd.DataFrame({name: _feature_column(rng, name, n) for name in feature_names()})
    frame["ip_is_datacenter"] = (rng.random(n) < np.where(is_bot, 0.9, 0.02)).astype(float)
    frame["ip_is_tor"] = (rng.random(n) < 0.01).astype(float)
    frame["email_disposable"] = (rng.random(n) < np.where(is_abuse, 0.4, 0.03)).astype(float)
    accounts = frame["device_stats__distinct_accounts_24h"].to_numpy()
    frame["device_stats__distinct_accounts_24h"] = np.where(is_bot, rng.poisson(8, n) + 4.0, accounts)

    raw = np.where(kind == "legit", rng.beta(1.5, 15, n), rng.beta(8, 3, n))
    score = np.clip(np.round(100 * raw), 0, 100).astype(int)
    frame["score"] = score
    frame["band"] = pd.cut(score, [-1, 9, 29, 59, 100], labels=["clean", "low", "medium", "high"]).astype(str)
    frame["decision"] = np.select(
        [score >= 85, score >= 60, score >= 30], ["refuse", "verify", "watch"], "allow"
    )
    frame["fallback"] = ["rules" if u < 0.002 else None for u in rng.random(n)]

    promo_type = rng.choice(PROMO_TYPES, n)
    season = rng.choice(["spring", "summer"], n)
    frame["promo_type"] = promo_type
    frame["campaign"] = [f"{t}-{s}" for t, s in zip(promo_type, season, strict=True)]
    frame["promo_code"] = [f"{t.upper()}-{s.upper()}-10" for t, s in zip(promo_type, season, strict=True)]
    frame["ts"] = START + pd.to_timedelta(rng.uniform(0, 7 * 86_400, n), unit="s")
    frame["request_id"] = [f"req-{seed}-{i}" for i in range(n)]

    signals: list[list[str]] = []
    for k in kind:
        if k == "bot":
            signals.append(["device_stats__distinct_accounts_24h", "ip_is_datacenter"])
        elif k == "abuse":
            signals.append(["email_disposable", "email_stats__first_seen_days"])
        else:
            signals.append(["code_stats__attempts_24h"] if rng.random() < 0.3 else [])
    frame["top_signals"] = [json.dumps(s) for s in signals] if signals_as_json else signals

    labeled = rng.random(n) < 0.5
    frame["label"] = np.where(labeled, (kind != "legit").astype(float), np.nan)
    frame["label_ts"] = frame["ts"] + pd.to_timedelta(rng.exponential(36.0, n), unit="h")
    frame.loc[~labeled, "label_ts"] = pd.NaT
    frame["pattern"] = np.select([is_bot, is_abuse], ["bot_farm", "welcome_cycling"], "none")
    return frame


@pytest.fixture(scope="module")
def reference() -> pd.DataFrame:
    return scoring_frame(seed=11, n=3000)


@pytest.fixture(scope="module")
def resample() -> pd.DataFrame:
    return scoring_frame(seed=12, n=2000)


@pytest.fixture(scope="module")
def bot_farm() -> pd.DataFrame:
    return scoring_frame(seed=13, n=2000, bot_share=0.15, signals_as_json=True)


def test_same_distribution_resample_is_green_with_no_feature_flagged(reference, resample, tmp_path):
    result, paths = run_drift(reference, resample, FEATURES, tmp_path)

    flagged = [(f.name, f.status, f.reasons) for f in result.features if f.status != "green"]
    assert flagged == []
    assert result.violations == []
    assert result.status == "green"
    assert exit_code(result) == 0
    assert result.summary[0] == "no drift: scores, decisions and features match the reference"
    assert paths.html.exists()


def test_bot_farm_is_red_and_names_the_shifted_features(reference, bot_farm):
    result = compute_drift(reference, bot_farm, FEATURES)

    status = {f.name: f.status for f in result.features}
    assert status["device_stats__distinct_accounts_24h"] == "red"
    assert status["ip_is_datacenter"] == "red"
    assert status["device_stats__attempts_7d"] == "green"
    assert result.status == "red"
    assert exit_code(result) == 2
    feature_line = next(s for s in result.summary if "features drifted" in s or "feature drifted" in s)
    assert "device_stats__distinct_accounts_24h" in feature_line
    assert "ip_is_datacenter" in feature_line
    verify_line = next(s for s in result.summary if "sent to verification" in s)
    assert re.fullmatch(
        r"the share of decisions sent to verification rose from [\d.]+% to [\d.]+%", verify_line
    )
    assert [c.name for c in result.decisions] == ["allow", "watch", "verify", "refuse"]
    assert [c.name for c in result.bands] == ["clean", "low", "medium", "high"]
    assert len(result.summary) == len(set(result.summary))
    verify = next(c for c in result.decisions if c.name == "verify")
    assert verify.share_current > verify.share_reference + 0.06


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


def test_rules_fallback_spike_is_red_and_explained(reference, resample):
    current = resample.copy()
    current.loc[current.index[:200], "fallback"] = "rules"

    result = compute_drift(reference, current, FEATURES)

    assert result.fallback.status == "red"
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

    default = compute_drift(reference, current, FEATURES)
    lenient = compute_drift(
        reference, current, FEATURES, DriftThresholds(fallback_amber=0.05, fallback_red=0.1)
    )

    assert default.fallback.status == "amber"
    assert lenient.fallback.status == "green"


def test_gx_suite_flags_a_column_gone_mostly_null_and_out_of_range_values(reference, resample):
    current = resample.copy()
    current.loc[current.index[:1500], "email_stats__first_seen_days"] = np.nan
    current.loc[current.index[0], "score"] = 150
    current.loc[current.index[:100], "code_stats__attempts_24h"] = -3.0
    current = current.drop(columns=["phone_stats__attempts_1h"])

    features = (
        *SOME_FEATURES,
        "email_stats__first_seen_days",
        "code_stats__attempts_24h",
        "phone_stats__attempts_1h",
    )
    violations = validate_current(current, build_suite(reference, features))

    found = {(v.expectation, v.column) for v in violations}
    assert ("expect_column_values_to_not_be_null", "email_stats__first_seen_days") in found
    assert ("expect_column_values_to_be_between", "score") in found
    assert ("expect_column_values_to_be_between", "code_stats__attempts_24h") in found
    assert ("expect_column_to_exist", "phone_stats__attempts_1h") in found
    null = next(v for v in violations if v.column == "email_stats__first_seen_days")
    assert null.unexpected_percent > 70
    assert "missing" in null.observed
    flagged_columns = {v.column for v in violations}
    assert flagged_columns == {
        "email_stats__first_seen_days",
        "score",
        "code_stats__attempts_24h",
        "phone_stats__attempts_1h",
    }


def test_gx_suite_rejects_unknown_decisions_and_bands(reference, resample):
    current = resample.copy()
    current.loc[current.index[:5], "decision"] = "block"
    current.loc[current.index[:5], "band"] = "extreme"

    violations = validate_current(current, build_suite(reference, FEATURES[:3]))

    by_column = {v.column: v for v in violations}
    assert "block" in by_column["decision"].observed
    assert "extreme" in by_column["band"].observed


def test_report_html_is_self_contained_and_json_has_the_expected_keys(reference, bot_farm, tmp_path):
    current = bot_farm.copy()
    current.loc[current.index[:300], "campaign"] = "<script>alert(1)</script>"

    result, paths = run_drift(reference, current, SOME_FEATURES, tmp_path, current_label="last 7 days")

    page = paths.html.read_text(encoding="utf-8")
    assert "http://" not in page and "https://" not in page
    assert "<script" not in page.lower() and "javascript:" not in page.lower()
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    images = re.findall(r"<img [^>]*src='([^']*)'", page)
    assert len(images) >= 4
    assert all(src.startswith("data:image/png;base64,") for src in images)
    assert re.search(r"<link|@import|url\(", page) is None
    assert page.index(result.summary[0]) < page.index("<h2>Scores</h2>")
    for section in (
        "Scores",
        "Decisions &amp; bands",
        "Per promotion",
        "Features",
        "Data validation",
        "Top signals",
        "Labels &amp; abuse rate per pattern",
    ):
        assert f"<h2>{section}" in page

    payload = json.loads(paths.json.read_text(encoding="utf-8"))
    assert {"status", "exit_code", "summary", "metrics", "features", "violations", "thresholds"} <= set(
        payload
    )
    assert payload["status"] == "red" and payload["exit_code"] == 2
    assert {"name", "psi", "test", "statistic", "p_value", "status"} <= set(payload["features"][0])
    assert {"score", "decisions", "bands", "fallback", "groups", "signals", "labels"} <= set(
        payload["metrics"]
    )
    assert paths.html.name.startswith("drift-") and paths.json.stem == paths.html.stem
    assert (tmp_path / "latest.html").read_text(encoding="utf-8") == page
    assert json.loads((tmp_path / "latest.json").read_text(encoding="utf-8")) == payload


def test_report_keeps_every_run_when_two_land_in_the_same_second(reference, resample, tmp_path):
    result = compute_drift(reference, resample, FEATURES[:5])

    first = write_report(result, [], tmp_path)
    second = write_report(result, [], tmp_path)

    assert first.html != second.html
    assert first.html.exists() and second.html.exists()


def test_missing_optional_columns_do_not_break_the_report(reference, resample, tmp_path):
    optional = ["label", "label_ts", "pattern", "campaign", "top_signals", "fallback", "ts", "request_id"]
    ref = reference.drop(columns=optional)
    cur = resample.drop(columns=optional)

    result, paths = run_drift(ref, cur, SOME_FEATURES, tmp_path)

    assert not result.labels.available
    assert result.signals == []
    campaigns = {g.value for g in result.groups if g.dimension == "campaign"}
    assert "WELCOME-SPRING-10" in campaigns  # falls back to the promo code
    assert "No labels in these windows yet" in paths.html.read_text(encoding="utf-8")
    assert json.loads(paths.json.read_text(encoding="utf-8"))["metrics"]["labels"]["available"] is False


def test_bad_input_names_the_side_and_field(reference, resample):
    with pytest.raises(ValueError, match=r"current: missing required column\(s\) score"):
        compute_drift(reference, resample.drop(columns=["score"]), FEATURES)
    bad = resample.copy()
    bad["score"] = bad["score"].astype(object)
    bad.loc[bad.index[0], "score"] = "high"
    with pytest.raises(ValueError, match=r"current\.score: 1 non-numeric"):
        compute_drift(reference, bad, FEATURES)
    with pytest.raises(ValueError, match=r"reference: missing feature column\(s\) ip_is_vpn"):
        compute_drift(reference, resample, [*FEATURES, "ip_is_vpn"])
    with pytest.raises(ValueError, match=r"thresholds\.psi"):
        DriftThresholds(psi_amber=0.3, psi_red=0.2)


def test_parse_signals_accepts_lists_json_and_signal_objects():
    assert parse_signals(["a", "b"]) == ["a", "b"]
    assert parse_signals('["a", "b"]') == ["a", "b"]
    assert parse_signals(json.dumps([{"name": "a", "points": 12}])) == ["a"]
    assert parse_signals(None) == [] and parse_signals("") == [] and parse_signals(float("nan")) == []


def test_report_writes_nothing_but_the_report_files(reference, resample, tmp_path):
    run_drift(reference, resample, FEATURES[:5], tmp_path / "reports")

    names = sorted(p.name for p in Path(tmp_path / "reports").iterdir())
    assert len(names) == 4
    assert {"latest.html", "latest.json"} <= set(names)


def test_a_campaign_whose_verify_share_jumps_is_flagged_and_named(reference, resample):
    current = resample.copy()
    rows = current.index[(current["campaign"] == "welcome-spring").to_numpy()]
    current.loc[rows[: len(rows) // 3], "decision"] = "verify"

    result = compute_drift(reference, current, FEATURES)

    groups = {(g.dimension, g.value): g for g in result.groups}
    assert groups[("campaign", "welcome-spring")].status == "red"
    assert groups[("campaign", "referral-spring")].status == "green"
    assert groups[("campaign", "welcome-spring")].flagged_share_current > 0.3
    assert any("welcome-spring" in line for line in result.summary)


def test_drift_features_are_the_model_features_the_frame_carries_in_model_order():
    from monitoring.drift import drift_features
    from training.dataset import model_feature_names

    order = model_feature_names()
    frame = pd.DataFrame(columns=["score", "decision", order[5], "ip_is_tor", order[0], "pattern"])
    assert drift_features(frame) == [order[0], order[5], "ip_is_tor"]
