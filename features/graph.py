"""The identity graph: persons and households resolved from the keyed hashes every attempt carries.

A key alone is a poor customer. A private LAN address is shared by millions of homes, a household
address by a whole family, a library PC by a town. The seeds' rule is to join cheap identity to durable
identity only on agreement: "two or more strong signals align (email plus phone, or address plus
device)". This module applies that rule incrementally, one attempt at a time, in time order:

* **Nodes** are keyed hashes: account, normalised mailbox, E.164 phone, device, payment instrument and
  household address (:data:`LINK_WEIGHTS`). Weak keys (public IP, network, home network, user agent)
  never join anything.
* **Links** are co-occurrences in attempts. An attempt joins an earlier person when the keys it shares
  with that person weigh at least :data:`PERSON_EVIDENCE` (two strong signals; one account, which is a
  login). It joins every person it reaches that way, so persons merge; a link exists from the attempt
  that made it, so the batch build is point-in-time correct by construction.
* **Bounds.** A key that has been seen with more than ``max_persons_per_key`` persons (a shop tablet, a
  library PC, a shared office card) stops being evidence, and a merge that would give a person more
  than ``max_accounts_per_person`` accounts is not made: a chain of single links never merges a town.
* **Households** are the normalised address (with its unit), a scope of their own, never merged.

One algorithm (:func:`resolve_attempt`) runs over three stores with the same key-value layout: a dict
for the batch build (:func:`build_graph`), SQLite by default and Redis in production for serving
(:class:`SqliteGraph`, :class:`RedisGraph`). Online resolution is atomic (one SQLite write transaction,
or a Redis WATCH/MULTI that retries on a concurrent change) and idempotent on ``request_id`` (the
stored resolution is returned again). Replaying history online gives the batch build's persons, which
a parity test holds.

The graph holds keyed hashes only; every entry carries its last-seen time so a retention setting can
prune what has not been seen for N days (:meth:`SqliteGraph.prune`; Redis entries expire on their own).
"""

from __future__ import annotations

import functools
import gc
import hashlib
import json
import math
import os
import random
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import orjson
import redis

from sqlitekit.sqlitewrite import WriteLock, insert_rows
from sqlitekit.walcheckpoint import Checkpointer, ThreadConnections, open_wal

if TYPE_CHECKING:
    # The batch build's frames import them where they are used: the online store and
    # `promoguard maintenance`, which only prune and resolve, start without them.
    import numpy as np
    import pandas as pd

#: Evidence weight of a key kind shared with an earlier person. An account is a login: alone it is the
#: same customer. The others are the seeds' strong signals, of which two must agree.
LINK_WEIGHTS: dict[str, int] = {
    "account": 2, "device": 1, "payment": 1, "phone": 1, "email": 1, "household": 1,
}

#: Evidence that makes two attempts one person.
PERSON_EVIDENCE = 2

#: Resolution columns that are model and rule inputs (numbers), in model order.
GRAPH_COLUMNS: tuple[str, ...] = (
    "person_linked_evidence",
    "person_accounts",
    "person_emails",
    "person_code_attempts",
    "person_type_attempts",
    "household_accounts",
    "referrer_same_person",
    "referrer_same_household",
)

_ATTEMPTS_KEPT = 50


class GraphUnavailable(RuntimeError):
    """The graph store failed or did not answer in time; the scorer answers without persons."""


@dataclass(frozen=True)
class GraphConfig:
    """Bounds and retention of the identity graph."""

    #: A key seen with more persons than this is shared (a shop tablet, a library PC): no evidence.
    max_persons_per_key: int = 8
    #: A merge that would give a person more accounts than this is not made.
    max_accounts_per_person: int = 200
    #: Entries not seen for this many days are pruned.
    retention_days: float = 400.0


