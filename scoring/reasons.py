"""Reason codes: the stable, enumerated names of every cause a score can give, and how each reads.

A reason code names a human concept, not a model column: "device shared with other accounts", not
three windows of the same count. Model features are grouped into concepts by identity view and feature
family (``device_stats__distinct_accounts_24h`` and ``..._30d`` are both ``DEVICE_SHARED_ACCOUNTS``);
the points of a group are summed, and the group is described by its most telling member, in human
units (:mod:`scoring.text`). Grouping works from feature names alone, through the feature catalog
(:mod:`features.definitions`), the request-time identity flags and the context columns
(:mod:`features.context`), so artifacts trained before codes existed get them too; a name the catalog
does not know falls into ``OTHER_FACTORS``.

Rules carry their code in the rules table (``code:``); a rule and a model concept for the same fact
share one code (the ``device_missing`` rule and the ``device_missing`` flag are both ``DEVICE_MISSING``),
so a response names each cause once.

:data:`ReasonCode` is the closed list: it is the ``enum`` of ``signals[].code`` in the OpenAPI document
and the table in the README, and tests hold the three equal and the catalog inside them. A code is
never renamed or reused for another meaning; new concepts get new codes.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from typing import Literal, get_args

import numpy as np
import numpy.typing as npt

from features import definitions
from features.context import CONTEXT_COLUMNS, PROMO_TYPE_FLAGS
from scoring import text

ReasonCode = Literal[
    "ACCOUNT_ATTEMPTS",
    "ACCOUNT_INVALID_CODES",
    "ACCOUNT_LINKED_IDENTITIES",
    "ACCOUNT_NEW",
    "ACCOUNT_PAST_ABUSE",
    "ACCOUNT_REDEMPTIONS",
    "ADDRESS_MISSING",
    "ADDRESS_UNPARSED",
    "ANONYMOUS_NETWORK_LIMITED_PROMO",
    "ALLOW_LISTED",
    "BASELINE",
    "CAMPAIGN_PAUSED",
    "CAP_STORE_UNAVAILABLE",
    "CODE_AGE",
    "CODE_ATTEMPTS",
    "CODE_NEW_ACCOUNT_SHARE",
    "CODE_REDEEMED",
    "CODE_SEARCH",
    "CODE_SHARED_WIDELY",
    "CUSTOMER_CAP_REACHED",
    "CUSTOM_RULE",
    "DENY_LISTED",
    "DEVICE_ATTEMPTS",
    "DEVICE_CODE_REUSE",
    "DEVICE_INVALID_CODES",
    "DEVICE_LINKED_IDENTITIES",
    "DEVICE_MISSING",
    "DEVICE_NEW",
    "DEVICE_PAST_ABUSE",
    "DEVICE_PROMO_TYPE_REUSE",
    "DEVICE_REDEMPTIONS",
    "DEVICE_SHARED_ACCOUNTS",
    "EARLIER_REDEEMER_ONE_SIGNAL",
    "EMAIL_ALIAS",
    "EMAIL_ATTEMPTS",
    "EMAIL_DISPOSABLE",
    "EMAIL_FREE_PROVIDER",
    "EMAIL_INVALID",
    "EMAIL_INVALID_CODES",
    "EMAIL_LINKED_IDENTITIES",
    "EMAIL_MISSING",
    "EMAIL_NEW",
    "EMAIL_PAST_ABUSE",
    "EMAIL_REDEMPTIONS",
    "EMAIL_SHARED_ACCOUNTS",
    "FORCED_VERIFICATION",
    "GUEST_CHECKOUT",
    "HOME_NETWORK_NEW_ACCOUNTS",
    "HOUSEHOLD_ATTEMPTS",
    "HOUSEHOLD_CODE_REUSE",
    "HOUSEHOLD_INVALID_CODES",
    "HOUSEHOLD_LINKED_IDENTITIES",
    "HOUSEHOLD_NEW",
    "HOUSEHOLD_PAST_ABUSE",
    "HOUSEHOLD_PROMO_TYPE_REUSE",
    "HOUSEHOLD_REDEMPTIONS",
    "HOUSEHOLD_SHARED_ACCOUNTS",
    "IP_DATACENTER",
    "IP_MISSING",
    "IP_PROXY_VPN",
    "IP_TOR",
    "LOCAL_IP_ATTEMPTS",
    "LOCAL_IP_INVALID_CODES",
    "LOCAL_IP_LINKED_IDENTITIES",
    "LOCAL_IP_MISSING",
    "LOCAL_IP_NEW",
    "LOCAL_IP_PAST_ABUSE",
    "LOCAL_IP_REDEMPTIONS",
    "LOCAL_IP_SHARED_ACCOUNTS",
    "NETWORK_ATTEMPTS",
    "NETWORK_INVALID_CODES",
    "NETWORK_LINKED_IDENTITIES",
    "NETWORK_NEW",
    "NETWORK_PAST_ABUSE",
    "NETWORK_REDEMPTIONS",
    "NETWORK_SHARED_ACCOUNTS",
    "ONE_PER_CUSTOMER",
    "OTHER_FACTORS",
    "PAYMENT_ATTEMPTS",
    "PAYMENT_CODE_REUSE",
    "PAYMENT_INVALID_CODES",
    "PAYMENT_LINKED_IDENTITIES",
    "PAYMENT_MISSING",
    "PAYMENT_NEW",
    "PAYMENT_PAST_ABUSE",
    "PAYMENT_PROMO_TYPE_REUSE",
    "PAYMENT_REDEMPTIONS",
    "PAYMENT_SHARED_ACCOUNTS",
    "PERSON_CODE_REUSE",
    "PERSON_LINKED",
    "PERSON_MANY_ACCOUNTS",
    "PERSON_PROMO_TYPE_REUSE",
    "PHONE_ATTEMPTS",
    "PHONE_CODE_REUSE",
    "PHONE_INVALID",
    "PHONE_INVALID_CODES",
    "PHONE_LINKED_IDENTITIES",
    "PHONE_MISSING",
    "PHONE_NEW",
    "PHONE_PAST_ABUSE",
    "PHONE_PROMO_TYPE_REUSE",
    "PHONE_REDEMPTIONS",
    "PHONE_SHARED_ACCOUNTS",
    "PHONE_VOIP",
    "PROMO_TYPE",
    "REFERRAL_SELF_REDEMPTION",
    "SEGMENT_INELIGIBLE",
    "SHIP_BILL_MISMATCH",
    "SINGLE_USE_SPENT",
]

#: Every reason code, in the enum's order.
REASON_CODES: tuple[str, ...] = get_args(ReasonCode)
BASELINE_CODE: ReasonCode = "BASELINE"
OTHER_CODE: ReasonCode = "OTHER_FACTORS"

WINDOW_WORDS = {
    "1h": "in the last hour",
    "24h": "in the last 24 hours",
    "7d": "in the last 7 days",
    "30d": "in the last 30 days",
}


@dataclass(frozen=True)
class Entity:
    """How an identity reads: its noun, what its absence from a request means, and that absence's code."""

    noun: str
    absent: str
    #: The reason code its counts are reported under when the request did not carry it (None: their own).
    missing_code: str | None = None


