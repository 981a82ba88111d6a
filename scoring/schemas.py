"""The HTTP contract of the scoring service: flat JSON request and response bodies.

Every model forbids unknown fields, so a caller can never smuggle in ``score`` or ``decision`` (no mass
assignment), and a typo in a field name is an error naming that field instead of silently ignored data.
Strings and lists carry size limits so that one request cannot make the service hash megabytes.
Only ``request_id`` and ``promotion.code`` are required: checkout sends what it has.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, field_validator

from features.events import canonical_code
from features.ipintel import parse_ip
from scoring.reasons import ReasonCode

PromoTypeName = Literal["welcome", "referral", "intro_offer", "free_sample", "wholesale", "sitewide"]
Band = Literal["clean", "low", "medium", "high"]
Decision = Literal["allow", "watch", "verify", "refuse"]
SignalSource = Literal["model", "rule", "identity"]

_ID = 128
_SHORT = 64
_TEXT = 256


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


def _utc(value: datetime | None) -> datetime | None:
    # A naive timestamp is taken as UTC: checkout clocks are expected to speak UTC.
    if value is None:
        return None
    try:
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    except OverflowError:
        # 0001-01-01T00:00+01:00 has no UTC form: a 400 naming the field, not a 500.
        raise ValueError("out of range once converted to UTC") from None


def _ip_address(value: str | None) -> str | None:
    # A malformed address is a bug of the caller, not a fact about the shopper: rejected, never ignored.
    if value is None or value == "":
        return None
    if parse_ip(value) is None:
        raise ValueError("not an IP address (IPv4 or IPv6 expected)")
    return value


CapScope = Literal["person", "household", "account"]


class Promotion(_Body):
    """The code being applied and the store's policy for it."""

    code: str = Field(
        min_length=1, max_length=_SHORT,
        description="The promo code as entered; matched, capped and counted whatever its case.",
    )
    _code_canonical = field_validator("code")(canonical_code)
    type: PromoTypeName = Field(
        default="sitewide", description="Kind of promotion; each has its own decision thresholds."
    )
    discount_value: float | None = Field(
        default=None, ge=0, le=1_000_000, description="Value of the discount in the cart's currency."
    )
    single_use: StrictBool = Field(default=False, description="The code may be redeemed once, by anybody.")
    per_customer_limit: int | None = Field(
        default=None, ge=1, le=1000,
        description="Uses allowed per customer. Who a customer is follows cap_scope: the resolved person "
                    "(the account, or two strong identities of an earlier redeemer: device, card, phone, "
                    "email, household), the household, or the account alone.",
    )
    cap_scope: CapScope | None = Field(
        default=None,
        description="Scope of per_customer_limit: person (default; welcome, intro and referral offers), "
                    "household (default for free samples: one per address, however spelled) or account. "
                    "A single-use code is one use globally whatever its scope.",
    )
    referrer_account_id: str | None = Field(
        default=None, max_length=_ID, description="For a referral code: the account that shared it."
    )
    eligible_segment: str | None = Field(
        default=None, max_length=_SHORT, description="Segment the code is reserved for (wholesale, vip...)."
    )
    valid: StrictBool = Field(
        default=True,
        description="False when the store's own promo engine rejected the code: still scored and counted, "
                    "which is how code spraying shows.",
    )
    on_cap_outage: Literal["allow", "verify"] | None = Field(
        default=None,
        description="What a capped promotion (single_use or per_customer_limit) gets while the reservation "
                    "store is unreachable and its cap cannot be checked: verify (the CAP_STORE_UNAVAILABLE "
                    "signal asks for verification) or allow (fail open: the rules decide, marked degraded). "
                    "Default: verify for a single-use code, allow for every other promotion.",
    )


class Account(_Body):
    """The shopper's account as the store knows it (absent or ``is_guest`` for guest checkout)."""

    account_id: str | None = Field(default=None, max_length=_ID, description="The store's account id.")
    is_guest: StrictBool = Field(default=False, description="Guest checkout, without an account.")
    created_at: datetime | None = Field(default=None, description="When the account was created (ISO-8601).")
    segment: str | None = Field(default=None, max_length=_SHORT, description="The account's segment.")

    _created_utc = field_validator("created_at")(_utc)


class Address(_Body):
    """A postal address as typed at checkout."""

    line1: str | None = Field(default=None, max_length=_TEXT, description="Street and number.")
    line2: str | None = Field(default=None, max_length=_TEXT, description="Apartment, suite, unit.")
    city: str | None = Field(default=None, max_length=_TEXT, description="City.")
    region: str | None = Field(default=None, max_length=_SHORT, description="State, province or region.")
    postal_code: str | None = Field(default=None, max_length=32, description="Postal or ZIP code.")
    country: str | None = Field(default=None, max_length=_SHORT, description="Country (ISO code or name).")


