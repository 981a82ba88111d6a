"""Shared serving fixtures: a tiny real LightGBM artifact written per the contract, and fake backends."""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightgbm as lgb
import numpy as np
import pytest

from scoring.artifact import LoadedModel

FEATURES = [
    "device_stats__distinct_accounts_24h",
    "household_stats__distinct_accounts_30d",
    "code_stats__attempts_1h",
    "email_disposable",
]


def write_artifact(directory: Path, n_trees: int = 20, seed: int = 3) -> Path:
    """Train a small booster on synthetic abuse-like data and write model.txt + manifest.json."""
    rng = np.random.default_rng(seed)
    n = 400
    x = np.column_stack([
        rng.poisson(1.5, n), rng.poisson(1.0, n), rng.poisson(3.0, n), rng.integers(0, 2, n)
    ]).astype(np.float64)
    x[rng.random(n) < 0.1, 1] = np.nan
    logit = 0.9 * x[:, 0] + 0.5 * np.nan_to_num(x[:, 1]) + 1.2 * x[:, 3] - 3.0
    y = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(int)
    booster = lgb.train(
        {"objective": "binary", "num_leaves": 7, "min_data_in_leaf": 10, "verbose": -1, "num_threads": 1,
         "seed": seed},
        lgb.Dataset(x, y, feature_name=FEATURES),
        num_boost_round=n_trees,
    )
    directory.mkdir(parents=True, exist_ok=True)
    model_path = directory / "model.txt"
    booster.save_model(str(model_path))
    reloaded = lgb.Booster(model_file=str(model_path))
    iso_x, iso_y = [0.0, 0.2, 0.5, 1.0], [0.0, 0.1, 0.6, 1.0]
    golden = []
    for row in x[:100]:
        raw = float(reloaded.predict(row.reshape(1, -1), raw_score=True)[0])
        prob = 1 / (1 + math.exp(-raw))
        calibrated = float(np.interp(prob, iso_x, iso_y))
        golden.append({"x": [None if math.isnan(v) else v for v in row], "raw": raw,
                       "probability": prob, "score": int(min(100, max(0, round(100 * calibrated))))})
    manifest = {
        "model_version": "7",
        "created_at": "2026-11-21T00:00:00+00:00",
        "feature_service": "promo_abuse_v1",
        "feature_names": FEATURES,
        "calibrator": {"kind": "isotonic", "x": iso_x, "y": iso_y},
        "bands": {"clean": 0, "low": 10, "medium": 30, "high": 60},
        "thresholds": {"default": {"watch": 30, "verify": 60, "refuse": 85},
                       "welcome": {"watch": 25, "verify": 55, "refuse": 80}},
        "signals": {
            "device_stats__distinct_accounts_24h": {
                "name": "shared device", "description": "device used by {value} accounts in the last 24 h"},
            "email_disposable": {"name": "disposable email", "description": "disposable email: {value}"},
        },
        "golden": golden,
        "model_sha256": hashlib.sha256(model_path.read_bytes()).hexdigest(),
    }
    # NaN is not JSON: golden rows carry null, which the loader reads back as NaN.
    (directory / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")
    return directory


@pytest.fixture(scope="session")
def artifact_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One tiny artifact for the whole session (training it is the slow part)."""
    return write_artifact(tmp_path_factory.mktemp("artifact") / "model")


#: Thresholds low enough for the tiny artifact's scores to reach refuse, for every promotion type.
STRICT = {"default": {"watch": 30, "verify": 60, "refuse": 70}}


@pytest.fixture(scope="session")
def strict_model(artifact_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> LoadedModel:
    """The tiny artifact under :data:`STRICT` thresholds."""
    target = tmp_path_factory.mktemp("strict") / "model"
    shutil.copytree(artifact_dir, target)
    manifest = json.loads((target / "manifest.json").read_text())
    manifest["thresholds"] = STRICT
    (target / "manifest.json").write_text(json.dumps(manifest))
    return LoadedModel.from_dir(target)


@dataclass
class FakeKeys:
    """Identity keys in the contract's shape."""

    values: dict[str, Any]

    def as_dict(self) -> dict[str, Any]:
        """Keys and flags by contract name."""
        return dict(self.values)


KEY_NAMES = ("account_key", "email_key", "phone_key", "household_key", "address_key", "bill_household_key",
             "payment_key", "device_key", "network_key", "ip_key", "local_ip_key", "referrer_key")


class FakeResolver:
    """Hashes what it gets with sha256 (tests only) and derives a few flags, like the identity layer."""

    def resolve(self, record: Mapping[str, Any]) -> FakeKeys:
        """Keys and flags for one event-shaped record."""
        def h(kind: str, value: Any) -> str | None:
            return None if not value else hashlib.sha256(f"{kind}:{value}".encode()).hexdigest()[:32]

        device = record.get("device_id")
        device_ok = bool(device) and set(str(device)) - {"0", "-"} != set()
        email = record.get("email") or ""
        values: dict[str, Any] = {k: None for k in KEY_NAMES}
        values.update(
            account_key=h("account", record.get("account_id")),
            email_key=h("email", email.lower()),
            phone_key=h("phone", record.get("phone")),
            household_key=h("household", record.get("ship_line1")),
            address_key=h("address", record.get("ship_line1")),
            payment_key=h("payment", record.get("payment_fingerprint")),
            device_key=h("device", device) if device_ok else None,
            network_key=h("network", (record.get("ip") or "").rsplit(".", 1)[0] or None),
            ip_key=h("ip", record.get("ip")),
            local_ip_key=h("local_ip", record.get("local_ip")),
            referrer_key=h("account", record.get("referrer_account_id")),
            email_missing=not email, email_invalid=False, email_is_alias="+" in email,
            email_disposable=email.endswith("@mailinator.com"), email_free_provider=False,
            phone_missing=not record.get("phone"), phone_invalid=False, phone_voip=False,
            address_missing=not record.get("ship_line1"), address_unparsed=False, ship_bill_mismatch=False,
            device_missing=not device_ok, ip_missing=not record.get("ip"),
            ip_is_datacenter=str(record.get("ip") or "").startswith("3."), ip_is_tor=False,
            ip_is_proxy_or_vpn=False,
            ip_provider="aws" if str(record.get("ip") or "").startswith("3.") else None,
        )
        return FakeKeys(values)


class FakeOnline:
    """Online features from a dict; can fail or be slow on demand."""

    def __init__(self, values: Mapping[str, float] | None = None, fail: bool = False, delay_s: float = 0.0):
        """Serve ``values`` for every request."""
        self.values = dict(values or {})
        self.fail = fail
        self.delay_s = delay_s
        self.rows: list[Mapping[str, str | None]] = []
        self.deadlines: list[float | None] = []
        self.closed = False

    def read(self, entity_rows: Mapping[str, str | None], deadline: float | None = None) -> dict[str, float]:
        """Return the configured values (or fail, or answer late: the delay ignores the deadline)."""
        import time

        self.rows.append(dict(entity_rows))
        self.deadlines.append(deadline)
        if self.delay_s:
            time.sleep(self.delay_s)
        if self.fail:
            raise RuntimeError("online store down")
        return dict(self.values)

    def close(self) -> None:
        """Remember that the scorer closed it."""
        self.closed = True


@dataclass(frozen=True)
class FakeReservation:
    """A reservation answer."""

    request_id: str
    status: str
    blocked_by: str | None = None
    matched: tuple[str, ...] = ()


class FakeVelocity:
    """In-memory windowed sets and caps with the velocity store's interface."""

    def __init__(self, fail: bool = False, read_delay_s: float = 0.0) -> None:
        """Start empty; ``read_delay_s`` makes every read that slow."""
        self.fail = fail
        self.read_delay_s = read_delay_s
        self.sets: dict[str, dict[str, float]] = {}
        self.recorded: set[str] = set()
        self.uses: dict[tuple[str, str], list[tuple[str, str]]] = {}
        self.held: dict[str, tuple[str, list[str]]] = {}
        self.confirmed: dict[str, tuple[str, list[str]]] = {}
        self.closed = False

    def _check(self) -> None:
        if self.fail:
            raise RuntimeError("velocity down")

    def record(self, request_id: str, ts: float, updates: Sequence[tuple[str, str]]) -> bool:
        """Add members once per request."""
        self._check()
        if request_id in self.recorded:
            return False
        self.recorded.add(request_id)
        for counter, member in updates:
            self.sets.setdefault(counter, {})[member] = ts
        return True

    def close(self) -> None:
        """Remember that the scorer closed it."""
        self.closed = True

    def read(self, queries: Sequence[tuple[str, float]]) -> list[int]:
        """Members seen since each query's time."""
        self._check()
        if self.read_delay_s:
            time.sleep(self.read_delay_s)
        return [sum(1 for t in self.sets.get(c, {}).values() if t >= since) for c, since in queries]

    def reserve(self, request_id: str, scope: str, identities: Sequence[str], limit: int, ttl_s: float,
                now: float, *, quorum: int = 1, decisive: Sequence[str] = ()) -> FakeReservation:
        """Hold one use per identity unless ``quorum`` of them (or a decisive one) are at their limit."""
        self._check()
        matched = tuple(i for i in identities if len(self.uses.get((scope, i), [])) >= limit)
        if len(matched) >= quorum or set(matched) & set(decisive):
            return FakeReservation(request_id, "exhausted", matched[0], matched)
        for ident in identities:
            self.uses.setdefault((scope, ident), []).append((request_id, "held"))
        self.held[request_id] = (scope, list(identities))
        return FakeReservation(request_id, "reserved", None, matched)

    def confirm(self, request_id: str) -> bool:
        """Keep the use."""
        self._check()
        held = self.held.pop(request_id, None)
        if held is None:
            return False
        self.confirmed[request_id] = held
        return True

    def release(self, request_id: str, *, confirmed: bool = False) -> bool:
        """Drop the use (``confirmed``: a confirmed one too)."""
        self._check()
        held = self.held.pop(request_id, None)
        if held is None and confirmed:
            held = self.confirmed.pop(request_id, None)
        if held is None:
            return False
        scope, idents = held
        for ident in idents:
            self.uses[(scope, ident)] = [u for u in self.uses[(scope, ident)] if u[0] != request_id]
        return True
