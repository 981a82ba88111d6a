"""Metric names in a PromQL expression, and the dashboards' and alerts' expressions, for the deploy tests."""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
#: Series Prometheus makes itself while scraping: no service exports them.
SCRAPE_SERIES = frozenset({"up", "scrape_duration_seconds", "scrape_samples_scraped"})
_KEYWORDS = frozenset({
    "by", "without", "on", "ignoring", "group_left", "group_right", "offset", "bool", "and", "or", "unless",
    "inf", "nan",
})
_GROUPING = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_NAME = re.compile(r"(?<![\w.:$])([A-Za-z_:][\w:]*)\s*(\(?)")


def metric_names(expr: str) -> set[str]:
    """Metric names an expression selects: identifiers that are not functions, keywords or label names."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # strings first: they may hold braces
    text = re.sub(r"\{[^}]*\}", "", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", "", text)  # ranges and subqueries
    text = _GROUPING.sub("", text)
    text = re.sub(r"\$\{?\w+\}?", "", text)  # Grafana variables
    names = {m.group(1) for m in _NAME.finditer(text) if not m.group(2)}  # a name before "(" is a function
    return {n for n in names if n.lower() not in _KEYWORDS and not re.fullmatch(r"\d+[smhdwy]", n)}


def alert_expressions() -> dict[str, str]:
    """Every alert rule's expression, by alert name."""
    rules = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text(encoding="utf-8"))
    return {rule["alert"]: rule["expr"] for group in rules["groups"] for rule in group["rules"]}


def dashboards() -> dict[str, dict[str, object]]:
    """Every dashboard JSON under deploy/grafana, by file name."""
    return {
        path.name: json.loads(path.read_text(encoding="utf-8"))
        for path in sorted((DEPLOY / "grafana").glob("*.json"))
    }


def dashboard_expressions() -> dict[str, str]:
    """Every panel target's expression, by ``file/panel title/refId``."""
    found: dict[str, str] = {}
    for name, board in dashboards().items():
        panels = list(board.get("panels", []))  # type: ignore[call-overload]
        while panels:
            panel = panels.pop()
            panels.extend(panel.get("panels", []))
            for target in panel.get("targets", []):
                found[f"{name}/{panel.get('title')}/{target.get('refId')}"] = target["expr"]
    return found
