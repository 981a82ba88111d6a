"""One /score request, in the architecture's order, with every dependency injected.

validate (done by the schema) -> identity keys and the identity graph's person -> request-time
signals -> online features and velocity counts under the feature deadline -> booster + calibrator ->
TreeSHAP signals -> hard rules (and the rules score when the model path is unavailable) -> decision
and the atomic reservation of capped promotions -> velocity counters and the hashed scoring log ->
response.

A dependency that fails or runs past its deadline never becomes an error for checkout: the answer
comes from the rules with ``degraded: true, fallback: "rules"``. Only a reused ``request_id`` with a
different body is an error (:class:`scoring.records.IdempotencyConflict`).

Design choices worth knowing:

* Velocity counters are the catalog's (``features.definitions.velocity_queries``/``velocity_updates``);
  a redemption reported to ``/outcome`` is recorded with ``redemption_updates``.
* Velocity counts and Feast values for the same feature are merged with ``max``: Feast is exact up to
  its last materialization and velocity exact since the counters started, so the larger one is the
  better lower bound of the true count (a freshly started service does not read zeros).
* Referral self-redemption: every attempt by an account records ``xref:{account_key}:{kind}:{key}``
  for each hard identity it carried (30-day window). A referral checks the referrer's counters against
  the redeemer's hard keys, so "the referrer was seen on this device/household/card/phone" is one
  velocity read; a referrer who is the redeemer's own account, or whom the identity graph resolves to
  the redeemer's person or household, is caught directly. A shared home network alone is only a model
  input: a weak key never refuses.
* The identity graph (:mod:`features.graph`) resolves every attempt to a person (two strong signals
  agreeing) and a household. A per-customer cap counts on the promotion's ``cap_scope``
  (:func:`cap_plan`): the person decides alone there, as the account does.
* Velocity time is the server's clock, not the request's ``timestamp``: a caller cannot move itself
  out of a window.
* When the reservation of a capped promotion cannot be made (velocity down) the promotion's
  ``on_cap_outage`` decides (:func:`cap_outage_action`): a single-use code, by default, asks for
  verification (``cap_unverifiable``, one leaked code must not be redeemed a thousand times during an
  outage); every other promotion fails open to the rules decision and says so (degraded), so checkout
  keeps working while Redis is away.
* The request runs as typed steps over one :class:`RequestContext`. A valid capped code is reserved
  before the rules run, so the rules are evaluated once with the reservation's outcome as an input;
  an attempt they then refuse gives its hold back at once.
* The score agrees with the decision: a hard rule that decides more strictly than the score lifts the
  score to that decision's threshold for the promotion (never below its band), and the lift is the
  deciding rule's points, listed first. Thresholds are normalised once per model
  (:func:`scoring.policy.normalize_thresholds`) so every decision is reachable and inside its band.
* The scoring log keeps what a decision record needs to re-score the answer later (the rules' inputs
  besides the features, the policy, per-step timings); the counterfactual itself is computed on
  demand (:mod:`scoring.decisions`), never on the request path.
* Exploration (:meth:`Scorer._explore`): a configured share of the model's threshold verify/refuse
  answers, drawn from a hash of ``request_id``, is let through as allow and marked in the scoring log;
  hard-rule decisions are never explored. A challenger (the shadow) answers through the same pure steps
  (:func:`model_answer_for`, :func:`verdict_for`) on the request's context, after the live answer.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, Literal, Protocol, TypeVar

import numpy as np

from features.context import request_context, segment_matches
from features.definitions import HARD_IDENTITIES, redemption_updates, velocity_queries, velocity_updates
from features.graph import Attempt, Resolution
from scoring.artifact import LoadedModel
from scoring.controls import CampaignControl, Controls, ListMatch, apply_controls, monitor_only
from scoring.policy import (
    DEFAULT_BANDS,
    DEFAULT_THRESHOLDS,
    EXPLORABLE,
    MIN_GAP,
    band_for,
    by_score,
    check_bands,
    exploration_share,
    explores,
    lift_to,
    normalize_thresholds,
    stricter,
)
from scoring.reasons import IDENTITY_WORDS, absent_identities
from scoring.records import IdempotencyConflict, RecordsLike, ScoreRecord
from scoring.rules import RulesOutcome, RulesTable, evaluate_rules
from scoring.schemas import (
    OutcomeRequest,
    OutcomeResponse,
    Promotion,
    ScoreRequest,
    ScoreResponse,
    Signal,
    to_event_record,
)
from scoring.signals import compose_signals, model_signals, rule_signals
from scoring.text import duration_hours

logger = logging.getLogger(__name__)
_T = TypeVar("_T")

_XREF_WINDOW_S = 30 * 86_400
#: The single-use identity of features.velocity: one global use, whoever redeems it.
GLOBAL_IDENTITY = "*"


# --- what the scorer needs from the features package ------------------------------------------------


class KeysLike(Protocol):
    """Identity keys with the contract's column names."""

    def as_dict(self) -> dict[str, Any]:
        """Keys and flags by contract name."""
        ...


class IdentityResolverLike(Protocol):
    """features.identity.IdentityResolver."""

    def resolve(self, record: Mapping[str, Any]) -> KeysLike:
        """Keys and flags of one raw record (event column names)."""
        ...


class OnlineFeaturesLike(Protocol):
    """features.store.OnlineFeatures."""

    def read(self, entity_rows: Mapping[str, str | None], deadline: float | None = None) -> dict[str, float]:
        """Qualified feature -> value for one request's join keys.

        Must not wait past ``deadline`` (a ``time.perf_counter()`` value) for a lock or a socket:
        the scorer calls it in the request's own thread.
        """
        ...

    def close(self) -> None:
        """Stop background work (the registry refresher)."""
        ...


class ReservationLike(Protocol):
    """features.velocity.Reservation."""

    @property
    def status(self) -> str:
        """``reserved`` or ``exhausted``."""
        ...

    @property
    def matched(self) -> tuple[str, ...]:
        """Every ``kind:key`` identity at its limit (also when too few to block)."""
        ...

    @property
    def blocked_by(self) -> str | None:
        """The ``kind:key`` identity at its limit."""
        ...


