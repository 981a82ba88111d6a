"""The only module that talks to Feast: apply the repository, materialize, read offline and online.

Feast is configured in code from :class:`StoreConfig` (absolute paths, never ``feature_store.yaml``)
so a command run from any folder sees one registry and one online store. The Feast definitions in
``features/feature_repo`` read the parquet folder from ``PROMOGUARD_FEATURES_DIR``, which this module
sets while it parses them.

Serving reads go through :class:`OnlineFeatures`, built once per process. Its fast path skips Feast's
per-call request planning (resolving the service, building a protobuf response, converting it to a
dict) and reads every view of the service at once: one pipelined round trip through Feast's Redis
store class, or, on SQLite, one statement over the online tables on a per-thread read-only
connection (Feast's own SQLite reader issues one query per view and converts every row's timestamp,
which serving never reads; that was 1.6 ms of a request). Every failure of Feast or of the online
store surfaces as :class:`FeatureStoreUnavailable` so that the caller can fall back to rules.

The SQLite online store is :mod:`features.online_store` (one packed row per entity and view, written
from Arrow in one transaction per view), which Feast loads as a plugin; ``sqlite_layout="feast"``
selects Feast's own row-per-feature store instead, for comparison (``benchmarks/materialize.py``).

Point-in-time retrieval has two profiles (``offline_store``): ``file``, Feast's DuckDB offline store in
process (the default), and ``spark``, Feast's Spark offline store on ``spark_master`` over the same
parquet files (:mod:`features.spark_offline`). The profile also chooses the kind of batch source the
repository registers (:mod:`features.sources`), so ``apply`` and retrieval must run under the same one.

A serving read is bounded by its caller's deadline without a watchdog thread: on SQLite the wait for
a writer's lock (``feast materialize`` commits while serving reads; the store is in rollback-journal
mode) is cut to the time left, and on Redis the socket timeout bounds the single round trip. The
caller runs the read in its own thread, which saves a hand-off per request.
"""

from __future__ import annotations

import logging
import math
import os
import runpy
import sqlite3
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlparse

import pandas as pd
from feast import Entity, FeatureService, FeatureStore, FeatureView
from feast.data_source import DataSource
from feast.infra.key_encoding_utils import serialize_entity_key
from feast.infra.online_stores.sqlite import _table_id
from feast.protos.feast.types.EntityKey_pb2 import EntityKey as EntityKeyProto
from feast.protos.feast.types.Value_pb2 import Value as ValueProto
from feast.repo_config import RepoConfig
from feast.repo_contents import RepoContents
from feast.repo_operations import extract_objects_for_apply_delete
from feast.value_type import ValueType

from features.definitions import FEATURE_SERVICE, feature_names, feature_views
from features.online_store import (
    PACKED_ENGINE_TYPE,
    PACKED_STORE_TYPE,
    PackedLayout,
    compact_entity_key,
    compact_string_key,
    packed_table_name,
)
from features.sources import OFFLINE_STORE_ENV, OfflineStore, check_offline_store

logger = logging.getLogger(__name__)

FEATURES_DIR_ENV = "PROMOGUARD_FEATURES_DIR"
DEFAULT_REPO_PATH = Path(__file__).resolve().parent / "feature_repo"
#: Socket timeout of the writers (materialize pushes whole batches in one pipeline).
WRITE_TIMEOUT_S = 30.0

_ENV_LOCK = threading.Lock()


#: What a feature reads as when its entity key is known but the online store holds no row for it: a
#: new entity, or one idle for longer than every window (the pipeline snapshots only recent entities).
#: Counts are 0, exactly as the pipeline writes them before an entity's first event; ages and shares
#: stay missing. A null key (no device at all) reads as NaN for the whole view, as in training.
ABSENT_ENTITY_VALUES: dict[str, float] = {
    f"{v.name}__{f.name}": (0.0 if f.dtype == "int64" else math.nan)
    for v in feature_views()
    for f in v.features
}


class FeatureStoreUnavailable(RuntimeError):
    """Feast or its online store failed or did not answer in time; the caller should fall back."""


