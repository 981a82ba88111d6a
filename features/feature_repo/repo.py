"""Feast definitions of the promoguard feature catalog: entities, parquet sources, views, the service.

Everything is generated from ``features.definitions`` so the catalog is listed in one place. Feast (or
``features.store``, parsing this folder the way ``feast apply`` does) loads this file; no module
imports it.

The parquet folder comes from ``PROMOGUARD_FEATURES_DIR`` because the project root is only known at
run time; the fallback is ``data/features`` of the checkout this file lives in. The kind of source over
those files (a ``FileSource`` for Feast's DuckDB offline store, a ``SparkSource`` for its Spark one) comes
from ``PROMOGUARD_OFFLINE_STORE`` the same way (see ``features.sources``): the views themselves are the
same in both profiles.
"""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path

from feast import Entity, FeatureService, FeatureView, Field, ValueType
from feast.types import Float64, Int64

from features.definitions import FEATURE_SERVICE, feature_views
from features.sources import batch_source, offline_store_from_env

FEATURES_DIR_ENV = "PROMOGUARD_FEATURES_DIR"

# Every row is the state of an entity just before one of its events, stamped with that event's exact
# time, and every training row is looked up at its own event time: the point-in-time join only ever
# needs the row at the same instant. A one-second TTL tells Feast exactly that, so DuckDB probes one
# row per attempt instead of pairing each attempt with every earlier row of its key (with a 10-year
# TTL, a hot promo code's tens of thousands of rows ran a 20k-attempt retrieval out of 24 GB).
# Online reads do not apply the TTL (Feast's standard online path ignores it), and materialization
# is always given an explicit window around the build's snapshot time (see features/store.py).
VIEW_TTL = timedelta(seconds=1)

_DTYPES = {"int64": Int64, "float64": Float64}


def _features_dir() -> Path:
    configured = os.environ.get(FEATURES_DIR_ENV)
    if configured:
        return Path(configured).resolve()
    return (Path(__file__).resolve().parent.parent.parent / "data" / "features").resolve()


_DIR = _features_dir()
_OFFLINE_STORE = offline_store_from_env()

#: One entity per join key; Feast names them after the key so the entity and join key never diverge.
ENTITIES: dict[str, Entity] = {}
for _view in feature_views():
    for _key in _view.join_keys:
        if _key not in ENTITIES:
            ENTITIES[_key] = Entity(
                name=_key,
                join_keys=[_key],
                value_type=ValueType.STRING,
                description={"promo_code": "promotion code", "promo_type": "promotion type"}.get(
                    _key, f"hashed identity {_key}"
                ),
            )

#: Feature views by name, each reading ``{features_dir}/{view}.parquet`` through the profile's source kind.
VIEWS: dict[str, FeatureView] = {}
for _view in feature_views():
    VIEWS[_view.name] = FeatureView(
        name=_view.name,
        entities=[ENTITIES[k] for k in _view.join_keys],
        ttl=VIEW_TTL,
        schema=[Field(name=f.name, dtype=_DTYPES[f.dtype]) for f in _view.features],
        source=batch_source(_view.name, _DIR, _OFFLINE_STORE),
        online=True,
    )

# Feast collects module-level objects only, so the generated ones are exposed as module attributes.
globals().update({f"entity_{k}": e for k, e in ENTITIES.items()})
globals().update({f"view_{k}": v for k, v in VIEWS.items()})

promo_abuse_service = FeatureService(
    name=FEATURE_SERVICE,
    features=[VIEWS[v.name] for v in feature_views()],
    description="Every feature of the promo abuse model, version 1",
)
