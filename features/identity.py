"""Identity resolution: raw checkout identity -> stable, privacy-safe keys and request-time flags.

Promo abusers change what is cheap (email, account, cookie, public IP) and keep what is expensive
(phone, shipping address, card, device, home network). This module folds the cheap variations away
(Gmail dots, plus tags, address spelling, phone formatting) so that the expensive identity shows, and
turns every identity into a keyed hash. The same functions serve the batch pipeline, training and the
online service, so one checkout resolves in well under a millisecond once parsers are warm.

Stages, each a pure function returning a frozen result that never raises on garbage input:

* :func:`normalize_email` - case folding, IDN to punycode, provider alias domains, plus/hyphen tags
  where the provider honours them (:data:`PLUS_TAG_PROVIDERS`), Gmail dot removal; alias, disposable,
  free-provider and invalid flags.
* :func:`normalize_phone` - E.164 via ``phonenumbers`` (cached); fallback on the last ten digits.
* :func:`normalize_address` - a token scan for plain street lines and ``usaddress`` tagging for the
  rest (both cached); USPS directionals, unit designators and street suffixes are recognised (the suffix
  is left out of the keys); the household is the door, its unit included. Non-US addresses use a
  normalised-text key.
* :func:`normalize_device`, :func:`normalize_ip` - device id validation, IP /24 or /64 network.

:class:`KeyHasher` turns canonical values into ``HMAC-SHA256(pepper, kind:value)`` hex[:32];
:class:`IdentityResolver` composes everything into :class:`IdentityKeys` (the names in
``docs/contracts.md``); :func:`resolve_frame` does the same for a whole events frame, resolving each
distinct raw value once. Raw values never appear in logs: messages name fields only.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import logging
import re
import unicodedata
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields
from functools import lru_cache
from typing import Any, TypeVar

import idna
import numpy as np
import pandas as pd
import phonenumbers
import usaddress
from disposable_email_domains import blocklist as _DISPOSABLE_BLOCKLIST

from features.ipintel import IpIntel, IpIntelProvider, parse_ip, warn_once

logger = logging.getLogger(__name__)

# ---------------------------------------------------------------------------------------------------
# Keyed hashing


class KeyHasher:
    """Keyed hashing of canonical identity values: ``HMAC-SHA256(pepper, kind + ':' + value)`` hex[:32].

    The ``kind`` prefix keeps equal strings of different kinds (an account id that looks like a device
    id) from colliding. Pass ``is_dev_pepper=True`` when the pepper is the public development default:
    a WARNING is logged once, because such hashes can be reversed by anyone with a list of emails.
    """

    def __init__(self, pepper: str, *, is_dev_pepper: bool = False) -> None:
        """Hold the pepper; an empty pepper is refused (it would make every key guessable)."""
        if not isinstance(pepper, str) or not pepper:
            raise ValueError("pepper: must be a non-empty string")
        self._pepper = pepper.encode("utf-8")
        self.is_dev_pepper = is_dev_pepper
        if is_dev_pepper:
            warn_once(
                "dev-pepper",
                "pepper: identity keys are hashed with the public development pepper; set "
                "PROMOGUARD_PEPPER to a secret before handling real customer data",
                logger,
            )

    def key(self, kind: str, value: str) -> str:
        """Return the 32-hex-character keyed hash of ``value`` under ``kind``."""
        message = f"{kind}:{value}".encode()
        return hmac.digest(self._pepper, message, hashlib.sha256)[:16].hex()

    def maybe(self, kind: str, value: str | None) -> str | None:
        """Like :meth:`key`, but None stays None (missing or invalid input)."""
        return None if value is None else self.key(kind, value)


def _text(value: Any) -> str | None:
    """Return a stripped string, or None for missing/blank/NaN input (pandas hands us floats for NaN)."""
    if value is None:
        return None
    if not isinstance(value, str):
        if isinstance(value, float) and value != value:
            return None
        value = str(value)
    value = value.strip()
    return value or None


# ---------------------------------------------------------------------------------------------------
# Email

#: Providers that deliver ``local+tag@domain`` (or ``local-tag`` for Yahoo) to ``local@domain``.
#: Only these are stripped: elsewhere ``+`` or ``-`` may be part of a distinct mailbox name.
PLUS_TAG_PROVIDERS: Mapping[str, str] = {
    "gmail.com": "+",
    "outlook.com": "+",
    "hotmail.com": "+",
    "hotmail.co.uk": "+",
    "hotmail.fr": "+",
    "live.com": "+",
    "msn.com": "+",
    "icloud.com": "+",
    "fastmail.com": "+",
    "fastmail.fm": "+",
    "proton.me": "+",
    "yahoo.com": "-",
    "yahoo.co.uk": "-",
    "ymail.com": "-",
}

#: Domains that reach the same mailbox as another domain (the key uses the right-hand side).
#: Regional Hotmail/Yahoo domains are separate namespaces and stay themselves.
DOMAIN_ALIASES: Mapping[str, str] = {
    "googlemail.com": "gmail.com",
    "me.com": "icloud.com",
    "mac.com": "icloud.com",
    "pm.me": "proton.me",
    "protonmail.com": "proton.me",
    "protonmail.ch": "proton.me",
}

#: Domains where dots in the local part are ignored by the provider.
DOTLESS_PROVIDERS = frozenset({"gmail.com"})

#: Free webmail providers: anyone can make a new address in a minute.
FREE_PROVIDERS = frozenset(
    {
        "gmail.com", "yahoo.com", "yahoo.co.uk", "yahoo.fr", "yahoo.de", "ymail.com", "rocketmail.com",
        "outlook.com", "hotmail.com", "hotmail.co.uk", "hotmail.fr", "hotmail.de", "hotmail.it",
        "live.com", "live.co.uk", "msn.com", "aol.com", "icloud.com", "proton.me", "tutanota.com",
        "tuta.io", "gmx.com", "gmx.de", "gmx.net", "web.de", "mail.com", "mail.ru", "inbox.ru",
        "bk.ru", "list.ru", "yandex.com", "yandex.ru", "zoho.com", "fastmail.com", "fastmail.fm",
        "qq.com", "163.com", "126.com", "naver.com", "hushmail.com", "laposte.net", "orange.fr",
        "libero.it", "seznam.cz", "wp.pl", "o2.pl", "rediffmail.com",
    }
)

_DISPOSABLE = frozenset(_DISPOSABLE_BLOCKLIST)
_LOCAL_RE = re.compile(r"^[a-z0-9!#$%&'*+/=?^_`{|}~.\-]{1,64}$")
_DOMAIN_LABEL_RE = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")


@dataclass(frozen=True, slots=True)
class EmailResult:
    """A normalised email: ``canonical`` is None when missing or invalid (``error`` says why)."""

    canonical: str | None
    domain: str | None
    missing: bool = False
    invalid: bool = False
    is_alias: bool = False
    disposable: bool = False
    free_provider: bool = False
    error: str | None = None


def _email_error(reason: str) -> EmailResult:
    return EmailResult(canonical=None, domain=None, invalid=True, error=reason)


def _ascii_domain(domain: str) -> str | None:
    domain = domain.rstrip(".")
    if not domain.isascii():
        try:
            domain = idna.encode(domain, uts46=True).decode("ascii")
        except (idna.IDNAError, UnicodeError, ValueError):
            return None
    labels = domain.split(".")
    if len(labels) < 2 or len(domain) > 253 or not all(_DOMAIN_LABEL_RE.match(lbl) for lbl in labels):
        return None
    if labels[-1].isdigit():
        return None
    return domain


def _is_disposable(domain: str) -> bool:
    # The blocklist names registrable domains; subdomains of them are just as throwaway.
    parts = domain.split(".")
    return any(".".join(parts[i:]) in _DISPOSABLE for i in range(len(parts) - 1))


def normalize_email(raw: Any) -> EmailResult:
    """Fold an email to the mailbox it reaches; never raises (garbage gives ``invalid`` + ``error``)."""
    text = _text(raw)
    if text is None:
        return EmailResult(canonical=None, domain=None, missing=True, error="missing")
    if len(text) > 320:
        return _email_error("longer than 320 characters")
    # NFKC again after casefold: casefolding can produce sequences NFKC would rewrite (idempotence).
    text = unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", text).casefold())
    if text.startswith("mailto:"):
        text = text[7:]
    if text.count("@") != 1:
        return _email_error("must contain exactly one '@'")
    local, raw_domain = text.split("@")
    if not local:
        return _email_error("empty local part")
    domain = _ascii_domain(raw_domain)
    if domain is None:
        return _email_error("domain is not a valid host name")
    if not local.isascii():
        # Internationalised local parts exist (RFC 6531) but no major provider folds them: keep as is.
        if any(c.isspace() or c in "@<>()[],;:\\\"" for c in local) or len(local) > 64:
            return _email_error("local part has forbidden characters")
    elif not _LOCAL_RE.match(local) or local.startswith(".") or local.endswith(".") or ".." in local:
        return _email_error("local part has forbidden characters")
    folded_domain = DOMAIN_ALIASES.get(domain, domain)
    new_local = local
    tag = PLUS_TAG_PROVIDERS.get(folded_domain)
    if tag is not None and tag in new_local[1:]:
        # "a.+tag" would leave "a.", which is not a valid local part on its own (and would not
        # normalise to itself): the dot only separated the tag.
        new_local = new_local[: new_local.index(tag, 1)].rstrip(".")
    if folded_domain in DOTLESS_PROVIDERS:
        new_local = new_local.replace(".", "")
    if not new_local:
        return _email_error("local part is empty once tags are removed")
    # A person chooses dots, tags and googlemail on purpose; me.com -> icloud.com is just history.
    is_alias = new_local != local or domain == "googlemail.com"
    return EmailResult(
        canonical=f"{new_local}@{folded_domain}",
        domain=folded_domain,
        is_alias=is_alias,
        disposable=_is_disposable(domain) or _is_disposable(folded_domain),
        free_provider=folded_domain in FREE_PROVIDERS,
    )


# ---------------------------------------------------------------------------------------------------
# Phone

_NON_DIGIT = re.compile(r"\D+")
_MOBILE_TYPES = frozenset(
    {phonenumbers.PhoneNumberType.MOBILE, phonenumbers.PhoneNumberType.FIXED_LINE_OR_MOBILE}
)


@dataclass(frozen=True, slots=True)
class PhoneResult:
    """A normalised phone: ``canonical`` is E.164 or ``last10:<digits>`` (fallback), None when unusable.

    ``non_mobile`` is True only when the numbering metadata says the number is not a mobile line
    (fixed line, toll-free, premium, VoIP...): it is not an input for the contract flags but is exposed
    for rules that want it.
    """

    canonical: str | None
    missing: bool = False
    invalid: bool = False
    voip: bool = False
    non_mobile: bool = False
    error: str | None = None


@lru_cache(maxsize=65_536)
def _parse_phone(text: str, region: str) -> PhoneResult:
    digits = _NON_DIGIT.sub("", text)
    try:
        number = phonenumbers.parse(text, region)
    except phonenumbers.NumberParseException:
        number = None
    if number is not None and phonenumbers.is_possible_number(number):
        # number_type is UNKNOWN exactly when no type pattern of the number's region matches, which is
        # what is_valid_number checks too: one metadata walk instead of two.
        kind = phonenumbers.number_type(number)
        valid = known = kind != phonenumbers.PhoneNumberType.UNKNOWN
        return PhoneResult(
            canonical=phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164),
            invalid=not valid,
            voip=kind == phonenumbers.PhoneNumberType.VOIP,
            non_mobile=known and kind not in _MOBILE_TYPES,
            error=None if valid else "not a valid number for its region",
        )
    if len(digits) >= 10:
        # Unparsable but long enough to be a real number typed oddly: the last ten digits still tie
        # the variants together (national significant number in most plans).
        return PhoneResult(canonical=f"last10:{digits[-10:]}", invalid=True, error="could not be parsed")
    return PhoneResult(canonical=None, invalid=True, error="too few digits")


def normalize_phone(raw: Any, default_region: str = "US") -> PhoneResult:
    """Normalise a phone number to E.164 (``default_region`` for national formats); never raises."""
    text = _text(raw)
    if text is None:
        return PhoneResult(canonical=None, missing=True, error="missing")
    if len(text) > 64:
        return PhoneResult(canonical=None, invalid=True, error="longer than 64 characters")
    if not any(c.isalpha() for c in text):
        # Formatting is irrelevant to the parser once letters (vanity numbers, "ext") are ruled out, so the
        # cache is keyed on the leading '+' and the digits: "(415) 555 0100" and "415.555.0100" share it.
        text = ("+" if text.lstrip().startswith("+") else "") + _NON_DIGIT.sub("", text)
    return _parse_phone(text, (default_region or "US").upper())


# ---------------------------------------------------------------------------------------------------
# Address

#: USPS Publication 28 street suffixes that are never part of a name: recognised so they can be left out
#: of the key. Words that are also common name words (Park, Hill, Creek, Point...) are deliberately absent:
#: they stay in the street name, which is how both parsing paths read them consistently.
STREET_SUFFIXES: Mapping[str, str] = {
    "street": "ST", "st": "ST", "str": "ST", "strt": "ST",
    "avenue": "AVE", "ave": "AVE", "av": "AVE", "aven": "AVE", "avenu": "AVE", "avn": "AVE",
    "road": "RD", "rd": "RD", "boulevard": "BLVD", "blvd": "BLVD", "boul": "BLVD",
    "drive": "DR", "dr": "DR", "drv": "DR", "lane": "LN", "ln": "LN", "court": "CT", "ct": "CT",
    "place": "PL", "pl": "PL", "terrace": "TER", "ter": "TER", "circle": "CIR", "cir": "CIR",
    "highway": "HWY", "hwy": "HWY", "parkway": "PKWY", "pkwy": "PKWY", "pky": "PKWY", "way": "WAY",
    "wy": "WAY", "trail": "TRL", "trl": "TRL", "alley": "ALY", "aly": "ALY", "expressway": "EXPY",
    "expy": "EXPY", "freeway": "FWY", "fwy": "FWY", "turnpike": "TPKE", "tpke": "TPKE", "causeway": "CSWY",
    "cswy": "CSWY", "sq": "SQ",
}

DIRECTIONALS: Mapping[str, str] = {
    "north": "N", "n": "N", "south": "S", "s": "S", "east": "E", "e": "E", "west": "W", "w": "W",
    "northeast": "NE", "ne": "NE", "northwest": "NW", "nw": "NW", "southeast": "SE", "se": "SE",
    "southwest": "SW", "sw": "SW",
}

#: Unit designators: all dropped from the key, so "#4B", "Apt 4B", "Unit 4-b" and "Ste 4B" agree.
UNIT_DESIGNATORS = frozenset(
    {
        "apt", "apartment", "unit", "ste", "suite", "no", "num", "number", "rm", "room", "fl", "floor",
        "flat", "bldg", "building", "dept", "lot", "spc", "space", "trlr", "box", "#",
    }
)

_US_COUNTRIES = frozenset({"", "us", "usa", "united states", "united states of america", "u.s.", "u.s.a."})
_PUNCT = re.compile(r"[^\w]+", re.UNICODE)
_ALNUM = re.compile(r"[^0-9a-z]+")
_ZIP5 = re.compile(r"^\s*(\d{5})(?:[-\s]?\d{4})?\s*$")


@dataclass(frozen=True, slots=True)
class AddressResult:
    """A normalised address: one door, its unit included; None when missing.

    ``household`` and ``address`` are the same text, the door: "Apt 4B", "#4b" and "Unit 4-B" agree, and
    two flats of one building are two households, since neighbours are strangers. ``unparsed`` means
    the US parser could not find a house number and street, so the texts fall back to the normalised
    line text (they still join identical spellings).
    """

    household: str | None
    address: str | None
    missing: bool = False
    unparsed: bool = False
    error: str | None = None


def _norm_text(value: str | None) -> str:
    """Casefold, strip accents' compatibility forms, collapse punctuation and whitespace to one space."""
    if not value:
        return ""
    folded = unicodedata.normalize("NFKC", value).casefold()
    return " ".join(_PUNCT.sub(" ", folded).replace("_", " ").split())


