"""A Feast SQLite online store with one packed row per entity and view, written in bulk from Arrow.

Feast's own SQLite online store keeps one row per (entity, feature), each with its own copy of the
entity key, two timestamps and a second index on the key, and upserts them one statement at a time;
before that, Feast turns every value of the materialized frame into a protobuf. The 200k-event demo
world took about two minutes and 1.9 GB. Here, per feature view, a table holds one row per entity:

* ``entity_key``: the entity's join values as Feast serializes them (``serialize_entity_key``,
  version 3) without the join key names, which are the same for every row of a view;
* ``event_ts``, ``created_ts``: integer microseconds since the epoch;
* ``vals``: every feature of the view, fixed width in the view's feature order (:class:`PackedLayout`).

Feast loads both classes through its plugin mechanism (the class name plus ``Config`` in the same
module): ``online_store: {type: features.online_store.PackedSqliteOnlineStore, path: ...}`` and
``batch_engine: {type: features.online_store.PackedLocalComputeEngine}``. The engine is Feast's local
engine (offline read, time filter, latest row per entity) whose last step hands the Arrow table to
:meth:`PackedSqliteOnlineStore.online_write_arrow`, encoded with numpy and written with one
``executemany`` in one transaction, instead of one protobuf per value. ``get_online_features`` reads
through :meth:`PackedSqliteOnlineStore.online_read`; serving's fast path in :mod:`features.store` reads
the same tables with :func:`packed_table_name`, :func:`compact_entity_key` and :class:`PackedLayout`.

The table name ends with a digest of the view's feature names and types, so a view whose features
change gets a new, empty table at ``apply`` and is never read with another layout; ``apply`` drops the
tables a view no longer uses, including those of Feast's row-per-feature layout.
"""

from __future__ import annotations

import math
import sqlite3
import struct
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import cached_property
from pathlib import Path
from typing import Any, Literal, cast

import numpy as np
import pyarrow as pa
from feast import Entity
from feast.feature_view import FeatureView
from feast.infra.common.materialization_job import MaterializationJobStatus, MaterializationTask
from feast.infra.compute_engines.dag.context import ExecutionContext
from feast.infra.compute_engines.local.arrow_table_value import ArrowTableValue
from feast.infra.compute_engines.local.compute import LocalComputeEngine, LocalComputeEngineConfig
from feast.infra.compute_engines.local.feature_builder import LocalFeatureBuilder
from feast.infra.compute_engines.local.job import LocalMaterializationJob
from feast.infra.compute_engines.local.nodes import LocalOutputNode
from feast.infra.infra_object import InfraObject
from feast.infra.key_encoding_utils import serialize_entity_key
from feast.infra.online_stores.helpers import compute_table_id
from feast.infra.online_stores.online_store import OnlineStore
from feast.infra.registry.base_registry import BaseRegistry
from feast.protos.feast.core.Registry_pb2 import Registry as RegistryProto
from feast.protos.feast.types.EntityKey_pb2 import EntityKey as EntityKeyProto
from feast.protos.feast.types.Value_pb2 import Value as ValueProto
from feast.repo_config import FeastConfigBaseModel, RepoConfig
from feast.value_type import ValueType
from pydantic import StrictStr

__all__ = [
    "PACKED_ENGINE_TYPE",
    "PACKED_STORE_TYPE",
    "PackedLayout",
    "PackedLocalComputeEngine",
    "PackedLocalComputeEngineConfig",
    "PackedSqliteOnlineStore",
    "PackedSqliteOnlineStoreConfig",
    "compact_entity_key",
    "compact_string_key",
    "packed_table_name",
]

#: The ``type`` of the store and of the engine in a Feast configuration.
PACKED_STORE_TYPE = "features.online_store.PackedSqliteOnlineStore"
PACKED_ENGINE_TYPE = "features.online_store.PackedLocalComputeEngine"

#: Marks this store's tables, so that ``apply`` only drops tables of the views it manages.
_PACKED_MARK = "__packed_"

_INT_TYPES = {ValueType.INT64: "int64_val", ValueType.INT32: "int32_val", ValueType.BOOL: "bool_val"}
_FLOAT_TYPES = {ValueType.DOUBLE: "double_val", ValueType.FLOAT: "float_val"}

