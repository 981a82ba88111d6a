"""Request-time context the seed checks need: what the promotion is, who may use it, and referral links.

The seed catalogue's "how to catch it" column asks questions no identity aggregate answers on its own:
is this a one-per-customer code, is a wholesale code being used in guest checkout, is the shopper in
the segment the code is meant for, does the redeemer of a referral share a hard identity with the
sharer. This module answers them with one definition used twice:

* :func:`promotion_context` for one request (serving), from the request's promotion and account;
* :func:`context_frame` for a whole keys frame (training, batch scoring), from the events' columns and
  the promotions catalog; tested equal to the per-request function row by row;
* :func:`referral_links` for a whole keys frame: how many hard identities of the redeemer the referrer
  account carried in the 30 days before the attempt, the batch mirror of serving's ``xref`` counters.

All values are numbers (0/1 flags and one count) so they go into the model row as they are.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from features.definitions import HARD_IDENTITIES
from features.graph import GRAPH_COLUMNS, GraphConfig, graph_context

#: Promotion types that get a 0/1 column; ``sitewide`` is the reference type (all zeros).
PROMO_TYPE_FLAGS: tuple[str, ...] = ("welcome", "referral", "intro_offer", "free_sample", "wholesale")

#: Context columns computed from the promotion and the account, in model order.
PROMOTION_COLUMNS: tuple[str, ...] = (
    "guest_checkout",
    *(f"promo_is_{t}" for t in PROMO_TYPE_FLAGS),
    "one_per_customer",
    "segment_ineligible",
)

#: Referral link columns, in model order.
REFERRAL_COLUMNS: tuple[str, ...] = ("referrer_shared_hard_kinds", "referrer_is_account")

#: Every context column, in model order: the identity graph's person and household columns last
#: (:mod:`features.graph`, resolved attempt by attempt in batch and online alike).
CONTEXT_COLUMNS: tuple[str, ...] = (*PROMOTION_COLUMNS, *REFERRAL_COLUMNS, *GRAPH_COLUMNS)

#: How far back a referrer's identities count, the same window as serving's ``xref`` counters.
REFERRAL_WINDOW_S = 30 * 86_400


def _blank(value: Any) -> bool:
    return value is None or (isinstance(value, float) and value != value) or value is pd.NA


def _folded(values: np.ndarray) -> pd.Series:
    """Segments as :func:`segment_matches` compares them: stripped, case-folded, NA when missing."""
    return pd.Series(values, dtype="string").str.strip().str.casefold()


def segment_matches(account_segment: Any, eligible_segment: Any) -> bool:
    """Whether an account's segment is the one a code is reserved for, whatever the case or spacing.

    Stores spell their customer tags as their staff typed them ("Wholesale", "wholesale "): a trade
    customer must not be refused over a capital letter.
    """
    if _blank(account_segment) or _blank(eligible_segment):
        return False
    return str(account_segment).strip().casefold() == str(eligible_segment).strip().casefold()


def promotion_context(
    *,
    promo_type: str | None,
    is_guest: bool,
    single_use: bool,
    per_customer_limit: int | None,
    eligible_segment: str | None,
    account_segment: str | None,
) -> dict[str, float]:
    """The promotion columns of one attempt.

    ``one_per_customer``: the code is single-use or capped at one per customer. ``segment_ineligible``:
    the code names a segment (wholesale, VIP) and the shopper is a guest or in another segment.
    """
    out: dict[str, float] = {"guest_checkout": float(bool(is_guest))}
    for t in PROMO_TYPE_FLAGS:
        out[f"promo_is_{t}"] = float(promo_type == t)
    limit_one = not _blank(per_customer_limit) and int(per_customer_limit or 0) == 1
    out["one_per_customer"] = float(bool(single_use) or limit_one)
    ineligible = not _blank(eligible_segment) and (
        bool(is_guest) or not segment_matches(account_segment, eligible_segment)
    )
    out["segment_ineligible"] = float(ineligible)
    return out


def referral_context(shared_kinds: int, referrer_is_account: bool) -> dict[str, float]:
    """The referral columns of one attempt (0 and 0 for an attempt that is not a referral)."""
    return {
        "referrer_shared_hard_kinds": float(shared_kinds),
        "referrer_is_account": float(bool(referrer_is_account)),
    }


def _policy(keys: pd.DataFrame, promotions: pd.DataFrame | None) -> pd.DataFrame:
    """single_use, per_customer_limit and eligible_segment per attempt, from the catalog by code."""
    if promotions is None or promotions.empty:
        # No catalog: every code is unknown, the one path below then gives no policy anywhere.
        promotions = pd.DataFrame(
            {
                "promo_code": pd.Series(dtype=object),
                "single_use": pd.Series(dtype=bool),
                "per_customer_limit": pd.Series(dtype="Int64"),
                "eligible_segment": pd.Series(dtype=object),
            }
        )
    catalog = promotions.drop_duplicates("promo_code", keep="last").set_index("promo_code")
    codes = keys["promo_code"].astype(str)
    single = codes.map(catalog["single_use"].astype(bool)).eq(True).to_numpy()
    limit = codes.map(catalog["per_customer_limit"]).astype("Int64").array
    segment = codes.map(catalog["eligible_segment"].astype(object)).astype(object).to_numpy()
    # A code the catalog does not know was refused by the store: it carries no policy.
    return pd.DataFrame({"single_use": single, "per_customer_limit": limit, "eligible_segment": segment})


def _guest(keys: pd.DataFrame) -> np.ndarray:
    guest = keys["is_guest"].eq(True).to_numpy() if "is_guest" in keys else np.zeros(len(keys), dtype=bool)
    if "account_key" in keys:
        guest = guest | keys["account_key"].isna().to_numpy()
    return guest


def context_frame(keys: pd.DataFrame, promotions: pd.DataFrame | None) -> pd.DataFrame:
    """The promotion columns for every attempt of a keys frame (same index), as float64.

    ``keys`` needs ``promo_code`` and ``promo_type`` and may carry ``is_guest``, ``account_key`` and
    ``account_segment``; ``promotions`` is the catalog (``promo_code``, ``single_use``,
    ``per_customer_limit``, ``eligible_segment``), None when there is none.
    """
    policy = _policy(keys, promotions)
    guest = _guest(keys)
    ptype = keys["promo_type"].astype(object).to_numpy()
    out: dict[str, np.ndarray] = {"guest_checkout": guest.astype(np.float64)}
    for t in PROMO_TYPE_FLAGS:
        out[f"promo_is_{t}"] = (ptype == t).astype(np.float64)
    limit = policy["per_customer_limit"].to_numpy(dtype="float64", na_value=np.nan)
    out["one_per_customer"] = (policy["single_use"].to_numpy(dtype=bool) | (limit == 1)).astype(np.float64)
    seg = policy["eligible_segment"].to_numpy(dtype=object)
    named = pd.notna(seg)
    if "account_segment" in keys:
        acct = keys["account_segment"].astype(object).to_numpy()
    else:
        acct = np.full(len(keys), None, dtype=object)
    acct_f, seg_f = _folded(acct), _folded(seg)
    other = acct_f.isna().to_numpy() | (acct_f != seg_f).fillna(True).to_numpy(dtype=bool)
    out["segment_ineligible"] = (named & (guest | other)).astype(np.float64)
    return pd.DataFrame(out, index=keys.index)


def referral_links(keys: pd.DataFrame, *, window_s: float = REFERRAL_WINDOW_S) -> pd.DataFrame:
    """``referrer_shared_hard_kinds`` and ``referrer_is_account`` for every attempt (same index).

    For an attempt naming a referrer account R at time t, a hard identity kind counts when R made some
    attempt carrying the same key of that kind within ``[t - window_s, t)``: strictly earlier, so the
    value is known before the attempt, exactly what serving's ``xref`` counters answer. Attempts
    without a referrer get 0 and 0.
    """
    n = len(keys)
    shared = np.zeros(n, dtype=np.float64)
    referrer = keys["referrer_key"].to_numpy(dtype=object) if "referrer_key" in keys else np.full(n, None)
    has_ref = pd.notna(referrer)
    account = keys["account_key"].to_numpy(dtype=object) if "account_key" in keys else np.full(n, None)
    is_account = has_ref & (referrer == account)
    if has_ref.any():
        ts = pd.to_datetime(keys["ts"], utc=True).to_numpy(dtype="datetime64[us]").astype(np.int64)
        window_us = int(window_s * 1_000_000)
        queries = np.flatnonzero(has_ref)
        for kind in HARD_IDENTITIES:
            col = f"{kind}_key"
            if col not in keys:
                continue
            key = keys[col].to_numpy(dtype=object)
            seen = np.flatnonzero(pd.notna(account) & pd.notna(key))
            q = queries[pd.notna(key[queries])]
            if not len(seen) or not len(q):
                continue
            # Last time each (account, key) pair was seen strictly before each query's time.
            left = pd.DataFrame({"pair": _pair(referrer[q], key[q]), "t": ts[q], "row": q}).sort_values("t")
            right = pd.DataFrame({"pair": _pair(account[seen], key[seen]), "seen_t": ts[seen]}).sort_values(
                "seen_t"
            )
            hit = pd.merge_asof(
                left,
                right,
                left_on="t",
                right_on="seen_t",
                by="pair",
                allow_exact_matches=False,
                direction="backward",
            )
            inside = hit["seen_t"].notna().to_numpy() & (
                hit["t"].to_numpy() - hit["seen_t"].fillna(0).to_numpy(dtype=np.int64) <= window_us
            )
            shared[hit["row"].to_numpy()[inside]] += 1
    return pd.DataFrame(
        {"referrer_shared_hard_kinds": shared, "referrer_is_account": is_account.astype(np.float64)},
        index=keys.index,
    )


def _pair(left: np.ndarray, right: np.ndarray) -> np.ndarray:
    pairs = [f"{a}\x1f{b}" for a, b in zip(left.tolist(), right.tolist(), strict=True)]
    return np.asarray(pairs, dtype=object)


def add_context(
    keys: pd.DataFrame, promotions: pd.DataFrame | None, graph: GraphConfig | None = None
) -> pd.DataFrame:
    """``keys`` with every :data:`CONTEXT_COLUMNS` column added (replaced when already there).

    The graph columns come from resolving every attempt in time order (:func:`features.graph.build_graph`),
    so each row holds what serving resolved at that attempt.
    """
    out = keys.drop(columns=[c for c in CONTEXT_COLUMNS if c in keys.columns])
    return pd.concat(
        [out, context_frame(keys, promotions), referral_links(keys), graph_context(keys, graph)], axis=1
    )


def request_context(
    promotion: Mapping[str, Any],
    account: Mapping[str, Any],
    shared_kinds: int,
    referrer_is_account: bool,
    graph: Mapping[str, float] | None = None,
) -> dict[str, float]:
    """Every context column of one request, from plain mappings of its promotion and account.

    ``graph`` holds the attempt's :data:`GRAPH_COLUMNS` (``Resolution.features()``); without it (the
    graph store is down) they are NaN, which the model reads as missing.
    """
    out = promotion_context(
        promo_type=promotion.get("type"),
        is_guest=bool(account.get("is_guest")),
        single_use=bool(promotion.get("single_use")),
        per_customer_limit=promotion.get("per_customer_limit"),
        eligible_segment=promotion.get("eligible_segment"),
        account_segment=account.get("segment"),
    )
    out.update(referral_context(shared_kinds, referrer_is_account))
    for col in GRAPH_COLUMNS:
        out[col] = float(graph[col]) if graph is not None and col in graph else float("nan")
    return out
