"""Decision records: one answer as it was given, frozen, and what would have changed it.

:func:`decision_record` reads the scoring log's row of one request (:mod:`scoring.records`): the answer
exactly as checkout received it, the model and rules versions, every model input and the hashed keys
and flags (never raw identity), timings per step, and the outcomes and labels received since. For a
verify or refuse answer it adds a counterfactual, computed here on demand and never on the request
path: the smallest set of the answer's signals whose absence would have changed the decision.

How the counterfactual is searched (greedy, so "smallest" means smallest found, not proven minimal):

1. Re-score the stored inputs with the model and rules that answered (the loaded model must be the
   version of the answer, the rules table the same content); the re-scored decision must equal the
   recorded one, or the record says why it cannot be recomputed.
2. Candidates are the answer's signals that raised the risk (positive points) or whose rule decided,
   at most :data:`MAX_CANDIDATES`, strongest first. Taking a signal away sets every model input of
   its reason code to that input's neutral value (no attempts, not flagged, long known) and leaves out
   the rules of that code.
3. Forward: add the candidate whose absence lowers the decision most (then the score), until the
   decision changes. Backward: drop every chosen signal the change does not need.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from scoring.artifact import LoadedModel
from scoring.controls import CONTROL_RULES
from scoring.policy import DECISIONS, by_score, stricter
from scoring.reasons import BASELINE_CODE, OTHER_CODE, concept, feature_reason
from scoring.records import RecordsLike
from scoring.rules import RulesTable, evaluate_rules
from scoring.schemas import (
    Counterfactual,
    CounterfactualSignal,
    DecisionPolicy,
    DecisionRecord,
    RecordedFeedback,
    RecordedOutcome,
    ScoreResponse,
    Signal,
)
from scoring.scorer import feature_row

#: How many of the answer's signals the counterfactual search considers.
MAX_CANDIDATES = 8
METHOD = (
    "greedy over the answer's top signals: take away, one at a time, the signal whose absence lowers the "
    "decision (then the score) most, re-scoring the model and rules on the stored inputs, until the decision "
    "changes; then put back every signal the change does not need"
)
_RANK = {d: i for i, d in enumerate(DECISIONS)}
_PARTICIPLE = {
    "allow": "allowed",
    "watch": "allowed on watch",
    "verify": "sent to verification",
    "refuse": "refused",
}


@dataclass(frozen=True)
class Rescored:
    """A re-scored answer: score and decision."""

    score: int
    decision: str


class Rescorer:
    """The model (or rules) path of one stored answer, re-run on its inputs with some signals taken away."""

    def __init__(
        self,
        model: LoadedModel | None,
        rules: RulesTable,
        thresholds: Mapping[str, Mapping[str, int]],
        promo_type: str,
        features: Mapping[str, float | None],
        rule_extras: Mapping[str, Any],
        score_may_refuse: bool = False,
    ) -> None:
        """``model`` None re-scores the rules path; ``features`` are the logged model inputs;
        ``score_may_refuse`` as the answer's policy recorded it (:func:`scoring.policy.by_score`)."""
        self.model = model
        self.rules = rules
        self.thresholds = thresholds
        self.promo_type = promo_type
        self.features = dict(features)
        self.rule_extras = dict(rule_extras)
        self.score_may_refuse = score_may_refuse

    def neutral_inputs(self, codes: Collection[str]) -> dict[str, float]:
        """Model input -> neutral value for every logged input whose reason code is in ``codes``."""
        out: dict[str, float] = {}
        for name in self.features.keys() | self.rule_extras.keys():
            reason = feature_reason(name)
            if reason is not None and reason.code in codes:
                out[name] = reason.neutral
        return out

    def score(self, codes: Collection[str] = ()) -> Rescored:
        """Score and decision with the signals of ``codes`` taken away."""
        neutral = self.neutral_inputs(codes)
        inputs: dict[str, Any] = {**self.features, **self.rule_extras, **neutral}
        outcome = evaluate_rules(inputs, self.rules, skip_codes=codes)
        if self.model is not None:
            # The request path's own arithmetic (TreeSHAP sums to the margin), so a replay matches exactly.
            x = feature_row(
                self.model.feature_names,
                {k: v for k, v in {**self.features, **neutral}.items() if v is not None},
            )
            score = self.model.explain(x)[0]
        else:
            score = outcome.score
        scored = by_score(score, self.promo_type, self.thresholds, may_refuse=self.score_may_refuse)
        return Rescored(score, stricter(scored, outcome.hard_decision))


def _candidates(answer: ScoreResponse, deciding: str | None) -> list[Signal]:
    out = []
    for s in answer.signals:
        if s.code in (BASELINE_CODE, OTHER_CODE) or concept(s.code).if_absent is None:
            continue
        if s.points > 0 or s.name == deciding:
            out.append(s)
    first = [s for s in out if s.name == deciding]
    rest = sorted((s for s in out if s.name != deciding), key=lambda s: -s.points)
    return (first + rest)[:MAX_CANDIDATES]


def _clause(signal: Signal) -> str:
    if signal.code == "CUSTOM_RULE":
        return f"rule {signal.name} had not matched"
    return concept(signal.code).if_absent or signal.description


