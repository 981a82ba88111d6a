"""The HTTP contract's models: unknown fields rejected by name, required fields, size limits."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from scoring.schemas import FeedbackRequest, OutcomeRequest, ScoreRequest, to_event_record


def _error_locations(exc: ValidationError) -> list[str]:
    return [".".join(str(p) for p in err["loc"]) for err in exc.errors()]


def test_minimal_request_needs_only_request_id_and_promotion_code() -> None:
    req = ScoreRequest.model_validate({"request_id": "r1", "promotion": {"code": "WELCOME10"}})
    assert req.promotion.code == "WELCOME10"
    assert req.email is None and req.device is None


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"request_id": "r1", "promotion": {"code": "X"}, "score": 0}, "score"),
        ({"request_id": "r1", "promotion": {"code": "X"}, "decision": "allow"}, "decision"),
        ({"request_id": "r1", "promotion": {"code": "X", "discount": 5}}, "promotion.discount"),
        ({"request_id": "r1", "promotion": {"code": "X"}, "device": {"id": "d"}}, "device.id"),
    ],
)
def test_unknown_fields_are_rejected_naming_the_field(body: dict[str, object], field: str) -> None:
    with pytest.raises(ValidationError) as info:
        ScoreRequest.model_validate(body)
    assert field in _error_locations(info.value)


def test_missing_promotion_code_is_named() -> None:
    with pytest.raises(ValidationError) as info:
        ScoreRequest.model_validate({"request_id": "r1", "promotion": {"type": "welcome"}})
    assert "promotion.code" in _error_locations(info.value)


def test_size_limits_reject_oversized_strings_and_carts() -> None:
    with pytest.raises(ValidationError) as info:
        ScoreRequest.model_validate({"request_id": "r" * 129, "promotion": {"code": "X"}})
    assert "request_id" in _error_locations(info.value)
    items = [{"sku": "a"}] * 101
    with pytest.raises(ValidationError) as info:
        ScoreRequest.model_validate({"request_id": "r", "promotion": {"code": "X"}, "cart": {"items": items}})
    assert "cart.items" in _error_locations(info.value)


def test_unknown_promotion_type_is_rejected() -> None:
    with pytest.raises(ValidationError) as info:
        ScoreRequest.model_validate({"request_id": "r", "promotion": {"code": "X", "type": "vip"}})
    assert "promotion.type" in _error_locations(info.value)


def test_timestamps_are_parsed_as_iso8601_and_made_utc() -> None:
    req = ScoreRequest.model_validate(
        {"request_id": "r", "timestamp": "2026-11-21T10:00:00+02:00", "promotion": {"code": "X"}}
    )
    assert req.timestamp is not None and req.timestamp.utcoffset() is not None
    assert req.timestamp.hour == 8


def test_a_timestamp_without_a_utc_form_is_a_validation_error_naming_it() -> None:
    with pytest.raises(ValidationError) as info:
        ScoreRequest.model_validate({"request_id": "r", "timestamp": "0001-01-01T00:03:03+01:00",
                                     "promotion": {"code": "X"}})
    assert "timestamp" in _error_locations(info.value)


@pytest.mark.parametrize(("field", "body"), [
    ("ip", {"ip": "203.0.113"}),
    ("device.local_ip", {"device": {"local_ip": "router.local"}}),
    ("cart.currency", {"cart": {"currency": "US$"}}),
    # A flag is true or false: "yes" or 1 from a caller is a bug to fix, not a guess to make.
    ("promotion.single_use", {"promotion": {"code": "X", "single_use": "yes"}}),
    ("promotion.valid", {"promotion": {"code": "X", "valid": 1}}),
    ("account.is_guest", {"account": {"is_guest": "true"}}),
])
def test_malformed_caller_fields_are_rejected_naming_them(field: str, body: dict[str, object]) -> None:
    with pytest.raises(ValidationError) as info:
        ScoreRequest.model_validate({"request_id": "r", "promotion": {"code": "X"}, **body})
    assert _error_locations(info.value) == [field]


def test_well_formed_addresses_and_currencies_are_accepted_and_shopper_typed_fields_never_rejected() -> None:
    req = ScoreRequest.model_validate({
        "request_id": "r", "promotion": {"code": "X"}, "ip": "2001:db8::1",
        "device": {"local_ip": "192.168.1.4"}, "cart": {"currency": "eur"},
        "email": "not an email", "phone": "12",
    })
    assert req.cart is not None and req.cart.currency == "EUR"
    assert req.email == "not an email" and req.phone == "12"


def test_outcome_and_feedback_accept_only_contract_values() -> None:
    assert OutcomeRequest.model_validate({"request_id": "r", "outcome": "redeemed"}).outcome == "redeemed"
    with pytest.raises(ValidationError):
        OutcomeRequest.model_validate({"request_id": "r", "outcome": "shipped"})
    fb = FeedbackRequest.model_validate({"request_id": "r", "label": "abuse", "source": "manual_review"})
    assert fb.label == "abuse"
    with pytest.raises(ValidationError) as info:
        FeedbackRequest.model_validate({"request_id": "r", "label": "fraud"})
    assert "label" in _error_locations(info.value)


def test_event_record_uses_event_column_names_and_treats_guests_as_accountless() -> None:
    req = ScoreRequest.model_validate({
        "request_id": "r", "promotion": {"code": "X", "referrer_account_id": "ref"},
        "account": {"account_id": "a1", "is_guest": True},
        "shipping_address": {"line1": "1 Main St", "postal_code": "10001"},
        "payment": {"fingerprint": "fp"}, "device": {"device_id": "d", "local_ip": "10.0.0.2"},
    })
    record = to_event_record(req)
    assert record["account_id"] is None and record["is_guest"] is True
    assert record["ship_line1"] == "1 Main St" and record["bill_line1"] is None
    assert record["payment_fingerprint"] == "fp" and record["local_ip"] == "10.0.0.2"
    assert record["referrer_account_id"] == "ref"