@dataclass(frozen=True)
class Resolution:
    """Who one attempt resolved to, as of the attempt (before it was added to the graph)."""

    request_id: str
    ts: float
    person_id: str
    household_id: str | None
    #: Key kinds that joined the attempt to an earlier person, sorted (empty: a new person).
    evidence: tuple[str, ...]
    #: Distinct accounts and emails of the person, this attempt's included.
    person_accounts: int
    person_emails: int
    #: The person's earlier attempts at this promotion code and at this promotion type.
    person_code_attempts: int
    person_type_attempts: int
    #: When the person last tried this code before (epoch seconds), None when never.
    person_code_last_ts: float | None
    #: Distinct accounts seen at the household, this attempt's included (0 without an address).
    household_accounts: int
    referrer_same_person: bool
    referrer_same_household: bool

    def features(self) -> dict[str, float]:
        """The :data:`GRAPH_COLUMNS` values of this attempt."""
        return {
            "person_linked_evidence": float(sum(LINK_WEIGHTS.get(k, 0) for k in self.evidence)),
            "person_accounts": float(self.person_accounts),
            "person_emails": float(self.person_emails),
            "person_code_attempts": float(self.person_code_attempts),
            "person_type_attempts": float(self.person_type_attempts),
            "household_accounts": float(self.household_accounts),
            "referrer_same_person": float(self.referrer_same_person),
            "referrer_same_household": float(self.referrer_same_household),
        }

    def as_json(self) -> dict[str, Any]:
        """A JSON-ready dict (tuples become lists)."""
        # Built by hand: dataclasses.asdict's deep copy was half of the batch build's time.
        out = {name: getattr(self, name) for name in _RESOLUTION_FIELDS}
        out["evidence"] = list(self.evidence)
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Resolution:
        """The inverse of :meth:`as_json`."""
        values: dict[str, Any] = {name: data.get(name) for name in _RESOLUTION_FIELDS}
        values["evidence"] = tuple(values["evidence"] or ())
        return cls(**values)


_RESOLUTION_FIELDS: tuple[str, ...] = tuple(f.name for f in fields(Resolution))


@dataclass(frozen=True, slots=True)
class Attempt:
    """What the graph needs of one attempt: its time, promotion and keyed hashes (never raw identity)."""

    request_id: str
    ts: float
    promo_code: str | None
    promo_type: str | None
    keys: Mapping[str, str]
    referrer_key: str | None = None

    @classmethod
    def from_keys(cls, request_id: str, ts: float, row: Mapping[str, Any]) -> Attempt:
        """Build from a keys row: ``{kind}_key`` columns, ``promo_code``, ``promo_type``, ``referrer_key``."""
        keys = {}
        for kind in LINK_WEIGHTS:
            value = row.get(f"{kind}_key")
            if isinstance(value, str) and value:
                keys[kind] = value
        referrer = row.get("referrer_key")
        return cls(
            request_id=str(request_id),
            ts=float(ts),
            promo_code=_str_or_none(row.get("promo_code")),
            promo_type=_str_or_none(row.get("promo_type")),
            keys=keys,
            referrer_key=referrer if isinstance(referrer, str) and referrer else None,
        )


