"""Point-in-time batch features: the keys frame and labels in, one frame per feature view out.

Every output row is the state of one entity just before one of its events, computed from events strictly
earlier than that event and from ``abuse`` labels whose ``label_ts`` is strictly earlier. Events of one
entity sharing a timestamp collapse into one row (Feast needs unique ``(join keys, event_timestamp)``)
holding the state before the first of them, i.e. from events strictly earlier than that timestamp. Each
entity also gets one snapshot row at ``as_of`` so that materialized online values equal the offline ones.

The definition is SQL (:func:`view_sql`), generated once from :mod:`features.definitions`. What runs
where:

* ``engine="spark"`` runs the SQL whole on Spark SQL (the cluster path).
* ``engine="numpy"`` (the default, in process) computes the same rows with numpy in
  :mod:`features.pointintime`: sorts, cumulative sums and binary searches, two views at a time. DuckDB
  evaluates each ``RANGE`` window frame in its own pass (about a second per frame per million rows),
  which made the SQL take two minutes for a million events; numpy takes about a second per view
  and is exact, equal to the SQL bit for bit (tested on random histories built to hit ties, window
  edges, nulls and early or late labels). Computing only the per-(entity, time) rows in DuckDB and the
  windows in numpy was measured too: that SQL alone took 3-4 s per identity view at a million events,
  the whole view in numpy about 1 s, so DuckDB is not on this path.
* ``engine="duckdb"`` runs the SQL on DuckDB: the reference the tests hold the default engine to,
  and a quick way to check a change to the SQL without Spark.

:func:`_dialect` is the one place where the SQL may differ between DuckDB and Spark. Time is handled as
epoch microseconds (BIGINT), so window frames are plain numeric ``RANGE`` frames in both dialects. Key
strings are replaced by integer codes in their sort order (:func:`encode_keys`) before any engine runs.

Windowed distinct counts use runs instead of DISTINCT window aggregates (which Spark lacks and which
are slow): an occurrence of target ``x`` at ``t`` keeps ``x`` in the window of later query times in
``(t, t + w]``. Overlapping intervals of one (entity, x) pair merge into runs; a run starts at an
occurrence whose predecessor had already left the window and ends ``w`` after an occurrence with no
successor inside the window. The distinct count at ``T`` is then (runs started before ``T``) minus
(runs whose last occurrence is before ``T - w``): two ordinary window sums over the entity's event
rows, exact, with one extra sort per (view, target) to find the runs.
"""

from __future__ import annotations

from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
import pandas as pd

from features.definitions import PROMOTION_KEYS, WINDOWS, FeatureView, feature_views
from features.events import ContractError
from features.pointintime import Base, snapshot_rule, view_arrays

if TYPE_CHECKING:  # pragma: no cover - typing only
    from pyspark.sql import SparkSession

Engine = Literal["numpy", "duckdb", "spark"]
#: The engines :func:`build_features` accepts; the first is the default.
ENGINES: tuple[str, ...] = ("numpy", "duckdb", "spark")
#: What an engine returns per view: key codes, ``t`` and features, as a frame or as arrays.
RawView = pd.DataFrame | Mapping[str, np.ndarray]

#: The hashed identity columns the pipeline reads from the keys frame.
KEY_COLUMNS: tuple[str, ...] = (
    "account_key",
    "email_key",
    "phone_key",
    "household_key",
    "address_key",
    "bill_household_key",
    "payment_key",
    "device_key",
    "network_key",
    "ip_key",
    "local_ip_key",
    "referrer_key",
)

REQUIRED_KEY_FRAME_COLUMNS: tuple[str, ...] = (
    "request_id",
    "ts",
    "promo_code",
    "promo_type",
    "promo_valid",
    "outcome",
    "is_guest",
    "account_created_at",
)

REQUIRED_LABEL_COLUMNS: tuple[str, ...] = ("request_id", "label", "label_ts")

#: How long after account creation an attempt still counts as made by a new account.
NEW_ACCOUNT_SECONDS = 7 * 86_400