class Payment(_Body):
    """The payment instrument, as the processor's stable fingerprint (never a card number)."""

    fingerprint: str | None = Field(
        default=None, max_length=_TEXT, description="The processor's stable card fingerprint (never a PAN)."
    )
    bin: str | None = Field(default=None, max_length=8, description="First 6-8 digits of the card.")
    last4: str | None = Field(default=None, max_length=4, description="Last 4 digits of the card.")


class Device(_Body):
    """What the storefront script saw of the device."""

    device_id: str | None = Field(
        default=None, max_length=_TEXT,
        description="The storefront's device id; a placeholder or blank id counts as missing "
                    "(DEVICE_MISSING).",
    )
    local_ip: str | None = Field(
        default=None, max_length=64,
        description="Local network address seen by WebRTC; must be an IP address (anything else is a 400).",
    )
    user_agent: str | None = Field(default=None, max_length=1024, description="The browser's user agent.")

    _local_ip_valid = field_validator("local_ip")(_ip_address)


class CartItem(_Body):
    """One cart line."""

    sku: str | None = Field(default=None, max_length=_SHORT, description="Stock keeping unit.")
    quantity: int = Field(default=1, ge=0, le=10_000, description="Units of this line.")
    price: float | None = Field(default=None, ge=0, le=1_000_000, description="Unit price.")