ENTITIES: dict[str, Entity] = {
    "device": Entity("device", "no valid device id was sent", "DEVICE_MISSING"),
    "household": Entity("shipping household", "no shipping address was given", "ADDRESS_MISSING"),
    "payment": Entity("payment method", "no payment fingerprint was given", "PAYMENT_MISSING"),
    "phone": Entity("phone number", "no phone number was given", "PHONE_MISSING"),
    "email": Entity("email address", "no email address was given", "EMAIL_MISSING"),
    "network": Entity("network", "no public IP address was given", "IP_MISSING"),
    "local_ip": Entity("home network", "no local network address was sent", "LOCAL_IP_MISSING"),
    "account": Entity("account", "guest checkout, so no account history", "GUEST_CHECKOUT"),
}

#: Nouns of the targets of distinct counts: (singular, plural).
_TARGET_NOUNS: dict[str, tuple[str, str]] = {
    "account": ("account", "accounts"),
    "email": ("email address", "email addresses"),
    "device": ("device", "devices"),
    "payment": ("payment method", "payment methods"),
    "household": ("shipping household", "shipping households"),
    "network": ("network", "networks"),
}

#: Identity kinds as a shopper-facing noun (caps, referral links): ``local_ip`` reads "home network".
IDENTITY_WORDS: dict[str, str] = {
    **{name: e.noun for name, e in ENTITIES.items()},
    "*": "code",
    "identity": "identity",
    "person": "person (two strong identities of earlier attempts)",
}


@dataclass(frozen=True)
class Concept:
    """One reason code: what it means, and the clause a counterfactual uses for its absence."""

    code: str
    meaning: str
    #: "would have been allowed if <if_absent>"; None: never offered as a counterfactual (the
    #: promotion's own terms, the baseline).
    if_absent: str | None
    #: Where the code comes from: ``model`` (a feature group), ``rule`` (the rules table) or both.
    emitted_by: str


Describe = Callable[[float | None], str]