_US = 1_000_000
_BASE_TABLE = "pg_events"
#: Worker threads, as many as the DuckDB threads the SQL ran with: numpy's sorts, searches and gathers
#: and Arrow's Parquet encoding release the GIL, so two views are computed (or written) at once.
_THREADS = 2


# --------------------------------------------------------------------------------------------- input


def _check_columns(frame: pd.DataFrame, required: tuple[str, ...], name: str) -> None:
    missing = [c for c in required if c not in frame.columns]
    if missing:
        raise ContractError(f"{name} frame is missing column(s): {', '.join(missing)}")


def _epoch_us(values: pd.Series, field: str) -> pd.Series:
    """UTC timestamps as epoch microseconds (nullable Int64); naive or non-UTC input is refused."""
    if not isinstance(values.dtype, pd.DatetimeTZDtype):
        if values.isna().all():
            return pd.Series(pd.array([pd.NA] * len(values), dtype="Int64"), index=values.index)
        raise ContractError(f"{field}: expected timezone-aware UTC timestamps, got dtype {values.dtype}")
    utc = values.dt.tz_convert("UTC").astype("datetime64[us, UTC]")
    as_int = utc.astype("int64")
    return pd.Series(pd.array(as_int, dtype="Int64"), index=values.index).mask(values.isna())


def _key_columns_needed() -> tuple[str, ...]:
    cols: list[str] = []
    for v in feature_views():
        for k in v.join_keys:
            if k not in PROMOTION_KEYS and k not in cols:
                cols.append(k)
        for f in v.features:
            if f.target is not None and f"{f.target}_key" not in cols:
                cols.append(f"{f.target}_key")
    return tuple(cols)


def _event_attributes(keys: pd.DataFrame, labels: pd.DataFrame) -> dict[str, object]:
    """Check the input and compute the base table's non-key columns (``t`` ... ``abuse_t``)."""
    _check_columns(keys, REQUIRED_KEY_FRAME_COLUMNS, "keys")
    _check_columns(labels, REQUIRED_LABEL_COLUMNS, "labels")
    _check_columns(keys, _key_columns_needed(), "keys")
    # Columns are taken as arrays (not index-aligned Series), so the keys frame is never copied whole.
    if keys["request_id"].isna().any():
        raise ContractError("request_id: null values in the keys frame")
    dup = keys["request_id"].duplicated()
    if dup.any():
        raise ContractError(
            f"request_id: duplicated in the keys frame, e.g. {keys['request_id'][dup].iloc[0]!r}"
        )
    for column in PROMOTION_KEYS:
        if keys[column].isna().any():
            raise ContractError(f"{column}: null values in the keys frame")
    t = _epoch_us(keys["ts"], "ts")
    if t.isna().any():
        raise ContractError("ts: null values in the keys frame")
    bad_outcome = ~keys["outcome"].isin(("redeemed", "abandoned", "rejected"))
    if bad_outcome.any():
        raise ContractError(f"outcome: unexpected value {keys['outcome'][bad_outcome].iloc[0]!r}")

    created = _epoch_us(keys["account_created_at"], "account_created_at")
    t_np = t.to_numpy(dtype=np.int64)
    guest = keys["is_guest"].fillna(False).to_numpy(dtype=bool)
    fresh = created.to_numpy(dtype="float64", na_value=np.nan) >= t_np - NEW_ACCOUNT_SECONDS * _US

    if labels["request_id"].duplicated().any():
        raise ContractError("request_id: duplicated in the labels frame")
    abuse = labels.loc[labels["label"] == "abuse", ["request_id", "label_ts"]]
    label_t = _epoch_us(abuse["label_ts"], "label_ts")
    label_by_request = pd.Series(label_t.to_numpy(), index=abuse["request_id"].to_numpy())
    abuse_t = keys["request_id"].map(label_by_request).astype("Int64")
    return {
        "t": t_np,
        "redeemed": (keys["outcome"] == "redeemed").to_numpy(dtype=np.int64),
        "invalid": (~keys["promo_valid"].astype(bool)).to_numpy(dtype=np.int64),
        "is_new": (guest | fresh).astype(np.int64),
        "abuse_t": abuse_t.array,
    }


