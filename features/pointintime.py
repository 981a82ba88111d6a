"""Point-in-time feature views in numpy: the DuckDB engine's computation, equal to the SQL definition.

:func:`features.pipeline.view_sql` is the definition of a view and Spark runs it whole. On DuckDB its
``RANGE`` window sums took most of two minutes for a million events (about a second per frame per
million rows). This module computes the same rows with sorts, cumulative sums and binary searches:

* the base rows of the view are sorted once by (entity, time); equal (entity, time) pairs collapse into
  one event row holding that time's attempts (the SQL's ``evt``);
* for each distinct-count target the rows are re-sorted by (entity, target, time) to find where runs of
  one (entity, target) pair start and end (the SQL's ``occ``/``run``/``edge``), counted per event row;
* every windowed sum over ``[T - w, T)`` is ``C[hi] - C[lo]`` over the cumulative sum ``C`` of the
  entity's event rows, where ``lo`` is one binary search for (entity, ``T - w``) in the event rows'
  monotone int64 composite of (entity, rank of time) (see :class:`Base`). "Before ``T``" is strict, as
  the SQL's ``1 PRECEDING`` frame end, and events tied at one time count together, as in a ``RANGE``
  frame. The searches' needles ascend like the keys, so they stay in cache;
* label arrivals are a second (entity, time) line, searched the same way.

All counts are exact integer arithmetic, and the two float features divide the same integers as the SQL
(``CAST(x AS DOUBLE) / y``), so the results equal the SQL's bit for bit; the tests hold the two to it.

Input is the encoded base table as arrays (see :func:`features.pipeline.base_arrays`): key codes as int64
with ``-1`` for null, assigned in the sort order of the key strings, so (code, time) order is the
(string, time) order of the output frames, and the output needs no sort of its own.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from features.definitions import WINDOWS, FeatureView

_US = 1_000_000
#: Largest mixed-radix or composite value allowed before ids are densified (keeps int64 arithmetic exact).
_INT64_ROOM = 2**62


@dataclass(frozen=True)
class SnapshotRule:
    """Which entities of a view get a snapshot row at ``as_of`` (and so a row in the online store).

    An entity idle for longer than the longest window reads online exactly like a new one (every count
    0; see ``features.store.ABSENT_ENTITY_VALUES``), so its snapshot is left out unless it carries what
    the windows forget: an arrived abuse label, or, for identity x code views, a past redemption (what
    one-per-customer is about). Promo codes are few and all kept. This halves what materialization
    writes; the price is that an idle entity's ``first_seen_days`` is missing online.
    """

    #: Keep every entity (promo codes).
    every_entity: bool
    #: Also keep an idle entity that has a redemption (identity x code views).
    redeemed: bool
    #: An entity with an event at or after ``as_of - recent_us`` is kept.
    recent_us: int = max(WINDOWS.values()) * _US


def snapshot_rule(view: FeatureView) -> SnapshotRule:
    """The snapshot rule of a view; both the SQL and the numpy computation read it from here."""
    return SnapshotRule(every_entity=view.name == "code_stats", redeemed="promo_code" in view.join_keys)


def _us(window: str) -> int:
    return WINDOWS[window] * _US


def _run_starts(*columns: np.ndarray) -> np.ndarray:
    """True where a row of lexicographically sorted columns differs from the row before it."""
    size = len(columns[0])
    starts = np.ones(size, dtype=bool)
    if size > 1:
        changed = np.zeros(size - 1, dtype=bool)
        for column in columns:
            changed |= column[1:] != column[:-1]
        starts[1:] = changed
    return starts


def _combine(high: np.ndarray, low: np.ndarray) -> np.ndarray:
    """One int64 per row that orders like the pair (high, low); both are non-negative codes."""
    if len(high) == 0:
        return high.astype(np.int64)
    radix = int(low.max()) + 1
    if (int(high.max()) + 1) * radix >= _INT64_ROOM:
        # Dense ranks keep the order and bring the product back under 2**62.
        high = np.unique(high, return_inverse=True)[1].reshape(-1)
        low = np.unique(low, return_inverse=True)[1].reshape(-1)
        radix = int(low.max()) + 1
    return high.astype(np.int64) * radix + low


def _distinct_sorted(values: np.ndarray) -> np.ndarray:
    """The distinct values, ascending (a sort and a compare: cheaper than ``np.unique`` here)."""
    ordered = np.sort(values)
    return ordered[_run_starts(ordered)] if len(ordered) else ordered


def _cumulative(values: np.ndarray) -> np.ndarray:
    """``C`` with ``C[i]`` the sum of the first ``i`` values, so a range sum is ``C[hi] - C[lo]``."""
    out = np.zeros(len(values) + 1, dtype=np.int64)
    np.cumsum(values, out=out[1:])
    return out


class Base:
    """The base table as arrays, cut at ``as_of``, with the time ranks that every view shares.

    ``columns`` maps the key columns (int64 codes, ``-1`` = null), ``t``, ``redeemed``, ``invalid``,
    ``is_new`` (int64), ``abuse_t`` (int64) and ``labeled`` (bool: an abuse label arrived, so
    ``abuse_t`` is meaningful) to equal-length arrays; see :func:`features.pipeline.base_arrays`.

    Times are replaced by their rank among the distinct event and label-arrival times, so a (group,
    time) pair becomes the int64 ``group * span + rank``, monotone in (group, time) order and far below
    2**63 for any timestamps. A row time ``x`` is before a query time ``q`` exactly when
    ``rank(x) < searchsorted(times, q, "left")``: strict "before", as the SQL's ``1 PRECEDING`` end.
    """

    def __init__(self, columns: Mapping[str, np.ndarray], as_of_us: int) -> None:
        inside = columns["t"] < as_of_us
        # Usually nothing is cut: then the arrays are used as they are, without a copy.
        self.columns = dict(columns) if inside.all() else {n: v[inside] for n, v in columns.items()}
        self.as_of_us = as_of_us
        t = self.columns["t"]
        arrival = np.maximum(t, self.columns["abuse_t"])
        #: Rows whose abuse label arrives before as_of, and when (never before the event itself).
        self.labeled = self.columns["labeled"] & (arrival < as_of_us)
        self.times = _distinct_sorted(np.concatenate([t, arrival[self.labeled]]))
        self.span = len(self.times) + 1
        self.rank = np.searchsorted(self.times, t)
        self.arrival_rank = np.searchsorted(self.times, arrival)
        # Computed up front for every catalog window: views then only read this object, so several
        # can be computed at once in threads.
        self._window_rank = {w * _US: np.searchsorted(self.times, t - w * _US) for w in WINDOWS.values()}

    def window_rank(self, window_us: int) -> np.ndarray:
        """Per row, the rank bound of ``t - window``: rows ranked below it are before the window."""
        return self._window_rank[window_us]

    def query_rank(self, t_us: int) -> int:
        """The rank bound of one query time (e.g. ``as_of - w``)."""
        return int(np.searchsorted(self.times, t_us))

    def composite(self, group: np.ndarray, rank: np.ndarray | int) -> np.ndarray:
        """``group * span + rank``, refusing values that int64 cannot hold exactly."""
        if len(group) and (int(group.max()) + 1) * self.span >= _INT64_ROOM:  # pragma: no cover
            raise OverflowError("group ids too large for an int64 (group, time) composite")
        return group.astype(np.int64) * self.span + rank


def view_arrays(view: FeatureView, base: Base) -> dict[str, np.ndarray]:
    """Compute one feature view from the base arrays: the same rows and values as :func:`view_sql`.

    Returns the join key codes, ``t`` and every feature (int64, or float64 with NaN where the SQL
    gives NULL), one entry per output row, sorted by (join key codes, t).
    """
    keys = view.join_keys
    cols = base.columns
    has_keys = cols[keys[0]] >= 0
    for k in keys[1:]:
        has_keys &= cols[k] >= 0
    rows = np.flatnonzero(has_keys)
    group = cols[keys[0]][rows]
    for k in keys[1:]:
        group = _combine(group, cols[k][rows])
    if len(rows) and (int(group.max()) + 1) * base.span >= _INT64_ROOM:  # pragma: no cover
        group = np.unique(group, return_inverse=True)[1].reshape(-1)
    # One sort by (entity, time); every later step reads rows in this order.
    row_key = base.composite(group, base.rank[rows])
    order = np.argsort(row_key)
    rows, group, row_key = rows[order], group[order], row_key[order]

    # Event rows: one per (entity, time), holding that time's attempts (the SQL's evt).
    evt_new = _run_starts(row_key)
    evt_start = np.flatnonzero(evt_new)
    evt_of_row = np.cumsum(evt_new) - 1
    n_evt = len(evt_start)
    if n_evt == 0:
        empty = {name: np.zeros(0, np.int64) for name in (*keys, "t")}
        return empty | {
            f.name: np.zeros(0, np.float64 if f.dtype == "float64" else np.int64) for f in view.features
        }
    evt_key = row_key[evt_start]  # sorted: what windows search in
    t = cols["t"][rows]
    evt_t = t[evt_start]
    grp_new = _run_starts(group[evt_start])
    grp_start = np.flatnonzero(grp_new)  # first event row of each entity
    grp_of_evt = np.cumsum(grp_new) - 1  # dense entity number of each event row
    n_grp = len(grp_start)
    grp_end = np.append(grp_start[1:], n_evt).astype(np.int64)
    grp_id = group[evt_start][grp_start]  # the entity's group id, for composites

    def per_event(column: str) -> np.ndarray:
        return np.add.reduceat(cols[column][rows], evt_start).astype(np.int64)

    sums = {"n": _cumulative(np.diff(np.append(evt_start, len(rows))).astype(np.int64))}

    # Label arrivals of the entity's rows: a second (entity, time) line of their own.
    lab_rows = np.flatnonzero(base.labeled[rows])
    lab_grp = grp_of_evt[evt_of_row[lab_rows]]
    lab_key = np.sort(base.composite(grp_id[lab_grp], base.arrival_rank[rows[lab_rows]]))

    rule = snapshot_rule(view)
    if rule.every_entity:
        snap = np.ones(n_grp, dtype=bool)
    else:
        snap = evt_t[grp_end - 1] >= base.as_of_us - rule.recent_us
        snap |= np.bincount(lab_grp, minlength=n_grp) > 0
        if rule.redeemed:
            sums["redeemed"] = _cumulative(per_event("redeemed"))
            snap |= sums["redeemed"][grp_end] > sums["redeemed"][grp_start]

    # Output rows in (entity, time) order: each entity's event rows, then its snapshot at as_of.
    snaps_before = np.cumsum(snap) - snap
    n_out = n_evt + int(snap.sum())
    at_evt = np.arange(n_evt) + snaps_before[grp_of_evt]
    at_snap = (grp_end + snaps_before)[snap]
    q_grp = np.empty(n_out, dtype=np.int64)
    q_grp[at_evt] = grp_of_evt
    q_grp[at_snap] = np.flatnonzero(snap)
    q_t = np.empty(n_out, dtype=np.int64)
    q_t[at_evt] = evt_t
    q_t[at_snap] = base.as_of_us
    # Event rows strictly before each output row: an entity's event times are distinct, so all of its
    # earlier event rows; a snapshot sees all of them.
    hi = np.empty(n_out, dtype=np.int64)
    hi[at_evt] = np.arange(n_evt)
    hi[at_snap] = grp_end[snap]
    lo_all = grp_start[q_grp]
    # Rank bounds of the output rows' own times (for label arrivals strictly before them).
    q_rank = np.empty(n_out, dtype=np.int64)
    q_rank[at_evt] = base.rank[rows[evt_start]]
    q_rank[at_snap] = base.query_rank(base.as_of_us)
    q_id = grp_id[q_grp]
    lo_by_window: dict[str, np.ndarray] = {}

    def lo(window: str | None) -> np.ndarray:
        """First event row inside ``[T - w, T)`` for each output row (the entity's first if unbounded)."""
        if window is None:
            return lo_all
        if window not in lo_by_window:
            w = _us(window)
            rank = np.empty(n_out, dtype=np.int64)
            rank[at_evt] = base.window_rank(w)[rows[evt_start]]
            rank[at_snap] = base.query_rank(base.as_of_us - w)
            # Needles ascend like the keys (per entity, times ascend), so the search stays cache-warm.
            lo_by_window[window] = np.searchsorted(evt_key, base.composite(q_id, rank))
        return lo_by_window[window]

    def total(column: str, window: str | None) -> np.ndarray:
        if column not in sums:
            sums[column] = _cumulative(per_event(column))
        c = sums[column]
        return c[hi] - c[lo(window)]

    # Distinct counts: runs of each (entity, target) pair; run starts and ends counted per event row.
    edges: dict[tuple[str, str], tuple[np.ndarray, np.ndarray]] = {}
    for target in dict.fromkeys(f.target for f in view.features if f.kind == "distinct"):
        assert target is not None
        codes = cols[f"{target}_key"][rows]
        has = np.flatnonzero(codes >= 0)  # still in (entity, time) order
        pair = _combine(grp_of_evt[evt_of_row[has]], codes[has])
        by_pair = np.argsort(pair, kind="stable")  # stable keeps time order within a pair
        picked = has[by_pair]
        occ_pair, occ_t, occ_evt = pair[by_pair], t[picked], evt_of_row[picked]
        first = _run_starts(occ_pair, occ_t)  # one occurrence per (entity, target, time)
        occ_pair, occ_t, occ_evt = occ_pair[first], occ_t[first], occ_evt[first]
        same = occ_pair[1:] == occ_pair[:-1]
        windows = dict.fromkeys(
            f.window for f in view.features if f.kind == "distinct" and f.target == target
        )
        for window in windows:
            assert window is not None
            w = _us(window)
            # A run starts where the pair's previous occurrence had left the window (pt + w < t) and
            # ends after an occurrence whose next one falls outside its window (nt > t + w).
            starts = np.ones(len(occ_t), dtype=bool)
            starts[1:] = ~same | (occ_t[:-1] + w < occ_t[1:])
            ends = np.ones(len(occ_t), dtype=bool)
            ends[:-1] = ~same | (occ_t[1:] > occ_t[:-1] + w)
            edges[target, window] = (
                _cumulative(np.bincount(occ_evt[starts], minlength=n_evt)),
                _cumulative(np.bincount(occ_evt[ends], minlength=n_evt)),
            )

    out: dict[str, np.ndarray] = {}
    first_row = rows[evt_start[grp_start]]
    for k in keys:
        out[k] = cols[k][first_row][q_grp]
    out["t"] = q_t
    first_t = evt_t[grp_start][q_grp]
    only = {"all": "n", "redeemed": "redeemed", "invalid": "invalid"}
    for f in view.features:
        if f.kind == "count":
            out[f.name] = total(only[f.only], f.window)
        elif f.kind == "distinct":
            assert f.window is not None and f.target is not None
            started, ended = edges[f.target, f.window]
            # Runs started before T minus runs whose last occurrence is before T - w.
            out[f.name] = started[hi] - started[lo_all] - (ended[lo(f.window)] - ended[lo_all])
        elif f.kind == "labels":
            arrived = np.searchsorted(lab_key, base.composite(q_id, q_rank))
            out[f.name] = arrived - np.searchsorted(lab_key, base.composite(q_id, 0))
        elif f.kind == "age":
            unit = (3600 if f.name.startswith("hours") else 86_400) * _US
            age = np.full(n_out, np.nan)
            later = first_t < q_t
            # The SQL's CAST(t - first AS DOUBLE) / unit: the same IEEE division, so the same bits.
            age[later] = (q_t[later] - first_t[later]).astype(np.float64) / unit
            out[f.name] = age
        elif f.kind == "share":
            new, seen = total("is_new", f.window), total("n", f.window)
            share = np.full(n_out, np.nan)
            np.divide(new.astype(np.float64), seen.astype(np.float64), out=share, where=seen != 0)
            out[f.name] = share
        else:
            raise ValueError(f"feature {f.name!r}: unknown kind {f.kind!r}")
    return out
