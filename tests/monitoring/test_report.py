"""The pure orchestration of a drift run: the window of the log, the reference, nothing to compare."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from features.definitions import feature_names
from monitoring.catalog import compared_values, display_names, treatment
from monitoring.drift import ExitCode
from monitoring.report import Reference, check_days, drift_outcome, log_window, reference_from_manifest
from tests.monitoring.frames import DISPLAY_NAMES, SOME_FEATURES, as_scoring_log

MONITORING = Path(__file__).resolve().parents[2] / "monitoring"


def test_log_window_keeps_the_last_days_up_to_the_latest_attempt():
    ts = pd.date_range("2025-03-01", periods=10, freq="D", tz="UTC")
    log = pd.DataFrame({"ts": ts, "score": range(10)})

    window = log_window(log, 3)

    assert window["ts"].min() == ts[-4] and window["ts"].max() == ts[-1]
    assert list(window.index) == [0, 1, 2, 3]
    assert log_window(log.iloc[0:0], 3).empty


@pytest.mark.parametrize("days", [0, -1, float("nan"), float("inf")])
def test_a_window_must_be_a_positive_number_of_days(days):
    with pytest.raises(ValueError, match="days: expected a positive number of days"):
        check_days(days)


def test_the_reference_takes_inputs_and_names_from_the_champions_manifest(reference):
    manifest = {
        "model_version": "promo-abuse-1",
        "feature_names": list(SOME_FEATURES),
        "signals": {name: {"name": signal, "description": "..."} for name, signal in DISPLAY_NAMES.items()},
    }

    ref = reference_from_manifest(reference, manifest)

    assert ref.feature_names == SOME_FEATURES
    assert ref.display_names == DISPLAY_NAMES
    assert ref.model_version == "promo-abuse-1"
    with pytest.raises(ValueError, match="feature_names"):
        reference_from_manifest(reference, {"signals": {}})


def test_nothing_scored_is_nothing_to_compare_and_writes_no_report(reference, tmp_path):
    outcome = drift_outcome(
        Reference(reference, SOME_FEATURES), pd.DataFrame(), tmp_path / "reports", current_label="log"
    )

    assert outcome.code == ExitCode.NOTHING_TO_COMPARE
    assert outcome.result is None and outcome.paths is None
    assert "nothing scored" in outcome.message
    assert not (tmp_path / "reports").exists()


def test_a_run_on_the_live_log_reports_its_status_and_exit_code(reference, resample, tmp_path):
    current = as_scoring_log(resample, labeled=False)

    outcome = drift_outcome(
        Reference(reference, SOME_FEATURES, DISPLAY_NAMES), current, tmp_path, current_label="scoring log"
    )

    assert outcome.result is not None and outcome.paths is not None
    assert outcome.code == ExitCode.GREEN
    assert outcome.message == "status green (exit 0)"
    assert outcome.paths.json.exists()


def test_the_catalog_says_which_features_grow_with_the_calendar():
    rate = {name for name in feature_names() if treatment(name).comparison == "rate"}
    assert "code_stats__hours_since_first_use" in rate
    assert {f"{e}_stats__first_seen_days" for e in ("device", "email", "account")} <= rate
    assert {
        "device_stats__abuse_labels",
        "code_stats__redeemed_total",
        "device_code_stats__redeemed_total",
    } <= rate
    assert not any(name.endswith(("_1h", "_24h", "_7d", "_30d")) for name in rate)
    assert treatment("ip_is_tor").comparison == "distribution"

    ages = np.array([0.2, 3.0, np.nan, 40.0])
    assert np.array_equal(
        compared_values(ages, treatment("device_stats__first_seen_days")),
        [1.0, 0.0, np.nan, 0.0],
        equal_nan=True,
    )
    hours = np.array([5.0, 30.0])
    assert list(compared_values(hours, treatment("code_stats__hours_since_first_use"))) == [1.0, 0.0]
    totals = np.array([0.0, 2.0, np.nan])
    assert np.array_equal(
        compared_values(totals, treatment("code_stats__redeemed_total")), [0.0, 1.0, np.nan], equal_nan=True
    )


def test_display_names_come_from_the_manifests_signal_specs():
    specs = {"ip_is_tor": {"name": "ip_tor", "description": "..."}, "odd": {"description": "no name"}}
    assert display_names(specs) == {"ip_is_tor": "ip_tor"}


def test_monitoring_imports_neither_training_nor_serving_nor_the_command_line():
    forbidden = ("training", "serving", "promoguard")
    found = []
    for path in sorted(MONITORING.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            found += [f"{path.name}: {n}" for n in names if n.split(".")[0] in forbidden]
    assert found == []