def base_frame(keys: pd.DataFrame, labels: pd.DataFrame) -> pd.DataFrame:
    """The one table every engine reads: keys, epoch-µs time and 0/1 event attributes.

    Columns: the key columns used by some view, ``promo_code``, ``t`` (event time, µs), ``redeemed``,
    ``invalid``, ``is_new`` (guest, or account created within 7 days before the attempt) and
    ``abuse_t`` (µs when an ``abuse`` label arrived for this event, else null). A null key is None or
    NaN as the input had it (:func:`encode_keys` reads both as null). Raises :class:`ContractError`
    naming the field when the input breaks the contract.
    """
    attributes = _event_attributes(keys, labels)
    return pd.DataFrame(
        {
            **{c: keys[c].to_numpy() for c in _key_columns_needed()},
            **{c: keys[c].astype(str).to_numpy() for c in PROMOTION_KEYS},
            **attributes,
        }
    )


def _code_columns(base: pd.DataFrame) -> list[str]:
    return [c for c in base.columns if c.endswith("_key")] + list(PROMOTION_KEYS)


def encode_keys(base: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, np.ndarray]]:
    """Replace key strings by dense integer codes (null stays null) and return the code books.

    Both engines hash, sort and compare 64-bit integers several times faster than 32-character hex
    strings; the strings come back in :func:`_finish` via the code books. Codes follow the sort order
    of the strings, so sorting rows by codes sorts them exactly as by the strings.
    """
    columns: dict[str, object] = {}
    books: dict[str, np.ndarray] = {}
    coded = _code_columns(base)
    for col in base.columns:
        if col in coded:
            codes, books[col] = _sorted_codes(base[col])
            columns[col] = pd.arrays.IntegerArray(np.maximum(codes, 0), codes < 0)
        else:
            columns[col] = base[col].array
    return pd.DataFrame(columns, index=base.index), books


