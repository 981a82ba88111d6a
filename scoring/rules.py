"""Rules as data: a versioned YAML table evaluated by a pure, deterministic function.

A rule is ``id``, a reason ``code`` (one of :data:`scoring.reasons.ReasonCode`), a ``description``
template filled with the actual input values in human units (:mod:`scoring.text`), a condition
(``when``) over named inputs, ``points`` toward the rules score, a hard ``action`` (none, watch, verify,
refuse) and the promotion types it ``applies_to``. The condition language is deliberately tiny
(``eq``, ``gte``, ``in``, ``and``, ``or``, ``not``) so that a table edit can never run code.

The table's identity is ``version`` (the YAML field, bumped by whoever edits it) plus the sha256 of its
parsed content: :attr:`RulesTable.label` (``2026-11-22.1+3f9c0a1b2c4d``) is what the scoring log and
the decision record keep, so an edit that forgot to bump the version is still told apart.

Two evaluators share that language: :func:`evaluate_rules` for one request (plain Python, a few
microseconds) and :func:`rules_score_frame` for a whole frame (numpy, for training's rules baseline).
Hard rules are applied on every request whatever the model says; the points only become the score
when the model path is unavailable (the rules fallback).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import yaml

from scoring import text
from scoring.reasons import REASON_CODES

Action = Literal["none", "watch", "verify", "refuse"]
HardDecision = Literal["watch", "verify", "refuse"]
_OPS = ("eq", "gte", "in", "and", "or", "not")
_ACTIONS = ("none", "watch", "verify", "refuse")
#: How strict each hard action is: the strictest matched rule decides.
_STRICTNESS = {"watch": 1, "verify": 2, "refuse": 3}
_SOURCES = ("rule", "identity")
_FIELDS = frozenset({"id", "code", "description", "when", "points", "action", "source", "applies_to"})
DEFAULT_RULES_PATH = Path(__file__).with_name("rules.yaml")


class RulesError(ValueError):
    """The rules table is malformed; the message names the rule and the field."""


@dataclass(frozen=True)
class Rule:
    """One row of the rules table."""

    id: str
    description: str
    when: Mapping[str, Any]
    points: int
    action: Action
    source: Literal["rule", "identity"]
    applies_to: tuple[str, ...]
    #: The reason code the rule's signal carries.
    code: str = "CUSTOM_RULE"

    def applies(self, promo_type: str | None) -> bool:
        """True when the rule covers this promotion type."""
        return "all" in self.applies_to or (promo_type is not None and promo_type in self.applies_to)


@dataclass(frozen=True)
class RulesTable:
    """A parsed, validated, versioned rules table."""

    version: str
    rules: tuple[Rule, ...]
    #: sha256 of the table's parsed content (empty for a table built in code).
    digest: str = ""

    @property
    def label(self) -> str:
        """``version+sha256[:12]``: the version the scoring log and decision records keep."""
        return f"{self.version}+{self.digest[:12]}" if self.digest else self.version


@dataclass(frozen=True)
class RuleHit:
    """A rule that matched one request, with its description filled in."""

    rule_id: str
    description: str
    points: int
    action: Action
    source: Literal["rule", "identity"]
    code: str = "CUSTOM_RULE"


@dataclass(frozen=True)
class RulesOutcome:
    """The rules' answer for one request: fallback score 0-100, hits, and the strictest hard action."""

    score: int
    signals: tuple[RuleHit, ...] = field(default_factory=tuple)
    hard_decision: HardDecision | None = None


def _check_condition(rule_id: str, cond: Any) -> None:
    if not isinstance(cond, Mapping) or len(cond) != 1:
        raise RulesError(f"rule {rule_id}: when must be a mapping with exactly one operator, got {cond!r}")
    ((op, args),) = cond.items()
    if op not in _OPS:
        raise RulesError(f"rule {rule_id}: unknown operator {op!r} (allowed: {', '.join(_OPS)})")
    if op in ("and", "or"):
        if not isinstance(args, list) or not args:
            raise RulesError(f"rule {rule_id}: {op} needs a non-empty list")
        for sub in args:
            _check_condition(rule_id, sub)
    elif op == "not":
        _check_condition(rule_id, args)
    else:
        if not isinstance(args, list) or len(args) != 2 or not isinstance(args[0], str):
            raise RulesError(f"rule {rule_id}: {op} needs [input_name, value], got {args!r}")
        if op == "gte" and not isinstance(args[1], int | float):
            raise RulesError(f"rule {rule_id}: gte needs a number, got {args[1]!r}")
        if op == "in" and not isinstance(args[1], list):
            raise RulesError(f"rule {rule_id}: in needs a list of values, got {args[1]!r}")


