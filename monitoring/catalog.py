"""How the drift report treats each model feature: as a distribution, by a rate, or under a human name.

Most features are windowed counts, distinct counts and shares whose distribution stays put while the
store's traffic does. Some grow with the calendar instead, and comparing their distributions would turn
every report red the longer a champion serves:

* ``age`` features (``*_stats__first_seen_days``, ``code_stats__hours_since_first_use``): every
  returning entity is older today than it was in the reference window;
* cumulative counts: ``labels`` (confirmed abuse linked to an entity, which keeps arriving) and counts
  without a window (``redeemed_total``), which only ever go up.

Those are compared by a rate that does not grow with the calendar: for an age, the share of attempts
whose entity was first seen less than a day before (a bot farm's brand-new devices move it); for a
cumulative count, the share of attempts where it is above zero (an identity with past abuse, a code
already redeemed by this shopper). Missing values stay missing, so the missing-rate check still applies.

The catalog (:mod:`features.definitions`) is the one list of feature kinds; a model feature it does not
know (the request-time identity flags such as ``ip_is_tor``) is a 0/1 flag and compared as a
distribution. Human names come from the model's manifest (its per-feature ``signals`` specs), passed in
by the caller: this package never imports training.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from features import definitions

Comparison = Literal["distribution", "rate"]

#: An entity first seen less than this long before the attempt counts as new (in the feature's unit).
_NEW_WITHIN: dict[str, float] = {"days": 1.0, "hours": 24.0}


@dataclass(frozen=True)
class FeatureTreatment:
    """How one feature is compared; ``rate`` says in words what a rate comparison counts."""

    name: str
    kind: str
    comparison: Comparison
    rate: str = ""


def _catalog_feature(name: str) -> definitions.Feature | None:
    view_name, sep, feat_name = name.partition("__")
    if not sep:
        return None
    try:
        view = definitions.view(view_name)
    except KeyError:
        return None
    return next((f for f in view.features if f.name == feat_name), None)


def _age_unit(feature: definitions.Feature) -> str:
    # The pipeline measures ages in hours when the name says so and in days otherwise.
    return "hours" if feature.name.startswith("hours") else "days"


def treatment(name: str) -> FeatureTreatment:
    """How the drift report compares the model feature ``name`` (a catalog feature or a request flag)."""
    feature = _catalog_feature(name)
    if feature is None:
        return FeatureTreatment(name, "flag", "distribution")
    if feature.kind == "age":
        unit = _age_unit(feature)
        within = f"{_NEW_WITHIN[unit]:g} {unit}"
        return FeatureTreatment(name, "age", "rate", f"share first seen less than {within} before")
    if feature.kind == "labels" or (feature.kind == "count" and feature.window is None):
        return FeatureTreatment(name, feature.kind, "rate", "share above zero")
    return FeatureTreatment(name, feature.kind, "distribution")


def compared_values(values: np.ndarray, how: FeatureTreatment) -> np.ndarray:
    """The values the report compares: the raw values, or 0/1 for a rate (missing stays missing)."""
    if how.comparison == "distribution":
        return values
    out = np.full(values.shape, np.nan)
    finite = np.isfinite(values)
    if how.kind == "age":
        feature = _catalog_feature(how.name)
        limit = _NEW_WITHIN[_age_unit(feature)] if feature is not None else 1.0
        out[finite] = (values[finite] < limit).astype(float)
    else:
        out[finite] = (values[finite] > 0).astype(float)
    return out


def display_names(signal_specs: Mapping[str, Mapping[str, Any]]) -> dict[str, str]:
    """Feature -> human name from a model manifest's ``signals`` specs (``{feature: {"name": ...}}``).

    The signal name is what the fraud team already reads in the service's answers; a feature without a
    spec keeps its column name.
    """
    return {
        feature: str(spec["name"])
        for feature, spec in signal_specs.items()
        if isinstance(spec, Mapping) and spec.get("name")
    }