def _str_or_none(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def person_id_for(request_id: str) -> str:
    """The id of the person an attempt founds: a digest of its request id (stable across stores)."""
    return "p" + hashlib.blake2b(request_id.encode(), digest_size=9).hexdigest()


# --- the algorithm ---------------------------------------------------------------------------------


class GraphView(Protocol):
    """Reads and buffered writes of one resolution (a transaction of a store, or the batch dict)."""

    def get(self, key: str) -> Any:
        """The value stored at ``key`` (None when absent)."""
        ...

    def get_many(self, keys: Sequence[str]) -> list[Any]:
        """Values of ``keys``, None where absent, in order."""
        ...

    def put(self, key: str, value: Any) -> None:
        """Store ``value`` at ``key`` (JSON-ready data) when the resolution commits."""
        ...


#: Root person and record of every person id met during one resolution.
_RootCache = dict[str, tuple[str, dict[str, Any]]]


def _root(view: GraphView, pid: str, cache: _RootCache) -> tuple[str, dict[str, Any]]:
    """The root person of ``pid`` and its record (union-find without path writes: merges point at roots)."""
    hit = cache.get(pid)
    if hit is not None:
        return hit
    start = pid
    record = view.get(f"p:{pid}")
    seen = 0
    while record is not None and record.get("up"):
        pid = record["up"]
        record = view.get(f"p:{pid}")
        seen += 1
        if seen > 64:  # a cycle would be a bug; never loop forever on bad data
            break
    if record is None:
        record = _new_person(0.0)
    cache[start] = cache[pid] = (pid, record)
    return pid, record


def _new_person(ts: float) -> dict[str, Any]:
    return {"up": None, "f": ts, "l": ts, "a": {}, "e": {}, "h": {}, "c": {}, "y": {}, "x": []}


def _absorb(into: dict[str, Any], other: dict[str, Any]) -> None:
    """Merge person ``other``'s aggregates into ``into`` (both roots)."""
    into["f"] = min(into["f"], other["f"])
    into["l"] = max(into["l"], other["l"])
    for field_ in ("a", "e", "h"):
        into[field_].update(other[field_])
    for code, (n, last) in other["c"].items():
        mine = into["c"].get(code)
        into["c"][code] = [n + (mine[0] if mine else 0), max(last, mine[1] if mine else last)]
    for kind, n in other["y"].items():
        into["y"][kind] = into["y"].get(kind, 0) + n
    into["x"] = sorted(into["x"] + other["x"], key=lambda a: (a[1], a[0]))[-_ATTEMPTS_KEPT:]


def _evidence(
    view: GraphView, kinds: Sequence[str], entries: Mapping[str, Any], cache: _RootCache
) -> dict[str, set[str]]:
    """Per earlier root person: the kinds of this attempt's keys it was seen with (shared keys left out).

    ``kinds`` and ``entries`` are in the same order (the attempt's keys).
    """
    evidence: dict[str, set[str]] = {}
    for kind, entry in zip(kinds, entries.values(), strict=True):
        if entry is None or entry["s"]:
            continue  # unseen, or shared by too many persons to mean anything
        for pid in entry["p"]:
            root = cache[pid][0] if pid in cache else _root(view, pid, cache)[0]
            found = evidence.get(root)
            if found is None:
                evidence[root] = {kind}
            else:
                found.add(kind)
    return evidence


def _weight(kinds: set[str]) -> int:
    return sum(LINK_WEIGHTS[k] for k in kinds)


def _join(
    view: GraphView,
    attempt: Attempt,
    evidence: Mapping[str, set[str]],
    cache: _RootCache,
    config: GraphConfig,
) -> tuple[str, dict[str, Any], list[str]]:
    """The person the attempt belongs to, its record and the evidence kinds; merges what it joins."""
    # Every weight is at least 1, so two kinds are always enough; one kind only when it weighs 2.
    joined = [r for r, kinds in evidence.items() if len(kinds) >= 2 or _weight(kinds) >= PERSON_EVIDENCE]
    if not joined:
        return person_id_for(attempt.request_id), _new_person(attempt.ts), []
    if len(joined) == 1:
        # The common case: one earlier person, nothing to merge.
        target = joined[0]
        return target, cache[target][1], sorted(evidence[target])
    joined.sort(key=lambda r: (cache[r][1]["f"], r))
    target = joined[0]
    record = cache[target][1]
    used = [target]
    for other in joined[1:]:
        other_record = cache[other][1]
        if len({**record["a"], **other_record["a"]}) > config.max_accounts_per_person:
            continue  # bounded: this merge would make a crowd, not a person
        _absorb(record, other_record)
        view.put(f"p:{other}", {"up": target, "f": other_record["f"], "l": attempt.ts})
        used.append(other)
    # Everything that resolved to a merged person resolves to the target from now on.
    for start, (root, _) in list(cache.items()):
        if root in used:
            cache[start] = (target, record)
    return target, record, sorted(set().union(*(evidence[r] for r in used)))


def _add_to_person(
    record: dict[str, Any], attempt: Attempt, linked: Sequence[str], limit: int, keep_history: bool
) -> None:
    """Count the attempt in its person's aggregates (each set bounded by ``limit``); ``keep_history``
    also lists it among the person's latest attempts, which only the analysts' view reads."""
    for kind, field_ in (("account", "a"), ("email", "e"), ("household", "h")):
        value = attempt.keys.get(kind)
        if value and len(record[field_]) < limit:
            record[field_][value] = 1
    code, ptype = attempt.promo_code, attempt.promo_type
    if code:
        record["c"][code] = [(record["c"].get(code) or [0])[0] + 1, attempt.ts]
    if ptype:
        record["y"][ptype] = int(record["y"].get(ptype, 0)) + 1
    record["l"] = max(record["l"], attempt.ts)
    if not keep_history:
        return
    history = record["x"]
    history.append([attempt.request_id, attempt.ts, ",".join(linked)])
    if len(history) > _ATTEMPTS_KEPT:
        del history[0]


def _point_keys(
    view: GraphView,
    entries: Mapping[str, Any],
    target: str,
    ts: float,
    cache: _RootCache,
    config: GraphConfig,
) -> None:
    """Point every key of the attempt at its person; a key reaching too many persons is shared for good."""
    for name, entry in entries.items():
        if entry is None:
            view.put(name, {"p": [target], "s": False, "t": ts})
            continue
        # Entries are mutated in place: the batch dict shares them, an online view parsed its own copy.
        persons = entry["p"]
        if not entry["s"] and not (len(persons) == 1 and persons[0] == target):
            roots = {_root(view, p, cache)[0] for p in entry["p"]}
            roots.add(target)
            if len(roots) > config.max_persons_per_key:
                entry["p"], entry["s"] = [], True
            else:
                entry["p"] = sorted(roots)
        entry["t"] = ts
        view.put(name, entry)


def _count_household(view: GraphView, entry: Any, household: str, attempt: Attempt, limit: int) -> int:
    """Add the attempt to its household; return the household's distinct accounts."""
    h = entry or {"f": attempt.ts, "a": {}, "n": 0}
    account = attempt.keys.get("account")
    if account and len(h["a"]) < limit:
        h["a"][account] = 1
    view.put(f"h:{household}", {"f": h["f"], "l": attempt.ts, "a": h["a"], "n": int(h["n"]) + 1})
    return len(h["a"])


def _referrer_links(
    view: GraphView, attempt: Attempt, ref_entry: Any, target: str, cache: _RootCache
) -> tuple[bool, bool]:
    """Whether the referrer account resolves to the attempt's person, and to its household."""
    household = attempt.keys.get("household")
    if attempt.referrer_key == attempt.keys.get("account"):
        return True, household is not None
    same_person = same_household = False
    if ref_entry is not None and not ref_entry["s"]:
        for pid in ref_entry["p"]:
            root, ref_record = _root(view, pid, cache)
            same_person = same_person or root == target
            same_household = same_household or bool(household and household in ref_record["h"])
    return same_person, same_household or (same_person and household is not None)


def resolve_attempt(
    view: GraphView, attempt: Attempt, config: GraphConfig, *, remember: bool = True
) -> Resolution:
    """Resolve one attempt against the graph in ``view`` and add it; return who it resolved to.

    Idempotent when ``remember`` (serving): an attempt whose ``request_id`` is already resolved returns
    the stored resolution and writes nothing. The batch build, whose request ids are unique, skips that
    record and the persons' attempt lists (the analysts' view), which no resolution reads.
    Deterministic: the same attempts in the same order give the same persons in every store.
    """
    if remember:
        stored = view.get(f"r:{attempt.request_id}")
        if stored is not None:
            return Resolution.from_json(stored)
    kinds = list(attempt.keys)
    key_names = [f"k:{kind}:{value}" for kind, value in attempt.keys.items()]
    household = attempt.keys.get("household")
    extra = [f"h:{household}"] if household else []
    if attempt.referrer_key:
        extra.append(f"k:account:{attempt.referrer_key}")
    fetched = view.get_many(key_names + extra)
    entries = dict(zip(key_names, fetched, strict=False))
    household_entry = fetched[len(key_names)] if household else None
    referrer_entry = fetched[-1] if attempt.referrer_key else None
    cache: _RootCache = {}

    target, record, linked = _join(view, attempt, _evidence(view, kinds, entries, cache), cache, config)
    code_hist = record["c"].get(attempt.promo_code) if attempt.promo_code else None
    type_attempts = int(record["y"].get(attempt.promo_type, 0)) if attempt.promo_type else 0
    _add_to_person(record, attempt, linked, config.max_accounts_per_person, keep_history=remember)
    view.put(f"p:{target}", record)
    _point_keys(view, entries, target, attempt.ts, cache, config)
    household_accounts = (
        _count_household(view, household_entry, household, attempt, config.max_accounts_per_person)
        if household else 0
    )
    same_person, same_household = (
        _referrer_links(view, attempt, referrer_entry, target, cache) if attempt.referrer_key
        else (False, False)
    )
    resolution = Resolution(
        request_id=attempt.request_id,
        ts=attempt.ts,
        person_id=target,
        household_id=household,
        evidence=tuple(linked),
        person_accounts=len(record["a"]),
        person_emails=len(record["e"]),
        person_code_attempts=int(code_hist[0]) if code_hist else 0,
        person_type_attempts=type_attempts,
        person_code_last_ts=float(code_hist[1]) if code_hist else None,
        household_accounts=household_accounts,
        referrer_same_person=same_person,
        referrer_same_household=same_household,
    )
    if remember:
        view.put(f"r:{attempt.request_id}", {**resolution.as_json(), "t": attempt.ts})
    return resolution


# --- the batch build -------------------------------------------------------------------------------


class DictView:
    """The whole graph in a dict: the batch build's store (values are shared, not copied)."""

    def __init__(self) -> None:
        """An empty graph."""
        self.data: dict[str, Any] = {}

    def get(self, key: str) -> Any:
        """The value at ``key``, None when absent."""
        return self.data.get(key)

    def get_many(self, keys: Sequence[str]) -> list[Any]:
        """Values of ``keys``, None where absent."""
        data = self.data
        return [data.get(k) for k in keys]

    def put(self, key: str, value: Any) -> None:
        """Store ``value`` at ``key``."""
        self.data[key] = value


def attempts_in_order(keys: pd.DataFrame) -> Iterator[Attempt]:
    """The attempts of a keys frame in resolution order: time, then request id (ties broken the same way
    online and in batch)."""
    import numpy as np
    import pandas as pd

    ts = pd.to_datetime(keys["ts"], utc=True)
    seconds = ((ts - pd.Timestamp(0, tz="UTC")).dt.total_seconds()).to_numpy(dtype=np.float64)
    rids = keys["request_id"].astype(str).to_numpy()
    order = np.lexsort((rids, seconds))
    kinds = tuple(LINK_WEIGHTS)
    # Missing keys become None once, column by column, so the loop below only tests truthiness.
    cols = [_clean_column(keys, f"{kind}_key")[order].tolist() for kind in kinds]
    extra = [_clean_column(keys, c)[order].tolist() for c in ("promo_code", "promo_type", "referrer_key")]
    ordered_ids, ordered_ts = rids[order].tolist(), seconds[order].tolist()
    for rid, t, *values in zip(ordered_ids, ordered_ts, *cols, *extra, strict=True):
        code, ptype, referrer = values[-3:]
        found = {kind: value for kind, value in zip(kinds, values[:-3], strict=False) if value}
        yield Attempt(rid, t, code, ptype, found, referrer)


def _clean_column(frame: pd.DataFrame, name: str) -> np.ndarray:
    """The column as objects with every missing, empty or non-text value as None."""
    import numpy as np

    if name not in frame.columns:
        return np.full(len(frame), None, dtype=object)
    values = frame[name].astype(object).to_numpy()
    keep = np.fromiter((isinstance(v, str) and v != "" for v in values), dtype=bool, count=len(values))
    out = np.full(len(values), None, dtype=object)
    out[keep] = values[keep]
    return out


def build_graph(keys: pd.DataFrame, config: GraphConfig | None = None) -> tuple[pd.DataFrame, DictView]:
    """Resolve every attempt of a keys frame in time order; return one row per attempt and the graph.

    The frame has ``request_id``, ``person_id``, ``household_id``, ``person_evidence`` (comma-joined
    kinds) and every :data:`GRAPH_COLUMNS` column, in the input's row order. Each row is what serving
    would have resolved at that attempt: the graph as it stood just before it.
    """
    import numpy as np
    import pandas as pd

    config = config or GraphConfig()
    view = DictView()
    n = len(keys)
    rows: dict[str, Resolution] = {}
    # The graph is millions of small dicts and lists that never point back at each other, so reference
    # counting frees all of them; the cyclic collector would only walk the growing heap again and again
    # (measured on 100k attempts: 6.1 s with it, 4.0 s without).
    collecting = gc.isenabled()
    gc.disable()
    try:
        for attempt in attempts_in_order(keys):
            rows[attempt.request_id] = resolve_attempt(view, attempt, config, remember=False)
    finally:
        if collecting:
            gc.enable()
    ordered = [rows[str(r)] for r in keys["request_id"].astype(str)]
    out = pd.DataFrame(
        {
            "request_id": keys["request_id"].to_numpy(),
            "person_id": [r.person_id for r in ordered],
            "household_id": pd.Series([r.household_id for r in ordered], dtype=object),
            "person_evidence": [",".join(r.evidence) for r in ordered],
        },
        index=keys.index,
    )
    weights = {kinds: float(sum(LINK_WEIGHTS[k] for k in kinds)) for kinds in {r.evidence for r in ordered}}
    out["person_linked_evidence"] = np.fromiter((weights[r.evidence] for r in ordered), np.float64, count=n)
    for col in GRAPH_COLUMNS[1:]:
        out[col] = np.asarray([getattr(r, col) for r in ordered], dtype=np.float64)
    return out, view


def graph_context(keys: pd.DataFrame, config: GraphConfig | None = None) -> pd.DataFrame:
    """The :data:`GRAPH_COLUMNS` of every attempt of a keys frame (same index), for the model row."""
    frame, _ = build_graph(keys, config)
    return frame[list(GRAPH_COLUMNS)]


# --- what an analyst sees --------------------------------------------------------------------------


@dataclass(frozen=True)
class IdentityView:
    """An attempt's person and household for analysts: hashes, counts and times, no raw identifier."""

    request_id: str
    person_id: str
    household_id: str | None
    evidence: tuple[str, ...]
    person: dict[str, Any]
    household: dict[str, Any] | None


def _iso(ts: float | None) -> str | None:
    import pandas as pd

    if ts is None or not math.isfinite(ts) or ts <= 0:
        return None
    return pd.Timestamp(ts, unit="s", tz="UTC").isoformat()


def explain(view: GraphView, request_id: str) -> IdentityView | None:
    """What ``request_id`` resolved to and what its person and household look like now (None: unknown)."""
    stored = view.get(f"r:{request_id}")
    if stored is None:
        return None
    res = Resolution.from_json(stored)
    root, record = _root(view, res.person_id, {})
    attempts = [
        {"request_id": rid, "ts": _iso(ts), "evidence": [k for k in ev.split(",") if k]}
        for rid, ts, ev in record["x"]
    ]
    person = {
        "person_id": root,
        "accounts": len(record["a"]),
        "account_keys": sorted(record["a"])[:50],
        "emails": len(record["e"]),
        "households": len(record["h"]),
        "promotion_codes": {code: int(v[0]) for code, v in sorted(record["c"].items())},
        "first_seen": _iso(record["f"]),
        "last_seen": _iso(record["l"]),
        "linked_attempts": attempts,
        "evidence_kinds": sorted({k for a in attempts for k in a["evidence"]}),
    }
    household = None
    if res.household_id:
        h = view.get(f"h:{res.household_id}")
        if h is not None:
            household = {
                "household_id": res.household_id,
                "accounts": len(h["a"]),
                "attempts": int(h["n"]),
                "first_seen": _iso(h["f"]),
                "last_seen": _iso(h["l"]),
            }
    return IdentityView(request_id, root, res.household_id, res.evidence, person, household)


# --- online stores ---------------------------------------------------------------------------------


class _BufferedView:
    """Reads through ``fetch``; writes buffered until the store commits them together."""

    def __init__(self, fetch: Callable[[Sequence[str]], list[Any]]) -> None:
        self._fetch = fetch
        self.writes: dict[str, Any] = {}
        self.read_keys: list[str] = []

    def get(self, key: str) -> Any:
        return self.get_many([key])[0]

    def get_many(self, keys: Sequence[str]) -> list[Any]:
        missing = [k for k in keys if k not in self.writes]
        fetched = dict(zip(missing, self._fetch(missing), strict=True)) if missing else {}
        self.read_keys.extend(missing)
        return [self.writes[k] if k in self.writes else fetched[k] for k in keys]

    def put(self, key: str, value: Any) -> None:
        self.writes[key] = value


def _dumps(value: Any) -> str:
    # orjson: every resolution writes ~8 entries, and the standard encoder was most of their cost.
    return orjson.dumps(value, option=orjson.OPT_SERIALIZE_NUMPY).decode()


def _last_seen(key: str, value: Any) -> float:
    if isinstance(value, dict):
        return float(value.get("t", value.get("l", 0.0)) or 0.0)
    return 0.0


_SQLITE_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS graph (k TEXT PRIMARY KEY, v TEXT NOT NULL, t REAL NOT NULL) WITHOUT ROWID;"
    "CREATE INDEX IF NOT EXISTS graph_t ON graph (t)"
)