def search_counterfactual(rescorer: Rescorer, answer: ScoreResponse, deciding: str | None) -> Counterfactual:
    """The smallest set of ``answer``'s signals (found greedily) whose absence changes its decision."""
    original = _RANK[answer.decision]
    candidates = _candidates(answer, deciding)
    chosen: list[Signal] = []

    def codes(signals: Sequence[Signal]) -> set[str]:
        return {s.code for s in signals}

    def changed(r: Rescored) -> bool:
        return _RANK[r.decision] < original

    state = rescorer.score()
    while not changed(state) and len(chosen) < len(candidates):
        trials = [(rescorer.score(codes([*chosen, c])), c) for c in candidates if c not in chosen]
        best, pick = min(trials, key=lambda t: (_RANK[t[0].decision], t[0].score))
        chosen.append(pick)
        state = best
    if not changed(state):
        return Counterfactual(
            found=False,
            explanation=f"no set of the top {len(candidates)} signals changes the decision",
            signals=[],
            neutralised={},
            rules_left_out=[],
            method=METHOD,
        )
    for c in list(chosen):
        rest = [s for s in chosen if s is not c]
        if rest and changed(trial := rescorer.score(codes(rest))):
            chosen, state = rest, trial
    taken = codes(chosen)
    explanation = f"would have been {_PARTICIPLE[state.decision]} if " + " and ".join(
        _clause(s) for s in chosen
    )
    return Counterfactual(
        found=True,
        explanation=explanation,
        signals=[CounterfactualSignal(name=s.name, code=s.code, description=s.description) for s in chosen],
        decision=state.decision,  # type: ignore[arg-type]
        score=state.score,
        neutralised=rescorer.neutral_inputs(taken),
        rules_left_out=sorted(c for c in taken if any(r.code == c for r in rescorer.rules.rules)),
        method=METHOD,
    )


def _not_found(note: str) -> Counterfactual:
    return Counterfactual(
        found=False,
        explanation="cannot be recomputed",
        signals=[],
        neutralised={},
        rules_left_out=[],
        method=METHOD,
        note=note,
    )


def counterfactual(
    row: Mapping[str, Any], answer: ScoreResponse, model: LoadedModel | None, rules: RulesTable
) -> Counterfactual | None:
    """The counterfactual of a logged verify or refuse answer (None for allow and watch)."""
    if answer.decision not in ("verify", "refuse"):
        return None
    context = json.loads(row.get("context_json") or "null") or {}
    if not context:
        return _not_found("this answer was logged before decision records kept the rules' inputs")
    if context.get("deciding_rule") in CONTROL_RULES:
        # No signal of the attempt made this decision: an operator's campaign control or list entry did.
        return _not_found(f"an operator's control decided it ({context['deciding_rule']}): only lifting "
                          "that control changes the decision")
    if row.get("rules_version") != rules.label:
        return _not_found(f"the rules table changed since ({row.get('rules_version')} -> {rules.label})")
    on_model = answer.fallback is None
    if on_model and (model is None or model.version != answer.model_version):
        loaded = "no model" if model is None else f"model {model.version}"
        return _not_found(f"model {answer.model_version} answered, {loaded} is loaded now")
    policy = context.get("policy") or {}
    promo_type = str(policy.get("promo_type") or row["promo_type"])
    thresholds = {
        promo_type: dict(policy.get("thresholds") or {}),
        "default": dict(policy.get("thresholds") or {}),
    }
    rescorer = Rescorer(
        model if on_model else None,
        rules,
        thresholds,
        promo_type,
        json.loads(row["features_json"]),
        context.get("rule_inputs") or {},
        # Answers logged before the flag was recorded were decided when a score alone could refuse.
        bool(policy.get("score_may_refuse", True)),
    )
    replay = rescorer.score()
    if replay.decision != answer.decision:
        return _not_found(f"re-scoring the stored inputs gives {replay.decision}, not {answer.decision}")
    return search_counterfactual(rescorer, answer, context.get("deciding_rule"))


def decision_record(
    records: RecordsLike, request_id: str, model: LoadedModel | None, rules: RulesTable
) -> DecisionRecord | None:
    """The decision record of one scored request, or None when it was never scored."""
    row = records.scored(request_id)
    if row is None:
        return None
    answer = ScoreResponse.model_validate(json.loads(row["response_json"]))
    context = json.loads(row.get("context_json") or "null") or {}
    outcomes, feedback = records.history(request_id)
    policy = context.get("policy")
    return DecisionRecord(
        request_id=request_id,
        recorded_at=datetime.fromisoformat(row["ts"]),
        answer=answer,
        model_version=row["model_version"],
        rules_version=row["rules_version"],
        deciding_rule=context.get("deciding_rule"),
        would_be_decision=context.get("explored_from") or context.get("monitored_from"),
        let_through=("exploration" if context.get("explored_from")
                     else "monitor_only" if context.get("monitored_from") else None),
        controls={k: context[k] for k in ("campaign_control", "list_entry") if context.get(k)},
        policy=None if not policy else DecisionPolicy.model_validate(policy),
        features=json.loads(row["features_json"]),
        rule_inputs=context.get("rule_inputs") or {},
        identity=json.loads(row["keys_json"]),
        timings_ms=json.loads(row.get("timings_json") or "null") or {"total": float(row["latency_ms"])},
        outcomes=[RecordedOutcome.model_validate(o) for o in outcomes],
        feedback=[RecordedFeedback.model_validate(f) for f in feedback],
        counterfactual=counterfactual(row, answer, model, rules),
    )