@dataclass(frozen=True)
class StoreConfig:
    """Where the Feast registry, online store and parquet sources live, and how to reach Redis."""

    feast_dir: Path
    features_dir: Path
    repo_path: Path = field(default=DEFAULT_REPO_PATH)
    online_store: Literal["sqlite", "redis"] = "sqlite"
    redis_url: str = "redis://127.0.0.1:6379/0"
    redis_socket_timeout_s: float = 0.05
    registry_ttl_s: int = 60
    #: Feast project name; also the suffix of every Redis key, so two projects can share one Redis.
    project: str = "promoguard"
    #: The SQLite layout: ``packed`` (features/online_store.py: one row per entity and view, bulk
    #: writes) or ``feast`` (Feast's own store: one row per entity and feature, kept for comparison).
    sqlite_layout: Literal["packed", "feast"] = "packed"
    #: Feast's offline store: ``file`` (DuckDB, in process) or ``spark`` (Feast's Spark offline store).
    offline_store: OfflineStore = "file"
    #: The Spark master of the ``spark`` profile (``local[2]``: two cores of this machine).
    spark_master: str = "local[2]"
    #: The Spark driver's heap (in local mode, the whole job's); read when the JVM starts.
    spark_driver_memory: str = "2g"
    #: Where the ``spark`` profile writes a retrieval's output before the driver reads it back; on a
    #: cluster, a folder every executor and the driver see (default: ``{feast_dir}/spark-staging``).
    spark_staging_dir: Path | None = None

    @classmethod
    def from_settings(cls, settings: Any) -> StoreConfig:
        """The store configuration of a ``config.settings.Settings`` (duck-typed: config imports us)."""
        return cls(
            feast_dir=settings.feast_dir,
            features_dir=settings.features_dir,
            online_store=settings.online_store,
            redis_url=settings.redis_url,
            redis_socket_timeout_s=settings.redis_socket_timeout_s,
            offline_store=settings.offline_store,
            spark_master=settings.spark_master,
            spark_driver_memory=settings.spark_driver_memory,
        )


def _redis_parts(url: str) -> tuple[str, int, int, str | None]:
    parsed = urlparse(url)
    if parsed.scheme not in {"redis", "rediss"} or not parsed.hostname:
        raise ValueError(f"redis_url={url!r}: expected redis://host:port/db")
    db_text = parsed.path.lstrip("/") or "0"
    if not db_text.isdigit():
        raise ValueError(f"redis_url={url!r}: the database must be a number")
    return parsed.hostname, parsed.port or 6379, int(db_text), parsed.password


def repo_config(cfg: StoreConfig, *, serving: bool = False) -> RepoConfig:
    """The Feast configuration for ``cfg`` with absolute paths.

    Feast 0.67's file registry has no refresh thread of its own: ``cache_mode='thread'`` only turns
    off its per-call file check, and an expired TTL still reloads the registry inside the calling
    request. Serving therefore uses thread mode with an infinite TTL (0) and
    :class:`OnlineFeatures` refreshes the registry from its own background thread every
    ``registry_ttl_s``. Writers use sync mode so that apply is visible to the next call at once.
    """
    if cfg.online_store not in ("sqlite", "redis"):
        raise ValueError(f"online_store={cfg.online_store!r}: expected sqlite or redis")
    feast_dir = Path(cfg.feast_dir).resolve()
    online: dict[str, Any]
    if cfg.online_store == "redis":
        host, port, db, password = _redis_parts(cfg.redis_url)
        conn = f"{host}:{port},db={db}"
        if password:
            conn += f",password={password}"
        online = {"type": "redis", "connection_string": conn}
    elif cfg.sqlite_layout == "packed":
        online = {"type": PACKED_STORE_TYPE, "path": str(feast_dir / "online.db")}
    elif cfg.sqlite_layout == "feast":
        online = {"type": "sqlite", "path": str(feast_dir / "online.db")}
    else:
        raise ValueError(f"sqlite_layout={cfg.sqlite_layout!r}: expected packed or feast")
    registry = {
        "registry_type": "file",
        "path": str(feast_dir / "registry.db"),
        "cache_mode": "thread" if serving else "sync",
        "cache_ttl_seconds": 0 if serving else cfg.registry_ttl_s,
    }
    packed = online["type"] == PACKED_STORE_TYPE
    offline: dict[str, Any] = {"type": "duckdb"}
    if check_offline_store(cfg.offline_store) == "spark":
        from features.spark_offline import offline_store_config

        offline = offline_store_config(cfg.spark_master, cfg.spark_driver_memory)
    return RepoConfig(
        project=cfg.project,
        provider="local",
        registry=registry,
        offline_store=offline,
        online_store=online,
        # The packed store is written from Arrow by its own engine (Feast's local one, last step aside).
        batch_engine={"type": PACKED_ENGINE_TYPE} if packed else "local",
        entity_key_serialization_version=3,
    )