#: Entries :meth:`SqliteGraph.prune` deletes per write transaction.
PRUNE_BATCH = 500


class SqliteGraph:
    """The identity graph in one SQLite file (WAL): each resolution is one write transaction."""

    def __init__(
        self,
        path: str | Path,
        config: GraphConfig | None = None,
        busy_timeout_ms: int = 50,
        checkpoint_interval_s: float | None = None,
    ) -> None:
        """Open (and create) the graph at ``path``.

        With ``checkpoint_interval_s`` WAL checkpoints run in a background thread instead of inside the
        resolution whose commit fills the log (:mod:`sqlitekit.walcheckpoint`): the serving p99.
        """
        self.path = str(path)
        self._checkpoint_interval_s = checkpoint_interval_s
        self._checkpointer: Checkpointer | None = None
        self.config = config or GraphConfig()
        self.busy_timeout_ms = int(busy_timeout_ms)
        self._writes = WriteLock(self.busy_timeout_ms / 1000)
        self._pid = os.getpid()
        background = checkpoint_interval_s is not None
        self._conns = ThreadConnections(
            lambda: open_wal(self.path, self.busy_timeout_ms, background_checkpoints=background)
        )
        conn = self._conn()
        for statement in _SQLITE_SCHEMA.split(";"):
            conn.execute(statement)
        if checkpoint_interval_s is not None:
            self._checkpointer = Checkpointer(self.path, checkpoint_interval_s)

    def _conn(self) -> sqlite3.Connection:
        if self._pid != os.getpid():
            # A forked child must not reuse the parent's connections, and checkpoints for itself.
            self._conns.reset()
            self._writes = WriteLock(self.busy_timeout_ms / 1000)
            self._pid = os.getpid()
            if self._checkpoint_interval_s is not None:
                self._checkpointer = Checkpointer(self.path, self._checkpoint_interval_s)
        try:
            return self._conns.get()
        except sqlite3.Error as exc:
            raise GraphUnavailable(f"identity graph {self.path!r} cannot be opened: {exc}") from exc

    def _fetch(self, conn: sqlite3.Connection, keys: Sequence[str]) -> list[Any]:
        found: dict[str, Any] = {}
        for start in range(0, len(keys), 500):
            chunk = keys[start:start + 500]
            marks = ",".join("?" * len(chunk))
            for k, v in conn.execute(f"SELECT k, v FROM graph WHERE k IN ({marks})", chunk):
                found[k] = json.loads(v)
        return [found.get(k) for k in keys]

    def resolve(self, attempt: Attempt) -> Resolution:
        """Resolve and add one attempt atomically (idempotent on its request id)."""
        conn = self._conn()
        try:
            with self._writes.transaction(conn, self.busy_timeout_ms):
                view = _BufferedView(lambda keys: self._fetch(conn, keys))
                resolution = resolve_attempt(view, attempt, self.config)
                if view.writes:
                    insert_rows(
                        conn, "INSERT OR REPLACE INTO graph (k, v, t)",
                        [(k, _dumps(v), _last_seen(k, v)) for k, v in view.writes.items()],
                    )
            return resolution
        except sqlite3.Error as exc:
            raise GraphUnavailable(f"identity graph busy or failing: {exc}") from exc

    def view(self) -> GraphView:
        """A read-only view of the graph as it is now (for :func:`explain`)."""
        conn = self._conn()
        return _BufferedView(lambda keys: self._fetch(conn, keys))

    def prune(self, now: float, retention_days: float | None = None) -> int:
        """Delete entries not seen for ``retention_days`` (the config's by default); return how many.

        A person record that is pruned takes its links with it: a later attempt with the same keys
        founds a new person, as it would for a stranger.
        """
        days = self.config.retention_days if retention_days is None else retention_days
        cutoff = now - days * 86_400
        conn = self._conn()
        removed = 0
        try:
            while True:
                # Oldest first, PRUNE_BATCH entries per write transaction: a service resolving meanwhile
                # waits for one batch at most, never for the whole prune.
                with self._writes.transaction(conn, self.busy_timeout_ms):
                    batch = conn.execute(
                        "DELETE FROM graph WHERE k IN (SELECT k FROM graph WHERE t < ? ORDER BY t LIMIT ?)",
                        (cutoff, PRUNE_BATCH),
                    ).rowcount
                removed += batch
                if batch < PRUNE_BATCH:
                    return removed
        except sqlite3.Error as exc:
            raise GraphUnavailable(f"identity graph busy or failing: {exc}") from exc

    def close(self) -> None:
        """Stop the checkpointer and close every connection."""
        if self._checkpointer is not None:
            self._checkpointer.close()
            self._checkpointer = None
        self._conns.close()


