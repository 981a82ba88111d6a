"""The ``spark`` offline-store profile: Feast's own Spark offline store over the pipeline's parquet files.

With ``PROMOGUARD_OFFLINE_STORE=spark`` the Feast repo config names Feast's Spark offline store
(``feast.infra.offline_stores.contrib.spark_offline_store``) and every view's batch source is a
``SparkSource`` over the same ``{features_dir}/{view}.parquet`` the pipeline writes (see
:mod:`features.sources`). Point-in-time retrieval is Feast's own Spark SQL template; this module only
prepares its input and brings its output back with bounded memory:

* **Per view.** One Feast retrieval per feature view (:data:`VIEW_THREADS` at a time), each sent only
  that view's join keys, ``event_timestamp`` and a row number (the caller's other columns stay on the
  driver and are re-attached by row number), so a wide attempt frame is never serialised into the JVM.
* **Sliced by time.** Feast's template joins a view's rows to the entity rows on the join keys and
  only then keeps the rows within the view's TTL (one second here: the build writes a row at each
  event's own time), so a key with ``k`` attempts costs ``k²`` candidate pairs: a popular promotion
  code dominates (1.8 billion pairs for ``code_stats`` at 300k attempts). More exactly, a key costs its
  entity rows times its source rows: the same ``k²`` for the whole history, ``k²/10`` for a 10% sample
  (``train --max-rows``). Feast also bounds the view's rows to the entity rows' time range, so one
  retrieval per time slice costs about ``1/s`` of that per key over ``s`` slices. :func:`time_slices`
  picks ``s`` per view from the entity rows' key counts and the source's
  (:func:`source_key_counts`), keeping each retrieval under :data:`PAIR_BUDGET` pairs when the keys
  spread over time.
* **Out.** Each Spark retrieval job is written to parquet (``to_spark_df().select(...).write.parquet``)
  under the staging folder, keeping only the row number and the view's features, and read back file by
  file in row batches of :data:`READ_BATCH_ROWS`, each scattered into preallocated float64 columns.
  The driver therefore holds the result once plus one batch, never Spark's collected Arrow batches next
  to a pandas copy (what ``RetrievalJob.to_df()`` would do through ``toPandas``). Every requested row
  comes back: a sample, if any, is drawn before (``train --max-rows``).

Features come back as float64 with NaN for missing (an integer count with no row is NaN, as the training
frame and the backtest read it). The Spark session is the batch side's (:func:`features.pipeline.spark_conf`
with the configured master); Feast reuses the active session rather than starting its own.
"""

from __future__ import annotations

import math
import shutil
import threading
import uuid
import warnings
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from features.definitions import FEATURE_SERVICE, FeatureView, feature_views
from features.pipeline import DEFAULT_SPARK_DRIVER_MEMORY, spark_conf, spark_session
from features.sources import CREATED_FIELD, TIMESTAMP_FIELD, source_path

if TYPE_CHECKING:  # pragma: no cover - typing only
    from feast import FeatureStore
    from pyspark.sql import SparkSession

#: The row number column sent with the entity rows; no catalog column starts with an underscore.
ROW_COLUMN = "_promoguard_row"
#: Rows per batch when the retrieval's parquet output is read back (a batch of 155 features is ~80 MB).
READ_BATCH_ROWS = 65_536
#: Views retrieved at once. Each view is one Feast retrieval of a few shuffle stages whose cost at
#: small and medium sizes is mostly planning and scheduling; overlapping three hid about 40 % of it on
#: two cores. Views rather than one service-wide call: Feast's single query for 17 views is one plan of
#: ~240 exchanges and 51 broadcasts, which took as long and ran a 2 GB driver out of broadcast memory.
VIEW_THREADS = 3
#: Candidate (entity row, view row) pairs one retrieval is sized for; more, and the rows are sliced by
#: time (:func:`time_slices`). Each slice adds a retrieval's fixed cost (a few seconds of planning and
#: scheduling in local mode), so the budget trades that overhead against the join's quadratic work.
PAIR_BUDGET = 100_000_000
#: Feast warns on every call, and on every SparkSource it reads back, that its Spark store is
#: experimental; the profile's documentation says so once instead.
_EXPERIMENTAL = "The spark (offline store|data source API) is an experimental feature"


#: The Spark SQL type each catalog dtype must read as (what Feast's Int64 and Float64 fields map to).
SPARK_TYPES: dict[str, str] = {"int64": "bigint", "float64": "double"}


