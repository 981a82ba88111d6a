"""Where campaign controls and allow/deny lists live, with the audit trail of every change.

One SQLite file (``controls.db`` in the serving folder) by default, or the PostgreSQL database of
``PROMOGUARD_STATE_URL``, so that every replica reads the same controls. Three tables:

* ``campaign_controls``: one row per controlled promotion code (:class:`scoring.controls.CampaignControl`);
* ``list_entries``: allow and deny entries, keyed hashes only (:class:`scoring.controls.ListEntry`);
* ``controls_audit``: who changed what and when, one row per change, written in the change's own
  transaction. Its highest id is the store's *version*: a running service compares it every
  ``PROMOGUARD_CONTROLS_REFRESH_S`` seconds and reloads the snapshot only when it moved
  (:class:`ControlsRefresher`).

Operator actions are rare, so each opens its own connection (with a connect and statement timeout on
PostgreSQL): nothing here sits on the request path, which reads the in-memory snapshot.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Any

from scoring.controls import CampaignControl, Controls, ListEntry, code_key, utc_now

logger = logging.getLogger(__name__)

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS campaign_controls (
        code TEXT PRIMARY KEY, shown_code TEXT NOT NULL, mode TEXT NOT NULL, force_verify INTEGER NOT NULL,
        verify_threshold INTEGER, refuse_threshold INTEGER, reason TEXT, updated_by TEXT NOT NULL,
        updated_at TEXT NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS list_entries (
        list TEXT NOT NULL, kind TEXT NOT NULL, key TEXT NOT NULL, reason TEXT NOT NULL,
        added_by TEXT NOT NULL, added_at TEXT NOT NULL, expires_at TEXT, PRIMARY KEY (list, kind, key))""",
)
_AUDIT = {
    "sqlite": """CREATE TABLE IF NOT EXISTS controls_audit (
        id INTEGER PRIMARY KEY AUTOINCREMENT, ts TEXT NOT NULL, actor TEXT NOT NULL, action TEXT NOT NULL,
        target TEXT NOT NULL, detail TEXT NOT NULL)""",
    "postgres": """CREATE TABLE IF NOT EXISTS controls_audit (
        id BIGSERIAL PRIMARY KEY, ts TEXT NOT NULL, actor TEXT NOT NULL, action TEXT NOT NULL,
        target TEXT NOT NULL, detail TEXT NOT NULL)""",
}


@dataclass(frozen=True)
class AuditRow:
    """One change to the controls: when, who, what, on which campaign or list entry, and the details."""

    id: int
    ts: str
    actor: str
    action: str
    target: str
    detail: dict[str, Any]


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def _time(value: str | None) -> datetime | None:
    return None if value is None else datetime.fromisoformat(value)