class VelocityLike(Protocol):
    """features.velocity.VelocityStore (the part serving uses)."""

    def record(self, request_id: str, ts: float, updates: Sequence[tuple[str, str]]) -> bool:
        """Apply ``(counter, member)`` adds once per request."""
        ...

    def read(self, queries: Sequence[tuple[str, float]]) -> list[int]:
        """Cardinalities of ``(counter, since_ts)``."""
        ...

    def reserve(
        self,
        request_id: str,
        scope: str,
        identities: Sequence[str],
        limit: int,
        ttl_s: float,
        now: float,
        *,
        quorum: int = 1,
        decisive: Sequence[str] = (),
    ) -> ReservationLike:
        """Atomically reserve one use per identity unless ``quorum`` (or a decisive one) are at ``limit``."""
        ...

    def confirm(self, request_id: str) -> bool:
        """Turn a hold into a use."""
        ...

    def release(self, request_id: str, *, confirmed: bool = False) -> bool:
        """Free a hold (``confirmed``: a confirmed use too)."""
        ...

    def close(self) -> None:
        """Release connections and background threads."""
        ...


class IdentityGraphLike(Protocol):
    """features.graph.SqliteGraph / RedisGraph: online identity resolution."""

    def resolve(self, attempt: Attempt) -> Resolution:
        """Resolve and add one attempt atomically (idempotent on its request id)."""
        ...

    def close(self) -> None:
        """Release connections."""
        ...


class CallGuardLike(Protocol):
    """serving.breaker.CircuitBreaker: runs a call, or refuses it at once while its dependency is failing."""

    def call(self, fn: Callable[[], _T]) -> _T:
        """``fn()``, counted; raises instead of calling while the guard is open."""
        ...


# --- velocity counters: which ones a request reads and writes ---------------------------------------

#: Window of the home-network check: several new accounts on one limited code within the hour.
HOME_NETWORK_WINDOW_S = 3600.0

#: Identities whose being shared with the referrer makes a referral self-redemption. A home network
#: (local IP behind one public network) stays a model input: a weak key never refuses alone.
REFERRAL_STRONG_KINDS: tuple[str, ...] = ("device", "household", "payment", "phone")


def home_network_counter(row: Mapping[str, Any]) -> str | None:
    """The counter of accounts that tried one code from one home network, None without both."""
    home, code = row.get("local_ip_key"), row.get("promo_code")
    return f"homenet:{home}:{code}" if home and code else None


def home_network_updates(row: Mapping[str, Any]) -> list[tuple[str, str]]:
    """Add this attempt's customer (account, else email, else the attempt) to its home network's counter."""
    counter = home_network_counter(row)
    if counter is None:
        return []
    member = row.get("account_key") or row.get("email_key") or f"rq:{row.get('request_id')}"
    return [(counter, str(member))]


def referral_updates(row: Mapping[str, Any]) -> list[tuple[str, str]]:
    """``(counter, member)`` adds that remember which hard identities an account was seen with."""
    account = row.get("account_key")
    if not account:
        return []
    return [
        (f"xref:{account}:{kind}:{row[f'{kind}_key']}", "seen")
        for kind in HARD_IDENTITIES
        if row.get(f"{kind}_key")
    ]


def attempt_updates(row: Mapping[str, Any]) -> list[tuple[str, str]]:
    """Every ``(counter, member)`` add step 9 records for one scored attempt: the real-time features'
    counters, the referral cross-references and the home network's customers."""
    return velocity_updates(row) + referral_updates(row) + home_network_updates(row)


def referral_queries(keys: Mapping[str, Any], now: float) -> list[tuple[str, str, float]]:
    """``(hard kind, counter, since)`` asking whether the referrer was seen with each hard key."""
    referrer = keys.get("referrer_key")
    if not referrer:
        return []
    since = now - _XREF_WINDOW_S
    return [
        (kind, f"xref:{referrer}:{kind}:{keys[f'{kind}_key']}", since)
        for kind in HARD_IDENTITIES
        if keys.get(f"{kind}_key")
    ]


# --- configuration and pure functions --------------------------------------------------------------


@dataclass(frozen=True)
class ScorerConfig:
    """Deadlines and policy of the scorer (the service builds it from its settings)."""

    feature_deadline_ms: float = 50.0
    request_deadline_ms: float = 200.0
    reservation_ttl_s: float = 1800.0
    bands: Mapping[str, int] = field(default_factory=lambda: dict(DEFAULT_BANDS))
    thresholds: Mapping[str, Mapping[str, int]] = field(default_factory=lambda: dict(DEFAULT_THRESHOLDS))
    top_k_signals: int = 6
    #: Exploration share per promotion type (``default``: every other type); empty: never explore.
    exploration: Mapping[str, float] = field(default_factory=dict)


def body_sha256(req: ScoreRequest) -> str:
    """Canonical hash of a request body (field order and whitespace do not matter)."""
    return hashlib.sha256(req.model_dump_json(exclude_none=True).encode()).hexdigest()


ReservationStatus = Literal["not_needed", "reserved", "blocked", "unavailable"]


@dataclass(frozen=True)
class ReservationOutcome:
    """What step 8's atomic reservation of a capped promotion gave."""

    status: ReservationStatus
    #: The identity kind at its limit (``device``, ``household``, ``*`` for a spent single-use code).
    blocked_kind: str | None = None
    #: Every identity kind that matched an earlier redeemer, also when too few to block.
    matched: tuple[str, ...] = ()


#: Identities strong enough that two of them matching an earlier redeemer make the same customer (seed:
#: "block when two or more strong signals align"). Weak keys (public or private IP, network, user
#: agent) never take part in a cap: millions of homes share 192.168.1.x.
STRONG_IDENTITIES: tuple[str, ...] = ("device", "payment", "phone", "email", "household")


@dataclass(frozen=True)
class CapPlan:
    """How one capped promotion is reserved: on which identities, and how many must match to block."""

    identities: tuple[str, ...]
    limit: int
    quorum: int
    decisive: tuple[str, ...]


def cap_scope(promo: Promotion) -> str:
    """Who a per-customer limit counts: the promotion's ``cap_scope``, else household for free samples
    (the seed: one per household) and the resolved person for every other promotion."""
    if promo.cap_scope is not None:
        return promo.cap_scope
    return "household" if promo.type == "free_sample" else "person"


