"""Recorded events as the /score bodies checkout would have sent: the inverse of the event record.

A backtest, a benchmark and an end-to-end test all need the request a historical attempt would have
been, with the promotion's policy as the store's promo engine knows it. This is the one place that
builds it, so what is replayed and what is sent over HTTP are the same body.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import pandas as pd

_ADDRESS_PARTS = ("line1", "line2", "city", "region", "postal_code", "country")


def _text(value: Any) -> str | None:
    """A present, non-blank value as text; None for None, NaN, NaT and blanks."""
    if value is None or value is pd.NA or value is pd.NaT:
        return None
    if isinstance(value, float) and math.isnan(value):
        return None
    text = str(value)
    return text if text.strip() else None


def _number(value: Any) -> float | None:
    if value is None or value is pd.NA:
        return None
    number = float(value)
    return None if math.isnan(number) else number


def promotion_body(event: Mapping[str, Any], policy: Mapping[str, Any] | None) -> dict[str, Any]:
    """The ``promotion`` part: code, type, validity and discount of the event, policy from the catalog."""
    promotion: dict[str, Any] = {
        "code": str(event["promo_code"]),
        "type": str(event["promo_type"]),
        "valid": bool(event["promo_valid"]),
    }
    discount = _number(event.get("discount_value"))
    if discount is not None:
        promotion["discount_value"] = discount
    if policy is not None:
        promotion["single_use"] = bool(policy.get("single_use") or False)
        limit = _number(policy.get("per_customer_limit"))
        if limit is not None:
            promotion["per_customer_limit"] = int(limit)
        segment = _text(policy.get("eligible_segment"))
        if segment is not None:
            promotion["eligible_segment"] = segment
    referrer = _text(event.get("referrer_account_id"))
    if referrer is not None:
        promotion["referrer_account_id"] = referrer
    return promotion


def request_body(
    event: Mapping[str, Any], policy: Mapping[str, Any] | None, *, with_timestamp: bool = True
) -> dict[str, Any]:
    """The /score body of one recorded event (raw identity included, as checkout sends it).

    ``policy`` is the event's row of the promotions catalog (None for a code the catalog does not
    know). Missing optional parts are left out rather than sent empty.
    """
    guest = bool(event.get("is_guest")) or _text(event.get("account_id")) is None
    account: dict[str, Any] = {"is_guest": guest}
    if not guest:
        account["account_id"] = _text(event["account_id"])
        segment = _text(event.get("account_segment"))
        if segment is not None:
            account["segment"] = segment
        created = event.get("account_created_at")
        if created is not None and _text(created) is not None:
            account["created_at"] = pd.Timestamp(created).isoformat()
    body: dict[str, Any] = {
        "request_id": str(event["request_id"]),
        "promotion": promotion_body(event, policy),
        "account": account,
        "email": _text(event.get("email")),
        "phone": _text(event.get("phone")),
        "payment": {
            "fingerprint": _text(event.get("payment_fingerprint")),
            "bin": _text(event.get("payment_bin")),
            "last4": _text(event.get("payment_last4")),
        },
        "device": {
            "device_id": _text(event.get("device_id")),
            "local_ip": _text(event.get("local_ip")),
            "user_agent": _text(event.get("user_agent")),
        },
        "ip": _text(event.get("ip")),
    }
    for prefix, name in (("ship", "shipping_address"), ("bill", "billing_address")):
        address = {part: _text(event.get(f"{prefix}_{part}")) for part in _ADDRESS_PARTS}
        if any(v is not None for v in address.values()):
            body[name] = address
    total = _number(event.get("cart_total"))
    if total is not None:
        body["cart"] = {"total": total, "currency": _text(event.get("currency")) or "USD"}
    if with_timestamp and _text(event.get("ts")) is not None:
        body["timestamp"] = pd.Timestamp(event["ts"]).isoformat()
    return body


def request_bodies(events: pd.DataFrame, promotions: pd.DataFrame | None) -> list[dict[str, Any]]:
    """One body per event, in the frame's order, each with its code's policy from ``promotions``."""
    catalog: dict[str, dict[str, Any]] = {}
    if promotions is not None and not promotions.empty:
        for row in promotions.drop_duplicates("promo_code", keep="last").to_dict("records"):
            catalog[str(row["promo_code"])] = {str(k): v for k, v in row.items()}
    rows = ({str(k): v for k, v in ev.items()} for ev in events.to_dict("records"))
    return [request_body(ev, catalog.get(str(ev["promo_code"]))) for ev in rows]
