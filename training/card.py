"""The model card: what the model is for, what it learned from, how it does per pattern, and its limits.

:func:`model_card` renders markdown from whatever a training run hands it. Every input may be partial:
missing params, metrics or tables read "n/a" (never "nan"), and any DataFrame given is rendered under its
own heading. The per-pattern summary is built from metrics named ``truth_recall_verify_<pattern>``,
``truth_recall_refuse_<pattern>`` and ``label_pr_auc[_<pattern>]`` (optionally under a dotted prefix such
as ``test.``); without them it falls back to a ``truth_patterns`` or ``patterns`` table.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

NA = "n/a"
#: Rows of each table rendered in the card (the run's CSV artifacts keep them all).
MAX_TABLE_ROWS = 40
_TRUTH_VERIFY = "truth_recall_verify"
_TRUTH_REFUSE = "truth_recall_refuse"
_LABEL_PR_AUC = "label_pr_auc"
#: Per-pattern tables to use when no truth metrics are given, best first.
_PATTERN_TABLES = ("truth_patterns", "patterns")
_BOT = re.compile(r"bot", re.IGNORECASE)
#: Columns of a per-pattern table worth a place in the card's summary (the table itself is rendered whole).
_TABLE_COLUMNS = ("pattern", "rows", "abusive_rows", "labeled_abuse", "recall_verify", "recall_refuse")
#: A truth table's ``group`` column, as the card's kinds of slice.
_GROUP_KIND = {"seed": "pattern", "headline": "pooled", "bot": "bot", "tier": "tier"}


def _is_missing(value: Any) -> bool:
    if value is None or value is pd.NA or value is pd.NaT:
        return True
    if isinstance(value, float | np.floating):
        return not math.isfinite(float(value))
    if isinstance(value, str):
        return value.strip().lower() in {"", "nan", "none", "null", "<na>", "nat", "inf", "-inf"}
    return False


def fmt(value: Any, digits: int = 3) -> str:
    """A cell for the card: ``n/a`` for missing / NaN / infinite, floats to ``digits`` decimals."""
    if _is_missing(value):
        return NA
    if isinstance(value, bool | np.bool_):
        return str(bool(value))
    if isinstance(value, int | np.integer):
        return f"{int(value):,}"
    if isinstance(value, float | np.floating):
        v = float(value)
        return f"{int(v):,}" if v.is_integer() and abs(v) >= 1000 else f"{v:.{digits}f}"
    text = str(value).replace("|", "\\|").replace("\n", " ")
    return text


def markdown_table(frame: pd.DataFrame, max_rows: int = MAX_TABLE_ROWS) -> str:
    """A GitHub-flavoured markdown table; missing cells read ``n/a``; an empty frame says so."""
    if frame is None or len(frame.columns) == 0 or frame.empty:
        return "_(no rows)_"
    shown = frame.head(max_rows)
    header = "| " + " | ".join(fmt(c) for c in shown.columns) + " |"
    rule = "|" + "|".join("---" for _ in shown.columns) + "|"
    body = ["| " + " | ".join(fmt(v) for v in row) + " |" for row in shown.itertuples(index=False)]
    lines = [header, rule, *body]
    if len(frame) > max_rows:
        lines.append(f"\n_First {max_rows} of {len(frame):,} rows._")
    return "\n".join(lines)


def _metric_parts(key: str, prefix: str) -> str | None:
    """The pattern in a metric key ``[scope.]<prefix>[_.]<pattern>``; ``""`` for the overall one."""
    for i, segment in enumerate(key.split(".")):
        if segment == prefix or segment.startswith(prefix + "_"):
            rest = ".".join([segment[len(prefix) :].lstrip("_"), *key.split(".")[i + 1 :]]).strip(".")
            return rest
    return None


def _collect(metrics: Mapping[str, Any], prefix: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in metrics.items():
        pattern = _metric_parts(str(key), prefix)
        if pattern is not None and pattern not in out:
            out[pattern] = value
    return out


def pattern_summary(metrics: Mapping[str, Any]) -> pd.DataFrame:
    """One row per slice: truth-based recall at verify and refuse, label-based PR-AUC (NaN when absent).

    Slices come from the metric names: patterns, pooled rows (``seed_patterns``...), bots and evasion
    tiers (``tier_<tier>``); :func:`_pattern_section` shows them apart. The label PR-AUC column is left
    out when no per-slice label PR-AUC is given (the overall one is a headline).
    """
    verify = _collect(metrics, _TRUTH_VERIFY)
    refuse = _collect(metrics, _TRUTH_REFUSE)
    pr_auc = {k: v for k, v in _collect(metrics, _LABEL_PR_AUC).items() if k}
    slices = [p for p in dict.fromkeys([*verify, *refuse, *pr_auc]) if p]
    rows = []
    for p in slices:
        row = {
            "pattern": p,
            "truth recall at verify": verify.get(p, math.nan),
            "truth recall at refuse": refuse.get(p, math.nan),
        }
        if pr_auc:
            row["label PR-AUC"] = pr_auc.get(p, math.nan)
        rows.append(row)
    columns = ["pattern", "truth recall at verify", "truth recall at refuse"]
    return pd.DataFrame(rows, columns=[*columns, "label PR-AUC"] if pr_auc else columns)


def _slice_kind(name: str) -> str:
    if name.startswith("tier_"):
        return "tier"
    if name.startswith("seed_patterns") or name in {"all", "overall"}:
        return "pooled"
    return "bot" if _BOT.search(name) else "pattern"


def _first(mapping: Mapping[str, Any], *keys: str) -> Any:
    for key in keys:
        if key in mapping and not _is_missing(mapping[key]):
            return mapping[key]
    return None


def _prefixed(params: Mapping[str, Any], prefix: str) -> dict[str, Any]:
    return {k[len(prefix) :]: v for k, v in params.items() if str(k).startswith(prefix)}


def _kv_table(values: Mapping[str, Any], key_name: str, value_name: str) -> str:
    if not values:
        return NA
    return markdown_table(pd.DataFrame({key_name: list(values), value_name: list(values.values())}))


def _with_table_patterns(summary: pd.DataFrame, table: Any) -> pd.DataFrame:
    """Add the patterns a truth table lists but the metrics lack (a slice too small has no metric)."""
    if summary.empty or not isinstance(table, pd.DataFrame) or "pattern" not in table.columns:
        return summary
    known = set(summary["pattern"].astype(str))
    extra = [
        {
            "pattern": str(row["pattern"]),
            "truth recall at verify": row.get("recall_verify", math.nan),
            "truth recall at refuse": row.get("recall_refuse", math.nan),
        }
        for _, row in table.iterrows()
        if str(row["pattern"]) not in known
    ]
    if not extra:
        return summary
    return pd.concat([summary, pd.DataFrame(extra)], ignore_index=True)


def _pattern_section(metrics: Mapping[str, Any], tables: Mapping[str, pd.DataFrame]) -> list[str]:
    out: list[str] = []
    summary = _with_table_patterns(pattern_summary(metrics), tables.get(_PATTERN_TABLES[0]))
    source = "the truth-based metrics of the test window (the model at its own thresholds)"
    if summary.empty:
        for name in _PATTERN_TABLES:
            table = tables.get(name)
            if isinstance(table, pd.DataFrame) and "pattern" in table.columns and not table.empty:
                keep = [c for c in table.columns if c in _TABLE_COLUMNS]
                summary = table[keep if len(keep) > 1 else list(table.columns)].reset_index(drop=True)
                source = f"the `{name}` table"
                if "group" in table.columns:
                    summary["group"] = table["group"].to_numpy()
                break
    if summary.empty or "pattern" not in summary.columns:
        out.append(f"No per-pattern metrics were given for this run: {NA}.")
        return out
    kind = summary["pattern"].astype(str).map(_slice_kind)
    if "group" in summary.columns:
        group = summary.pop("group").astype(str)
        kind = kind.where(~group.isin(list(_GROUP_KIND)), group.map(_GROUP_KIND))
    main = pd.concat([summary[kind == "pattern"], summary[kind == "pooled"]], ignore_index=True)
    out.append(
        f"From {source}. Recall is the share of a pattern's truly abusive attempts at or above the "
        f"threshold; a pattern with too few attempts in the window reads {NA}. Pooled rows "
        "(`seed_patterns`) are the headline."
    )
    out += ["", markdown_table(main)]
    bots = summary[kind == "bot"].reset_index(drop=True)
    out += ["", "**Bots**, reported apart (code spraying is most of the labeled abuse, and easy):", ""]
    out.append(markdown_table(bots) if not bots.empty else f"{NA} (no bot pattern in the metrics)")
    tiers = summary[kind == "tier"].reset_index(drop=True)
    if not tiers.empty:
        out += ["", "**By evasion tier** (seed patterns; bots left out):", "", markdown_table(tiers)]
    return out


def _label_policy(params: Mapping[str, Any], sources: Mapping[str, Any]) -> str:
    dropped = _first(params, "rows.dropped_label_not_yet_known")
    at_deploy = [_first(params, f"rows.dropped_{w}_label_not_known_at_deploy") for w in ("valid", "calib")]
    maturity = _first(params, "presume_legit_after", "labels.presume_legit_after", "presume_legit_after_days")
    text = (
        "**As-of label policy.** A training row counts only if its label was known at the label cutoff "
        f"(the end of the gap); rows whose label arrived later were dropped ({fmt(dropped)} rows)."
    )
    if any(v is not None for v in at_deploy):
        text += (
            " Early stopping, calibration and thresholds use only labels known when the model would be "
            f"deployed (the start of the test window): {fmt(at_deploy[0])} validation and "
            f"{fmt(at_deploy[1])} calibration rows were left out for that."
        )
    if maturity is not None:
        text += f" Attempts nobody labeled abuse within {fmt(maturity)} days count as legit (presumed legit)."
    elif any("presumed" in str(k) for k in sources):
        text += " Attempts nobody labeled abuse past a maturity age count as legit (`presumed_legit` above)."
    else:
        text += f" Presumed-legit maturity for unlabeled attempts: {NA} (not recorded for this run)."
    return text


def _data_section(
    feature_service: str, params: Mapping[str, Any], tables: Mapping[str, pd.DataFrame]
) -> list[str]:
    sources = _prefixed(params, "label_source.") or _prefixed(params, "labels.")
    sources = {k: v for k, v in sources.items() if "presume_legit_after" not in k}
    out = [
        f"- **Feature service:** `{fmt(feature_service)}` (Feast point-in-time retrieval: each attempt's "
        "features as they were just before it; request-time flags are added by the model's feature list).",
        f"- **Split:** {fmt(_first(params, 'split.days'))} (by event time: train, gap, valid, calib, "
        "test; no random split).",
        "",
        "**Windows**",
        "",
        _kv_table(_prefixed(params, "window."), "boundary", "time"),
        "",
        "**Rows**",
        "",
        _kv_table(_prefixed(params, "rows."), "window", "rows"),
        "",
        "**Label sources**",
        "",
    ]
    label_table = tables.get("label_sources")
    if isinstance(label_table, pd.DataFrame) and not label_table.empty:
        out.append(markdown_table(label_table))
    else:
        out.append(_kv_table(sources, "label source", "rows"))
    out += ["", _label_policy(params, sources)]
    return out


def _count(value: Any) -> str:
    return fmt(int(value)) if isinstance(value, int | float | np.number) and not _is_missing(value) else NA


def _headline(metrics: Mapping[str, Any]) -> list[str]:
    fold_count = _first(metrics, "fold_count")
    items = {
        "label-based PR-AUC (test window)": _first(
            metrics, _LABEL_PR_AUC, "test.label_pr_auc", "test.pr_auc"
        ),
        "truth-based PR-AUC (test window)": _first(metrics, "truth_pr_auc"),
        f"label-based PR-AUC, median over {_count(fold_count)} rolling-origin folds": _first(
            metrics, "fold_median_label_pr_auc"
        ),
        "expected calibration error (calibration window)": _first(
            metrics, "calib_label_ece", "calib.ece", "ece"
        ),
        "truly honest attempts flagged at verify": _first(metrics, "truth_honest_flag_rate_verify"),
        "labeled-legit look-alikes (traps) flagged at verify": _first(
            metrics, "label_trap_flag_rate_verify", "test.trap_fpr_verify", "trap_fpr_verify"
        ),
    }
    return [f"- {name}: {fmt(value)}" for name, value in items.items()]


def model_card(
    *,
    model_name: str,
    artifact_version: str,
    feature_service: str,
    params: Mapping[str, Any],
    metrics: Mapping[str, float],
    tables: Mapping[str, pd.DataFrame],
) -> str:
    """Markdown model card of one training run; robust to missing params, metrics and tables."""
    params = dict(params or {})
    metrics = dict(metrics or {})
    tables = {str(k): v for k, v in (tables or {}).items() if isinstance(v, pd.DataFrame)}
    lines: list[str] = [
        f"# Model card: {fmt(model_name)}",
        "",
        f"Artifact version `{fmt(artifact_version)}`; feature service `{fmt(feature_service)}`; "
        f"{fmt(_first(params, 'num_trees'))} trees over {fmt(_first(params, 'n_features'))} features.",
        "",
        "## Intended use",
        "",
        "- A risk score (0-100, a calibrated probability of abuse) for each promo-code attempt at checkout.",
        "- Decisions (allow, watch, verify, refuse) come from per-promotion-type thresholds in the "
        "model's manifest, chosen on the calibration window for the review budget; the score alone is "
        "not a decision.",
        "- Not for credit, identity or eligibility decisions about a person, nor for anything outside promo "
        "redemption at checkout.",
        "",
        "## Data",
        "",
        *_data_section(feature_service, params, tables),
        "",
        "## Metrics",
        "",
        *_headline(metrics),
        "",
        "### Per abuse pattern",
        "",
        *_pattern_section(metrics, tables),
        "",
        "## Known limits",
        "",
        "- Trained and evaluated on a simulated history: the patterns, their mix and the label delays are "
        "the simulator's; real traffic will differ.",
        f"- Patterns with too few attempts in a window have no stable rate and are reported as {NA}.",
        "- The rotating evasion tier changes every identity it controls; what is left for the model is "
        "network residue (shared IPs, ASNs, devices), so its recall is the weakest and degrades first.",
        "- Labels come from review, support and audits: they are biased the way human review is (what got "
        "reviewed, what reviewers recognised), and label-based metrics inherit that bias; truth-based recall "
        "is only available in simulation.",
        "",
    ]
    if tables:
        lines += ["## Tables", ""]
        for name, table in tables.items():
            lines += [f"### {fmt(name)}", "", markdown_table(table), ""]
    return "\n".join(lines).rstrip() + "\n"
