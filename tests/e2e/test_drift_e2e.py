"""Drift scenarios against the world's champion, through `promoguard drift --events`, and in a browser.

The reference is the champion's test window (every attempt of the world's last days) scored by the
champion. Batches are scored offline, and the offline path must give the reference's own attempts
exactly the features Feast gave training. A batch simulated like the world but with a bot farm arriving
for its last days must be flagged; a batch from the same configuration with another seed and no drift
must not be. The command line's HTML report must open in headless Chromium without console errors.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from typer.testing import CliRunner

from monitoring.drift import DriftResult, ExitCode, exit_code
from monitoring.report import Reference, run_drift
from promoguard.cli import app
from promoguard.drift import champion_reference
from promoguard.offline import score_events
from promoguard.settings import Settings
from simulation.simulate import DriftConfig, SimulationConfig, simulate_history, write_history
from tests.e2e.conftest import WORLD_DAYS, WORLD_EVENTS

pytestmark = [pytest.mark.xdist_group("world"), pytest.mark.slow]

#: The drift starts this many days before the batch ends; the report compares exactly those days.
DRIFT_DAYS = 10
DRIFT_SEED = 23
RESAMPLE_SEED = 29
CHROMIUM = Path("/usr/bin/chromium")


@dataclass(frozen=True)
class DriftRun:
    """One `promoguard drift --events` run: its exit status, output and the report it wrote."""

    exit_code: int
    output: str
    report: dict[str, Any]
    html: Path


def _simulate_batch(folder: Path, seed: int, drift: DriftConfig | None) -> Path:
    config = SimulationConfig(n_events=WORLD_EVENTS, days=WORLD_DAYS, seed=seed, drift=drift)
    return write_history(simulate_history(config), folder)["events"]


def _run_drift(settings: Settings, events: Path, keep: Path) -> DriftRun:
    result = CliRunner().invoke(
        app,
        ["drift", "--events", str(events), "--days", str(DRIFT_DAYS), "--root", str(settings.root)],
        catch_exceptions=False,
    )
    # latest.* is overwritten by the next run: keep this run's copies.
    keep.mkdir(parents=True, exist_ok=True)
    html = shutil.copyfile(settings.reports_dir / "latest.html", keep / "latest.html")
    report = json.loads((settings.reports_dir / "latest.json").read_text(encoding="utf-8"))
    return DriftRun(result.exit_code, result.output, report, Path(html))


@pytest.fixture(scope="module")
def bot_farm_events(world: Settings, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A batch where a never-seen bot farm (emulators on mobile proxies) arrives for the last days."""
    drift = DriftConfig(kind="new_bot_farm", start_day=WORLD_DAYS - DRIFT_DAYS, intensity=0.10)
    return _simulate_batch(tmp_path_factory.mktemp("bot_farm_batch") / "raw", DRIFT_SEED, drift)