def cap_plan(promo: Promotion, keys: Mapping[str, Any], person_id: str | None = None) -> CapPlan | None:
    """The reservation of a capped promotion, following the seeds' policy and the promotion's scope.

    A single-use code is one global use. A per-customer limit is kept per customer, as
    :func:`cap_scope` says:

    * ``person``: the shopper's own account decides alone, and so does the person the identity graph
      resolved the attempt to (``person_id``: joined to earlier attempts by two strong identities);
      otherwise two strong identities (:data:`STRONG_IDENTITIES`) of an earlier redeemer must match,
      and one alone is only a warning;
    * ``household``: the same, and the household decides alone, however the address is spelled;
    * ``account``: the account alone (a guest cannot be capped there).

    Weak keys (IP, network, home network) never take part. None when nothing can be reserved.
    """
    if promo.single_use:
        return CapPlan((GLOBAL_IDENTITY,), 1, 1, (GLOBAL_IDENTITY,))
    limit = int(promo.per_customer_limit or 1)
    scope = cap_scope(promo)
    account = keys.get("account_key")
    if scope == "account":
        if not account:
            return None
        ident = f"account:{account}"
        return CapPlan((ident,), limit, 1, (ident,))
    idents: list[str] = []
    decisive: list[str] = []
    if account:
        idents.append(f"account:{account}")
        decisive.append(idents[-1])
    if person_id:
        idents.append(f"person:{person_id}")
        decisive.append(idents[-1])
    for kind in STRONG_IDENTITIES:
        if keys.get(f"{kind}_key"):
            idents.append(f"{kind}:{keys[f'{kind}_key']}")
            if kind == "household" and scope == "household":
                decisive.append(idents[-1])
    if not idents:
        return None
    return CapPlan(tuple(idents), limit, 2, tuple(decisive))


#: Promotion types whose per-customer limit counts every code of the type together: a welcome offer is
#: a first-order offer, so a customer who redeemed WELCOME10 has had it, whatever WELCOME15 says.
#: Intro offers stay per code: the seed gates them per product, and two products may each have one.
OFFER_WIDE_TYPES: frozenset[str] = frozenset({"welcome"})


def offer_wide(promo: Promotion) -> bool:
    """Whether the promotion's cap is kept on its type (:data:`OFFER_WIDE_TYPES`), not on its code.

    A single-use code is always its own scope: its one use is global, not per customer.
    """
    return not promo.single_use and promo.type in OFFER_WIDE_TYPES


def cap_key(promo: Promotion) -> str:
    """The reservation store's scope of a capped promotion: its type if :func:`offer_wide`, else its code."""
    return f"type:{promo.type}" if offer_wide(promo) else f"promo:{promo.code}"


NO_RESERVATION = ReservationOutcome("not_needed")


def cap_outage_action(promo: Promotion) -> Literal["allow", "verify"]:
    """What a capped promotion gets while its cap cannot be checked: its own ``on_cap_outage``, else verify
    for a single-use code (one global use: failing open could honour a leaked code without bound) and
    allow (fail open) for every other promotion, whose per-customer cap costs at most one extra use each."""
    if promo.on_cap_outage is not None:
        return promo.on_cap_outage
    return "verify" if promo.single_use else "allow"


def rule_inputs(
    req: ScoreRequest,
    keys: Mapping[str, Any],
    features: Mapping[str, float],
    shared_kind: str | None,
    reservation: ReservationOutcome,
    resolution: Resolution | None = None,
    home_network_accounts: int | None = None,
    now: float | None = None,
) -> dict[str, Any]:
    """Every named input the rules table may use: the request, its keys, its features, its reservation,
    the person the identity graph resolved it to and the home network's recent customers of the code."""
    promo = req.promotion
    account = req.account
    is_guest = account is None or account.is_guest or not account.account_id
    segment = None if account is None else account.segment
    inputs: dict[str, Any] = dict(features)
    inputs.update({k: v for k, v in keys.items() if not k.endswith("_key")})
    inputs.update({f"has_{k}": bool(v) for k, v in keys.items() if k.endswith("_key")})
    redeemed_before = features.get("code_stats__redeemed_total")
    spent_before = redeemed_before is not None and not math.isnan(redeemed_before) and redeemed_before >= 1
    blocked = reservation.status == "blocked"
    cap_kind = reservation.blocked_kind if blocked and not promo.single_use else None
    cap_kinds = reservation.matched if blocked and not promo.single_use else ()
    if "person" in cap_kinds:
        # Name the evidence, not the graph's node: the identities that joined this person.
        evidence = () if resolution is None else resolution.evidence
        cap_kinds = tuple(dict.fromkeys([*(k for k in cap_kinds if k != "person"), *evidence])) or ("person",)
    across_codes = offer_wide(promo)
    earlier_ago = None
    # Across a type's codes the earlier use may have been another code: "at this code" would not hold.
    if (blocked and not across_codes and resolution is not None and resolution.person_code_last_ts is not None
            and now is not None):
        earlier_ago = duration_hours(max(0.0, now - resolution.person_code_last_ts) / 3600.0) + " ago"
    searched = invalid_codes(features)
    # One strong identity of an earlier redeemer, not enough to be the same customer: a warning.
    one_match = reservation.status == "reserved" and len(reservation.matched) == 1
    inputs.update(
        promo_type=promo.type,
        promo_valid=promo.valid,
        promo_single_use=promo.single_use,
        promo_per_customer_limit=promo.per_customer_limit,
        promo_limited=promo_is_limited(promo),
        promo_worth_searching=promo_worth_searching(promo),
        # The most codes the store rejected from one of the shopper's own identities in 24 hours.
        invalid_codes_24h=None if searched is None else searched[1],
        invalid_codes_identity=None if searched is None else IDENTITY_WORDS.get(searched[0], searched[0]),
        promo_eligible_segment=promo.eligible_segment,
        account_segment=("guest" if is_guest else segment) or "none",
        account_is_guest=is_guest,
        segment_mismatch=promo.eligible_segment is not None
        and (is_guest or not segment_matches(segment, promo.eligible_segment)),
        referral_shares_hard_identity=shared_kind is not None,
        referral_shared_kind=shared_kind,
        single_use_spent=promo.single_use and (spent_before or blocked),
        customer_cap_reached=blocked and not promo.single_use,
        # The cap could not be checked (reservation store down) and the promotion asks to verify then.
        cap_unverifiable=reservation.status == "unavailable" and cap_outage_action(promo) == "verify",
        cap_blocked_kind=cap_kind,
        cap_offer_wide=f"across every {promo.type} code" if blocked and across_codes else None,
        earlier_redeemer_one_signal=one_match,
        earlier_redeemer_identity=(
            IDENTITY_WORDS.get(reservation.matched[0], reservation.matched[0]) if one_match else None
        ),
        # Other customers of this code on this home network within the hour (this one not counted
        # until it is recorded); None when there is no home network or velocity is down.
        home_network_code_accounts_1h=home_network_accounts,
        earlier_redeemer_ago=earlier_ago,
        # Words for the descriptions (scoring.text): present only when there is something to say.
        code_redeemed_before=redeemed_before if spent_before else None,
        cap_blocked_identity=(
            _word_list([IDENTITY_WORDS.get(k, k) for k in cap_kinds]) if cap_kinds
            else None if cap_kind is None else IDENTITY_WORDS.get(cap_kind, cap_kind)
        ),
        referral_shared_identity=None if shared_kind is None else IDENTITY_WORDS.get(shared_kind),
        shopper_segment=(
            "a guest" if is_guest else f"in the {segment} segment" if segment else "in no segment"
        ),
    )
    return inputs


