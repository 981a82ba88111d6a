"""The ``promoguard`` command line: a thin Typer shell over the pipeline stages."""

from __future__ import annotations

import time
from pathlib import Path

import pandas as pd
import typer
from rich.console import Console
from rich.table import Table

from promoguard.settings import Settings

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Promotional-abuse risk scoring.")
console = Console()


def _settings(root: Path | None) -> Settings:
    return Settings.from_env(root=root)


def print_table(title: str, frame: pd.DataFrame) -> None:
    """Render a small DataFrame as a rich table (the summary every long step ends with)."""
    table = Table(title=title)
    for col in frame.columns:
        table.add_column(str(col), justify="right" if frame[col].dtype.kind in "if" else "left")
    for row in frame.itertuples(index=False):
        table.add_row(*[f"{v:.3f}" if isinstance(v, float) else str(v) for v in row])
    console.print(table)


@app.command()
def simulate(
    events: int = typer.Option(200_000, help="Approximate number of redemption attempts to generate."),
    days: int = typer.Option(90, help="Length of the simulated history in days."),
    seed: int = typer.Option(7, help="Random seed; the same seed gives the same files."),
    root: Path | None = typer.Option(None, help="Project root holding data/ (default: current folder)."),
) -> None:
    """Generate a labeled redemption history with every abuse pattern into data/raw/."""
    from features.simulate import SimulationConfig, simulate_history, summarize, write_history

    settings = _settings(root)
    started = time.perf_counter()
    with console.status(f"simulating ~{events:,} attempts over {days} days"):
        history = simulate_history(SimulationConfig(n_events=events, days=days, seed=seed))
        paths = write_history(history, settings.raw_dir)
    elapsed = time.perf_counter() - started
    print_table("simulated history per pattern", summarize(history))
    console.print(
        f"wrote {len(history.events):,} events in {elapsed:.1f}s to "
        + ", ".join(str(p.relative_to(settings.root)) for p in paths.values())
    )


def main() -> None:
    """Entry point for ``python -m promoguard``."""
    app()
