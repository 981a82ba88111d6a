"""The feature catalog: every feature view, its join keys and features, in one place.

The batch pipeline computes these, the Feast repository declares them, training reads them by the
feature service name and serving assembles the same vector online. Nothing else lists feature names.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

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

#: Identity x code views.
CODE_PAIR_ENTITIES: tuple[str, ...] = ("device", "household", "payment", "phone")

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


def feature_views() -> tuple[FeatureView, ...]:
    """Every feature view of the ``promo_abuse_v1`` service, in a stable order."""
    return (
        *(_identity_view(e) for e in IDENTITY_ENTITIES),
        _code_view(),
        *(_pair_view(e) for e in CODE_PAIR_ENTITIES),
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
