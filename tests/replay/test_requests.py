"""Recorded events become the /score bodies checkout sends, and back again without loss."""

from __future__ import annotations

import math

import pandas as pd

from replay.requests import request_bodies, request_body
from scoring.schemas import ScoreRequest, to_event_record

EVENT = {
    "request_id": "r1",
    "ts": pd.Timestamp("2026-06-03 10:00", tz="UTC"),
    "promo_code": "WELCOME10",
    "promo_type": "welcome",
    "promo_valid": True,
    "discount_value": 10.0,
    "referrer_account_id": None,
    "account_id": "acct_1",
    "is_guest": False,
    "account_created_at": pd.Timestamp("2026-06-03 09:58", tz="UTC"),
    "account_segment": "consumer",
    "email": "Jane.Doe+x@gmail.com",
    "phone": "+1 415-555-0100",
    "ship_line1": "1 Main St",
    "ship_line2": None,
    "ship_city": "San Francisco",
    "ship_region": "CA",
    "ship_postal_code": "94110",
    "ship_country": "US",
    "bill_line1": None,
    "bill_line2": None,
    "bill_city": None,
    "bill_region": None,
    "bill_postal_code": None,
    "bill_country": None,
    "payment_fingerprint": "fp1",
    "payment_bin": "424242",
    "payment_last4": "4242",
    "device_id": "dev-1",
    "local_ip": "192.168.1.5",
    "ip": "73.1.2.3",
    "user_agent": "Mozilla/5.0",
    "cart_total": 52.5,
    "currency": "USD",
    "outcome": "redeemed",
}
POLICY = {"promo_code": "WELCOME10", "single_use": False, "per_customer_limit": 1, "eligible_segment": None}


def test_a_body_resolves_back_to_the_event_it_came_from() -> None:
    record = to_event_record(ScoreRequest.model_validate(request_body(EVENT, POLICY)))
    for field, value in record.items():
        if field in EVENT:
            expected = EVENT[field]
            if isinstance(expected, pd.Timestamp):
                assert pd.Timestamp(value) == expected, field
            else:
                assert value == expected, field


def test_the_promotion_carries_the_catalog_policy_and_an_unknown_code_none() -> None:
    body = request_body(EVENT, POLICY)
    assert body["promotion"] == {
        "code": "WELCOME10",
        "type": "welcome",
        "valid": True,
        "discount_value": 10.0,
        "single_use": False,
        "per_customer_limit": 1,
    }
    unknown = request_body({**EVENT, "promo_code": "TYPO10", "promo_valid": False}, None)
    assert unknown["promotion"] == {
        "code": "TYPO10",
        "type": "welcome",
        "valid": False,
        "discount_value": 10.0,
    }


def test_a_guest_has_no_account_and_missing_parts_are_left_out() -> None:
    guest = {
        **EVENT,
        "account_id": None,
        "is_guest": True,
        "ship_line1": None,
        "ship_city": None,
        "ship_region": None,
        "ship_postal_code": None,
        "ship_country": None,
        "cart_total": math.nan,
    }
    body = request_body(guest, None)
    assert body["account"] == {"is_guest": True}
    assert "shipping_address" not in body and "billing_address" not in body and "cart" not in body
    ScoreRequest.model_validate(body)


def test_bodies_follow_the_frame_order_and_look_up_each_code() -> None:
    frame = pd.DataFrame(
        [EVENT, {**EVENT, "request_id": "r2", "promo_code": "SAVE10", "promo_type": "sitewide"}]
    )
    bodies = request_bodies(frame, pd.DataFrame([POLICY]))
    assert [b["request_id"] for b in bodies] == ["r1", "r2"]
    assert bodies[0]["promotion"]["per_customer_limit"] == 1
    assert "per_customer_limit" not in bodies[1]["promotion"]
