"""Campaign controls and allow/deny lists: what an operator decides about a promotion or an identity.

Pure: the kinds of entry, their validation, matching an attempt against a snapshot and applying the
result to a verdict. Storing them (SQLite or PostgreSQL, with the audit trail) is
:mod:`scoring.controls_store`; the service holds a :class:`Controls` snapshot and swaps in a fresh one
when the store changes (:class:`scoring.controls_store.ControlsRefresher`).

A **campaign control** belongs to one promotion code (compared case-insensitively: a pause must catch
every spelling a shopper types):

* ``paused``: every attempt is refused with the reason "campaign paused" (the seed guide's first
  mitigation: it acts in seconds, with no deploy);
* ``monitor``: the decision is computed and logged, and the answer is allow (the seeds' "start in
  logging-only mode"); the decision record keeps what it would have been;
* ``force_verify``: every attempt that would be allowed or watched is asked to verify;
* thresholds: the promotion's own verify and refuse thresholds, replacing its type's.

A **list entry** holds the keyed hash of one identity (never the raw value: :func:`list_key` hashes it
with the service's pepper), or a person id of the identity graph. A deny entry refuses with its reason;
an allow entry allows, except past a hard cap or on a spent single-use code (the cap is the store's
promise to itself, not a risk opinion). Entries may expire. Deny wins over allow.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal, get_args

from features.identity import normalize_ip
from scoring.policy import MIN_GAP, lift_to
from scoring.schemas import Signal

if TYPE_CHECKING:
    from scoring.scorer import Verdict

ListName = Literal["allow", "deny"]
LIST_NAMES: tuple[str, ...] = get_args(ListName)
CampaignMode = Literal["active", "paused", "monitor"]
CAMPAIGN_MODES: tuple[str, ...] = get_args(CampaignMode)

ListKind = Literal[
    "account", "email", "phone", "device", "payment", "household", "ip", "network", "local_network", "person"
]
#: List kinds and the attempt key each matches (``person``: the identity graph's resolved person).
LIST_KINDS: Mapping[str, str] = {
    "account": "account_key",
    "email": "email_key",
    "phone": "phone_key",
    "device": "device_key",
    "payment": "payment_key",
    "household": "household_key",
    "ip": "ip_key",
    "network": "network_key",
    "local_network": "local_ip_key",
    "person": "person_id",
}
#: Kinds whose raw value :func:`list_key` can hash; the others are given as the hash a decision record
#: or ``GET /identity`` shows (an address spelled many ways, a home network, a graph person).
RAW_KINDS: tuple[str, ...] = ("account", "email", "phone", "device", "payment", "ip", "network")

#: Rule ids the controls decide under: they name the cause in ``signals`` and the decision record.
PAUSED_RULE = "campaign_paused"
FORCED_RULE = "campaign_force_verify"
DENY_RULE = "deny_list"
ALLOW_RULE = "allow_list"
#: The controls that decide an attempt by themselves, whatever its signals.
CONTROL_RULES: frozenset[str] = frozenset({PAUSED_RULE, FORCED_RULE, DENY_RULE})
#: Deciding rules an allow entry never overrides: a hard cap reached, a spent single-use code.
CAP_RULES: frozenset[str] = frozenset({"single_use_spent", "customer_cap_reached"})


class InvalidControl(ValueError):
    """A campaign control or list entry that cannot be stored; the message names the field."""


def code_key(code: str) -> str:
    """The form a promotion code is controlled under: trimmed and case-folded."""
    return code.strip().casefold()


@dataclass(frozen=True)
class CampaignControl:
    """An operator's settings for one promotion code."""

    code: str
    mode: CampaignMode = "active"
    force_verify: bool = False
    verify_threshold: int | None = None
    refuse_threshold: int | None = None
    reason: str | None = None
    updated_by: str = ""
    updated_at: datetime | None = None

    def __post_init__(self) -> None:
        """Refuse a mode, threshold pair or code that could not be applied, naming the field."""
        if not self.code.strip():
            raise InvalidControl("code: must not be empty")
        if self.mode not in CAMPAIGN_MODES:
            raise InvalidControl(f"mode: expected one of {', '.join(CAMPAIGN_MODES)}, got {self.mode!r}")
        check_thresholds(self.verify_threshold, self.refuse_threshold)

    @property
    def is_default(self) -> bool:
        """True when the control changes nothing (a resumed campaign without overrides)."""
        return (self.mode == "active" and not self.force_verify and self.verify_threshold is None
                and self.refuse_threshold is None)

    def thresholds(self, own: Mapping[str, int]) -> dict[str, int] | None:
        """The thresholds to decide with, from the type's ``own``; None when the control sets none."""
        if self.verify_threshold is None and self.refuse_threshold is None:
            return None
        verify = self.verify_threshold if self.verify_threshold is not None else own["verify"]
        refuse = self.refuse_threshold if self.refuse_threshold is not None else own["refuse"]
        # One bound given alone may cross the type's other one: the other moves out of its way.
        if self.verify_threshold is None:
            verify = min(verify, refuse - MIN_GAP)
        if self.refuse_threshold is None:
            refuse = min(100, max(refuse, verify + MIN_GAP))
        return {"watch": min(own["watch"], verify - MIN_GAP), "verify": verify, "refuse": refuse}