def _norm_unit(value: str | None) -> str:
    """Reduce a unit ("Apt 4-B", "# 4b", "Unit 4B") to its identifier in upper case ("4B")."""
    if not value:
        return ""
    words = _norm_text(value.replace("#", " # ")).split()
    while words and words[0] in UNIT_DESIGNATORS:
        words = words[1:]
    return _ALNUM.sub("", "".join(words)).upper()


def _locality(postal_code: str | None, city: str | None, region: str | None) -> str:
    if postal_code:
        match = _ZIP5.match(postal_code)
        if match:
            return match.group(1)
    # Without a usable ZIP the city and state stand in for it.
    return f"{_norm_text(city)}|{_norm_text(region)}".upper()


_FAST_UNIT_WORDS = frozenset({"apt", "apartment", "unit", "ste", "suite", "#"})
_ORDINAL = re.compile(r"^\d+(?:st|nd|rd|th)$")
_TOKEN = re.compile(r"#|[^\W_]+")
_AMBIGUOUS = (
    frozenset(STREET_SUFFIXES) | frozenset(DIRECTIONALS) | UNIT_DESIGNATORS | {"po", "p", "o", "rr", "hc"}
)


def _fast_us_line(line1: str) -> tuple[str, str] | None:
    """Parse the common shape "<number> [dir] <name words> [suffix] [dir] [apt|unit|#|ste <id>]" directly.

    usaddress (a CRF) costs ~0.1 ms a line; most checkout lines have this plain shape, which a token scan
    reads in a few microseconds. Anything unusual (digits inside the street name, PO boxes, rural routes,
    a name word that is also a suffix or directional) returns None and goes to usaddress. A property test
    holds both paths to the same answer on the shapes this accepts.
    """
    tokens = _TOKEN.findall(unicodedata.normalize("NFKC", line1).casefold())
    if len(tokens) < 2 or not tokens[0].isdigit() or len(tokens[0]) > 8:
        return None
    unit = ""
    for k in range(1, len(tokens)):
        if tokens[k] in _FAST_UNIT_WORDS:
            rest = tokens[k + 1 :]
            if not rest or any(t in _AMBIGUOUS for t in rest) or len(rest) > 2:
                return None
            unit = _ALNUM.sub("", "".join(rest)).upper()
            tokens = tokens[:k]
            break
    street = tokens[1:]
    post = pre = ""
    if len(street) >= 3 and street[-1] in DIRECTIONALS and street[-2] in STREET_SUFFIXES:
        post = DIRECTIONALS[street.pop()]
    if len(street) >= 2 and street[-1] in STREET_SUFFIXES:
        street.pop()
    if len(street) >= 2 and street[0] in DIRECTIONALS:
        pre = DIRECTIONALS[street.pop(0)]
    if not street or len(street) > 3:
        return None
    for token in street:
        if token in _AMBIGUOUS or not ((token.isalpha() and token.isascii()) or _ORDINAL.match(token)):
            return None
    name = " ".join(street).upper()
    return " ".join(p for p in (tokens[0], pre, name, post) if p), unit