class SparkSourceError(ValueError):
    """A parquet source that Spark reads with the wrong type, or cannot read; the message names both."""


def offline_store_config(master: str, driver_memory: str = DEFAULT_SPARK_DRIVER_MEMORY) -> dict[str, Any]:
    """The ``offline_store`` block of the Feast repo config for Spark on ``master``."""
    return {"type": "spark", "spark_conf": spark_conf(master, driver_memory)}


def session(master: str, driver_memory: str = DEFAULT_SPARK_DRIVER_MEMORY) -> SparkSession:
    """The batch side's Spark session, started before Feast so that Feast reuses it (same settings)."""
    spark = spark_session(master, driver_memory)
    # Feast's template joins each view's rows to the entity rows. With broadcast joins allowed, Spark
    # broadcast the entity side of three views at once and the 2 GB local driver ran out of memory at
    # 300k attempts ("Not enough memory to build and broadcast the table"); shuffle joins spill instead.
    spark.conf.set("spark.sql.autoBroadcastJoinThreshold", "-1")
    return spark


def check_spark_sources(
    features_dir: Path, master: str, driver_memory: str = DEFAULT_SPARK_DRIVER_MEMORY
) -> None:
    """Fail before ``feast apply`` when Spark would read a view's parquet file with other types.

    Every join key must read as ``string``, both timestamps as ``timestamp`` (UTC instants: the
    pipeline writes ``timestamp[us, tz=UTC]``), integer features as ``bigint`` and float features as
    ``double``. The error names the file and the column. Only the schemas are read.
    """
    spark = session(master, driver_memory)
    for v in feature_views():
        path = source_path(features_dir, v.name)
        try:
            fields = {f.name: f.dataType.simpleString() for f in spark.read.parquet(str(path)).schema.fields}
        except Exception as exc:  # Spark's analysis errors carry the JVM trace: keep the first line
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise SparkSourceError(f"{path.name}: Spark cannot read it: {first}") from exc
        expected = {k: "string" for k in v.join_keys}
        expected |= {TIMESTAMP_FIELD: "timestamp", CREATED_FIELD: "timestamp"}
        expected |= {f.name: SPARK_TYPES[f.dtype] for f in v.features}
        for column, kind in expected.items():
            if column not in fields:
                raise SparkSourceError(f"{path.name}: missing column {column!r}")
            if fields[column] != kind:
                raise SparkSourceError(
                    f"{path.name}: column {column!r} reads as {fields[column]} on Spark; expected {kind}"
                )


def check_registered_sources(store: FeatureStore) -> None:
    """Fail with the fix when the registry still holds file sources (applied under the file profile)."""
    from feast.infra.offline_stores.contrib.spark_offline_store.spark_source import SparkSource

    service = store.get_feature_service(FEATURE_SERVICE)
    for projection in service.feature_view_projections:
        view = store.get_feature_view(projection.name)
        if not isinstance(view.batch_source, SparkSource):
            raise SparkSourceError(
                f"feature view {view.name!r} is registered with a {type(view.batch_source).__name__}: run "
                "`promoguard features apply` with PROMOGUARD_OFFLINE_STORE=spark before reading through Spark"
            )