#: ``vals`` starts with one byte naming the width of the integer values of that row.
_WIDE, _NARROW = 0, 1
_INT32_MIN, _INT32_MAX = -(2**31), 2**31 - 1

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)

#: Statements bind at most 32766 parameters in SQLite.
_READ_CHUNK = 10_000

_Row = tuple[EntityKeyProto, dict[str, ValueProto], datetime, datetime | None]


class PackedSqliteOnlineStoreConfig(FeastConfigBaseModel):
    """Configuration of :class:`PackedSqliteOnlineStore`: the SQLite file it writes."""

    type: Literal["features.online_store.PackedSqliteOnlineStore"] = (
        "features.online_store.PackedSqliteOnlineStore"
    )
    """The store's class, as Feast's plugin loader names it."""

    path: StrictStr = "data/online.db"
    """Path of the SQLite file (relative paths are resolved against the repository folder)."""


@dataclass(frozen=True)
class PackedLayout:
    """How one view's feature values are packed into a row's ``vals``.

    ``vals`` = one width byte (0: 8-byte integers, 1: 4-byte integers, chosen per write when every
    integer fits), a bitmap of the values present (bit ``i`` of byte ``i // 8``, little end first),
    then each feature in order: an integer (int64/int32/bool features) or an 8-byte float. Integers
    are narrowed because counts are small and they are most of the file.
    """

    names: tuple[str, ...]
    #: Per feature, the ValueProto field it reads as: int64_val, int32_val, bool_val, double_val, float_val.
    fields: tuple[str, ...]

    @classmethod
    def of(cls, table: FeatureView) -> PackedLayout:
        """The layout of ``table``'s features; only integer, boolean and float features can be packed."""
        fields = []
        for f in table.features:
            kind = f.dtype.to_value_type()
            field = _INT_TYPES.get(kind) or _FLOAT_TYPES.get(kind)
            if field is None:
                raise ValueError(
                    f"{table.name}.{f.name}: the packed online store holds integer, boolean and float "
                    f"features only, not {kind.name}"
                )
            fields.append(field)
        return cls(tuple(f.name for f in table.features), tuple(fields))

    @property
    def digest(self) -> str:
        """Eight hex digits naming the names, order and types (part of the table name)."""
        text = "\x1f".join(f"{n}:{t}" for n, t in zip(self.names, self.fields, strict=True))
        return f"{zlib.crc32(text.encode()) & 0xFFFFFFFF:08x}"

    # Cached: serving decodes a row of every view on every request (frozen dataclasses allow this, as
    # functools.cached_property writes the instance's __dict__ directly).
    @cached_property
    def _is_int(self) -> tuple[bool, ...]:
        return tuple(f not in _FLOAT_TYPES.values() for f in self.fields)

    @cached_property
    def _bitmap_bytes(self) -> int:
        return (len(self.names) + 7) // 8

    @cached_property
    def _structs(self) -> tuple[struct.Struct, struct.Struct]:
        def of(ints: str) -> struct.Struct:
            return struct.Struct("<" + "".join(ints if i else "d" for i in self._is_int))

        return of("q"), of("i")  # indexed by the width byte: _WIDE, _NARROW

    @cached_property
    def _all_present(self) -> bytes:
        n = len(self.names)
        return bytes(0xFF if 8 * (b + 1) <= n else (1 << (n - 8 * b)) - 1 for b in range(self._bitmap_bytes))

    def decode(self, blob: bytes) -> list[float | int | None]:
        """The values of one row in feature order (None: missing)."""
        nb = self._bitmap_bytes
        values: list[float | int | None] = list(self._structs[blob[0]].unpack_from(blob, 1 + nb))
        if blob[1 : 1 + nb] == self._all_present:
            return values
        for i in range(len(values)):
            if not (blob[1 + (i >> 3)] >> (i & 7)) & 1:
                values[i] = None
        return values

    def decode_floats(self, blob: bytes) -> dict[str, float]:
        """One row as ``name -> float`` (NaN: missing): what serving's fast path reads."""
        nb = self._bitmap_bytes
        if blob[1 : 1 + nb] == self._all_present:
            values = self._structs[blob[0]].unpack_from(blob, 1 + nb)
            return dict(zip(self.names, map(float, values), strict=True))
        return {
            name: math.nan if v is None else float(v)
            for name, v in zip(self.names, self.decode(blob), strict=True)
        }

    def decode_protos(self, blob: bytes) -> dict[str, ValueProto]:
        """One row as Feast values (an empty value for a missing one), as Feast's stores return them."""
        out: dict[str, ValueProto] = {}
        for name, field, v in zip(self.names, self.fields, self.decode(blob), strict=True):
            proto = ValueProto()
            if v is not None:
                setattr(proto, field, bool(v) if field == "bool_val" else v)
            out[name] = proto
        return out

    def encode_protos(self, values: dict[str, ValueProto]) -> bytes:
        """One row from Feast values (what ``online_write_batch`` receives), integers 8 bytes wide."""
        bitmap = bytearray(self._bitmap_bytes)
        row: list[float | int] = []
        for i, (name, is_int) in enumerate(zip(self.names, self._is_int, strict=True)):
            proto = values.get(name)
            kind = None if proto is None else proto.WhichOneof("val")
            if kind is None or kind == "null_val":
                row.append(0 if is_int else 0.0)
                continue
            value = getattr(proto, kind)
            row.append(int(value) if is_int else float(value))
            bitmap[i >> 3] |= 1 << (i & 7)
        return bytes([_WIDE]) + bytes(bitmap) + self._structs[_WIDE].pack(*row)

    def encode_arrow(self, table: pa.Table) -> list[bytes]:
        """One ``vals`` per row of ``table`` (a column per feature), vectorised with numpy."""
        n = table.num_rows
        present = np.zeros((n, len(self.names)), dtype=bool)
        columns: list[np.ndarray] = []
        for i, (name, is_int) in enumerate(zip(self.names, self._is_int, strict=True)):
            column = table.column(name)
            present[:, i] = column.is_valid().to_numpy(zero_copy_only=False)
            kind = pa.int64() if is_int else pa.float64()
            values = column.cast(kind).fill_null(0).to_numpy(zero_copy_only=False)
            columns.append(values)
        ints = [c for c, is_int in zip(columns, self._is_int, strict=True) if is_int]
        narrow = all(c.size == 0 or (c.min() >= _INT32_MIN and c.max() <= _INT32_MAX) for c in ints)
        width = _NARROW if narrow else _WIDE
        int_kind = "<i4" if narrow else "<i8"
        nb = self._bitmap_bytes
        dtype = np.dtype(
            [("w", "u1"), ("bits", "u1", (nb,))]
            + [(f"f{i}", int_kind if is_int else "<f8") for i, is_int in enumerate(self._is_int)]
        )
        rows = np.empty(n, dtype=dtype)
        rows["w"] = width
        rows["bits"] = np.packbits(present, axis=1, bitorder="little").reshape(n, nb)
        for i, values in enumerate(columns):
            rows[f"f{i}"] = values
        data = rows.tobytes()
        size = dtype.itemsize
        return [data[j : j + size] for j in range(0, n * size, size)]