class RedisGraph:
    """The identity graph in Redis: one JSON string per entry, each resolution a WATCH/MULTI transaction.

    Every entry expires ``retention_days`` after it was last written, so Redis prunes by itself.
    """

    def __init__(self, client: redis.Redis, config: GraphConfig | None = None, prefix: str = "pg:g:",
                 retries: int = 30) -> None:
        """Wrap a fail-fast client (``features.velocity.redis_client``)."""
        self.client = client
        self.config = config or GraphConfig()
        self.prefix = prefix
        self.retries = retries
        self._ttl_s = max(1, int(self.config.retention_days * 86_400))

    def _fetch(self, pipe: Any, keys: Sequence[str]) -> list[Any]:
        names = [self.prefix + k for k in keys]
        pipe.watch(*names)
        raw = pipe.mget(names)
        return [None if v is None else json.loads(v) for v in raw]

    def resolve(self, attempt: Attempt) -> Resolution:
        """Resolve and add one attempt atomically (idempotent on its request id)."""
        try:
            for _ in range(self.retries):
                with self.client.pipeline(transaction=True) as pipe:
                    view = _BufferedView(functools.partial(self._fetch, pipe))
                    resolution = resolve_attempt(view, attempt, self.config)
                    if not view.writes:
                        pipe.unwatch()
                        return resolution
                    pipe.multi()
                    for k, v in view.writes.items():
                        pipe.set(self.prefix + k, _dumps(v), ex=self._ttl_s)
                    try:
                        pipe.execute()
                    except redis.WatchError:
                        # Another request changed an entry this one read (the same person, a bot's
                        # burst): resolve again after a short random pause so the racers spread out.
                        time.sleep(random.uniform(0.0, 0.002))
                        continue
                    return resolution
        except redis.RedisError as exc:
            raise GraphUnavailable(f"identity graph redis failed: {type(exc).__name__}: {exc}") from exc
        except OSError as exc:
            raise GraphUnavailable(f"identity graph redis unreachable: {exc}") from exc
        raise GraphUnavailable("identity graph: too many concurrent changes, gave up")

    def view(self) -> GraphView:
        """A read-only view of the graph as it is now (for :func:`explain`)."""

        def fetch(keys: Sequence[str]) -> list[Any]:
            raw: list[Any] = self.client.mget([self.prefix + k for k in keys])  # type: ignore[assignment]
            return [None if v is None else json.loads(v) for v in raw]

        return _BufferedView(fetch)

    def prune(self, now: float, retention_days: float | None = None) -> int:
        """Nothing to do: every entry carries its own expiry. Returns 0."""
        return 0

    def close(self) -> None:
        """Release the connection pool."""
        self.client.close()


