"""A backtest report as JSON and as one self-contained HTML page (tables and an inline SVG chart)."""

from __future__ import annotations

import html
import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

_DECISION_COLOURS = {"allowed": "#4c9a2a", "watched": "#c9b037", "verified": "#e08a1e", "refused": "#c0392b"}

_COLUMNS = (
    ("attempts", "attempts"),
    ("allowed", "allowed"),
    ("watched", "watched"),
    ("verified", "verified"),
    ("refused", "refused"),
    ("recall", "recall"),
    ("honest_refused", "honest refused"),
    ("honest_verified", "honest verified"),
    ("discount_saved", "discount saved"),
    ("discount_lost", "discount lost"),
)


def to_json(report: Mapping[str, Any]) -> str:
    """The report as indented JSON (NaN is written as null)."""

    def clean(value: Any) -> Any:
        if isinstance(value, float) and math.isnan(value):
            return None
        if isinstance(value, Mapping):
            return {str(k): clean(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [clean(v) for v in value]
        return value

    return json.dumps(clean(report), indent=2, default=str)


def _cell(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if isinstance(value, float):
        return f"{value:.1%}" if value <= 1.0 else f"{value:,.2f}"
    if isinstance(value, int):
        return f"{value:,}"
    return html.escape(str(value))


def _money(value: Any) -> str:
    return "n/a" if value is None else f"{float(value):,.2f}"


def ledger_table(rows: Sequence[Mapping[str, Any]], first: Sequence[tuple[str, str]]) -> str:
    """An HTML table: the ``first`` columns (key, heading), then the ledger's figures."""
    head = "".join(f"<th>{html.escape(h)}</th>" for _, h in (*first, *_COLUMNS))
    body = []
    for row in rows:
        cells = [f"<td>{_cell(row.get(k))}</td>" for k, _ in first]
        for key, _ in _COLUMNS:
            value = row.get(key)
            cells.append(f"<td>{_money(value) if key.startswith('discount') else _cell(value)}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def decision_chart(rows: Sequence[Mapping[str, Any]], label: str = "promo_type", width: int = 640) -> str:
    """A horizontal stacked bar per row: the shares of allowed, watched, verified and refused attempts."""
    bar, gap, left = 18, 8, 150
    height = len(rows) * (bar + gap) + 30
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img">']
    for i, row in enumerate(rows):
        y = i * (bar + gap)
        parts.append(f'<text x="0" y="{y + 13}" font-size="12">{html.escape(str(row.get(label)))}</text>')
        total = max(int(row.get("attempts") or 0), 1)
        x = float(left)
        for key, colour in _DECISION_COLOURS.items():
            w = (width - left - 10) * int(row.get(key) or 0) / total
            if w > 0:
                parts.append(
                    f'<rect x="{x:.1f}" y="{y}" width="{w:.1f}" height="{bar}" fill="{colour}">'
                    f"<title>{key}: {int(row.get(key) or 0):,}</title></rect>"
                )
            x += w
    legend_y = len(rows) * (bar + gap) + 15
    x = left
    for key, colour in _DECISION_COLOURS.items():
        parts.append(f'<rect x="{x}" y="{legend_y - 10}" width="10" height="10" fill="{colour}"/>')
        parts.append(f'<text x="{x + 14}" y="{legend_y}" font-size="12">{key}</text>')
        x += 90
    parts.append("</svg>")
    return "".join(parts)


def _pattern_table(recall: Mapping[str, Any]) -> str:
    if not recall:
        return "<p>No ground truth for this history: recall per pattern is not available.</p>"
    rows = "".join(
        f"<tr><td>{html.escape(p)}</td><td>{_cell(v)}</td></tr>" for p, v in sorted(recall.items())
    )
    head = "<thead><tr><th>pattern</th><th>verified or refused</th></tr></thead>"
    return f"<table>{head}<tbody>{rows}</tbody></table>"


_STYLE = """
body{font-family:system-ui,sans-serif;margin:2em;color:#222}
table{border-collapse:collapse;margin:0.5em 0 1.5em}
th,td{border:1px solid #ccc;padding:3px 8px;text-align:right;font-size:13px}
th:first-child,td:first-child,td:nth-child(2){text-align:left}
h1{font-size:1.4em}h2{font-size:1.15em;margin-top:1.5em}
.note{color:#555;font-size:13px;max-width:60em}
"""


def to_html(report: Mapping[str, Any]) -> str:
    """The report as one HTML page: configuration, totals, per type (with a chart), per campaign."""
    runs = report["runs"]
    sections = []
    for run in runs:
        name = html.escape(run["name"])
        totals = run["totals"]
        sections.append(
            f"<h2>{name}: totals</h2>"
            + ledger_table([{"scope": "all attempts", **totals}], [("scope", "scope")])
            + "<h2>"
            + name
            + ": recall per pattern (bots apart)</h2>"
            + _pattern_table(totals.get("pattern_recall") or {})
            + f"<h2>{name}: per promotion type</h2>"
            + decision_chart(run["types"])
            + ledger_table(run["types"], [("promo_type", "promotion type")])
            + f"<h2>{name}: per campaign</h2>"
            + ledger_table(run["campaigns"], [("campaign", "campaign"), ("promo_type", "type")])
        )
    compare = report.get("compare")
    if compare:
        switches = ", ".join(f"{k}: {v:,}" for k, v in compare["switches"].items() if v) or "none"
        sections.append(
            "<h2>Side by side</h2>"
            f"<p>{_cell(compare['same_decision'])} of {compare['attempts']:,} attempts get the same decision "
            f"from {html.escape(' and '.join(compare['configurations']))}. Switches: {switches}.</p>"
        )
    window = report["window"]
    config = ", ".join(f"{html.escape(r['name'])} = {html.escape(str(r['configuration']))}" for r in runs)
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>promoguard backtest</title>"
        f"<style>{_STYLE}</style></head><body>"
        f"<h1>Backtest {html.escape(window['start'])} to {html.escape(window['end'])}</h1>"
        f"<p class='note'>{window['attempts']:,} attempts replayed in time order through the service's "
        f"decision path (caps and hard rules included) after {window['warm_attempts']:,} warm-up attempts. "
        f"Truth: {html.escape(report['truth_source'])}. Configurations: {config}. Discount saved counts "
        f"refused abuse and {report['verify_stops']:.0%} of verified abuse.</p>"
        + "".join(sections)
        + "</body></html>"
    )