@dataclass(frozen=True)
class FeatureReason:
    """How one model feature maps to a reason: its code, its owner identity, neutral value, wording."""

    feature: str
    code: str
    #: The identity whose key the feature is counted on; None for the code and request flags.
    entity: str | None
    #: The value "without this signal" (a counterfactual's neutralised input).
    neutral: float
    #: Description for a value (None when missing while the identity was given).
    describe: Describe


# --- per-feature wording ---------------------------------------------------------------------------


def _count(v: float | None) -> float:
    return 0.0 if v is None else v


def _identity_reason(view_name: str, feat: definitions.Feature) -> FeatureReason:
    entity = view_name.removesuffix("_stats")
    name = f"{view_name}__{feat.name}"
    prefix = entity.upper()
    noun = ENTITIES[entity].noun
    window = WINDOW_WORDS.get(feat.window or "", "so far")
    if feat.kind == "count" and feat.only == "all":
        return FeatureReason(
            name,
            f"{prefix}_ATTEMPTS",
            entity,
            0.0,
            lambda v: f"{text.some(_count(v), 'promo attempt')} from this {noun} {window}",
        )
    if feat.kind == "count" and feat.only == "redeemed":
        return FeatureReason(
            name,
            f"{prefix}_REDEMPTIONS",
            entity,
            0.0,
            lambda v: f"{text.some(_count(v), 'redemption')} by this {noun} {window}",
        )
    if feat.kind == "count":
        return FeatureReason(
            name,
            f"{prefix}_INVALID_CODES",
            entity,
            0.0,
            lambda v: f"{text.some(_count(v), 'invalid code')} tried from this {noun} {window}",
        )
    if feat.kind == "distinct":
        target = feat.target or "account"
        one, many = _TARGET_NOUNS.get(target, (target, target + "s"))
        personas = target in ("account", "email") and entity != "account"
        family = "SHARED_ACCOUNTS" if personas else "LINKED_IDENTITIES"
        verb = "used by" if target == "account" else "used with"
        return FeatureReason(
            name,
            f"{prefix}_{family}",
            entity,
            0.0,
            lambda v: f"{noun} {verb} {text.some(_count(v), one, many)} {window}",
        )
    if feat.kind == "age":
        return FeatureReason(
            name,
            f"{prefix}_NEW",
            entity,
            365.0,
            lambda v: (
                f"first time this {noun} is seen"
                if v is None
                else f"{noun} first seen {text.duration_days(v)} ago"
            ),
        )
    if feat.kind == "labels":
        return FeatureReason(
            name,
            f"{prefix}_PAST_ABUSE",
            entity,
            0.0,
            lambda v: (
                f"no earlier attempts from this {noun} confirmed as abuse"
                if _count(v) == 0
                else f"{noun} linked to {text.plural(_count(v), 'earlier attempt')} confirmed as abuse"
            ),
        )
    raise KeyError(f"feature {name!r}: no reason family for kind {feat.kind!r}")


def _code_reason(feat: definitions.Feature) -> FeatureReason:
    name = f"code_stats__{feat.name}"
    window = WINDOW_WORDS.get(feat.window or "", "so far")
    if feat.kind == "count" and feat.only == "redeemed":
        return FeatureReason(
            name,
            "CODE_REDEEMED",
            None,
            0.0,
            lambda v: (
                "this code has not been redeemed yet"
                if _count(v) == 0
                else f"this code was already redeemed {text.times(_count(v))}"
            ),
        )
    if feat.kind == "count":
        return FeatureReason(
            name,
            "CODE_ATTEMPTS",
            None,
            0.0,
            lambda v: f"{text.some(_count(v), 'attempt')} with this code {window}",
        )
    if feat.kind == "distinct":
        target = feat.target or "device"
        one, many = _TARGET_NOUNS.get(target, (target, target + "s"))
        verb = "by" if target == "account" else "from"
        return FeatureReason(
            name,
            "CODE_SHARED_WIDELY",
            None,
            0.0,
            lambda v: f"code used {verb} {text.some(_count(v), one, many)} {window}",
        )
    if feat.kind == "share":
        return FeatureReason(
            name,
            "CODE_NEW_ACCOUNT_SHARE",
            None,
            0.0,
            lambda v: (
                f"no attempts with this code {window} yet"
                if v is None
                else f"{text.percent(v)} of this code's attempts {window} came from new accounts or guests"
            ),
        )
    if feat.kind == "age":
        return FeatureReason(
            name,
            "CODE_AGE",
            None,
            24.0 * 365,
            lambda v: (
                "new code, no history yet" if v is None else f"code first used {text.duration_hours(v)} ago"
            ),
        )
    raise KeyError(f"feature {name!r}: no reason family for kind {feat.kind!r}")