class MemoryGraph:
    """The identity graph in this process's memory: for replays and tests, never shared, never pruned."""

    def __init__(self, config: GraphConfig | None = None) -> None:
        """An empty graph."""
        self.config = config or GraphConfig()
        self._view = DictView()
        self._lock = threading.Lock()

    def resolve(self, attempt: Attempt) -> Resolution:
        """Resolve and add one attempt (idempotent on its request id)."""
        with self._lock:
            return resolve_attempt(self._view, attempt, self.config)

    def view(self) -> GraphView:
        """The graph itself (read it, do not write through it)."""
        return self._view

    def prune(self, now: float, retention_days: float | None = None) -> int:
        """Nothing is kept long enough to prune. Returns 0."""
        return 0

    def close(self) -> None:
        """Nothing to release."""


class GraphStore(Protocol):
    """What serving uses of a graph store."""

    def resolve(self, attempt: Attempt) -> Resolution:
        """Resolve and add one attempt atomically."""
        ...

    def view(self) -> GraphView:
        """A read-only view for :func:`explain`."""
        ...

    def prune(self, now: float, retention_days: float | None = None) -> int:
        """Delete entries past retention."""
        ...

    def close(self) -> None:
        """Release resources."""
        ...


def replay_online(store: GraphStore, keys: pd.DataFrame) -> list[Resolution]:
    """Resolve a keys frame attempt by attempt through ``store``, in the batch build's order."""
    return [store.resolve(a) for a in attempts_in_order(keys)]


def timed_resolutions(store: GraphStore, attempts: Sequence[Attempt]) -> list[float]:
    """Milliseconds each resolution took (for the benchmark)."""
    out = []
    for a in attempts:
        started = time.perf_counter()
        store.resolve(a)
        out.append((time.perf_counter() - started) * 1000.0)
    return out