def _condition_inputs(cond: Any) -> set[str]:
    ((op, args),) = cond.items()
    if op in ("and", "or"):
        return set().union(*(_condition_inputs(c) for c in args))
    if op == "not":
        return set()
    return {args[0]}


def _check_description(rule_id: str, description: str, when: Mapping[str, Any]) -> None:
    try:
        required, _ = text.template_fields(description)
    except ValueError as exc:
        raise RulesError(f"rule {rule_id}.description: {exc}") from None
    loose = sorted(required - _condition_inputs(when))
    if loose:
        # A value the condition does not guarantee may be missing: it belongs in an optional [...] part.
        raise RulesError(
            f"rule {rule_id}.description: {{{loose[0]}}} is not an input of the rule's condition; "
            "put it in an optional [...] part"
        )


def _rule_code(rule_id: str, item: Mapping[str, Any]) -> str:
    code = item.get("code", rule_id.upper())
    if code not in REASON_CODES:
        raise RulesError(
            f"rule {rule_id}.code: {code!r} is not a reason code; use one of scoring.reasons.ReasonCode "
            "(CUSTOM_RULE for a site-specific rule)"
        )
    return str(code)


def parse_rules(data: Mapping[str, Any]) -> RulesTable:
    """Validate a loaded YAML mapping into a :class:`RulesTable`; raise RulesError naming the problem."""
    version = data.get("version")
    if not isinstance(version, str) or not version:
        raise RulesError("rules table: version must be a non-empty string")
    raw = data.get("rules")
    if not isinstance(raw, list) or not raw:
        raise RulesError("rules table: rules must be a non-empty list")
    rules: list[Rule] = []
    seen: set[str] = set()
    for i, item in enumerate(raw):
        if not isinstance(item, Mapping):
            raise RulesError(f"rules[{i}]: must be a mapping")
        rid = item.get("id")
        if not isinstance(rid, str) or not rid:
            raise RulesError(f"rules[{i}].id: must be a non-empty string")
        if rid in seen:
            raise RulesError(f"rule {rid}: duplicate id")
        seen.add(rid)
        unknown = set(item) - _FIELDS
        if unknown:
            raise RulesError(f"rule {rid}: unknown field(s) {sorted(unknown)}")
        _check_condition(rid, item.get("when"))
        points = item.get("points", 0)
        if not isinstance(points, int) or not 0 <= points <= 100:
            raise RulesError(f"rule {rid}.points: must be an integer 0-100, got {points!r}")
        action = item.get("action", "none")
        if action not in _ACTIONS:
            raise RulesError(f"rule {rid}.action: must be one of {_ACTIONS}, got {action!r}")
        source = item.get("source", "rule")
        if source not in _SOURCES:
            raise RulesError(f"rule {rid}.source: must be one of {_SOURCES}, got {source!r}")
        applies = item.get("applies_to", ["all"])
        if not isinstance(applies, list) or not all(isinstance(a, str) for a in applies):
            raise RulesError(f"rule {rid}.applies_to: must be a list of promotion types")
        description = str(item.get("description", rid))
        _check_description(rid, description, item["when"])
        rules.append(
            Rule(rid, description, item["when"], points, action, source, tuple(applies),
                 _rule_code(rid, item))
        )
    canonical = json.dumps(data, sort_keys=True, separators=(",", ":"), default=str)
    digest = hashlib.sha256(canonical.encode()).hexdigest()
    return RulesTable(version=version, rules=tuple(rules), digest=digest)


