"""The drift report on disk: one self-contained HTML page and its JSON twin (the package's only writer).

The page opens with the badge and the findings (at most five, see :func:`monitoring.drift.summarize`),
then the detail: scores, decisions and bands, promotion types and busy codes, features (by their
signal names), data validation, top signals and labels. Plots are PNG data URIs; the page has no
scripts and no external links, so it can be mailed or archived as is.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import shutil
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from monitoring.drift import (
    DriftResult,
    FeatureDrift,
    GroupDrift,
    ShareChange,
    Violation,
    exit_code,
    pct,
    with_violations,
)

_REF_COLOUR = "#8c9bab"
_CUR_COLOUR = "#d9480f"
_GROUP_WORDS = {"promo_type": "promotion type", "campaign": "code", "other codes": "other codes"}


@dataclass(frozen=True)
class ReportPaths:
    """Where :func:`write_report` put the report (``latest.*`` copies sit beside them)."""

    html: Path
    json: Path


# ---------------------------------------------------------------------------------------------------
# plots (PNG, embedded as data URIs)


def _png_data_uri(fig: Any) -> str:
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _bars(
    ax: Any, labels: Sequence[str], ref: Sequence[float], cur: Sequence[float], ref_label: str, cur_label: str
) -> None:
    x = np.arange(len(labels))
    ax.bar(x - 0.2, [100 * v for v in ref], width=0.4, color=_REF_COLOUR, label=ref_label)
    ax.bar(x + 0.2, [100 * v for v in cur], width=0.4, color=_CUR_COLOUR, label=cur_label)
    ax.set_xticks(x)
    ax.set_xticklabels(
        labels, rotation=30 if len(labels) > 5 else 0, ha="right" if len(labels) > 5 else "center", fontsize=8
    )
    ax.set_ylabel("% of requests")
    ax.legend(fontsize=8)


def _score_plot(result: DriftResult, ref_label: str, cur_label: str) -> str:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 3))
    ax = fig.subplots()
    s = result.score
    _bars(ax, s.bins, s.share_reference, s.share_current, ref_label, cur_label)
    ax.set_xlabel("risk score")
    ax.set_title("score distribution")
    return _png_data_uri(fig)


def _mix_plot(result: DriftResult, ref_label: str, cur_label: str) -> str:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9, 3))
    axes = fig.subplots(1, 2)
    for ax, mix, title in ((axes[0], result.decisions, "decisions"), (axes[1], result.bands, "bands")):
        names = [c.name for c in mix]
        _bars(
            ax, names, [c.share_reference for c in mix], [c.share_current for c in mix], ref_label, cur_label
        )
        ax.set_title(title)
    return _png_data_uri(fig)


def _feature_plot(top: Sequence[FeatureDrift], ref_label: str, cur_label: str) -> str:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(3.6 * len(top), 3))
    axes = fig.subplots(1, len(top), squeeze=False)
    for ax, feat in zip(axes[0], top, strict=True):
        _bars(ax, feat.bins, feat.share_reference, feat.share_current, ref_label, cur_label)
        title = feat.display_name or feat.name
        ax.set_title(f"{title} ({feat.rate})" if feat.rate else title, fontsize=8)
    return _png_data_uri(fig)


def _signal_plot(moved: Sequence[ShareChange]) -> str:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 0.35 * len(moved) + 1))
    ax = fig.subplots()
    deltas = [c.delta_pp for c in moved][::-1]
    ax.barh(
        [c.name for c in moved][::-1], deltas, color=[_CUR_COLOUR if d > 0 else _REF_COLOUR for d in deltas]
    )
    ax.axvline(0, color="#333333", linewidth=0.8)
    ax.set_xlabel("change in share of requests (percentage points)")
    ax.tick_params(axis="y", labelsize=8)
    return _png_data_uri(fig)


def make_plots(result: DriftResult, reference_label: str, current_label: str) -> dict[str, str]:
    """PNG data URIs keyed by section: scores, decisions, features, signals (the latter two when relevant).

    Figures are built without pyplot: they render headless without switching the process-wide backend,
    which would silently turn off inline plots in the notebook that called the report.
    """
    plots = {
        "scores": _score_plot(result, reference_label, current_label),
        "decisions": _mix_plot(result, reference_label, current_label),
    }
    top = [f for f in result.features if f.status != "green"][:4]
    if top:
        plots["features"] = _feature_plot(top, reference_label, current_label)
    moved = [c for c in result.signals if abs(c.delta_pp) > 0][:10]
    if moved:
        plots["signals"] = _signal_plot(moved)
    return plots


# ---------------------------------------------------------------------------------------------------
# JSON


def _clean(value: Any) -> Any:
    """JSON-safe copy: NaN/inf become null, paths and numpy scalars become plain values."""
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Path):
        return str(value)
    return value


def result_to_dict(result: DriftResult) -> dict[str, Any]:
    """The machine-readable report: status, exit code, findings, notes, metrics and the feature table."""
    raw = asdict(result)
    for feat in raw["features"]:
        # The bin shares are for the plots; the JSON keeps the table lean.
        for key in ("bins", "share_reference", "share_current"):
            feat.pop(key)
    metrics = {
        key: raw[key] for key in ("score", "decisions", "bands", "fallback", "groups", "signals", "labels")
    }
    return _clean(
        {
            "status": result.status,
            "exit_code": int(exit_code(result)),
            "summary": result.summary,
            "notes": result.notes,
            "generated_at": result.generated_at,
            "n_reference": result.n_reference,
            "n_current": result.n_current,
            "metrics": metrics,
            "features": raw["features"],
            "not_logged": raw["not_logged"],
            "violations": raw["violations"],
            "thresholds": raw["thresholds"],
        }
    )


# ---------------------------------------------------------------------------------------------------
# HTML

_CSS = """
body{font-family:Helvetica,Arial,sans-serif;margin:24px auto;max-width:1100px;color:#1f2933;line-height:1.4}
h1{font-size:22px;margin-bottom:4px}
h2{font-size:18px;border-bottom:1px solid #d9e2ec;padding-bottom:4px;margin-top:32px}
.meta{color:#52606d;font-size:13px}
.badge{display:inline-block;padding:6px 14px;border-radius:14px;color:#fff;font-weight:bold;font-size:15px}
.green{background:#2f9e44} .amber{background:#f08c00} .red{background:#c92a2a}
td.green,td.amber,td.red{color:#fff;font-weight:bold;text-align:center}
.summary{font-size:16px;background:#f5f7fa;border-left:4px solid #9fb3c8;padding:8px 16px}
.summary li{margin:4px 0}
.context{color:#52606d;font-size:13px;margin:4px 0 0 0}
table{border-collapse:collapse;font-size:13px;margin:8px 0} th,td{border:1px solid #d9e2ec;padding:4px 8px}
th{background:#f0f4f8;text-align:left} td.num{text-align:right;font-variant-numeric:tabular-nums}
td small{color:#52606d}
img{max-width:100%;margin:8px 0} .note{color:#52606d;font-size:13px}
"""

Cell = tuple[str, str]


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _num(value: float | None, fmt: str = "{:.3f}") -> str:
    return "n/a" if value is None or not math.isfinite(value) else fmt.format(value)


def _count(value: int | None) -> str:
    return "n/a" if value is None else f"{value:,}"


def _table(headers: Sequence[str], rows: Iterable[Sequence[Cell]]) -> str:
    """Rows are sequences of (css class, already-escaped text) cells."""
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    body = "".join(
        "<tr>"
        + "".join(f'<td class="{cls}">{text}</td>' if cls else f"<td>{text}</td>" for cls, text in row)
        + "</tr>"
        for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _status_cell(status: str) -> Cell:
    return (status, _e(status))


def _share_rows(changes: Sequence[ShareChange]) -> list[list[Cell]]:
    return [
        [
            ("", _e(c.name)),
            ("num", _e(pct(c.share_reference))),
            ("num", _e(pct(c.share_current))),
            ("num", _e(f"{c.delta_pp:+.1f}")),
            _status_cell(c.status),
        ]
        for c in changes
    ]


def _head(result: DriftResult, title: str, ref_l: str, cur_l: str) -> list[str]:
    return [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>{_e(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{_e(title)}</h1>",
        f"<p class='meta'>generated {_e(result.generated_at)} &middot; reference: {_e(ref_l)} "
        f"({result.n_reference:,} requests) &middot; current: {_e(cur_l)} "
        f"({result.n_current:,} requests)</p>",
        f"<p><span class='badge {_e(result.status)}'>{_e(result.status.upper())}</span></p>",
        "<ul class='summary'>" + "".join(f"<li>{_e(s)}</li>" for s in result.summary) + "</ul>",
        *(f"<p class='context'>{_e(n)}</p>" for n in result.notes),
        "<p class='note'>The badge follows scores, decisions, bands, the rules fallback and promotions. "
        "Features and data checks explain a move; on their own they raise the badge to amber at most.</p>",
    ]


def _scores_section(result: DriftResult, plots: dict[str, str], ref_l: str, cur_l: str) -> list[str]:
    s = result.score
    share_headers = ["", ref_l, cur_l, "change (pp)", "status"]
    score_row: list[Cell] = [
        ("num", _e(_num(s.mean_reference, "{:.1f}"))),
        ("num", _e(_num(s.mean_current, "{:.1f}"))),
        ("num", _e(_num(s.psi))),
        ("num", _e(_num(s.ks_statistic))),
        ("num", _e(_num(s.p_value, "{:.1e}"))),
        _status_cell(s.status),
    ]
    fallback_row: list[Cell] = [
        ("num", _e(pct(result.fallback.rate_reference))),
        ("num", _e(pct(result.fallback.rate_current))),
        _status_cell(result.fallback.status),
    ]
    return [
        "<h2>Scores</h2>",
        _table(
            ["mean score then", "mean score now", "PSI", "KS statistic", "p-value", "status"], [score_row]
        ),
        f"<img alt='score distribution then vs now' src='{plots['scores']}'>",
        "<h2>Decisions &amp; bands</h2>",
        f"<img alt='decision and band mix' src='{plots['decisions']}'>",
        "<h3>Decisions</h3>",
        _table(share_headers, _share_rows(result.decisions)),
        "<h3>Bands</h3>",
        _table(share_headers, _share_rows(result.bands)),
        "<h3>Rules fallback</h3>",
        _table(["answered by rules then", "answered by rules now", "status"], [fallback_row]),
    ]


def _group_cells(g: GroupDrift) -> list[Cell]:
    return [
        ("", _e(_GROUP_WORDS.get(g.dimension, g.dimension))),
        ("", _e(g.value)),
        ("num", _e(f"{g.n_reference:,}")),
        ("num", _e(f"{g.n_current:,}")),
        ("num", _e(_num(g.mean_score_reference, "{:.1f}"))),
        ("num", _e(_num(g.mean_score_current, "{:.1f}"))),
        ("num", _e(pct(g.flagged_share_reference))),
        ("num", _e(pct(g.flagged_share_current))),
        ("num", _e(_num(g.delta_pp, "{:+.1f}"))),
        _status_cell(g.status),
    ]


def _groups_section(result: DriftResult) -> list[str]:
    min_rows = result.thresholds.min_group_rows
    parts = [
        "<h2>Per promotion type and code</h2>",
        "<p class='note'>verify/refuse = share of requests sent to verification or refused. A code has a "
        f"row of its own with at least {min_rows:,} requests on both sides; the type's other codes "
        "(single-use and one-off codes) are folded into one row.</p>",
    ]
    if not result.groups:
        return [*parts, "<p class='note'>No promotion type or code columns in these windows.</p>"]
    headers = [
        "by", "value", "requests then", "requests now", "mean score then", "mean score now",
        "verify/refuse then", "verify/refuse now", "change (pp)", "status",
    ]  # fmt: skip
    return [*parts, _table(headers, [_group_cells(g) for g in result.groups])]


def _feature_cells(f: FeatureDrift) -> list[Cell]:
    compared = f"rate: {f.rate}" if f.comparison == "rate" else "distribution"
    name = f.display_name or f.name
    shown = _e(name) if name == f.name else f"{_e(name)}<br><small>{_e(f.name)}</small>"
    return [
        ("", shown),
        _status_cell(f.status),
        ("", _e(compared)),
        ("num", _e(_num(f.psi))),
        ("", _e("KS" if f.test == "ks" else "chi-square")),
        ("num", _e(_num(f.statistic))),
        ("num", _e(_num(f.p_value, "{:.1e}"))),
        ("num", _e(pct(f.missing_reference))),
        ("num", _e(pct(f.missing_current))),
        ("", _e("; ".join(f.reasons))),
    ]


def _features_section(result: DriftResult, plots: dict[str, str]) -> list[str]:
    parts = ["<h2>Features</h2>"]
    if "features" in plots:
        parts.append(f"<img alt='top drifted features' src='{plots['features']}'>")
    parts.append(
        "<p class='note'>PSI over the reference's quantile bins (missing values are a bin of their own); "
        "KS test for continuous features, chi-square for flags and low-cardinality counts. Ages and "
        "running totals grow with the calendar, so they are compared by a rate (the share of new "
        "entities, the share above zero) rather than by their values.</p>"
    )
    headers = [
        "feature", "status", "compared", "PSI", "test", "statistic", "p-value", "missing then",
        "missing now", "why",
    ]  # fmt: skip
    parts.append(_table(headers, [_feature_cells(f) for f in result.features]))
    if result.not_logged:
        parts.append("<h3>Not logged</h3>")
        parts.append(
            "<p class='note'>Model features one side does not carry: listed, not compared, never drift.</p>"
        )
        rows = [
            [("", _e(n.display_name)), ("", _e(n.name)), ("", _e(f"not in the {n.missing_from}"))]
            if n.missing_from != "both"
            else [("", _e(n.display_name)), ("", _e(n.name)), ("", "in neither window")]
            for n in result.not_logged
        ]
        parts.append(_table(["feature", "column", "where"], rows))
    return parts


def _validation_section(result: DriftResult) -> list[str]:
    parts = ["<h2>Data validation</h2>"]
    if not result.violations:
        parts.append(
            "<p>All data checks passed: columns present, missing rates and value ranges as in the "
            "reference.</p>"
        )
        return parts
    rows = [
        [
            ("", _e(v.expectation)),
            ("", _e(v.column)),
            ("", _e(v.observed)),
            ("num", _e(f"{v.unexpected_percent:.1f}")),
        ]
        for v in result.violations
    ]
    parts.append(_table(["check", "column", "observed", "unexpected %"], rows))
    return parts


def _signals_section(result: DriftResult, plots: dict[str, str], ref_l: str, cur_l: str) -> list[str]:
    parts = ["<h2>Top signals</h2>"]
    if not result.signals:
        return [*parts, "<p class='note'>No top signals recorded in these windows.</p>"]
    if "signals" in plots:
        parts.append(f"<img alt='signal mix change' src='{plots['signals']}'>")
    parts.append(
        "<p class='note'>Context only: the scoring log also names rule and identity signals, which the "
        "model-scored reference cannot have.</p>"
    )
    parts.append(_table(["signal", ref_l, cur_l, "change (pp)", "status"], _share_rows(result.signals)))
    return parts


def _labels_section(result: DriftResult, ref_l: str, cur_l: str) -> list[str]:
    parts = ["<h2>Labels &amp; abuse rate per pattern</h2>"]
    lab = result.labels
    if not lab.available:
        return [*parts, "<p class='note'>No labels in these windows yet.</p>"]
    arrival = [
        [
            ("", "share labeled"),
            ("num", _e(pct(lab.labeled_share_reference))),
            ("num", _e(pct(lab.labeled_share_current))),
        ],
        [
            ("", "median label delay (hours)"),
            ("num", _e(_num(lab.median_delay_hours_reference, "{:.1f}"))),
            ("num", _e(_num(lab.median_delay_hours_current, "{:.1f}"))),
        ],
    ]
    rates = [
        [
            ("", _e(p.pattern)),
            ("num", _e(_count(p.labeled_reference))),
            ("num", _e(_count(p.labeled_current))),
            ("num", _e(pct(p.abuse_rate_reference))),
            ("num", _e(pct(p.abuse_rate_current))),
        ]
        for p in lab.by_pattern
    ]
    return [
        *parts,
        _table(["", ref_l, cur_l], arrival),
        _table(["pattern", "labeled then", "labeled now", "abuse rate then", "abuse rate now"], rates),
        "<p class='note'>Labels arrive late: recent windows always look less labeled. Patterns are known "
        "only where the data carries them (simulated batches); n/a means the window has none.</p>",
    ]


def render_html(
    result: DriftResult, plots: dict[str, str], *, title: str, reference_label: str, current_label: str
) -> str:
    """One self-contained HTML page: inline CSS, images as data URIs, no scripts and no external links."""
    parts = [
        *_head(result, title, reference_label, current_label),
        *_scores_section(result, plots, reference_label, current_label),
        *_groups_section(result),
        *_features_section(result, plots),
        *_validation_section(result),
        *_signals_section(result, plots, reference_label, current_label),
        *_labels_section(result, reference_label, current_label),
        "</body></html>",
    ]
    return "\n".join(parts)


# ---------------------------------------------------------------------------------------------------
# the writer


def _free_base(out_dir: Path, stamp: str) -> str:
    base, counter = f"drift-{stamp}", 1
    # Two runs within one second must not overwrite each other's report.
    while (out_dir / f"{base}.html").exists() or (out_dir / f"{base}.json").exists():
        base = f"drift-{stamp}-{counter}"
        counter += 1
    return base


def write_report(
    result: DriftResult,
    violations: Sequence[Violation],
    out_dir: Path,
    *,
    title: str = "promoguard drift report",
    reference_label: str = "reference",
    current_label: str = "current",
) -> ReportPaths:
    """Write drift-YYYYmmddTHHMMSS.html and .json under out_dir, plus latest.html and latest.json copies."""
    if violations and not result.violations:
        result = with_violations(result, violations)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp = datetime.strptime(result.generated_at, "%Y-%m-%dT%H:%M:%SZ").strftime("%Y%m%dT%H%M%S")
    base = _free_base(out_dir, stamp)
    plots = make_plots(result, reference_label, current_label)
    page = render_html(
        result, plots, title=title, reference_label=reference_label, current_label=current_label
    )
    html_path, json_path = out_dir / f"{base}.html", out_dir / f"{base}.json"
    html_path.write_text(page, encoding="utf-8")
    payload = result_to_dict(result)
    payload.update({"title": title, "reference_label": reference_label, "current_label": current_label})
    json_path.write_text(json.dumps(payload, indent=2, allow_nan=False), encoding="utf-8")
    shutil.copyfile(html_path, out_dir / "latest.html")
    shutil.copyfile(json_path, out_dir / "latest.json")
    return ReportPaths(html=html_path, json=json_path)