def _sorted_codes(values: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """int64 codes (``-1`` for null) numbering the distinct values in sorted order, and the values."""
    import pyarrow as pa
    import pyarrow.compute as pc

    strings = None
    # Arrow would turn bytes into str, so only str columns (the contract's hashed keys) take that path.
    if pd.api.types.infer_dtype(values, skipna=True) in ("string", "empty"):
        try:
            strings = pa.array(values.to_numpy(), type=pa.string(), from_pandas=True)
        except (pa.ArrowInvalid, pa.ArrowTypeError, UnicodeError):  # e.g. a lone surrogate
            strings = None
    if strings is None:
        # pandas factorizes any hashable values, and sorts them as Python does.
        codes, uniques = pd.factorize(values, sort=True, use_na_sentinel=True)
        return codes.astype(np.int64), np.asarray(uniques, dtype=object)
    # Arrow hashes its own contiguous buffers, about twice as fast as pandas on Python string objects;
    # UTF-8 byte order is code point order, which is how Python (and so pandas) sorts strings.
    encoded = strings.dictionary_encode()
    order = pc.array_sort_indices(encoded.dictionary).to_numpy()
    rank = np.empty(len(order), dtype=np.int64)
    rank[order] = np.arange(len(order), dtype=np.int64)
    indices = encoded.indices.fill_null(-1).to_numpy().astype(np.int64)
    codes = np.full(len(indices), -1, dtype=np.int64)
    known = indices >= 0
    codes[known] = rank[indices[known]]
    books = encoded.dictionary.take(pa.array(order)).to_numpy(zero_copy_only=False)
    return codes, np.asarray(books, dtype=object)


def base_arrays(encoded: pd.DataFrame) -> dict[str, np.ndarray]:
    """The encoded base table as numpy arrays for :class:`features.pointintime.Base`.

    Key codes become int64 with ``-1`` for null; ``abuse_t`` becomes int64 (0 where null) beside a
    boolean ``labeled`` that says where it is meaningful.
    """
    arrays = {c: encoded[c].to_numpy(dtype=np.int64, na_value=-1) for c in _code_columns(encoded)}
    for c in ("t", "redeemed", "invalid", "is_new"):
        arrays[c] = encoded[c].to_numpy(dtype=np.int64)
    arrays["labeled"] = encoded["abuse_t"].notna().to_numpy(dtype=bool)
    arrays["abuse_t"] = encoded["abuse_t"].to_numpy(dtype=np.int64, na_value=0)
    return arrays


# ----------------------------------------------------------------------------------------------- SQL


def _dialect(sql: str, engine: Engine) -> str:
    """Adapt generated SQL to an engine; the generated text is already valid in both dialects."""
    # Both engines accept the same window syntax, LEAST/GREATEST, CAST and BIGINT literals; keep this
    # function as the single seam should one of them diverge.
    return sql


def _us(window: str) -> int:
    return WINDOWS[window] * _US


def _snapshot_filter(view: FeatureView, as_of_us: int) -> str:
    """Which entities get a snapshot row at ``as_of``: :class:`features.pointintime.SnapshotRule` as SQL."""
    rule = snapshot_rule(view)
    if rule.every_entity:
        return "TRUE"
    recent = f"t >= {as_of_us - rule.recent_us}"
    labeled = f"(abuse_t IS NOT NULL AND GREATEST(t, abuse_t) < {as_of_us})"
    keep = [recent, labeled]
    if rule.redeemed:
        keep.append("redeemed = 1")
    return " OR ".join(keep)


def view_sql(view: FeatureView, as_of_us: int, source: str = _BASE_TABLE) -> str:
    """The SQL computing one feature view from the base table, snapshot rows at ``as_of_us`` included.

    One row per (entity, event time) carries that time's attempts and run edges; label arrivals and
    the snapshot add rows of their own. Every feature is then a window over the entity's rows in time
    order, ending 1 µs before the row (``RANGE ... 1 PRECEDING``), so nothing at or after an event's own
    timestamp is ever visible to it.
    """
    keys = list(view.join_keys)
    k = ", ".join(keys)
    not_null = " AND ".join(f"{c} IS NOT NULL" for c in keys)
    distinct = [f for f in view.features if f.kind == "distinct"]
    ctes = [
        f"base AS (SELECT * FROM {source} WHERE {not_null} AND t < {as_of_us})",
        f"evt AS (SELECT {k}, t, COUNT(*) AS n, SUM(redeemed) AS r, SUM(invalid) AS inv, "
        f"SUM(is_new) AS nw FROM base GROUP BY {k}, t)",
    ]
    joined = "evt"
    edge_cols: list[str] = []
    # One occ/run/edge chain per target (a sort each), with run edges for each of the target's windows.
    targets = list(dict.fromkeys(f.target for f in distinct if f.target is not None))
    edge_of: dict[tuple[str, str], str] = {}
    for j, target in enumerate(targets):
        tgt = f"{target}_key"
        part = f"PARTITION BY {k}, tgt ORDER BY t"
        ctes.append(
            f"occ{j} AS (SELECT {k}, {tgt} AS tgt, t FROM base WHERE {tgt} IS NOT NULL "
            f"GROUP BY {k}, {tgt}, t)"
        )
        ctes.append(
            f"run{j} AS (SELECT {k}, t, LAG(t) OVER ({part}) AS pt, LEAD(t) OVER ({part}) AS nt FROM occ{j})"
        )
        # A run of one (entity, target) pair starts where the previous occurrence had left the window
        # and ends w after its last occurrence; both edges sit on event times of the entity.
        sums = []
        for window in dict.fromkeys(f.window for f in distinct if f.target == target):
            assert window is not None
            w = _us(window)
            edge_of[target, window] = f"{j}_{window}"
            sums.append(f"SUM(CASE WHEN pt IS NULL OR pt + {w} < t THEN 1 ELSE 0 END) AS s{j}_{window}")
            sums.append(f"SUM(CASE WHEN nt IS NULL OR nt > t + {w} THEN 1 ELSE 0 END) AS e{j}_{window}")
            edge_cols += [f"s{j}_{window}", f"e{j}_{window}"]
        ctes.append(f"edge{j} AS (SELECT {k}, t, {', '.join(sums)} FROM run{j} GROUP BY {k}, t)")
        joined += f" LEFT JOIN edge{j} USING ({k}, t)"

    def row(t: str, values: Mapping[str, str]) -> str:
        cols = ["n", "r", "inv", "nw", "lab", "out", *edge_cols]
        return ", ".join([k, f"{t} AS t"] + [f"{values.get(c, '0')} AS {c}" for c in cols])

    on_events = {c: c for c in ("n", "r", "inv", "nw")} | {c: f"COALESCE({c}, 0)" for c in edge_cols}
    ctes.append(
        "u AS ("
        f"SELECT {row('t', {**on_events, 'out': '1'})} FROM {joined}"
        f"\nUNION ALL SELECT {row('GREATEST(t, abuse_t)', {'lab': '1'})} FROM base "
        f"WHERE abuse_t IS NOT NULL AND GREATEST(t, abuse_t) < {as_of_us}"
        f"\nUNION ALL SELECT {row(str(as_of_us), {'out': '1'})} FROM "
        f"(SELECT DISTINCT {k} FROM base WHERE {_snapshot_filter(view, as_of_us)}) AS ents)"
    )

    over = f"PARTITION BY {k} ORDER BY t"

    def frame(start: str, end_us: int = 1) -> str:
        return f"OVER ({over} RANGE BETWEEN {start} PRECEDING AND {end_us} PRECEDING)"

    def total(col: str, start: str = "UNBOUNDED", end_us: int = 1) -> str:
        return f"COALESCE(SUM({col}) {frame(start, end_us)}, 0)"

    first = f"MIN(CASE WHEN n > 0 THEN t END) OVER (PARTITION BY {k})"
    source_of = {"all": "n", "redeemed": "r", "invalid": "inv"}
    exprs: list[str] = []
    for f in view.features:
        if f.kind == "count":
            start = str(_us(f.window)) if f.window else "UNBOUNDED"
            exprs.append(f"CAST({total(source_of[f.only], start)} AS BIGINT) AS {f.name}")
        elif f.kind == "distinct":
            assert f.window is not None and f.target is not None
            edge = edge_of[f.target, f.window]
            ended = total(f"e{edge}", "UNBOUNDED", _us(f.window) + 1)
            exprs.append(f"CAST({total(f's{edge}')} - {ended} AS BIGINT) AS {f.name}")
        elif f.kind == "labels":
            exprs.append(f"CAST({total('lab')} AS BIGINT) AS {f.name}")
        elif f.kind == "age":
            unit = (3600 if f.name.startswith("hours") else 86_400) * _US
            exprs.append(f"CASE WHEN {first} < t THEN CAST(t - {first} AS DOUBLE) / {unit} END AS {f.name}")
        elif f.kind == "share":
            assert f.window is not None
            span = str(_us(f.window))
            exprs.append(
                f"CAST({total('nw', span)} AS DOUBLE) / CAST(NULLIF({total('n', span)}, 0) AS DOUBLE) "
                f"AS {f.name}"
            )
        else:
            raise ValueError(f"feature {f.name!r}: unknown kind {f.kind!r}")
    ctes.append(f"w AS (SELECT {k}, t, out, " + ", ".join(exprs) + " FROM u)")
    cols = ", ".join([*keys, "t", *view.feature_names])
    return "WITH " + ",\n".join(ctes) + f"\nSELECT {cols} FROM w WHERE out = 1"


# ------------------------------------------------------------------------------------------- engines


#: The Spark master when none is configured (``PROMOGUARD_SPARK_MASTER``): two local cores.
DEFAULT_SPARK_MASTER = "local[2]"
#: The driver's heap when none is configured (``PROMOGUARD_SPARK_DRIVER_MEMORY``). In local mode the
#: driver is the executor too, so this heap holds every shuffle and join of the batch side.
DEFAULT_SPARK_DRIVER_MEMORY = "2g"


def spark_conf(
    master: str = DEFAULT_SPARK_MASTER, driver_memory: str = DEFAULT_SPARK_DRIVER_MEMORY
) -> dict[str, str]:
    """The batch side's Spark settings: the pipeline's session and Feast's Spark offline store share them.

    4 shuffle partitions suit two local cores (Spark's 200 would be 200 near-empty tasks per stage); the
    UI is off (no port to bind in tests and CI); UTC so that timestamps never shift with the machine's
    zone. On a cluster, ``spark.sql.shuffle.partitions`` and the executor sizes belong to the cluster's
    own defaults (``spark-defaults.conf``), which these settings do not override except for the above.
    ``driver_memory`` only takes effect when the process starts its JVM (the first session).
    """
    return {
        "spark.master": master,
        "spark.app.name": "promoguard-features",
        "spark.sql.shuffle.partitions": "4",
        "spark.ui.enabled": "false",
        # Stage progress bars would garble the command line's own status lines.
        "spark.ui.showConsoleProgress": "false",
        "spark.driver.memory": driver_memory,
        "spark.sql.execution.arrow.pyspark.enabled": "true",
        "spark.sql.session.timeZone": "UTC",
    }


def spark_session(
    master: str = DEFAULT_SPARK_MASTER, driver_memory: str = DEFAULT_SPARK_DRIVER_MEMORY
) -> SparkSession:
    """The process's Spark session with :func:`spark_conf` (``local[2]``, 4 shuffle partitions, no UI)."""
    from pyspark import SparkConf
    from pyspark.sql import SparkSession

    conf = SparkConf().setAll(list(spark_conf(master, driver_memory).items()))
    return SparkSession.builder.config(conf=conf).getOrCreate()


def _run_numpy(base: pd.DataFrame, views: tuple[FeatureView, ...], as_of_us: int) -> dict[str, RawView]:
    # The time ranks are shared by every view: computed once here.
    prepared = Base(base_arrays(base), as_of_us)
    with ThreadPoolExecutor(max_workers=_THREADS) as pool:
        computed = pool.map(lambda v: view_arrays(v, prepared), views)
        return {v.name: arrays for v, arrays in zip(views, computed, strict=True)}


def _run_duckdb(base: pd.DataFrame, queries: Mapping[str, str]) -> dict[str, RawView]:
    import duckdb

    con = duckdb.connect()
    try:
        # The progress bar is off by default; setting it at all fails inside a Jupyter kernel.
        con.execute("SET threads=2")
        con.execute("SET preserve_insertion_order=false")
        con.register("pg_base_df", base)
        # Materialise once so every view scans a native table instead of the pandas frame.
        con.execute(f"CREATE TABLE {_BASE_TABLE} AS SELECT * FROM pg_base_df")
        return {name: con.execute(_dialect(sql, "duckdb")).fetch_df() for name, sql in queries.items()}
    finally:
        con.close()


def _run_spark(
    base: pd.DataFrame,
    queries: Mapping[str, str],
    master: str = DEFAULT_SPARK_MASTER,
    driver_memory: str = DEFAULT_SPARK_DRIVER_MEMORY,
) -> dict[str, RawView]:
    import tempfile

    spark = spark_session(master, driver_memory)
    with tempfile.TemporaryDirectory(prefix="promoguard-spark-") as tmp:
        # Staging through parquet keeps the input out of the query plans (an in-driver local relation
        # is re-serialised for every scan of every view) and preserves nullable BIGINTs exactly.
        path = str(Path(tmp) / "base.parquet")
        base.to_parquet(path, index=False)
        spark.read.parquet(path).createOrReplaceTempView(_BASE_TABLE)
        try:
            return {name: spark.sql(_dialect(sql, "spark")).toPandas() for name, sql in queries.items()}
        finally:
            spark.catalog.dropTempView(_BASE_TABLE)


# ---------------------------------------------------------------------------------------------- API


def _ints(raw: RawView, name: str) -> np.ndarray:
    """A never-null integer column (key codes, ``t``) as int64."""
    values = raw[name]
    return (
        values.to_numpy(dtype=np.int64)
        if isinstance(values, pd.Series)
        else values.astype(np.int64, copy=False)
    )


def _values(raw: RawView, name: str) -> np.ndarray:
    """A feature column: as computed by numpy, or from SQL as float64 with NaN for NULL."""
    values = raw[name]
    if isinstance(values, pd.Series):
        # SQL results are nullable integers or floats with NULL; NaN stands for NULL from here on.
        return pd.to_numeric(values).to_numpy(dtype="float64", na_value=np.nan)
    return values


def _finish(
    view: FeatureView, raw: RawView, books: Mapping[str, np.ndarray], as_of: pd.Timestamp, *, ordered: bool
) -> pd.DataFrame:
    """The output frame of one view from an engine's raw columns (key codes, ``t``, features).

    Rows come out sorted by join keys then time. Codes follow the strings' sort order (see
    :func:`encode_keys`), so sorting by codes is sorting by strings, at integer speed; ``ordered`` says
    the engine already returned them in that order (the numpy engine does).
    """
    key_codes = [_ints(raw, k) for k in view.join_keys]
    t = _ints(raw, "t")
    order = None if ordered else np.lexsort((t, *reversed(key_codes)))

    def sort(values: np.ndarray) -> np.ndarray:
        return values if order is None else values[order]

    def utc(us: np.ndarray) -> pd.Series:
        return pd.Series(us.view("datetime64[us]")).dt.tz_localize("UTC")

    columns: dict[str, object] = {
        k: books[k][sort(c)] for k, c in zip(view.join_keys, key_codes, strict=True)
    }
    columns["event_timestamp"] = utc(sort(t))
    # The build's cutoff is when every value in it became known; deterministic, unlike wall time.
    columns["created_timestamp"] = utc(np.full(len(t), as_of.value // 1000, dtype=np.int64))
    for f in view.features:
        values = sort(_values(raw, f.name))
        if f.dtype == "float64":
            columns[f.name] = values.astype(np.float64, copy=False)
        elif values.dtype.kind == "f":
            # Every count is an exact integer far below 2**53; a NULL count (none is expected) reads 0.
            columns[f.name] = np.nan_to_num(values, nan=0.0).astype(np.int64)
        else:
            columns[f.name] = values.astype(np.int64, copy=False)
    # No copy: a million-row view is some 150 MB, and fresh memory costs page faults as well as time.
    return pd.DataFrame(columns, copy=False)


def default_as_of(keys: pd.DataFrame) -> pd.Timestamp:
    """The snapshot time when none is given: one second after the last event."""
    if keys.empty:
        raise ContractError("ts: the keys frame has no events, so there is no default as_of")
    last = pd.Timestamp(keys["ts"].max())
    if last.tzinfo is None:
        raise ContractError("ts: expected timezone-aware UTC timestamps")
    return last.tz_convert("UTC") + pd.Timedelta(seconds=1)


def build_features(
    keys: pd.DataFrame,
    labels: pd.DataFrame,
    *,
    as_of: pd.Timestamp | None = None,
    engine: Engine = "numpy",
    spark_master: str = DEFAULT_SPARK_MASTER,
    spark_driver_memory: str = DEFAULT_SPARK_DRIVER_MEMORY,
) -> dict[str, pd.DataFrame]:
    """Point-in-time features for every view in :func:`features.definitions.feature_views`.

    ``keys`` is the identity layer's keys frame, ``labels`` the label frame (request_id, label,
    label_ts); ``spark_master`` is where ``engine="spark"`` runs, with ``spark_driver_memory``. Returns
    ``{view name: frame}`` with the view's join keys, ``event_timestamp``, ``created_timestamp``
    (= ``as_of``) and the view's features in the catalog dtypes: one row per (entity, distinct event
    timestamp) plus one snapshot row per entity at ``as_of``. Events at or after ``as_of`` are outside
    the build and produce no rows.
    """
    if engine not in ENGINES:
        raise ValueError(f"engine: expected one of {', '.join(ENGINES)}, got {engine!r}")
    as_of = default_as_of(keys) if as_of is None else pd.Timestamp(as_of)
    if as_of.tzinfo is None:
        raise ContractError("as_of: expected a timezone-aware UTC timestamp")
    as_of = as_of.tz_convert("UTC").floor("us")
    base, books = encode_keys(base_frame(keys, labels))
    as_of_us = int(as_of.value // 1000)
    views = feature_views()
    if engine == "numpy":
        raw = _run_numpy(base, views, as_of_us)
    elif engine == "duckdb":
        raw = _run_duckdb(base, {v.name: view_sql(v, as_of_us) for v in views})
    else:
        queries = {v.name: view_sql(v, as_of_us) for v in views}
        raw = _run_spark(base, queries, spark_master, spark_driver_memory)
    return {v.name: _finish(v, raw[v.name], books, as_of, ordered=engine == "numpy") for v in views}


def pre_event_features(keys: pd.DataFrame, frames: Mapping[str, pd.DataFrame]) -> pd.DataFrame:
    """Each attempt's own pre-event state per feature view: ``{view}__{feature}`` columns, keys' order.

    ``frames`` is :func:`build_features` over a history that contains these attempts. Every view row
    is stamped at the event's own time and holds the state strictly before it, so an exact match on
    (join keys, ``event_timestamp``) is the point-in-time lookup; attempts sharing an entity and a
    timestamp share one row. An attempt whose join key is null gets NaN for that view, as from Feast.
    The result has a fresh 0..n-1 index.
    """
    keys = keys.reset_index(drop=True)
    # The build stores microseconds (Feast's DuckDB store cannot read nanoseconds): match at that precision.
    event_ts = pd.to_datetime(keys["ts"], utc=True).dt.floor("us").astype("datetime64[us, UTC]")
    pieces: list[pd.DataFrame] = []
    for view in feature_views():
        if view.name not in frames:
            raise ValueError(f"frames: no frame for feature view {view.name!r}")
        absent = [k for k in view.join_keys if k not in keys.columns]
        if absent:
            raise ValueError(f"keys: missing join key column(s) {', '.join(absent)} for {view.name}")
        names = [f.name for f in view.features]
        rows = frames[view.name][[*view.join_keys, "event_timestamp", *names]].copy()
        rows["event_timestamp"] = pd.to_datetime(rows["event_timestamp"], utc=True).astype(
            "datetime64[us, UTC]"
        )
        rows = rows.drop_duplicates([*view.join_keys, "event_timestamp"], keep="last")
        left = keys[list(view.join_keys)].astype(object).where(keys[list(view.join_keys)].notna(), None)
        left["event_timestamp"] = event_ts
        left["_row"] = np.arange(len(keys))
        left = left.dropna(subset=list(view.join_keys))
        for key in view.join_keys:
            left[key] = left[key].astype(str)
            rows[key] = rows[key].astype(str)
        joined = left.merge(rows, on=[*view.join_keys, "event_timestamp"], how="left")
        columns = [f"{view.name}__{n}" for n in names]
        piece = pd.DataFrame(np.nan, index=np.arange(len(keys)), columns=columns)
        piece.loc[joined["_row"].to_numpy(), columns] = joined[names].to_numpy(dtype=np.float64)
        pieces.append(piece)
    return pd.concat(pieces, axis=1)


def write_features(frames: Mapping[str, pd.DataFrame], out_dir: Path) -> dict[str, Path]:
    """Write ``{view}.parquet`` per frame into ``out_dir`` (timestamps as UTC microseconds)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {name: out_dir / f"{name}.parquet" for name in frames}

    def write(name: str) -> None:
        frames[name].to_parquet(
            paths[name], index=False, coerce_timestamps="us", allow_truncated_timestamps=False
        )

    # Arrow encodes and compresses without the GIL: two files at once take about half the time.
    with ThreadPoolExecutor(max_workers=_THREADS) as pool:
        list(pool.map(write, frames))
    return paths


def row_counts(frames: Mapping[str, pd.DataFrame]) -> dict[str, int]:
    """Rows per view: the summary the command line prints after a build."""
    return {name: len(frame) for name, frame in frames.items()}


__all__ = [
    "KEY_COLUMNS",
    "base_arrays",
    "base_frame",
    "build_features",
    "default_as_of",
    "encode_keys",
    "pre_event_features",
    "row_counts",
    "spark_conf",
    "spark_session",
    "view_sql",
    "write_features",
]