def _word_list(words: Sequence[str]) -> str:
    """"device", "device and card", "account, device and card": a list as a sentence says it."""
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " and " + words[-1]


def promo_is_limited(promo: Promotion) -> bool:
    """True when the promotion caps its uses (single-use, or a per-customer limit)."""
    return promo.single_use or promo.per_customer_limit is not None


#: The shopper's own identities whose rejected codes make a code search; a network is shared by
#: strangers (an office, a campus, a carrier's NAT), so its misses are not one shopper's.
SEARCH_IDENTITIES: tuple[str, ...] = ("device", "account", "email")


def invalid_codes(features: Mapping[str, float]) -> tuple[str, float] | None:
    """``(identity kind, count)`` of the :data:`SEARCH_IDENTITIES` with the most rejected codes in 24
    hours (the first on a tie), or None when none of them was read."""
    best: tuple[str, float] | None = None
    for kind in SEARCH_IDENTITIES:
        value = features.get(f"{kind}_stats__invalid_24h")
        if value is not None and not math.isnan(value) and (best is None or value > best[1]):
            best = (kind, float(value))
    return best


#: Promotion types that are one per customer by nature, whether or not the request states a limit.
ONE_PER_CUSTOMER_TYPES: frozenset[str] = frozenset({"welcome", "referral", "intro_offer", "free_sample"})


def promo_worth_searching(promo: Promotion) -> bool:
    """A valid code worth finding by trying code after code: limited, or one per customer by nature.

    A sitewide sale's public code is not: anyone may have it, so finding it by search takes nothing.
    """
    return promo.valid and (promo_is_limited(promo) or promo.type in ONE_PER_CUSTOMER_TYPES)


def model_inputs(
    features: Mapping[str, float], keys: Mapping[str, Any], context: Mapping[str, float] | None = None
) -> dict[str, float]:
    """Every numeric input of one request: the read features, the identity flags as 0/1, the context.

    The model row is taken from it and the scoring log keeps it whole: flags travel in the identity keys,
    not in the feature reads, and a log without them would show every flag as missing to drift.
    ``context`` holds the promotion and referral columns (:mod:`features.context`).
    """
    out = dict(features)
    for name, value in keys.items():
        if not name.endswith("_key") and isinstance(value, bool | int | float) and name not in out:
            out[name] = float(value)
    out.update(context or {})
    return out


def context_inputs(
    req: ScoreRequest,
    shared_kinds: Sequence[str],
    referrer_is_account: bool,
    graph: Mapping[str, float] | None = None,
) -> dict[str, float]:
    """The promotion, referral and identity-graph context of one request (:mod:`features.context`)."""
    account = req.account
    guest = account is None or account.is_guest or not account.account_id
    return request_context(
        req.promotion.model_dump(),
        {"is_guest": guest, "segment": None if account is None else account.segment},
        len(shared_kinds),
        referrer_is_account,
        graph,
    )


def referral_shared_kind(
    own_account: bool, shared_kinds: Sequence[str], resolution: Resolution | None
) -> str | None:
    """What makes a referral self-redemption, or None.

    The referrer is the redeemer's own account; or the referrer was seen with one of the redeemer's
    strong identities (:data:`REFERRAL_STRONG_KINDS`: device, household, card, phone); or the identity
    graph resolves the referrer to the redeemer's person or household. A home network alone never does.
    """
    if own_account:
        return "account"
    strong = [k for k in shared_kinds if k in REFERRAL_STRONG_KINDS]
    if strong:
        return strong[0]
    if resolution is not None and resolution.referrer_same_person:
        return "person"
    if resolution is not None and resolution.referrer_same_household:
        return "household"
    return None


def feature_row(names: Sequence[str], inputs: Mapping[str, float]) -> np.ndarray:
    """The float64 model row in manifest order from :func:`model_inputs` (NaN where an input is missing)."""
    row = np.full(len(names), np.nan, dtype=np.float64)
    for i, name in enumerate(names):
        value = inputs.get(name)
        if value is not None:
            row[i] = float(value)
    return row


@dataclass(frozen=True)
class ModelAnswer:
    """The model path's score and its signals (points summing to the score)."""

    score: int
    signals: list[Signal]


@dataclass(frozen=True)
class Verdict:
    """The decision path's answer before it is recorded."""

    score: int
    decision: str
    signals: list[Signal]
    rules: RulesOutcome
    #: The rule whose hard action is the decision (None when the score alone decided).
    deciding_rule: str | None = None
    #: Points the deciding rule added to lift the score into its decision's band.
    lift: int = 0
    #: The policy's decision when exploration let the attempt through (``decision`` is then allow).
    explored_from: str | None = None
    #: The thresholds this request was decided with (:func:`thresholds_for`, or its campaign's own).
    thresholds: Mapping[str, int] = field(default_factory=dict)
    #: The policy's decision when the campaign is in monitor-only mode (``decision`` is then allow).
    monitored_from: str | None = None
    #: Whether the score alone could refuse (an operator's refuse threshold on the campaign).
    score_may_refuse: bool = False


@dataclass(frozen=True)
class Policy:
    """Band bounds and normalised thresholds: what a score means, for one loaded model (or the rules)."""

    bands: dict[str, int]
    thresholds: dict[str, dict[str, int]]

    def for_promotion(self, promo_type: str | None) -> dict[str, int]:
        """The promotion type's own thresholds (the default table's when it has none)."""
        return dict(self.thresholds.get(promo_type or "") or self.thresholds["default"])


def build_policy(bands: Mapping[str, int], thresholds: Mapping[str, Mapping[str, int]]) -> Policy:
    """Validate bands, normalise thresholds (:mod:`scoring.policy`); bad bands fall back to the defaults."""
    try:
        checked = check_bands(bands)
    except ValueError as exc:
        logger.error("%s: using the default bands %s", exc, DEFAULT_BANDS)
        checked = dict(DEFAULT_BANDS)
    return Policy(checked, normalize_thresholds(thresholds, checked))


def model_answer_for(
    model: LoadedModel, inputs: Mapping[str, float], keys: Mapping[str, Any], top_k: int
) -> ModelAnswer:
    """Steps 5-6 for any loaded model: booster + calibrator -> score, TreeSHAP -> signals (may raise)."""
    x = feature_row(model.feature_names, inputs)
    model_score, contrib = model.explain(x)
    baseline = int(min(100, max(0, round(model.score_of_margin(float(contrib[-1]))))))
    sigs = model_signals(contrib, model.feature_names, x, model_score, baseline,
                         top_k=top_k, absent=absent_identities(keys))
    return ModelAnswer(model_score, sigs)