def _pair_reason(view_name: str, feat: definitions.Feature) -> FeatureReason:
    by_type = view_name.endswith("_type_stats")
    entity = view_name.removesuffix("_type_stats").removesuffix("_code_stats")
    name = f"{view_name}__{feat.name}"
    noun = ENTITIES[entity].noun
    what = "this kind of promotion" if by_type else "this code"
    code = f"{entity.upper()}_{'PROMO_TYPE' if by_type else 'CODE'}_REUSE"
    window = WINDOW_WORDS.get(feat.window or "", "so far")
    if feat.only == "redeemed":
        return FeatureReason(
            name,
            code,
            entity,
            0.0,
            lambda v: (
                f"this {noun} has not redeemed {what} before"
                if _count(v) == 0
                else f"this {noun} already redeemed {what} {text.times(_count(v))}"
            ),
        )
    return FeatureReason(
        name,
        code,
        entity,
        0.0,
        lambda v: f"{text.some(_count(v), 'attempt')} at {what} from this {noun} {window}",
    )


@dataclass(frozen=True)
class _Flag:
    code: str
    true: str
    false: str
    if_absent: str | None


#: Request-time identity flags (features.identity) and context columns (features.context).
FLAGS: dict[str, _Flag] = {
    "email_missing": _Flag(
        "EMAIL_MISSING",
        "no email address was given",
        "an email address was given",
        "an email address had been given",
    ),
    "email_invalid": _Flag(
        "EMAIL_INVALID",
        "email address is not valid",
        "email address is well-formed",
        "the email address had been valid",
    ),
    "email_is_alias": _Flag(
        "EMAIL_ALIAS",
        "email is a plus or dot alias of another address",
        "email is not an alias of another address",
        "the email had not been an alias",
    ),
    "email_disposable": _Flag(
        "EMAIL_DISPOSABLE",
        "email is from a disposable-mail provider",
        "email is not from a disposable-mail provider",
        "the email had not been from a disposable-mail provider",
    ),
    "email_free_provider": _Flag(
        "EMAIL_FREE_PROVIDER",
        "email is from a free webmail provider",
        "email is not from a free webmail provider",
        "the email had not been from a free webmail provider",
    ),
    "phone_missing": _Flag(
        "PHONE_MISSING",
        "no phone number was given",
        "a phone number was given",
        "a phone number had been given",
    ),
    "phone_invalid": _Flag(
        "PHONE_INVALID",
        "phone number is not valid",
        "phone number is valid",
        "the phone number had been valid",
    ),
    "phone_voip": _Flag(
        "PHONE_VOIP",
        "phone number is a VoIP line",
        "phone number is not a VoIP line",
        "the phone had not been a VoIP line",
    ),
    "address_missing": _Flag(
        "ADDRESS_MISSING",
        "no shipping address was given",
        "a shipping address was given",
        "a shipping address had been given",
    ),
    "address_unparsed": _Flag(
        "ADDRESS_UNPARSED",
        "shipping address could not be parsed",
        "shipping address was parsed",
        "the shipping address had been readable",
    ),
    "ship_bill_mismatch": _Flag(
        "SHIP_BILL_MISMATCH",
        "shipping and billing households differ",
        "shipping and billing households match",
        "shipping and billing had been the same household",
    ),
    "device_missing": _Flag(
        "DEVICE_MISSING",
        "no valid device id was sent",
        "a valid device id was sent",
        "a valid device id had been sent",
    ),
    "ip_missing": _Flag(
        "IP_MISSING",
        "no public IP address was given",
        "a public IP address was given",
        "a public IP address had been given",
    ),
    "ip_is_datacenter": _Flag(
        "IP_DATACENTER",
        "IP address belongs to a cloud or hosting provider",
        "IP address is not a cloud or hosting network",
        "the request had not come from a cloud or hosting network",
    ),
    "ip_is_tor": _Flag(
        "IP_TOR",
        "IP address is a Tor exit node",
        "IP address is not a Tor exit node",
        "the request had not come through Tor",
    ),
    "ip_is_proxy_or_vpn": _Flag(
        "IP_PROXY_VPN",
        "IP address is a known proxy or VPN",
        "IP address is not a known proxy or VPN",
        "the request had not come through a proxy or VPN",
    ),
    "guest_checkout": _Flag(
        "GUEST_CHECKOUT",
        "checkout as a guest, without an account",
        "checkout with an account",
        "the shopper had checked out with an account",
    ),
    "one_per_customer": _Flag(
        "ONE_PER_CUSTOMER",
        "a code limited to one use per customer",
        "a code without a one-use-per-customer limit",
        None,
    ),
    "segment_ineligible": _Flag(
        "SEGMENT_INELIGIBLE",
        "the shopper is not in the segment the code is meant for",
        "the shopper may use this code's segment",
        "the shopper had been in the code's segment",
    ),
    "referrer_is_account": _Flag(
        "REFERRAL_SELF_REDEMPTION",
        "the referrer is the shopper's own account",
        "the referrer is another account",
        "the referrer had not been this shopper",
    ),
}

