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
from functools import cached_property

import numpy as np

from features.definitions import PROMOTION_KEYS, WINDOWS, Feature, FeatureView

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
    return SnapshotRule(
        every_entity=view.name == "code_stats", redeemed=any(k in view.join_keys for k in PROMOTION_KEYS)
    )


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
        """Cut ``columns`` to the rows before ``as_of_us`` and rank their event and label-arrival times."""
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


def _empty_view(view: FeatureView) -> dict[str, np.ndarray]:
    """The result of a view without rows: every output column empty, in its dtype."""
    empty = {name: np.zeros(0, np.int64) for name in (*view.join_keys, "t")}
    return empty | {
        f.name: np.zeros(0, np.float64 if f.dtype == "float64" else np.int64) for f in view.features
    }


def _entity_rows(keys: tuple[str, ...], base: Base) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The base rows with every join key set, sorted by (entity, time).

    Returns their row indices, their entity's group id (ordered like the tuple of key codes) and their
    (group, time rank) composite, all in that order.
    """
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
    return rows[order], group[order], row_key[order]


@dataclass(frozen=True, eq=False)
class _Events:
    """A view's event rows: one per (entity, time), holding that time's attempts (the SQL's evt).

    Built by :func:`_event_rows` from the view's rows sorted by (entity, time); "entity numbers" are
    dense (0, 1, ... in that order), "group ids" those of :func:`_entity_rows`.
    """

    #: Base row index of each sorted row.
    rows: np.ndarray
    #: Time of each sorted row.
    t: np.ndarray
    #: First sorted row of each event row.
    evt_start: np.ndarray
    #: Event row of each sorted row.
    evt_of_row: np.ndarray
    #: Base row index of each event row's first row.
    evt_row: np.ndarray
    #: (group, time rank) composite of each event row; sorted: what windows search in.
    evt_key: np.ndarray
    #: Time of each event row.
    evt_t: np.ndarray
    #: First event row of each entity.
    grp_start: np.ndarray
    #: One past the last event row of each entity.
    grp_end: np.ndarray
    #: Dense entity number of each event row.
    grp_of_evt: np.ndarray
    #: Group id of each entity, for composites.
    grp_id: np.ndarray

    @property
    def n_evt(self) -> int:
        """The number of event rows."""
        return len(self.evt_start)

    @property
    def n_grp(self) -> int:
        """The number of entities."""
        return len(self.grp_start)


def _event_rows(base: Base, rows: np.ndarray, group: np.ndarray, row_key: np.ndarray) -> _Events:
    """Collapse the (entity, time)-sorted rows of :func:`_entity_rows` into event rows and entities."""
    evt_new = _run_starts(row_key)
    evt_start = np.flatnonzero(evt_new)
    t = base.columns["t"][rows]
    evt_group = group[evt_start]
    grp_new = _run_starts(evt_group)
    grp_start = np.flatnonzero(grp_new)
    return _Events(
        rows=rows,
        t=t,
        evt_start=evt_start,
        evt_of_row=np.cumsum(evt_new) - 1,
        evt_row=rows[evt_start],
        evt_key=row_key[evt_start],
        evt_t=t[evt_start],
        grp_start=grp_start,
        grp_end=np.append(grp_start[1:], len(evt_start)).astype(np.int64),
        grp_of_evt=np.cumsum(grp_new) - 1,
        grp_id=evt_group[grp_start],
    )


class _EventSums:
    """Cumulative sums ``C`` of base columns over the event rows, each computed on first use.

    ``"n"`` is the number of attempts (base rows) of each event row.
    """

    def __init__(self, base: Base, events: _Events) -> None:
        """Prepare the sums of ``base``'s columns over ``events``; only ``"n"`` is computed up front."""
        self._columns = base.columns
        self._events = events
        attempts = np.diff(np.append(events.evt_start, len(events.rows))).astype(np.int64)
        self._sums = {"n": _cumulative(attempts)}

    def __getitem__(self, column: str) -> np.ndarray:
        """The cumulative sum of ``column``'s per-event-row totals (length: event rows + 1)."""
        if column not in self._sums:
            per_event = np.add.reduceat(self._columns[column][self._events.rows], self._events.evt_start)
            self._sums[column] = _cumulative(per_event.astype(np.int64))
        return self._sums[column]


def _label_line(base: Base, events: _Events) -> tuple[np.ndarray, np.ndarray]:
    """Label arrivals of the entities' rows: a second (entity, time) line of their own.

    Returns the entity number of each labeled row and the sorted (group, arrival rank) composites.
    """
    lab_rows = np.flatnonzero(base.labeled[events.rows])
    lab_grp = events.grp_of_evt[events.evt_of_row[lab_rows]]
    lab_key = np.sort(base.composite(events.grp_id[lab_grp], base.arrival_rank[events.rows[lab_rows]]))
    return lab_grp, lab_key


def _snapshot_entities(
    view: FeatureView, base: Base, events: _Events, lab_grp: np.ndarray, sums: _EventSums
) -> np.ndarray:
    """Per entity, whether it gets a snapshot row at ``as_of`` (see :class:`SnapshotRule`)."""
    rule = snapshot_rule(view)
    if rule.every_entity:
        return np.ones(events.n_grp, dtype=bool)
    snap = events.evt_t[events.grp_end - 1] >= base.as_of_us - rule.recent_us
    snap |= np.bincount(lab_grp, minlength=events.n_grp) > 0
    if rule.redeemed:
        redeemed = sums["redeemed"]
        snap |= redeemed[events.grp_end] > redeemed[events.grp_start]
    return snap


class _OutputRows:
    """The output rows in (entity, time) order: each entity's event rows, then its snapshot at as_of.

    Each output row is a query over its entity's event rows strictly before its time ``T``: ``hi`` is
    one past the last of them, :meth:`lo` the first inside a window.
    """

    def __init__(self, base: Base, events: _Events, snap: np.ndarray, sums: _EventSums) -> None:
        """Lay out the output rows of ``events`` plus one snapshot row per entity where ``snap``."""
        self._base = base
        self._events = events
        self._sums = sums
        self._lo_by_window: dict[str, np.ndarray] = {}
        snaps_before = np.cumsum(snap) - snap
        self.n_out = events.n_evt + int(snap.sum())
        self.at_evt = np.arange(events.n_evt) + snaps_before[events.grp_of_evt]
        self.at_snap = (events.grp_end + snaps_before)[snap]
        #: Entity number, time, and group id of each output row.
        self.q_grp = self.place(events.grp_of_evt, np.flatnonzero(snap))
        self.q_t = self.place(events.evt_t, base.as_of_us)
        self.q_id = events.grp_id[self.q_grp]
        # Event rows strictly before each output row: an entity's event times are distinct, so all of its
        # earlier event rows; a snapshot sees all of them.
        self.hi = self.place(np.arange(events.n_evt), events.grp_end[snap])
        self.lo_all = events.grp_start[self.q_grp]
        # Rank bounds of the output rows' own times (for label arrivals strictly before them).
        self.q_rank = self.place(base.rank[events.evt_row], base.query_rank(base.as_of_us))

    def place(self, at_events: np.ndarray | int, at_snapshots: np.ndarray | int) -> np.ndarray:
        """An int64 per output row: ``at_events`` on the event rows, ``at_snapshots`` on the snapshots."""
        out = np.empty(self.n_out, dtype=np.int64)
        out[self.at_evt] = at_events
        out[self.at_snap] = at_snapshots
        return out

    def lo(self, window: str | None) -> np.ndarray:
        """First event row inside ``[T - w, T)`` for each output row (the entity's first if unbounded)."""
        if window is None:
            return self.lo_all
        if window not in self._lo_by_window:
            base = self._base
            w = _us(window)
            rank = self.place(base.window_rank(w)[self._events.evt_row], base.query_rank(base.as_of_us - w))
            needles = base.composite(self.q_id, rank)
            # Needles ascend like the keys (per entity, times ascend), so the search stays cache-warm.
            self._lo_by_window[window] = np.searchsorted(self._events.evt_key, needles)
        return self._lo_by_window[window]

    def total(self, column: str, window: str | None) -> np.ndarray:
        """Per output row, the sum of ``column`` over its entity's event rows in ``[T - w, T)``."""
        c = self._sums[column]
        return c[self.hi] - c[self.lo(window)]

    def labels_before(self, lab_key: np.ndarray) -> np.ndarray:
        """Per output row, how many of its entity's label arrivals (``lab_key``) are strictly before T."""
        arrived = np.searchsorted(lab_key, self._base.composite(self.q_id, self.q_rank))
        return arrived - np.searchsorted(lab_key, self._base.composite(self.q_id, 0))

    @cached_property
    def first_t(self) -> np.ndarray:
        """Per output row, the time of its entity's first event."""
        return self._events.evt_t[self._events.grp_start][self.q_grp]


_Edges = dict[tuple[str, str], tuple[np.ndarray, np.ndarray]]


def _occurrences(codes: np.ndarray, events: _Events) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The occurrences of one target (its key ``codes`` per sorted row), by (entity, target, time).

    One occurrence per (entity, target, time). Returns their times, their event rows, and for each but
    the first whether it has the same (entity, target) pair as the one before it.
    """
    has = np.flatnonzero(codes >= 0)  # still in (entity, time) order
    pair = _combine(events.grp_of_evt[events.evt_of_row[has]], codes[has])
    by_pair = np.argsort(pair, kind="stable")  # stable keeps time order within a pair
    picked = has[by_pair]
    occ_pair, occ_t, occ_evt = pair[by_pair], events.t[picked], events.evt_of_row[picked]
    first = _run_starts(occ_pair, occ_t)  # one occurrence per (entity, target, time)
    occ_pair, occ_t, occ_evt = occ_pair[first], occ_t[first], occ_evt[first]
    return occ_t, occ_evt, occ_pair[1:] == occ_pair[:-1]


def _run_edges(
    occ_t: np.ndarray, occ_evt: np.ndarray, same: np.ndarray, w: int, n_evt: int
) -> tuple[np.ndarray, np.ndarray]:
    """Cumulative counts over the event rows of the runs that start and that end there, for window ``w``."""
    # A run starts where the pair's previous occurrence had left the window (pt + w < t) and
    # ends after an occurrence whose next one falls outside its window (nt > t + w).
    starts = np.ones(len(occ_t), dtype=bool)
    starts[1:] = ~same | (occ_t[:-1] + w < occ_t[1:])
    ends = np.ones(len(occ_t), dtype=bool)
    ends[:-1] = ~same | (occ_t[1:] > occ_t[:-1] + w)
    return (
        _cumulative(np.bincount(occ_evt[starts], minlength=n_evt)),
        _cumulative(np.bincount(occ_evt[ends], minlength=n_evt)),
    )


def _distinct_edges(view: FeatureView, base: Base, events: _Events) -> _Edges:
    """Distinct counts: runs of each (entity, target) pair; run starts and ends counted per event row.

    Returns, per (target, window) of the view's distinct features, the :func:`_run_edges` of the target.
    """
    edges: _Edges = {}
    for target in dict.fromkeys(f.target for f in view.features if f.kind == "distinct"):
        assert target is not None
        occ_t, occ_evt, same = _occurrences(base.columns[f"{target}_key"][events.rows], events)
        windows = dict.fromkeys(
            f.window for f in view.features if f.kind == "distinct" and f.target == target
        )
        for window in windows:
            assert window is not None
            edges[target, window] = _run_edges(occ_t, occ_evt, same, _us(window), events.n_evt)
    return edges


#: The summed column of each kind of count.
_COUNTED = {"all": "n", "redeemed": "redeemed", "invalid": "invalid"}


def _age(out_rows: _OutputRows, name: str) -> np.ndarray:
    """Hours or days since the entity's first event (NaN at that first event), as the SQL computes it."""
    unit = (3600 if name.startswith("hours") else 86_400) * _US
    q_t, first_t = out_rows.q_t, out_rows.first_t
    age = np.full(out_rows.n_out, np.nan)
    later = first_t < q_t
    # The SQL's CAST(t - first AS DOUBLE) / unit: the same IEEE division, so the same bits.
    age[later] = (q_t[later] - first_t[later]).astype(np.float64) / unit
    return age


def _share(new: np.ndarray, seen: np.ndarray) -> np.ndarray:
    """``new / seen`` as float64, NaN where ``seen`` is 0 (the SQL's NULL)."""
    share = np.full(len(seen), np.nan)
    np.divide(new.astype(np.float64), seen.astype(np.float64), out=share, where=seen != 0)
    return share


def _feature_values(f: Feature, out_rows: _OutputRows, edges: _Edges, lab_key: np.ndarray) -> np.ndarray:
    """The values of one feature, one per output row."""
    if f.kind == "count":
        return out_rows.total(_COUNTED[f.only], f.window)
    if f.kind == "distinct":
        assert f.window is not None and f.target is not None
        started, ended = edges[f.target, f.window]
        hi, lo_all = out_rows.hi, out_rows.lo_all
        # Runs started before T minus runs whose last occurrence is before T - w.
        return started[hi] - started[lo_all] - (ended[out_rows.lo(f.window)] - ended[lo_all])
    if f.kind == "labels":
        return out_rows.labels_before(lab_key)
    if f.kind == "age":
        return _age(out_rows, f.name)
    if f.kind == "share":
        return _share(out_rows.total("is_new", f.window), out_rows.total("n", f.window))
    raise ValueError(f"feature {f.name!r}: unknown kind {f.kind!r}")


def view_arrays(view: FeatureView, base: Base) -> dict[str, np.ndarray]:
    """Compute one feature view from the base arrays: the same rows and values as :func:`view_sql`.

    Returns the join key codes, ``t`` and every feature (int64, or float64 with NaN where the SQL
    gives NULL), one entry per output row, sorted by (join key codes, t).
    """
    rows, group, row_key = _entity_rows(view.join_keys, base)
    if len(rows) == 0:
        return _empty_view(view)
    events = _event_rows(base, rows, group, row_key)
    sums = _EventSums(base, events)
    lab_grp, lab_key = _label_line(base, events)
    snap = _snapshot_entities(view, base, events, lab_grp, sums)
    out_rows = _OutputRows(base, events, snap, sums)
    edges = _distinct_edges(view, base, events)

    out: dict[str, np.ndarray] = {}
    first_row = events.evt_row[events.grp_start]
    for k in view.join_keys:
        out[k] = base.columns[k][first_row][out_rows.q_grp]
    out["t"] = out_rows.q_t
    for f in view.features:
        out[f.name] = _feature_values(f, out_rows, edges, lab_key)
    return out
