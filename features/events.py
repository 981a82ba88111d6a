"""The redemption-event and label contract: the data every other part of promoguard reads.

A store that does not want to simulate exports its own history in exactly this shape:

* ``events.parquet``: one row per promo-code *attempt* at checkout (honored or not), with the raw
  identity the shopper presented. Raw identity lives only here; every later stage keeps keyed hashes.
* ``labels.parquet``: one row per labeled attempt. Labels arrive late: ``label_ts`` is when the label
  became known, and nothing may use it before that time.
* ``promotions.parquet``: one row per promotion code with its policy.

Frames are validated with pandera (vectorised, so a million rows validate in about a second) and single
records with pydantic (the HTTP boundary). Both raise :class:`ContractError`, whose message names the
field and the offending rows, and never drop a row silently.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from enum import StrEnum
from typing import Any

import pandas as pd
import pandera.pandas as pa
from pydantic import BaseModel, ConfigDict, Field, ValidationError


class PromoType(StrEnum):
    """The kinds of promotion promoguard understands."""

    WELCOME = "welcome"
    REFERRAL = "referral"
    INTRO_OFFER = "intro_offer"
    FREE_SAMPLE = "free_sample"
    WHOLESALE = "wholesale"
    SITEWIDE = "sitewide"


class Outcome(StrEnum):
    """What happened to an attempt: honored, dropped by the shopper, or refused by the store."""

    REDEEMED = "redeemed"
    ABANDONED = "abandoned"
    REJECTED = "rejected"


class LabelValue(StrEnum):
    """A label's verdict."""

    ABUSE = "abuse"
    LEGIT = "legit"


class LabelSource(StrEnum):
    """Where a label came from; sources differ in delay and noise."""

    MANUAL_REVIEW = "manual_review"
    CUSTOMER_SUPPORT = "customer_support"
    POLICY_AUDIT = "policy_audit"
    FEEDBACK_API = "feedback_api"


PROMO_TYPES = [p.value for p in PromoType]
OUTCOMES = [o.value for o in Outcome]
LABEL_VALUES = [v.value for v in LabelValue]
LABEL_SOURCES = [s.value for s in LabelSource]

ADDRESS_PARTS = ("line1", "line2", "city", "region", "postal_code", "country")
SHIP_COLUMNS = tuple(f"ship_{p}" for p in ADDRESS_PARTS)
BILL_COLUMNS = tuple(f"bill_{p}" for p in ADDRESS_PARTS)

#: Raw personal data columns: they may exist in ``data/raw`` and in a request, nowhere else.
RAW_PII_COLUMNS = ("email", "phone", *SHIP_COLUMNS, *BILL_COLUMNS, "ip", "local_ip")


#: The abuse patterns of the seed catalogue, as ``truth.parquet`` names them (an evaluation-only file
#: beside a simulated history: request_id, actor_id, pattern, is_abuse, evasion). Never a feature.
SEED_PATTERNS: tuple[str, ...] = (
    "welcome_cycling",
    "referral_self",
    "code_leak",
    "intro_reset",
    "sample_stacking",
    "wholesale_guest",
)
#: Automated abuse, always reported apart from the seed patterns.
BOT_PATTERNS: tuple[str, ...] = ("bot_spray",)


class ContractError(ValueError):
    """A record or frame broke the data contract; the message names the field(s) and rows."""


def _nullable_str(**kwargs: Any) -> pa.Column:
    return pa.Column(object, nullable=True, required=True, **kwargs)


_UTC_TS = pd.DatetimeTZDtype(tz="UTC")