@lru_cache(maxsize=131_072)
def _parse_us_line(line1: str) -> tuple[str, str] | None:
    """Return ``(street_text, unit)`` for a US street line (suffix dropped), None if unparsable."""
    fast = _fast_us_line(line1)
    return fast if fast is not None else _usaddress_line(line1)


def _usaddress_line(line1: str) -> tuple[str, str] | None:
    try:
        tags, _kind = usaddress.tag(line1)
    except (usaddress.RepeatedLabelError, ValueError, IndexError):
        return None
    number = tags.get("AddressNumber")
    street = tags.get("StreetName")
    if tags.get("USPSBoxID"):
        return f"PO BOX {_ALNUM.sub('', _norm_text(tags['USPSBoxID'])).upper()}", ""
    if not number or not street:
        return None
    number_text = _ALNUM.sub("", _norm_text(number)).upper()
    pre = DIRECTIONALS.get(_norm_text(tags.get("StreetNamePreDirectional")), "")
    post = DIRECTIONALS.get(_norm_text(tags.get("StreetNamePostDirectional")), "")
    pre_type = _norm_text(tags.get("StreetNamePreType")).upper()
    name = _norm_text(street).upper()
    post_type = _norm_text(tags.get("StreetNamePostType"))
    if post_type and post_type not in STREET_SUFFIXES:
        # Only suffixes in our table are dropped. usaddress reads "Lake Shore" as name + suffix but
        # "Lake Shore Dr" as a two-word name; keeping unlisted suffixes in the name makes both agree.
        name = f"{name} {post_type.upper()}"
    unit = _norm_unit(tags.get("OccupancyIdentifier") or tags.get("SubaddressIdentifier"))
    street_text = " ".join(p for p in (number_text, pre, pre_type, name, post) if p)
    return street_text, unit