class ControlsStore:
    """Campaign controls, list entries and their audit trail in SQLite or PostgreSQL."""

    def __init__(self, state_url: str | None, serving_dir: Path, *, timeout_s: float = 2.0) -> None:
        """Use the PostgreSQL database at ``state_url``, else ``controls.db`` in ``serving_dir``."""
        self.state_url = state_url
        self.dialect = "postgres" if state_url else "sqlite"
        self.path = serving_dir / "controls.db"
        self.timeout_s = timeout_s
        self.serving_dir = serving_dir
        # Created by the first call, not here: a service whose database is down at start still starts
        # (with no controls in force) and picks them up once the database answers.
        self._schema_ready = False

    @contextmanager
    def _connect(self) -> Iterator[Any]:
        """A connection inside one transaction: committed after the block, rolled back if it raised."""
        if not self._schema_ready:
            self._schema_ready = True
            try:
                with self._connect() as schema:
                    cur = schema.cursor()
                    for statement in (*_SCHEMA, _AUDIT[self.dialect]):
                        cur.execute(statement)
            except BaseException:
                self._schema_ready = False
                raise
        conn: Any
        if self.dialect == "postgres":
            from scoring.records_pg import open_connection

            # The scoring log's connection: the same timeouts and keepalives, the URL's search_path kept.
            assert self.state_url is not None
            conn = open_connection(self.state_url, self.timeout_s, int(self.timeout_s * 1000),
                                   "promoguard-controls")
            # A change and its audit row commit together.
            conn.autocommit = False
        else:
            self.serving_dir.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(self.path, timeout=self.timeout_s)
        try:
            yield conn
            conn.commit()
        except BaseException:
            conn.rollback()
            raise
        finally:
            conn.close()

    def _sql(self, text: str) -> str:
        # One SQL text for both databases: psycopg2 takes %s where sqlite3 takes ?.
        return text.replace("?", "%s") if self.dialect == "postgres" else text

    def _run(self, conn: Any, text: str, params: Sequence[Any] = ()) -> Any:
        cur = conn.cursor()
        cur.execute(self._sql(text), tuple(params))
        return cur

    def _audit(self, conn: Any, actor: str, action: str, target: str, detail: dict[str, Any]) -> None:
        self._run(conn, "INSERT INTO controls_audit (ts, actor, action, target, detail) VALUES (?,?,?,?,?)",
                  (utc_now().isoformat(), actor, action, target, json.dumps(detail, sort_keys=True)))

    # -- reading ---------------------------------------------------------------------------------------

    def version(self) -> int:
        """The id of the latest change (0: none yet); it moves with every change of any control."""
        with self._connect() as conn:
            row = self._run(conn, "SELECT COALESCE(MAX(id), 0) FROM controls_audit").fetchone()
        return int(row[0])

    def campaigns(self) -> list[CampaignControl]:
        """Every campaign an operator set a control on, by code."""
        with self._connect() as conn:
            rows = self._run(
                conn, "SELECT shown_code, mode, force_verify, verify_threshold, refuse_threshold, reason, "
                      "updated_by, updated_at FROM campaign_controls ORDER BY code").fetchall()
        return [
            CampaignControl(code=r[0], mode=r[1], force_verify=bool(r[2]), verify_threshold=r[3],
                            refuse_threshold=r[4], reason=r[5], updated_by=r[6], updated_at=_time(r[7]))
            for r in rows
        ]

    def campaign(self, code: str) -> CampaignControl | None:
        """The control of one promotion code (any spelling), or None."""
        return next((c for c in self.campaigns() if code_key(c.code) == code_key(code)), None)

    def entries(self, list_name: str | None = None, *, now: datetime | None = None) -> list[ListEntry]:
        """List entries (of one list, or both), oldest first; expired ones left out when ``now`` is given."""
        with self._connect() as conn:
            rows = self._run(
                conn, "SELECT list, kind, key, reason, added_by, added_at, expires_at FROM list_entries "
                      "ORDER BY added_at, list, kind, key").fetchall()
        out = [
            ListEntry(list=r[0], kind=r[1], key=r[2], reason=r[3], added_by=r[4], added_at=_time(r[5]),
                      expires_at=_time(r[6]))
            for r in rows
        ]
        return [e for e in out if (list_name is None or e.list == list_name)
                and (now is None or e.active(now))]

    def load(self) -> Controls:
        """A snapshot of every control and entry, stamped with the version it was read at."""
        version = self.version()
        return Controls.of(self.campaigns(), self.entries(), version)

    def audit(self, limit: int = 50, target: str | None = None) -> list[AuditRow]:
        """The latest changes, newest first (of one campaign code or list target when given)."""
        query = "SELECT id, ts, actor, action, target, detail FROM controls_audit"
        params: list[Any] = []
        if target is not None:
            query += " WHERE target = ?"
            params.append(target)
        query += " ORDER BY id DESC LIMIT ?"
        params.append(int(limit))
        with self._connect() as conn:
            rows = self._run(conn, query, params).fetchall()
        return [AuditRow(int(r[0]), r[1], r[2], r[3], r[4], json.loads(r[5])) for r in rows]

    # -- changing --------------------------------------------------------------------------------------

    def update_campaign(self, code: str, actor: str, action: str, **changes: Any) -> CampaignControl:
        """Apply ``changes`` (fields of :class:`CampaignControl`) to a code's control and audit it.

        The new control is validated before anything is written, so a refused change records nothing.
        """
        current = self.campaign(code) or CampaignControl(code=code.strip())
        updated = replace(current, **changes, updated_by=actor, updated_at=utc_now())
        with self._connect() as conn:
            self._run(
                conn,
                "INSERT INTO campaign_controls (code, shown_code, mode, force_verify, verify_threshold, "
                "refuse_threshold, reason, updated_by, updated_at) VALUES (?,?,?,?,?,?,?,?,?) "
                "ON CONFLICT (code) DO UPDATE SET shown_code = excluded.shown_code, mode = excluded.mode, "
                "force_verify = excluded.force_verify, verify_threshold = excluded.verify_threshold, "
                "refuse_threshold = excluded.refuse_threshold, reason = excluded.reason, "
                "updated_by = excluded.updated_by, updated_at = excluded.updated_at",
                (code_key(updated.code), updated.code, updated.mode, int(updated.force_verify),
                 updated.verify_threshold, updated.refuse_threshold, updated.reason, actor,
                 _iso(updated.updated_at)),
            )
            self._audit(conn, actor, action, f"campaign:{updated.code}", {
                "mode": updated.mode, "force_verify": updated.force_verify,
                "verify_threshold": updated.verify_threshold, "refuse_threshold": updated.refuse_threshold,
                "reason": updated.reason,
            })
        return updated

    def add_entry(self, entry: ListEntry, actor: str) -> ListEntry:
        """Add (or renew) a list entry and audit it; the entry is returned as stored."""
        stored = replace(entry, added_by=actor, added_at=entry.added_at or utc_now())
        with self._connect() as conn:
            self._run(
                conn,
                "INSERT INTO list_entries (list, kind, key, reason, added_by, added_at, expires_at) "
                "VALUES (?,?,?,?,?,?,?) ON CONFLICT (list, kind, key) DO UPDATE SET "
                "reason = excluded.reason, added_by = excluded.added_by, added_at = excluded.added_at, "
                "expires_at = excluded.expires_at",
                (stored.list, stored.kind, stored.key, stored.reason, actor, _iso(stored.added_at),
                 _iso(stored.expires_at)),
            )
            self._audit(conn, actor, "list add", f"{stored.list}:{stored.kind}:{stored.key}",
                        {"reason": stored.reason, "expires_at": _iso(stored.expires_at)})
        return stored

    def remove_entry(self, list_name: str, kind: str, key: str, actor: str) -> bool:
        """Remove an entry and audit it; False (and nothing audited) when there was none."""
        with self._connect() as conn:
            gone = self._run(conn, "DELETE FROM list_entries WHERE list = ? AND kind = ? AND key = ?",
                             (list_name, kind, key)).rowcount
            if gone:
                self._audit(conn, actor, "list remove", f"{list_name}:{kind}:{key}", {})
        return bool(gone)


