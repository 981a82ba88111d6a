"""SHAP explanations: exact TreeSHAP from LightGBM, global importance, plots and the signal catalog.

Contributions come from LightGBM's own ``pred_contrib`` (exact TreeSHAP, in raw-margin units), the
same call serving makes per request, so what the fraud team sees here is what checkout sees.
``signal_catalog`` turns every feature into a named signal with a description template and its reason
code; it is generated from the feature catalog so a new feature can never ship without an explanation.
The per-feature names are what drift reports and notebooks show for a column. The service no longer
renders these templates: it groups features into reason concepts and describes them in human units from
the feature names alone (:mod:`scoring.reasons`), so artifacts written before codes existed read the
same; the ``code`` kept here is the concept a feature belongs to, for readers of the manifest.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import lightgbm as lgb
import numpy as np
import pandas as pd

from features import definitions
from scoring.artifact import tree_shap
from scoring.reasons import OTHER_CODE, feature_reason
from training.dataset import FLAG_COLUMNS

_ENTITY_WORDS = {
    "device": "device",
    "household": "household",
    "payment": "payment method",
    "phone": "phone",
    "email": "email",
    "network": "network",
    "local_ip": "local network",
    "account": "account",
    "code": "promo code",
}

_FLAG_TEXT = {
    "email_missing": ("email_missing", "no email address given"),
    "email_invalid": ("email_invalid", "email address is not valid"),
    "email_is_alias": ("email_alias", "email is a plus/dot alias of another address"),
    "email_disposable": ("email_disposable", "email is from a disposable-mail provider"),
    "email_free_provider": ("email_free_provider", "email is from a free webmail provider"),
    "phone_missing": ("phone_missing", "no phone number given"),
    "phone_invalid": ("phone_invalid", "phone number is not valid"),
    "phone_voip": ("phone_voip", "phone number is a VoIP line"),
    "address_missing": ("address_missing", "no shipping address given"),
    "address_unparsed": ("address_unparsed", "shipping address could not be parsed"),
    "ship_bill_mismatch": ("ship_bill_mismatch", "shipping and billing households differ"),
    "device_missing": ("device_missing", "no valid device id"),
    "ip_missing": ("ip_missing", "no public IP address"),
    "ip_is_datacenter": ("ip_datacenter", "IP address belongs to a cloud or hosting provider"),
    "ip_is_tor": ("ip_tor", "IP address is a Tor exit node"),
    "ip_is_proxy_or_vpn": ("ip_proxy_vpn", "IP address is a known proxy or VPN"),
    "guest_checkout": ("guest_checkout", "checkout as a guest, without an account"),
    "promo_is_welcome": ("promo_welcome", "a welcome offer for new customers"),
    "promo_is_referral": ("promo_referral", "a referral code"),
    "promo_is_intro_offer": ("promo_intro_offer", "an introductory subscription offer"),
    "promo_is_free_sample": ("promo_free_sample", "a free-sample offer"),
    "promo_is_wholesale": ("promo_wholesale", "a wholesale or VIP code"),
    "one_per_customer": ("one_per_customer", "a code limited to one use per customer"),
    "segment_ineligible": ("segment_ineligible", "the shopper is not in the segment the code is meant for"),
    "referrer_is_account": ("referrer_is_self", "the referrer is the shopper's own account"),
    "referrer_same_person": ("referrer_same_person", "the referrer resolves to the shopper's own person"),
    "referrer_same_household": ("referrer_same_household", "the referrer lives at the shopper's household"),
}

#: Context counts: signal name and a template with ``{value}``.
_COUNT_TEXT = {
    "person_linked_evidence": ("person_linked", "identity-graph evidence {value} linking earlier attempts"),
    "person_accounts": ("person_accounts", "the resolved person has used {value} accounts"),
    "person_emails": ("person_emails", "the resolved person has used {value} email addresses"),
    "person_code_attempts": ("person_code_reuse", "the resolved person tried this code {value} times before"),
    "person_type_attempts": (
        "person_promo_type_reuse", "the resolved person tried this kind of promotion {value} times before"
    ),
    "household_accounts": ("household_accounts", "{value} accounts seen at the shipping household"),
    "referrer_shared_hard_kinds": (
        "referrer_shares_identity",
        "the referrer used {value} of this shopper's device, address, card, phone or home network",
    ),
}


def contributions(booster: lgb.Booster, x: np.ndarray, *, num_threads: int = 2) -> np.ndarray:
    """Exact TreeSHAP per row: ``(n, features + 1)``, last column the expected value; sums to the margin."""
    return tree_shap(booster, x, num_threads=num_threads)


def global_importance(contrib: np.ndarray, feature_names: Sequence[str]) -> pd.DataFrame:
    """Mean |contribution| per feature, largest first."""
    imp = np.abs(contrib[:, : len(feature_names)]).mean(axis=0)
    df = pd.DataFrame({"feature": list(feature_names), "mean_abs_contribution": imp})
    return df.sort_values("mean_abs_contribution", ascending=False, kind="stable").reset_index(drop=True)


def pattern_contributions(
    contrib: np.ndarray, feature_names: Sequence[str], patterns: Sequence[object], top: int = 15
) -> pd.DataFrame:
    """Mean contribution per feature (rows) and abuse pattern (columns), for the top features overall."""
    df = pd.DataFrame(contrib[:, : len(feature_names)], columns=list(feature_names))
    df["pattern"] = pd.Series(list(patterns), dtype=object).fillna("legit").astype(str).to_numpy()
    table = df.groupby("pattern").mean().T
    order = np.abs(contrib[:, : len(feature_names)]).mean(axis=0).argsort()[::-1][:top]
    table = table.iloc[order]
    table.index.name = "feature"
    return table.reset_index()


def beeswarm_png(contrib: np.ndarray, x: np.ndarray, feature_names: Sequence[str], path: Path) -> Path:
    """Save a SHAP beeswarm of the contributions to ``path`` (PNG, headless)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import shap

    exp = shap.Explanation(
        values=contrib[:, : len(feature_names)],
        base_values=contrib[:, -1],
        data=x,
        feature_names=list(feature_names),
    )
    plt.figure(figsize=(9, 7))
    shap.plots.beeswarm(exp, max_display=20, show=False)
    fig = plt.gcf()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def _window_words(w: str | None) -> str:
    return {
        "1h": "in the last 1 h",
        "24h": "in the last 24 h",
        "7d": "in the last 7 days",
        "30d": "in the last 30 days",
    }.get(w or "", "so far")