def us_street_line_readings(line1: str) -> tuple[tuple[str, str] | None, tuple[str, str] | None]:
    """Both parsers' ``(street_text, unit)`` for a US street line: ``(fast scan, usaddress)``, None if unread.

    Address normalisation takes the fast scan's answer and falls back to usaddress; where both read a
    line they must agree, which the tests hold them to through this function.
    """
    return _fast_us_line(line1), _usaddress_line(line1)


@lru_cache(maxsize=131_072)
def _normalize_address_cached(
    line1: str | None,
    line2: str | None,
    city: str | None,
    region: str | None,
    postal_code: str | None,
    country: str | None,
) -> AddressResult:
    if line1 is None:
        if line2 is None:
            return AddressResult(household=None, address=None, missing=True, error="missing")
        line1, line2 = line2, None
    if not _norm_text(line1):
        return AddressResult(household=None, address=None, unparsed=True, error="no letters or digits")
    country_text = _norm_text(country)
    if country_text not in _US_COUNTRIES:
        # Outside the US we have no parser: normalised text still joins identical spellings.
        base = f"{_norm_text(line1)}|{_norm_text(postal_code) or _norm_text(city)}|{country_text}".upper()
        unit = _norm_unit(line2)
        door = f"{base}|{unit}" if unit else base
        return AddressResult(household=door, address=door)
    locality = _locality(postal_code, city, region)
    parsed = _parse_us_line(line1)
    if parsed is None:
        text = _norm_text(line1).upper()
        unit = _norm_unit(line2)
        building = f"{text}|{locality}"
        door = f"{building}|{unit}" if unit else building
        return AddressResult(
            household=door,
            address=door,
            unparsed=True,
            error="no house number and street found",
        )
    street_text, unit = parsed
    if line2:
        # line2 usually holds the unit; it wins over a unit usaddress guessed inside line1.
        unit = _norm_unit(line2) or unit
    # The suffix is left out of both keys: shoppers drop or misspell it ("123 Main" for "123 Main St")
    # far more often than two streets differing only by suffix share a house number and a ZIP code.
    building = f"{street_text}|{locality}"
    door = f"{building}|{unit}" if unit else building
    return AddressResult(household=door, address=door)


def normalize_address(
    line1: Any = None,
    line2: Any = None,
    city: Any = None,
    region: Any = None,
    postal_code: Any = None,
    country: Any = None,
) -> AddressResult:
    """Canonicalise an address into household and address texts; never raises.

    The household text is house number + directionals + street name + ZIP5 (street suffix dropped;
    city/state replace a missing ZIP), then the unit identifier with its designator removed, so
    "Apt 4B", "#4b", "Unit 4-B" agree and "Apt 5C" is another household. Results are cached by the raw
    tuple.
    """
    parts = tuple(_text(v) for v in (line1, line2, city, region, postal_code, country))
    if any(p is not None and len(p) > 256 for p in parts):
        return AddressResult(household=None, address=None, unparsed=True, error="a field is over 256 chars")
    return _normalize_address_cached(*parts)


def address_cache_info() -> dict[str, int]:
    """Hit/miss counts of the address caches (the benchmark reports them)."""
    full = _normalize_address_cached.cache_info()
    line = _parse_us_line.cache_info()
    return {"hits": full.hits, "misses": full.misses, "parser_hits": line.hits, "parser_misses": line.misses}


def clear_caches() -> None:
    """Empty the parse caches (benchmarks use it to measure cold-cache cost)."""
    _normalize_address_cached.cache_clear()
    _parse_us_line.cache_clear()
    _parse_phone.cache_clear()


# ---------------------------------------------------------------------------------------------------
# Device and network

