"""Third-party warnings no promoguard user can act on, silenced by message, each with its reason.

Filters alone do not hold: Feast's modules call ``warnings.simplefilter("once", DeprecationWarning)``
when they are imported, which goes in front of every filter set before. So the display hook is
wrapped as well, and it drops these messages whatever filters come later. Every other warning still
shows.
"""

from __future__ import annotations

import logging
import os
import re
import warnings
from typing import Any

#: (message pattern, why it is silenced).
QUIET_WARNINGS: tuple[tuple[str, str], ...] = (
    # Feast's DuckDB offline path calls ibis, which calls DuckDB's renamed fetch_arrow_table(): a
    # library-to-library rename, printed once per feature view on apply and materialize.
    (r"fetch_arrow_table\(\) is deprecated", "ibis on DuckDB, inside Feast"),
    # BentoML's request handler reads model_fields from an instance, deprecated by pydantic 2.11:
    # printed by every worker at its first request.
    (r"Accessing the 'model_fields' attribute on the instance is deprecated", "BentoML on pydantic 2.11"),
    # Feast says its Spark offline store is experimental for every SparkSource it builds or reads back:
    # 19 times in one `features materialize` under the spark profile. The README says it once.
    (r"The spark (offline store|data source API) is an experimental feature", "Feast's Spark offline store"),
)


def _quiet(show: Any) -> Any:
    """``warnings.showwarning`` that drops the :data:`QUIET_WARNINGS` and shows every other warning."""
    if getattr(show, "promoguard_quiet", False):
        return show

    def quiet_show(message: Any, category: Any, filename: str, lineno: int, file: Any = None,
                   line: str | None = None) -> None:
        if not any(re.match(pattern, str(message)) for pattern, _reason in QUIET_WARNINGS):
            show(message, category, filename, lineno, file, line)

    quiet_show.promoguard_quiet = True  # type: ignore[attr-defined]
    return quiet_show


def quiet_third_party_warnings() -> None:
    """Silence :data:`QUIET_WARNINGS` in this process (the command line's, or a service worker's)."""
    for message, _reason in QUIET_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=DeprecationWarning)
    warnings.showwarning = _quiet(warnings.showwarning)


def quiet_mlflow() -> None:
    """Drop MLflow's output nobody acts on: a progress bar for every artifact a command reads back (a
    model of a few files, in milliseconds) and the notice that it created its database tables."""
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    logging.getLogger("mlflow.store.db.utils").setLevel(logging.WARNING)