def check_thresholds(verify: int | None, refuse: int | None) -> None:
    """Raise :class:`InvalidControl` for thresholds outside 1-100 or closer than the policy's gap."""
    for name, value in (("verify_threshold", verify), ("refuse_threshold", refuse)):
        if value is not None and not MIN_GAP * 2 <= value <= 100:
            raise InvalidControl(f"{name}: expected {MIN_GAP * 2}-100, got {value}")
    if verify is not None and refuse is not None and refuse < verify + MIN_GAP:
        raise InvalidControl(
            f"refuse_threshold: must be at least {MIN_GAP} above verify_threshold ({verify}), got {refuse}"
        )


@dataclass(frozen=True)
class ListEntry:
    """One allow or deny entry: a keyed hash of an identity (or a person id), why, by whom, until when."""

    list: ListName
    kind: str
    key: str
    reason: str
    added_by: str = ""
    added_at: datetime | None = None
    expires_at: datetime | None = None

    def __post_init__(self) -> None:
        """Refuse an unknown list or kind, an empty key or reason, naming the field."""
        if self.list not in LIST_NAMES:
            raise InvalidControl(f"list: expected one of {', '.join(LIST_NAMES)}, got {self.list!r}")
        if self.kind not in LIST_KINDS:
            raise InvalidControl(f"kind: expected one of {', '.join(LIST_KINDS)}, got {self.kind!r}")
        if not self.key or len(self.key) > 128:
            raise InvalidControl("key: 1 to 128 characters")
        if not self.reason.strip() or len(self.reason) > 200:
            raise InvalidControl("reason: 1 to 200 characters (it is what checkout and analysts read)")

    def active(self, now: datetime) -> bool:
        """True until its expiry (an entry without one never expires)."""
        return self.expires_at is None or now < self.expires_at


def list_key(resolver: Any, kind: str, value: str) -> str:
    """The keyed hash of a raw identity value, as the identity layer computes it for an attempt.

    ``resolver`` is the service's :class:`features.identity.IdentityResolver` (same pepper, same phone
    region), so the entry matches the attempts the value appears in. A ``network`` value is an IP: its
    /24 (IPv6 /64) is keyed. Raises :class:`InvalidControl` for a kind without a raw form or a value the
    identity layer cannot read.
    """
    if kind not in RAW_KINDS:
        raise InvalidControl(
            f"kind: {kind} entries are given by key (the hash a decision record or GET /identity shows); "
            f"raw values are accepted for {', '.join(RAW_KINDS)}"
        )
    if kind == "email":
        key = resolver.email_part(value).key
    elif kind == "phone":
        key = resolver.phone_part(value).key
    elif kind == "device":
        key = resolver.device_key(value)
    elif kind in ("ip", "network"):
        # Hashed here, not through ip_part: keying an IP needs no IP intelligence lookup.
        ip = normalize_ip(value)
        key = resolver.hasher.maybe(kind, ip.ip if kind == "ip" else ip.network)
    else:
        key = resolver.simple_key(kind, value)
    if key is None:
        raise InvalidControl(f"value: not a valid {kind}")
    return str(key)


@dataclass(frozen=True)
class ListMatch:
    """The list entry an attempt matched."""

    entry: ListEntry