EVENT_SCHEMA = pa.DataFrameSchema(
    {
        "request_id": pa.Column(object, nullable=False, unique=True, checks=pa.Check.str_length(1, 128)),
        "ts": pa.Column(_UTC_TS, nullable=False),
        "promo_code": pa.Column(object, nullable=False, checks=pa.Check.str_length(1, 64)),
        "promo_type": pa.Column(object, nullable=False, checks=pa.Check.isin(PROMO_TYPES)),
        "promo_valid": pa.Column(bool, nullable=False),
        "discount_value": pa.Column(float, nullable=False, checks=pa.Check.ge(0)),
        "referrer_account_id": _nullable_str(),
        "account_id": _nullable_str(),
        "is_guest": pa.Column(bool, nullable=False),
        "account_created_at": pa.Column(_UTC_TS, nullable=True),
        "account_segment": _nullable_str(),
        "email": _nullable_str(),
        "phone": _nullable_str(),
        **{c: _nullable_str() for c in SHIP_COLUMNS},
        **{c: _nullable_str() for c in BILL_COLUMNS},
        "payment_fingerprint": _nullable_str(),
        "payment_bin": _nullable_str(),
        "payment_last4": _nullable_str(),
        "device_id": _nullable_str(),
        "local_ip": _nullable_str(),
        "ip": _nullable_str(),
        "user_agent": _nullable_str(),
        "cart_total": pa.Column(float, nullable=False, checks=pa.Check.ge(0)),
        "currency": pa.Column(object, nullable=False, checks=pa.Check.str_length(3, 3)),
        "outcome": pa.Column(object, nullable=False, checks=pa.Check.isin(OUTCOMES)),
    },
    strict=True,
    ordered=False,
    name="events",
)

EVENT_COLUMNS: tuple[str, ...] = tuple(EVENT_SCHEMA.columns)

LABEL_SCHEMA = pa.DataFrameSchema(
    {
        "request_id": pa.Column(object, nullable=False, unique=True, checks=pa.Check.str_length(1, 128)),
        "label": pa.Column(object, nullable=False, checks=pa.Check.isin(LABEL_VALUES)),
        "label_source": pa.Column(object, nullable=False, checks=pa.Check.isin(LABEL_SOURCES)),
        "label_ts": pa.Column(_UTC_TS, nullable=False),
    },
    strict=True,
    name="labels",
)

PROMOTION_SCHEMA = pa.DataFrameSchema(
    {
        "promo_code": pa.Column(object, nullable=False, unique=True, checks=pa.Check.str_length(1, 64)),
        "promo_type": pa.Column(object, nullable=False, checks=pa.Check.isin(PROMO_TYPES)),
        "campaign": pa.Column(object, nullable=False),
        "discount_value": pa.Column(float, nullable=False, checks=pa.Check.ge(0)),
        "single_use": pa.Column(bool, nullable=False),
        "per_customer_limit": pa.Column("Int64", nullable=True, checks=pa.Check.ge(1)),
        "eligible_segment": _nullable_str(),
        "referrer_account_id": _nullable_str(),
        "starts_at": pa.Column(_UTC_TS, nullable=False),
        "ends_at": pa.Column(_UTC_TS, nullable=True),
    },
    strict=True,
    name="promotions",
)


def _validate(schema: pa.DataFrameSchema, frame: pd.DataFrame) -> pd.DataFrame:
    try:
        return schema.validate(frame, lazy=True)
    except pa.errors.SchemaErrors as exc:
        cases = exc.failure_cases
        lines = []
        for (column, check), group in cases.groupby(["column", "check"], dropna=False, sort=False):
            rows = [int(i) for i in group["index"].dropna().tolist()[:5] if str(i).isdigit()]
            values = [repr(v) for v in group["failure_case"].tolist()[:3]]
            where = f" at rows {rows}" if rows else ""
            lines.append(f"{schema.name}.{column}: failed {check}{where}; values {', '.join(values)}")
        raise ContractError(f"{len(cases)} contract violation(s):\n" + "\n".join(lines)) from None


def canonical_code(code: str) -> str:
    """A promo code as it is matched, capped and counted: stripped and upper-cased.

    Stores take codes whatever their case: a cap or a counter keyed on the code as typed would let
    "oneuse-x" past a spent "ONEUSE-X".
    """
    return code.strip().upper()


