"""The HTTP contract of the scoring service: flat JSON request and response bodies.

Every model forbids unknown fields, so a caller can never smuggle in ``score`` or ``decision`` (no mass
assignment), and a typo in a field name is an error naming that field instead of silently ignored data.
Strings and lists carry size limits so that one request cannot make the service hash megabytes.
Only ``request_id`` and ``promotion.code`` are required: checkout sends what it has.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

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
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Promotion(_Body):
    """The code being applied and the store's policy for it."""

    code: str = Field(min_length=1, max_length=_SHORT)
    type: PromoTypeName = "sitewide"
    discount_value: float | None = Field(default=None, ge=0, le=1_000_000)
    single_use: bool = False
    per_customer_limit: int | None = Field(default=None, ge=1, le=1000)
    referrer_account_id: str | None = Field(default=None, max_length=_ID)
    eligible_segment: str | None = Field(default=None, max_length=_SHORT)
    valid: bool = True


class Account(_Body):
    """The shopper's account as the store knows it (absent or ``is_guest`` for guest checkout)."""

    account_id: str | None = Field(default=None, max_length=_ID)
    is_guest: bool = False
    created_at: datetime | None = None
    segment: str | None = Field(default=None, max_length=_SHORT)

    _created_utc = field_validator("created_at")(_utc)


class Address(_Body):
    """A postal address as typed at checkout."""

    line1: str | None = Field(default=None, max_length=_TEXT)
    line2: str | None = Field(default=None, max_length=_TEXT)
    city: str | None = Field(default=None, max_length=_TEXT)
    region: str | None = Field(default=None, max_length=_SHORT)
    postal_code: str | None = Field(default=None, max_length=32)
    country: str | None = Field(default=None, max_length=_SHORT)


class Payment(_Body):
    """The payment instrument, as the processor's stable fingerprint (never a card number)."""

    fingerprint: str | None = Field(default=None, max_length=_TEXT)
    bin: str | None = Field(default=None, max_length=8)
    last4: str | None = Field(default=None, max_length=4)


class Device(_Body):
    """What the storefront script saw of the device."""

    device_id: str | None = Field(default=None, max_length=_TEXT)
    local_ip: str | None = Field(default=None, max_length=64)
    user_agent: str | None = Field(default=None, max_length=1024)


class CartItem(_Body):
    """One cart line."""

    sku: str | None = Field(default=None, max_length=_SHORT)
    quantity: int = Field(default=1, ge=0, le=10_000)
    price: float | None = Field(default=None, ge=0, le=1_000_000)


class Cart(_Body):
    """The cart the code is applied to."""

    total: float | None = Field(default=None, ge=0, le=10_000_000)
    currency: str | None = Field(default=None, min_length=3, max_length=3)
    items: list[CartItem] | None = Field(default=None, max_length=100)


class ScoreRequest(_Body):
    """``POST /score``: one promo-code attempt at checkout."""

    request_id: str = Field(min_length=1, max_length=_ID)
    timestamp: datetime | None = None
    promotion: Promotion
    account: Account | None = None
    email: str | None = Field(default=None, max_length=320)
    phone: str | None = Field(default=None, max_length=64)
    shipping_address: Address | None = None
    billing_address: Address | None = None
    payment: Payment | None = None
    device: Device | None = None
    ip: str | None = Field(default=None, max_length=64)
    cart: Cart | None = None

    _ts_utc = field_validator("timestamp")(_utc)


class Signal(_Body):
    """One named reason behind a score; points of all signals add up to the score."""

    name: str
    description: str
    points: int
    source: SignalSource


class ScoreResponse(_Body):
    """``POST /score`` answer."""

    request_id: str
    score: int = Field(ge=0, le=100)
    band: Band
    decision: Decision
    signals: list[Signal]
    # ``nullable`` survives BentoML's OpenAPI flattening, which keeps only the first anyOf branch.
    model_version: str | None = Field(json_schema_extra={"nullable": True})
    degraded: bool
    fallback: Literal["rules"] | None = Field(json_schema_extra={"nullable": True})
    latency_ms: float


class OutcomeRequest(_Body):
    """``POST /outcome``: what checkout did with a scored attempt."""

    request_id: str = Field(min_length=1, max_length=_ID)
    outcome: Literal["redeemed", "abandoned", "reversed"]


class OutcomeResponse(_Body):
    """``POST /outcome`` answer: whether a held redemption was confirmed or released."""

    request_id: str
    outcome: str
    reservation: Literal["confirmed", "released", "none"]


class FeedbackRequest(_Body):
    """``POST /feedback``: a late label for a scored attempt, for retraining."""

    request_id: str = Field(min_length=1, max_length=_ID)
    label: Literal["abuse", "legit"]
    source: Literal["manual_review", "customer_support", "policy_audit", "feedback_api"] = "feedback_api"


class FeedbackResponse(_Body):
    """``POST /feedback`` answer."""

    request_id: str
    stored: bool


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
