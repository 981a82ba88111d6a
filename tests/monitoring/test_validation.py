"""Data validation of the current window: suites built from the reference, failures named per column."""

from __future__ import annotations

from monitoring.validation import build_suite, validate_current
from tests.monitoring.frames import FEATURES, SOME_FEATURES


def test_gx_suite_flags_a_column_gone_mostly_null_and_out_of_range_values(reference, resample):
    current = resample.copy()
    current.loc[current.index[:1500], "email_stats__first_seen_days"] = float("nan")
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
    assert {v.column for v in violations} == {
        "email_stats__first_seen_days",
        "score",
        "code_stats__attempts_24h",
        "phone_stats__attempts_1h",
    }


def test_features_that_grow_with_the_calendar_have_a_floor_but_no_ceiling(reference, resample):
    current = resample.copy()
    current["code_stats__hours_since_first_use"] = current["code_stats__hours_since_first_use"] + 5_000
    current["device_stats__abuse_labels"] = current["device_stats__abuse_labels"] + 50
    current.loc[current.index[:50], "device_stats__first_seen_days"] = -1.0

    features = (
        "code_stats__hours_since_first_use",
        "device_stats__abuse_labels",
        "device_stats__first_seen_days",
    )
    violations = validate_current(current, build_suite(reference, features))

    assert [(v.expectation, v.column) for v in violations] == [
        ("expect_column_values_to_be_between", "device_stats__first_seen_days")
    ]


def test_gx_suite_rejects_unknown_decisions_and_bands(reference, resample):
    current = resample.copy()
    current.loc[current.index[:5], "decision"] = "block"
    current.loc[current.index[:5], "band"] = "extreme"

    violations = validate_current(current, build_suite(reference, FEATURES[:3]))

    by_column = {v.column: v for v in violations}
    assert "block" in by_column["decision"].observed
    assert "extreme" in by_column["band"].observed