def _install_redis_client(store: FeatureStore, cfg: StoreConfig, timeout_s: float) -> None:
    """Give Feast's Redis online store a client with short timeouts and no retries.

    Feast's ``RedisOnlineStoreConfig`` can pass ``socket_timeout`` through its connection string but
    not a retry policy, and redis-py 7 retries three times with up to seconds of backoff by default:
    a frozen Redis would hold a request for seconds. This is the one place where the client Feast
    would lazily create is replaced (``RedisOnlineStore._client``), before its first use.
    """
    from redis import Redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    online: Any = store._get_provider().online_store
    host, port, db, password = _redis_parts(cfg.redis_url)
    online._client = Redis(
        host=host,
        port=port,
        db=db,
        password=password,
        socket_timeout=timeout_s,
        socket_connect_timeout=timeout_s,
        retry=Retry(NoBackoff(), 0),
        health_check_interval=0,
    )


def open_store(cfg: StoreConfig, *, serving: bool = False) -> FeatureStore:
    """Open the Feast store described by ``cfg`` (``serving`` selects the hot-path profile)."""
    Path(cfg.feast_dir).mkdir(parents=True, exist_ok=True)
    try:
        store = FeatureStore(config=repo_config(cfg, serving=serving), repo_path=str(cfg.repo_path))
        if cfg.online_store == "redis":
            _install_redis_client(store, cfg, cfg.redis_socket_timeout_s if serving else WRITE_TIMEOUT_S)
    except ValueError:
        raise
    except Exception as exc:
        raise FeatureStoreUnavailable(f"cannot open the Feast store in {cfg.feast_dir}: {exc}") from exc
    return store


@contextmanager
def _features_dir_env(features_dir: Path, offline_store: OfflineStore = "file") -> Iterator[None]:
    # The repo file reads its data folder and its source kind from the environment at parse time; the
    # lock keeps two threads from parsing with each other's folder or profile.
    wanted = {FEATURES_DIR_ENV: str(Path(features_dir).resolve()), OFFLINE_STORE_ENV: offline_store}
    with _ENV_LOCK:
        previous = {name: os.environ.get(name) for name in wanted}
        os.environ.update(wanted)
        try:
            yield
        finally:
            for name, value in previous.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value


def parse_repo(cfg: StoreConfig) -> RepoContents:
    """Collect the Feast objects defined in the repo folder, as ``feast apply`` does.

    Feast's own ``parse_repo`` imports the files as modules named after their path relative to the
    working directory and keeps them in ``sys.modules``, so a second parse in one process (another
    data folder) would see the first one's paths. Each file is executed afresh here instead.
    """
    repo_path = Path(cfg.repo_path).resolve()
    files = sorted(p for p in repo_path.glob("*.py") if p.name != "__init__.py")
    if not files:
        raise ValueError(f"repo_path={repo_path}: no Feast definition files")
    contents = RepoContents(
        projects=[],
        data_sources=[],
        entities=[],
        feature_views=[],
        feature_services=[],
        on_demand_feature_views=[],
        stream_feature_views=[],
        label_views=[],
        permissions=[],
    )
    with _features_dir_env(cfg.features_dir, check_offline_store(cfg.offline_store)):
        for path in files:
            namespace = runpy.run_path(str(path), run_name=f"promoguard_feature_repo_{path.stem}")
            for obj in namespace.values():
                if isinstance(obj, FeatureView) and not any(obj is v for v in contents.feature_views):
                    contents.feature_views.append(obj)
                    if obj.batch_source is not None and not any(
                        obj.batch_source is s for s in contents.data_sources
                    ):
                        contents.data_sources.append(obj.batch_source)
                elif isinstance(obj, Entity) and not any(obj is e for e in contents.entities):
                    contents.entities.append(obj)
                elif isinstance(obj, FeatureService) and not any(obj is s for s in contents.feature_services):
                    contents.feature_services.append(obj)
                elif isinstance(obj, DataSource) and not any(obj is s for s in contents.data_sources):
                    contents.data_sources.append(obj)
    return contents


