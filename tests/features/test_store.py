"""Tests of features.store: apply, point-in-time retrieval, materialization and online reads."""

from __future__ import annotations

import math
import os
import socket
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from features.definitions import FEATURE_SERVICE, feature_names, feature_views
from features.store import (
    FeatureStoreUnavailable,
    OnlineFeatures,
    StoreConfig,
    apply,
    apply_and_materialize,
    historical_features,
    join_keys,
    open_store,
)

T0 = datetime(2024, 3, 1, tzinfo=UTC)
N_ENTITIES = 6
ROWS_PER_ENTITY = 4
AS_OF = T0 + timedelta(days=10)


def _key(view_key: str, i: int) -> str:
    return f"{view_key}-{i:02d}"


def write_feature_parquets(features_dir: Path, seed: int = 3) -> dict[str, pd.DataFrame]:
    """Small random per-view parquet files shaped like the batch pipeline's output: rows at event
    times plus one snapshot row per entity at the build time ``AS_OF``."""
    rng = np.random.default_rng(seed)
    features_dir.mkdir(parents=True, exist_ok=True)
    frames: dict[str, pd.DataFrame] = {}
    for view in feature_views():
        records = []
        for i in range(N_ENTITIES):
            # Entities start at different times so "before the first row" exists for each.
            start = T0 + timedelta(hours=3 * i)
            # Pre-event rows at their events' times, then the build's snapshot row at AS_OF.
            times = [
                start + timedelta(days=j, minutes=int(rng.integers(0, 60))) for j in range(ROWS_PER_ENTITY)
            ]
            for j, ts in enumerate([*times, AS_OF]):
                rec: dict[str, object] = {k: _key(k, i) for k in view.join_keys}
                rec["event_timestamp"] = ts
                rec["created_timestamp"] = ts
                for f in view.features:
                    if f.dtype == "int64":
                        rec[f.name] = int(rng.integers(0, 50))
                    else:
                        rec[f.name] = None if j == 0 else float(rng.uniform(0, 30))
                records.append(rec)
        df = pd.DataFrame.from_records(records)
        # Microsecond UTC timestamps: what Feast's DuckDB offline store can read (see check_sources).
        for col in ("event_timestamp", "created_timestamp"):
            df[col] = pd.to_datetime(df[col], utc=True).astype("datetime64[us, UTC]")
        for f in view.features:
            df[f.name] = df[f.name].astype(f.dtype)
        df.to_parquet(features_dir / f"{view.name}.parquet", index=False)
        frames[view.name] = df
    return frames


def _row_keys(i: int) -> dict[str, str | None]:
    return {k: _key(k, i) for k in join_keys()}


def _latest(frames: dict[str, pd.DataFrame], view_name: str, i: int) -> pd.Series:
    df = frames[view_name]
    key_col = feature_views()[[v.name for v in feature_views()].index(view_name)].join_keys[0]
    mine = df[df[key_col] == _key(key_col, i)].sort_values("event_timestamp")
    return mine.iloc[-1]


