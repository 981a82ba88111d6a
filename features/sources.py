"""The Feast batch source of each feature view, by offline-store profile.

The feature views are defined once (``features/feature_repo/repo.py``); only the kind of their batch
source depends on the profile, and both kinds read the same ``{features_dir}/{view}.parquet`` that the
batch pipeline writes:

* ``file``: a Feast ``FileSource``, read by Feast's DuckDB offline store in process (the default);
* ``spark``: a Feast ``SparkSource`` over the same parquet file, read by Feast's Spark offline store
  (``feast.infra.offline_stores.contrib.spark_offline_store``) on the configured Spark master.

The repository file learns the profile from ``PROMOGUARD_OFFLINE_STORE`` at parse time, as it learns
the parquet folder from ``PROMOGUARD_FEATURES_DIR``: ``features.store`` sets both while it parses, and
a plain ``feast apply`` in the folder sees the variables of the shell it runs in.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Literal, cast

from feast.data_source import DataSource

OfflineStore = Literal["file", "spark"]
#: The profiles, the default first (the names and the variable are those of ``config.settings``).
OFFLINE_STORES: tuple[OfflineStore, ...] = ("file", "spark")
OFFLINE_STORE_ENV = "PROMOGUARD_OFFLINE_STORE"

#: The pipeline's timestamp columns (see ``features.pipeline``): the event's own time, the build's cutoff.
TIMESTAMP_FIELD = "event_timestamp"
CREATED_FIELD = "created_timestamp"


def check_offline_store(value: str) -> OfflineStore:
    """``value`` as a profile name; ValueError naming the variable when it is neither file nor spark."""
    if value not in OFFLINE_STORES:
        raise ValueError(f"{OFFLINE_STORE_ENV}={value!r}: expected one of {', '.join(OFFLINE_STORES)}")
    return cast(OfflineStore, value)


def offline_store_from_env() -> OfflineStore:
    """The profile the repository is parsed for: ``PROMOGUARD_OFFLINE_STORE``, ``file`` when unset."""
    return check_offline_store(os.environ.get(OFFLINE_STORE_ENV) or OFFLINE_STORES[0])


def source_path(features_dir: Path, view_name: str) -> Path:
    """The parquet file of one view: what the pipeline writes and both source kinds read."""
    return Path(features_dir).resolve() / f"{view_name}.parquet"


def batch_source(view_name: str, features_dir: Path, offline_store: OfflineStore) -> DataSource:
    """The batch source of ``view_name`` for ``offline_store``, over ``{features_dir}/{view}.parquet``."""
    path = str(source_path(features_dir, view_name))
    name = f"{view_name}_source"
    if check_offline_store(offline_store) == "spark":
        # Imported here: pyspark is the optional ``spark`` extra and the file profile never needs it.
        from feast.infra.offline_stores.contrib.spark_offline_store.spark_source import SparkSource

        with warnings.catch_warnings():
            # Feast flags its Spark source as experimental on every construction; the profile's
            # documentation says so once.
            warnings.filterwarnings("ignore", message="The spark data source API", category=RuntimeWarning)
            return SparkSource(
                name=name,
                path=path,
                file_format="parquet",
                timestamp_field=TIMESTAMP_FIELD,
                created_timestamp_column=CREATED_FIELD,
            )
    from feast import FileSource

    return FileSource(
        name=name, path=path, timestamp_field=TIMESTAMP_FIELD, created_timestamp_column=CREATED_FIELD
    )
