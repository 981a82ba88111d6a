"""The loss ledger: money saved and lost, honest refusals and recall per campaign, bots apart."""

from __future__ import annotations

import pandas as pd
import pytest

from replay.ledger import (
    UNKNOWN_CAMPAIGN,
    agreement,
    attempts_frame,
    campaign_ledger,
    totals,
    type_ledger,
)

LEDGER_KEYS = {
    "campaign",
    "promo_type",
    "attempts",
    "allowed",
    "watched",
    "verified",
    "refused",
    "discount_saved",
    "discount_lost",
    "honest_refused",
    "honest_verified",
    "pattern_recall",
}


def _frame(rows: list[tuple[str, str, str, bool, float, bool, str | None]]) -> pd.DataFrame:
    decisions = pd.DataFrame({"request_id": [r[0] for r in rows], "decision": [r[2] for r in rows]})
    events = pd.DataFrame(
        {
            "request_id": [r[0] for r in rows],
            "promo_code": [r[1] for r in rows],
            "promo_type": ["welcome" if r[1].startswith("W") else "sitewide" for r in rows],
            "promo_valid": [r[3] for r in rows],
            "discount_value": [r[4] for r in rows],
        }
    )
    promotions = pd.DataFrame({"promo_code": ["W10", "S20"], "campaign": ["welcome_2026", "summer"]})
    truth = pd.DataFrame(
        {
            "request_id": [r[0] for r in rows],
            "is_abuse": [r[5] for r in rows],
            "pattern": [r[6] for r in rows],
        }
    )
    return attempts_frame(decisions, events, promotions, truth, None)


ROWS = [
    ("a", "W10", "refuse", True, 10.0, True, "welcome_cycling"),
    ("b", "W10", "verify", True, 10.0, True, "welcome_cycling"),
    ("c", "W10", "allow", True, 10.0, True, "welcome_cycling"),
    ("d", "W10", "refuse", True, 10.0, False, None),
    ("e", "W10", "verify", True, 10.0, False, None),
    ("f", "S20", "allow", True, 20.0, False, None),
    ("g", "BAD1", "refuse", False, 0.0, True, "bot_spray"),
]


def test_saved_and_lost_discount_split_abuse_by_decision() -> None:
    welcome = next(
        r for r in campaign_ledger(_frame(ROWS), verify_stops=0.5) if r["campaign"] == "welcome_2026"
    )
    # Refused abuse saves its 10; verified abuse half of it; allowed abuse and the unstopped half are lost.
    assert welcome["discount_saved"] == pytest.approx(15.0)
    assert welcome["discount_lost"] == pytest.approx(15.0)
    assert (welcome["honest_refused"], welcome["honest_verified"]) == (1, 1)
    assert (welcome["allowed"], welcome["watched"], welcome["verified"], welcome["refused"]) == (1, 0, 2, 2)
    assert welcome["recall"] == pytest.approx(2 / 3)


def test_every_campaign_row_has_the_ledger_keys_and_unknown_codes_have_a_campaign_of_their_own() -> None:
    rows = campaign_ledger(_frame(ROWS))
    assert {r["campaign"] for r in rows} == {"welcome_2026", "summer", UNKNOWN_CAMPAIGN}
    for row in rows:
        assert set(row) >= LEDGER_KEYS
    invalid = next(r for r in rows if r["campaign"] == UNKNOWN_CAMPAIGN)
    assert invalid["discount_saved"] == 0.0  # an invalid code gives nothing away either way


def test_pattern_recall_is_n_a_below_the_minimum_and_bots_are_apart() -> None:
    many = ROWS + [
        (f"w{i}", "W10", "refuse" if i % 4 else "allow", True, 10.0, True, "welcome_cycling")
        for i in range(40)
    ]
    t = totals(_frame(many))
    assert t["pattern_recall"]["bot_spray"] is None
    assert t["pattern_recall"]["welcome_cycling"] == pytest.approx((2 + 30) / 43)
    assert t["recall_seed_patterns"] == pytest.approx((2 + 30) / 43)
    assert t["recall_bots"] == 1.0


def test_without_truth_the_labels_as_known_decide_what_is_abuse() -> None:
    decisions = pd.DataFrame({"request_id": ["a", "b"], "decision": ["refuse", "allow"]})
    events = pd.DataFrame(
        {
            "request_id": ["a", "b"],
            "promo_code": ["X", "X"],
            "promo_type": ["sitewide"] * 2,
            "promo_valid": [True, True],
            "discount_value": [5.0, 5.0],
        }
    )
    labels = pd.DataFrame({"request_id": ["a"], "label": ["abuse"]})
    frame = attempts_frame(decisions, events, None, None, labels)
    assert frame["abuse"].tolist() == [True, False]
    assert type_ledger(frame)[0]["recall"] == 1.0


def test_agreement_counts_equal_decisions_and_switches() -> None:
    a = pd.DataFrame({"request_id": ["1", "2", "3"], "decision": ["allow", "refuse", "verify"]})
    b = pd.DataFrame({"request_id": ["1", "2", "3"], "decision": ["allow", "verify", "verify"]})
    out = agreement(a, b, ("model", "rules"))
    assert out["same_decision"] == pytest.approx(2 / 3)
    assert out["switches"]["refuse->verify"] == 1
    assert sum(out["switches"].values()) == 1