#: The model's verify and refuse thresholds on an unprotected promotion (:func:`unprotected`).
UNPROTECTED_VERIFY = 95
UNPROTECTED_REFUSE = 100


def unprotected(inputs: Mapping[str, Any]) -> bool:
    """A valid sitewide promotion with nothing to protect from one customer: no single use, no
    per-customer limit, no segment. Every abuse pattern of the seed catalogue games a limit (welcome,
    intro, referral and sample offers are one per customer by nature), a segment or an invalid code;
    here there is none, so the model's score alone asks for verification only when it is all but
    certain (:data:`UNPROTECTED_VERIFY`). Hard rules still decide as usual."""
    return (
        inputs.get("promo_type") == "sitewide"
        and inputs.get("promo_valid") is True
        and not inputs.get("promo_limited")
        and not inputs.get("promo_eligible_segment")
    )


def thresholds_for(promo_type: str | None, inputs: Mapping[str, Any], policy: Policy) -> dict[str, int]:
    """The thresholds one request is decided with: its type's, raised for an unprotected promotion."""
    own = policy.for_promotion(promo_type)
    if not unprotected(inputs):
        return own
    refuse = max(own["refuse"], UNPROTECTED_REFUSE)
    verify = max(own["verify"], min(UNPROTECTED_VERIFY, refuse - MIN_GAP))
    return {"watch": min(own["watch"], verify - MIN_GAP), "verify": verify, "refuse": refuse}


def verdict_for(
    promo_type: str | None, inputs: Mapping[str, Any], answer: ModelAnswer | None, rules: RulesTable,
    policy: Policy, control: CampaignControl | None = None,
) -> Verdict:
    """Steps 7-8 for any rules table and policy: the rules, evaluated once, and the decision.

    Pure: ``inputs`` are the rules' inputs (:func:`rule_inputs`), ``answer`` the model's (None: the rules'
    points are the score). A hard rule stricter than the score decides, and lifts the score to its
    decision's threshold (so refuse is always high, verify at least medium); the lift is the deciding
    rule's points. The thresholds are the request's own (:func:`thresholds_for`), or the ones an
    operator set for the campaign (``control``).
    """
    outcome = evaluate_rules(inputs, rules)
    own = thresholds_for(promo_type, inputs, policy)
    if control is not None:
        own = control.thresholds(policy.for_promotion(promo_type)) or own
    thresholds = {"default": own}
    if answer is not None:
        base, model_sigs = answer.score, answer.signals
    else:
        base, model_sigs = outcome.score, []
    may_refuse = score_may_refuse(control)
    scored = by_score(base, promo_type, thresholds, may_refuse=may_refuse)
    decision = stricter(scored, outcome.hard_decision)
    deciding = None
    if outcome.hard_decision is not None and outcome.hard_decision == decision:
        deciding = next(h.rule_id for h in outcome.signals if h.action == decision)
    score = lift_to(base, decision, promo_type, thresholds) if decision != scored else base
    signals = compose_signals(model_sigs, rule_signals(outcome.signals, priced=answer is None), deciding,
                              score - base)
    return Verdict(score, decision, signals, outcome, deciding, score - base, thresholds=own,
                   score_may_refuse=may_refuse)


def score_may_refuse(control: CampaignControl | None) -> bool:
    """Whether the score alone may refuse (:func:`scoring.policy.by_score`): only where an operator set
    the campaign's refuse threshold."""
    return control is not None and control.refuse_threshold is not None


@dataclass
class RequestContext:
    """One request as it moves through the decision path: each step reads it and fills its part."""

    req: ScoreRequest
    digest: str
    started: float
    #: The request thread's CPU clock (``time.thread_time``) when scoring began.
    cpu_started: float
    now: float
    keys: dict[str, Any]
    identity_ok: bool
    #: The request's join keys plus its ids: what velocity and the online store are asked about.
    row: dict[str, Any]
    features: dict[str, float] = field(default_factory=dict)
    #: ``features`` plus the identity flags: what the model reads and the scoring log keeps.
    inputs: dict[str, float] = field(default_factory=dict)
    shared_kind: str | None = None
    #: Who the identity graph resolved the attempt to (None: no graph, or it failed).
    resolution: Resolution | None = None
    #: Customers that tried this code from this home network in the last hour (None: not known).
    home_network_accounts: int | None = None
    failed: list[str] = field(default_factory=list)
    model: ModelAnswer | None = None
    model_failed: bool = False
    reservation: ReservationOutcome = NO_RESERVATION
    record_failed: bool = False
    #: What the rules read besides ``features`` (flags, promotion policy, reservation): kept for re-scoring.
    rule_inputs: dict[str, Any] = field(default_factory=dict)
    #: Milliseconds per step, for the decision record.
    timings: dict[str, float] = field(default_factory=dict)
    #: The operator's campaign control and the list entry that applied (None: none), for the log.
    control: CampaignControl | None = None
    listed: ListMatch | None = None

    def lap(self, step: str, since: float) -> float:
        """Record the milliseconds ``step`` took since ``since``; return now (``perf_counter``)."""
        now = time.perf_counter()
        self.timings[step] = round((now - since) * 1000.0, 3)
        return now

    @property
    def degraded(self) -> bool:
        """True when any dependency failed or ran late, or the model did not answer."""
        return (
            bool(self.failed)
            or not self.identity_ok
            or self.model_failed
            or self.model is None
            or self.reservation.status == "unavailable"
            or self.record_failed
        )


