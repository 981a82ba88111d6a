"""Where the service's records live: one SQLite file per replica, or one PostgreSQL database for all.

:func:`open_records` is the one place that chooses, from the ``state_url`` setting
(``PROMOGUARD_STATE_URL``): unset, the scoring log is ``scores.db`` in the serving folder, as it always
was (right for one replica); a ``postgresql://`` URL puts it, with the idempotency records, outcomes,
feedback and shadow rows, in that database, so that any replica answers a retry, an ``/outcome`` or a
``/feedback`` for an attempt another one scored.
"""

from __future__ import annotations

from pathlib import Path

from scoring.records import Records, RecordsLike
from scoring.records_pg import is_state_url

__all__ = ["is_state_url", "log_source", "open_records"]


def open_records(
    state_url: str | None, serving_dir: Path, *, checkpoint_interval_s: float | None = 0.5
) -> RecordsLike:
    """The service's records: :class:`~scoring.records.Records` on ``serving_dir / "scores.db"`` when
    ``state_url`` is unset (WAL checkpoints in the background every ``checkpoint_interval_s``; None
    leaves them to SQLite), else :class:`~scoring.records_pg.PostgresRecords` on the URL."""
    if not state_url:
        return Records(serving_dir / "scores.db", checkpoint_interval_s=checkpoint_interval_s)
    if not is_state_url(state_url):
        # Never echo the value: it may hold a password.
        raise ValueError("state_url: expected a postgresql:// URL")
    from scoring.records_pg import PostgresRecords

    return PostgresRecords(state_url)


def log_source(state_url: str | None, serving_dir: Path) -> str | Path:
    """What the log's readers (:func:`scoring.records.scoring_frame` and the others) read: the state URL
    when set, else the SQLite file in ``serving_dir``."""
    return state_url if state_url else serving_dir / "scores.db"