@pytest.fixture(scope="module")
def resample_events(world: Settings, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A batch from the world's own configuration with another seed and no drift."""
    return _simulate_batch(tmp_path_factory.mktemp("resample_batch") / "raw", RESAMPLE_SEED, None)


@pytest.fixture(scope="module")
def world_window(world: Settings, tmp_path_factory: pytest.TempPathFactory) -> Reference:
    """The champion's reference: every attempt of its test window (the world's last days), scored."""
    return champion_reference(world, tmp_path_factory.mktemp("reference"))


@pytest.fixture(scope="module")
def bot_farm_run(
    world: Settings, bot_farm_events: Path, tmp_path_factory: pytest.TempPathFactory
) -> DriftRun:
    """`promoguard drift --events` on the bot-farm batch."""
    return _run_drift(world, bot_farm_events, tmp_path_factory.mktemp("bot_farm_report"))


def _drift(reference: Reference, current: pd.DataFrame, out: Path) -> DriftResult:
    features, names = reference.feature_names, reference.display_names
    return run_drift(reference.frame, current, features, out, display_names=names)[0]


def test_offline_scoring_reproduces_the_champions_reference_rows(world: Settings, tmp_path: Path) -> None:
    # The champion's stored test window came from Feast's point-in-time retrieval; the offline path
    # rebuilds features from the raw events. Same attempts must get the same features and score.
    champion = champion_reference(world, tmp_path)
    reference = champion.frame
    days = (reference["ts"].max() - reference["ts"].min()).total_seconds() / 86_400 + 1
    offline = score_events(world, world.raw_dir / "events.parquet", days=days)
    both = reference.merge(offline, on="request_id", suffixes=("_feast", "_offline"))
    assert len(both) == len(reference)
    for name in [*champion.feature_names, "score"]:
        pd.testing.assert_series_equal(
            both[f"{name}_feast"].astype(float), both[f"{name}_offline"].astype(float), check_names=False
        )


def test_bot_farm_batch_is_flagged_and_the_summary_names_what_moved(
    world_window: Reference, bot_farm_events: Path, world: Settings, tmp_path: Path
) -> None:
    result = _drift(world_window, score_events(world, bot_farm_events, days=DRIFT_DAYS), tmp_path)
    assert exit_code(result) in (1, 2), result.summary
    moved = [f for f in result.features if f.status != "green"]
    assert any(f.name.startswith("device_stats__") for f in moved), [f.name for f in moved][:10]
    summary = " ".join(result.summary)
    assert "score distribution shifted" in summary
    # Features carry the signal names the fraud team reads in the service's answers.
    assert any(f.display_name in summary for f in moved), f"no drifted feature named in {result.summary}"
    assert all(f.display_name == world_window.display_names[f.name] for f in result.features)
    assert len(result.summary) <= 5


def test_resample_of_the_same_population_is_not_flagged(
    world_window: Reference, resample_events: Path, world: Settings, tmp_path: Path
) -> None:
    # "Not flagged" means: the score distribution stays green (PSI below the amber cut-off) and no feature
    # outside the promo-code view turns red. Per-code features are left out on purpose: each seed draws
    # its own promotion calendar (codes, launch dates), so they are not the same distribution across
    # seeds. Amber (a significant test on a small effect) is the noise the thresholds allow for.
    result = _drift(world_window, score_events(world, resample_events, days=DRIFT_DAYS), tmp_path)
    th = result.thresholds
    assert result.score.status == "green" and result.score.psi < th.psi_amber, result.score
    red_by_psi = [
        (f.name, round(f.psi, 3))
        for f in result.features
        if f.psi >= th.psi_red and not f.name.startswith("code_stats__")
    ]
    assert not red_by_psi, f"red PSI on a same-distribution resample: {red_by_psi}"
    red = [f.name for f in result.features if f.status == "red" and not f.name.startswith("code_stats__")]
    assert not red, f"red features on a same-distribution resample: {red}"


def test_drift_command_flags_the_bot_farm_batch(bot_farm_run: DriftRun) -> None:
    report = bot_farm_run.report
    assert report["status"] in ("amber", "red"), report["summary"]
    assert bot_farm_run.exit_code == report["exit_code"] in (1, 2), bot_farm_run.output[-3000:]
    moved = [f["display_name"] for f in report["features"] if f["status"] != "green"]
    summary = " ".join(report["summary"])
    assert any(name in summary for name in moved), f"no drifted feature named in {report['summary']}"
    # One-off codes fold into their promotion type: the table is the size of the promotion calendar.
    types = {g["promo_type"] for g in report["metrics"]["groups"]}
    assert len(report["metrics"]["groups"]) <= 3 * len(types) + 20, len(report["metrics"]["groups"])


def test_drift_command_writes_html_and_json_and_exits_with_the_reported_status(
    world: Settings, bot_farm_run: DriftRun
) -> None:
    assert (world.reports_dir / "latest.html").exists()
    assert (world.reports_dir / "latest.json").exists()
    assert bot_farm_run.exit_code == bot_farm_run.report["exit_code"]
    assert bot_farm_run.report["current_label"].startswith("offline batch events.parquet")
    page = bot_farm_run.html.read_text(encoding="utf-8")
    assert bot_farm_run.report["status"].upper() in page
    assert "<script" not in page.lower(), "the report is a static page: no scripts"


def test_drift_command_with_a_missing_batch_file_names_it_and_exits_failed(
    world: Settings, tmp_path: Path
) -> None:
    missing = tmp_path / "no_such_batch.parquet"
    result = CliRunner().invoke(app, ["drift", "--events", str(missing), "--root", str(world.root)])
    assert result.exit_code == ExitCode.FAILED, result.output
    assert "no_such_batch.parquet" in result.output.replace("\n", "")  # rich wraps long paths


def _page_console_problems(stderr: str, url: str) -> list[str]:
    # Chromium logs page console messages as "...:CONSOLE(line)] ..." and load failures as ":ERROR:" lines
    # naming the page; its own start-up noise (dbus, GPU) names neither.
    return [
        line
        for line in stderr.splitlines()
        if "CONSOLE" in line or (":ERROR:" in line and (url in line or "file://" in line))
    ]


def _chromium(url: str, screenshot: Path, profile: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            str(CHROMIUM),
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={profile}",
            "--enable-logging=stderr",
            "--v=0",
            f"--screenshot={screenshot}",
            "--window-size=1280,2400",
            url,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_drift_report_renders_in_headless_chromium_without_console_errors(
    bot_farm_run: DriftRun, tmp_path: Path
) -> None:
    if not CHROMIUM.exists():
        if os.environ.get("PROMOGUARD_REQUIRE_SERVICES") == "1":
            pytest.fail(f"{CHROMIUM} is missing and PROMOGUARD_REQUIRE_SERVICES=1 (install chromium)")
        pytest.skip(f"{CHROMIUM} is not installed; the browser check needs headless Chromium")
    # Control: a page that logs a console error must be caught, or the check below would prove nothing.
    control = tmp_path / "control.html"
    control.write_text("<html><body><script>console.error('control-error')</script></body></html>")
    control_log = _chromium(control.resolve().as_uri(), tmp_path / "control.png", tmp_path / "p1")
    assert any("control-error" in line for line in _page_console_problems(control_log.stderr, "")), (
        "Chromium's console log was not captured:\n" + control_log.stderr[-2000:]
    )
    screenshot = tmp_path / "drift.png"
    url = bot_farm_run.html.resolve().as_uri()
    proc = _chromium(url, screenshot, tmp_path / "p2")
    assert screenshot.exists(), f"no screenshot (exit {proc.returncode}):\n{proc.stderr[-3000:]}"
    png = screenshot.read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    # A blank 1280x2400 page compresses to a few kilobytes; the report's tables and plots do not.
    assert len(png) > 50_000, f"screenshot is only {len(png)} bytes: the page looks empty"
    problems = _page_console_problems(proc.stderr, url)
    assert not problems, "console errors from the report page:\n" + "\n".join(problems)