def historical_features(
    store: FeatureStore,
    entity_df: pd.DataFrame,
    *,
    names: Sequence[str],
    staging_dir: Path,
    features_dir: Path | None = None,
) -> pd.DataFrame:
    """Point-in-time features of the service through Feast's Spark offline store, in ``entity_df``'s order.

    ``entity_df`` is prepared by :func:`features.store.historical_features` (UTC ``event_timestamp``,
    string-or-None keys); ``names`` are the service's qualified features. Returns ``entity_df``'s columns
    followed by ``names`` as float64. Each view's retrieval output lives under ``staging_dir`` only while
    it is read back. ``features_dir`` holds the views' parquet sources, whose key counts size the time
    slices (without it the entity rows stand in for the source's, as when every attempt is asked for).
    """
    n = len(entity_df)
    values = np.full((len(names), n), np.nan, dtype=np.float64)
    column_of = {name: j for j, name in enumerate(names)}
    out_dir = Path(staging_dir) / f"retrieval-{uuid.uuid4().hex}"
    statements = threading.Lock()
    times = entity_df[TIMESTAMP_FIELD].to_numpy()

    def one_view(view: FeatureView) -> None:
        wanted = [f"{view.name}__{f}" for f in view.feature_names]
        refs = [f"{view.name}:{f}" for f in view.feature_names]
        keys = {k: entity_df[k].astype(pd.StringDtype()) for k in view.join_keys}
        source = None
        if features_dir is not None:
            source = source_key_counts(source_path(features_dir, view.name), view.join_keys)
        for i, rows in enumerate(time_slices(pd.DataFrame(keys), times, PAIR_BUDGET, source)):
            upload = pd.DataFrame({k: column.iloc[rows].reset_index(drop=True) for k, column in keys.items()})
            upload[TIMESTAMP_FIELD] = times[rows]
            upload[ROW_COLUMN] = rows.astype(np.int64)
            with statements:
                # Feast's statements replace a temporary view with a fixed name (entity_dataframe): one
                # thread at a time up to the returned DataFrame, whose plan is bound by then.
                job = store.get_historical_features(entity_df=upload, features=refs, full_feature_names=True)
                frame: Any = job.to_spark_df()  # type: ignore[attr-defined]
            frame.select(ROW_COLUMN, *wanted).write.parquet(str(out_dir / view.name / f"slice-{i:05d}"))
        _read_back(out_dir / view.name, wanted, [column_of[w] for w in wanted], values)

    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=_EXPERIMENTAL, category=RuntimeWarning)
            with ThreadPoolExecutor(max_workers=VIEW_THREADS) as pool:
                list(pool.map(one_view, feature_views()))
    finally:
        shutil.rmtree(out_dir, ignore_errors=True)
    features = pd.DataFrame(values.T, columns=list(names), copy=False)
    return pd.concat([entity_df.reset_index(drop=True), features], axis=1)


def source_key_counts(path: Path, join_keys: Sequence[str]) -> pd.Series:
    """Rows per join-key value of a view's parquet source (null keys left out): only the key columns are
    read."""
    import pyarrow.parquet as pq

    table = pq.read_table(path, columns=list(join_keys))
    frame = pd.DataFrame({k: table.column(k).to_pandas().astype(pd.StringDtype()) for k in join_keys})
    return frame.groupby(list(join_keys), dropna=True, sort=False).size()


def time_slices(
    keys: pd.DataFrame, times: np.ndarray, budget: int, source: pd.Series | None = None
) -> list[np.ndarray]:
    """Row numbers of ``keys`` in consecutive event-time slices, each retrieved on its own.

    The number of slices is the candidate pairs of one retrieval over ``budget``, rounded up: the sum
    over join-key values of their entity rows times their ``source`` rows (rows per key value, as
    :func:`source_key_counts` gives them; without it, the entity rows again: their count squared). Rows
    with a null key join nothing. The rows are cut by event time into slices of equal size. Slicing
    keeps each retrieval's rows exact: Feast selects the view's rows for a slice's own time range and
    TTL.
    """
    if budget < 1:
        raise ValueError(f"budget must be >= 1, got {budget}")
    counts = keys.groupby(list(keys.columns), dropna=True, sort=False).size()
    partners = counts if source is None else source.reindex(counts.index, fill_value=0)
    pairs = float((counts.to_numpy(dtype=np.float64) * partners.to_numpy(dtype=np.float64)).sum())
    slices = max(1, math.ceil(pairs / budget))
    order = np.argsort(times, kind="stable")
    return [part for part in np.array_split(order, min(slices, max(1, len(order)))) if len(part)]


def _read_back(path: Path, wanted: Sequence[str], columns: Sequence[int], values: np.ndarray) -> None:
    """Scatter one view's retrieval output into rows ``columns`` of ``values``, one row batch at a time."""
    import pyarrow.parquet as pq

    seen = np.zeros(values.shape[1], dtype=np.int64)
    for part in sorted(path.rglob("*.parquet")):
        reader = pq.ParquetFile(part)
        for batch in reader.iter_batches(batch_size=READ_BATCH_ROWS, columns=[ROW_COLUMN, *wanted]):
            rows = batch.column(0).to_numpy()
            np.add.at(seen, rows, 1)
            for i, j in enumerate(columns):
                # Nulls become NaN: pyarrow turns a nullable integer column into float64 here.
                values[j, rows] = batch.column(i + 1).to_numpy(zero_copy_only=False)
    if not (seen == 1).all():
        missing, doubled = int((seen == 0).sum()), int((seen > 1).sum())
        raise RuntimeError(
            f"{path.name}: the Spark retrieval returned {missing} entity row(s) not at all and {doubled} "
            "more than once"
        )