def _entity_value_bytes(value: ValueProto) -> bytes:
    """One join value as ``serialize_entity_key`` (version 3) writes it after the key names."""
    full = serialize_entity_key(
        EntityKeyProto(join_keys=["k"], entity_values=[value]), entity_key_serialization_version=3
    )
    return full[13:]  # 4 (count) + 4 (type) + 4 (length) + 1 ("k")


def compact_entity_key(entity_key: EntityKeyProto, version: int = 3) -> bytes:
    """Feast's serialized entity key without the join key names: the table's primary key.

    The names are the same for every row of a view, and in this world they were a third of the file.
    """
    full = serialize_entity_key(entity_key, entity_key_serialization_version=version)
    # The names part: key count, then per name its type, length and UTF-8 bytes (Feast sorts them).
    header = 4 + sum(8 + len(k.encode("utf8")) for k in entity_key.join_keys)
    return full[header:]


_STRING_HEAD = struct.Struct("<II").pack


def compact_string_key(values: Sequence[str]) -> bytes:
    """:func:`compact_entity_key` of an entity whose join keys are all strings, from its values in join
    key name order, without building the protobuf: what serving computes on every request."""
    out = b""
    for value in values:
        encoded = value.encode("utf8")
        out += _STRING_HEAD(ValueType.STRING.value, len(encoded)) + encoded
    return out


