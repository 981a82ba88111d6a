"""The report on disk: a self-contained page led by the badge and findings, and its JSON twin."""

from __future__ import annotations

import json
import re
from pathlib import Path

from monitoring.drift import compute_drift
from monitoring.render import write_report
from monitoring.report import run_drift
from tests.monitoring.frames import DISPLAY_NAMES, FEATURES, FLAGS, SOME_FEATURES, as_scoring_log


def test_report_html_is_self_contained_and_json_has_the_expected_keys(reference, bot_farm, tmp_path):
    current = bot_farm.copy()
    current.loc[current.index[:300], "promo_type"] = "<script>alert(1)</script>"

    result, paths = run_drift(
        reference, current, SOME_FEATURES, tmp_path, display_names=DISPLAY_NAMES, current_label="last 7 days"
    )

    page = paths.html.read_text(encoding="utf-8")
    assert "http://" not in page and "https://" not in page
    assert "<script" not in page.lower() and "javascript:" not in page.lower()
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    images = re.findall(r"<img [^>]*src='([^']*)'", page)
    assert len(images) >= 4
    assert all(src.startswith("data:image/png;base64,") for src in images)
    assert re.search(r"<link|@import|url\(", page) is None
    assert page.index(result.summary[0]) < page.index("<h2>Scores</h2>")
    assert "ip_datacenter<br><small>ip_is_datacenter</small>" in page
    for section in (
        "Scores",
        "Decisions &amp; bands",
        "Per promotion type and code",
        "Features",
        "Data validation",
        "Top signals",
        "Labels &amp; abuse rate per pattern",
    ):
        assert f"<h2>{section}" in page

    payload = json.loads(paths.json.read_text(encoding="utf-8"))
    assert {
        "status",
        "exit_code",
        "summary",
        "notes",
        "metrics",
        "features",
        "not_logged",
        "violations",
    } <= set(payload)
    assert payload["status"] == "red" and payload["exit_code"] == 2
    assert {"name", "display_name", "comparison", "psi", "test", "statistic", "p_value", "status"} <= set(
        payload["features"][0]
    )
    assert {"score", "decisions", "bands", "fallback", "groups", "signals", "labels"} <= set(
        payload["metrics"]
    )
    assert paths.html.name.startswith("drift-") and paths.json.stem == paths.html.stem
    assert (tmp_path / "latest.html").read_text(encoding="utf-8") == page
    assert json.loads((tmp_path / "latest.json").read_text(encoding="utf-8")) == payload


def test_a_live_log_report_shows_features_not_logged_and_unknown_patterns(reference, resample, tmp_path):
    current = as_scoring_log(resample, labeled=False).drop(columns=list(FLAGS))

    result, paths = run_drift(reference, current, SOME_FEATURES, tmp_path, display_names=DISPLAY_NAMES)

    assert result.violations == [], "a feature the log does not carry is not a failed data check"
    assert result.status == "green"
    page = paths.html.read_text(encoding="utf-8")
    assert "<h3>Not logged</h3>" in page and "not in the current" in page
    payload = json.loads(paths.json.read_text(encoding="utf-8"))
    assert {n["name"] for n in payload["not_logged"]} == set(FLAGS)
    patterns = payload["metrics"]["labels"]["by_pattern"]
    assert patterns[0]["pattern"] == "all labeled"
    assert all(p["labeled_current"] is None for p in patterns[1:])


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
    codes = {g.value for g in result.groups if g.dimension == "campaign"}
    assert "WELCOME-SPRING-10" in codes  # falls back to the promo code
    assert "No labels in these windows yet" in paths.html.read_text(encoding="utf-8")
    assert json.loads(paths.json.read_text(encoding="utf-8"))["metrics"]["labels"]["available"] is False


def test_report_writes_nothing_but_the_report_files(reference, resample, tmp_path):
    run_drift(reference, resample, FEATURES[:5], tmp_path / "reports")

    names = sorted(p.name for p in Path(tmp_path / "reports").iterdir())
    assert len(names) == 4
    assert {"latest.html", "latest.json"} <= set(names)
