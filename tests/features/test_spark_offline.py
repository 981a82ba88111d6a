"""The ``spark`` offline-store profile: Feast's Spark offline store gives what the embedded store gives.

One small simulated world is built once for the module through the command line (simulate, features
build, features apply); a second root shares its raw history and parquet features but has a registry of
its own, applied under ``PROMOGUARD_OFFLINE_STORE=spark`` (``SparkSource``s over the same files). On
Spark ``local[2]``:

* the point-in-time training frame (``promoguard train``'s chain: labels presumed legit after maturity,
  ``assemble_training_frame`` over ``features.store.historical_features``) equals the embedded
  (DuckDB) one row for row, column for column, value for value;
* the backtest's history (each replayed attempt's pre-event features) read through Feast's Spark store
  equals the in-process join of the build's files;
* the command line runs end to end on Spark: ``features build --engine spark``, apply, materialize and
  ``train``, whose training frame and replayed history both come through Feast's Spark store;
* a parquet column Spark would read with another type, and a registry applied under the file profile,
  fail with the file and column, or the fix, in the message.

Every test is in the ``spark`` xdist group, so one worker starts one JVM. Without Java the module skips,
unless ``PROMOGUARD_REQUIRE_SERVICES=1`` (as in CI), where it fails.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from features.definitions import feature_names, feature_views
from features.store import FeatureStoreUnavailable, StoreConfig, historical_features, parse_repo, repo_config
from promoguard.cli import app
from promoguard.settings import Settings

pytestmark = [
    pytest.mark.slow,
    pytest.mark.xdist_group("spark"),
    # Feast says so on every SparkSource it builds or reads back from the registry.
    pytest.mark.filterwarnings("ignore:The spark data source API is an experimental feature:RuntimeWarning"),
]

#: Spark's cost here is mostly fixed (planning and scheduling per view), so the world is as small as
#: still gives every view rows, shared entities and null keys.
EVENTS = 3000
DAYS = 20
SEED = 5
SPARK = {"PROMOGUARD_OFFLINE_STORE": "spark", "PROMOGUARD_SPARK_MASTER": "local[2]"}


def require_java() -> None:
    """Skip (or fail under PROMOGUARD_REQUIRE_SERVICES=1) when Spark cannot start here."""
    found = {"java": shutil.which("java") is not None, "pyspark": _has_pyspark()}
    missing = [name for name, there in found.items() if not there]
    if not missing:
        return
    message = f"{' and '.join(missing)} not found: the Spark offline store needs a JVM and pyspark"
    if os.environ.get("PROMOGUARD_REQUIRE_SERVICES") == "1":
        pytest.fail(f"{message} and PROMOGUARD_REQUIRE_SERVICES=1")
    pytest.skip(message)


def _has_pyspark() -> bool:
    import importlib.util

    return importlib.util.find_spec("pyspark") is not None


def run_cli(*args: str, env: dict[str, str] | None = None) -> str:
    """Run one promoguard command in-process; fail the test with its output when it fails."""
    result = CliRunner().invoke(app, list(args), env=env, catch_exceptions=False)
    if result.exit_code != 0:
        pytest.fail(f"promoguard {' '.join(args)} exited {result.exit_code}:\n{result.output[-4000:]}")
    return result.output


@pytest.fixture(scope="module")
def spark() -> Iterator[Any]:
    """The batch side's Spark session for the module; Feast's Spark store reuses it."""
    require_java()
    from features.pipeline import spark_session

    session = spark_session(SPARK["PROMOGUARD_SPARK_MASTER"])
    yield session
    session.stop()


@pytest.fixture(scope="module")
def worlds(spark: Any, tmp_path_factory: pytest.TempPathFactory) -> tuple[Settings, Settings]:
    """(file profile, spark profile) settings of one built world; the spark root links its data."""
    root = tmp_path_factory.mktemp("world")
    r = str(root)
    run_cli("simulate", "--events", str(EVENTS), "--days", str(DAYS), "--seed", str(SEED), "--root", r)
    run_cli("features", "build", "--root", str(root))
    run_cli("features", "apply", "--root", str(root))
    spark_root = tmp_path_factory.mktemp("world-spark")
    (spark_root / "data").mkdir()
    for name in ("raw", "features"):
        (spark_root / "data" / name).symlink_to(root / "data" / name, target_is_directory=True)
    output = run_cli("features", "apply", "--root", str(spark_root), env=SPARK)
    assert "applied 17 feature views" in output
    return Settings.from_env({}, root=root), Settings.from_env(SPARK, root=spark_root)


def _training_frame(settings: Settings) -> pd.DataFrame:
    from training.dataset import assemble_training_frame, presume_unlabeled_legit

    keys = pd.read_parquet(settings.features_dir / "keys.parquet")
    labels = presume_unlabeled_legit(
        keys, pd.read_parquet(settings.raw_dir / "labels.parquet"), maturity_days=7
    )
    historical = partial(historical_features, StoreConfig.from_settings(settings))
    frame = assemble_training_frame(keys, labels, historical)
    return frame.sort_values("request_id", kind="stable").reset_index(drop=True)


def test_training_frame_from_the_spark_store_equals_the_embedded_one(
    worlds: tuple[Settings, Settings], monkeypatch: pytest.MonkeyPatch
) -> None:
    from features import spark_offline

    on_file, on_spark = worlds
    # A budget of a sixth of code_stats' most candidate pairs (every attempt squared) cuts that view
    # (keyed by the promotion code, the hottest key) into time slices while the other views stay whole:
    # both paths are in this one frame.
    keys = pd.read_parquet(on_file.features_dir / "keys.parquet")
    upper = {v.name: int((keys.groupby(list(v.join_keys)).size() ** 2).sum()) for v in feature_views()}
    others = max(n for name, n in upper.items() if name != "code_stats")
    assert upper["code_stats"] > 6 * others
    budget = upper["code_stats"] // 6
    monkeypatch.setattr(spark_offline, "PAIR_BUDGET", budget)
    sliced: list[int] = []
    real = spark_offline.time_slices

    def counted(keys: pd.DataFrame, times: Any, budget: int, source: pd.Series) -> list[Any]:
        parts = real(keys, times, budget, source)
        sliced.append(len(parts))
        return parts

    monkeypatch.setattr(spark_offline, "time_slices", counted)
    embedded, spark = _training_frame(on_file), _training_frame(on_spark)
    # Labeled attempts (the entity rows) are a share of the source rows, so code_stats' pairs are at
    # most upper; with more than a third of the attempts labeled, that is at least 3 slices.
    assert sorted(sliced)[:-1] == [1] * (len(feature_views()) - 1)
    assert sorted(sliced)[-1] >= 3
    assert sorted(spark.columns) == sorted(embedded.columns)
    assert set(feature_names()) <= set(spark.columns)
    # Exact: both stores return the same stored doubles and integer counts; nothing is recomputed.
    pd.testing.assert_frame_equal(spark[embedded.columns], embedded, check_exact=True)
    # Not vacuous: most attempts have features, some views are null (null keys), counts are non-zero.
    values = embedded[list(feature_names())]
    assert len(embedded) > EVENTS // 2
    assert values.notna().to_numpy().mean() > 0.5
    assert values.isna().all(axis=1).sum() < len(values)
    assert (values.fillna(0) > 0).any().sum() > len(feature_names()) // 2


def test_backtest_history_through_the_spark_store_equals_the_embedded_one(
    worlds: tuple[Settings, Settings],
) -> None:
    from promoguard.backtest import history_features

    on_file, on_spark = worlds
    keys = pd.read_parquet(on_file.features_dir / "keys.parquet")
    # The replay's slice: the last days of the history in time order, as run_backtest picks it.
    keys = keys.sort_values(["ts", "request_id"], kind="stable").tail(1200).reset_index(drop=True)
    embedded = history_features(on_file, keys)
    spark = history_features(on_spark, keys)
    assert list(spark.columns) == list(embedded.columns) == ["request_id", *feature_names()]
    pd.testing.assert_frame_equal(spark, embedded, check_exact=True)
    assert embedded[list(feature_names())].notna().to_numpy().any()


def test_the_command_line_chain_runs_on_spark_from_build_to_replayed_headline(
    spark: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from features import spark_offline

    # Each retrieval through Feast's Spark store slices every view once: counting the calls shows the
    # training frame and the replay's history both went through it.
    retrieved: list[int] = []
    real = spark_offline.time_slices

    def counted(*args: Any) -> list[Any]:
        retrieved.append(1)
        return real(*args)

    monkeypatch.setattr(spark_offline, "time_slices", counted)
    r = str(tmp_path)
    # Long enough for train's windows: train, then 14 days of calibration and 7 of validation, a gap, a test.
    run_cli("simulate", "--events", str(EVENTS), "--days", "40", "--seed", str(SEED), "--root", r)
    built = run_cli("features", "build", "--engine", "spark", "--root", r, env=SPARK)
    assert "s (spark); wrote data/features/" in built
    assert "applied 17 feature views" in run_cli("features", "apply", "--root", r, env=SPARK)
    run_cli("features", "materialize", "--root", r, env=SPARK)
    assert retrieved == []
    trained = run_cli("train", "--root", r, "--test-days", "5", "--gap-days", "2", env=SPARK)
    views = len(feature_views())
    assert len(retrieved) == 2 * views
    assert "registered promo-abuse version 1" in trained
    assert "headline: the test window replayed" in trained
    assert (tmp_path / "mlflow" / "mlflow.db").is_file()


def test_a_column_spark_reads_with_another_type_is_named(
    worlds: tuple[Settings, Settings], tmp_path: Path
) -> None:
    from features.spark_offline import SparkSourceError, check_spark_sources

    on_file, _ = worlds
    copy = tmp_path / "features"
    shutil.copytree(on_file.features_dir, copy)
    check_spark_sources(copy, "local[2]")
    table = pq.read_table(copy / "code_stats.parquet")
    at = table.schema.get_field_index("attempts_1h")
    table = table.set_column(at, "attempts_1h", table.column(at).cast(pa.int32()))
    pq.write_table(table, copy / "code_stats.parquet")
    with pytest.raises(SparkSourceError, match=r"code_stats\.parquet: column 'attempts_1h' reads as int"):
        check_spark_sources(copy, "local[2]")


def test_a_registry_applied_under_the_file_profile_is_refused_with_the_fix(
    worlds: tuple[Settings, Settings],
) -> None:
    on_file, _ = worlds
    cfg = replace(StoreConfig.from_settings(on_file), offline_store="spark")
    keys = pd.read_parquet(on_file.features_dir / "keys.parquet").head(5)
    entity_df = keys[[c for c in keys.columns if c.endswith("_key") or c in ("promo_code", "promo_type")]]
    entity_df = entity_df.assign(event_timestamp=keys["ts"])
    with pytest.raises(FeatureStoreUnavailable, match="PROMOGUARD_OFFLINE_STORE=spark"):
        historical_features(cfg, entity_df)


def test_time_slices_split_by_event_time_to_keep_each_retrieval_under_the_budget() -> None:
    import itertools

    import numpy as np

    from features.spark_offline import time_slices

    # 8 rows of one code and 4 of another (a null key joins nothing): 8² + 4² = 80 candidate pairs.
    keys = pd.DataFrame({"promo_code": ["A"] * 8 + ["B"] * 4 + [None]}, dtype="string")
    times = np.array([12, 3, 5, 0, 9, 1, 7, 11, 2, 4, 6, 8, 10], dtype="datetime64[s]")
    assert [p.tolist() for p in time_slices(keys, times, budget=80)] == [
        [3, 5, 8, 1, 9, 2, 10, 6, 11, 4, 12, 7, 0]
    ]
    parts = time_slices(keys, times, budget=30)
    assert len(parts) == 3
    assert sorted(np.concatenate(parts).tolist()) == list(range(13))
    # Consecutive in time: every slice ends before the next one starts.
    assert all(times[a].max() < times[b].min() for a, b in itertools.pairwise(parts))
    with pytest.raises(ValueError, match="budget"):
        time_slices(keys, times, budget=0)
    # Against a source with 10 rows of A and 40 of B (and a C no entity row asks for): 8*10 + 4*40 = 240
    # pairs, where the entity rows alone would say 80.
    source = pd.Series([10, 40, 99], index=pd.Index(["A", "B", "C"], dtype="string", name="promo_code"))
    assert len(time_slices(keys, times, 80, source)) == 3
    assert len(time_slices(keys, times, 240, source)) == 1
    assert len(time_slices(keys, times, 239, source)) == 2


def test_source_key_counts_count_rows_per_key_and_leave_null_keys_out(tmp_path: Path) -> None:
    from features.spark_offline import source_key_counts

    path = tmp_path / "v.parquet"
    pd.DataFrame({"a": ["x", "x", None, "y"], "b": ["1", "1", "1", None], "f": [1.0] * 4}).to_parquet(path)
    assert source_key_counts(path, ["a"]).to_dict() == {"x": 2, "y": 1}
    assert source_key_counts(path, ["a", "b"]).to_dict() == {("x", "1"): 2}


def test_the_profile_chooses_the_offline_store_and_the_source_kind(tmp_path: Path) -> None:
    from feast import FileSource
    from feast.infra.offline_stores.contrib.spark_offline_store.spark_source import SparkSource

    before = os.environ.get("PROMOGUARD_OFFLINE_STORE")
    chosen = {**SPARK, "PROMOGUARD_SPARK_MASTER": "local[1]", "PROMOGUARD_SPARK_DRIVER_MEMORY": "6g"}
    settings = Settings.from_env(chosen, root=tmp_path)
    cfg = StoreConfig.from_settings(settings)
    assert (cfg.offline_store, cfg.spark_master, cfg.spark_driver_memory) == ("spark", "local[1]", "6g")
    offline = repo_config(cfg).offline_store
    assert offline.type == "spark"
    assert offline.spark_conf["spark.master"] == "local[1]"
    assert offline.spark_conf["spark.driver.memory"] == "6g"
    with pytest.raises(ValueError, match="PROMOGUARD_SPARK_DRIVER_MEMORY"):
        Settings.from_env({**SPARK, "PROMOGUARD_SPARK_DRIVER_MEMORY": "six gigs"}, root=tmp_path)
    assert offline.spark_conf["spark.sql.session.timeZone"] == "UTC"
    views = {v.name: v for v in parse_repo(cfg).feature_views}
    assert set(views) == {v.name for v in feature_views()}
    for name, view in views.items():
        assert isinstance(view.batch_source, SparkSource)
        assert view.batch_source.path == str((settings.features_dir / f"{name}.parquet").resolve())
        assert view.batch_source.file_format == "parquet"
    default = StoreConfig.from_settings(Settings.from_env({}, root=tmp_path))
    assert repo_config(default).offline_store.type == "duckdb"
    assert all(isinstance(v.batch_source, FileSource) for v in parse_repo(default).feature_views)
    # The profile reaches the repository only while it is parsed.
    assert os.environ.get("PROMOGUARD_OFFLINE_STORE") == before
