"""Synthetic scoring frames for the drift tests: a plausible store, and the drifts it can go through."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd

from features.definitions import feature_names

FLAGS = ("ip_is_datacenter", "ip_is_tor", "email_disposable")
FEATURES = (*feature_names(), *FLAGS)
#: A slice of the catalog (with the features the bot farm moves) where the full one only costs time.
SOME_FEATURES = (*feature_names()[:20], *FLAGS)
PROMO_TYPES = ("welcome", "referral", "intro_offer", "free_sample", "wholesale", "sitewide")
START = pd.Timestamp("2025-03-01", tz="UTC")
#: Signal names as a model manifest's ``signals`` specs would give them.
DISPLAY_NAMES = {
    "device_stats__distinct_accounts_24h": "device_many_accounts_24h",
    "ip_is_datacenter": "ip_datacenter",
    "email_disposable": "email_disposable",
}


def _feature_column(rng: np.random.Generator, name: str, n: int) -> np.ndarray:
    """Plausible values per feature kind: Poisson counts, ages with missing values, shares."""
    feature = name.split("__")[-1]
    if feature in ("first_seen_days", "hours_since_first_use"):
        values = rng.exponential(30.0, n)
        values[rng.random(n) < 0.3] = np.nan
        return values
    if feature == "new_account_share_7d":
        return rng.beta(2, 5, n)
    lam = {"1h": 0.2, "24h": 1.0, "7d": 3.0, "30d": 6.0}.get(feature.rsplit("_", 1)[-1], 0.5)
    return rng.poisson(lam, n).astype(float)


def _decisions(frame: pd.DataFrame, score: np.ndarray) -> None:
    frame["score"] = score
    frame["band"] = pd.cut(score, [-1, 9, 29, 59, 100], labels=["clean", "low", "medium", "high"]).astype(str)
    frame["decision"] = np.select(
        [score >= 85, score >= 60, score >= 30], ["refuse", "verify", "watch"], "allow"
    )


def _signals(rng: np.random.Generator, kind: np.ndarray) -> list[list[str]]:
    signals: list[list[str]] = []
    for k in kind:
        if k == "bot":
            signals.append(["device_stats__distinct_accounts_24h", "ip_is_datacenter"])
        elif k == "abuse":
            signals.append(["email_disposable", "email_stats__first_seen_days"])
        else:
            signals.append(["code_stats__attempts_24h"] if rng.random() < 0.3 else [])
    return signals


def scoring_frame(
    seed: int, n: int, *, bot_share: float = 0.0, signals_as_json: bool = False
) -> pd.DataFrame:
    """A scoring frame: mostly legit requests, some abuse, optionally a bot farm on datacenter IPs."""
    rng = np.random.default_rng(seed)
    kind = rng.choice(["legit", "abuse", "bot"], n, p=[0.95 - bot_share, 0.05, bot_share])
    is_bot, is_abuse = kind == "bot", kind == "abuse"
    frame = pd.DataFrame({name: _feature_column(rng, name, n) for name in feature_names()})
    frame["ip_is_datacenter"] = (rng.random(n) < np.where(is_bot, 0.9, 0.02)).astype(float)
    frame["ip_is_tor"] = (rng.random(n) < 0.01).astype(float)
    frame["email_disposable"] = (rng.random(n) < np.where(is_abuse, 0.4, 0.03)).astype(float)
    accounts = frame["device_stats__distinct_accounts_24h"].to_numpy()
    frame["device_stats__distinct_accounts_24h"] = np.where(is_bot, rng.poisson(8, n) + 4.0, accounts)

    raw = np.where(kind == "legit", rng.beta(1.5, 15, n), rng.beta(8, 3, n))
    _decisions(frame, np.clip(np.round(100 * raw), 0, 100).astype(int))
    frame["fallback"] = ["rules" if u < 0.002 else None for u in rng.random(n)]

    promo_type = rng.choice(PROMO_TYPES, n)
    season = rng.choice(["spring", "summer"], n)
    frame["promo_type"] = promo_type
    frame["campaign"] = [f"{t}-{s}" for t, s in zip(promo_type, season, strict=True)]
    frame["promo_code"] = [f"{t.upper()}-{s.upper()}-10" for t, s in zip(promo_type, season, strict=True)]
    frame["ts"] = START + pd.to_timedelta(rng.uniform(0, 7 * 86_400, n), unit="s")
    frame["request_id"] = [f"req-{seed}-{i}" for i in range(n)]

    signals = _signals(rng, kind)
    frame["top_signals"] = [json.dumps(s) for s in signals] if signals_as_json else signals

    labeled = rng.random(n) < 0.5
    frame["label"] = np.where(labeled, (kind != "legit").astype(float), np.nan)
    frame["label_ts"] = frame["ts"] + pd.to_timedelta(rng.exponential(36.0, n), unit="h")
    frame.loc[~labeled, "label_ts"] = pd.NaT
    frame["pattern"] = np.select([is_bot, is_abuse], ["bot_farm", "welcome_cycling"], "none")
    return frame


def as_scoring_log(frame: pd.DataFrame, *, labeled: bool) -> pd.DataFrame:
    """The same requests as the service's scoring log has them: no pattern, the code as the campaign.

    Without feedback the log's ``label`` is all missing and it has no ``label_ts``.
    """
    out = frame.drop(columns=["pattern"]).assign(campaign=frame["promo_code"])
    if not labeled:
        out = out.drop(columns=["label_ts"]).assign(label=np.nan)
    return out
