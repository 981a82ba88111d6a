"""Human units for reason descriptions: counts, durations, shares, and the rules table's templates.

Every description a shopper-facing analyst reads goes through here, so one set of choices holds
everywhere: counts are pluralised ("1 account", "6 accounts"), durations are whole minutes, hours,
days or years as fits ("45 minutes", "3 days"), shares are percentages ("40%"), and no number carries
more than 2 decimals. A missing value (None, NaN, infinity) never renders as "nan", "None" or
"unknown": the caller says what missing means (a new code has no history; a guest has no account).

Templates (the rules table's ``description``) are Python format fields with a small spec language:

* ``{name}`` the value as a plain number or text;
* ``{name:count:attempt}`` or ``{name:count:address:addresses}`` a pluralised count;
* ``{name:times}`` "never", "once", "twice", "3 times";
* ``{name:hours}`` / ``{name:days}`` a duration given in hours or days;
* ``{name:pct}`` a share (0-1) as a percentage;
* ``[...]`` an optional part, rendered only when every field inside it has a value.

A field outside ``[...]`` whose value is missing renders as "not given" (the parser of the rules table
refuses templates that could reach that: see :func:`template_fields`).
"""

from __future__ import annotations

import math
import re
import string
from collections.abc import Mapping
from typing import Any

MISSING_TEXT = "not given"
_FORMATTER = string.Formatter()
_OPTIONAL = re.compile(r"\[([^\[\]]*)\]")


def missing(value: Any) -> bool:
    """True for None, NaN and infinities: values a description must not print."""
    if value is None:
        return True
    if isinstance(value, float):
        return not math.isfinite(value)
    return False


def number(value: float) -> str:
    """An integer as an integer, anything else with at most 2 decimals (trailing zeros dropped)."""
    v = float(value)
    if v.is_integer():
        return str(int(v))
    text = f"{v:.2f}".rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text


def plural(n: float, singular: str, plural_form: str | None = None) -> str:
    """``"1 account"``, ``"6 accounts"``, ``"0 accounts"`` (an explicit plural for irregular words)."""
    word = singular if float(n) == 1 else (plural_form or singular + "s")
    return f"{number(n)} {word}"


def some(n: float, singular: str, plural_form: str | None = None) -> str:
    """Like :func:`plural`, but zero reads as "no accounts"."""
    if float(n) == 0:
        return f"no {plural_form or singular + 's'}"
    return plural(n, singular, plural_form)


def times(n: float) -> str:
    """How often: "never", "once", "twice", "3 times"."""
    v = float(n)
    if v <= 0:
        return "never"
    if v == 1:
        return "once"
    if v == 2:
        return "twice"
    return f"{number(v)} times"


def duration_hours(hours: float) -> str:
    """A duration given in hours, in the unit that reads best: minutes, hours, days or years."""
    h = max(0.0, float(hours))
    minutes = h * 60.0
    if minutes < 1:
        return "less than a minute"
    if minutes < 60:
        return plural(round(minutes), "minute")
    if h < 48:
        return plural(round(h), "hour")
    days = h / 24.0
    if days < 730:
        return plural(round(days), "day")
    return plural(round(days / 365.25), "year")


def duration_days(days: float) -> str:
    """A duration given in days, as :func:`duration_hours` reads it."""
    return duration_hours(float(days) * 24.0)


def percent(share: float) -> str:
    """A share 0-1 as a percentage: whole percent, one decimal below 1% (never "0%" for a non-zero share)."""
    pct = max(0.0, float(share)) * 100.0
    if pct == 0:
        return "0%"
    if pct < 1:
        return f"{max(round(pct, 1), 0.1):g}%"
    return f"{round(pct):d}%"


def value_text(value: Any) -> str:
    """A plain value for a template: numbers in human form, booleans as yes/no, text as given."""
    if missing(value):
        return MISSING_TEXT
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int | float):
        return number(value)
    return str(value)


def format_value(value: Any, spec: str) -> str:
    """Render one template field with its spec (see the module docstring)."""
    if missing(value):
        return MISSING_TEXT
    if not spec:
        return value_text(value)
    kind, _, rest = spec.partition(":")
    try:
        n = float(value)
    except (TypeError, ValueError):
        return value_text(value)
    if kind == "count":
        singular, _, plural_form = rest.partition(":")
        return plural(n, singular or "time", plural_form or None)
    if kind == "times":
        return times(n)
    if kind == "hours":
        return duration_hours(n)
    if kind == "days":
        return duration_days(n)
    if kind == "pct":
        return percent(n)
    raise ValueError(f"unknown format spec {spec!r}")


def template_fields(template: str) -> tuple[set[str], set[str]]:
    """``(required, optional)`` field names of a template; raise ValueError for a malformed one."""
    optional: set[str] = set()
    for part in _OPTIONAL.findall(template):
        optional.update(_fields(part))
    required = _fields(_OPTIONAL.sub("", template))
    return required, optional


def _fields(text: str) -> set[str]:
    names: set[str] = set()
    for _, name, spec, _ in _FORMATTER.parse(text):
        if name is None:
            continue
        if not name.isidentifier():
            raise ValueError(f"field {{{name}}}: must be an input name")
        if spec:
            format_value(1, spec)  # raises for an unknown spec
        names.add(name)
    return names


def _render_plain(text: str, values: Mapping[str, Any]) -> str:
    out: list[str] = []
    for literal, name, spec, _ in _FORMATTER.parse(text):
        out.append(literal)
        if name is not None:
            out.append(format_value(values.get(name), spec or ""))
    return "".join(out)


def render(template: str, values: Mapping[str, Any]) -> str:
    """Fill a template from ``values``; an optional ``[...]`` part goes when any field in it is missing."""

    out: list[str] = []
    pos = 0
    for match in _OPTIONAL.finditer(template):
        out.append(_render_plain(template[pos : match.start()], values))
        part = match.group(1)
        if not any(missing(values.get(name)) for name in _fields(part)):
            out.append(_render_plain(part, values))
        pos = match.end()
    out.append(_render_plain(template[pos:], values))
    return "".join(out)