def _compact_keys_arrow(table: pa.Table, join_keys: dict[str, ValueType]) -> list[bytes]:
    """:func:`compact_entity_key` of every row of ``table``, from its join key columns."""
    parts: list[list[bytes]] = []
    # Feast orders the values of a multi-key entity by join key name.
    for name in sorted(join_keys):
        kind = join_keys[name]
        column = table.column(name)
        if column.null_count:
            raise ValueError(f"join key {name!r} has {column.null_count} null value(s)")
        if kind == ValueType.STRING:
            head, tag = _STRING_HEAD, ValueType.STRING.value
            encoded = [v.encode("utf8") for v in column.to_pylist()]
            parts.append([head(tag, len(v)) + v for v in encoded])
        elif kind == ValueType.INT64:
            item, tag = struct.Struct("<IIq").pack, ValueType.INT64.value
            parts.append([item(tag, 8, v) for v in column.to_pylist()])
        else:
            field = {ValueType.INT32: "int32_val", ValueType.BYTES: "bytes_val"}.get(kind)
            if field is None:
                raise ValueError(f"join key {name!r}: type {kind.name} cannot be a packed entity key")
            parts.append([_entity_value_bytes(ValueProto(**{field: v})) for v in column.to_pylist()])
    if len(parts) == 1:
        return parts[0]
    return [b"".join(row) for row in zip(*parts, strict=True)]


def _epoch_us(ts: datetime | None) -> int:
    if ts is None:
        return 0
    aware = ts.replace(tzinfo=UTC) if ts.tzinfo is None else ts
    # Integer microseconds: exact where a float of epoch seconds is not, and they order two writes.
    return (aware - _EPOCH) // _MICROSECOND


def _arrow_epoch_us(column: Any) -> np.ndarray:
    if pa.types.is_timestamp(column.type):
        us = column.cast(pa.timestamp("us", tz=column.type.tz))
        return us.cast(pa.int64()).fill_null(0).to_numpy(zero_copy_only=False)
    raise ValueError(f"expected a timestamp column, got {column.type}")


def _quote(identifier: str) -> str:
    return '"' + identifier.replace('"', '""') + '"'


def packed_table_name(project: str, table: FeatureView, versioned: bool = False) -> str:
    """The SQLite table of ``table``'s packed rows: Feast's table id, a mark and the layout digest."""
    return f"{compute_table_id(project, table, versioned)}{_PACKED_MARK}{PackedLayout.of(table).digest}"