_PROMO_TYPE_TEXT = {
    "welcome": "a welcome offer for new customers",
    "referral": "a referral code",
    "intro_offer": "an introductory subscription offer",
    "free_sample": "a free-sample offer",
    "wholesale": "a wholesale or VIP code",
}


def _flag_reason(name: str, flag: _Flag) -> FeatureReason:
    def describe(v: float | None) -> str:
        if v is None:
            return f"{flag.true}: not checked"
        return flag.true if v >= 0.5 else flag.false

    return FeatureReason(name, flag.code, None, 0.0, describe)


def _promo_type_reason(name: str, ptype: str) -> FeatureReason:
    def describe(v: float | None) -> str:
        return _PROMO_TYPE_TEXT[ptype] if v is not None and v >= 0.5 else f"not {_PROMO_TYPE_TEXT[ptype]}"

    return FeatureReason(name, "PROMO_TYPE", None, 0.0, describe)


def _shared_kinds(v: float | None) -> str:
    n = _count(v)
    if n == 0:
        return "the referrer shares no device, address, card, phone or home network with this shopper"
    kinds = "device, address, card, phone or home network"
    return f"the referrer was seen with {text.number(n)} of this shopper's {kinds}"


def _linked(v: float | None) -> str:
    n = _count(v)
    if n >= 2:
        return (
            "this shopper is a person seen before: two strong identities (or an account) match earlier "
            "attempts"
        )
    return "this shopper matches no earlier person on two strong identities"


#: The identity graph's columns (:mod:`features.graph`): code, neutral value, wording.
_GRAPH_REASONS: dict[str, tuple[str, float, Describe]] = {
    "person_linked_evidence": ("PERSON_LINKED", 0.0, _linked),
    "person_accounts": (
        "PERSON_MANY_ACCOUNTS", 1.0,
        lambda v: f"this person has used {text.some(max(_count(v), 1.0), 'account')}",
    ),
    "person_emails": (
        "PERSON_MANY_ACCOUNTS", 1.0,
        lambda v: f"this person has used {text.some(max(_count(v), 1.0), 'email address')}",
    ),
    "person_code_attempts": (
        "PERSON_CODE_REUSE", 0.0,
        lambda v: f"this person already tried this code {text.times(_count(v))}" if _count(v) > 0
        else "this person had not tried this code before",
    ),
    "person_type_attempts": (
        "PERSON_PROMO_TYPE_REUSE", 0.0,
        lambda v: f"this person already tried this kind of promotion {text.times(_count(v))}"
        if _count(v) > 0 else "this person had not tried this kind of promotion before",
    ),
    "household_accounts": (
        "HOUSEHOLD_SHARED_ACCOUNTS", 1.0,
        lambda v: f"{text.some(_count(v), 'account')} seen at this shipping household",
    ),
    "referrer_same_person": (
        "REFERRAL_SELF_REDEMPTION", 0.0,
        lambda v: "the referrer resolves to this same person" if _count(v) >= 0.5
        else "the referrer is another person",
    ),
    "referrer_same_household": (
        "REFERRAL_SELF_REDEMPTION", 0.0,
        lambda v: "the referrer lives at this shopper's household" if _count(v) >= 0.5
        else "the referrer lives elsewhere",
    ),
}


@cache
def feature_reason(feature: str) -> FeatureReason | None:
    """The reason a model feature belongs to, from its name alone; None for a name no catalog knows."""
    if feature in FLAGS:
        return _flag_reason(feature, FLAGS[feature])
    if feature.startswith("promo_is_") and feature.removeprefix("promo_is_") in PROMO_TYPE_FLAGS:
        return _promo_type_reason(feature, feature.removeprefix("promo_is_"))
    if feature == "referrer_shared_hard_kinds":
        return FeatureReason(feature, "REFERRAL_SELF_REDEMPTION", None, 0.0, _shared_kinds)
    if feature in _GRAPH_REASONS:
        code, neutral, describe = _GRAPH_REASONS[feature]
        return FeatureReason(feature, code, None, neutral, describe)
    view_name, sep, feat_name = feature.partition("__")
    if not sep:
        return None
    try:
        view = definitions.view(view_name)
    except KeyError:
        return None
    feat = next((f for f in view.features if f.name == feat_name), None)
    if feat is None:
        return None
    if view_name == "code_stats":
        return _code_reason(feat)
    if view_name.endswith(("_code_stats", "_type_stats")):
        return _pair_reason(view_name, feat)
    return _identity_reason(view_name, feat)