class Cart(_Body):
    """The cart the code is applied to."""

    total: float | None = Field(default=None, ge=0, le=10_000_000, description="Cart total before discount.")
    currency: str | None = Field(
        default=None, min_length=3, max_length=3,
        description="ISO 4217 currency code (three letters, e.g. USD); anything else is a 400.",
    )
    items: list[CartItem] | None = Field(default=None, max_length=100, description="Cart lines (<= 100).")

    @field_validator("currency")
    @classmethod
    def _currency_code(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if not (len(value) == 3 and value.isascii() and value.isalpha()):
            raise ValueError("not a currency code: three letters such as USD expected")
        return value.upper()


class ScoreRequest(_Body):
    """``POST /score``: one promo-code attempt at checkout."""

    request_id: str = Field(
        min_length=1, max_length=_ID,
        description="Idempotency key: a retry with the same id and body returns the first answer; the same "
                    "id with another body is a 409.",
    )
    timestamp: datetime | None = Field(
        default=None, description="When the shopper applied the code (ISO-8601; naive means UTC)."
    )
    promotion: Promotion = Field(description="The code and its policy.")
    account: Account | None = Field(default=None, description="The shopper's account; absent for guests.")
    email: str | None = Field(
        default=None, max_length=320,
        description="Email as typed. A malformed address is accepted and raises EMAIL_INVALID.",
    )
    phone: str | None = Field(
        default=None, max_length=64,
        description="Phone as typed (E.164 or national). A malformed number is accepted and raises "
                    "PHONE_INVALID.",
    )
    shipping_address: Address | None = Field(default=None, description="Where the order ships.")
    billing_address: Address | None = Field(default=None, description="The payment's billing address.")
    payment: Payment | None = Field(default=None, description="The payment instrument.")
    device: Device | None = Field(default=None, description="The shopper's device.")
    ip: str | None = Field(
        default=None, max_length=64,
        description="The shopper's public IP address; a malformed address is a 400, and a private, "
                    "carrier-NAT, loopback or link-local one is taken as no public IP.",
    )
    cart: Cart | None = Field(default=None, description="The cart the code applies to.")

    _ts_utc = field_validator("timestamp")(_utc)
    _ip_valid = field_validator("ip")(_ip_address)


class Signal(_Body):
    """One named reason behind a score; points of all signals add up to the score."""

    name: str = Field(description="The rule id, or the reason concept in lower case.")
    code: ReasonCode = Field(description="Stable reason code (see the README's reason-code table).")
    description: str = Field(description="What was seen, with the actual values in human units.")
    points: int = Field(description="This reason's share of the score (negative lowers the risk).")
    source: SignalSource = Field(
        description="model (a feature group priced by the model), rule or identity (a rules-table row)."
    )


class ScoreResponse(_Body):
    """``POST /score`` answer."""

    request_id: str = Field(description="The request's idempotency key.")
    score: int = Field(ge=0, le=100, description="Risk 0-100; always agrees with band and decision.")
    band: Band = Field(description="clean 0-9, low 10-29, medium 30-59, high 60-100 (by default).")
    decision: Decision = Field(
        description="allow, watch (allow and look later), verify (step-up check before the discount), refuse "
                    "the discount."
    )
    signals: list[Signal] = Field(
        description="Reasons: the deciding rule first, then the largest contributions; points add up to the "
                    "score."
    )
    # ``nullable`` survives BentoML's OpenAPI flattening, which keeps only the first anyOf branch.
    model_version: str | None = Field(
        json_schema_extra={"nullable": True}, description="Model that answered; null on the rules path."
    )
    degraded: bool = Field(description="A dependency failed or ran late; the answer is still a decision.")
    fallback: Literal["rules"] | None = Field(
        json_schema_extra={"nullable": True},
        description='null on the model path, "rules" when the rules answered.'
    )
    latency_ms: float = Field(description="Time spent inside the service, in milliseconds.")


class OutcomeRequest(_Body):
    """``POST /outcome``: what checkout did with a scored attempt."""

    request_id: str = Field(min_length=1, max_length=_ID, description="The scored request's id.")
    outcome: Literal["redeemed", "abandoned", "reversed"] = Field(
        description="redeemed confirms a held use of a capped code; abandoned releases a held use; "
                    "reversed releases it even once confirmed (the order was undone)."
    )


class OutcomeResponse(_Body):
    """``POST /outcome`` answer: whether a held redemption was confirmed or released."""

    request_id: str = Field(description="The scored request's id.")
    outcome: str = Field(description="The outcome as received.")
    reservation: Literal["confirmed", "released", "none"] = Field(
        description="What happened to the attempt's hold on a capped promotion."
    )


class FeedbackRequest(_Body):
    """``POST /feedback``: a late label for a scored attempt, for retraining."""

    request_id: str = Field(min_length=1, max_length=_ID, description="The scored request's id.")
    label: Literal["abuse", "legit"] = Field(description="The truth about the attempt, as learned later.")
    source: Literal["manual_review", "customer_support", "policy_audit", "feedback_api"] = Field(
        default="feedback_api", description="Who established the label."
    )


class FeedbackResponse(_Body):
    """``POST /feedback`` answer."""

    request_id: str = Field(description="The scored request's id.")
    stored: bool = Field(description="True once the label is stored.")


# --- errors --------------------------------------------------------------------------------------------


class FieldError(BaseModel):
    """One problem with one field of a request body."""

    field: str = Field(description='Dotted path of the field ("promotion.code"), or "body" for all of it.')
    message: str = Field(description="What is wrong with it.")


class ErrorResponse(BaseModel):
    """Every 4xx answer: a sentence, plus the field list of a 400."""

    error: str = Field(description="What went wrong, in one sentence.")
    errors: list[FieldError] | None = Field(
        default=None, json_schema_extra={"nullable": True},
        description="400 only: one entry per invalid field.",
    )


# --- the decision record (analysts only, GET /decisions/{request_id}) ------------------------------------


class DecisionPolicy(BaseModel):
    """The band bounds and the promotion's thresholds the decision was taken under."""

    promo_type: str = Field(description="The promotion type whose thresholds applied.")
    bands: dict[str, int] = Field(description="Band lower bounds.")
    thresholds: dict[str, int] = Field(description="The promotion type's watch, verify, refuse thresholds.")
    score_may_refuse: bool = Field(
        default=True,
        description="Whether the score alone could refuse: only under an operator's refuse threshold on the "
                    "campaign; otherwise a score at or above refuse asked for verification and only a hard "
                    "rule refused. Absent from answers logged before it was recorded, when a score could.",
    )


class RecordedOutcome(BaseModel):
    """An outcome received for the attempt since it was scored."""

    outcome: str = Field(description="redeemed, abandoned or reversed.")
    reservation: str = Field(description="confirmed, released or none.")
    ts: datetime = Field(description="When it was received.")


class RecordedFeedback(BaseModel):
    """A label received for the attempt since it was scored."""

    label: str = Field(description="abuse or legit.")
    source: str = Field(description="Who established it.")
    ts: datetime = Field(description="When it was received.")


class CounterfactualSignal(BaseModel):
    """One signal of a counterfactual: absent, it would have changed the decision."""

    name: str = Field(description="The signal's name in the answer.")
    code: ReasonCode = Field(description="Its reason code.")
    description: str = Field(description="What was seen.")


class Counterfactual(BaseModel):
    """The smallest set of signals whose absence would have changed a verify or refuse decision."""

    found: bool = Field(
        description="False when no set of the top signals changes the decision (or it cannot be recomputed: "
                    "see note)."
    )
    explanation: str = Field(
        description='For example "would have been allowed if this device had not used this code before".'
    )
    signals: list[CounterfactualSignal] = Field(description="The signals taken away.")
    decision: Decision | None = Field(
        default=None, json_schema_extra={"nullable": True}, description="The decision without them."
    )
    score: int | None = Field(
        default=None, json_schema_extra={"nullable": True}, description="The score without them."
    )
    neutralised: dict[str, float] = Field(
        description="The model inputs set to their neutral value (no attempts, not flagged, long known)."
    )
    rules_left_out: list[str] = Field(description="Reason codes whose rules were not applied.")
    method: str = Field(description="How the set was searched.")
    note: str | None = Field(default=None, json_schema_extra={"nullable": True}, description="Caveats.")


class DecisionRecord(BaseModel):
    """``GET /decisions/{request_id}``: one answer as it was given, frozen, and what would have changed it."""

    request_id: str = Field(description="The scored request's id.")
    recorded_at: datetime = Field(description="When the decision was taken (server clock).")
    answer: ScoreResponse = Field(description="The /score answer exactly as checkout received it.")
    model_version: str | None = Field(
        json_schema_extra={"nullable": True}, description="Model version of the answer (null: rules path)."
    )
    rules_version: str | None = Field(
        json_schema_extra={"nullable": True}, description="Rules table version and content hash."
    )
    deciding_rule: str | None = Field(
        json_schema_extra={"nullable": True},
        description="The rule whose hard action is the decision; null when the score alone decided.",
    )
    policy: DecisionPolicy | None = Field(
        json_schema_extra={"nullable": True}, description="Bands and thresholds the decision was taken under."
    )
    would_be_decision: Decision | None = Field(
        default=None, json_schema_extra={"nullable": True},
        description="The decision the policy reached when the answer let the attempt through anyway "
                    "(see let_through); null when the answer's decision is the policy's.",
    )
    let_through: Literal["exploration", "monitor_only"] | None = Field(
        default=None, json_schema_extra={"nullable": True},
        description="Why the answer is allow although the policy decided otherwise: the exploration "
                    "holdout, or a campaign in monitor-only mode.",
    )
    controls: dict[str, Any] = Field(
        default_factory=dict,
        description="The operator's controls that applied: campaign_control (mode, force_verify, "
                    "thresholds, reason) and list_entry (list, kind, reason).",
    )
    features: dict[str, float | None] = Field(description="Every model input as read (null: missing).")
    rule_inputs: dict[str, Any] = Field(
        description="What the rules read besides the features: promotion policy, derived facts, the cap "
                    "reservation's outcome."
    )
    identity: dict[str, Any] = Field(
        description="Hashed identity keys and request-time flags (never raw email, phone, address or IP)."
    )
    timings_ms: dict[str, float] = Field(
        description="Milliseconds per step of the request path, the whole (`total`) and the request "
        "thread's own CPU time (`cpu`; far below `total`, the request waited rather than worked)."
    )
    outcomes: list[RecordedOutcome] = Field(description="Outcomes received since.")
    feedback: list[RecordedFeedback] = Field(description="Labels received since.")
    counterfactual: Counterfactual | None = Field(
        json_schema_extra={"nullable": True},
        description="For verify and refuse answers: what would have changed the decision (null otherwise).",
    )


def to_event_record(req: ScoreRequest) -> dict[str, Any]:
    """Flatten a request into the event-column record the identity layer reads (raw, in memory only)."""
    acc = req.account or Account()
    ship = req.shipping_address or Address()
    bill = req.billing_address or Address()
    pay = req.payment or Payment()
    dev = req.device or Device()
    record: dict[str, Any] = {
        "request_id": req.request_id,
        "promo_code": req.promotion.code,
        "promo_type": req.promotion.type,
        "promo_valid": req.promotion.valid,
        "referrer_account_id": req.promotion.referrer_account_id,
        "account_id": None if acc.is_guest else acc.account_id,
        "is_guest": acc.is_guest or acc.account_id is None,
        "account_created_at": acc.created_at,
        "account_segment": acc.segment,
        "email": req.email,
        "phone": req.phone,
        "payment_fingerprint": pay.fingerprint,
        "payment_bin": pay.bin,
        "payment_last4": pay.last4,
        "device_id": dev.device_id,
        "local_ip": dev.local_ip,
        "user_agent": dev.user_agent,
        "ip": req.ip,
    }
    for prefix, addr in (("ship", ship), ("bill", bill)):
        for part in ("line1", "line2", "city", "region", "postal_code", "country"):
            record[f"{prefix}_{part}"] = getattr(addr, part)
    return record