def check_sources(cfg: StoreConfig) -> None:
    """Fail early, naming the file and column, on parquet sources Feast's DuckDB store cannot read.

    Feast 0.67 on DuckDB casts the timestamp columns to ``TIMESTAMP`` and DuckDB cannot cast a
    nanosecond UTC timestamp (pandas' default) that way, so the sources must hold
    ``timestamp[us, tz=UTC]``. Only the parquet footers are read.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    for v in feature_views():
        path = Path(cfg.features_dir) / f"{v.name}.parquet"
        if not path.exists():
            raise FileNotFoundError(f"features_dir: {path} is missing (run the feature build first)")
        schema = pq.read_schema(path)
        for column in ("event_timestamp", "created_timestamp", *v.join_keys, *v.feature_names):
            if column not in schema.names:
                raise ValueError(f"{path.name}: missing column {column!r}")
        for column in ("event_timestamp", "created_timestamp"):
            kind = schema.field(column).type
            if not (pa.types.is_timestamp(kind) and kind.unit == "us" and kind.tz in ("UTC", "+00:00")):
                raise ValueError(f"{path.name}: column {column!r} is {kind}; expected timestamp[us, tz=UTC]")


def apply(cfg: StoreConfig) -> list[str]:
    """Register the repo's entities, sources, views and service; drop what the repo no longer has.

    Returns the names of the applied feature views. Under the ``spark`` profile the sources are also
    read through Spark first, so a type Spark reads differently fails here, naming file and column.
    """
    check_sources(cfg)
    if cfg.offline_store == "spark":
        from features.spark_offline import check_spark_sources

        check_spark_sources(cfg.features_dir, cfg.spark_master, cfg.spark_driver_memory)
    contents = parse_repo(cfg)
    store = open_store(cfg)
    try:
        to_apply, to_delete, _, _ = extract_objects_for_apply_delete(cfg.project, store.registry, contents)
        store.apply(to_apply, objects_to_delete=to_delete, partial=False)
    except Exception as exc:
        raise FeatureStoreUnavailable(f"feast apply failed: {exc}") from exc
    return [v.name for v in contents.feature_views]


def _utc(ts: datetime, name: str) -> datetime:
    if not isinstance(ts, datetime):
        raise TypeError(f"{name}: expected a datetime, got {type(ts).__name__}")
    return ts.replace(tzinfo=UTC) if ts.tzinfo is None else ts.astimezone(UTC)


def materialize(cfg: StoreConfig, end: datetime, start: datetime | None = None) -> None:
    """Load the latest offline row per entity with a timestamp in [start, end] into the online store.

    The pipeline stamps one snapshot row per entity at its build time ``as_of``; ``materialize(cfg,
    as_of)`` loads exactly those (``start`` defaults to one minute before ``end``). Feast's incremental
    mode is not used: with one-second view TTLs it would start from the wall clock, not the data.
    """
    end_utc = _utc(end, "end") + timedelta(seconds=1)
    start_utc = _utc(start, "start") if start is not None else end_utc - timedelta(minutes=1)
    store = open_store(cfg)
    try:
        store.materialize(start_date=start_utc, end_date=end_utc)
    except Exception as exc:
        raise FeatureStoreUnavailable(f"feast materialize failed: {exc}") from exc


def apply_and_materialize(cfg: StoreConfig, as_of: datetime) -> list[str]:
    """Apply the repo and materialize everything up to ``as_of``; returns the applied view names."""
    names = apply(cfg)
    materialize(cfg, end=as_of)
    return names


def join_keys() -> tuple[str, ...]:
    """Every join key of the feature service, in catalog order."""
    keys: list[str] = []
    for v in feature_views():
        keys.extend(k for k in v.join_keys if k not in keys)
    return tuple(keys)


def historical_features(cfg: StoreConfig, entity_df: pd.DataFrame) -> pd.DataFrame:
    """Point-in-time features of the service for each row of ``entity_df``.

    ``entity_df`` needs ``event_timestamp`` and every join key (nulls allowed: those views give
    nulls). Columns come back as ``view__feature`` next to the entity columns. Under the ``spark``
    profile the retrieval is Feast's Spark offline store, brought back with bounded driver memory and
    in ``entity_df``'s row order, every feature as float64 (see :mod:`features.spark_offline`).
    """
    if not isinstance(entity_df, pd.DataFrame):
        raise TypeError(f"entity_df: expected a pandas DataFrame, got {type(entity_df).__name__}")
    missing = [c for c in ("event_timestamp", *join_keys()) if c not in entity_df.columns]
    if missing:
        raise ValueError(f"entity_df: missing column(s) {', '.join(missing)}")
    df = entity_df.copy()
    df["event_timestamp"] = pd.to_datetime(df["event_timestamp"], utc=True)
    for key in join_keys():
        df[key] = df[key].astype("string").astype(object).where(df[key].notna(), None)
    store = open_store(cfg)
    try:
        if cfg.offline_store == "spark":
            return _spark_historical_features(store, cfg, df)
        service = store.get_feature_service(FEATURE_SERVICE)
        return store.get_historical_features(entity_df=df, features=service, full_feature_names=True).to_df()
    except Exception as exc:
        raise FeatureStoreUnavailable(f"historical retrieval failed: {exc}") from exc


def _spark_historical_features(store: FeatureStore, cfg: StoreConfig, df: pd.DataFrame) -> pd.DataFrame:
    """Retrieval under the ``spark`` profile (the session is started first so that Feast reuses it)."""
    from features import spark_offline

    spark_offline.session(cfg.spark_master, cfg.spark_driver_memory)
    spark_offline.check_registered_sources(store)
    staging = cfg.spark_staging_dir or Path(cfg.feast_dir).resolve() / "spark-staging"
    return spark_offline.historical_features(
        store, df, names=feature_names(), staging_dir=staging, features_dir=cfg.features_dir
    )


@dataclass(frozen=True)
class _ViewPlan:
    """What the fast path needs per view, resolved once from the registry."""

    table: FeatureView
    join_keys: tuple[str, ...]
    features: tuple[str, ...]
    qualified: tuple[str, ...]
    hset_keys: tuple[Any, ...] = ()
    sqlite_table: str = ""
    #: How the packed layout's rows of this view decode; None for Feast's own layout.
    packed: PackedLayout | None = None
    #: Join keys in Feast's key order when the view is packed and every join key is a string: its
    #: table key is then :func:`compact_string_key` of the values, no protobuf needed.
    string_keys: tuple[str, ...] | None = None


def _to_float(value: ValueProto | float | None) -> float:
    if value is None:
        return math.nan
    if isinstance(value, float):
        return value
    kind = value.WhichOneof("val")
    if kind is None or kind == "null_val":
        return math.nan
    return float(getattr(value, kind))


def _check_row(row: Mapping[str, str | None], keys: Sequence[str]) -> None:
    if not isinstance(row, Mapping):
        raise TypeError(f"entity_rows: expected a mapping of join key to value, got {type(row).__name__}")
    for key in keys:
        value = row.get(key)
        if value is not None and not isinstance(value, str):
            raise TypeError(f"{key}: expected a string or None, got {type(value).__name__}")


def _place(target: dict[str, float], plan: _ViewPlan, values: Sequence[float] | None, *, asked: bool) -> None:
    """One view's values for one request into ``target``, under their qualified names.

    ``values`` (in ``plan.features`` order) is None when the store has no row for the entity; a row of
    only missing values counts as none (Redis answers an unknown entity with empty values). An entity
    asked for but unknown reads as :data:`ABSENT_ENTITY_VALUES`; a request without the view's keys as NaN.
    """
    if values is None or all(math.isnan(x) for x in values):
        for name in plan.qualified:
            target[name] = ABSENT_ENTITY_VALUES[name] if asked else math.nan
    else:
        target.update(zip(plan.qualified, values, strict=True))


def _select_keys(view_index: int, table: str, columns: str, keys: int) -> str:
    """One view's part of the online read: its rows for ``keys`` entity keys, tagged with its index."""
    quoted = table.replace('"', '""')
    marks = ",".join("?" * keys)
    return f'SELECT {view_index}, entity_key, {columns} FROM "{quoted}" WHERE entity_key IN ({marks})'