def _canonical_codes(frame: pd.DataFrame) -> pd.DataFrame:
    if "promo_code" not in frame.columns:
        return frame
    codes = frame["promo_code"].map(lambda v: canonical_code(v) if isinstance(v, str) else v)
    return frame.assign(promo_code=codes)


def validate_events(frame: pd.DataFrame) -> pd.DataFrame:
    """Validate an events frame against the contract; raise ContractError naming every bad field.

    Codes come back canonical (:func:`canonical_code`), as the service sees them.
    """
    return _validate(EVENT_SCHEMA, _canonical_codes(frame))


def validate_labels(frame: pd.DataFrame) -> pd.DataFrame:
    """Validate a labels frame against the contract; raise ContractError naming every bad field."""
    return _validate(LABEL_SCHEMA, frame)


def validate_promotions(frame: pd.DataFrame) -> pd.DataFrame:
    """Validate a promotions frame against the contract; raise ContractError naming every bad field.

    Codes come back canonical, so two rows of one code spelled in two cases are a duplicate.
    """
    return _validate(PROMOTION_SCHEMA, _canonical_codes(frame))


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True, frozen=True)


class RedemptionEvent(_Strict):
    """One promo-code attempt with raw identity, as one row of ``events.parquet``."""

    request_id: str = Field(min_length=1, max_length=128)
    ts: datetime
    promo_code: str = Field(min_length=1, max_length=64)
    promo_type: PromoType
    promo_valid: bool = True
    discount_value: float = Field(ge=0)
    referrer_account_id: str | None = None
    account_id: str | None = None
    is_guest: bool = False
    account_created_at: datetime | None = None
    account_segment: str | None = None
    email: str | None = Field(default=None, max_length=320)
    phone: str | None = Field(default=None, max_length=64)
    ship_line1: str | None = None
    ship_line2: str | None = None
    ship_city: str | None = None
    ship_region: str | None = None
    ship_postal_code: str | None = None
    ship_country: str | None = None
    bill_line1: str | None = None
    bill_line2: str | None = None
    bill_city: str | None = None
    bill_region: str | None = None
    bill_postal_code: str | None = None
    bill_country: str | None = None
    payment_fingerprint: str | None = None
    payment_bin: str | None = None
    payment_last4: str | None = None
    device_id: str | None = None
    local_ip: str | None = None
    ip: str | None = None
    user_agent: str | None = Field(default=None, max_length=1024)
    cart_total: float = Field(default=0.0, ge=0)
    currency: str = Field(default="USD", min_length=3, max_length=3)
    outcome: Outcome


class LabelRecord(_Strict):
    """One late-arriving label for an attempt."""

    request_id: str = Field(min_length=1, max_length=128)
    label: LabelValue
    label_source: LabelSource
    label_ts: datetime


def parse_record(model: type[_Strict], data: dict[str, Any]) -> Any:
    """Validate one record with pydantic, raising ContractError that names each bad field."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors()
        )
        raise ContractError(f"{model.__name__}: {problems}") from None


def events_from_records(records: Iterable[RedemptionEvent]) -> pd.DataFrame:
    """Build a contract-shaped events frame from validated records (used by tests and exports)."""
    rows = [r.model_dump(mode="python") for r in records]
    frame = pd.DataFrame(rows, columns=list(EVENT_COLUMNS))
    return coerce_events(frame)


def coerce_events(frame: pd.DataFrame) -> pd.DataFrame:
    """Cast an events frame to the contract's dtypes (UTC timestamps, object strings, float money)."""
    out = frame.copy()
    for col in ("ts", "account_created_at"):
        out[col] = pd.to_datetime(out[col], utc=True)
    for col in ("discount_value", "cart_total"):
        out[col] = out[col].astype(float)
    for col in ("promo_valid", "is_guest"):
        out[col] = out[col].astype(bool)
    for col in EVENT_COLUMNS:
        if out[col].dtype != object and col not in (
            "ts", "account_created_at", "discount_value", "cart_total", "promo_valid", "is_guest"
        ):
            out[col] = out[col].astype(object)
    return out