@dataclass(frozen=True)
class Controls:
    """A snapshot of every campaign control and list entry, as of one version of the store."""

    campaigns: Mapping[str, CampaignControl] = field(default_factory=dict)
    #: Entries by (kind, key); both lists may hold the same identity (deny wins).
    entries: Mapping[tuple[str, str], tuple[ListEntry, ...]] = field(default_factory=dict)
    version: int = 0

    @classmethod
    def of(cls, campaigns: list[CampaignControl], entries: list[ListEntry], version: int) -> Controls:
        """Index the store's rows."""
        by_key: dict[tuple[str, str], list[ListEntry]] = {}
        for e in entries:
            by_key.setdefault((e.kind, e.key), []).append(e)
        return cls({code_key(c.code): c for c in campaigns}, {k: tuple(v) for k, v in by_key.items()},
                   version)

    def campaign(self, code: str) -> CampaignControl | None:
        """The control of a promotion code, or None when the operator set none."""
        return self.campaigns.get(code_key(code)) if self.campaigns else None

    def match(
        self, keys: Mapping[str, Any], person_id: str | None, now: datetime | float
    ) -> ListMatch | None:
        """The first live deny entry the attempt's keys hit, else the first live allow entry, else None.

        ``now`` may be epoch seconds: the request path passes its clock as is, and without lists (the
        common case) no time is built at all.
        """
        if not self.entries:
            return None
        if not isinstance(now, datetime):
            now = datetime.fromtimestamp(now, UTC)
        hits: list[ListEntry] = []
        for kind, column in LIST_KINDS.items():
            value = person_id if column == "person_id" else keys.get(column)
            if value:
                hits.extend(e for e in self.entries.get((kind, str(value)), ()) if e.active(now))
        if not hits:
            return None
        deny = [e for e in hits if e.list == "deny"]
        return ListMatch((deny or hits)[0])


def _signal(name: str, code: str, description: str, points: int) -> Signal:
    return Signal(name=name, code=code, description=description, points=points, source="rule")  # type: ignore[arg-type]


def _decide_by_control(verdict: Verdict, decision: str, rule: str, code: str, description: str,
                       promo_type: str | None) -> Verdict:
    """``verdict`` decided by a control: the score lifted to the decision's threshold, its signal first."""
    score = lift_to(verdict.score, decision, promo_type, {"default": dict(verdict.thresholds)})
    lift = score - verdict.score
    first = _signal(rule, code, description, lift)
    return replace(verdict, score=score, decision=decision, signals=[first, *verdict.signals],
                   deciding_rule=rule, lift=lift)


def apply_controls(
    verdict: Verdict, promo_type: str | None, control: CampaignControl | None, match: ListMatch | None,
    cap_blocked: bool,
) -> Verdict:
    """The verdict after the operator's controls, strongest first: pause, deny, allow, force verify.

    ``cap_blocked`` is True when the attempt's reservation was refused (a spent single-use code, a cap
    reached): an allow entry does not override it. The score always agrees with the decision: a refusal
    or verification is lifted to its threshold (the control's signal carries the points), an allow entry
    brings the score under the watch threshold (its signal carries the negative points). Monitor-only
    mode is applied after exploration by :func:`monitor_only`.
    """
    if control is not None and control.mode == "paused":
        why = f"campaign paused: {control.reason}" if control.reason else "campaign paused"
        return _decide_by_control(verdict, "refuse", PAUSED_RULE, "CAMPAIGN_PAUSED", why, promo_type)
    if match is not None and match.entry.list == "deny":
        e = match.entry
        why = f"the {e.kind.replace('_', ' ')} is on the deny list: {e.reason}"
        return _decide_by_control(verdict, "refuse", DENY_RULE, "DENY_LISTED", why, promo_type)
    if match is not None and not cap_blocked and verdict.deciding_rule not in CAP_RULES:
        e = match.entry
        ceiling = max(0, int(verdict.thresholds.get("watch", 1)) - 1)
        score = min(verdict.score, ceiling)
        why = f"the {e.kind.replace('_', ' ')} is on the allow list: {e.reason}"
        first = _signal(ALLOW_RULE, "ALLOW_LISTED", why, score - verdict.score)
        return replace(verdict, score=score, decision="allow", signals=[first, *verdict.signals],
                       deciding_rule=ALLOW_RULE, lift=score - verdict.score)
    if control is not None and control.force_verify and verdict.decision in ("allow", "watch"):
        why = "verification is required for this campaign"
        if control.reason:
            why += f": {control.reason}"
        return _decide_by_control(verdict, "verify", FORCED_RULE, "FORCED_VERIFICATION", why, promo_type)
    return verdict


def monitor_only(verdict: Verdict, control: CampaignControl | None) -> Verdict:
    """In monitor-only mode the answer is allow; the decision the policy reached is kept for the log."""
    if control is None or control.mode != "monitor" or verdict.decision == "allow":
        return verdict
    return replace(verdict, decision="allow", monitored_from=verdict.decision)


def utc_now() -> datetime:
    """Now, in UTC (the time every control and entry is stamped and compared with)."""
    return datetime.now(UTC)