def catalog_features() -> tuple[str, ...]:
    """Every feature name the catalog knows: views, identity flags, context columns."""
    return (*definitions.feature_names(), *(f for f in FLAGS if f not in CONTEXT_COLUMNS), *CONTEXT_COLUMNS)


# --- what each code means ----------------------------------------------------------------------------

_FAMILY_MEANING: dict[str, tuple[str, str]] = {
    # family -> (meaning, counterfactual clause) with {noun}
    "ATTEMPTS": (
        "many promo attempts from this {noun} (1 hour to 30 days)",
        "this {noun} had made fewer promo attempts",
    ),
    "REDEMPTIONS": (
        "promotions already redeemed by this {noun} (7 and 30 days)",
        "this {noun} had not redeemed promotions before",
    ),
    "INVALID_CODES": (
        "invalid codes tried from this {noun} in 24 hours (code spraying)",
        "this {noun} had not tried invalid codes",
    ),
    "SHARED_ACCOUNTS": (
        "this {noun} used by several accounts or email addresses",
        "this {noun} had not been used by other accounts",
    ),
    "LINKED_IDENTITIES": (
        "this {noun} seen with many other devices, cards, addresses or networks",
        "this {noun} had not been seen with other identities",
    ),
    "NEW": (
        "this {noun} is new (first seen recently, or never)",
        "this {noun} had been known for a long time",
    ),
    "PAST_ABUSE": (
        "earlier attempts from this {noun} confirmed as abuse",
        "this {noun} had no earlier attempts confirmed as abuse",
    ),
    "CODE_REUSE": (
        "this {noun} already tried or redeemed this very code",
        "this {noun} had not used this code before",
    ),
    "PROMO_TYPE_REUSE": (
        "this {noun} already used this kind of promotion (for example another welcome offer)",
        "this {noun} had not used this kind of promotion before",
    ),
}

