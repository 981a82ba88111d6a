"""Reason codes: one enum, documented once, covering every rule and every feature group; readable text."""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from scoring import text
from scoring.reasons import (
    ENTITIES,
    REASON_CODES,
    catalog_features,
    concept,
    describe_group,
    feature_reason,
    grouping,
)
from scoring.rules import default_rules
from scoring.signals import model_signals

README = Path(__file__).resolve().parents[2] / "README.md"
#: Edge values every description must survive: zero, one, missing (both spellings) and huge.
EDGES: tuple[Any, ...] = (0.0, 1.0, None, math.nan, 1e12)
_BAD = re.compile(r"\bnan\b|\bNone\b|\bunknown\b|\binf\b|\d+\.\d{3,}|[{}]", re.IGNORECASE)


def _readable(description: str) -> None:
    assert description and description.strip() == description, repr(description)
    assert not _BAD.search(description), description


def _readme_codes() -> list[str]:
    section = README.read_text(encoding="utf-8").split("## The scoring API", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"^\| `([A-Z_]+)` \|", section, flags=re.MULTILINE)


def test_the_readme_table_and_the_enum_list_the_same_codes_once() -> None:
    codes = _readme_codes()
    assert len(codes) == len(set(codes))
    assert set(codes) == set(REASON_CODES)
    for code in REASON_CODES:
        assert concept(code).meaning


def test_every_rule_and_every_feature_group_has_a_documented_code() -> None:
    documented = set(_readme_codes())
    for rule in default_rules().rules:
        assert rule.code in documented, rule.id
        assert "rule" in concept(rule.code).emitted_by, rule.code
    groups = {feature_reason(f).code for f in catalog_features()}  # type: ignore[union-attr]
    assert groups <= documented
    rule_codes = {r.code for r in default_rules().rules} | {"CUSTOM_RULE"}
    # "emitted by" in the table tells the truth both ways.
    assert {c for c in REASON_CODES if "rule" in concept(c).emitted_by} == rule_codes
    # An absent identity's counts are reported under its missing code, which may have no feature of its own.
    missing = {e.missing_code for e in ENTITIES.values() if e.missing_code}
    assert {c for c in REASON_CODES if "model" in concept(c).emitted_by} == groups | missing | {
        "BASELINE",
        "OTHER_FACTORS",
    }


def test_features_of_one_view_and_family_are_one_concept() -> None:
    assert {
        feature_reason(f).code
        for f in (  # type: ignore[union-attr]
            "device_stats__distinct_accounts_24h",
            "device_stats__distinct_accounts_30d",
            "device_stats__distinct_emails_30d",
        )
    } == {"DEVICE_SHARED_ACCOUNTS"}
    assert feature_reason("household_code_stats__redeemed_total").code == "HOUSEHOLD_CODE_REUSE"  # type: ignore[union-attr]
    assert feature_reason("promo_is_welcome").code == "PROMO_TYPE"  # type: ignore[union-attr]
    assert feature_reason("made_up_feature") is None


@pytest.mark.parametrize("feature", catalog_features())
def test_every_feature_description_reads_in_human_units_for_edge_values(feature: str) -> None:
    reason = feature_reason(feature)
    assert reason is not None
    for value in EDGES:
        clean = None if value is None or (isinstance(value, float) and math.isnan(value)) else value
        _readable(reason.describe(clean))
    plan = grouping((feature,))
    for value in EDGES:
        _readable(describe_group(plan, 0, [np.nan if value is None else value], [1.0]))
        _readable(
            describe_group(plan, 0, [value if value is not None else np.nan], [1.0], absent=set(ENTITIES))
        )


def test_a_new_code_and_durations_read_as_people_say_them() -> None:
    age = feature_reason("code_stats__hours_since_first_use")
    share = feature_reason("code_stats__new_account_share_7d")
    accounts = feature_reason("account_stats__attempts_1h")
    assert age is not None and share is not None and accounts is not None
    assert age.describe(None) == "new code, no history yet"
    assert age.describe(2159.82) == "code first used 90 days ago"
    assert (
        share.describe(1.0)
        == "100% of this code's attempts in the last 7 days came from new accounts or guests"
    )
    assert accounts.describe(1.0) == "1 promo attempt from this account in the last hour"
    plan = grouping(("account_stats__attempts_1h",))
    assert (
        describe_group(plan, 0, [np.nan], [1.0], absent={"account"})
        == "guest checkout, so no account history"
    )


@pytest.mark.parametrize("rule", default_rules().rules, ids=lambda r: r.id)
def test_every_rule_description_reads_in_human_units_for_edge_values(rule: Any) -> None:
    required, optional = text.template_fields(rule.description)
    for value in EDGES:
        values = {name: value for name in required | optional}
        # A required field is guaranteed by the rule's own condition: it is never missing when it matches.
        values.update({name: 1.0 for name in required if value is None or value != value})
        _readable(text.render(rule.description, values))


def test_grouped_model_signals_sum_points_and_describe_the_most_telling_member() -> None:
    names = [
        "device_stats__distinct_accounts_24h",
        "device_stats__distinct_accounts_30d",
        "email_disposable",
        "unknown_feature",
    ]
    contrib = np.array([2.0, 1.0, 0.5, 0.25, -1.0])
    values = np.array([6.0, 9.0, 1.0, 3.0])
    sigs = model_signals(contrib, names, values, score=47, baseline_points=5)
    assert sum(s.points for s in sigs) == 47
    device = next(s for s in sigs if s.code == "DEVICE_SHARED_ACCOUNTS")
    assert device.description == "device used by 6 accounts in the last 24 hours"
    assert [s.code for s in sigs].count("DEVICE_SHARED_ACCOUNTS") == 1
    assert sigs[-1].code == "OTHER_FACTORS"  # the unknown feature's points


def test_the_counts_of_an_identity_the_request_lacked_are_reported_under_its_missing_code() -> None:
    names = [
        "household_stats__abuse_labels",
        "household_stats__attempts_24h",
        "address_missing",
        "device_stats__distinct_accounts_24h",
    ]
    contrib = np.array([3.0, 1.0, 1.0, 2.0, -1.0])
    values = np.array([np.nan, np.nan, 1.0, 6.0])
    sigs = model_signals(contrib, names, values, score=60, baseline_points=5, absent={"household"})
    codes = [s.code for s in sigs]
    assert not [c for c in codes if c.startswith("HOUSEHOLD_")], codes
    missing = next(s for s in sigs if s.code == "ADDRESS_MISSING")
    assert missing.description == "no shipping address was given"
    assert codes.count("ADDRESS_MISSING") == 1
    assert sum(s.points for s in sigs) == 60
    # With the address given, the same counts keep their own codes.
    given = model_signals(contrib, names, np.array([2.0, 4.0, 0.0, 6.0]), score=60, baseline_points=5)
    assert {"HOUSEHOLD_PAST_ABUSE", "HOUSEHOLD_ATTEMPTS"} <= {s.code for s in given}


def test_an_artifact_written_before_codes_gets_codes_from_its_feature_names(artifact_dir: Path) -> None:
    from scoring.artifact import LoadedModel

    model = LoadedModel.from_dir(artifact_dir)
    assert all("code" not in spec for spec in model.signal_specs.values())
    plan = grouping(tuple(model.feature_names))
    assert set(plan.codes) == {
        "DEVICE_SHARED_ACCOUNTS",
        "HOUSEHOLD_SHARED_ACCOUNTS",
        "CODE_ATTEMPTS",
        "EMAIL_DISPOSABLE",
    }
