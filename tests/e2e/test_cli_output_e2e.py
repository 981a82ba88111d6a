"""What the batch commands print on the built world: their own status lines, not a library's chatter."""

from __future__ import annotations

import pytest

from promoguard.settings import Settings
from tests.e2e.conftest import run_cli

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("world")]


def test_materialize_prints_its_one_summary_line_and_nothing_of_feasts(world: Settings) -> None:
    # Materializing again loads the same rows: the world the other tests read is unchanged.
    output = run_cli("features", "materialize", "--root", str(world.root))
    lines = [line for line in output.splitlines() if line.strip()]
    assert len(lines) == 1, output
    assert lines[0].startswith("materialized up to "), output
    # Feast's banner and per-view names come in colour codes, also into a log file.
    assert "\x1b[" not in output
    assert "Materializing" not in output