_FIXED_MEANING: dict[str, tuple[str, str | None, str]] = {
    # code -> (meaning, counterfactual clause, emitted by)
    "BASELINE": ("typical risk of an attempt before any signal (model path)", None, "model"),
    "PAYMENT_MISSING": (
        "no payment fingerprint was given, so the payment method's history could not be read",
        "a payment fingerprint had been given",
        "model",
    ),
    "LOCAL_IP_MISSING": (
        "no local network address was sent, so the home network's history could not be read",
        "a local network address had been sent",
        "model",
    ),
    "OTHER_FACTORS": ("the sum of the smaller model contributions not listed one by one", None, "model"),
    "SINGLE_USE_SPENT": (
        "a single-use code was already claimed by an earlier checkout",
        "the single-use code had not been claimed already",
        "rule",
    ),
    "CAMPAIGN_PAUSED": (
        "an operator paused the campaign (`promoguard campaign pause`): every attempt is refused",
        "the campaign had not been paused",
        "campaign control",
    ),
    "FORCED_VERIFICATION": (
        "an operator requires verification on this campaign (`promoguard campaign verify`)",
        "verification had not been required on the campaign",
        "campaign control",
    ),
    "DENY_LISTED": (
        "an identity of the attempt (account, email, phone, device, card, household, IP, network, home "
        "network or person) is on the deny list, with the reason the entry gives",
        "no identity of the attempt had been on the deny list",
        "list",
    ),
    "ALLOW_LISTED": (
        "an identity of the attempt is on the allow list: allowed unless a hard cap is reached or a "
        "single-use code is spent (its negative points bring the score under the watch threshold)",
        None,
        "list",
    ),
    "CUSTOMER_CAP_REACHED": (
        "the promotion's per-customer limit is reached: the shopper's own account, or two strong "
        "identities (device, card, phone, email, household) of an earlier redeemer; for free samples "
        "the household alone",
        "the per-customer limit had not been reached",
        "rule",
    ),
    "CAP_STORE_UNAVAILABLE": (
        "the promotion's cap could not be checked because the reservation store was unavailable, and the "
        "promotion asks for verification then (by default a single-use code)",
        "the promotion's cap had been checked",
        "rule",
    ),
    "CODE_SEARCH": (
        "one shopper's device, account or email tried five or more codes the store rejected in 24 hours "
        "before this limited offer: a code search, held for verification",
        "the shopper had not been searching for codes",
        "rule",
    ),
    "EARLIER_REDEEMER_ONE_SIGNAL": (
        "one strong identity (device, card, phone, email or household) matches an earlier redeemer of "
        "this promotion: a warning, not a refusal, since families and shared devices look the same",
        "no strong identity had matched an earlier redeemer",
        "rule",
    ),
    "PERSON_LINKED": (
        "the attempt resolves to a person seen before: two strong identities (or the account) match "
        "earlier attempts in the identity graph",
        "the shopper had matched no earlier person",
        "model",
    ),
    "PERSON_MANY_ACCOUNTS": (
        "the resolved person has used several accounts or email addresses",
        "the person had used one account",
        "model",
    ),
    "PERSON_CODE_REUSE": (
        "the resolved person already tried this very code (under any account)",
        "the person had not tried this code before",
        "model",
    ),
    "PERSON_PROMO_TYPE_REUSE": (
        "the resolved person already tried this kind of promotion (under any account)",
        "the person had not tried this kind of promotion before",
        "model",
    ),
    "HOME_NETWORK_NEW_ACCOUNTS": (
        "several accounts claimed this limited promotion from one home network within the hour",
        "the home network had not claimed it under other accounts",
        "rule",
    ),
    "ANONYMOUS_NETWORK_LIMITED_PROMO": (
        "a limited promotion applied from a Tor exit or datacenter network",
        "the request had not come from Tor or a datacenter",
        "rule",
    ),
    "CUSTOM_RULE": (
        "a site-specific rule added to the rules table by the operator",
        "the site-specific rule had not matched",
        "rule",
    ),
    "CODE_ATTEMPTS": (
        "many attempts with this code in the last hour or day (a burst)",
        "the code had not been tried so often",
        "model",
    ),
    "CODE_REDEEMED": (
        "how often this code was already redeemed",
        "the code had not been redeemed before",
        "model",
    ),
    "CODE_SHARED_WIDELY": (
        "this code used from many devices, households, networks or accounts (a leak)",
        "the code had not been used from so many devices",
        "model, rule",
    ),
    "CODE_NEW_ACCOUNT_SHARE": (
        "share of this code's attempts in 7 days from new accounts or guests",
        "the code had not been used mostly by new accounts",
        "model",
    ),
    "CODE_AGE": (
        "how long ago the code was first used (a new code has no history yet)",
        "the code had been in use for a long time",
        "model",
    ),
    "PROMO_TYPE": (
        "the kind of promotion (welcome, referral, intro offer, free sample, wholesale, sitewide)",
        None,
        "model",
    ),
    "REFERRAL_SELF_REDEMPTION": (
        "the referrer is the shopper's own account or was seen with the shopper's "
        "device, household, card, phone or home network",
        "the referrer had not been linked to this shopper",
        "model, rule",
    ),
}

#: Codes that a rule of the packaged table emits besides model concepts.
_RULE_CODES = frozenset(
    {
        "DEVICE_MISSING",
        "SEGMENT_INELIGIBLE",
        "EMAIL_DISPOSABLE",
        "EMAIL_ALIAS",
        "EMAIL_INVALID",
        "IP_TOR",
        "IP_PROXY_VPN",
        "IP_DATACENTER",
        "PHONE_VOIP",
        "PHONE_INVALID",
        "DEVICE_SHARED_ACCOUNTS",
        "HOUSEHOLD_SHARED_ACCOUNTS",
        "PAYMENT_SHARED_ACCOUNTS",
        "HOUSEHOLD_CODE_REUSE",
        "DEVICE_INVALID_CODES",
        "NETWORK_ATTEMPTS",
        "DEVICE_PAST_ABUSE",
        "CAP_STORE_UNAVAILABLE",
    }
)


@cache
def concept(code: str) -> Concept:
    """Meaning and counterfactual clause of one reason code; KeyError for a code not in the enum."""
    if code not in REASON_CODES:
        raise KeyError(f"unknown reason code {code!r}")
    if code in _FIXED_MEANING:
        meaning, if_absent, by = _FIXED_MEANING[code]
        return Concept(code, meaning, if_absent, by)
    flag = next((f for f in FLAGS.values() if f.code == code), None)
    if flag is not None:
        by = "model, rule" if code in _RULE_CODES else "model"
        return Concept(code, flag.true, flag.if_absent, by)
    for family in sorted(_FAMILY_MEANING, key=len, reverse=True):
        if code.endswith("_" + family):
            entity = code.removesuffix("_" + family).lower()
            noun = ENTITIES[entity].noun
            meaning, if_absent = (s.format(noun=noun) for s in _FAMILY_MEANING[family])
            if code == "EMAIL_SHARED_ACCOUNTS":
                meaning = "this email address used by several accounts"
            by = "model, rule" if code in _RULE_CODES else "model"
            return Concept(code, meaning, if_absent, by)
    raise KeyError(f"reason code {code!r} has no meaning")