class ControlsRefresher:
    """Keeps a service's snapshot current: checks the store's version every ``interval_s`` seconds.

    ``publish`` receives each new snapshot (the service assigns it to its scorer). A store that cannot
    be read keeps the last snapshot in force and logs the failure once per outage, by exception type.
    """

    def __init__(self, store: ControlsStore, publish: Callable[[Controls], None], interval_s: float) -> None:
        """Load the first snapshot now (so the service starts with the controls in force), then poll."""
        self.store = store
        self.publish = publish
        self.interval_s = interval_s
        self.version = -1
        self._failing = False
        self._stop = threading.Event()
        self.refresh()
        self._thread = threading.Thread(target=self._loop, name="promoguard-controls", daemon=True)
        self._thread.start()

    def refresh(self) -> bool:
        """Reload when the store moved; True when a new snapshot was published."""
        try:
            version = self.store.version()
            if version == self.version:
                return False
            snapshot = self.store.load()
        except Exception as exc:
            if not self._failing:
                logger.warning("campaign controls could not be read, keeping the last ones: %s",
                               type(exc).__name__)
            self._failing = True
            return False
        self._failing = False
        self.version = snapshot.version
        self.publish(snapshot)
        return True

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.refresh()

    def close(self) -> None:
        """Stop polling."""
        self._stop.set()
        self._thread.join(timeout=5)