class PackedSqliteOnlineStore(OnlineStore):
    """Feast online store on one SQLite file: one packed row per (view, entity), bulk writes."""

    _conn: sqlite3.Connection | None = None
    _conn_path: str | None = None

    @staticmethod
    def db_path(config: RepoConfig) -> str:
        """The SQLite file of ``config`` (a relative path is taken from the repository folder)."""
        path = Path(config.online_store.path)
        if config.repo_path and not path.is_absolute():
            path = Path(config.repo_path) / path
        return str(path)

    def _get_conn(self, config: RepoConfig) -> sqlite3.Connection:
        path = self.db_path(config)
        if self._conn is None or self._conn_path != path:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            # isolation_level=None: transactions are explicit, one write is exactly one BEGIN/COMMIT.
            self._conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
            self._conn_path = path
        return self._conn

    @staticmethod
    def _table(config: RepoConfig, table: FeatureView) -> str:
        return packed_table_name(config.project, table, config.registry.enable_online_feature_view_versioning)

    def _write(
        self, config: RepoConfig, table: FeatureView, rows: list[tuple[bytes, int, int, bytes]]
    ) -> None:
        conn = self._get_conn(config)
        # In key order the b-tree is walked once front to back instead of at random (hashed keys):
        # in the demo world that took the write from 12 s to 10 s.
        rows.sort()
        sql = (
            f"INSERT OR REPLACE INTO {_quote(self._table(config, table))} "
            "(entity_key, event_ts, created_ts, vals) VALUES (?, ?, ?, ?)"
        )
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.executemany(sql, rows)
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    def online_write_batch(
        self,
        config: RepoConfig,
        table: FeatureView,
        data: list[_Row],
        progress: Callable[[int], Any] | None,
    ) -> None:
        """Write the latest row per entity of ``data`` (Feast values) in one transaction."""
        layout = PackedLayout.of(table)
        version = config.entity_key_serialization_version
        # A batch may hold several rows of one entity (a push); the latest event, then created, time wins.
        latest: dict[bytes, tuple[int, int, dict[str, ValueProto]]] = {}
        for entity_key, values, event_ts, created_ts in data:
            key = compact_entity_key(entity_key, version)
            stamp = (_epoch_us(event_ts), _epoch_us(created_ts))
            held = latest.get(key)
            if held is None or stamp >= held[:2]:
                latest[key] = (*stamp, values)
        self._write(
            config, table, [(k, e, c, layout.encode_protos(v)) for k, (e, c, v) in latest.items()]
        )
        if progress:
            progress(len(data))

    def online_write_arrow(self, config: RepoConfig, table: FeatureView, data: pa.Table) -> int:
        """Write the latest row per entity of an Arrow table (a column per join key, feature and
        timestamp, as Feast's offline store returns it) in one transaction; returns the rows written."""
        if data.num_rows == 0:
            return 0
        source = table.batch_source
        if source is None:
            raise ValueError(f"{table.name}: a feature view without a batch source cannot be materialized")
        event = _arrow_epoch_us(data.column(source.timestamp_field))
        created_column = source.created_timestamp_column
        created = (
            _arrow_epoch_us(data.column(created_column))
            if created_column and created_column in data.column_names
            else np.zeros(data.num_rows, dtype=np.int64)
        )
        join_keys = {e.name: e.dtype.to_value_type() for e in table.entity_columns}
        keys = _compact_keys_arrow(data, join_keys)
        # Latest row per entity: visit rows by (event, created) time, so the last index kept wins.
        order = np.lexsort((created, event))
        last = {keys[i]: i for i in order.tolist()}
        keep = np.fromiter(last.values(), dtype=np.int64, count=len(last))
        vals = PackedLayout.of(table).encode_arrow(data.take(pa.array(keep)))
        event_kept, created_kept = event[keep].tolist(), created[keep].tolist()
        rows = list(zip(last.keys(), event_kept, created_kept, vals, strict=True))
        self._write(config, table, rows)
        return len(rows)

    def online_read(
        self,
        config: RepoConfig,
        table: FeatureView,
        entity_keys: list[EntityKeyProto],
        requested_features: list[str] | None = None,
    ) -> list[tuple[datetime | None, dict[str, ValueProto] | None]]:
        """The stored values of each entity key, in order; ``(None, None)`` for an unknown key."""
        if not entity_keys:
            return []
        version = config.entity_key_serialization_version
        blobs = [compact_entity_key(k, version) for k in entity_keys]
        layout = PackedLayout.of(table)
        wanted = set(requested_features) if requested_features else None
        conn = self._get_conn(config)
        name = _quote(self._table(config, table))
        found: dict[bytes, tuple[int, bytes]] = {}
        for start in range(0, len(blobs), _READ_CHUNK):
            chunk = blobs[start : start + _READ_CHUNK]
            marks = ",".join("?" * len(chunk))
            sql = f"SELECT entity_key, event_ts, vals FROM {name} WHERE entity_key IN ({marks})"
            for key, event_us, vals in conn.execute(sql, chunk):
                found[bytes(key)] = (int(event_us), vals)
        out: list[tuple[datetime | None, dict[str, ValueProto] | None]] = []
        for blob in blobs:
            hit = found.get(blob)
            if hit is None:
                out.append((None, None))
                continue
            values = layout.decode_protos(hit[1])
            if wanted is not None:
                values = {k: v for k, v in values.items() if k in wanted}
            out.append((_EPOCH + timedelta(microseconds=hit[0]), values))
        return out

    def update(
        self,
        config: RepoConfig,
        tables_to_delete: Sequence[FeatureView],
        tables_to_keep: Sequence[FeatureView],
        entities_to_delete: Sequence[Entity],
        entities_to_keep: Sequence[Entity],
        partial: bool,
    ) -> None:
        """Create the kept views' tables; drop deleted views' tables and every other layout of a view."""
        conn = self._get_conn(config)
        versioned = config.registry.enable_online_feature_view_versioning
        existing = [str(r[0]) for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]

        def others(table: FeatureView, keep: str | None) -> list[str]:
            base = compute_table_id(config.project, table, versioned)
            return [t for t in existing if t != keep and (t == base or t.startswith(base + _PACKED_MARK))]

        conn.execute("BEGIN IMMEDIATE")
        try:
            for table in tables_to_keep:
                name = self._table(config, table)
                # WITHOUT ROWID: the row lives in the primary key's b-tree, no second copy of the key.
                conn.execute(
                    f"CREATE TABLE IF NOT EXISTS {_quote(name)} (entity_key BLOB PRIMARY KEY, "
                    "event_ts INTEGER NOT NULL, created_ts INTEGER NOT NULL, vals BLOB NOT NULL) "
                    "WITHOUT ROWID"
                )
                for stale in others(table, name):
                    conn.execute(f"DROP TABLE IF EXISTS {_quote(stale)}")
            for table in tables_to_delete:
                for stale in others(table, None):
                    conn.execute(f"DROP TABLE IF EXISTS {_quote(stale)}")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    def plan(self, config: RepoConfig, desired_registry_proto: RegistryProto) -> list[InfraObject]:
        """No infrastructure objects: :meth:`update` creates and drops this store's tables itself."""
        return []

    def teardown(self, config: RepoConfig, tables: Sequence[FeatureView], entities: Sequence[Entity]) -> None:
        """Close the connection and delete the SQLite file."""
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        Path(self.db_path(config)).unlink(missing_ok=True)