def load_rules(path: str | Path | None = None) -> RulesTable:
    """Read and validate a rules YAML file (the packaged ``rules.yaml`` by default)."""
    target = Path(path) if path is not None else DEFAULT_RULES_PATH
    try:
        data = yaml.safe_load(target.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise RulesError(f"rules table {target}: cannot be read ({exc})") from None
    if not isinstance(data, Mapping):
        raise RulesError(f"rules table {target}: top level must be a mapping")
    return parse_rules(data)


@lru_cache(maxsize=1)
def default_rules() -> RulesTable:
    """The packaged rules table, parsed once per process."""
    return load_rules()


# --- one request -----------------------------------------------------------------------------------


def _number(value: Any) -> float | None:
    if value is None or isinstance(value, str):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(number) else number


def _holds(cond: Mapping[str, Any], inputs: Mapping[str, Any]) -> bool:
    ((op, args),) = cond.items()
    if op == "and":
        return all(_holds(c, inputs) for c in args)
    if op == "or":
        return any(_holds(c, inputs) for c in args)
    if op == "not":
        return not _holds(args, inputs)
    name, expected = args
    value = inputs.get(name)
    if op == "eq":
        if isinstance(expected, bool):
            # A missing flag is unknown, not False: it matches neither true nor false.
            if value is None or (isinstance(value, float) and math.isnan(value)):
                return False
            return bool(value) is expected
        return bool(value == expected)
    if op == "gte":
        number = _number(value)
        return number is not None and number >= float(expected)
    return value in expected


def _cap_points(hits: list[RuleHit]) -> list[RuleHit]:
    """Scale points down so that they sum to at most 100 (largest remainder), keeping the order."""
    total = sum(h.points for h in hits)
    if total <= 100:
        return hits
    exact = [h.points * 100 / total for h in hits]
    floors = [math.floor(x) for x in exact]
    short = 100 - sum(floors)
    order = sorted(range(len(hits)), key=lambda i: (floors[i] - exact[i], i))
    for i in order[:short]:
        floors[i] += 1
    return [
        RuleHit(h.rule_id, h.description, p, h.action, h.source, h.code)
        for h, p in zip(hits, floors, strict=True)
    ]


def evaluate_rules(
    inputs: Mapping[str, Any], table: RulesTable, skip_codes: Collection[str] = ()
) -> RulesOutcome:
    """Evaluate every rule of ``table`` on one request's ``inputs``; pure and deterministic.

    ``inputs`` must carry ``promo_type`` for ``applies_to``. The score is the sum of matched points
    capped at 100 (hits are scaled so their points still add up to the score); ``hard_decision`` is
    the strictest hard action of the matched rules. Rules whose code is in ``skip_codes`` are left out
    (a counterfactual asks what the answer would have been without them).
    """
    promo_type = inputs.get("promo_type")
    hits: list[RuleHit] = []
    hard: HardDecision | None = None
    for rule in table.rules:
        if skip_codes and rule.code in skip_codes:
            continue
        if not rule.applies(promo_type) or not _holds(rule.when, inputs):
            continue
        hits.append(
            RuleHit(rule.id, text.render(rule.description, inputs), rule.points, rule.action, rule.source,
                    rule.code)
        )
        if rule.action != "none" and (hard is None or _STRICTNESS[rule.action] > _STRICTNESS[hard]):
            hard = rule.action
    hits = _cap_points(hits)
    return RulesOutcome(score=sum(h.points for h in hits), signals=tuple(hits), hard_decision=hard)


# --- a whole frame ---------------------------------------------------------------------------------


def _column(frame: pd.DataFrame, name: str) -> np.ndarray:
    if name in frame.columns:
        return frame[name].to_numpy()
    return np.full(len(frame), None, dtype=object)


def _holds_frame(cond: Mapping[str, Any], frame: pd.DataFrame) -> np.ndarray:
    ((op, args),) = cond.items()
    if op == "and":
        return np.asarray(np.logical_and.reduce([_holds_frame(c, frame) for c in args]), dtype=bool)
    if op == "or":
        return np.asarray(np.logical_or.reduce([_holds_frame(c, frame) for c in args]), dtype=bool)
    if op == "not":
        return ~_holds_frame(args, frame)
    name, expected = args
    values = _column(frame, name)
    if op == "gte":
        numbers = pd.to_numeric(pd.Series(values), errors="coerce").to_numpy(dtype=float)
        with np.errstate(invalid="ignore"):
            return np.asarray(numbers >= float(expected), dtype=bool)
    if op == "eq" and isinstance(expected, bool):
        series = pd.Series(values)
        present = series.notna().to_numpy()
        truth = np.where(present, series.to_numpy(dtype=object), False).astype(bool)
        return np.asarray(present & (truth == expected), dtype=bool)
    if op == "eq":
        return np.asarray(pd.Series(values).eq(expected).to_numpy(), dtype=bool)
    return np.asarray(pd.Series(values).isin(list(expected)).to_numpy(), dtype=bool)


def rules_score_frame(frame: pd.DataFrame, table: RulesTable | None = None) -> np.ndarray:
    """Rules fallback score (int 0-100) for every row of ``frame``: training's rules baseline.

    ``frame`` holds qualified feature columns, identity flags and, when available, ``promo_type`` and
    the other rule inputs. A missing column behaves like a missing input (never matches). Without a
    ``promo_type`` column only rules that apply to all promotion types are counted.
    """
    rules = table or default_rules()
    total = np.zeros(len(frame), dtype=np.int64)
    promo = frame["promo_type"].to_numpy() if "promo_type" in frame.columns else None
    for rule in rules.rules:
        if "all" in rule.applies_to:
            scope = np.ones(len(frame), dtype=bool)
        elif promo is None:
            continue
        else:
            scope = np.isin(promo, list(rule.applies_to))
        total += np.where(scope & _holds_frame(rule.when, frame), rule.points, 0)
    return np.minimum(total, 100)


def rule_ids(table: RulesTable) -> Sequence[str]:
    """The rule ids of a table in evaluation order."""
    return [r.id for r in table.rules]
