"""Data validation of the current window with great-expectations, built from the reference window.

:func:`build_suite` turns the reference into expectations (columns present, missing rates, value
ranges, the contract's decisions and bands); :func:`validate_current` runs them on the current window
in an ephemeral context and returns one :class:`~monitoring.drift.Violation` per failed expectation.
Features that grow with the calendar (ages, cumulative counts; see :mod:`monitoring.catalog`) only get
a floor: their reference maximum is yesterday's, not a bound.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from monitoring.catalog import treatment
from monitoring.drift import BANDS, DECISIONS, Violation, check_frame, fmt_num, names_list, numeric


def _null_mostly(null_rate: float, margin: float) -> float:
    return max(0.0, min(1.0, 1.0 - null_rate - margin))


def _range_expectation(
    ex: Any, column: str, finite: np.ndarray, *, margin: float, mostly: float
) -> Any | None:
    """Values within the reference's range widened by ``margin`` of it (never below 0 for counts)."""
    if not finite.size:
        return None
    lo, hi = float(finite.min()), float(finite.max())
    pad = margin * max(hi - lo, 1.0)
    low = max(lo - pad, 0.0) if lo >= 0 else lo - pad
    if treatment(column).comparison == "rate":
        # Grows with the calendar: only the floor is a bound (ages and totals are never negative).
        return ex.ExpectColumnValuesToBeBetween(column=column, min_value=low, mostly=mostly)
    return ex.ExpectColumnValuesToBeBetween(column=column, min_value=low, max_value=hi + pad, mostly=mostly)


def build_suite(
    reference: pd.DataFrame,
    feature_names: Sequence[str],
    *,
    null_margin: float = 0.05,
    range_margin: float = 0.25,
    range_mostly: float = 0.999,
    name: str = "promoguard_drift",
) -> Any:
    """A great-expectations suite built from the reference window.

    Per feature: the column exists, its missing rate stays within the reference's rate plus
    ``null_margin``, and at least ``range_mostly`` of its values stay within the reference's min/max
    widened by ``range_margin`` of the range (never below 0 for features that were never negative,
    since counts cannot be; no upper bound for features that grow with the calendar). The tolerance
    exists because counts are heavy-tailed: a new window always has a few values past the reference's
    maximum, and that alone is not a data problem. Plus: score not null and in [0, 100], decision and
    band within the contract's sets.
    """
    import great_expectations as gx

    ref = check_frame(reference, "reference")
    absent = [n for n in feature_names if n not in ref.columns]
    if absent:
        raise ValueError(f"reference: missing feature column(s) {names_list(list(absent), 6)}")
    ex = gx.expectations
    # Built as a list: adding to a suite one by one needs an active (saved) data context.
    expectations: list[Any] = [
        ex.ExpectColumnValuesToNotBeNull(column="score"),
        ex.ExpectColumnValuesToBeBetween(column="score", min_value=0, max_value=100),
        ex.ExpectColumnValuesToBeInSet(column="decision", value_set=list(DECISIONS)),
        ex.ExpectColumnValuesToBeInSet(column="band", value_set=list(BANDS)),
    ]
    for col in feature_names:
        values = numeric(ref, col)
        finite = values[np.isfinite(values)]
        null_rate = 1 - finite.size / max(values.size, 1)
        expectations.append(ex.ExpectColumnToExist(column=col))
        expectations.append(
            ex.ExpectColumnValuesToNotBeNull(
                column=col, mostly=round(_null_mostly(null_rate, null_margin), 4)
            )
        )
        bounded = _range_expectation(ex, col, finite, margin=range_margin, mostly=range_mostly)
        if bounded is not None:
            expectations.append(bounded)
    return gx.ExpectationSuite(name=name, expectations=expectations)


def _observed(kind: str, result: dict[str, Any], col_present: bool) -> str:
    if not col_present:
        return "column absent"
    if kind == "expect_column_values_to_not_be_null":
        return f"{result.get('unexpected_percent', 0.0):.1f}% missing"
    examples = result.get("partial_unexpected_list") or []
    if kind == "expect_column_values_to_be_between":
        nums = [float(v) for v in examples if isinstance(v, int | float) and math.isfinite(float(v))]
        if nums:
            return f"{result.get('unexpected_count', 0)} value(s) out of range, e.g. {fmt_num(min(nums))}" + (
                f" to {fmt_num(max(nums))}" if max(nums) != min(nums) else ""
            )
    shown = sorted({str(v) for v in examples})[:5]
    return f"{result.get('unexpected_count', 0)} unexpected value(s): {', '.join(shown)}"


def validate_current(current: pd.DataFrame, suite: Any) -> list[Violation]:
    """Run the suite on the current window in an ephemeral context; one Violation per failed expectation."""
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    context = gx.get_context(mode="ephemeral")
    # Progress bars would land in the scheduler's log once per expectation.
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    source = context.data_sources.add_pandas("promoguard_drift")
    asset = source.add_dataframe_asset("current_window")
    batch = asset.add_batch_definition_whole_dataframe("whole").get_batch(
        batch_parameters={"dataframe": current}
    )
    # BASIC keeps the counts and a few example values but skips the row-index lists, which cost a lot.
    outcome = batch.validate(suite, result_format="BASIC")
    violations: list[Violation] = []
    for item in outcome.results:
        if item.success:
            continue
        config = item.expectation_config
        kind = str(config.type)
        column = str(config.kwargs.get("column", ""))
        res = dict(item.result or {})
        present = column in current.columns
        if not present and kind != "expect_column_to_exist":
            # An absent column is reported once, by the existence check, not once per expectation.
            continue
        unexpected = 100.0 if not present else float(res.get("unexpected_percent") or 0.0)
        violations.append(Violation(kind, column, _observed(kind, res, present), unexpected))
    violations.sort(key=lambda v: (-v.unexpected_percent, v.column))
    return violations
