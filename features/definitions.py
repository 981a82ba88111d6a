"""The feature catalog: every feature view, its join keys and features, in one place.

The batch pipeline computes these, the Feast repository declares them, training reads them by the
feature service name and serving assembles the same vector online. Nothing else lists feature names.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any, Literal

FEATURE_SERVICE = "promo_abuse_v1"

WINDOWS: dict[str, int] = {"1h": 3600, "24h": 86_400, "7d": 7 * 86_400, "30d": 30 * 86_400}

#: Identity entities that get an ``{entity}_stats`` view keyed by ``{entity}_key``.
IDENTITY_ENTITIES: tuple[str, ...] = (
    "device",
    "household",
    "payment",
    "phone",
    "email",
    "network",
    "local_ip",
    "account",
)

#: Entities whose count of *distinct* values per other entity is a feature (``distinct_{plural}_30d``).
DISTINCT_TARGETS: dict[str, str] = {
    "account": "accounts",
    "email": "emails",
    "device": "devices",
    "payment": "payments",
    "household": "households",
    "network": "networks",
}

#: Identities that a per-customer cap is keyed by (what an abuser cannot cheaply change).
HARD_IDENTITIES: tuple[str, ...] = ("device", "household", "payment", "phone", "local_ip")

#: Identity x code views, and identity x promotion-type views.
CODE_PAIR_ENTITIES: tuple[str, ...] = ("device", "household", "payment", "phone")

#: Join keys that are not identity keys: they come from the attempt's promotion.
PROMOTION_KEYS: tuple[str, ...] = ("promo_code", "promo_type")

Kind = Literal["count", "distinct", "age", "share", "labels"]


@dataclass(frozen=True)
class Feature:
    """One feature of a view: its name, value type and how it is computed."""

    name: str
    dtype: Literal["int64", "float64"]
    kind: Kind
    window: str | None = None
    #: For distinct counts: which key column is counted.
    target: str | None = None
    #: For counts: which attempts count (all, redeemed, invalid).
    only: Literal["all", "redeemed", "invalid"] = "all"


@dataclass(frozen=True)
class FeatureView:
    """A Feast feature view: a name, its join keys and features."""

    name: str
    join_keys: tuple[str, ...]
    features: tuple[Feature, ...]

    @property
    def feature_names(self) -> tuple[str, ...]:
        """Feature names within the view (without the view prefix)."""
        return tuple(f.name for f in self.features)

    def qualified(self) -> tuple[str, ...]:
        """Feature names as Feast returns them with full feature names: ``view__feature``."""
        return tuple(f"{self.name}__{f.name}" for f in self.features)


def _identity_view(entity: str) -> FeatureView:
    feats: list[Feature] = [
        Feature(f"attempts_{w}", "int64", "count", window=w) for w in ("1h", "24h", "7d", "30d")
    ]
    feats += [Feature(f"redeemed_{w}", "int64", "count", window=w, only="redeemed") for w in ("7d", "30d")]
    feats.append(Feature("invalid_24h", "int64", "count", window="24h", only="invalid"))
    feats.append(Feature("distinct_accounts_24h", "int64", "distinct", window="24h", target="account"))
    for target, plural in DISTINCT_TARGETS.items():
        if target != entity:
            feats.append(Feature(f"distinct_{plural}_30d", "int64", "distinct", window="30d", target=target))
    if entity == "account":
        feats = [f for f in feats if f.name != "distinct_accounts_24h"]
    feats.append(Feature("first_seen_days", "float64", "age"))
    feats.append(Feature("abuse_labels", "int64", "labels"))
    return FeatureView(f"{entity}_stats", (f"{entity}_key",), tuple(feats))


def _code_view() -> FeatureView:
    feats = (
        Feature("attempts_1h", "int64", "count", window="1h"),
        Feature("attempts_24h", "int64", "count", window="24h"),
        Feature("redeemed_total", "int64", "count", window=None, only="redeemed"),
        Feature("distinct_devices_24h", "int64", "distinct", window="24h", target="device"),
        Feature("distinct_devices_7d", "int64", "distinct", window="7d", target="device"),
        Feature("distinct_households_7d", "int64", "distinct", window="7d", target="household"),
        Feature("distinct_networks_24h", "int64", "distinct", window="24h", target="network"),
        Feature("distinct_accounts_7d", "int64", "distinct", window="7d", target="account"),
        Feature("new_account_share_7d", "float64", "share", window="7d"),
        Feature("hours_since_first_use", "float64", "age"),
    )
    return FeatureView("code_stats", ("promo_code",), feats)


def _pair_view(entity: str) -> FeatureView:
    feats = (
        Feature("attempts_24h", "int64", "count", window="24h"),
        Feature("redeemed_total", "int64", "count", window=None, only="redeemed"),
    )
    return FeatureView(f"{entity}_code_stats", (f"{entity}_key", "promo_code"), feats)


def _type_view(entity: str) -> FeatureView:
    # A welcome offer claimed again under WELCOME15 after WELCOME10, or a second household member's
    # free sample, is the same promotion type redeemed twice by one durable identity: only lifetime
    # counts see it, since the seed patterns repeat over months, beyond every window.
    feats = (
        Feature("attempts_total", "int64", "count", window=None),
        Feature("redeemed_total", "int64", "count", window=None, only="redeemed"),
    )
    return FeatureView(f"{entity}_type_stats", (f"{entity}_key", "promo_type"), feats)


@cache
def feature_views() -> tuple[FeatureView, ...]:
    """Every feature view of the ``promo_abuse_v1`` service, in a stable order.

    Built once: the views are frozen, and serving walks them several times per request.
    """
    return (
        *(_identity_view(e) for e in IDENTITY_ENTITIES),
        _code_view(),
        *(_pair_view(e) for e in CODE_PAIR_ENTITIES),
        *(_type_view(e) for e in CODE_PAIR_ENTITIES),
    )


def feature_names() -> tuple[str, ...]:
    """All qualified feature names (``view__feature``) of the service, in a stable order."""
    return tuple(name for view in feature_views() for name in view.qualified())


def view(name: str) -> FeatureView:
    """Look one view up by name."""
    for v in feature_views():
        if v.name == name:
            return v
    raise KeyError(f"unknown feature view {name!r}")


# ------------------------------------------------------------------ real-time mirror (features.velocity)
#
# Serving keeps the 1h/24h windowed features (and the identity x code attempts) in windowed sets: a
# counter is a set of members, each with the latest time it was added; reading a counter since ``s``
# counts members whose latest time is >= s. Counter names are ``{view}|{key values}|{suffix}``:
#
# * ``attempts`` (member = request_id): every scored attempt, valid code or not;
# * ``invalid`` (member = request_id): attempts whose code the store rejected as invalid;
# * ``redeemed`` (member = request_id): written by :func:`redemption_updates` when the outcome arrives
#   (``POST /outcome``), because nobody knows at scoring time whether the shopper will complete;
# * ``{target plural}`` (member = the target's key), e.g. ``accounts``: distinct counts.
#
# A distinct count is therefore exactly "targets seen in [now - w, now)", like the batch pipeline.

REALTIME_WINDOWS: tuple[str, ...] = ("1h", "24h")


def _counter_prefix(name: str, join_keys: Sequence[str], row: Mapping[str, Any]) -> str | None:
    values = [row.get(k) for k in join_keys]
    if any(value is None or (isinstance(value, float) and value != value) for value in values):
        return None
    return "|".join([name, *(str(value) for value in values)])


def _member(row: Mapping[str, Any], column: str) -> str | None:
    value = row.get(column)
    if value is None or (isinstance(value, float) and value != value):
        return None
    return str(value)


def _realtime(f: Feature, v: FeatureView) -> bool:
    return f.window in REALTIME_WINDOWS and f.kind in ("count", "distinct") and f.only != "redeemed"


@dataclass(frozen=True)
class _RealtimePlan:
    """What one view contributes to the velocity store, worked out once from the catalog."""

    view: FeatureView
    #: The view's join keys, read once: Feast's ``FeatureView.join_keys`` rebuilds the list on each read.
    join_keys: tuple[str, ...]
    counts_invalid: bool
    #: ``(target, plural suffix)`` of its distinct features, each target once.
    targets: tuple[tuple[str, str], ...]
    #: ``(qualified feature, counter suffix, window seconds)`` of every real-time feature.
    queries: tuple[tuple[str, str, float], ...]


@cache
def _realtime_plans() -> tuple[_RealtimePlan, ...]:
    # Serving asks for these twice per request; the catalog never changes within a process.
    plans = []
    for v in feature_views():
        realtime = [f for f in v.features if _realtime(f, v)]
        targets = dict.fromkeys(f.target for f in realtime if f.kind == "distinct" and f.target)
        queries = []
        for f in realtime:
            assert f.window is not None
            if f.kind == "distinct":
                assert f.target is not None
                suffix = DISTINCT_TARGETS[f.target]
            else:
                suffix = "invalid" if f.only == "invalid" else "attempts"
            queries.append((f"{v.name}__{f.name}", suffix, WINDOWS[f.window]))
        plans.append(_RealtimePlan(
            view=v,
            join_keys=tuple(v.join_keys),
            counts_invalid=any(f.only == "invalid" for f in realtime),
            targets=tuple((t, DISTINCT_TARGETS[t]) for t in targets),
            queries=tuple(queries),
        ))
    return tuple(plans)


def velocity_updates(row: Mapping[str, Any]) -> list[tuple[str, str]]:
    """The ``(counter, member)`` adds one scored attempt makes, for every view whose keys it has.

    ``row`` holds the request's identity keys (contract names), ``promo_code``, ``request_id`` and
    ``promo_valid``. Redemptions are not known yet at scoring time: see :func:`redemption_updates`.
    """
    request_id = _member(row, "request_id")
    if request_id is None:
        raise ValueError("request_id: required to record velocity updates")
    invalid = not row.get("promo_valid", True)
    updates: list[tuple[str, str]] = []
    for plan in _realtime_plans():
        prefix = _counter_prefix(plan.view.name, plan.join_keys, row)
        if prefix is None:
            continue
        updates.append((f"{prefix}|attempts", request_id))
        if invalid and plan.counts_invalid:
            updates.append((f"{prefix}|invalid", request_id))
        for target, plural in plan.targets:
            member = _member(row, f"{target}_key")
            if member is not None:
                updates.append((f"{prefix}|{plural}", member))
    return updates


def redemption_updates(row: Mapping[str, Any]) -> list[tuple[str, str]]:
    """The ``(counter, member)`` adds recorded when an attempt's outcome turns out ``redeemed``."""
    request_id = _member(row, "request_id")
    if request_id is None:
        raise ValueError("request_id: required to record a redemption")
    return [
        (f"{prefix}|redeemed", request_id)
        for v in feature_views()
        if (prefix := _counter_prefix(v.name, v.join_keys, row)) is not None
    ]


def velocity_queries(row: Mapping[str, Any], now: float) -> list[tuple[str, str, float]]:
    """``(qualified feature, counter, since_ts)`` for every real-time feature this request has keys for.

    ``now`` is epoch seconds; a feature with window ``w`` reads its counter since ``now - w``, which
    matches the batch pipeline's ``[ts - w, ts)`` when read before the attempt is recorded.
    """
    queries: list[tuple[str, str, float]] = []
    for plan in _realtime_plans():
        prefix = _counter_prefix(plan.view.name, plan.join_keys, row)
        if prefix is None:
            continue
        queries.extend((name, f"{prefix}|{suffix}", now - window) for name, suffix, window in plan.queries)
    return queries
