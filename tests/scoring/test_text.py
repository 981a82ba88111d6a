"""Human units: counts, durations, shares and the rules table's template language."""

from __future__ import annotations

import math

import pytest

from scoring import text


def test_numbers_never_carry_more_than_two_decimals() -> None:
    assert [text.number(v) for v in (0, 1.0, 2.5, 2159.8234, 1e12, -0.001)] == [
        "0",
        "1",
        "2.5",
        "2159.82",
        "1000000000000",
        "0",
    ]


def test_counts_are_pluralised() -> None:
    assert text.plural(1, "account") == "1 account"
    assert text.plural(6, "account") == "6 accounts"
    assert text.plural(2, "address", "addresses") == "2 addresses"
    assert text.some(0, "promo attempt") == "no promo attempts"
    assert [text.times(n) for n in (0, 1, 2, 7)] == ["never", "once", "twice", "7 times"]


@pytest.mark.parametrize(
    ("hours", "expected"),
    [
        (0, "less than a minute"),
        (0.5, "30 minutes"),
        (1 / 60, "1 minute"),
        (1, "1 hour"),
        (5.4, "5 hours"),
        (47, "47 hours"),
        (2159.82, "90 days"),
        (24 * 800, "2 years"),
        (-3, "less than a minute"),
    ],
)
def test_durations_read_in_the_unit_that_fits(hours: float, expected: str) -> None:
    assert text.duration_hours(hours) == expected


def test_shares_are_percentages() -> None:
    assert [text.percent(v) for v in (0, 1, 0.4, 0.333333, 0.004)] == ["0%", "100%", "40%", "33%", "0.4%"]


def test_templates_fill_specs_and_drop_optional_parts_with_missing_values() -> None:
    template = "device used by {n:count:account}[ via {provider}] {h:hours} ago"
    assert (
        text.render(template, {"n": 1.0, "provider": "aws", "h": 3})
        == "device used by 1 account via aws 3 hours ago"
    )
    assert (
        text.render(template, {"n": 6, "provider": None, "h": 0.25})
        == "device used by 6 accounts 15 minutes ago"
    )
    assert text.render("{x}", {"x": math.nan}) == text.MISSING_TEXT
    # A value that looks like a template is printed, never expanded.
    assert text.render("[{x}]", {"x": "{y}"}) == "{y}"


def test_template_fields_split_required_from_optional_and_reject_unknown_specs() -> None:
    assert text.template_fields("a {x:times}[ b {y}]") == ({"x"}, {"y"})
    with pytest.raises(ValueError, match="unknown format spec"):
        text.template_fields("{x:weeks}")