_HEX_RE = re.compile(r"^[0-9a-f]{8,128}$")
_UUID_RE = re.compile(r"^\{?([0-9a-f]{8})-?([0-9a-f]{4})-?([0-9a-f]{4})-?([0-9a-f]{4})-?([0-9a-f]{12})\}?$")
# Device SDKs hand out opaque ids too (alphanumeric visitor ids, prefixed ids such as "dev-..."): any
# such token counts, so that a real device is never scored as a missing one.
_OPAQUE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{7,127}$")
#: Placeholders (letters and digits only) that SDKs and checkout code send when they have no device id.
_PLACEHOLDER_DEVICES = frozenset(
    {"undefined", "null", "none", "unknown", "nodevice", "anonymous", "default", "deviceid", "device"}
)


def normalize_device(raw: Any) -> str | None:
    """Return a canonical device id, or None for missing, malformed, placeholder or all-zero ids.

    Accepted: a UUID (any case, with or without hyphens/braces; the all-zero UUID that iOS returns when
    tracking is refused means "no device"), a hex-like id of 8 to 128 characters (both lower-cased), or
    an opaque SDK token of 8 to 128 characters (letters, digits, ``.``, ``_``, ``:``, ``-``; kept as sent,
    since such ids are case-sensitive) with at least four distinct letters or digits.
    """
    text = _text(raw)
    if text is None or len(text) > 130:
        return None
    folded = text.casefold()
    match = _UUID_RE.match(folded)
    if match or _HEX_RE.match(folded):
        canonical = "-".join(match.groups()) if match else folded
        return canonical if canonical.replace("-", "").strip("0") else None
    if not _OPAQUE_RE.match(text) or "".join(c for c in folded if c.isalnum()) in _PLACEHOLDER_DEVICES:
        return None
    if len({c for c in folded if c.isalnum()}) < 4:
        return None
    return text


@dataclass(frozen=True, slots=True)
class IpResult:
    """A parsed public IP: canonical text, its network (/24 or /64), and the parsed address."""

    ip: str | None
    network: str | None
    address: ipaddress.IPv4Address | ipaddress.IPv6Address | None = None


_MISSING_IP = IpResult(ip=None, network=None)


#: Ranges that are never a shopper's public address as a store's server sees it: private networks,
#: carrier-grade NAT, loopback, link-local, multicast and unspecified. A checkout behind a proxy that
#: forwards its own address sends one of these for every shopper, and keyed as a network it would make
#: all of them one crowd. Documentation ranges (198.51.100.0/24 and the like) are kept: examples use them.
NOT_PUBLIC_NETWORKS: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = tuple(
    ipaddress.ip_network(n) for n in (
        "0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16", "172.16.0.0/12",
        "192.168.0.0/16", "224.0.0.0/4", "240.0.0.0/4", "::/127", "fc00::/7", "fe80::/10", "ff00::/8",
    )
)


#: :data:`NOT_PUBLIC_NETWORKS` as integer bounds per IP version: comparing integers is several times
#: cheaper than ``address in network``, and every request's IP goes through it.
_NOT_PUBLIC_BOUNDS: dict[int, tuple[tuple[int, int], ...]] = {
    version: tuple((int(n.network_address), int(n.broadcast_address))
                   for n in NOT_PUBLIC_NETWORKS if n.version == version)
    for version in (4, 6)
}