# --- materialization --------------------------------------------------------------------------------


class _ArrowOutputNode(LocalOutputNode):
    """Feast's output step, handing the whole Arrow table to a packed store instead of protobufs."""

    def execute(self, context: ExecutionContext) -> ArrowTableValue:
        """Write the input table to the online store (and the offline store when the view says so)."""
        online = context.online_store
        if not (self.feature_view.online and isinstance(online, PackedSqliteOnlineStore)):
            return super().execute(context)
        table = self.get_single_table(context).data
        output = ArrowTableValue(data=table)
        context.node_outputs[self.name] = output
        if table.num_rows:
            online.online_write_arrow(context.repo_config, self.feature_view, table)
            if self.feature_view.offline:
                context.offline_store.offline_write_batch(
                    config=context.repo_config,
                    feature_view=self.feature_view,
                    table=table,
                    progress=lambda _: None,
                )
        return output


class _ArrowFeatureBuilder(LocalFeatureBuilder):
    def build_output_nodes(self, view: Any, input_node: Any) -> Any:
        node = _ArrowOutputNode("output", cast(Any, self.dag_root.view), inputs=[input_node])
        self.nodes.append(node)
        return node


class PackedLocalComputeEngineConfig(LocalComputeEngineConfig):  # type: ignore[misc]
    """Configuration of :class:`PackedLocalComputeEngine` (the local engine's options)."""

    type: Literal["features.online_store.PackedLocalComputeEngine"] = PACKED_ENGINE_TYPE  # type: ignore[assignment]
    """The engine's class, as Feast's plugin loader names it."""


class PackedLocalComputeEngine(LocalComputeEngine):  # type: ignore[misc]
    """Feast's local materialization engine, writing a packed store from Arrow in one step per view."""

    def _materialize_one(
        self, registry: BaseRegistry, task: MaterializationTask, **kwargs: Any
    ) -> LocalMaterializationJob:
        job_id = f"{task.feature_view.name}-{task.start_time}-{task.end_time}"
        context = self.get_execution_context(registry, task)
        try:
            builder = _ArrowFeatureBuilder(registry, task, backend=self._get_backend(context))
            builder.build().execute(context)
        except Exception as exc:
            return LocalMaterializationJob(job_id=job_id, status=MaterializationJobStatus.ERROR, error=exc)
        return LocalMaterializationJob(job_id=job_id, status=MaterializationJobStatus.SUCCEEDED)