def reason_table_markdown() -> str:
    """The README's reason-code table, one row per code of the enum."""
    rows = ["| code | meaning | emitted by |", "| --- | --- | --- |"]
    rows += [f"| `{c}` | {concept(c).meaning} | {concept(c).emitted_by} |" for c in REASON_CODES]
    return "\n".join(rows)


# --- groups of features: one signal per concept -----------------------------------------------------


@dataclass(frozen=True)
class Grouping:
    """The concept groups of one model's feature order, worked out once per artifact."""

    codes: tuple[str, ...]
    #: Member feature indices per group (same order as ``codes``).
    members: tuple[tuple[int, ...], ...]
    #: Group index of every feature; ``len(codes)`` for features no catalog knows (other factors).
    group_of: tuple[int, ...]
    reasons: tuple[FeatureReason | None, ...]


@cache
def grouping(feature_names: tuple[str, ...], absent: frozenset[str] = frozenset()) -> Grouping:
    """Group a model's features by reason code (first appearance order).

    The counts of an identity in ``absent`` join that identity's missing code (the household's under
    ``ADDRESS_MISSING``): what moved the score there is that the request did not carry it, and a code
    keeps one meaning, so ``HOUSEHOLD_PAST_ABUSE`` is never shown for a request without an address.
    """
    codes: list[str] = []
    members: dict[str, list[int]] = {}
    reasons = tuple(feature_reason(f) for f in feature_names)
    code_of: list[str | None] = []
    for i, reason in enumerate(reasons):
        if reason is None:
            code_of.append(None)
            continue
        code = reason.code
        if reason.entity is not None and reason.entity in absent:
            code = ENTITIES[reason.entity].missing_code or code
        code_of.append(code)
        if code not in members:
            codes.append(code)
            members[code] = []
        members[code].append(i)
    index = {c: k for k, c in enumerate(codes)}
    group_of = tuple(len(codes) if c is None else index[c] for c in code_of)
    return Grouping(tuple(codes), tuple(tuple(members[c]) for c in codes), group_of, reasons)


def _clean(value: float) -> float | None:
    return None if value is None or not math.isfinite(float(value)) else float(value)


#: A row of numbers: a list, or a numpy row as the request path has it.
Numbers = Sequence[float] | npt.NDArray[np.float64]


def describe_group(
    group: Grouping, g: int, values: Numbers, weights: Numbers, absent: Collection[str] = ()
) -> str:
    """A group's description: its most telling member (largest contribution in the group's direction).

    ``absent`` names the identities the request did not carry ("device", "account"...): their counts
    read as the missing identity ("guest checkout, so no account history"), never as a number.
    """
    idx = group.members[g]
    code = group.codes[g]
    if code == "PROMO_TYPE":
        on = [i for i in idx if _clean(values[i]) == 1.0]
        if on:
            return _describe(group, on[0], values)
        return (
            "a sitewide promotion"
            if all(_clean(values[i]) == 0.0 for i in idx)
            else "promotion type not given"
        )
    for member in idx:
        # A missing code that took an absent identity's counts (see grouping) reads as that absence.
        owner = group.reasons[member]
        held = None if owner is None or owner.entity not in absent else owner.entity
        if held is not None and ENTITIES[held].missing_code == code:
            return ENTITIES[held].absent
    entity = group.reasons[idx[0]].entity if group.reasons[idx[0]] is not None else None  # type: ignore[union-attr]
    if entity is not None and entity in absent:
        return ENTITIES[entity].absent
    total = sum(float(weights[i]) for i in idx)
    sign = 1.0 if total >= 0 else -1.0
    best = max(idx, key=lambda i: (sign * float(weights[i]), -i))
    return _describe(group, best, values)


def _describe(group: Grouping, i: int, values: Numbers) -> str:
    reason = group.reasons[i]
    assert reason is not None
    return reason.describe(_clean(values[i]))


def absent_identities(keys: Mapping[str, object]) -> frozenset[str]:
    """Identities a request did not carry, from its keys (``device`` when ``device_key`` is empty)."""
    return frozenset(e for e in ENTITIES if not keys.get(f"{e}_key"))
