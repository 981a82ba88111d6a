"""The runbook only names commands that exist: an operator mid-incident must not find a dead end."""

from __future__ import annotations

import re
from pathlib import Path

import click
import typer
from typer.testing import CliRunner

from promoguard.cli import app

RUNBOOK = Path(__file__).resolve().parents[2] / "docs" / "runbook.md"


def test_every_promoguard_command_the_runbook_names_exists() -> None:
    text = RUNBOOK.read_text(encoding="utf-8")
    named = set(re.findall(r"`promoguard ([a-z][a-z-]*(?: [a-z][a-z-]*)?)", text))
    assert {"campaign pause", "campaign verify", "lists add"} <= named
    groups = {name for name, cmd in typer.main.get_command(app).commands.items()  # type: ignore[attr-defined]
              if isinstance(cmd, click.Group)}
    for command in sorted(named):
        words = command.split()
        # A second word is a subcommand only under a group ("campaign pause"); else it was prose.
        words = words if words[0] in groups else words[:1]
        result = CliRunner().invoke(app, [*words, "--help"])
        assert result.exit_code == 0, (command, result.output)