def is_public_ip(addr: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """False for an address in :data:`NOT_PUBLIC_NETWORKS`."""
    value = int(addr)
    return not any(low <= value <= high for low, high in _NOT_PUBLIC_BOUNDS[addr.version])


def normalize_ip(raw: Any) -> IpResult:
    """Parse a public IP into its canonical text and network (/24 for IPv4, /64 for IPv6); never raises.

    An address that cannot be a shopper's public one (:func:`is_public_ip`) is no public IP: missing.
    """
    addr = parse_ip(_text(raw))
    if addr is None or not is_public_ip(addr):
        return _MISSING_IP
    prefix = 24 if addr.version == 4 else 64
    # Masking the integer is several times cheaper than building an ip_network object.
    bits = addr.max_prefixlen - prefix
    base = ipaddress.ip_address((int(addr) >> bits) << bits)
    return IpResult(ip=str(addr), network=f"{base}/{prefix}", address=addr)


def normalize_local_ip(raw: Any) -> str | None:
    """Canonical text of a WebRTC local IP (only ever used as a hashed key), None when invalid."""
    addr = parse_ip(_text(raw))
    return None if addr is None else str(addr)


# ---------------------------------------------------------------------------------------------------
# Composition


@dataclass(frozen=True)
class IdentityConfig:
    """How identities are hashed and parsed; ``dev_pepper`` marks the public development pepper."""

    pepper: str
    default_phone_region: str = "US"
    dev_pepper: bool = False


@dataclass(frozen=True, slots=True)
class IdentityKeys:
    """Keys and request-time flags of one checkout, named as in ``docs/contracts.md``."""

    account_key: str | None
    email_key: str | None
    phone_key: str | None
    household_key: str | None
    address_key: str | None
    bill_household_key: str | None
    payment_key: str | None
    device_key: str | None
    network_key: str | None
    ip_key: str | None
    local_ip_key: str | None
    referrer_key: str | None
    email_missing: bool
    email_invalid: bool
    email_is_alias: bool
    email_disposable: bool
    email_free_provider: bool
    phone_missing: bool
    phone_invalid: bool
    phone_voip: bool
    address_missing: bool
    address_unparsed: bool
    ship_bill_mismatch: bool
    device_missing: bool
    ip_missing: bool
    ip_is_datacenter: bool
    ip_is_tor: bool
    ip_is_proxy_or_vpn: bool
    ip_provider: str | None

    def as_dict(self) -> dict[str, Any]:
        """Return the keys and flags as a plain dict (column name -> value)."""
        # Every value is a str, bool, None or float: a shallow dict equals dataclasses.asdict's deep
        # copy at a fifth of its cost, which is paid on every scored request.
        return {name: getattr(self, name) for name in _IDENTITY_FIELDS}


_IDENTITY_FIELDS: tuple[str, ...] = tuple(f.name for f in fields(IdentityKeys))
KEY_COLUMNS: tuple[str, ...] = tuple(f.name for f in fields(IdentityKeys) if f.name.endswith("_key"))
FLAG_COLUMNS: tuple[str, ...] = tuple(f.name for f in fields(IdentityKeys) if not f.name.endswith("_key"))
IDENTITY_COLUMNS: tuple[str, ...] = KEY_COLUMNS + FLAG_COLUMNS

#: Hard identities (what abusers keep) and their raw source columns, for :func:`collapse_report`.
HARD_KEYS: tuple[str, ...] = ("device_key", "household_key", "payment_key", "phone_key", "local_ip_key")

_ADDRESS_SUFFIXES = ("line1", "line2", "city", "region", "postal_code", "country")
SHIP_FIELDS = tuple(f"ship_{p}" for p in _ADDRESS_SUFFIXES)
BILL_FIELDS = tuple(f"bill_{p}" for p in _ADDRESS_SUFFIXES)

_CLEAN_IP = IpIntel(source="none")


@dataclass(frozen=True, slots=True)
class _EmailPart:
    key: str | None
    missing: bool
    invalid: bool
    is_alias: bool
    disposable: bool
    free_provider: bool


@dataclass(frozen=True, slots=True)
class _PhonePart:
    key: str | None
    missing: bool
    invalid: bool
    voip: bool


@dataclass(frozen=True, slots=True)
class _AddressPart:
    household_key: str | None
    address_key: str | None
    missing: bool
    unparsed: bool


@dataclass(frozen=True, slots=True)
class _IpPart:
    ip_key: str | None
    network_key: str | None
    missing: bool
    intel: IpIntel


class IdentityResolver:
    """Turn one raw checkout identity (event-contract column names) into :class:`IdentityKeys`.

    ``ipintel`` is optional: without it the IP flags are False and ``ip_provider`` is None.
    """

    def __init__(self, config: IdentityConfig, ipintel: IpIntelProvider | None = None) -> None:
        """Prepare the hasher; warns once when the development pepper is in use."""
        self.config = config
        self.hasher = KeyHasher(config.pepper, is_dev_pepper=config.dev_pepper)
        self.ipintel = ipintel
        self.region = (config.default_phone_region or "US").upper()

    # The part methods are the units resolve_frame maps over distinct raw values.

    def email_part(self, raw: Any) -> _EmailPart:
        """Key and flags of one raw email."""
        r = normalize_email(raw)
        return _EmailPart(
            self.hasher.maybe("email", r.canonical), r.missing, r.invalid, r.is_alias, r.disposable,
            r.free_provider,
        )

    def phone_part(self, raw: Any) -> _PhonePart:
        """Key and flags of one raw phone."""
        r = normalize_phone(raw, self.region)
        return _PhonePart(self.hasher.maybe("phone", r.canonical), r.missing, r.invalid, r.voip)

    def address_part(self, parts: Sequence[Any]) -> _AddressPart:
        """Household/address keys and flags of one raw address (line1, line2, city, region, zip, country)."""
        r = normalize_address(*parts)
        return _AddressPart(
            self.hasher.maybe("household", r.household), self.hasher.maybe("address", r.address),
            r.missing, r.unparsed,
        )

    def ip_part(self, raw: Any) -> _IpPart:
        """IP and network keys plus IP intelligence of one raw public IP."""
        r = normalize_ip(raw)
        if r.ip is None:
            return _IpPart(None, None, True, _CLEAN_IP)
        intel = self.ipintel.lookup(r.ip) if self.ipintel is not None else _CLEAN_IP
        return _IpPart(self.hasher.key("ip", r.ip), self.hasher.maybe("network", r.network), False, intel)

    def simple_key(self, kind: str, raw: Any) -> str | None:
        """Key of an identifier used verbatim apart from surrounding whitespace (account, payment)."""
        text = _text(raw)
        return None if text is None or len(text) > 256 else self.hasher.key(kind, text)

    def device_key(self, raw: Any) -> str | None:
        """Key of a validated device id (None when missing, malformed or all-zero)."""
        return self.hasher.maybe("device", normalize_device(raw))

    def local_ip_key(self, raw: Any, network_key: str | None) -> str | None:
        """Key of the home network: a WebRTC local IP scoped by the public network it was seen behind.

        A private address alone (192.168.1.23) is shared by millions of unrelated homes, so without a
        public network there is no key (None), as there is none for an invalid local IP.
        """
        local = normalize_local_ip(raw)
        if local is None or network_key is None:
            return None
        return self.hasher.key("local_ip", f"{network_key}|{local}")

    def resolve(self, record: Mapping[str, Any]) -> IdentityKeys:
        """Resolve one record (missing columns count as missing values); never raises on bad values."""
        get = record.get
        email = self.email_part(get("email"))
        phone = self.phone_part(get("phone"))
        ship = self.address_part([get(c) for c in SHIP_FIELDS])
        bill = self.address_part([get(c) for c in BILL_FIELDS])
        ip = self.ip_part(get("ip"))
        device = self.device_key(get("device_id"))
        guest = get("is_guest") is True
        return _assemble(
            account_key=None if guest else self.simple_key("account", get("account_id")),
            referrer_key=self.simple_key("account", get("referrer_account_id")),
            payment_key=self.simple_key("payment", get("payment_fingerprint")),
            device_key=device,
            local_ip_key=self.local_ip_key(get("local_ip"), ip.network_key),
            email=email, phone=phone, ship=ship, bill=bill, ip=ip,
        )


def _assemble(
    *,
    account_key: str | None,
    referrer_key: str | None,
    payment_key: str | None,
    device_key: str | None,
    local_ip_key: str | None,
    email: _EmailPart,
    phone: _PhonePart,
    ship: _AddressPart,
    bill: _AddressPart,
    ip: _IpPart,
) -> IdentityKeys:
    return IdentityKeys(
        account_key=account_key,
        email_key=email.key,
        phone_key=phone.key,
        household_key=ship.household_key,
        address_key=ship.address_key,
        bill_household_key=bill.household_key,
        payment_key=payment_key,
        device_key=device_key,
        network_key=ip.network_key,
        ip_key=ip.ip_key,
        local_ip_key=local_ip_key,
        referrer_key=referrer_key,
        email_missing=email.missing,
        email_invalid=email.invalid,
        email_is_alias=email.is_alias,
        email_disposable=email.disposable,
        email_free_provider=email.free_provider,
        phone_missing=phone.missing,
        phone_invalid=phone.invalid,
        phone_voip=phone.voip,
        address_missing=ship.missing,
        address_unparsed=ship.unparsed,
        ship_bill_mismatch=_mismatch(ship.household_key, bill.household_key),
        device_missing=device_key is None,
        ip_missing=ip.missing,
        ip_is_datacenter=ip.intel.is_datacenter,
        ip_is_tor=ip.intel.is_tor,
        ip_is_proxy_or_vpn=ip.intel.is_proxy_or_vpn,
        ip_provider=ip.intel.provider,
    )


def _mismatch(ship: str | None, bill: str | None) -> bool:
    # Only a known billing household that differs counts: a missing billing address is not a signal.
    return ship is not None and bill is not None and ship != bill


# ---------------------------------------------------------------------------------------------------
# Frames

#: Event columns that carry no personal data and travel with the keys.
PASSTHROUGH_COLUMNS: tuple[str, ...] = (
    "ts", "promo_code", "promo_type", "promo_valid", "discount_value", "outcome", "is_guest",
    "account_created_at", "account_segment", "cart_total", "currency",
)

_T = TypeVar("_T")


def _map_unique(values: pd.Series | np.ndarray, fn: Callable[[Any], _T]) -> list[_T]:
    """Apply ``fn`` once per distinct value and broadcast back (NaN/None resolve as missing once)."""
    codes, uniques = pd.factorize(pd.Series(values, dtype=object), use_na_sentinel=True)
    results = [fn(v) for v in uniques]
    # The sentinel -1 indexes the last element, so the missing-value result goes there.
    results.append(fn(None))
    table = np.empty(len(results), dtype=object)
    table[:] = results
    return list(table[codes])


def _home_network_key(resolver: IdentityResolver, joined: Any) -> str | None:
    """``local_ip_key`` of a ``local\x1fnetwork_key`` pair built by :func:`resolve_frame`."""
    if not isinstance(joined, str):
        return None
    local, _, network = joined.partition("\x1f")
    return resolver.local_ip_key(local, network or None)


def _column(events: pd.DataFrame, name: str) -> pd.Series:
    if name in events.columns:
        return events[name]
    return pd.Series([None] * len(events), index=events.index, dtype=object)


def _map_address(
    events: pd.DataFrame, columns: Sequence[str], resolver: IdentityResolver
) -> list[_AddressPart]:
    cols = [_column(events, c).astype(object) for c in columns]
    joined = cols[0].where(cols[0].notna(), "\x00").astype(str)
    for col in cols[1:]:
        joined = joined + "\x1f" + col.where(col.notna(), "\x00").astype(str)
    codes, uniques = pd.factorize(joined)
    _, first = np.unique(codes, return_index=True)
    arrays = [c.to_numpy() for c in cols]
    table = np.empty(len(uniques), dtype=object)
    table[:] = [resolver.address_part([a[i] for a in arrays]) for i in first]
    return list(table[codes])


def _event_seconds(events: pd.DataFrame) -> list[float]:
    """Each event's time in epoch seconds (+inf when unknown: then every feed entry counts)."""
    if "ts" not in events.columns:
        return [float("inf")] * len(events)
    ts = pd.to_datetime(events["ts"], utc=True)
    seconds = (ts - pd.Timestamp(0, tz="UTC")).dt.total_seconds()
    return seconds.fillna(float("inf")).tolist()


def resolve_frame(events: pd.DataFrame, resolver: IdentityResolver) -> pd.DataFrame:
    """Resolve a whole events frame into ``request_id`` + non-PII columns + every key and flag column.

    Raw identity (email, phone, addresses, IPs, account/referrer ids, payment fingerprint, device id,
    user agent, card BIN/last4) is dropped. Each distinct raw value is normalised and hashed once, so a
    million rows take seconds. Raise ValueError when ``request_id`` is absent.
    """
    if "request_id" not in events.columns:
        raise ValueError("events: column 'request_id' is required")
    emails = _map_unique(_column(events, "email"), resolver.email_part)
    phones = _map_unique(_column(events, "phone"), resolver.phone_part)
    ips = _map_unique(_column(events, "ip"), resolver.ip_part)
    ship = _map_address(events, SHIP_FIELDS, resolver)
    bill = _map_address(events, BILL_FIELDS, resolver)

    out = pd.DataFrame({"request_id": events["request_id"].to_numpy()}, index=events.index)
    for col in PASSTHROUGH_COLUMNS:
        if col in events.columns:
            out[col] = events[col]

    guest = _column(events, "is_guest").eq(True).to_numpy()
    accounts = np.array(
        _map_unique(_column(events, "account_id"), lambda v: resolver.simple_key("account", v)), dtype=object
    )
    accounts[guest] = None
    out["account_key"] = accounts
    out["email_key"] = [e.key for e in emails]
    out["phone_key"] = [p.key for p in phones]
    out["household_key"] = [a.household_key for a in ship]
    out["address_key"] = [a.address_key for a in ship]
    out["bill_household_key"] = [a.household_key for a in bill]
    out["payment_key"] = _map_unique(
        _column(events, "payment_fingerprint"), lambda v: resolver.simple_key("payment", v)
    )
    out["device_key"] = _map_unique(_column(events, "device_id"), resolver.device_key)
    out["network_key"] = [i.network_key for i in ips]
    out["ip_key"] = [i.ip_key for i in ips]
    local = _column(events, "local_ip").astype(object)
    scoped = local.where(local.isna(), local.astype(str) + "\x1f" + out["network_key"].fillna("").astype(str))
    out["local_ip_key"] = _map_unique(scoped, lambda v: _home_network_key(resolver, v))
    out["referrer_key"] = _map_unique(
        _column(events, "referrer_account_id"), lambda v: resolver.simple_key("account", v)
    )
    out["email_missing"] = [e.missing for e in emails]
    out["email_invalid"] = [e.invalid for e in emails]
    out["email_is_alias"] = [e.is_alias for e in emails]
    out["email_disposable"] = [e.disposable for e in emails]
    out["email_free_provider"] = [e.free_provider for e in emails]
    out["phone_missing"] = [p.missing for p in phones]
    out["phone_invalid"] = [p.invalid for p in phones]
    out["phone_voip"] = [p.voip for p in phones]
    out["address_missing"] = [a.missing for a in ship]
    out["address_unparsed"] = [a.unparsed for a in ship]
    out["ship_bill_mismatch"] = [
        _mismatch(s.household_key, b.household_key) for s, b in zip(ship, bill, strict=True)
    ]
    out["device_missing"] = out["device_key"].isna()
    out["ip_missing"] = [i.missing for i in ips]
    # Feeds are dated: an event sees only the entries listed by its own time (point in time).
    event_s = _event_seconds(events)
    intel = [i.intel.as_of(t) for i, t in zip(ips, event_s, strict=True)]
    out["ip_is_datacenter"] = [i.is_datacenter for i in intel]
    out["ip_is_tor"] = [i.is_tor for i in intel]
    out["ip_is_proxy_or_vpn"] = [i.is_proxy_or_vpn for i in intel]
    out["ip_provider"] = pd.Series([i.provider for i in intel], index=events.index, dtype=object)
    for col in KEY_COLUMNS:
        out[col] = out[col].astype(object)
    for col in FLAG_COLUMNS:
        if col != "ip_provider":
            out[col] = out[col].astype(bool)
    return out.reset_index(drop=True)


#: Raw columns behind each key, used to count raw variants per actor in :func:`collapse_report`.
RAW_SOURCES: Mapping[str, tuple[str, ...]] = {
    "device_key": ("device_id",),
    "household_key": ("ship_line1", "ship_line2", "ship_postal_code"),
    "payment_key": ("payment_fingerprint",),
    "phone_key": ("phone",),
    "local_ip_key": ("local_ip",),
    "email_key": ("email",),
}


def collapse_report(
    keys_frame: pd.DataFrame,
    truth: pd.DataFrame,
    events: pd.DataFrame | None = None,
    keys: Sequence[str] = (*HARD_KEYS, "email_key"),
) -> pd.DataFrame:
    """Per abuse pattern and key: how well the variants one actor used collapse onto one key.

    ``truth`` has ``request_id``, ``actor_id``, ``pattern``. Output, one row per (pattern, key):

    * ``actors``: actors of the pattern with at least one non-null value of the key;
    * ``keys_per_actor``: mean distinct keys per such actor (1.0 = the actor is one entity);
    * ``single_key_share``: share of those actors whose events all carry the same key.

    With ``events`` (the raw frame, same ``request_id``) it adds ``raw_per_actor`` (mean distinct raw
    spellings) and ``collapse_rate``: among actors who used more than one raw spelling, the share whose
    spellings resolved to fewer distinct keys - i.e. how often normalisation undid the variation.
    """
    for col in ("request_id", "actor_id", "pattern"):
        if col not in truth.columns:
            raise ValueError(f"truth: column {col!r} is required")
    frame = keys_frame.merge(truth[["request_id", "actor_id", "pattern"]], on="request_id", how="inner")
    if events is not None:
        raw_cols = sorted({c for k in keys for c in RAW_SOURCES.get(k, ()) if c in events.columns})
        frame = frame.merge(events[["request_id", *raw_cols]], on="request_id", how="left")
    rows = []
    for key in keys:
        if key not in frame.columns:
            continue
        sub = frame[frame[key].notna()]
        grouped = sub.groupby(["pattern", "actor_id"], sort=True)
        distinct_keys = grouped[key].nunique()
        raw_cols_for_key = [c for c in RAW_SOURCES.get(key, ()) if events is not None and c in sub.columns]
        distinct_raw: pd.Series | None = None
        if raw_cols_for_key:
            raw_text = sub[raw_cols_for_key[0]].astype(str)
            for c in raw_cols_for_key[1:]:
                raw_text = raw_text + "\x1f" + sub[c].astype(str)
            distinct_raw = raw_text.groupby([sub["pattern"], sub["actor_id"]], sort=True).nunique()
        for pattern, per_actor in distinct_keys.groupby(level="pattern"):
            row: dict[str, Any] = {
                "pattern": pattern,
                "key": key,
                "actors": int(per_actor.size),
                "keys_per_actor": float(per_actor.mean()),
                "single_key_share": float((per_actor == 1).mean()),
            }
            if distinct_raw is not None:
                raw = distinct_raw.loc[pattern]
                keyed = per_actor.droplevel("pattern")
                varied = raw[raw > 1]
                row["raw_per_actor"] = float(raw.mean())
                row["collapse_rate"] = (
                    float((keyed.loc[varied.index] < varied).mean()) if len(varied) else float("nan")
                )
            rows.append(row)
    columns = ["pattern", "key", "actors", "keys_per_actor", "single_key_share"]
    if events is not None:
        columns += ["raw_per_actor", "collapse_rate"]
    return pd.DataFrame(rows, columns=columns)


def build_resolver(
    *,
    pepper: str,
    dev_pepper: bool,
    default_phone_region: str = "US",
    tor_exit_list: str | None = None,
    proxy_list: str | None = None,
    ipintel_url: str | None = None,
    ipintel_api_key: str | None = None,
    ipintel_timeout_s: float = 0.2,
    ipintel_fail_open: bool = True,
    allow_loopback_for_tests: bool = False,
) -> IdentityResolver:
    """The resolver every deployable uses: offline IP intelligence (plus an HTTP provider) and keyed hashing.

    With ``ipintel_url`` the HTTP provider is asked about every IP the offline data does not flag
    (:class:`features.ipintel.CombinedIpIntel`); its URL is checked against private and internal hosts
    here, and ``allow_loopback_for_tests`` exists only for tests against a server on 127.0.0.1. Built
    from primitives so that this module needs no settings object; deployables call
    :func:`config.resolver.identity_resolver`, which passes their ``Settings``.
    """
    from features.ipintel import CombinedIpIntel, HttpIpIntel, OfflineIpIntel

    offline = OfflineIpIntel(tor_exit_list=tor_exit_list, proxy_list=proxy_list)
    config = IdentityConfig(pepper=pepper, default_phone_region=default_phone_region, dev_pepper=dev_pepper)
    if not ipintel_url:
        return IdentityResolver(config, offline)
    http = HttpIpIntel(
        ipintel_url,
        ipintel_api_key,
        timeout_s=ipintel_timeout_s,
        fail_open=ipintel_fail_open,
        allow_loopback_for_tests=allow_loopback_for_tests,
    )
    return IdentityResolver(config, CombinedIpIntel(offline, http))
