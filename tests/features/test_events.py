"""The event, label and promotion contract: good frames pass, bad rows are named, never dropped."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pandas as pd
import pytest

from features.events import (
    EVENT_COLUMNS,
    ContractError,
    LabelRecord,
    RedemptionEvent,
    events_from_records,
    parse_record,
    validate_events,
    validate_labels,
    validate_promotions,
)

T0 = datetime(2026, 6, 1, tzinfo=UTC)


def _event(i: int, **overrides: object) -> RedemptionEvent:
    data: dict[str, object] = {
        "request_id": f"r{i}",
        "ts": T0 + timedelta(minutes=i),
        "promo_code": "WELCOME10",
        "promo_type": "welcome",
        "discount_value": 10.0,
        "email": f"shopper{i}@example.com",
        "ship_line1": "123 Main St Apt 4B",
        "ship_postal_code": "94110",
        "ip": "73.1.2.3",
        "cart_total": 54.5,
        "outcome": "redeemed",
    }
    data.update(overrides)
    return parse_record(RedemptionEvent, data)


def test_records_build_a_frame_that_passes_the_contract() -> None:
    frame = events_from_records([_event(i) for i in range(5)])
    checked = validate_events(frame)
    assert list(checked.columns) == list(EVENT_COLUMNS)
    assert len(checked) == 5
    assert str(checked["ts"].dtype) == "datetime64[ns, UTC]"


def test_bad_frame_rows_are_reported_by_field_and_row_not_dropped() -> None:
    frame = events_from_records([_event(i) for i in range(4)])
    frame.loc[2, "promo_type"] = "mystery"
    frame.loc[3, "cart_total"] = -1.0
    with pytest.raises(ContractError) as excinfo:
        validate_events(frame)
    message = str(excinfo.value)
    assert "events.promo_type" in message and "mystery" in message
    assert "events.cart_total" in message
    assert "rows [2]" in message and "rows [3]" in message
    assert len(frame) == 4  # validation never drops what it was given


def test_codes_come_back_in_one_case_and_the_frame_given_is_left_as_it_was() -> None:
    frame = events_from_records([_event(1, promo_code="welcome10 "), _event(2, promo_code="Welcome10")])
    checked = validate_events(frame)
    assert checked["promo_code"].tolist() == ["WELCOME10", "WELCOME10"]
    assert frame["promo_code"].tolist() == ["welcome10", "Welcome10"]


def test_one_code_listed_twice_in_two_cases_is_a_duplicate_promotion() -> None:
    catalog = pd.DataFrame({
        "promo_code": ["Save10", "SAVE10"], "promo_type": ["sitewide", "sitewide"], "campaign": ["c", "c"],
        "discount_value": [10.0, 10.0], "single_use": [False, False],
        "per_customer_limit": pd.array([None, None], dtype="Int64"), "eligible_segment": [None, None],
        "referrer_account_id": [None, None],
        "starts_at": pd.to_datetime([T0, T0], utc=True), "ends_at": pd.to_datetime([None, None], utc=True),
    })
    with pytest.raises(ContractError, match=r"promotions\.promo_code"):
        validate_promotions(catalog)


def test_duplicate_request_ids_break_the_contract() -> None:
    frame = events_from_records([_event(1), _event(2)])
    frame.loc[1, "request_id"] = "r1"
    with pytest.raises(ContractError, match=r"events\.request_id"):
        validate_events(frame)


def test_unknown_columns_are_rejected_by_name() -> None:
    frame = events_from_records([_event(1)])
    frame["actor_id"] = "a1"
    with pytest.raises(ContractError, match="actor_id"):
        validate_events(frame)


def test_single_record_errors_name_the_field() -> None:
    with pytest.raises(ContractError, match="promo_type"):
        _event(1, promo_type="bogus")
    with pytest.raises(ContractError, match="discount_value"):
        _event(1, discount_value=-5)
    with pytest.raises(ContractError, match="score"):
        _event(1, score=3)


def test_labels_contract_checks_values_and_arrival_time_type() -> None:
    good = pd.DataFrame(
        {
            "request_id": ["r1", "r2"],
            "label": ["abuse", "legit"],
            "label_source": ["manual_review", "policy_audit"],
            "label_ts": pd.to_datetime([T0 + timedelta(days=3), T0 + timedelta(days=9)], utc=True),
        }
    )
    assert len(validate_labels(good)) == 2
    bad = good.copy()
    bad.loc[1, "label"] = "maybe"
    with pytest.raises(ContractError, match=r"labels\.label"):
        validate_labels(bad)
    record = parse_record(
        LabelRecord,
        {"request_id": "r1", "label": "abuse", "label_source": "feedback_api", "label_ts": T0.isoformat()},
    )
    assert record.label.value == "abuse"
