"""``promoguard campaign`` and ``promoguard lists``: an operator's commands, their audit and their errors."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from promoguard import cli
from promoguard.cli import app
from scoring.controls_store import ControlsStore


@pytest.fixture
def root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for name in ("PROMOGUARD_STATE_URL", "PROMOGUARD_ROOT", "PROMOGUARD_PEPPER"):
        monkeypatch.delenv(name, raising=False)
    # Wide enough that a table cell never wraps a 32-character key.
    monkeypatch.setattr(cli.console, "width", 240)
    return tmp_path


def _run(root: Path, *args: str) -> str:
    result = CliRunner().invoke(app, [*args, "--root", str(root)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def _store(root: Path) -> ControlsStore:
    return ControlsStore(None, root / "data" / "serving")


def test_pause_monitor_verify_thresholds_and_resume_are_stored_and_audited(root: Path) -> None:
    _run(root, "campaign", "pause", "SPRING5", "--reason", "leaked on a forum", "--by", "ana")
    control = _store(root).campaign("spring5")
    assert control is not None and control.mode == "paused" and control.reason == "leaked on a forum"
    _run(root, "campaign", "monitor", "SPRING5", "--by", "ben")
    _run(root, "campaign", "verify", "SPRING5", "--by", "ben")
    _run(root, "campaign", "thresholds", "SPRING5", "--verify", "40", "--refuse", "70", "--by", "ana")
    _run(root, "campaign", "resume", "SPRING5", "--by", "ana")
    control = _store(root).campaign("SPRING5")
    assert control is not None
    assert (control.mode, control.force_verify, control.verify_threshold, control.refuse_threshold) == (
        "active", True, 40, 70)
    shown = _run(root, "campaign", "show", "SPRING5")
    for word in ("SPRING5", "pause", "monitor", "verify", "thresholds", "resume", "ana", "ben",
                 "leaked on a forum"):
        assert word in shown
    actions = [a.action for a in _store(root).audit()]
    assert actions == ["resume", "thresholds", "verify", "monitor", "pause"]


def test_a_bad_threshold_is_refused_naming_it_and_changes_nothing(root: Path) -> None:
    result = CliRunner().invoke(app, ["campaign", "thresholds", "X", "--verify", "80", "--refuse", "82",
                                      "--root", str(root)])
    assert result.exit_code == 2
    assert ("error: invalid control: refuse_threshold: must be at least 5 above verify_threshold (80)"
            in result.output)
    assert _store(root).version() == 0


def test_list_entries_hold_keyed_hashes_never_the_raw_value(root: Path) -> None:
    out = _run(root, "lists", "add", "deny", "email", "Ring.Leader+x@example.com", "--reason", "card ring",
               "--expires-in-days", "30", "--by", "ana")
    assert "added to the deny list" in out
    (entry,) = _store(root).entries()
    assert entry.kind == "email" and entry.reason == "card ring" and entry.expires_at is not None
    assert "ringleader" not in entry.key.lower() and "example" not in entry.key
    raw = (root / "data" / "serving" / "controls.db").read_bytes()
    assert b"example.com" not in raw and b"Ring.Leader" not in raw
    shown = _run(root, "lists", "show")
    assert entry.key in shown and "card ring" in shown
    _run(root, "lists", "remove", "deny", "email", "RING.LEADER+x@EXAMPLE.com", "--by", "ben")
    assert _store(root).entries() == []
    assert [a.action for a in _store(root).audit()] == ["list remove", "list add"]


def test_kinds_without_a_raw_form_take_a_key_and_unknown_kinds_are_named(root: Path) -> None:
    _run(root, "lists", "add", "allow", "household", "--key", "ab" * 16, "--reason", "staff housing")
    assert _store(root).entries()[0].kind == "household"
    result = CliRunner().invoke(app, ["lists", "add", "deny", "household", "1 Main St", "--reason", "x",
                                      "--root", str(root)])
    assert result.exit_code == 2 and "household entries are given by key" in result.output
    result = CliRunner().invoke(app, ["lists", "add", "deny", "shoe", "--key", "k", "--reason", "x",
                                      "--root", str(root)])
    assert result.exit_code == 2 and "kind: expected one of" in result.output
    result = CliRunner().invoke(app, ["lists", "remove", "deny", "device", "--key", "nope",
                                      "--root", str(root)])
    assert result.exit_code == 1 and "no device nope on the deny list" in result.output