def _feature_signal(view_name: str, feat: definitions.Feature) -> tuple[str, str]:
    entity = view_name.removesuffix("_code_stats").removesuffix("_type_stats").removesuffix("_stats")
    pair = view_name.endswith("_code_stats")
    by_type = view_name.endswith("_type_stats")
    word = _ENTITY_WORDS.get(entity, entity.replace("_", " "))
    subject = (
        f"this {word} with this promo code"
        if pair
        else f"this {word} with this kind of promotion"
        if by_type
        else f"this {word}"
    )
    w = _window_words(feat.window)
    suffix = f"_{feat.window}" if feat.window else ""
    prefix = f"{entity}_code" if pair else f"{entity}_promo_type" if by_type else entity
    if feat.kind == "distinct":
        plural = definitions.DISTINCT_TARGETS.get(feat.target or "", feat.target or "")
        return f"{prefix}_many_{plural}{suffix}", f"{word} used by {{value}} {plural} {w}"
    if feat.kind == "labels":
        return f"{prefix}_past_abuse", f"{word} linked to {{value}} earlier attempts confirmed as abuse"
    if feat.kind == "age":
        if feat.name == "hours_since_first_use":
            return "code_age", "promo code first used {value} hours ago"
        return f"{prefix}_new", f"{word} first seen {{value}} days ago"
    if feat.kind == "share":
        return (
            f"{prefix}_new_account_share{suffix}",
            f"share of attempts by new accounts or guests {w}: {{value}}",
        )
    what = {"all": "promo attempts", "redeemed": "redemptions", "invalid": "invalid-code attempts"}[feat.only]
    label = {"all": "attempts", "redeemed": "redeemed", "invalid": "invalid_codes"}[feat.only]
    return f"{prefix}_{label}{suffix or '_total'}", f"{{value}} {what} from {subject} {w}"


def _code(name: str) -> str:
    reason = feature_reason(name)
    return OTHER_CODE if reason is None else reason.code


def signal_catalog(feature_names: Sequence[str]) -> dict[str, dict[str, str]]:
    """Signal name, description template (with ``{value}``) and reason code for every model feature.

    Raises KeyError for a feature the catalog does not know, so the manifest is never incomplete.
    """
    out: dict[str, dict[str, str]] = {}
    for name in feature_names:
        if name in FLAG_COLUMNS or name in _FLAG_TEXT:
            sig, text = _FLAG_TEXT[name]
            out[name] = {"name": sig, "description": f"{text} ({name}={{value}})", "code": _code(name)}
            continue
        if name in _COUNT_TEXT:
            sig, text = _COUNT_TEXT[name]
            out[name] = {"name": sig, "description": text, "code": _code(name)}
            continue
        view_name, _, feat_name = name.partition("__")
        view = definitions.view(view_name)
        feat = next((f for f in view.features if f.name == feat_name), None)
        if feat is None:
            raise KeyError(f"feature {name!r} is not in view {view_name!r}")
        sig, text = _feature_signal(view_name, feat)
        out[name] = {"name": sig, "description": text, "code": _code(name)}
    return out
