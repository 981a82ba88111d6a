"""Promotion and referral context: one definition for a request and for a keys frame."""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest

from features.context import (
    CONTEXT_COLUMNS,
    REFERRAL_WINDOW_S,
    add_context,
    context_frame,
    promotion_context,
    referral_links,
)

T0 = pd.Timestamp("2026-06-01", tz="UTC")


def _catalog() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "promo_code": ["WELCOME10", "ONCE", "WHOLESALE20", "SAVE10"],
            "single_use": [False, True, False, False],
            "per_customer_limit": pd.array([1, None, None, None], dtype="Int64"),
            "eligible_segment": [None, None, "wholesale", None],
        }
    )


def test_wholesale_code_in_guest_checkout_is_ineligible_and_the_trade_buyer_is_not() -> None:
    guest = promotion_context(
        promo_type="wholesale", is_guest=True, single_use=False, per_customer_limit=None,
        eligible_segment="wholesale", account_segment=None,
    )
    buyer = promotion_context(
        promo_type="wholesale", is_guest=False, single_use=False, per_customer_limit=None,
        eligible_segment="wholesale", account_segment="wholesale",
    )
    assert guest["segment_ineligible"] == 1.0 and guest["guest_checkout"] == 1.0
    assert guest["promo_is_wholesale"] == 1.0
    assert buyer["segment_ineligible"] == 0.0 and buyer["guest_checkout"] == 0.0


def test_a_segment_spelled_in_another_case_is_still_the_codes_segment() -> None:
    def ineligible(account_segment: str | None) -> float:
        return promotion_context(
            promo_type="wholesale", is_guest=False, single_use=False, per_customer_limit=None,
            eligible_segment="wholesale", account_segment=account_segment,
        )["segment_ineligible"]

    assert [ineligible(s) for s in ("Wholesale", " WHOLESALE ", "consumer", None)] == [0.0, 0.0, 1.0, 1.0]


def test_one_per_customer_means_single_use_or_a_limit_of_one() -> None:
    def one(single: bool, limit: int | None) -> float:
        return promotion_context(
            promo_type="sitewide", is_guest=False, single_use=single, per_customer_limit=limit,
            eligible_segment=None, account_segment=None,
        )["one_per_customer"]

    assert (one(True, None), one(False, 1), one(False, 3), one(False, None)) == (1.0, 1.0, 0.0, 0.0)


def test_frame_and_request_agree_on_every_combination() -> None:
    combos = list(itertools.product(
        ["WELCOME10", "ONCE", "WHOLESALE20", "SAVE10", "NOPE"],
        [True, False],
        ["wholesale", " Wholesale", "consumer", None],
    ))
    ptype = {"WELCOME10": "welcome", "ONCE": "sitewide", "WHOLESALE20": "wholesale"}
    keys = pd.DataFrame(
        {
            "promo_code": [c for c, _, _ in combos],
            "promo_type": [ptype.get(c, "sitewide") for c, _, _ in combos],
            "is_guest": [g for _, g, _ in combos],
            "account_key": [None if g else "acct" for _, g, _ in combos],
            "account_segment": [None if g else s for _, g, s in combos],
        }
    )
    frame = context_frame(keys, _catalog())
    catalog = _catalog().set_index("promo_code")
    for i, (code, guest, segment) in enumerate(combos):
        policy = catalog.loc[code] if code in catalog.index else None
        expected = promotion_context(
            promo_type=keys.loc[i, "promo_type"],
            is_guest=guest,
            single_use=bool(policy["single_use"]) if policy is not None else False,
            per_customer_limit=None if policy is None or pd.isna(policy["per_customer_limit"])
            else int(policy["per_customer_limit"]),
            eligible_segment=None if policy is None else policy["eligible_segment"],
            account_segment=None if guest else segment,
        )
        assert frame.loc[i].to_dict() == expected, (code, guest, segment)


def _referral_keys() -> pd.DataFrame:
    day = pd.Timedelta(days=1)
    rows = [
        # The referrer's own order from a device and a household.
        dict(ts=T0, account_key="ref", device_key="d1", household_key="h1", referrer_key=None),
        # A referee on the referrer's device ten days later: one shared kind.
        dict(ts=T0 + 10 * day, account_key="a2", device_key="d1", household_key="h9", referrer_key="ref"),
        # Same device and household but 40 days later: outside the 30-day window.
        dict(ts=T0 + 40 * day, account_key="a3", device_key="d1", household_key="h1", referrer_key="ref"),
        # Same instant as the referrer's order: not strictly earlier, so not known yet.
        dict(ts=T0, account_key="a4", device_key="d1", household_key="h1", referrer_key="ref"),
        # The referrer redeeming its own code.
        dict(ts=T0 + day, account_key="ref", device_key="d1", household_key="h1", referrer_key="ref"),
        # A stranger: nothing shared.
        dict(ts=T0 + 2 * day, account_key="a5", device_key="d7", household_key="h7", referrer_key="ref"),
    ]
    frame = pd.DataFrame(rows)
    frame.insert(0, "request_id", [f"r{i}" for i in range(len(frame))])
    for kind in ("payment", "phone", "local_ip"):
        frame[f"{kind}_key"] = None
    return frame


def test_referral_links_count_kinds_the_referrer_carried_in_the_30_days_before() -> None:
    links = referral_links(_referral_keys())
    assert links["referrer_shared_hard_kinds"].tolist() == [0.0, 1.0, 0.0, 0.0, 2.0, 0.0]
    assert links["referrer_is_account"].tolist() == [0.0, 0.0, 0.0, 0.0, 1.0, 0.0]


def test_referral_window_edge_is_inclusive_like_the_velocity_counter() -> None:
    keys = _referral_keys().iloc[[0, 1]].reset_index(drop=True)
    keys.loc[1, "ts"] = T0 + pd.Timedelta(seconds=REFERRAL_WINDOW_S)
    assert referral_links(keys)["referrer_shared_hard_kinds"].tolist() == [0.0, 1.0]
    keys.loc[1, "ts"] = T0 + pd.Timedelta(seconds=REFERRAL_WINDOW_S + 1)
    assert referral_links(keys)["referrer_shared_hard_kinds"].tolist() == [0.0, 0.0]


def test_add_context_adds_every_column_once_and_keeps_the_rest() -> None:
    keys = _referral_keys()
    keys["promo_code"] = "SAVE10"
    keys["promo_type"] = "sitewide"
    keys["is_guest"] = False
    out = add_context(add_context(keys, _catalog()), _catalog())
    assert list(out.columns) == [*keys.columns, *CONTEXT_COLUMNS]
    assert np.all(out[list(CONTEXT_COLUMNS)].to_numpy() >= 0)


def test_missing_catalog_means_no_policy() -> None:
    keys = pd.DataFrame({"promo_code": ["ONCE"], "promo_type": ["sitewide"], "is_guest": [False]})
    assert context_frame(keys, None).loc[0, "one_per_customer"] == 0.0
    with pytest.raises(KeyError):
        context_frame(keys.drop(columns=["promo_type"]), None)