class Scorer:
    """Scores one request; thread-safe; dependencies are injected and may each be missing or failing."""

    #: The operator's campaign controls and allow/deny lists; the service swaps in a fresh snapshot
    #: when they change (:class:`scoring.controls_store.ControlsRefresher`), so a request reads one.
    controls: Controls = Controls()

    #: Called with each fresh answer's context, verdict and response once it is logged (the shadow's
    #: submit, :mod:`serving.shadow`); it must return at once. None: nothing is called.
    on_scored: Callable[[RequestContext, Verdict, ScoreResponse], object] | None = None

    def __init__(
        self,
        resolver: IdentityResolverLike,
        online: OnlineFeaturesLike | None,
        velocity: VelocityLike | None,
        model: LoadedModel | None,
        rules: RulesTable,
        records: RecordsLike,
        config: ScorerConfig | None = None,
        clock: Callable[[], float] = time.time,
        graph: IdentityGraphLike | None = None,
        model_guard: CallGuardLike | None = None,
    ) -> None:
        """Keep the dependencies (``graph``: online identity resolution; None runs without persons).

        ``model_guard`` runs each live prediction (a circuit breaker: a model that keeps raising is not
        asked again for a cool-down, and the rules answer); None calls the model directly.
        """
        self.resolver = resolver
        self.graph = graph
        self.online = online
        self.velocity = velocity
        self.model = model
        self.model_guard = model_guard
        self.rules = rules
        self.records = records
        self.config = config or ScorerConfig()
        self.clock = clock
        self._policy: tuple[LoadedModel | None, Policy] | None = None
        self.policy()

    def policy(self) -> Policy:
        """Bands and thresholds of the loaded model (or the config without one), validated once per model."""
        model, cached = self.model, self._policy
        if cached is None or cached[0] is not model:
            if model is not None:
                built = build_policy(model.bands, model.thresholds)
            else:
                built = build_policy(self.config.bands, self.config.thresholds)
            self._policy = cached = (model, built)
        return cached[1]

    def close(self) -> None:
        """Close the online reader, the velocity store (its last WAL checkpoint) and the scoring log."""
        if self.online is not None:
            self.online.close()
        if self.velocity is not None:
            self.velocity.close()
        if self.graph is not None:
            self.graph.close()
        self.records.close()

    # -- step 4 ---------------------------------------------------------------------------------------

    def _read_velocity(
        self, row: Mapping[str, Any], now: float
    ) -> tuple[dict[str, float], list[str], int | None]:
        assert self.velocity is not None
        queries = velocity_queries(row, now)
        xref = referral_queries(row, now)
        home = home_network_counter(row)
        extra = [] if home is None else [(home, now - HOME_NETWORK_WINDOW_S)]
        counts = self.velocity.read(
            [(c, s) for _, c, s in queries] + [(c, s) for _, c, s in xref] + extra
        )
        values: dict[str, float] = {}
        for (name, _, _), count in zip(queries, counts, strict=False):
            values[name] = float(count)
        shared = [kind for (kind, _, _), n in zip(xref, counts[len(queries):], strict=False) if n]
        # Customers that tried this code from this home network in the hour, before this attempt.
        return values, shared, None if home is None else int(counts[-1])

    def _bounded(
        self, name: str, read: Callable[[], _T], deadline: float, failed: list[str],
        bound: Literal["feature", "request"] = "feature",
    ) -> _T | None:
        """``read()``, or None when it raised; a read that raised or ended past ``deadline`` joins ``failed``.

        A late answer is still returned: the rules, which answer once anything failed, may use it.
        ``bound`` names the deadline (``feature`` or ``request``) in the operator's log.
        """
        began = time.perf_counter()
        try:
            value = read()
        except Exception as exc:
            failed.append(name)
            logger.warning("%s read failed: %s", name, type(exc).__name__)
            return None
        ended = time.perf_counter()
        if ended > deadline:
            failed.append(name)
            # The reads share one deadline: its own time says whether this read was slow or only last.
            config = self.config
            limit_ms = config.feature_deadline_ms if bound == "feature" else config.request_deadline_ms
            logger.warning("%s read ended past the %.0f ms %s deadline, after %.1f ms of its own",
                           name, limit_ms, bound, (ended - began) * 1000.0)
        return value

    def _link(self, ctx: RequestContext) -> None:
        """Step 2's graph: the attempt joins the identity graph and resolves to a person and household.

        Bounded by the whole request's deadline, not the feature reads': resolution is a write
        transaction that queues behind the other requests' under load, and a resolution that ends in
        time leaves the model its answer. Its failure or lateness degrades the answer to the rules.
        """
        graph = self.graph
        if graph is None:
            return
        attempt = Attempt.from_keys(ctx.req.request_id, ctx.now, ctx.row)
        deadline = ctx.started + self.config.request_deadline_ms / 1000.0
        ctx.resolution = self._bounded(
            "graph", lambda: graph.resolve(attempt), deadline, ctx.failed, bound="request"
        )

    def _read_all(self, ctx: RequestContext) -> None:
        """Step 4: online features and velocity counts, each bounded by the feature deadline."""
        row, now = ctx.row, ctx.now
        # The deadline bounds the reads from when they start. Counted from the request's start, a
        # worker stalled before them (identity or graph resolution, a GC or a descheduled process)
        # turned quick reads into a rules answer. The whole request stays bounded by
        # ``request_deadline_ms`` from its start.
        deadline = time.perf_counter() + self.config.feature_deadline_ms / 1000.0
        failed = ctx.failed
        # Both reads run in the request's thread, one after the other, each bounded on its own: the
        # online read by the deadline it is given (lock wait) or Redis's socket timeout, the velocity
        # read because SQLite reads in WAL mode never wait for writers and Redis has a socket timeout.
        # A pool with a deadline cost a thread hand-off per request: measured at 200 requests/s, the
        # read step's p99 went 2.7 -> 1.3 ms and CPU per request 3.03 -> 2.73 ms without it.
        feast: dict[str, float] = {}
        online = self.online
        if online is None:
            failed.append("features")
        else:
            entity_rows = {k: v for k, v in row.items() if isinstance(v, str) or v is None}
            read = self._bounded("features", lambda: online.read(entity_rows, deadline), deadline, failed)
            feast = read or {}
        live: dict[str, float] = {}
        shared: list[str] = []
        if self.velocity is None:
            failed.append("velocity")
        else:
            counts = self._bounded("velocity", lambda: self._read_velocity(row, now), deadline, failed)
            if counts is not None:
                live, shared, ctx.home_network_accounts = counts
        merged = dict(feast)
        for name, value in live.items():
            old = merged.get(name)
            merged[name] = value if old is None or math.isnan(old) else max(old, value)
        # A referrer that is the redeemer's own account shares every identity.
        own = bool(row.get("referrer_key")) and row.get("referrer_key") == row.get("account_key")
        ctx.features = merged
        ctx.shared_kind = referral_shared_kind(own, shared, ctx.resolution)
        graph_values = None if ctx.resolution is None else ctx.resolution.features()
        ctx.inputs = model_inputs(merged, ctx.keys, context_inputs(ctx.req, shared, own, graph_values))

    # -- the request ----------------------------------------------------------------------------------

    def score(self, req: ScoreRequest) -> ScoreResponse:
        """Score one request (idempotent on ``request_id``); never raises for a dependency failure."""
        started, cpu_started = time.perf_counter(), time.thread_time()
        digest = body_sha256(req)
        try:
            stored, log_failed = self.records.lookup(req.request_id, digest), False
        except IdempotencyConflict:
            raise
        except Exception as exc:
            # The log cannot say whether this is a retry: answer as new (at worst a retry is scored
            # twice while the log is away), and say the answer is degraded.
            logger.warning("scoring log lookup failed: %s", type(exc).__name__)
            stored, log_failed = None, True
        if stored is not None:
            return ScoreResponse.model_validate(stored)
        ctx = self._resolve(req, digest, started, cpu_started)
        ctx.record_failed = log_failed
        mark = ctx.lap("resolve", started)
        self._link(ctx)
        mark = ctx.lap("graph", mark)
        self._read_all(ctx)
        mark = ctx.lap("features", mark)
        ctx.model = self._model_answer(ctx)
        mark = ctx.lap("model", mark)
        ctx.reservation = self._reserve(ctx)
        mark = ctx.lap("reserve", mark)
        verdict = self._verdict(ctx)
        if verdict.decision == "refuse" and ctx.reservation.status == "reserved":
            self._give_back(ctx)
        mark = ctx.lap("rules", mark)
        self._record_attempt(ctx)
        ctx.lap("velocity_record", mark)
        response = self._respond(ctx, verdict)
        if self.on_scored is not None:
            self._hand_off(ctx, verdict, response)
        return response

    def _hand_off(self, ctx: RequestContext, verdict: Verdict, response: ScoreResponse) -> None:
        """Hand a fresh answer to :attr:`on_scored` (the shadow's non-blocking submit); never fails it."""
        assert self.on_scored is not None
        try:
            self.on_scored(ctx, verdict, response)
        except Exception as exc:
            logger.warning("on_scored hook failed: %s", type(exc).__name__)

    def _resolve(self, req: ScoreRequest, digest: str, started: float, cpu_started: float) -> RequestContext:
        """Step 2: identity keys and flags; a resolver failure degrades the answer, never fails it."""
        try:
            keys: dict[str, Any] = self.resolver.resolve(to_event_record(req)).as_dict()
            identity_ok = True
        except Exception as exc:
            logger.warning("identity resolution failed: %s", type(exc).__name__)
            keys, identity_ok = {}, False
        row: dict[str, Any] = {k: v for k, v in keys.items() if k.endswith("_key")}
        row.update(
            request_id=req.request_id,
            promo_code=req.promotion.code,
            promo_type=req.promotion.type,
            promo_valid=req.promotion.valid,
        )
        return RequestContext(req, digest, started, cpu_started, self.clock(), keys, identity_ok, row)

    def _model_answer(self, ctx: RequestContext) -> ModelAnswer | None:
        """Steps 5-6: booster + calibrator -> score, TreeSHAP -> signals; None when unavailable or late."""
        model = self.model
        if model is None or ctx.failed or not ctx.identity_ok:
            return None

        def predict() -> ModelAnswer:
            return model_answer_for(model, ctx.inputs, ctx.keys, self.config.top_k_signals)

        try:
            answer = predict() if self.model_guard is None else self.model_guard.call(predict)
        except Exception as exc:
            logger.warning("model prediction failed: %s", type(exc).__name__)
            ctx.model_failed = True
            return None
        if (time.perf_counter() - ctx.started) * 1000.0 > self.config.request_deadline_ms:
            logger.warning("model path ran past the %.0f ms deadline", self.config.request_deadline_ms)
            ctx.model_failed = True
            return None
        return answer

    def _reserve(self, ctx: RequestContext) -> ReservationOutcome:
        """Step 8's reservation: take one use of a capped promotion on its scope, atomically.

        Every attempt at a valid capped code asks, so the rules see the answer as one of their inputs;
        an attempt the rules then refuse gives its hold back (:meth:`_give_back`). A verify attempt keeps
        its hold: it is honoured once the shopper passes the check, and must count against the cap.
        """
        promo = ctx.req.promotion
        if not promo.valid or not promo_is_limited(promo):
            return NO_RESERVATION
        if self.velocity is None:
            return ReservationOutcome("unavailable")
        plan = cap_plan(promo, ctx.row, None if ctx.resolution is None else ctx.resolution.person_id)
        if plan is None:
            return NO_RESERVATION
        try:
            res = self.velocity.reserve(
                ctx.req.request_id, cap_key(promo), list(plan.identities), plan.limit,
                self.config.reservation_ttl_s, ctx.now, quorum=plan.quorum, decisive=list(plan.decisive),
            )
        except Exception as exc:
            logger.warning("reservation failed: %s", type(exc).__name__)
            return ReservationOutcome("unavailable")
        matched = tuple(m.split(":", 1)[0] for m in res.matched)
        if res.status == "reserved":
            return ReservationOutcome("reserved", matched=matched)
        return ReservationOutcome("blocked", (res.blocked_by or "identity").split(":", 1)[0], matched)

    def _verdict(self, ctx: RequestContext) -> Verdict:
        """Step 7-8: the rules, evaluated once, and the decision (:func:`verdict_for`), then exploration.

        A hard rule stricter than the score decides, and lifts the score to its decision's threshold
        (so refuse is always high, verify at least medium); the lift is the deciding rule's points.
        """
        inputs = rule_inputs(
            ctx.req, ctx.keys, ctx.features, ctx.shared_kind, ctx.reservation, ctx.resolution,
            ctx.home_network_accounts, ctx.now,
        )
        ctx.rule_inputs = {k: v for k, v in inputs.items() if k not in ctx.features}
        promo, controls = ctx.req.promotion, self.controls
        ctx.control = control = controls.campaign(promo.code)
        person = None if ctx.resolution is None else ctx.resolution.person_id
        ctx.listed = controls.match(ctx.keys, person, ctx.now)
        verdict = verdict_for(promo.type, inputs, ctx.model, self.rules, self.policy(), control)
        blocked = ctx.reservation.status == "blocked"
        verdict = apply_controls(verdict, promo.type, control, ctx.listed, blocked)
        return monitor_only(self._explore(ctx, verdict), control)

    def _explore(self, ctx: RequestContext, verdict: Verdict) -> Verdict:
        """Let a drawn share of the model's verify/refuse answers through as allow (the exploration holdout).

        Only a decision the model's score made by threshold is explored: never a hard rule's (a spent
        single-use code, a reached cap, a self-referral...), never the rules fallback's, never an attempt
        whose reservation was blocked. The draw is a hash of ``request_id``, so a retry gets the same
        answer. Score and signals stay as they are: they still show the risk.
        """
        share = exploration_share(self.config.exploration, ctx.req.promotion.type)
        if (
            share <= 0.0
            or verdict.decision not in EXPLORABLE
            or ctx.model is None
            or verdict.rules.hard_decision is not None
            or verdict.deciding_rule is not None
            or ctx.reservation.status not in ("not_needed", "reserved")
            or not explores(ctx.req.request_id, share)
        ):
            return verdict
        return replace(verdict, decision="allow", explored_from=verdict.decision)

    def challenger_verdict(
        self, ctx: RequestContext, model: LoadedModel | None, rules: RulesTable, policy: Policy
    ) -> tuple[Verdict, bool]:
        """What another model and rules table answer on this request's own inputs: (verdict, on the model).

        For the shadow (:mod:`serving.shadow`), off the request path, after the live answer: it reads
        ``ctx`` as the live path left it (features, keys and flags, the reservation's outcome, referral
        kinds, the rules' inputs) and writes nothing: no velocity, no reservation, no log, no field of
        ``ctx``. The model answers under the live path's conditions (every read on time, identity
        resolved); a model that raises leaves the rules to answer, as on the live path. No exploration.
        """
        answer: ModelAnswer | None = None
        if model is not None and not ctx.failed and ctx.identity_ok:
            if model is self.model and ctx.model is not None:
                answer = ctx.model
            else:
                try:
                    answer = model_answer_for(model, ctx.inputs, ctx.keys, self.config.top_k_signals)
                except Exception as exc:
                    logger.warning("challenger model prediction failed: %s", type(exc).__name__)
        inputs = {**ctx.features, **ctx.rule_inputs}
        return verdict_for(ctx.req.promotion.type, inputs, answer, rules, policy), answer is not None

    def _give_back(self, ctx: RequestContext) -> None:
        """Release the hold of an attempt that is refused: a refusal never uses up a shopper's cap."""
        assert self.velocity is not None
        try:
            self.velocity.release(ctx.req.request_id)
        except Exception as exc:
            logger.warning("reservation release failed: %s", type(exc).__name__)

    def _record_attempt(self, ctx: RequestContext) -> None:
        """Step 9: count the attempt in the velocity counters (and the referral cross-references)."""
        if self.velocity is None:
            return
        try:
            self.velocity.record(ctx.req.request_id, ctx.now, attempt_updates(ctx.row))
        except Exception as exc:
            ctx.record_failed = True
            logger.warning("velocity record failed: %s", type(exc).__name__)

    def _respond(self, ctx: RequestContext, verdict: Verdict) -> ScoreResponse:
        """Steps 9-10: the response, logged (hashed) once; a concurrent twin's logged answer wins."""
        req, model = ctx.req, self.model
        policy = self.policy()
        bands = policy.bands
        answered_by_model = ctx.model is not None and model is not None
        response = ScoreResponse(
            request_id=req.request_id,
            score=verdict.score,
            band=band_for(verdict.score, bands),  # type: ignore[arg-type]
            decision=verdict.decision,  # type: ignore[arg-type]
            signals=verdict.signals,
            model_version=model.version if answered_by_model and model is not None else None,
            degraded=ctx.degraded,
            fallback=None if answered_by_model else "rules",
            latency_ms=round((time.perf_counter() - ctx.started) * 1000.0, 3),
        )
        logged = response.model_dump(mode="json")
        ctx.timings["total"] = response.latency_ms
        # The thread's own CPU time: far below ``total``, the request waited (a lock, the disk, the GIL
        # or a CPU the worker did not get) rather than worked.
        ctx.timings["cpu"] = round((time.thread_time() - ctx.cpu_started) * 1000.0, 3)
        context = {
            "rule_inputs": ctx.rule_inputs,
            "deciding_rule": verdict.deciding_rule,
            "lift": verdict.lift,
            "policy": {"promo_type": req.promotion.type, "bands": bands,
                       "thresholds": dict(verdict.thresholds), "score_may_refuse": verdict.score_may_refuse},
            # The discount at stake, for finance's export of a window (scoring.records.decisions_frame).
            "discount_value": req.promotion.discount_value,
        }
        if verdict.explored_from is not None:
            # Exploration let the attempt through: the log keeps what the policy decided (Records.append).
            context["explored_from"] = verdict.explored_from
        if verdict.monitored_from is not None:
            context["monitored_from"] = verdict.monitored_from
        if ctx.control is not None:
            context["campaign_control"] = {
                "mode": ctx.control.mode, "force_verify": ctx.control.force_verify,
                "verify_threshold": ctx.control.verify_threshold,
                "refuse_threshold": ctx.control.refuse_threshold, "reason": ctx.control.reason,
            }
        if ctx.listed is not None:
            entry = ctx.listed.entry
            context["list_entry"] = {"list": entry.list, "kind": entry.kind, "reason": entry.reason}
        try:
            stored_now = self.records.append(
                ScoreRecord(
                    request_id=req.request_id, body_sha256=ctx.digest,
                    ts=datetime.fromtimestamp(ctx.now, UTC), promo_code=req.promotion.code,
                    promo_type=req.promotion.type, score=verdict.score,
                    band=response.band, decision=verdict.decision, fallback=response.fallback,
                    degraded=response.degraded, model_version=response.model_version,
                    latency_ms=response.latency_ms, signals=logged["signals"],
                    features=ctx.inputs, keys=ctx.keys,
                    rules_version=self.rules.label, response=logged, timings=ctx.timings, context=context,
                )
            )
        except IdempotencyConflict:
            raise
        except Exception as exc:
            # Checkout still gets its decision; unlogged, it is degraded (a retry will be scored again).
            logger.warning("scoring log append failed: %s", type(exc).__name__)
            return response.model_copy(update={"degraded": True})
        return response if stored_now == logged else ScoreResponse.model_validate(stored_now)

    def outcome(self, req: OutcomeRequest) -> OutcomeResponse:
        """Confirm (redeemed) or release (abandoned, reversed) the reservation of a scored attempt."""
        state = "none"
        if self.velocity is not None:
            if req.outcome == "redeemed":
                state = "confirmed" if self.velocity.confirm(req.request_id) else "none"
                scored = self.records.scored(req.request_id)
                if scored is not None:
                    # The redemption is its own velocity event (a request id may be recorded once).
                    row = {k: v for k, v in json.loads(scored["keys_json"]).items() if k.endswith("_key")}
                    row.update(
                        request_id=req.request_id,
                        promo_code=scored["promo_code"],
                        promo_type=scored["promo_type"],
                    )
                    self.velocity.record(f"{req.request_id}#redeemed", self.clock(), redemption_updates(row))
            else:
                # A reversed order gives its use back even once confirmed: the discount was not kept.
                # An abandon after a redemption is a checkout's mistake and frees nothing.
                freed = self.velocity.release(req.request_id, confirmed=req.outcome == "reversed")
                state = "released" if freed else "none"
        when = datetime.fromtimestamp(self.clock(), UTC)
        self.records.add_outcome(req.request_id, req.outcome, state, when)
        return OutcomeResponse(request_id=req.request_id, outcome=req.outcome, reservation=state)  # type: ignore[arg-type]