def _same(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or a == b


@pytest.fixture(scope="module")
def sqlite_store(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[StoreConfig, dict[str, pd.DataFrame]]]:
    base = tmp_path_factory.mktemp("store")
    cfg = StoreConfig(feast_dir=base / "feast", features_dir=base / "features")
    frames = write_feature_parquets(cfg.features_dir)
    apply_and_materialize(cfg, AS_OF)
    yield cfg, frames


def test_apply_registers_every_view_and_the_versioned_service(sqlite_store) -> None:
    cfg, _ = sqlite_store
    store = open_store(cfg)
    registered = {v.name for v in store.list_feature_views()}
    assert registered == {v.name for v in feature_views()}
    service = store.get_feature_service(FEATURE_SERVICE)
    served = [f"{p.name}__{f.name}" for p in service.feature_view_projections for f in p.features]
    assert sorted(served) == sorted(feature_names())


def test_apply_is_idempotent_and_returns_view_names(sqlite_store) -> None:
    cfg, _ = sqlite_store
    assert apply(cfg) == [v.name for v in feature_views()]
    assert len(open_store(cfg).list_feature_views()) == len(feature_views())


@pytest.fixture(scope="module")
def historical(sqlite_store) -> tuple[pd.DataFrame, pd.Series, int]:
    """One point-in-time query (they cost seconds each): a row's own timestamp, before an
    entity's first row, and the materialization time."""
    cfg, frames = sqlite_store
    row = frames["device_stats"].iloc[5]
    i = int(row["device_key"].split("-")[1])
    first = frames["payment_stats"].query("payment_key == 'payment_key-03'")["event_timestamp"].min()
    entity_df = pd.DataFrame(
        [
            {**_row_keys(i), "event_timestamp": row["event_timestamp"], "probe": "exact"},
            {**_row_keys(3), "event_timestamp": first - timedelta(seconds=1), "probe": "before"},
            {**_row_keys(4), "event_timestamp": AS_OF, "probe": "as_of"},
        ]
    )
    return historical_features(cfg, entity_df).set_index("probe"), row, i


def test_historical_at_a_rows_timestamp_returns_that_row(historical) -> None:
    out, row, _ = historical
    for f in feature_views()[0].features:
        got = out.loc["exact", f"device_stats__{f.name}"]
        want = row[f.name]
        assert (pd.isna(got) and pd.isna(want)) or got == want, f.name


def test_historical_before_an_entitys_first_row_is_null(historical) -> None:
    out, _, _ = historical
    assert out.loc["before", [f"payment_stats__{n}" for n in ("attempts_1h", "abuse_labels")]].isna().all()


def test_historical_rejects_an_entity_frame_without_join_keys(sqlite_store) -> None:
    cfg, _ = sqlite_store
    with pytest.raises(ValueError, match="device_key"):
        historical_features(cfg, pd.DataFrame({"event_timestamp": [T0]}))


def test_online_after_materialize_equals_latest_offline_row(sqlite_store) -> None:
    cfg, frames = sqlite_store
    online = OnlineFeatures(cfg, refresh_registry=False)
    got = online.read(_row_keys(2))
    assert set(got) == set(feature_names())
    for view in feature_views():
        latest = _latest(frames, view.name, 2)
        for f in view.features:
            want = float(latest[f.name]) if pd.notna(latest[f.name]) else math.nan
            assert _same(got[f"{view.name}__{f.name}"], want), f"{view.name}__{f.name}"


def test_online_equals_offline_at_as_of(sqlite_store, historical) -> None:
    cfg, _ = sqlite_store
    offline, _, _ = historical
    online = OnlineFeatures(cfg, refresh_registry=False).read(_row_keys(4))
    for name in feature_names():
        off = offline.loc["as_of", name]
        assert _same(online[name], math.nan if pd.isna(off) else float(off)), name


def test_unseen_entity_reads_as_nothing_happened_and_null_key_as_missing(sqlite_store) -> None:
    cfg, _ = sqlite_store
    for fast in (True, False):
        online = OnlineFeatures(cfg, fast=fast, refresh_registry=False)
        row = _row_keys(1)
        row["device_key"] = "never-seen"
        row["phone_key"] = None
        got = online.read(row)
        # A known key without a row is a new (or long idle) entity: counts 0, ages unknown.
        assert got["device_stats__attempts_24h"] == 0.0
        assert got["device_stats__distinct_accounts_30d"] == 0.0
        assert math.isnan(got["device_stats__first_seen_days"])
        # No key at all: the whole view is missing, as in training.
        assert all(math.isnan(v) for k, v in got.items() if k.startswith(("phone_stats", "phone_code")))
        assert not math.isnan(got["email_stats__attempts_30d"])


def test_bad_key_type_names_the_field(sqlite_store) -> None:
    cfg, _ = sqlite_store
    online = OnlineFeatures(cfg, refresh_registry=False)
    with pytest.raises(TypeError, match="email_key"):
        online.read({**_row_keys(1), "email_key": 12})  # type: ignore[dict-item]


def test_read_locked_by_a_materialization_gives_up_at_its_deadline(sqlite_store) -> None:
    cfg, frames = sqlite_store
    online = OnlineFeatures(cfg, refresh_registry=False)
    writer = sqlite3.connect(cfg.feast_dir / "online.db", isolation_level=None)
    writer.execute("BEGIN EXCLUSIVE")  # what a materialization holds while it commits
    try:
        started = time.monotonic()
        with pytest.raises(FeatureStoreUnavailable, match="locked"):
            online.read(_row_keys(2), deadline=time.perf_counter() + 0.05)
        # Far below the 5 s a read without a deadline waits for the lock.
        assert time.monotonic() - started < 2.0
        with pytest.raises(FeatureStoreUnavailable, match="deadline"):
            online.read(_row_keys(2), deadline=time.perf_counter() - 0.001)
    finally:
        writer.execute("ROLLBACK")
        writer.close()
    # The same connection reads again once the lock is gone.
    got = online.read(_row_keys(2), deadline=time.perf_counter() + 5.0)
    for view in feature_views():
        latest = _latest(frames, view.name, 2)
        for f in view.features:
            want = float(latest[f.name]) if pd.notna(latest[f.name]) else math.nan
            assert _same(got[f"{view.name}__{f.name}"], want), f"{view.name}__{f.name}"


def test_fast_path_matches_feast_sdk(sqlite_store) -> None:
    cfg, _ = sqlite_store
    fast = OnlineFeatures(cfg, refresh_registry=False)
    sdk = OnlineFeatures(cfg, fast=False, refresh_registry=False)
    rows = [_row_keys(i) for i in range(N_ENTITIES)]
    rows.append({**_row_keys(0), "household_key": "unknown", "promo_code": "NOPE"})
    for got, want in zip(fast.read_many(rows), sdk.read_many(rows), strict=True):
        assert got.keys() == want.keys()
        assert all(_same(got[k], want[k]) for k in want), [k for k in want if not _same(got[k], want[k])]


def _redis_available() -> bool:
    try:
        import redis

        return bool(redis.Redis(host="127.0.0.1", port=6379, socket_timeout=0.5).ping())
    except Exception:
        return False


def test_redis_profile_matches_sqlite(sqlite_store) -> None:
    if not _redis_available():
        if os.environ.get("PROMOGUARD_REQUIRE_SERVICES") == "1":
            pytest.fail("Redis at 127.0.0.1:6379 does not answer and PROMOGUARD_REQUIRE_SERVICES=1")
        pytest.skip("Redis at 127.0.0.1:6379 does not answer")
    import redis

    cfg, _ = sqlite_store
    project = f"pgtest_{uuid.uuid4().hex[:10]}"
    rcfg = replace(cfg, feast_dir=cfg.feast_dir.parent / project, online_store="redis", project=project)
    client = redis.Redis(host="127.0.0.1", port=6379)
    try:
        apply_and_materialize(rcfg, AS_OF)
        rows = [_row_keys(i) for i in range(N_ENTITIES)] + [{**_row_keys(1), "device_key": "unknown"}]
        fast = OnlineFeatures(rcfg, refresh_registry=False).read_many(rows)
        sdk = OnlineFeatures(rcfg, fast=False, refresh_registry=False).read_many(rows)
        local = OnlineFeatures(cfg, refresh_registry=False).read_many(rows)
        for a, b, c in zip(fast, sdk, local, strict=True):
            assert all(_same(a[k], b[k]) and _same(a[k], c[k]) for k in c)
    finally:
        # Feast suffixes every Redis key with the project name.
        for key in client.scan_iter(match=f"*{project}", count=1000):
            client.delete(key)


@pytest.fixture()
def frozen_redis() -> Iterator[int]:
    """A TCP listener that accepts connections and never replies, like a hung Redis."""
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    conns: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.1)
        while not stop.is_set():
            try:
                conns.append(server.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield server.getsockname()[1]
    stop.set()
    thread.join()
    for c in conns:
        c.close()
    server.close()


def test_frozen_redis_raises_feature_store_unavailable_quickly(sqlite_store, frozen_redis: int) -> None:
    cfg, _ = sqlite_store
    # The registry of the SQLite profile has every view; only the online store is the frozen one.
    rcfg = replace(cfg, online_store="redis", redis_url=f"redis://127.0.0.1:{frozen_redis}/0")
    online = OnlineFeatures(rcfg, refresh_registry=False)
    started = time.monotonic()
    with pytest.raises(FeatureStoreUnavailable):
        online.read(_row_keys(1))
    assert time.monotonic() - started < 2.0


def test_apply_names_a_nanosecond_timestamp_column(tmp_path: Path) -> None:
    cfg = StoreConfig(feast_dir=tmp_path / "feast", features_dir=tmp_path / "features")
    write_feature_parquets(cfg.features_dir)
    df = pd.read_parquet(cfg.features_dir / "code_stats.parquet")
    df["event_timestamp"] = df["event_timestamp"].astype("datetime64[ns, UTC]")
    df.to_parquet(cfg.features_dir / "code_stats.parquet", index=False)
    with pytest.raises(ValueError, match=r"code_stats.parquet.*event_timestamp"):
        apply(cfg)


# --- the packed online store (features/online_store.py) ----------------------------------------------


@pytest.fixture(scope="module")
def feast_layout_store(
    sqlite_store: tuple[StoreConfig, dict[str, pd.DataFrame]],
) -> StoreConfig:
    """The same parquet files materialized into Feast's own row-per-feature SQLite layout."""
    cfg, _ = sqlite_store
    fcfg = replace(cfg, feast_dir=cfg.feast_dir.parent / "feast_layout", sqlite_layout="feast")
    apply_and_materialize(fcfg, AS_OF)
    return fcfg


def test_packed_store_reads_as_feasts_own_sqlite_store(sqlite_store, feast_layout_store) -> None:
    # Parity across layouts and read paths: Feast's SDK and the fast path on the packed store, and
    # both on Feast's own store, give the same values for known, unknown and missing keys.
    cfg, _ = sqlite_store
    rows = [_row_keys(i) for i in range(N_ENTITIES)]
    rows.append({**_row_keys(0), "household_key": "unknown", "promo_code": "NOPE", "phone_key": None})
    answers = [
        OnlineFeatures(c, fast=fast, refresh_registry=False).read_many(rows)
        for c in (cfg, feast_layout_store)
        for fast in (True, False)
    ]
    for per_row in zip(*answers, strict=True):
        first = per_row[0]
        for other in per_row[1:]:
            assert other.keys() == first.keys()
            assert all(_same(other[k], first[k]) for k in first), [
                k for k in first if not _same(other[k], first[k])
            ]


def test_packed_store_keeps_one_row_per_entity_and_view(sqlite_store) -> None:
    from features.online_store import packed_table_name

    cfg, _ = sqlite_store
    store = open_store(cfg)
    conn = sqlite3.connect(cfg.feast_dir / "online.db")
    try:
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        expected = {packed_table_name(cfg.project, store.get_feature_view(v.name)) for v in feature_views()}
        assert tables == expected
        for name in expected:
            # Five offline rows per entity (four events and the snapshot); only the snapshot is online.
            assert conn.execute(f'SELECT count(*) FROM "{name}"').fetchone()[0] == N_ENTITIES
    finally:
        conn.close()


def test_apply_drops_another_layout_of_a_view(tmp_path: Path) -> None:
    from features.online_store import packed_table_name

    cfg = StoreConfig(feast_dir=tmp_path / "feast", features_dir=tmp_path / "features")
    write_feature_parquets(cfg.features_dir)
    # Feast's own layout first, as a store written before the packed one would hold.
    apply_and_materialize(replace(cfg, sqlite_layout="feast"), AS_OF)
    apply(cfg)
    store = open_store(cfg)
    conn = sqlite3.connect(cfg.feast_dir / "online.db")
    try:
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    finally:
        conn.close()
    assert tables == {packed_table_name(cfg.project, store.get_feature_view(v.name)) for v in feature_views()}


def test_packed_entity_keys_from_arrow_equal_feasts_serialization() -> None:
    import pyarrow as pa
    from feast.protos.feast.types.EntityKey_pb2 import EntityKey
    from feast.protos.feast.types.Value_pb2 import Value
    from feast.value_type import ValueType

    from features.online_store import _compact_keys_arrow, compact_entity_key, compact_string_key

    table = pa.table({"b_key": ["x", "héllo", ""], "a_key": ["SAVE10", "Z", "q"], "n": [1, -(2**40), 7]})
    got = _compact_keys_arrow(table, {"b_key": ValueType.STRING, "a_key": ValueType.STRING})
    for i, key in enumerate(got):
        proto = EntityKey(
            join_keys=["b_key", "a_key"],
            entity_values=[
                Value(string_val=table["b_key"][i].as_py()),
                Value(string_val=table["a_key"][i].as_py()),
            ],
        )
        assert key == compact_entity_key(proto)
        # Serving's key for string join keys: the values in Feast's key order (by name), no protobuf.
        assert key == compact_string_key([table["a_key"][i].as_py(), table["b_key"][i].as_py()])
    ints = _compact_keys_arrow(table, {"n": ValueType.INT64})
    for i, key in enumerate(ints):
        proto = EntityKey(join_keys=["n"], entity_values=[Value(int64_val=table["n"][i].as_py())])
        assert key == compact_entity_key(proto)


def test_packed_rows_decode_to_floats_with_nan_for_each_missing_value() -> None:
    import pyarrow as pa
    from feast import Entity, FeatureView, Field, FileSource, ValueType
    from feast.types import Float64, Int64

    from features.online_store import PackedLayout

    # Ten features: the presence bitmap spans two bytes, the second one partly used.
    names = [f"f{i}" for i in range(10)]
    view = FeatureView(
        name="v",
        entities=[Entity(name="k", join_keys=["k"], value_type=ValueType.STRING)],
        schema=[Field(name=n, dtype=Int64 if i % 2 else Float64) for i, n in enumerate(names)],
        source=FileSource(path="unused.parquet", timestamp_field="ts"),
    )
    layout = PackedLayout.of(view)
    full = [float(i) + 0.5 if i % 2 == 0 else i for i in range(10)]
    rows = [full, [None if i == 9 else v for i, v in enumerate(full)], [None] * 10]
    table = pa.table({
        n: pa.array([r[i] for r in rows], pa.int64() if i % 2 else pa.float64()) for i, n in enumerate(names)
    })
    for row, blob in zip(rows, layout.encode_arrow(table), strict=True):
        got = layout.decode_floats(blob)
        assert list(got) == names
        for name, want in zip(names, row, strict=True):
            assert math.isnan(got[name]) if want is None else got[name] == float(want)
            assert isinstance(got[name], float)


def test_packed_values_round_trip_from_arrow_and_from_feast_values() -> None:
    import pyarrow as pa
    from feast import Entity, FeatureView, Field, FileSource, ValueType
    from feast.types import Bool, Float64, Int64

    from features.online_store import PackedLayout

    view = FeatureView(
        name="v",
        entities=[Entity(name="k", join_keys=["k"], value_type=ValueType.STRING)],
        schema=[Field(name="n", dtype=Int64), Field(name="x", dtype=Float64), Field(name="b", dtype=Bool)],
        source=FileSource(path="unused.parquet", timestamp_field="ts"),
    )
    layout = PackedLayout.of(view)
    for n_values in ([1, None, 3], [2**40, None, -(2**40)]):  # 4-byte, then 8-byte integers
        table = pa.table({
            "n": pa.array(n_values, pa.int64()),
            "x": pa.array([0.5, 1e300, None], pa.float64()),
            "b": pa.array([True, False, None], pa.bool_()),
        })
        blobs = layout.encode_arrow(table)
        for i, blob in enumerate(blobs):
            want = [n_values[i], table["x"][i].as_py(), table["b"][i].as_py()]
            assert layout.decode(blob)[:2] == want[:2]
            assert layout.decode(blob)[2] == (None if want[2] is None else int(want[2]))
            protos = layout.decode_protos(blob)
            # The same row encoded from Feast values decodes to the same values.
            assert layout.decode(layout.encode_protos(protos)) == layout.decode(blob)
            floats = layout.decode_floats(blob)
            assert _same(floats["x"], math.nan if want[1] is None else want[1])


def test_a_write_of_feast_values_keeps_the_latest_row_per_entity(tmp_path: Path) -> None:
    from feast.protos.feast.types.EntityKey_pb2 import EntityKey
    from feast.protos.feast.types.Value_pb2 import Value

    cfg = StoreConfig(feast_dir=tmp_path / "feast", features_dir=tmp_path / "features")
    write_feature_parquets(cfg.features_dir)
    apply(cfg)
    store = open_store(cfg)
    view = store.get_feature_view("code_stats")
    key = EntityKey(join_keys=["promo_code"], entity_values=[Value(string_val="PUSHED")])
    ints = {f.name for f in view.features if f.dtype.to_value_type().name == "INT64"}
    older = {f.name: Value(int64_val=1) if f.name in ints else Value() for f in view.features}
    newer = {**older, "attempts_1h": Value(int64_val=9)}
    online = store._get_provider().online_store  # noqa: SLF001 - the store Feast loaded, as a push writes it
    online.online_write_batch(store.config, view, [(key, newer, AS_OF, None), (key, older, T0, None)], None)
    ((ts, values),) = online.online_read(store.config, view, [key])
    assert ts == AS_OF
    assert values is not None and values["attempts_1h"].int64_val == 9
    assert values["new_account_share_7d"].WhichOneof("val") is None
    row = {**_row_keys(0), "promo_code": "PUSHED"}
    got = OnlineFeatures(cfg, refresh_registry=False).read(row)
    assert got["code_stats__attempts_1h"] == 9.0 and math.isnan(got["code_stats__new_account_share_7d"])