#: How long a read without a deadline waits for a writer's lock on the SQLite online store.
_LOCK_WAIT_MS = 5000


class OnlineFeatures:
    """Online reads of the feature service for serving; build one per process and share it.

    ``read`` returns every qualified feature of the service as a float (NaN = missing: an absent
    entity or a null key gives NaN for that view's features). ``fast=False`` routes reads through
    Feast's ``get_online_features`` instead, for comparison.
    """

    def __init__(self, cfg: StoreConfig, *, fast: bool = True, refresh_registry: bool = True) -> None:
        """Open the store, resolve the feature service once and start the registry refresher."""
        self._cfg = cfg
        self._fast = fast
        self._store = open_store(cfg, serving=True)
        self._closed = threading.Event()
        self._local = threading.local()
        try:
            self._resolve()
        except Exception as exc:
            raise FeatureStoreUnavailable(f"feature service {FEATURE_SERVICE!r} unavailable: {exc}") from exc
        self._keys = join_keys()
        self._names = tuple(n for plan in self._plans for n in plan.qualified)
        self._thread: threading.Thread | None = None
        if refresh_registry and cfg.registry_ttl_s > 0:
            self._thread = threading.Thread(target=self._refresh_loop, name="feast-registry", daemon=True)
            self._thread.start()

    @property
    def feature_names(self) -> tuple[str, ...]:
        """Qualified names (``view__feature``) in the order of the service's views."""
        return self._names

    def _resolve(self) -> None:
        service = self._store.get_feature_service(FEATURE_SERVICE, allow_cache=True)
        online: Any = self._store._get_provider().online_store
        plans: list[_ViewPlan] = []
        for projection in service.feature_view_projections:
            table = self._store.registry.get_feature_view(
                projection.name, self._store.project, allow_cache=True
            )
            feats = tuple(f.name for f in projection.features)
            hset_keys: tuple[Any, ...] = ()
            if self._cfg.online_store == "redis":
                _, keys = online._generate_hset_keys_for_features(table, list(feats))
                hset_keys = tuple(keys)
            sqlite_table = ""
            packed: PackedLayout | None = None
            string_keys: tuple[str, ...] | None = None
            if self._cfg.online_store == "sqlite":
                versioned = self._store.config.registry.enable_online_feature_view_versioning
                if self._cfg.sqlite_layout == "packed":
                    sqlite_table = packed_table_name(self._store.project, table, versioned)
                    packed = PackedLayout.of(table)
                    kinds = {c.name: c.dtype.to_value_type() for c in table.entity_columns}
                    if all(kinds.get(k) == ValueType.STRING for k in table.join_keys):
                        string_keys = tuple(sorted(table.join_keys))
                else:
                    sqlite_table = _table_id(self._store.project, table, versioned)
            plans.append(
                _ViewPlan(
                    table=table,
                    join_keys=tuple(table.join_keys),
                    features=feats,
                    qualified=tuple(f"{projection.name_to_use()}__{f}" for f in feats),
                    hset_keys=hset_keys,
                    sqlite_table=sqlite_table,
                    packed=packed,
                    string_keys=string_keys,
                )
            )
        # One attribute swap, so a reader never sees half of a refreshed plan.
        self._service = service
        self._plans = tuple(plans)

    def _refresh_loop(self) -> None:
        while not self._closed.wait(self._cfg.registry_ttl_s):
            try:
                self._store.refresh_registry()
                self._resolve()
            except Exception:
                logger.warning("feast registry refresh failed; keeping the previous one", exc_info=True)

    def close(self) -> None:
        """Stop the registry refresher."""
        self._closed.set()

    def read(self, entity_rows: Mapping[str, str | None], deadline: float | None = None) -> dict[str, float]:
        """Every feature of the service for one request's join-key values (see :meth:`read_many`)."""
        return self.read_many([entity_rows], deadline)[0]

    def read_many(
        self, rows: Sequence[Mapping[str, str | None]], deadline: float | None = None
    ) -> list[dict[str, float]]:
        """Features for several requests at once (one online-store round trip per view or less).

        ``deadline`` is a ``time.perf_counter()`` value: a read that would wait for a lock past it
        raises :class:`FeatureStoreUnavailable` instead (SQLite); Redis is bounded by its socket timeout.
        """
        for row in rows:
            _check_row(row, self._keys)
        if not rows:
            return []
        if deadline is not None and time.perf_counter() >= deadline:
            raise FeatureStoreUnavailable("online feature read: the deadline passed before it started")
        try:
            if self._fast:
                return self._read_fast(rows, deadline)
            return self._read_sdk(rows)
        except Exception as exc:
            raise FeatureStoreUnavailable(f"online feature read failed: {type(exc).__name__}: {exc}") from exc

    def _read_sdk(self, rows: Sequence[Mapping[str, str | None]]) -> list[dict[str, float]]:
        # Feast needs every join key in every row; an absent key is sent as a value no hash can take.
        entity_rows = [{k: (row.get(k) or "") for k in self._keys} for row in rows]
        result = self._store.get_online_features(
            features=self._service, entity_rows=entity_rows, full_feature_names=True
        ).to_dict()
        out: list[dict[str, float]] = []
        for i, row in enumerate(rows):
            values: dict[str, float] = {}
            for plan in self._plans:
                present = all(row.get(k) for k in plan.join_keys)
                for name in plan.qualified:
                    v = result[name][i] if present else None
                    if v is None:
                        values[name] = ABSENT_ENTITY_VALUES[name] if present else math.nan
                    else:
                        values[name] = float(v)
            out.append(values)
        return out

    def _entity_key(self, plan: _ViewPlan, row: Mapping[str, str | None]) -> EntityKeyProto | None:
        values: list[str] = []
        for k in plan.join_keys:
            v = row.get(k)
            if not v:
                return None
            values.append(v)
        return EntityKeyProto(
            join_keys=list(plan.join_keys),
            entity_values=[ValueProto(string_val=v) for v in values],
        )

    def _read_fast(
        self, rows: Sequence[Mapping[str, str | None]], deadline: float | None
    ) -> list[dict[str, float]]:
        plans = self._plans
        if all(plan.string_keys is not None for plan in plans):
            return self._read_packed(plans, rows, deadline)
        config = self._store.config
        online: Any = self._store._get_provider().online_store
        # Per view: the unique entity keys asked for and, per request, the index of its key.
        keys_per_view: list[list[EntityKeyProto]] = []
        index_per_view: list[list[int | None]] = []
        for plan in plans:
            seen: dict[bytes, int] = {}
            keys: list[EntityKeyProto] = []
            idx: list[int | None] = []
            for row in rows:
                ek = self._entity_key(plan, row)
                if ek is None:
                    idx.append(None)
                    continue
                token = ek.SerializeToString(deterministic=True)
                if token not in seen:
                    seen[token] = len(keys)
                    keys.append(ek)
                idx.append(seen[token])
            keys_per_view.append(keys)
            index_per_view.append(idx)

        if self._cfg.online_store == "redis":
            read_rows = self._redis_read_all(online, config, plans, keys_per_view)
        else:
            read_rows = self._sqlite_read_all(config, plans, keys_per_view, deadline)

        out: list[dict[str, float]] = [{} for _ in rows]
        for plan, found, idx in zip(plans, read_rows, index_per_view, strict=True):
            for target, i in zip(out, idx, strict=True):
                data = found[i][1] if i is not None else None
                values = None if data is None else [_to_float(data.get(feat)) for feat in plan.features]
                _place(target, plan, values, asked=i is not None)
        return out

    def _read_packed(
        self,
        plans: Sequence[_ViewPlan],
        rows: Sequence[Mapping[str, str | None]],
        deadline: float | None,
    ) -> list[dict[str, float]]:
        # The SQLite packed store with string join keys, the default profile: the same statement and
        # values as the general path below, with each table key built straight from the join values.
        # Building Feast's protobuf key and serializing it was a fifth of this read's time.
        parts: list[str] = []
        params: list[bytes] = []
        index_per_view: list[list[bytes | None]] = []
        for v, plan in enumerate(plans):
            order = plan.string_keys or ()
            idx: list[bytes | None] = []
            unique: dict[bytes, None] = {}
            for row in rows:
                join_values = [row.get(k) or "" for k in order]
                if not all(join_values):
                    idx.append(None)
                    continue
                key = compact_string_key(join_values)
                unique[key] = None
                idx.append(key)
            index_per_view.append(idx)
            if unique:
                parts.append(_select_keys(v, plan.sqlite_table, "vals", len(unique)))
                params.extend(unique)
        found: list[dict[bytes, bytes]] = [{} for _ in plans]
        if parts:
            for v, entity_key, vals in self._sqlite_select(parts, params, deadline):
                found[v][bytes(entity_key)] = vals
        out: list[dict[str, float]] = [{} for _ in rows]
        for plan, rows_found, idx in zip(plans, found, index_per_view, strict=True):
            layout = plan.packed
            assert layout is not None  # string_keys is only set for packed views
            for target, wanted in zip(out, idx, strict=True):
                blob = None if wanted is None else rows_found.get(wanted)
                values = None
                if blob is not None:
                    decoded = layout.decode_floats(blob)
                    values = [decoded.get(feat, math.nan) for feat in plan.features]
                _place(target, plan, values, asked=wanted is not None)
        return out

    def _sqlite_select(self, parts: Sequence[str], params: Sequence[bytes], deadline: float | None) -> Any:
        """The rows of every view's ``SELECT`` (:func:`_select_keys`) from one statement."""
        conn = self._sqlite_conn()
        # Wait for a materialization's lock only as long as the caller can: the connection's busy
        # timeout is what a locked read waits, so it is set to the time left on each read.
        left_ms = _LOCK_WAIT_MS if deadline is None else (deadline - time.perf_counter()) * 1000
        conn.execute(f"PRAGMA busy_timeout = {max(0, int(left_ms))}")
        return conn.execute(" UNION ALL ".join(parts), params)

    def _sqlite_conn(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            path = Path(self._store.config.online_store.path)
            if not path.exists():
                raise FeatureStoreUnavailable(f"no online store at {path}")
            # Read-only and private to this thread: serving never writes here, and SQLite connections
            # must not be shared by threads running statements at the same time.
            conn = sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True, check_same_thread=False)
            self._local.conn = conn
        return conn

    def _sqlite_read_all(
        self,
        config: RepoConfig,
        plans: Sequence[_ViewPlan],
        keys_per_view: Sequence[list[EntityKeyProto]],
        deadline: float | None,
    ) -> list[list[tuple[Any, Any]]]:
        # One statement for every view. A packed table (features/online_store.py) holds one row per
        # entity key with every value of the view; Feast's own tables one row per (entity key, feature).
        version = config.entity_key_serialization_version
        parts: list[str] = []
        params: list[bytes] = []
        serialized: list[list[bytes]] = []
        for v, (plan, keys) in enumerate(zip(plans, keys_per_view, strict=True)):
            if plan.packed is not None:
                blobs = [compact_entity_key(k, version) for k in keys]
            else:
                blobs = [serialize_entity_key(k, entity_key_serialization_version=version) for k in keys]
            serialized.append(blobs)
            if blobs:
                column = "NULL, vals" if plan.packed is not None else "feature_name, value"
                parts.append(_select_keys(v, plan.sqlite_table, column, len(blobs)))
                params.extend(blobs)
        found: list[dict[bytes, Any]] = [{} for _ in plans]
        if parts:
            for v, entity_key, feature_name, value in self._sqlite_select(parts, params, deadline):
                layout = plans[v].packed
                if layout is not None:
                    found[v][bytes(entity_key)] = layout.decode_floats(value)
                    continue
                proto = ValueProto()
                proto.ParseFromString(value)
                found[v].setdefault(bytes(entity_key), {})[feature_name] = proto
        return [
            [(None, found[v].get(blob)) for blob in blobs] for v, blobs in enumerate(serialized)
        ]

    @staticmethod
    def _redis_read_all(
        online: Any,
        config: RepoConfig,
        plans: Sequence[_ViewPlan],
        keys_per_view: Sequence[list[EntityKeyProto]],
    ) -> list[list[tuple[Any, Any]]]:
        # All views in one pipeline (one round trip), with Feast's own key and field encodings.
        commands: list[tuple[bytes, list[Any]]] = []
        counts: list[int] = []
        for plan, keys in zip(plans, keys_per_view, strict=True):
            redis_keys = online._generate_redis_keys_for_entities(config, keys) if keys else []
            commands.extend((k, list(plan.hset_keys)) for k in redis_keys)
            counts.append(len(redis_keys))
        replies = online._read_hash_fields(config, commands) if commands else []
        out: list[list[tuple[Any, Any]]] = []
        offset = 0
        for plan, n in zip(plans, counts, strict=True):
            chunk = replies[offset : offset + n]
            offset += n
            out.append(
                online._convert_redis_values_to_protobuf(
                    chunk, plan.table.name, [*plan.features, f"_ts:{plan.table.name}"]
                )
            )
        return out
