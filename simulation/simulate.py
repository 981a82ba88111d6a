"""Seeded, reproducible generator of labeled promo-redemption history (simulator v2).

The history is the demo and test data source. It is built so that a model has to learn what it would
on a real store, and nothing else: abuse hides behind cheap identity (fresh emails, accounts, public
IPs) while keeping some hard identity (device, household, card, phone, home network), and honest
traffic carries the same noise and the same look-alikes a real store sees (families at one address,
phones behind carrier NAT, VPN and privacy-relay users, movers, mistyped codes, eligible trade buyers
who forget to log in, new customers who open an account at checkout).

How v2 keeps the simulator from giving abuse away
-------------------------------------------------
* **One renderer for everyone.** Every human attempt, honest or not, is planned as *which persona's*
  email, phone, address, card, device, local network and browser it presents (indices into one persona
  table built by one function), when, with which code and account. One vectorised renderer
  (:func:`_render`) turns every plan row into raw text with the same formats and the same noise. A raw
  field's value therefore never separates abuse from honesty by itself; what gives abuse away is
  relational: one hard identity joined across changing cheap identity, a trade code in guest checkout
  by a shopper who is no trade customer, one door redeeming a one-per-household sample again.
* **Shared distributions.** Account age at checkout, time of day, cart totals (per promo type), user
  agents, email and referral-code formats, IP kinds: drawn from the same functions for both sides.
* **Every seed pattern throughout the period.** Actors start uniformly over (and before) the window,
  several partner codes leak at different times, intro and sample campaigns run throughout.
* **Evasion tiers** per abuse actor: naive / careful / sophisticated / rotating (see :func:`_identity`).
  The rotating tier renews device, card (virtual/prepaid BINs), phone (VoIP), address (jigging the same
  door, or a parcel forwarder shared by many) and email on every attempt and keeps only realistic residue:
  home network (public IP or its /24, local IP), user agent, rhythm, and pre-aged bought accounts.
* **Labels like human review**: sophisticated and rotating abuse is caught less often, look-alike honest
  shoppers are reviewed and mislabeled more often, labels arrive late.
* **Point-in-time IP feeds** with partial coverage: ``<ip-or-cidr> <listed_at>`` lines. Exits come up
  throughout the period; ``FEED_LIST_SHARE`` (75%) of them are ever listed, ``FEED_LISTED_BEFORE_SHARE``
  (30%) of those before their first use here, the rest days to weeks after; one proxy /24 is listed as a
  range. Listings after the end of the history are not on the feed.

Noise rates of honest traffic (named constants below; abuse attempts get the same renderer noise)
------------------------------------------------------------------------------------------------
=============================  ======  ============================================================
``CODE_TYPO_RATE``             1.6%    mistyped code: promo_valid False, outcome rejected
``CODE_EXPIRED_RATE``          1.2%    an expired campaign's code: promo_valid False, rejected
``CODE_RETRY_SHARE``           60%     of those rejections retried minutes later with the right code
``EMAIL_PLUS_TAG_RATE``        3%      personas whose everyday address carries a ``+tag``
``EMAIL_GMAIL_DOTS_RATE``      5%      Gmail personas who write extra dots in the local part
``EMAIL_GOOGLEMAIL_RATE``      3%      Gmail personas who write ``googlemail.com``
``EMAIL_ALIAS_RATE``           2%      attempts with a per-shop alias of the shopper's mailbox
``EMAIL_CASE_NOISE_RATE``      4%      upper-cased, capitalised or space-padded email
``ADDRESS_RESTYLE_RATE``       15%     address written other than the shopper's habitual way
``LINE2_MISSING_RATE``         4%      unit line left out
``SHIP_BILL_DIFFER_RATE``      10%     billing address differs (gifts, office billing)
``BILL_MISSING_RATE``          2%      no billing address
``PHONE_MISSING_RATE``         7%      no phone
``DEVICE_MISSING_RATE``        4%      no device id (blocked script, privacy browser)
``LOCAL_IP_MISSING_RATE``      6%      no local IP (WebRTC blocked)
``NO_ADDRESS_RATE``            5%      no shipping or billing address (a digital order)
``CARD_NOT_YET_RATE``          5%      no card (the code applied in the cart, before payment)
``APP_ONLY_RATE``              3%      of signed-in attempts: an app sends the account and device alone
``VOIP_PHONE_RATE``            4%      personas whose phone is VoIP/prepaid (geographic US numbers)
``VIRTUAL_CARD_RATE``          4%      attempts paid with a virtual/prepaid card
``PRIVACY_RELAY_RATE``         2.5%    ordinary attempts through a privacy relay / corporate egress
``COMMERCIAL_VPN_RATE``        1.8%    ordinary attempts through a commercial VPN exit
``LEGIT_TOR_RATE``             0.2%    ordinary attempts through Tor (plus Tor users among legit_vpn)
``GUEST_SHOPPER_SHARE``        28%     honest shoppers who never open an account
``GUEST_WHOLESALE_RATE``       12%     eligible trade/VIP attempts made in guest checkout
``FORWARDER_SHARE``            0.8%    honest shoppers shipping to a parcel forwarder
``LEGIT_CHALLENGE_RATE``       1.5%    honest attempts challenged and retried minutes later
=============================  ======  ============================================================

Honest new customers: ``legit_new`` (and a share of every other kind) join inside the window; their first
order uses a welcome, referral, intro or sample offer, the running sale or a partner's code
(``_NEW_FIRST_OFFER_P``), 80% on an account opened seconds to minutes before (the same account-age
distribution as abusers' fresh accounts), 20% on an account that lay dormant (newsletter sign-ups; the
same dormancy distribution as abusers' pre-aged accounts), some as guests.

Legit traffic (the bulk) is planned vectorised per actor group with numpy; abuse traffic (a few percent)
is planned per attempt with a seeded ``random.Random``, which keeps every pattern readable. The same
:class:`SimulationConfig` always gives identical frames.

Outputs (see :class:`SimulatedHistory`): ``events``/``labels``/``promotions`` in the contract of
:mod:`features.events`, plus evaluation-only ground truth (``actors``, ``truth`` with the actor's
``evasion`` tier, ``leaks``) that must never become a feature.

Phones: :func:`features.identity.normalize_phone` classifies VoIP with ``phonenumbers``, whose metadata
types no US number as VoIP (only +1 600, a Canadian non-geographic code). VoIP/prepaid numbers here are
therefore ordinary geographic US numbers drawn from the same distribution as everyone's.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import pandas as pd
from disposable_email_domains import blocklist as _DISPOSABLE_BLOCKLIST

from features.events import (
    BOT_PATTERNS,
    EVENT_COLUMNS,
    SEED_PATTERNS,
    validate_events,
    validate_labels,
    validate_promotions,
)
from features.ipintel import cloud_ranges

DriftKind = Literal["none", "new_leak", "new_bot_farm", "seasonal_legit"]
Evasion = Literal["none", "naive", "careful", "sophisticated", "rotating"]
EVASION_TIERS = ("naive", "careful", "sophisticated", "rotating")

ABUSE_PATTERNS = (*SEED_PATTERNS, *BOT_PATTERNS)
LEGIT_PATTERNS = (
    "legit_repeat",
    "legit_new",
    "legit_household",
    "legit_cgnat",
    "legit_vpn",
    "legit_mover",
    "legit_typo",
    "legit_wholesale",
)

# --- Honest-traffic noise (see the module docstring's table) -----------------------------------------
CODE_TYPO_RATE = 0.016
CODE_EXPIRED_RATE = 0.012
CODE_RETRY_SHARE = 0.6
EMAIL_PLUS_TAG_RATE = 0.03
EMAIL_GMAIL_DOTS_RATE = 0.05
EMAIL_GOOGLEMAIL_RATE = 0.03
EMAIL_ALIAS_RATE = 0.02
EMAIL_CASE_NOISE_RATE = 0.04
ADDRESS_RESTYLE_RATE = 0.15
LINE2_MISSING_RATE = 0.04
SHIP_BILL_DIFFER_RATE = 0.10
BILL_MISSING_RATE = 0.02
PHONE_MISSING_RATE = 0.07
DEVICE_MISSING_RATE = 0.04
LOCAL_IP_MISSING_RATE = 0.06
NO_ADDRESS_RATE = 0.05
CARD_NOT_YET_RATE = 0.05
APP_ONLY_RATE = 0.03
VOIP_PHONE_RATE = 0.04
VIRTUAL_CARD_RATE = 0.04
PRIVACY_RELAY_RATE = 0.025
COMMERCIAL_VPN_RATE = 0.018
LEGIT_TOR_RATE = 0.002
GUEST_SHOPPER_SHARE = 0.28
GUEST_WHOLESALE_RATE = 0.12
FORWARDER_SHARE = 0.008
LEGIT_CHALLENGE_RATE = 0.015

# --- Honest offers ---------------------------------------------------------------------------------
#: Offer of a new customer's first order: welcome, referral, intro, sample, the running sale, a partner code.
_NEW_FIRST_OFFER_P = (0.47, 0.18, 0.10, 0.09, 0.13, 0.03)
#: Share of new customers (with an account) whose account was opened long before the first order.
_PRESIGNUP_SHARE = 0.20
#: Per honest actor, once in the window: a subscription intro, a free sample, a partner (influencer) code.
_P_INTRO_ONCE = 0.10
_P_SAMPLE_ONCE = 0.12
_P_PARTNER_ONCE = 0.015
#: Share of non-``legit_new`` actors who become customers inside the window (households: more).
_NEW_SHARE_OTHERS = 0.18
_NEW_SHARE_HOUSEHOLD = 0.40

#: Share of non-bot abuse attempts per pattern.
_ABUSE_MIX = {
    "welcome_cycling": 0.25,
    "referral_self": 0.15,
    "code_leak": 0.22,
    "intro_reset": 0.13,
    "sample_stacking": 0.13,
    "wholesale_guest": 0.12,
}
#: (share of legit attempts, mean attempts per actor).
_LEGIT_MIX = {
    "legit_repeat": (0.31, 3.5),
    "legit_new": (0.28, 1.3),
    "legit_household": (0.15, 3.0),
    "legit_cgnat": (0.09, 3.0),
    "legit_vpn": (0.05, 3.0),
    "legit_mover": (0.04, 5.0),
    "legit_typo": (0.03, 4.0),
    "legit_wholesale": (0.05, 5.0),
}

#: Partner (influencer) codes leak every this many days, the first one shortly before the window.
_LEAK_EVERY_DAYS = 12
#: Mean days a leak wave keeps bringing strangers (coupon sites keep listing the code).
_LEAK_DECAY_DAYS = 12.0

_DAY = 86_400.0
#: Plan IP placeholders: a VPN / Tor exit picked once the attempt's time is known.
_PICK_TOR, _PICK_PROXY = -3, -4
_ZERO_DEVICE = "00000000-0000-0000-0000-000000000000"

#: Relative hourly traffic (local time of the store): quiet nights, lunch and evening peaks.
_HOUR_WEIGHTS = np.asarray(
    [
        *(1.2, 0.7, 0.4, 0.3, 0.3, 0.5, 1.0, 1.8, 2.6, 3.2, 3.6, 4.0),  # 00-11 h
        *(4.6, 4.4, 4.0, 3.9, 4.0, 4.3, 4.8, 5.4, 5.8, 5.4, 4.0, 2.4),  # 12-23 h
    ]
)
_HOUR_P = _HOUR_WEIGHTS / _HOUR_WEIGHTS.sum()
#: Share of an actor's attempts made around their habitual hour (everyone, abusers' "rhythm" included).
_HABIT_HOUR_SHARE = 0.55

#: IP kinds: home, mobile carrier (CGNAT), another residential line, commercial VPN, cloud egress, Tor.
_IP_KINDS = ("home", "mobile", "other", "proxy", "cloud", "tor")
_IP_MIX_ORDINARY = (
    1.0 - 0.22 - 0.08 - COMMERCIAL_VPN_RATE - PRIVACY_RELAY_RATE - LEGIT_TOR_RATE,
    0.22,
    0.08,
    COMMERCIAL_VPN_RATE,
    PRIVACY_RELAY_RATE,
    LEGIT_TOR_RATE,
)
#: Abusers by tier (rotating keeps its home network and has no entry). "other" for sophisticated
#: abusers is a residential proxy: a clean home line somewhere else, absent from every feed.
_IP_MIX_TIER = {
    "naive": _IP_MIX_ORDINARY,
    "careful": (0.46, 0.22, 0.08, 0.14, 0.07, 0.03),
    "sophisticated": (0.30, 0.15, 0.30, 0.12, 0.09, 0.04),
}
#: Chance that an attempt is challenged (step-up verification) and retried minutes later.
_CHALLENGE_RATE = {"naive": 0.04, "careful": 0.08, "sophisticated": 0.10, "rotating": 0.10}


@dataclass(frozen=True)
class DriftConfig:
    """A shift in traffic from ``start_day`` on, for drift reports and robustness tests.

    ``new_leak``: another code leaks at ``start_day``; ``new_bot_farm``: a bot farm with a device and
    proxy profile never seen before (Android WebView emulators on mobile proxies, account farming with
    valid welcome codes); ``seasonal_legit``: a seasonal rise in honest traffic, mostly households and
    mobile shoppers. ``intensity`` is the extra traffic as a share of ``n_events``.
    """

    kind: DriftKind = "none"
    start_day: int = 60
    intensity: float = 0.10


@dataclass(frozen=True)
class SimulationConfig:
    """Knobs of the simulated history; the same config always yields identical frames."""

    n_events: int = 200_000
    days: int = 90
    seed: int = 7
    start: datetime = datetime(2026, 6, 1, tzinfo=UTC)
    abuse_share: float = 0.07
    #: Share of all attempts made by code-spraying bots (mostly invalid codes, on top of abuse_share).
    bot_share: float = 0.03
    #: Share of abusers never caught: none of their attempts is labeled (plus some missed attempts).
    #: It is the average over tiers: sophisticated and rotating abusers escape review more often.
    never_labeled_share: float = 0.30
    #: Share of legit attempts that get a (reviewed or audited) legit label; look-alikes get more.
    legit_label_share: float = 0.06
    #: Share of labeled legit attempts wrongly labeled abuse (look-alikes more, ordinary ones less).
    label_noise: float = 0.015
    #: Median label delay in days per source (lognormal around it).
    label_delay_days: dict[str, float] = field(
        default_factory=lambda: {
            "feedback_api": 0.5,
            "manual_review": 3.0,
            "customer_support": 9.0,
            "policy_audit": 21.0,
        }
    )
    #: Shares of naive / careful / sophisticated / rotating abusers (three shares mean no rotating tier).
    evasion_mix: tuple[float, ...] = (0.40, 0.30, 0.18, 0.12)
    drift: DriftConfig | None = None

    def __post_init__(self) -> None:
        """Reject out-of-range settings at construction, naming the field and the value given."""
        if self.n_events < 1_000:
            raise ValueError(f"n_events must be at least 1000, got {self.n_events}")
        if self.days < 14:
            raise ValueError(f"days must be at least 14, got {self.days}")
        if not 0.0 < self.abuse_share < 0.5:
            raise ValueError(f"abuse_share must be in (0, 0.5), got {self.abuse_share}")
        if not 0.0 <= self.bot_share < 0.3:
            raise ValueError(f"bot_share must be in [0, 0.3), got {self.bot_share}")
        if not 0.0 <= self.never_labeled_share <= 1.0:
            raise ValueError(f"never_labeled_share must be in [0, 1], got {self.never_labeled_share}")
        if (
            len(self.evasion_mix) not in (3, 4)
            or abs(sum(self.evasion_mix) - 1.0) > 1e-6
            or min(self.evasion_mix) < 0
        ):
            raise ValueError(
                "evasion_mix must be four non-negative shares (naive, careful, sophisticated, rotating) "
                f"summing to 1: {self.evasion_mix}"
            )
        if self.start.tzinfo is None:
            raise ValueError("start must be timezone-aware (UTC)")
        if self.drift is not None and not 0 < self.drift.start_day < self.days:
            raise ValueError(f"drift.start_day must be inside (0, {self.days}), got {self.drift.start_day}")


@dataclass
class SimulatedHistory:
    """Events, labels and promotions in the data contract, plus evaluation-only ground truth."""

    events: pd.DataFrame
    labels: pd.DataFrame
    promotions: pd.DataFrame
    actors: pd.DataFrame
    #: request_id, actor_id, pattern, is_abuse, evasion (the actor's tier; "none" for honest actors).
    truth: pd.DataFrame
    #: One row per leaked code: promo_code, leaked_at (evaluation only).
    leaks: pd.DataFrame = field(default_factory=pd.DataFrame)
    #: Feed entries (IP or CIDR) and, aligned with them, when each was listed (ISO-8601 UTC).
    tor_exits: list[str] = field(default_factory=list)
    proxies: list[str] = field(default_factory=list)
    feed_date: str = ""
    tor_listed_at: list[str] = field(default_factory=list)
    proxy_listed_at: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------------------------------
# Vocabulary for raw identity text
# --------------------------------------------------------------------------------------------------

_FIRST = [
    "james",
    "mary",
    "john",
    "patricia",
    "robert",
    "jennifer",
    "michael",
    "linda",
    "william",
    "elizabeth",
    "david",
    "barbara",
    "richard",
    "susan",
    "joseph",
    "jessica",
    "thomas",
    "sarah",
    "charles",
    "karen",
    "chris",
    "nancy",
    "daniel",
    "lisa",
    "matthew",
    "betty",
    "anthony",
    "sandra",
    "mark",
    "ashley",
    "donald",
    "emily",
    "steven",
    "kimberly",
    "paul",
    "donna",
    "andrew",
    "michelle",
    "joshua",
    "carol",
    "kevin",
    "amanda",
    "brian",
    "melissa",
    "george",
    "deborah",
    "maria",
    "wei",
    "priya",
    "ahmed",
    "sofia",
    "luis",
    "ana",
]
_LAST = [
    "smith",
    "johnson",
    "williams",
    "brown",
    "jones",
    "garcia",
    "miller",
    "davis",
    "rodriguez",
    "martinez",
    "hernandez",
    "lopez",
    "gonzalez",
    "wilson",
    "anderson",
    "thomas",
    "taylor",
    "moore",
    "jackson",
    "martin",
    "lee",
    "perez",
    "thompson",
    "white",
    "harris",
    "sanchez",
    "clark",
    "ramirez",
    "lewis",
    "robinson",
    "walker",
    "young",
    "allen",
    "king",
    "wright",
    "scott",
    "torres",
    "nguyen",
    "hill",
    "flores",
    "green",
    "adams",
    "nelson",
    "baker",
    "hall",
    "rivera",
    "campbell",
    "mitchell",
    "carter",
    "roberts",
    "patel",
    "chen",
    "kim",
]
_STREETS = [
    "Main",
    "Oak",
    "Pine",
    "Maple",
    "Cedar",
    "Elm",
    "Washington",
    "Lake",
    "Hill",
    "Park",
    "Sunset",
    "Lincoln",
    "Jackson",
    "Church",
    "Highland",
    "River",
    "Willow",
    "Spring",
    "Meadow",
    "Forest",
    "Chestnut",
    "Walnut",
    "Franklin",
    "Madison",
    "Jefferson",
    "Ridge",
    "Valley",
    "Center",
    "Mill",
    "Union",
    "Cherry",
    "Birch",
    "Harbor",
    "Mission",
    "Valencia",
    "Broadway",
    "Adams",
    "Grant",
    "Laurel",
]
_SUFFIXES = (
    ("St", "Street"),
    ("Ave", "Avenue"),
    ("Rd", "Road"),
    ("Blvd", "Boulevard"),
    ("Ln", "Lane"),
    ("Dr", "Drive"),
    ("Ct", "Court"),
    ("Way", "Way"),
)
#: Habitual address style shares (see :func:`address_variant`); jigging draws styles uniformly.
_ADDR_STYLE_P = np.asarray([0.45, 0.12, 0.12, 0.06, 0.10, 0.15])
#: (city, region, zip prefix, area code)
_CITIES = (
    ("San Francisco", "CA", "941", "415"),
    ("Oakland", "CA", "946", "510"),
    ("Los Angeles", "CA", "900", "213"),
    ("San Diego", "CA", "921", "619"),
    ("Seattle", "WA", "981", "206"),
    ("Portland", "OR", "972", "503"),
    ("Denver", "CO", "802", "303"),
    ("Austin", "TX", "787", "512"),
    ("Houston", "TX", "770", "713"),
    ("Dallas", "TX", "752", "214"),
    ("Chicago", "IL", "606", "312"),
    ("Minneapolis", "MN", "554", "612"),
    ("Atlanta", "GA", "303", "404"),
    ("Miami", "FL", "331", "305"),
    ("Orlando", "FL", "328", "407"),
    ("New York", "NY", "100", "212"),
    ("Brooklyn", "NY", "112", "718"),
    ("Boston", "MA", "021", "617"),
    ("Philadelphia", "PA", "191", "215"),
    ("Phoenix", "AZ", "850", "602"),
)
_PROVIDERS = (
    "gmail.com",
    "yahoo.com",
    "outlook.com",
    "hotmail.com",
    "icloud.com",
    "aol.com",
    "proton.me",
    "comcast.net",
    "acme-corp.com",
    "globex.io",
    "privaterelay.appleid.com",
)
_PROVIDER_P = np.asarray([0.44, 0.12, 0.10, 0.07, 0.10, 0.03, 0.02, 0.04, 0.03, 0.03, 0.02])
_GMAIL, _RELAY = 0, 10
#: Words people put after a "+" (and the digits some add): one generator for every shopper.
_TAG_WORDS = ("shop", "news", "deals", "promo", "orders", "store", "save", "buy", "spam", "mail", "web", "x")
_PHONE_STYLE_P = np.asarray([0.3, 0.2, 0.25, 0.15, 0.1])
_BINS = (
    "414720",
    "426684",
    "441103",
    "453978",
    "479851",
    "517805",
    "524364",
    "542418",
    "550800",
    "371449",
    "378282",
    "601100",
)
#: Virtual / prepaid card BINs (privacy cards, gift-card Visas): honest privacy users have them too.
_VIRTUAL_BINS = ("485246", "440066", "531260", "411600", "523236")
_UA_DESKTOP = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/126.0.0.0 Safari/537.36",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) "
    "Version/17.5 Safari/605.1.15",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:127.0) Gecko/20100101 Firefox/127.0",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/126.0.0.0 Safari/537.36 Edg/126.0.0.0",
)
_UA_MOBILE = (
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) "
    "Version/17.5 Mobile/15E148 Safari/604.1",
    "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/126.0.0.0 Mobile Safari/537.36",
    "Mozilla/5.0 (Linux; Android 13; SM-S911B) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/125.0.0.0 Mobile Safari/537.36",
)
_UA_BOT_NAIVE = (
    "python-requests/2.32.3",
    "Go-http-client/1.1",
    "curl/8.7.1",
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "HeadlessChrome/126.0.0.0 Safari/537.36",
)
#: The drift bot farm's emulator fleet: an Android WebView profile nobody else uses.
UA_DRIFT_FARM = (
    "Mozilla/5.0 (Linux; Android 10; K) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Version/4.0 Chrome/120.0.6099.230 Mobile Safari/537.36 wv"
)
_MALFORMED_DEVICES = ("undefined", "null", "0", "device-id", "ffffffff", "N/A", "{{device_id}}")
_BOT_CODE_STEMS = ("WELCOME", "SAVE", "SUMMER", "VIP", "FREE", "TAKE", "EXTRA", "FIRST", "WHOLESALE")
#: One referral-code check-letter alphabet for every referrer (v1 gave abusers their own letters).
_REF_ALPHABET = "ABCDEFGHJKMNPQRSTUVWXYZ"
#: Influencer / partner names: their codes look like every other campaign code (NAME + discount).
_PARTNER_NAMES = ("JESS", "MAYA", "TONY", "KAYLA", "DREW", "NINA", "OMAR", "LENA", "RAVI", "ZOEY", "MILO")

# ISP-like IPv4 /8s for home broadband and carriers' mobile (CGNAT) egress; /16s inside cloud
# ranges are dropped once at first use so residential traffic never looks like a datacenter.
_RESIDENTIAL_FIRST_OCTETS = (24, 67, 68, 71, 73, 76, 98, 99, 108)
_MOBILE_SLASH16 = tuple(f"172.{b}.0.0/16" for b in range(56, 64)) + tuple(
    f"174.{b}.0.0/16" for b in range(192, 200)
)
_TOR_CANDIDATES = (
    "185.220.100.0/24",
    "185.220.101.0/24",
    "109.70.100.0/24",
    "199.249.230.0/24",
    "204.8.96.0/24",
    "192.42.116.0/24",
)
_PROXY_CANDIDATES = (
    "37.19.192.0/24",
    "45.83.220.0/24",
    "89.187.170.0/24",
    "146.70.116.0/24",
    "193.36.118.0/24",
    "185.159.157.0/24",
    "138.199.52.0/24",
    "149.102.224.0/24",
)


# --------------------------------------------------------------------------------------------------
# IP space
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _IpSpace:
    """Deterministic IPv4 pools: clean residential/mobile /16s, cloud ranges, tor and proxy /24s."""

    residential: npt.NDArray[np.int64]  # /16 network bases
    mobile: npt.NDArray[np.int64]
    cloud_start: npt.NDArray[np.int64]
    cloud_size: npt.NDArray[np.int64]
    cloud_provider: tuple[str, ...]
    tor: npt.NDArray[np.int64]  # /24 bases
    proxy: npt.NDArray[np.int64]
    data_version: str


def _cidr_bounds(cidr: str) -> tuple[int, int]:
    # Plain string parsing: ipaddress objects are ~10x slower over the ~80k cloud ranges.
    addr, _, bits = cidr.partition("/")
    a, b, c, d = (int(x) for x in addr.split("."))
    size = 1 << (32 - int(bits or 32))
    return ((a << 24) | (b << 16) | (c << 8) | d) & ~(size - 1), size


@lru_cache(maxsize=1)
def _ip_space() -> _IpSpace:
    """The IPv4 pools every history draws from (cached: the cloud ranges are decoded once)."""
    version, ranges = cloud_ranges()
    starts, ends, sizes, providers = [], [], [], []
    seen: set[str] = set()
    for cidr, provider in ranges:
        if ":" in cidr or cidr in seen:
            continue
        seen.add(cidr)
        lo, size = _cidr_bounds(cidr)
        starts.append(lo)
        ends.append(lo + size - 1)
        sizes.append(size)
        providers.append(provider)
    order = np.argsort(np.asarray(starts, dtype=np.int64), kind="stable")
    s = np.asarray(starts, dtype=np.int64)[order]
    e = np.asarray(ends, dtype=np.int64)[order]
    running_end = np.maximum.accumulate(e)

    def clean(cidrs: list[str]) -> npt.NDArray[np.int64]:
        keep = []
        for cidr in cidrs:
            lo, size = _cidr_bounds(cidr)
            hi = lo + size - 1
            # Overlap exists iff some range starting at or before hi ends at or after lo.
            i = int(np.searchsorted(s, hi, side="right")) - 1
            if i < 0 or running_end[i] < lo:
                keep.append(lo)
        return np.asarray(keep, dtype=np.int64)

    residential = clean([f"{a}.{b}.0.0/16" for a in _RESIDENTIAL_FIRST_OCTETS for b in range(256)])
    mobile = clean(list(_MOBILE_SLASH16))
    tor = clean(list(_TOR_CANDIDATES))
    proxy = clean(list(_PROXY_CANDIDATES))
    if min(len(residential), len(mobile), len(tor), len(proxy)) == 0:
        raise RuntimeError("simulated IP pools overlap every cloud range; update the candidate prefixes")
    return _IpSpace(
        residential=residential,
        mobile=mobile,
        cloud_start=np.asarray(starts, dtype=np.int64),
        cloud_size=np.asarray(sizes, dtype=np.int64),
        cloud_provider=tuple(providers),
        tor=tor,
        proxy=proxy,
        data_version=version,
    )


def _ip_text(values: npt.NDArray[np.int64]) -> npt.NDArray[np.object_]:
    v = np.asarray(values, dtype=np.int64)
    a, b, c, d = (v >> 24) & 255, (v >> 16) & 255, (v >> 8) & 255, v & 255
    out = np.empty(len(v), dtype=object)
    out[:] = [
        f"{w}.{x}.{y}.{z}" if w >= 0 else None
        for w, x, y, z in zip(
            np.where(v < 0, -1, a).tolist(), b.tolist(), c.tolist(), d.tolist(), strict=True
        )
    ]
    return out


def _residential_ips(rng: np.random.Generator, n: int, space: _IpSpace) -> npt.NDArray[np.int64]:
    base = space.residential[rng.integers(0, len(space.residential), n)]
    return base + rng.integers(256, 65_280, n)


def _datacenter_ips(rng: np.random.Generator, n: int, space: _IpSpace) -> npt.NDArray[np.int64]:
    idx = rng.integers(0, len(space.cloud_start), n)
    size = space.cloud_size[idx]
    return space.cloud_start[idx] + (rng.random(n) * np.maximum(size - 2, 1)).astype(np.int64) + (size > 2)


# --------------------------------------------------------------------------------------------------
# Identity text: the shared formats
# --------------------------------------------------------------------------------------------------


def format_phone(digits: str, style: int) -> str:
    """Render a ten-digit US number in one of the formats shoppers type (style 0-4)."""
    a, b, c = digits[:3], digits[3:6], digits[6:]
    if style == 0:
        return f"+1 {a}-{b}-{c}"
    if style == 1:
        return f"({a}) {b} {c}"
    if style == 2:
        return digits
    if style == 3:
        return f"{a}.{b}.{c}"
    return f"+1{digits}"


def _unit_text(unit: str | None) -> str | None:
    return f"Apt {unit}" if unit else None


def _split_unit(unit: str) -> tuple[str, str]:
    """'4B' -> ('4', 'B'); '12' -> ('12', ''); 'C' -> ('', 'C')."""
    if len(unit) > 1 and unit[-1].isalpha() and unit[:-1].isdigit():
        return unit[:-1], unit[-1]
    return (unit, "") if unit.isdigit() else ("", unit)


def address_variant(
    no: int, street: str, suffix: int, unit: str | None, style: int
) -> tuple[str, str | None]:
    """One way of writing the same shipping address (line1, line2); style 0 is the canonical form.

    The variants are what one household produces across orders: "123 Main St Apt 4B",
    "123 main street #4b", "123 Main, Apt 4-B" all name one door. Honest shoppers write their address
    in one habitual style with occasional others; jigging abusers cycle through all of them.
    """
    short, long = _SUFFIXES[suffix]
    style %= 6
    if style == 0:
        return f"{no} {street} {short}", _unit_text(unit)
    if style == 1:
        return (f"{no} {street} {short} Apt {unit}" if unit else f"{no} {street} {short}."), None
    if style == 2:
        return (
            f"{no} {street.lower()} {long.lower()} #{unit.lower()}"
            if unit
            else f"{no} {street.lower()} {long.lower()}"
        ), None
    if style == 3:
        if not unit:
            return f"{no} {street}", None
        num, let = _split_unit(unit)
        return f"{no} {street}, Apt {num}-{let}" if num and let else f"{no} {street}, Apt {unit}", None
    if style == 4:
        return f"{no} {street.upper()} {short.upper()}", (f"UNIT {unit}" if unit else None)
    return f"{no} {street} {long}", (f"#{unit}" if unit else None)


def _typo(text: str, r: random.Random) -> str:
    """A realistic keyboard slip: a swapped pair of adjacent letters or a dropped letter."""
    letters = [i for i, ch in enumerate(text) if ch.isalpha()]
    if len(letters) < 3:
        return text
    i = letters[r.randrange(1, len(letters) - 1)]
    if r.random() < 0.5 and i + 1 < len(text) and text[i + 1].isalpha():
        return text[:i] + text[i + 1] + text[i] + text[i + 2 :]
    return text[:i] + text[i + 1 :]


def _tags(rng: np.random.Generator, n: int) -> list[str]:
    """Plus-tags: a word, sometimes with digits. One generator for honest and abusive aliases."""
    words = np.asarray(_TAG_WORDS, dtype=object)[rng.integers(0, len(_TAG_WORDS), n)]
    digits = rng.integers(1, 100, n)
    with_digits = rng.random(n) < 0.4
    return [
        f"{w}{d}" if h else str(w)
        for w, d, h in zip(words.tolist(), digits.tolist(), with_digits.tolist(), strict=True)
    ]


def _insert_dot(local: str, at: float) -> str:
    """Put a dot inside ``local`` (Gmail ignores dots) near relative position ``at``, never doubled.

    Returns ``local`` unchanged only when no spot is free (very short or dotted-through locals).
    """
    bare = local.split("+", 1)[0]
    spots = [i for i in range(1, len(bare)) if bare[i - 1] != "." and bare[i] != "."]
    if not spots:
        return local
    i = spots[min(len(spots) - 1, int(at * len(spots)))]
    return bare[:i] + "." + bare[i:] + local[len(bare) :]


def _alias_email(local: str, domain: str, trick: int, tag: str, at: float) -> str:
    """An alias of one mailbox that the mailbox folds back (dots, plus-tags, googlemail, case).

    The same function serves honest per-shop aliases and abusers' "new" addresses, so an alias's
    format says nothing about who typed it; only its reuse across accounts does.
    """
    gmail = domain in ("gmail.com", "googlemail.com")
    base = local.split("+", 1)[0]
    trick %= 4
    if gmail and trick == 1 and _insert_dot(base, at) != base:
        return f"{_insert_dot(base, at)}@{domain}"
    if gmail and trick == 2:
        other = "googlemail.com" if domain == "gmail.com" else "gmail.com"
        return f"{base}@{other}"
    if trick == 3:
        return f"{base.capitalize()}+{tag}@{domain.capitalize()}"
    return f"{base}+{tag}@{domain}"


def gmail_variant(local: str, r: random.Random, tag: int) -> str:
    """A gmail address that the mailbox folds into ``local@gmail.com`` but a naive join does not."""
    words = _TAG_WORDS[tag % len(_TAG_WORDS)]
    return _alias_email(local, "gmail.com", r.randrange(4), f"{words}{tag}", r.random())


def _uuids(rng: np.random.Generator, n: int) -> npt.NDArray[np.object_]:
    h = rng.bytes(16 * n).hex()
    out = np.empty(n, dtype=object)
    out[:] = [
        f"{h[i : i + 8]}-{h[i + 8 : i + 12]}-4{h[i + 13 : i + 16]}-a{h[i + 17 : i + 20]}-{h[i + 20 : i + 32]}"
        for i in range(0, 32 * n, 32)
    ]
    return out


def _py_uuid(r: random.Random) -> str:
    h = f"{r.getrandbits(128):032x}"
    return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-a{h[17:20]}-{h[20:]}"


def _obj(values: Any) -> npt.NDArray[np.object_]:
    items = list(values)
    out = np.empty(len(items), dtype=object)
    out[:] = items
    return out


def _local_ips(rng: np.random.Generator, n: int) -> npt.NDArray[np.object_]:
    kind = rng.random(n)
    x, y, z = rng.integers(0, 256, n), rng.integers(0, 256, n), rng.integers(2, 254, n)
    out = np.empty(n, dtype=object)
    out[:] = [
        f"192.168.{x_ % 4 if k < 0.45 else x_}.{z_}" if k < 0.8 else f"10.{x_}.{y_}.{z_}"
        for k, x_, y_, z_ in zip(kind.tolist(), x.tolist(), y.tolist(), z.tolist(), strict=True)
    ]
    return out


def _units(rng: np.random.Generator, n: int, share: float) -> npt.NDArray[np.object_]:
    """Unit designators ("12", "4B", "C") for a ``share`` of addresses, None for the rest."""
    has = rng.random(n) < share
    form = rng.random(n)
    num = rng.integers(1, 40, n)
    let = np.asarray(list("ABCDEF"), dtype=object)[rng.integers(0, 6, n)]
    return _obj(
        (str(u) if f < 0.45 else f"{u}{c}" if f < 0.85 else str(c)) if h else None
        for h, f, u, c in zip(has.tolist(), form.tolist(), num.tolist(), let.tolist(), strict=True)
    )


def _email_locals(
    rng: np.random.Generator, first: npt.NDArray[np.object_], last: npt.NDArray[np.object_], relay: Any
) -> list[str]:
    """Mailbox local parts in the formats people pick (first.last, flast97, name+year...)."""
    n = len(first)
    style = rng.choice(7, n, p=[0.22, 0.18, 0.14, 0.08, 0.08, 0.18, 0.12])
    num = rng.integers(0, 10_000, n)
    coin = rng.random(n) < 0.5
    year = rng.integers(1958, 2006, n)
    rand = rng.bytes(5 * n).hex()
    out = []
    for i, (f, la, s, nn, c, y, rl) in enumerate(
        zip(
            first.tolist(),
            last.tolist(),
            style.tolist(),
            num.tolist(),
            coin.tolist(),
            year.tolist(),
            np.asarray(relay).tolist(),
            strict=True,
        )
    ):
        if rl:  # Hide-My-Email style relay address
            out.append(rand[10 * i : 10 * i + 10].replace("0", "x"))
        elif s == 0:
            out.append(f"{f}.{la}{nn % 100}" if c else f"{f}.{la}")
        elif s == 1:
            out.append(f"{f}{la}{nn % 1000}")
        elif s == 2:
            out.append(f"{f[0]}{la}{nn % 97}")
        elif s == 3:
            out.append(f"{la}.{f}")
        elif s == 4:
            out.append(f"{f}_{la}{y % 100:02d}" if c else f"{f}_{la}")
        elif s == 5:
            out.append(f"{f}{y % 100:02d}" if c else f"{f}{y}")
        else:
            out.append(f"{f}{la[0]}{nn % 100}")
    return out


@dataclass
class _People:
    """Vectorised persona attributes (one row per persona); strings are object arrays.

    Every identity any attempt presents (an honest shopper's, an abuser's own, the "fresh" email, card,
    phone or device an abuser rotates to) is a row of this table, built by :func:`_make_people`.
    """

    email_local: npt.NDArray[np.object_]
    email_domain: npt.NDArray[np.object_]
    phone: npt.NDArray[np.object_]  # ten digits
    phone_style: npt.NDArray[np.int64]
    phone_voip: npt.NDArray[np.bool_]
    street_no: npt.NDArray[np.int64]
    street: npt.NDArray[np.object_]
    suffix: npt.NDArray[np.int64]
    unit: npt.NDArray[np.object_]  # e.g. "4B", "12", "C" or None
    city: npt.NDArray[np.int64]
    zip5: npt.NDArray[np.object_]
    addr_style: npt.NDArray[np.int64]
    card: npt.NDArray[np.object_]  # (primary, secondary, virtual/prepaid) x (fingerprint, bin, last4)
    bin: npt.NDArray[np.object_]
    last4: npt.NDArray[np.object_]
    card2: npt.NDArray[np.object_]
    bin2: npt.NDArray[np.object_]
    last4_2: npt.NDArray[np.object_]
    vcard: npt.NDArray[np.object_]
    vbin: npt.NDArray[np.object_]
    vlast4: npt.NDArray[np.object_]
    device: npt.NDArray[np.object_]
    device2: npt.NDArray[np.object_]
    local_ip: npt.NDArray[np.object_]
    local_ip2: npt.NDArray[np.object_]
    home_ip: npt.NDArray[np.int64]
    ua: npt.NDArray[np.object_]
    ua2: npt.NDArray[np.object_]


def _last4s(rng: np.random.Generator, n: int) -> npt.NDArray[np.object_]:
    return _obj(f"{v:04d}" for v in rng.integers(0, 10_000, n).tolist())


def _fingerprints(rng: np.random.Generator, n: int) -> npt.NDArray[np.object_]:
    h = rng.bytes(8 * n).hex()
    return _obj(h[i : i + 16] for i in range(0, 16 * n, 16))


def _make_people(rng: np.random.Generator, n: int, space: _IpSpace) -> _People:
    """``n`` personas: the one generator of every identity value in the history."""
    first = np.asarray(_FIRST, dtype=object)[rng.integers(0, len(_FIRST), n)]
    last = np.asarray(_LAST, dtype=object)[rng.integers(0, len(_LAST), n)]
    provider = rng.choice(len(_PROVIDERS), n, p=_PROVIDER_P / _PROVIDER_P.sum())
    local = _email_locals(rng, first, last, provider == _RELAY)
    domain = np.asarray(_PROVIDERS, dtype=object)[provider]
    # Habits real mailboxes show: extra dots and googlemail.com among Gmail users, everyday plus-tags.
    gmail = provider == _GMAIL
    dots = np.flatnonzero(gmail & (rng.random(n) < EMAIL_GMAIL_DOTS_RATE))
    at = rng.random(n)
    for i in dots.tolist():
        local[i] = _insert_dot(local[i], float(at[i]))
    domain[gmail & (rng.random(n) < EMAIL_GOOGLEMAIL_RATE)] = "googlemail.com"
    plus = np.flatnonzero((provider != _RELAY) & (rng.random(n) < EMAIL_PLUS_TAG_RATE))
    for i, tag in zip(plus.tolist(), _tags(rng, len(plus)), strict=True):
        local[i] = f"{local[i]}+{tag}"
    city = rng.integers(0, len(_CITIES), n)
    # A fifth keep a number from another city (moved, or a number bought elsewhere).
    phone_city = np.where(rng.random(n) < 0.8, city, rng.integers(0, len(_CITIES), n))
    area = np.asarray([c[3] for c in _CITIES], dtype=object)[phone_city]
    subscriber = rng.integers(2_000_000, 9_999_999, n)
    phone = _obj(f"{a}{s}" for a, s in zip(area.tolist(), subscriber.tolist(), strict=True))
    zprefix = np.asarray([c[2] for c in _CITIES], dtype=object)[city]
    zsuffix = rng.integers(0, 100, n)
    zip5 = _obj(f"{zp}{zs:02d}" for zp, zs in zip(zprefix.tolist(), zsuffix.tolist(), strict=True))
    mobile_first = rng.random(n) < 0.5
    ua_d = np.asarray(_UA_DESKTOP, dtype=object)[rng.integers(0, len(_UA_DESKTOP), n)]
    ua_m = np.asarray(_UA_MOBILE, dtype=object)[rng.integers(0, len(_UA_MOBILE), n)]
    return _People(
        email_local=_obj(local),
        email_domain=domain,
        phone=phone,
        phone_style=rng.choice(5, n, p=_PHONE_STYLE_P),
        phone_voip=rng.random(n) < VOIP_PHONE_RATE,
        street_no=rng.integers(1, 9900, n),
        street=np.asarray(_STREETS, dtype=object)[rng.integers(0, len(_STREETS), n)],
        suffix=rng.integers(0, len(_SUFFIXES), n),
        unit=_units(rng, n, 0.35),
        city=city,
        zip5=zip5,
        addr_style=rng.choice(6, n, p=_ADDR_STYLE_P),
        card=_fingerprints(rng, n),
        bin=np.asarray(_BINS, dtype=object)[rng.integers(0, len(_BINS), n)],
        last4=_last4s(rng, n),
        card2=_fingerprints(rng, n),
        bin2=np.asarray(_BINS, dtype=object)[rng.integers(0, len(_BINS), n)],
        last4_2=_last4s(rng, n),
        vcard=_fingerprints(rng, n),
        vbin=np.asarray(_VIRTUAL_BINS, dtype=object)[rng.integers(0, len(_VIRTUAL_BINS), n)],
        vlast4=_last4s(rng, n),
        device=_uuids(rng, n),
        device2=_uuids(rng, n),
        local_ip=_local_ips(rng, n),
        local_ip2=_local_ips(rng, n),
        home_ip=_residential_ips(rng, n, space),
        ua=np.where(mobile_first, ua_m, ua_d),
        ua2=np.where(mobile_first, ua_d, ua_m),
    )


class _Bank:
    """The persona table, grown in chunks (building personas one at a time costs a vectorised pass each)."""

    def __init__(self, rng: np.random.Generator, space: _IpSpace, chunk: int = 4096) -> None:
        self.rng, self.space, self.chunk = rng, space, chunk
        self.parts: list[_People] = []
        self.size = 0
        self.used = 0
        self._home: npt.NDArray[np.int64] = np.zeros(0, np.int64)
        self._voip: npt.NDArray[np.bool_] = np.zeros(0, bool)
        self._table: _People | None = None

    def _grow(self, n: int) -> None:
        part = _make_people(self.rng, max(n, self.chunk), self.space)
        self.parts.append(part)
        self.size += len(part.phone)
        self._home = np.concatenate([self._home, part.home_ip])
        self._voip = np.concatenate([self._voip, part.phone_voip])
        self._table = None

    def take(self, n: int) -> npt.NDArray[np.int64]:
        """Indices of ``n`` personas never handed out before."""
        if self.used + n > self.size:
            self._grow(self.used + n - self.size)
        out = np.arange(self.used, self.used + n, dtype=np.int64)
        self.used += n
        return out

    def one(self) -> int:
        """One fresh persona index."""
        return int(self.take(1)[0])

    def voip_one(self) -> int:
        """A fresh persona whose phone is a VoIP/prepaid line (the number itself looks like any other)."""
        for _ in range(64):
            pid = self.one()
            if self._voip[pid]:
                return pid
        return pid

    def home_ip(self, pids: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
        """Home public IPs (as integers) of personas."""
        return self._home[pids]

    def table(self) -> _People:
        """All personas as one table (concatenated once per growth)."""
        if self._table is None:
            names = list(_People.__dataclass_fields__)
            self._table = _People(**{f: np.concatenate([getattr(p, f) for p in self.parts]) for f in names})
        return self._table


# --------------------------------------------------------------------------------------------------
# Shared timing and account-age distributions
# --------------------------------------------------------------------------------------------------


def _pref_hours(rng: np.random.Generator, n: int) -> npt.NDArray[np.float64]:
    """Each actor's habitual hour of day, drawn from the store's hourly traffic profile."""
    return rng.choice(24, n, p=_HOUR_P) + rng.random(n)


def _clock(
    rng: np.random.Generator, day: npt.NDArray[np.float64], pref_hour: npt.NDArray[np.float64]
) -> npt.NDArray[np.float64]:
    """Seconds since the start for attempts on ``day`` (its integer part), for everyone alike.

    Some attempts happen around the actor's habitual hour, the rest anywhere on the hourly profile.
    """
    n = len(day)
    drawn = rng.choice(24, n, p=_HOUR_P) + rng.random(n)
    habit = pref_hour + rng.normal(0.0, 1.0, n)
    hour = np.where(rng.random(n) < _HABIT_HOUR_SHARE, habit, drawn) % 24.0
    return np.floor(day) * _DAY + hour * 3600.0


def _fresh_age(rng: np.random.Generator, n: int) -> npt.NDArray[np.float64]:
    """Seconds between opening an account at checkout and applying the code (median ~3 minutes)."""
    return np.clip(rng.lognormal(math.log(180.0), 1.0, n), 20.0, 3 * 3600.0)


def _dormant_days(rng: np.random.Generator, n: int) -> npt.NDArray[np.float64]:
    """Days an account lay unused before its first order (newsletter sign-ups, bought/aged accounts)."""
    return np.exp(rng.uniform(0.0, math.log(400.0), n))


def _account_ids(numbers: npt.NDArray[np.int64]) -> npt.NDArray[np.object_]:
    # A bijection of [0, 1e8): ids carry no order of creation (v1 numbered abusers' accounts first).
    scrambled = (numbers * 48_271 + 7_654_321) % 100_000_000
    return _obj(f"acct_{v:08d}" for v in scrambled.tolist())


def _referral_code(account_id: str) -> str:
    """The store's referral-code format, the same for every referrer: REF-<8 digits><check letter>."""
    digits = account_id[-8:]
    check = sum((i + 3) * int(ch) for i, ch in enumerate(digits)) % len(_REF_ALPHABET)
    return f"REF-{digits}{_REF_ALPHABET[check]}"


# --------------------------------------------------------------------------------------------------
# Promotions
# --------------------------------------------------------------------------------------------------


@dataclass
class _Promos:
    """The promotion catalog being built, with the code choices both sides make by day."""

    days: int
    rows: list[dict[str, Any]] = field(default_factory=list)
    by_code: dict[str, dict[str, Any]] = field(default_factory=dict)
    sitewide: list[tuple[float, float, str]] = field(default_factory=list)  # (start_day, end_day, code)
    leaks: list[tuple[str, float]] = field(default_factory=list)  # (code, leak day)
    expired: list[tuple[float, str]] = field(default_factory=list)  # (end day, code), sorted
    windows: dict[str, tuple[int, int]] = field(default_factory=dict)

    def add(
        self,
        code: str,
        promo_type: str,
        campaign: str,
        discount: float,
        start_day: float,
        end_day: float | None,
        *,
        single_use: bool = False,
        limit: int | None = 1,
        segment: str | None = None,
        referrer: str | None = None,
    ) -> None:
        """Add one code; starts and ends are whole days, so a code chosen by day is valid all day."""
        row = {
            "promo_code": code,
            "promo_type": promo_type,
            "campaign": campaign,
            "discount_value": float(discount),
            "single_use": single_use,
            "per_customer_limit": limit,
            "eligible_segment": segment,
            "referrer_account_id": referrer,
            "starts_at": float(math.floor(start_day)) * _DAY,
            "ends_at": float(math.floor(end_day)) * _DAY if end_day is not None else None,
        }
        self.rows.append(row)
        self.by_code[code] = row

    # Code choices by day, scalar (abuse planning) and vectorised (legit planning): same thresholds.
    def welcome_code(self, r: random.Random, day: float) -> str:
        a, b = self.windows["welcome_overlap"]
        if day < a:
            return "WELCOME10"
        if day >= b:
            return "WELCOME15"
        return "WELCOME10" if r.random() < 0.5 else "WELCOME15"

    def welcome_codes(self, rng: np.random.Generator, day: npt.NDArray[np.float64]) -> npt.NDArray[Any]:
        a, b = self.windows["welcome_overlap"]
        coin = rng.random(len(day)) < 0.5
        return np.where(
            day < a, "WELCOME10", np.where(day >= b, "WELCOME15", np.where(coin, "WELCOME10", "WELCOME15"))
        )

    def intro_code(self, r: random.Random, day: float) -> str:
        a, b = self.windows["TRIAL50"]
        return "TRIAL50" if a <= day < b and r.random() < 0.5 else "TRIAL30"

    def intro_codes(self, rng: np.random.Generator, day: npt.NDArray[np.float64]) -> npt.NDArray[Any]:
        a, b = self.windows["TRIAL50"]
        return np.where((day >= a) & (day < b) & (rng.random(len(day)) < 0.5), "TRIAL50", "TRIAL30")

    def sample_code(self, r: random.Random, day: float) -> str:
        a, b = self.windows["SAMPLEBOX"]
        return "SAMPLEBOX" if a <= day < b and r.random() < 0.5 else "FREESAMPLE"

    def sample_codes(self, rng: np.random.Generator, day: npt.NDArray[np.float64]) -> npt.NDArray[Any]:
        a, b = self.windows["SAMPLEBOX"]
        return np.where((day >= a) & (day < b) & (rng.random(len(day)) < 0.5), "SAMPLEBOX", "FREESAMPLE")

    def sitewide_code(self, r: random.Random, day: float) -> str:
        if r.random() < 0.2:
            return "SAVE10"
        for s, e, code in self.sitewide:
            if s <= day < e - 2:
                return code
        return "SAVE10"

    def sitewide_codes(self, rng: np.random.Generator, day: npt.NDArray[np.float64]) -> npt.NDArray[Any]:
        starts = np.asarray([s for s, _, _ in self.sitewide])
        codes = np.asarray([c for _, _, c in self.sitewide], dtype=object)
        idx = np.clip(np.searchsorted(starts, np.floor(day), side="right") - 1, 0, len(codes) - 1)
        return np.where(rng.random(len(day)) < 0.8, codes[idx], "SAVE10")

    def partner_codes_at(self, day: float) -> list[str]:
        """Partner codes already running on ``day`` (their audience uses them before and after a leak)."""
        return [c for c, _ in self.leaks if self.by_code[c]["starts_at"] <= math.floor(day) * _DAY]

    def expired_code(self, r: random.Random, day: float) -> str:
        """A code that ended before ``day``: what a shopper still has from an old email."""
        ended = [c for e, c in self.expired if e <= math.floor(day)]
        return r.choice(ended[-3:]) if ended else "SPRING15"


def _base_promotions(cfg: SimulationConfig) -> _Promos:
    d = cfg.days
    p = _Promos(days=d)
    w_overlap = (round(0.4 * d), round(0.65 * d))
    p.windows["welcome_overlap"] = w_overlap
    p.add("WELCOME10", "welcome", "welcome_2026", 10.0, -30, w_overlap[1])
    p.add("WELCOME15", "welcome", "welcome_summer", 15.0, w_overlap[0], None)
    p.add("TRIAL30", "intro_offer", "subscription_intro", 30.0, -60, None)
    p.windows["TRIAL50"] = (round(0.35 * d), round(0.6 * d))
    p.add("TRIAL50", "intro_offer", "subscription_push", 50.0, *p.windows["TRIAL50"])
    p.add("FREESAMPLE", "free_sample", "sample_box", 12.0, -10, None)
    p.windows["SAMPLEBOX"] = (round(0.5 * d), round(0.8 * d))
    p.add("SAMPLEBOX", "free_sample", "sample_box_launch", 12.0, *p.windows["SAMPLEBOX"])
    p.add("WHOLESALE20", "wholesale", "trade_program", 20.0, -90, None, limit=None, segment="wholesale")
    p.add("VIP25", "wholesale", "vip_club", 25.0, -90, None, limit=None, segment="vip")
    p.add("SAVE10", "sitewide", "evergreen", 10.0, -365, None, limit=None)
    # Campaigns that ended before the window: codes shoppers still paste from old emails.
    p.add("SPRING15", "sitewide", "spring_sale", 15.0, -70, -40, limit=None)
    p.add("MEMORIAL25", "sitewide", "memorial_day", 25.0, -40, -9, limit=None)
    p.expired += [(-40.0, "SPRING15"), (-9.0, "MEMORIAL25")]
    names = ("SUMMER", "FLASH", "WEEKEND", "BACK2SCHOOL", "FALL", "HOLIDAY", "SPRING", "MEGA")
    t, i = -7, 0
    while t < d:
        code = f"{names[i % len(names)]}{20 + 5 * (i % 3)}"
        if code in p.by_code:
            code = f"{code}X{i}"
        p.add(code, "sitewide", f"sitewide_{i:02d}", 20.0 + 5 * (i % 3), t, t + 16, limit=None)
        p.sitewide.append((float(t), float(t + 16), code))
        p.expired.append((float(t + 16), code))
        t += 14
        i += 1
    p.expired.append((float(w_overlap[1]), "WELCOME10"))
    p.expired.append((float(p.windows["TRIAL50"][1]), "TRIAL50"))
    p.expired.append((float(p.windows["SAMPLEBOX"][1]), "SAMPLEBOX"))
    p.expired.sort()
    # Partner / influencer codes for a small audience; one leaks to coupon sites every few days.
    leak_day, j = -6, 0
    while leak_day < d - 4:
        name = _PARTNER_NAMES[j % len(_PARTNER_NAMES)]
        discount = (15, 20, 25)[j % 3]
        code = f"{name}{discount}" if j < len(_PARTNER_NAMES) else f"{name}{discount}X{j}"
        kind = "welcome" if j % 2 == 0 else "sitewide"
        start = leak_day - 14 - 4 * (j % 3)
        p.add(code, kind, f"partner_{j:02d}", float(discount), start, None, limit=1)
        p.leaks.append((code, float(leak_day)))
        leak_day += _LEAK_EVERY_DAYS
        j += 1
    return p


# --------------------------------------------------------------------------------------------------
# Actors and the attempt plan
# --------------------------------------------------------------------------------------------------


class _Actors:
    """Ground-truth actors, columnar (hundreds of thousands of honest actors are added in blocks)."""

    COLUMNS = ("pattern", "is_abuser", "evasion", "trap", "household_id", "cohort")

    def __init__(self) -> None:
        self.cols: dict[str, list[Any]] = {c: [] for c in self.COLUMNS}
        self.pref: list[float] = []

    def __len__(self) -> int:
        return len(self.pref)

    def add_block(
        self,
        pattern: npt.NDArray[np.object_],
        trap: npt.NDArray[np.object_],
        household: list[Any],
        pref: npt.NDArray[np.float64],
        cohort: str,
    ) -> npt.NDArray[np.int64]:
        """Add honest actors; returns their indices."""
        start, n = len(self), len(pattern)
        self.cols["pattern"].extend(pattern.tolist())
        self.cols["is_abuser"].extend([False] * n)
        self.cols["evasion"].extend(["none"] * n)
        self.cols["trap"].extend(trap.tolist())
        self.cols["household_id"].extend(household)
        self.cols["cohort"].extend([cohort] * n)
        self.pref.extend(pref.tolist())
        return np.arange(start, start + n, dtype=np.int64)

    def add_one(
        self, pattern: str, evasion: str, pref: float, cohort: str, household: str | None = None
    ) -> int:
        """Add one abuser; returns its index."""
        for col, value in zip(self.COLUMNS, (pattern, True, evasion, "none", household, cohort), strict=True):
            self.cols[col].append(value)
        self.pref.append(pref)
        return len(self.pref) - 1

    def frame(self) -> pd.DataFrame:
        """The actors frame of :class:`SimulatedHistory`."""
        n = len(self)
        out = pd.DataFrame({"actor_id": _obj(f"u{i + 1:07d}" for i in range(n))})
        for col in self.COLUMNS:
            out[col] = _obj(self.cols[col])
        out["is_abuser"] = out["is_abuser"].astype(bool)
        return out


#: Columns of an attempt plan: when, who, which code and account, and which persona each identity
#: field shows (-1 = missing). ``style``: -1 habitual address style, 0-5 explicit, 6 jig (random style,
#: sometimes another unit of the same door). ``card_slot``: 0 primary, 1 secondary, 2 virtual/prepaid.
_PLAN = (
    "ts",
    "actor",
    "abuse",
    "code",
    "ptype",
    "account",
    "created",
    "segment",
    "guest",
    "email_pid",
    "alias",
    "phone_pid",
    "addr_pid",
    "style",
    "card_pid",
    "card_slot",
    "dev_pid",
    "dev_slot",
    "loc_pid",
    "loc_slot",
    "ip",
    "ua_pid",
    "ua_slot",
    "outcome",
    "slip",
)
_PLAN_DTYPES: dict[str, Any] = {
    "ts": float,
    "actor": np.int64,
    "abuse": bool,
    "created": float,
    "guest": bool,
    "email_pid": np.int64,
    "alias": np.int64,
    "phone_pid": np.int64,
    "addr_pid": np.int64,
    "style": np.int64,
    "card_pid": np.int64,
    "card_slot": np.int64,
    "dev_pid": np.int64,
    "dev_slot": np.int64,
    "loc_pid": np.int64,
    "loc_slot": np.int64,
    "ip": np.int64,
    "ua_pid": np.int64,
    "ua_slot": np.int64,
    "slip": bool,
}
Plan = dict[str, npt.NDArray[Any]]


def _plan_array(name: str, values: Any) -> npt.NDArray[Any]:
    dtype = _PLAN_DTYPES.get(name)
    if dtype is None:
        return _obj(values)
    return np.asarray(values, dtype=dtype)


def _plan_concat(plans: list[Plan]) -> Plan:
    return {k: np.concatenate([p[k] for p in plans]) for k in _PLAN}


def _plan_take(plan: Plan, idx: npt.NDArray[Any]) -> Plan:
    return {k: v[idx] for k, v in plan.items()}


@dataclass
class _Ident:
    """Which persona each identity field of one attempt shows (see ``_PLAN``)."""

    email_pid: int
    alias: int  # 0: the everyday address; n > 0: alias trick n % 4 of the same mailbox
    phone_pid: int
    addr_pid: int
    style: int
    card_pid: int
    card_slot: int
    dev_pid: int
    dev_slot: int
    loc_pid: int
    loc_slot: int
    ip: int
    ua_pid: int
    ua_slot: int


@dataclass
class _Abuser:
    """One abuse actor: own persona, evasion tier and which hard identities it rotates."""

    index: int
    pid: int
    tier: str
    rotate: frozenset[str]
    home_ip: int
    pattern: str
    keep: frozenset[str] = frozenset()


class _AbusePlan:
    """Abuse attempts planned one by one; times are resolved by the shared clock at the end."""

    FIELDS = ("day", "anchor", "offset", "fresh", *(k for k in _PLAN if k != "ts"))

    def __init__(self) -> None:
        self.cols: dict[str, list[Any]] = {k: [] for k in self.FIELDS}

    def __len__(self) -> int:
        return len(self.cols["day"])

    def add(self, values: dict[str, Any]) -> int:
        for k in self.FIELDS:
            self.cols[k].append(values[k])
        return len(self) - 1

    def set(self, i: int, key: str, value: Any) -> None:
        self.cols[key][i] = value


@dataclass
class _Ctx:
    cfg: SimulationConfig
    rng: np.random.Generator
    r: random.Random
    space: _IpSpace
    promos: _Promos
    bank: _Bank
    tor_ips: npt.NDArray[np.int64]  # sorted by when each exit came up (tor_up, seconds)
    proxy_ips: npt.NDArray[np.int64]
    cloud_ips: npt.NDArray[np.int64]
    cgnat_ips: npt.NDArray[np.int64]
    drop_pids: npt.NDArray[np.int64]
    disposable: tuple[str, ...]
    actors: _Actors = field(default_factory=_Actors)
    plan: _AbusePlan = field(default_factory=_AbusePlan)
    bot_rows: list[tuple[Any, ...]] = field(default_factory=list)
    next_account: int = 0
    legit_referrals: list[str] = field(default_factory=list)
    tor_up: npt.NDArray[np.float64] = field(default_factory=lambda: np.zeros(0))
    proxy_up: npt.NDArray[np.float64] = field(default_factory=lambda: np.zeros(0))

    def pool_ips(self, kind: str, ts: npt.NDArray[np.float64]) -> npt.NDArray[np.int64]:
        """Tor exits or VPN exits for attempts at ``ts``: only exits already up then."""
        pool, up = (self.tor_ips, self.tor_up) if kind == "tor" else (self.proxy_ips, self.proxy_up)
        available = np.maximum(np.searchsorted(up, ts, side="right"), 1)
        return pool[(self.rng.random(len(ts)) * available).astype(np.int64)]

    def accounts(self, n: int) -> npt.NDArray[np.object_]:
        out = _account_ids(np.arange(self.next_account, self.next_account + n, dtype=np.int64))
        self.next_account += n
        return out

    def account(self) -> str:
        return str(self.accounts(1)[0])

    def tier(self) -> str:
        mix = list(self.cfg.evasion_mix) + [0.0] * (4 - len(self.cfg.evasion_mix))
        x, acc = self.r.random(), 0.0
        for name, share in zip(EVASION_TIERS, mix, strict=True):
            acc += share
            if x < acc:
                return name
        return "naive"

    def ip_of_kind(self, kind: str, home: int) -> int:
        r = self.r
        if kind == "home":
            return home
        if kind == "mobile":
            return int(self.cgnat_ips[r.randrange(len(self.cgnat_ips))])
        if kind == "other":
            return int(_residential_ips(self.rng, 1, self.space)[0])
        if kind == "cloud":
            return int(self.cloud_ips[r.randrange(len(self.cloud_ips))])
        # Exits come up over time: which one is picked once the attempt's time is known.
        return _PICK_PROXY if kind == "proxy" else _PICK_TOR

    def abuse_ip(self, ab: _Abuser) -> int:
        """The public IP of one abuse attempt; the rotating tier stays on its home network."""
        if ab.tier == "rotating":
            if self.r.random() < 0.7:
                return ab.home_ip
            return (ab.home_ip & ~255) | self.r.randrange(2, 254)  # same /24, another host
        mix = _IP_MIX_TIER[ab.tier]
        kind = self.r.choices(_IP_KINDS, weights=mix)[0]
        return self.ip_of_kind(kind, ab.home_ip)


# --------------------------------------------------------------------------------------------------
# Abuse planning
# --------------------------------------------------------------------------------------------------


def _new_abuser(
    ctx: _Ctx,
    pattern: str,
    *,
    keep: tuple[str, ...] = (),
    tier: str | None = None,
    cohort: str = "base",
    household: bool = False,
) -> _Abuser:
    """A new abuse actor with its own persona; which hard identities it rotates depends on its tier.

    Naive rotates none (only email and account); careful one or two of device/card/phone; sophisticated
    two or three of device/card/phone/local network; rotating all of device/card/phone/address on every
    attempt and keeps only network residue (home IP or /24, local IP), user agent and rhythm.
    ``keep`` names what the pattern itself keeps (e.g. the card on file of an intro resetter).
    """
    r = ctx.r
    tier = tier or ctx.tier()
    pid = ctx.bank.one()
    rotate: set[str]
    if tier == "naive":
        rotate = set()
    elif tier == "careful":
        pool = [h for h in ("device", "card", "phone") if h not in keep]
        rotate = set(r.sample(pool, min(len(pool), 1 + int(r.random() < 0.4))))
    elif tier == "sophisticated":
        pool = [h for h in ("device", "card", "phone", "local") if h not in keep]
        rotate = set(r.sample(pool, min(len(pool), 2 + int(r.random() < 0.5))))
    else:
        rotate = {"device", "card", "phone", "address"}
    pref = float(_pref_hours(ctx.rng, 1)[0])
    index = ctx.actors.add_one(pattern, tier, pref, cohort, None)
    if household:
        ctx.actors.cols["household_id"][index] = f"h{index + 1:07d}"
    home = int(ctx.bank.home_ip(np.asarray([pid]))[0])
    return _Abuser(index, pid, tier, frozenset(rotate), home, pattern, frozenset(keep))


def _card_slot(r: random.Random) -> int:
    x = r.random()
    return 2 if x < VIRTUAL_CARD_RATE else 1 if x < VIRTUAL_CARD_RATE + 0.10 else 0


def _identity(ctx: _Ctx, ab: _Abuser, k: int, *, email: str | None = None) -> _Ident:
    """What attempt ``k`` of abuser ``ab`` presents: its own identity at k == 0, rotations after.

    ``email``: "alias" (an alias of the own mailbox), "fresh" (another mailbox from the shared
    generator) or None for the tier's habit (naive mostly aliases, careful mostly fresh mailboxes,
    sophisticated and rotating always fresh ones).
    """
    r, own = ctx.r, ab.pid
    # A second device/browser 30% of the time, like everyone; the rotating tier works from one machine
    # at home, whose LAN address and browser are exactly the residue it cannot shed.
    slot = 1 if ab.tier != "rotating" and "device" not in ab.keep and r.random() < 0.3 else 0
    card_slot = 0 if "card" in ab.keep else _card_slot(r)  # a card on file stays the same card
    ident = _Ident(own, 0, own, own, -1, own, card_slot, own, slot, own, slot, ctx.abuse_ip(ab), own, slot)
    if k == 0:
        return ident
    mode = email or (
        ("alias" if r.random() < 0.75 else "fresh")
        if ab.tier == "naive"
        else ("alias" if r.random() < 0.35 else "fresh")
        if ab.tier == "careful"
        else "fresh"
    )
    if mode == "alias":
        ident.alias = k  # successive attempts use successive tricks, so the aliases differ
    else:
        ident.email_pid = ctx.bank.one()
    hard = ab.tier in ("sophisticated", "rotating")
    if "phone" in ab.rotate:
        ident.phone_pid = ctx.bank.voip_one() if hard and r.random() < 0.5 else ctx.bank.one()
    if "card" in ab.rotate:
        ident.card_pid = ctx.bank.one()
        ident.card_slot = 2 if r.random() < (0.6 if hard else 0.3) else 0
    if "device" in ab.rotate:
        ident.dev_pid, ident.dev_slot = ctx.bank.one(), 0
    if "local" in ab.rotate:
        ident.loc_pid, ident.loc_slot = ctx.bank.one(), 0
    if "address" in ab.rotate:
        if r.random() < 0.4 and len(ctx.drop_pids):
            ident.addr_pid = int(ctx.drop_pids[r.randrange(len(ctx.drop_pids))])
        else:
            ident.style = 6  # jig the same door
    elif ab.tier == "sophisticated" or (ab.tier == "careful" and r.random() < 0.5):
        ident.style = 6
    return ident


def _emit(
    ctx: _Ctx,
    ab: _Abuser,
    day: float,
    ident: _Ident,
    *,
    abuse: bool,
    code: str,
    account: str | None,
    created: float = math.nan,
    fresh: bool = False,
    segment: str | None = "consumer",
    outcome: str | None = None,
    anchor: int = -1,
    offset: float = 0.0,
) -> int:
    """Plan one abuse-actor attempt; returns its plan index."""
    guest = account is None
    values = {
        "day": day,
        "anchor": anchor,
        "offset": offset,
        "fresh": fresh and not guest,
        "actor": ab.index,
        "abuse": abuse,
        "code": code,
        "ptype": None,
        "account": account,
        "created": math.nan if guest else created,
        "segment": None if guest else segment,
        "guest": guest,
        "outcome": outcome,
        "slip": False,
        **ident.__dict__,
    }
    return ctx.plan.add(values)


def _new_account(ctx: _Ctx, ab: _Abuser, day: float) -> tuple[str, float, bool]:
    """(account, created seconds, fresh) for a "new customer" account of an abuser.

    Fresh accounts are opened at checkout (their age is drawn later from the shared distribution);
    the rotating tier (and half of the sophisticated one's attempts) uses pre-aged or bought accounts
    opened months before and never used.
    """
    if ab.tier == "rotating" or (ab.tier == "sophisticated" and ctx.r.random() < 0.5):
        return ctx.account(), day * _DAY - float(_dormant_days(ctx.rng, 1)[0]) * _DAY, False
    return ctx.account(), math.nan, True


def _attempt(
    ctx: _Ctx,
    ab: _Abuser,
    day: float,
    ident: _Ident,
    *,
    abuse: bool,
    code: str,
    guest: bool = False,
    account: tuple[str, float, bool] | None = None,
) -> int:
    """Plan one attempt, plus (sometimes) a verification challenge and a retry minutes later.

    A challenged abuser retries with changed cheap fields: another email, another new account, often
    another public IP; an honest attempt by an abuser is challenged as often as anyone's.
    """
    r = ctx.r
    acct, created, fresh = (None, math.nan, False) if guest else (account or _new_account(ctx, ab, day))
    i = _emit(ctx, ab, day, ident, abuse=abuse, code=code, account=acct, created=created, fresh=fresh)
    rate = _CHALLENGE_RATE[ab.tier] if abuse else LEGIT_CHALLENGE_RATE
    if r.random() >= rate:
        return 1
    ctx.plan.set(i, "outcome", "abandoned")
    retry = replace(ident)
    if abuse:
        if r.random() < 0.5 or ab.tier != "naive":
            retry.email_pid, retry.alias = ctx.bank.one(), 0
        else:
            retry.alias = ident.alias + 1
        if ab.tier != "rotating" and r.random() < 0.6:
            retry.ip = ctx.ip_of_kind("mobile", ab.home_ip)
        if not guest:
            acct, created, fresh = _new_account(ctx, ab, day)
    elif ab.tier != "rotating" and r.random() < 0.5:
        retry.ip = ctx.ip_of_kind("mobile", ab.home_ip)
    _emit(
        ctx,
        ab,
        day,
        retry,
        abuse=abuse,
        code=code,
        account=acct,
        created=created,
        fresh=fresh,
        anchor=i,
        offset=r.uniform(120, 2400),
    )
    return 2


def _gap(r: random.Random, tier: str, mean_days: float) -> float:
    """Days until an abuser's next attempt; the rotating tier keeps a steady rhythm."""
    if tier == "rotating":
        return mean_days * r.uniform(0.85, 1.15)
    if tier == "sophisticated":
        return 1.0 + r.expovariate(1 / (mean_days * 1.5))
    return 0.5 + r.expovariate(1 / mean_days)


def _gen_welcome_cycling(ctx: _Ctx, budget: int) -> None:
    """Returning customers claim the first-order offer again under new emails (and new accounts)."""
    r, d, p = ctx.r, float(ctx.cfg.days), ctx.promos
    used = 0
    while used < budget:
        ab = _new_abuser(ctx, "welcome_cycling", keep=("address",))
        start = r.uniform(-40, d)
        k = 0
        if r.random() < 0.5:
            # An existing customer with ordinary orders on an old account: every welcome claim is abuse.
            acct = (ctx.account(), (math.floor(start) - r.uniform(60, 400)) * _DAY, False)
            for _ in range(1 + int(r.random() < 0.5)):
                day = r.uniform(start - 20, d)
                if 0 <= day < d:
                    _attempt(
                        ctx,
                        ab,
                        day,
                        _identity(ctx, ab, 0),
                        abuse=False,
                        code=p.sitewide_code(r, day),
                        account=acct,
                    )
            k = 1
        day = start
        for _ in range(2 + int(r.expovariate(1 / 2.5))):
            if day >= d:
                break
            if day >= 0:
                n = _attempt(
                    ctx,
                    ab,
                    day,
                    _identity(ctx, ab, k),
                    abuse=k > 0,
                    code=p.welcome_code(r, day),
                    guest=r.random() < 0.3,
                )
                used += n if k > 0 else 0
            k += 1
            day += _gap(r, ab.tier, 6.0)


def _gen_referral_self(ctx: _Ctx, budget: int) -> None:
    """A referrer redeems their own referral code through "friends" who share their hard identity."""
    r, d, p = ctx.r, float(ctx.cfg.days), ctx.promos
    used = 0
    while used < budget:
        # The referrer's own card and device are what its "friends" share (pattern-level keep).
        ab = _new_abuser(ctx, "referral_self", keep=("card", "device"))
        opened = r.uniform(-300, d - 8)
        referrer = ctx.account()
        code = _referral_code(referrer)
        issued = max(math.ceil(opened), -60)
        p.add(code, "referral", "refer_a_friend", 15.0, issued, None, limit=1, referrer=referrer)
        acct = (referrer, opened * _DAY, False)
        for _ in range(1 + int(r.random() < 0.5)):  # the referrer's own ordinary orders
            day = r.uniform(max(opened, 0.0), d)
            if 0 <= day < d:
                _attempt(
                    ctx,
                    ab,
                    day,
                    _identity(ctx, ab, 0),
                    abuse=False,
                    code=p.sitewide_code(r, day),
                    account=acct,
                )
        hard = ["device", "phone", "address", "local", "card"]
        if ab.tier == "naive":
            shared = set(hard)
        elif ab.tier == "careful":
            shared = {r.choice(["address", "card"]), r.choice(["device", "phone", "local"])}
        elif ab.tier == "sophisticated":
            shared = {r.choice(["address", "card", "device", "phone"])}
        else:
            shared = {"local"}  # network residue only (plus the home network's public IP)
        day = issued + r.uniform(0.5, 6)
        for k in range(1, 3 + int(r.expovariate(1 / 2.0))):
            if day >= d:
                break
            if day >= 0:
                friend = ctx.bank.one()
                own = _identity(ctx, ab, k)
                naive_alias = ab.tier == "naive" and r.random() < 0.5
                ident = _Ident(
                    email_pid=ab.pid if naive_alias else friend,
                    alias=k if naive_alias else 0,
                    phone_pid=ab.pid if "phone" in shared else friend,
                    addr_pid=ab.pid if "address" in shared else friend,
                    style=6 if "address" in shared and ab.tier != "naive" else -1,
                    card_pid=ab.pid if "card" in shared else friend,
                    card_slot=own.card_slot,
                    dev_pid=ab.pid if "device" in shared else friend,
                    dev_slot=own.dev_slot if "device" in shared else 0,
                    loc_pid=ab.pid if "local" in shared else friend,
                    loc_slot=own.loc_slot if "local" in shared else 0,
                    ip=ab.home_ip if ab.tier == "naive" else own.ip,
                    ua_pid=ab.pid if ("device" in shared or ab.tier == "rotating") else friend,
                    ua_slot=own.ua_slot if ("device" in shared or ab.tier == "rotating") else 0,
                )
                if ab.tier == "rotating":
                    ident.card_slot = 2 if r.random() < 0.6 else 0
                used += _attempt(
                    ctx,
                    ab,
                    day,
                    ident,
                    abuse=True,
                    code=code,
                    guest=ab.tier != "rotating" and r.random() < 0.25,
                )
            day += _gap(r, ab.tier, 4.0)


def _gen_code_leak(ctx: _Ctx, budget: int, leaks: list[tuple[str, float]], cohort: str = "base") -> None:
    """Leaked partner codes: strangers redeem them in a wave, prior customers again under new emails."""
    r, d = ctx.r, float(ctx.cfg.days)
    per_code = max(1, budget // max(1, len(leaks)))
    for code, leak in leaks:
        start_day = ctx.promos.by_code[code]["starts_at"] / _DAY
        got, tries = 0, 0
        while got < 0.12 * per_code and tries < 20 * per_code:
            tries += 1
            ab = _new_abuser(ctx, "code_leak", keep=("address",), cohort=cohort)
            day0 = r.uniform(max(start_day, leak - 20), leak)
            if 0 <= day0 < d:
                _attempt(
                    ctx,
                    ab,
                    day0,
                    _identity(ctx, ab, 0),
                    abuse=False,
                    code=code,
                    account=(ctx.account(), (math.floor(day0) - r.uniform(60, 400)) * _DAY, False),
                )
            day = leak + r.expovariate(1 / 6.0)
            for k in range(1, 2 + int(r.random() < 0.5)):
                if day >= d:
                    break
                if day >= 0:
                    got += _attempt(
                        ctx, ab, day, _identity(ctx, ab, k), abuse=True, code=code, guest=r.random() < 0.3
                    )
                day += _gap(r, ab.tier, 3.0)
        while got < per_code and tries < 40 * per_code:
            tries += 1
            day = leak + r.expovariate(1 / _LEAK_DECAY_DAYS)
            if not 0 <= day < d:
                continue
            ab = _new_abuser(ctx, "code_leak", keep=("address",), cohort=cohort)
            x = r.random()
            account = (
                None
                if x < 0.35
                else (ctx.account(), (math.floor(day) - r.uniform(30, 400)) * _DAY, False)
                if x < 0.65  # many who find a code on a coupon site already have an account here
                else _new_account(ctx, ab, day)
            )
            got += _attempt(
                ctx,
                ab,
                day,
                _identity(ctx, ab, 0),
                abuse=True,
                code=code,
                guest=account is None,
                account=account,
            )
            if r.random() < 0.2:  # once more under another email: the code is one per customer
                day += r.uniform(0.2, 4)
                if day < d:
                    got += _attempt(
                        ctx, ab, day, _identity(ctx, ab, 1), abuse=True, code=code, guest=r.random() < 0.4
                    )


def _gen_intro_reset(ctx: _Ctx, budget: int) -> None:
    """Subscribers cancel and sign up again for the intro price under a new email every month."""
    r, d, p = ctx.r, float(ctx.cfg.days), ctx.promos
    used = 0
    while used < budget:
        tier = ctx.tier()
        keep = ("card",) if tier in ("naive", "careful") else ()
        ab = _new_abuser(ctx, "intro_reset", keep=keep, tier=tier)
        day, k = r.uniform(-95, d), 0
        while day < d:
            if day >= 0:
                n = _attempt(ctx, ab, day, _identity(ctx, ab, k), abuse=k > 0, code=p.intro_code(r, day))
                used += n if k > 0 else 0
            k += 1
            day += 30.0 * r.uniform(0.98, 1.02) if tier == "rotating" else 28 + r.uniform(0, 6)


def _gen_sample_stacking(ctx: _Ctx, budget: int) -> None:
    """One household orders the one-per-household sample again and again under other names."""
    r, d, p = ctx.r, float(ctx.cfg.days), ctx.promos
    used = 0
    while used < budget:
        ab = _new_abuser(ctx, "sample_stacking", keep=("address",), household=True)
        ab = replace(ab, rotate=ab.rotate - {"address"})  # the door is the point: jig it, never leave it
        day = r.uniform(-15, d)
        styles = list(range(6))
        r.shuffle(styles)
        for k in range(3 + int(r.expovariate(1 / 2.0))):
            if day >= d:
                break
            if day >= 0:
                ident = _identity(ctx, ab, k, email="fresh")
                ident.style = styles[k % 6]
                if k > 0 and ab.tier == "naive" and r.random() < 0.7:
                    ident.phone_pid = ctx.bank.one()  # "family members" give their own numbers
                if k > 0 and ab.tier == "careful" and r.random() < 0.5:
                    ident.dev_pid, ident.dev_slot = ctx.bank.one(), 0
                n = _attempt(
                    ctx, ab, day, ident, abuse=k > 0, code=p.sample_code(r, day), guest=r.random() < 0.4
                )
                used += n if k > 0 else 0
            day += _gap(r, ab.tier, 2.5)


def _gen_wholesale_guest(ctx: _Ctx, budget: int) -> None:
    """Shoppers who are no trade customers use a trade/VIP code in guest checkout."""
    r, d = ctx.r, float(ctx.cfg.days)
    used = 0
    while used < budget:
        ab = _new_abuser(ctx, "wholesale_guest")
        day = r.uniform(0, d)
        for k in range(1 + int(r.expovariate(1 / 0.8))):
            if day >= d:
                break
            code = "WHOLESALE20" if r.random() < 0.6 else "VIP25"
            used += _attempt(ctx, ab, day, _identity(ctx, ab, k), abuse=True, code=code, guest=True)
            day += _gap(r, ab.tier, 5.0)


# --------------------------------------------------------------------------------------------------
# Bots
# --------------------------------------------------------------------------------------------------

_BOT_COLUMNS = (
    "ts",
    "actor",
    "code",
    "ptype",
    "email",
    "device",
    "local_ip",
    "ip",
    "ua",
    "account",
    "created",
    "cart",
    "outcome",
)


def _bot_code(ctx: _Ctx) -> tuple[str, str]:
    stem = ctx.r.choice(_BOT_CODE_STEMS)
    x = ctx.r.random()
    if x < 0.4:
        code = f"{stem}{ctx.r.randrange(5, 100)}"
    elif x < 0.7:
        code = "".join(ctx.r.choice("ABCDEFGHJKLMNPQRSTUVWXYZ23456789") for _ in range(8))
    else:
        code = f"REF-{ctx.r.randrange(10**8):08d}{ctx.r.choice(_REF_ALPHABET)}"
    ptype = (
        "referral" if code.startswith("REF-") else "welcome" if stem in ("WELCOME", "FIRST") else "sitewide"
    )
    if code in ctx.promos.by_code:  # a lucky guess is a hit, not an invalid code
        ptype = ctx.promos.by_code[code]["promo_type"]
    return code, ptype


def _bot_device(ctx: _Ctx) -> str | None:
    x = ctx.r.random()
    if x < 0.25:
        return None
    if x < 0.4:
        return _ZERO_DEVICE
    if x < 0.5:
        return ctx.r.choice(_MALFORMED_DEVICES)
    return _py_uuid(ctx.r)


def _gen_bot_spray(ctx: _Ctx, budget: int) -> None:
    """Code sprayers: classic ones (datacenter, Tor/proxies, residential proxies) and plausible ones.

    Naive, careful and sophisticated farms guess codes with empty or junk identity; the rotating tier
    fills plausible fields from fresh personas (through the shared renderer) and tries leaked codes.
    """
    r, d = ctx.r, float(ctx.cfg.days)
    leaked = {c for c, _ in ctx.promos.leaks}
    valid_codes = [c for c in ctx.promos.by_code if not c.startswith("REF-") and c not in leaked]
    used, farm = 0, 0
    while used < budget:
        # Few farms make most of the volume: cycle the tiers so that every kind of farm shows up.
        tier = ("naive", "careful", "rotating", "sophisticated", "naive", "careful")[farm % 6]
        farm += 1
        ab = _new_abuser(ctx, "bot_spray", tier=tier)
        cap = used + max(50, budget // 6)  # no single farm takes a small world's whole bot budget
        dc_pool = _datacenter_ips(ctx.rng, 6, ctx.space)
        farm_ua = r.choice(_UA_BOT_NAIVE) if tier in ("naive", "careful") else r.choice(_UA_DESKTOP)
        for _ in range(r.randrange(2, 6)):
            t = r.uniform(0, d) * _DAY
            size = r.randrange(15, 120) if tier in ("naive", "careful") else r.randrange(10, 40)
            mean_gap = {"naive": 4.0, "careful": 20.0, "sophisticated": 240.0, "rotating": 300.0}[tier]
            for _ in range(size):
                if used >= min(budget, cap) or t >= d * _DAY:
                    break
                if tier == "rotating":
                    used += _plausible_bot_attempt(ctx, ab, t)
                    t += r.expovariate(1 / mean_gap)
                    continue
                hit = r.random() < 0.08
                code, ptype = (r.choice(valid_codes), "") if hit else _bot_code(ctx)
                if tier == "naive":
                    ip = int(dc_pool[r.randrange(len(dc_pool))])
                elif tier == "careful":
                    ip = int(ctx.pool_ips("tor" if r.random() < 0.5 else "proxy", np.asarray([t]))[0])
                else:  # residential proxies: absent from every feed
                    ip = ctx.ip_of_kind("other", 0)
                x = r.random()
                local = f"{r.choice(_FIRST)}{r.randrange(10**5)}"
                email = (
                    None
                    if x < 0.2
                    else f"{local}@{r.choice(ctx.disposable)}"
                    if x < 0.8
                    else f"{local}@{r.choice(('gmail.com', 'outlook.com', 'yahoo.com'))}"
                )
                outcome = None if not hit else ("redeemed" if r.random() < 0.4 else "abandoned")
                ctx.bot_rows.append(
                    (
                        t,
                        ab.index,
                        code,
                        ptype or None,
                        email,
                        _bot_device(ctx),
                        None if r.random() < 0.7 else "10.0.2.15",
                        ip,
                        farm_ua,
                        None,
                        math.nan,
                        round(r.uniform(1, 60), 2),
                        outcome,
                    )
                )
                used += 1
                t += r.expovariate(1 / mean_gap)


def _plausible_bot_attempt(ctx: _Ctx, ab: _Abuser, t: float) -> int:
    """A bot with a plausible persona on a residential proxy, trying a leaked code (or a guess)."""
    r = ctx.r
    day = t / _DAY
    leaked = [c for c, leak in ctx.promos.leaks if leak <= math.floor(day)]
    if leaked and r.random() < 0.7:
        code, ptype = r.choice(leaked), None
    else:
        code, ptype = _bot_code(ctx)
    fake = ctx.bank.one()
    ident = _Ident(
        fake,
        0,
        fake,
        fake,
        -1,
        fake,
        2 if r.random() < 0.5 else 0,
        fake,
        0,
        fake,
        0,
        ctx.ip_of_kind("other", 0),
        fake,
        0,
    )
    guest = r.random() < 0.6
    i = _emit(
        ctx, ab, day, ident, abuse=True, code=code, account=None if guest else ctx.account(), fresh=not guest
    )
    ctx.plan.set(i, "ptype", ptype)
    # The bot's own clock: keep its exact time instead of the shoppers' hourly profile.
    ctx.plan.set(i, "offset", t - math.floor(day) * _DAY)
    ctx.plan.set(i, "anchor", -2)
    return 1


def _gen_drift_bot_farm(ctx: _Ctx, budget: int, start_day: float) -> None:
    """An emulator farm on mobile proxies farming welcome codes with fresh accounts."""
    r, d = ctx.r, float(ctx.cfg.days)
    devices = [_py_uuid(r) for _ in range(12)]
    domain = "mailbox-" + "".join(r.choice("abcdefghijkmnpqrstuvwxyz") for _ in range(5)) + ".net"
    used = 0
    while used < budget:
        ab = _new_abuser(ctx, "bot_spray", tier="sophisticated", cohort="drift")
        t = r.uniform(start_day, d) * _DAY
        for _ in range(r.randrange(20, 60)):
            if used >= budget or t >= d * _DAY:
                break
            valid = r.random() < 0.6
            code, ptype = (ctx.promos.welcome_code(r, t / _DAY), "welcome") if valid else _bot_code(ctx)
            email = f"{r.choice(_FIRST)}.{r.choice(_LAST)}{r.randrange(10**4)}@{domain}"
            ctx.bot_rows.append(
                (
                    t,
                    ab.index,
                    code,
                    ptype,
                    email,
                    r.choice(devices),
                    "10.0.2.16",
                    ctx.ip_of_kind("mobile", 0),
                    UA_DRIFT_FARM,
                    ctx.account(),
                    t - r.uniform(5, 120),
                    round(r.uniform(20, 45), 2),
                    None,
                )
            )
            used += 1
            t += r.expovariate(1 / 90.0)


def _resolve_abuse_plan(ctx: _Ctx) -> Plan:
    """Abuse plan rows -> a plan with absolute times (shared clock) and fresh-account creation times."""
    cols = ctx.plan.cols
    n = len(ctx.plan)
    day = np.asarray(cols["day"], dtype=float)
    anchor = np.asarray(cols["anchor"], dtype=np.int64)
    offset = np.asarray(cols["offset"], dtype=float)
    actor = np.asarray(cols["actor"], dtype=np.int64)
    pref = np.asarray(ctx.actors.pref, dtype=float)[actor] if n else np.zeros(0)
    ts = _clock(ctx.rng, day, pref)
    exact = anchor == -2
    ts[exact] = np.floor(day[exact]) * _DAY + offset[exact]
    for i in np.flatnonzero(anchor >= 0).tolist():  # retries follow their (earlier) anchor
        ts[i] = ts[anchor[i]] + offset[i]
    created = np.asarray(cols["created"], dtype=float)
    fresh = np.asarray(cols["fresh"], dtype=bool)
    created[fresh] = ts[fresh] - _fresh_age(ctx.rng, int(fresh.sum()))
    plan = {k: _plan_array(k, cols[k]) for k in _PLAN if k not in ("ts", "created")}
    plan["ts"] = ts
    plan["created"] = created
    return plan


# --------------------------------------------------------------------------------------------------
# Legit traffic (vectorised)
# --------------------------------------------------------------------------------------------------


def _legit_households(
    ctx: _Ctx, names: npt.NDArray[np.object_], pid: npt.NDArray[np.int64]
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.bool_], npt.NDArray[np.int64], npt.NDArray[np.bool_]]:
    """(head index, shares the head's device, door persona, ships to a forwarder) per honest actor.

    Households: 2-5 members share the first member's door and home network, some also a device.
    """
    rng, n = ctx.rng, len(names)
    head = np.arange(n)
    members = np.flatnonzero(names == "legit_household")
    shared_device = np.zeros(n, bool)
    if len(members):
        sizes = rng.integers(2, 6, len(members))
        group = np.repeat(np.arange(len(sizes)), sizes)[: len(members)]
        first_of = members[np.searchsorted(group, group, side="left")]
        head[members] = first_of
        per_group = rng.random(len(sizes)) < 0.3
        shared_device[members] = per_group[group] & (members != first_of)
    addr_pid = pid[head]
    forwarder = (names != "legit_household") & (rng.random(n) < FORWARDER_SHARE)
    if len(ctx.drop_pids):
        addr_pid[forwarder] = ctx.drop_pids[rng.integers(0, len(ctx.drop_pids), int(forwarder.sum()))]
    return head, shared_device, addr_pid, forwarder


def _legit_referrers(
    ctx: _Ctx, eligible: npt.NDArray[np.bool_], account: npt.NDArray[np.object_], created: npt.NDArray[Any]
) -> None:
    """Ordinary customers whose friends (honest new customers) use their referral codes."""
    if ctx.legit_referrals:
        return
    candidates = np.flatnonzero(eligible)
    n_ref = min(len(candidates), max(3, int(len(eligible) * 0.03)))
    for i in ctx.rng.choice(candidates, n_ref, replace=False).tolist() if n_ref else []:
        code = _referral_code(str(account[i]))
        if code in ctx.promos.by_code:
            continue
        issued = min(max(math.ceil(created[i] / _DAY), -200), 0)
        ctx.promos.add(code, "referral", "refer_a_friend", 15.0, issued, None, referrer=str(account[i]))
        ctx.legit_referrals.append(code)


def _partner_code(ctx: _Ctx, day: float) -> str | None:
    active = ctx.promos.partner_codes_at(day)
    return active[int(ctx.rng.integers(0, len(active)))] if active else None


def _legit_codes(
    ctx: _Ctx,
    a: npt.NDArray[np.int64],
    first_pos: npt.NDArray[np.int64],
    k_per: npt.NDArray[np.int64],
    first_new: npt.NDArray[np.bool_],
    dayf: npt.NDArray[np.float64],
    taken: npt.NDArray[np.bool_],
) -> npt.NDArray[np.object_]:
    """Codes of honest attempts: the running sale, a new customer's first offer, once-only offers.

    ``taken`` marks attempts whose code is already decided (trade codes); it is updated in place.
    """
    rng, p = ctx.rng, ctx.promos
    m, n = len(a), len(first_pos)
    codes = p.sitewide_codes(rng, dayf).astype(object)
    offer = rng.choice(len(_NEW_FIRST_OFFER_P), m, p=_NEW_FIRST_OFFER_P)
    welcome = first_new & (offer == 0)
    codes[welcome] = p.welcome_codes(rng, dayf[welcome])
    if ctx.legit_referrals:
        referral = first_new & (offer == 1)
        refs = np.asarray(ctx.legit_referrals, dtype=object)
        popularity = rng.zipf(1.6, int(referral.sum())) - 1  # a few referrers bring many friends
        pick = (popularity * 7919 + rng.integers(0, len(refs), int(referral.sum()))) % len(refs)
        codes[referral] = refs[pick]
    intro_first = first_new & (offer == 2)
    codes[intro_first] = p.intro_codes(rng, dayf[intro_first])
    sample_first = first_new & (offer == 3)
    codes[sample_first] = p.sample_codes(rng, dayf[sample_first])
    for j in np.flatnonzero(first_new & (offer == 5)).tolist():  # followers of a partner sign up
        codes[j] = _partner_code(ctx, float(dayf[j])) or codes[j]
    # Once-per-customer offers at one random attempt of an actor (never twice: that would be a reset).
    taken |= first_new
    had_intro = np.zeros(n, bool)
    had_intro[a[intro_first]] = True
    had_sample = np.zeros(n, bool)
    had_sample[a[sample_first]] = True
    for p_once, had, pick_kind in (
        (_P_INTRO_ONCE, had_intro, "intro"),
        (_P_SAMPLE_ONCE, had_sample, "sample"),
        (_P_PARTNER_ONCE, np.zeros(n, bool), "partner"),
    ):
        chosen = (~had) & (rng.random(n) < p_once)
        pos = first_pos + (rng.random(n) * k_per).astype(np.int64)
        pos = pos[chosen & ~taken[pos]]
        if pick_kind == "intro":
            codes[pos] = p.intro_codes(rng, dayf[pos])
        elif pick_kind == "sample":
            codes[pos] = p.sample_codes(rng, dayf[pos])
        else:
            for j in pos.tolist():
                codes[j] = _partner_code(ctx, float(dayf[j])) or codes[j]
        taken[pos] = True
    return codes


def _ips_of_kinds(
    ctx: _Ctx, kind_idx: npt.NDArray[np.int64], home: npt.NDArray[np.int64]
) -> npt.NDArray[np.int64]:
    """Public IPs for attempts of each IP kind (``_IP_KINDS`` order), ``home`` = home persona."""
    rng = ctx.rng
    pools = {1: ctx.cgnat_ips, 4: ctx.cloud_ips}
    ip = np.full(len(kind_idx), -1, dtype=np.int64)
    for j in range(len(_IP_KINDS)):
        sel = kind_idx == j
        cnt = int(sel.sum())
        if j == 0:
            ip[sel] = ctx.bank.home_ip(home[sel])
        elif j == 2:
            ip[sel] = _residential_ips(rng, cnt, ctx.space)
        elif j in pools:
            ip[sel] = pools[j][rng.integers(0, len(pools[j]), cnt)]
        else:  # picked among the exits up at the attempt's time (see _resolve_pool_ips)
            ip[sel] = _PICK_PROXY if j == 3 else _PICK_TOR
    return ip


def _legit(
    ctx: _Ctx,
    budget: int,
    *,
    start_day: float = 0.0,
    mix: dict[str, tuple[float, float]] | None = None,
    cohort: str = "base",
) -> Plan:
    """Plan honest attempts (about ``budget`` of them) for actor groups in ``mix``."""
    rng, d = ctx.rng, float(ctx.cfg.days)
    mix = mix or _LEGIT_MIX
    total_share = sum(s for s, _ in mix.values())
    # Retries (challenges, rejected codes) add a few percent on top of the planned attempts.
    retries = LEGIT_CHALLENGE_RATE + (CODE_TYPO_RATE + CODE_EXPIRED_RATE) * CODE_RETRY_SHARE
    budget = int(budget / (1 + retries))
    kinds = list(mix)
    counts = [max(1, round(budget * mix[k][0] / total_share / mix[k][1])) for k in kinds]
    kind_of = np.repeat(np.arange(len(kinds)), counts)
    n = len(kind_of)
    names = np.asarray(kinds, dtype=object)[kind_of]
    pid = ctx.bank.take(n)
    means = np.asarray([mix[k][1] for k in kinds])[kind_of]
    k_per = np.where(means <= 1.0, 1, 1 + rng.poisson(np.maximum(means - 1.0, 0.0)))
    head, shared_device, addr_pid, forwarder = _legit_households(ctx, names, pid)
    trap_map = {
        "legit_household": "household",
        "legit_cgnat": "cgnat",
        "legit_vpn": "vpn",
        "legit_mover": "mover",
        "legit_typo": "typo",
    }
    trap = _obj(trap_map.get(k, "none") for k in names.tolist())
    trap[forwarder] = "forwarder"
    pref = _pref_hours(rng, n)
    start_index = len(ctx.actors)
    household = [f"h{start_index + h + 1:07d}" for h in head.tolist()]
    actor = ctx.actors.add_block(names, trap, household, pref, cohort)

    # Accounts: most existed before the window; new customers join inside it.
    wholesale = names == "legit_wholesale"
    new_share = np.where(names == "legit_household", _NEW_SHARE_HOUSEHOLD, _NEW_SHARE_OTHERS)
    new = ((names == "legit_new") | (rng.random(n) < new_share)) & ~wholesale  # trade: opened by sales
    join = np.where(new, rng.uniform(start_day, d, n), start_day)
    guest_p = np.where(names == "legit_new", 0.3, GUEST_SHOPPER_SHARE)
    guest_shopper = (~wholesale) & (rng.random(n) < guest_p)
    presignup = new & ~guest_shopper & (rng.random(n) < _PRESIGNUP_SHARE)
    account = ctx.accounts(n)
    account[guest_shopper] = None
    trade = np.where(rng.random(n) < 0.7, "wholesale", "vip")
    segment = np.where(wholesale, trade, "consumer").astype(object)
    segment[guest_shopper] = None

    # Attempts: days uniform from joining (or the start) to the end; new customers' first on joining.
    a = np.repeat(np.arange(n), k_per)
    m = len(a)
    day = join[a] + rng.random(m) * (d - join[a])
    first_pos = np.r_[0, np.cumsum(k_per)[:-1]]
    day[first_pos[new]] = join[new]
    ts = np.maximum(_clock(rng, day, pref[a]), math.floor(start_day) * _DAY)
    order = np.lexsort((ts, a))
    a, ts = a[order], ts[order]
    is_first = np.zeros(m, bool)
    is_first[first_pos] = True
    dayf = ts / _DAY

    # Account creation: long before, at checkout (the shared fresh-age distribution), dormant, or guest.
    first_ts = ts[first_pos]
    created_actor = np.where(
        wholesale,
        rng.uniform(-400, -30, n) * _DAY,
        np.where(new & ~presignup, first_ts - _fresh_age(rng, n), rng.uniform(-400, 0, n) * _DAY),
    )
    created_actor[presignup] = first_ts[presignup] - _dormant_days(rng, int(presignup.sum())) * _DAY
    created_actor = np.minimum(created_actor, first_ts - 20.0)
    created_actor[guest_shopper] = np.nan
    _legit_referrers(ctx, (names == "legit_repeat") & ~guest_shopper, account, created_actor)

    wholesale_row = wholesale[a] & (rng.random(m) < 0.75)
    codes = _legit_codes(ctx, a, first_pos, k_per, is_first & new[a], dayf, wholesale_row.copy())
    codes[wholesale_row] = np.where(segment[a][wholesale_row] == "vip", "VIP25", "WHOLESALE20")

    # Guest rows: guest shoppers always; eligible trade buyers sometimes forget to log in.
    guest = guest_shopper[a] | (wholesale_row & (rng.random(m) < GUEST_WHOLESALE_RATE))
    acct_row, seg_row, created = account[a], segment[a], created_actor[a]
    acct_row[guest], seg_row[guest], created[guest] = None, None, np.nan
    # A guest shopper who subscribes opens an account for it at checkout.
    subscribe = guest & np.isin(codes, ["TRIAL30", "TRIAL50"])
    n_sub = int(subscribe.sum())
    guest[subscribe] = False
    acct_row[subscribe] = ctx.accounts(n_sub)
    seg_row[subscribe] = "consumer"
    created[subscribe] = ts[subscribe] - _fresh_age(rng, n_sub)

    # Network: home / carrier NAT / elsewhere / VPN / cloud egress / Tor, like everyone's.
    kind_idx = rng.choice(len(_IP_KINDS), m, p=np.asarray(_IP_MIX_ORDINARY) / sum(_IP_MIX_ORDINARY))
    cg = names[a] == "legit_cgnat"
    kind_idx[cg] = np.where(rng.random(int(cg.sum())) < 0.9, 1, 0)
    vpn_net = rng.choice([3, 4, 5], n, p=[0.55, 0.35, 0.10])  # commercial VPN, relay/corporate, Tor
    vp = names[a] == "legit_vpn"
    kind_idx[vp] = np.where(rng.random(int(vp.sum())) < 0.85, vpn_net[a][vp], 0)
    # Movers: a new door and home network from a per-actor move day on.
    movers = np.flatnonzero(names == "legit_mover")
    new_home = np.full(n, -1, dtype=np.int64)
    new_home[movers] = ctx.bank.take(len(movers))
    moved = (names[a] == "legit_mover") & (dayf >= rng.uniform(0.2 * d, 0.8 * d, n)[a])
    row_addr, row_home = addr_pid[a], pid[head][a]
    row_addr[moved] = new_home[a][moved]
    row_home[moved] = new_home[a][moved]

    # Devices, cards: a second device/browser 30% of the time; households share some.
    second = (rng.random(m) < 0.3).astype(np.int64)
    own = pid[a]
    dev_pid, dev_slot = own.copy(), second.copy()
    share = shared_device[a] & (second == 1)
    dev_pid[share] = pid[head][a][share]
    dev_slot[share] = 0
    c = rng.random(m)
    card_slot = np.where(c < VIRTUAL_CARD_RATE, 2, np.where(c < VIRTUAL_CARD_RATE + 0.10, 1, 0))
    card_pid = own.copy()
    family_card = (names[a] == "legit_household") & (rng.random(m) < 0.15)
    card_pid[family_card] = pid[head][a][family_card]

    plan: Plan = {
        "ts": ts,
        "actor": actor[a],
        "abuse": np.zeros(m, bool),
        "code": codes,
        "ptype": np.full(m, None, dtype=object),
        "account": acct_row,
        "created": created,
        "segment": seg_row,
        "guest": guest,
        "email_pid": own.copy(),
        "alias": np.where(rng.random(m) < EMAIL_ALIAS_RATE, rng.integers(1, 5, m), 0),
        "phone_pid": own.copy(),
        "addr_pid": row_addr,
        "style": np.full(m, -1, dtype=np.int64),
        "card_pid": card_pid,
        "card_slot": card_slot.astype(np.int64),
        "dev_pid": dev_pid,
        "dev_slot": dev_slot,
        "loc_pid": dev_pid.copy(),
        "loc_slot": dev_slot.copy(),
        "ip": _ips_of_kinds(ctx, kind_idx, row_home),
        "ua_pid": dev_pid.copy(),
        "ua_slot": dev_slot.copy(),
        "outcome": np.full(m, None, dtype=object),
        "slip": (names[a] == "legit_typo") & (rng.random(m) < 0.35),
    }
    # Challenged attempts, retried minutes later (sometimes from the phone's mobile network).
    challenged = np.flatnonzero(rng.random(m) < LEGIT_CHALLENGE_RATE)
    retry = _plan_take(plan, challenged)
    plan["outcome"][challenged] = "abandoned"
    retry["ts"] = retry["ts"] + rng.uniform(120, 2400, len(challenged))
    to_mobile = rng.random(len(challenged)) < 0.5
    retry["ip"][to_mobile] = ctx.cgnat_ips[rng.integers(0, len(ctx.cgnat_ips), int(to_mobile.sum()))]
    return _plan_concat([plan, retry])


# --------------------------------------------------------------------------------------------------
# Code noise and rendering (shared by honest and abuse attempts)
# --------------------------------------------------------------------------------------------------


def _code_noise(ctx: _Ctx, plan: Plan) -> Plan:
    """Mistyped and expired codes on every kind of human attempt, most retried with the right code."""
    rng, r = ctx.rng, ctx.r
    m = len(plan["ts"])
    u = rng.random(m)
    typo = u < CODE_TYPO_RATE
    expired = (u >= CODE_TYPO_RATE) & (u < CODE_TYPO_RATE + CODE_EXPIRED_RATE)
    noisy = np.flatnonzero(typo | expired)
    retry_idx = noisy[rng.random(len(noisy)) < CODE_RETRY_SHARE]
    retry = _plan_take(plan, retry_idx)
    retry["ts"] = retry["ts"] + rng.uniform(20, 600, len(retry_idx))
    codes, ptypes = plan["code"], plan["ptype"]
    for i in noisy.tolist():
        intended = str(codes[i])
        promo = ctx.promos.by_code.get(intended)
        if typo[i]:
            bad = _typo(intended, r)
            for _ in range(5):
                if bad not in ctx.promos.by_code and bad != intended:
                    break
                bad = _typo(intended + r.choice("0123456789"), r)
            codes[i] = bad
            ptypes[i] = promo["promo_type"] if promo is not None else (ptypes[i] or "sitewide")
        else:
            codes[i] = ctx.promos.expired_code(r, float(plan["ts"][i]) / _DAY)
    return _plan_concat([plan, retry])


def _promo_lookup(
    ctx: _Ctx, codes: npt.NDArray[np.object_], ts: npt.NDArray[np.float64], hint: npt.NDArray[np.object_]
) -> tuple[npt.NDArray[Any], ...]:
    """(promo_type, valid, discount, referrer) per attempt from the catalog at the attempt's time."""
    idx, uniques = pd.factorize(pd.Series(codes, dtype=object))
    cat = ctx.promos.by_code
    known = np.asarray([u in cat for u in uniques], dtype=bool)
    u_type = _obj(cat[u]["promo_type"] if u in cat else None for u in uniques)
    u_disc = np.asarray([cat[u]["discount_value"] if u in cat else 0.0 for u in uniques], dtype=float)
    u_start = np.asarray([cat[u]["starts_at"] if u in cat else np.inf for u in uniques], dtype=float)
    u_end = np.asarray(
        [cat[u]["ends_at"] if u in cat and cat[u]["ends_at"] is not None else np.inf for u in uniques],
        dtype=float,
    )
    u_ref = _obj(cat[u]["referrer_account_id"] if u in cat else None for u in uniques)
    in_cat = known[idx]
    valid = in_cat & (ts >= u_start[idx]) & (ts < u_end[idx])
    ptype = np.where(in_cat, u_type[idx], np.where(pd.isna(hint), "sitewide", hint)).astype(object)
    discount = np.where(valid, u_disc[idx], 0.0)
    referrer = u_ref[idx].copy()
    referrer[~in_cat] = None
    return ptype, valid, discount, referrer


def _cart_totals(rng: np.random.Generator, ptype: npt.NDArray[np.object_]) -> npt.NDArray[np.float64]:
    """Cart totals by promo type: one distribution per type for every shopper."""
    m = len(ptype)
    cart = rng.lognormal(4.1, 0.6, m)
    cart = np.where(ptype == "wholesale", rng.lognormal(6.0, 0.5, m), cart)
    cart = np.where(ptype == "intro_offer", rng.uniform(19, 39, m), cart)
    cart = np.where(ptype == "free_sample", rng.uniform(0, 8, m), cart)
    return np.round(cart, 2)


def _render(ctx: _Ctx, plan: Plan, rng: np.random.Generator) -> pd.DataFrame:
    """Turn planned attempts into raw event text: the one place formats and noise are decided."""
    r = random.Random(int(rng.integers(0, 2**31)))
    people = ctx.bank.table()
    m = len(plan["ts"])
    ts = plan["ts"]

    # Email: the persona's everyday mailbox, an alias of it, and case/space noise.
    epid = plan["email_pid"]
    has_email = epid >= 0
    local = people.email_local[np.maximum(epid, 0)].copy()
    domain = people.email_domain[np.maximum(epid, 0)].copy()
    local[~has_email] = None
    domain[~has_email] = None
    email = _obj(
        f"{lo}@{do}" if lo is not None else None
        for lo, do in zip(local.tolist(), domain.tolist(), strict=True)
    )
    alias_rows = np.flatnonzero((plan["alias"] > 0) & has_email)
    tricks = plan["alias"][alias_rows] % 4
    tags = _tags(rng, len(alias_rows))
    at = rng.random(len(alias_rows))
    for i, tr, tg, pos in zip(alias_rows.tolist(), tricks.tolist(), tags, at.tolist(), strict=True):
        email[i] = _alias_email(str(local[i]), str(domain[i]), tr, tg, pos)
    noise = np.flatnonzero(has_email & (rng.random(m) < EMAIL_CASE_NOISE_RATE))
    kinds = rng.integers(0, 3, len(noise))
    for i, k in zip(noise.tolist(), kinds.tolist(), strict=True):
        e = str(email[i])
        email[i] = f" {e} " if k == 0 else e.upper() if k == 1 else e.capitalize()

    # Phone: the persona's number in its habitual format (sometimes another), sometimes left out.
    ppid = plan["phone_pid"]
    has_phone = (ppid >= 0) & (rng.random(m) >= PHONE_MISSING_RATE)
    pstyle = np.where(
        rng.random(m) < 0.9, people.phone_style[np.maximum(ppid, 0)], rng.choice(5, m, p=_PHONE_STYLE_P)
    )
    digits = people.phone[np.maximum(ppid, 0)]
    phone = _obj(
        format_phone(dg, st) if h else None
        for dg, st, h in zip(digits.tolist(), pstyle.tolist(), has_phone.tolist(), strict=True)
    )

    # Shipping address: habitual style, restyled sometimes, explicit styles and jigs as planned.
    apid = plan["addr_pid"]
    req = plan["style"]
    rand_style = rng.choice(6, m, p=_ADDR_STYLE_P)
    habitual = people.addr_style[apid]
    style = np.where(
        req >= 0,
        np.where(req == 6, rng.integers(0, 6, m), req),
        np.where(rng.random(m) < ADDRESS_RESTYLE_RATE, rand_style, habitual),
    )
    unit = people.unit[apid].copy()
    jig_unit = (req == 6) & (rng.random(m) < 0.5)
    unit[jig_unit] = _units(rng, int(jig_unit.sum()), 1.0)
    lines = [
        address_variant(int(no), st, int(sf), un, int(sy))
        for no, st, sf, un, sy in zip(
            people.street_no[apid].tolist(),
            people.street[apid].tolist(),
            people.suffix[apid].tolist(),
            unit.tolist(),
            style.tolist(),
            strict=True,
        )
    ]
    line1 = _obj(line for line, _ in lines)
    line2 = _obj(l2 for _, l2 in lines)
    line2[rng.random(m) < LINE2_MISSING_RATE] = None
    city_idx = people.city[apid]
    city = np.asarray([c[0] for c in _CITIES], dtype=object)[city_idx]
    region = np.asarray([c[1] for c in _CITIES], dtype=object)[city_idx]
    zip5 = people.zip5[apid]

    # Slips on some honest orders: a letter dropped or swapped in the email or the street.
    for i in np.flatnonzero(plan["slip"]).tolist():
        if r.random() < 0.5 and email[i] is not None:
            user, _, dom = str(email[i]).strip().partition("@")
            email[i] = f"{_typo(user, r)}@{dom}" if r.random() < 0.6 else f"{user}@{_typo(dom, r)}"
        else:
            line1[i] = _typo(str(line1[i]), r)

    # Billing: the same address, another one (gift, office billing), or none.
    b = rng.random(m)
    bill_other = (b >= 1 - SHIP_BILL_DIFFER_RATE - BILL_MISSING_RATE) & (b < 1 - BILL_MISSING_RATE)
    bill_none = b >= 1 - BILL_MISSING_RATE
    other_pid = rng.integers(0, len(people.zip5), int(bill_other.sum()))
    bill_lines = [
        address_variant(int(no), st, int(sf), un, int(sy))
        for no, st, sf, un, sy in zip(
            people.street_no[other_pid].tolist(),
            people.street[other_pid].tolist(),
            people.suffix[other_pid].tolist(),
            people.unit[other_pid].tolist(),
            people.addr_style[other_pid].tolist(),
            strict=True,
        )
    ]
    bill = {
        "line1": line1.copy(),
        "line2": line2.copy(),
        "city": city.copy(),
        "region": region.copy(),
        "postal": zip5.copy(),
        "country": np.full(m, "US", dtype=object),
    }
    bill["line1"][bill_other] = _obj(x for x, _ in bill_lines)
    bill["line2"][bill_other] = _obj(y for _, y in bill_lines)
    bill["city"][bill_other] = np.asarray([c[0] for c in _CITIES], dtype=object)[people.city[other_pid]]
    bill["region"][bill_other] = np.asarray([c[1] for c in _CITIES], dtype=object)[people.city[other_pid]]
    bill["postal"][bill_other] = people.zip5[other_pid]
    for col in bill.values():
        col[bill_none] = None

    # Payment instrument, device, local network, browser.
    cpid, cslot = plan["card_pid"], plan["card_slot"]
    card = np.where(
        cslot == 2, people.vcard[cpid], np.where(cslot == 1, people.card2[cpid], people.card[cpid])
    )
    cbin = np.where(cslot == 2, people.vbin[cpid], np.where(cslot == 1, people.bin2[cpid], people.bin[cpid]))
    last4 = np.where(
        cslot == 2, people.vlast4[cpid], np.where(cslot == 1, people.last4_2[cpid], people.last4[cpid])
    )
    dpid = plan["dev_pid"]
    device = np.where(
        plan["dev_slot"] == 1, people.device2[np.maximum(dpid, 0)], people.device[np.maximum(dpid, 0)]
    )
    device[(dpid < 0) | (rng.random(m) < DEVICE_MISSING_RATE)] = None
    lpid = plan["loc_pid"]
    local_ip = np.where(
        plan["loc_slot"] == 1, people.local_ip2[np.maximum(lpid, 0)], people.local_ip[np.maximum(lpid, 0)]
    )
    local_ip[(lpid < 0) | (rng.random(m) < LOCAL_IP_MISSING_RATE)] = None
    upid = plan["ua_pid"]
    ua = np.where(plan["ua_slot"] == 1, people.ua2[upid], people.ua[upid])

    # What a store's checkout sends depends on the order and the client, not on the shopper's intent,
    # so abuse leaves fields out as often: without this, only bots ever lacked an email, an address or
    # a card, and a model learnt that any request sending less is abuse. A bot's client is its own
    # script: a plausible bot fills every field.
    store_client = np.asarray(ctx.actors.cols["pattern"], dtype=object)[plan["actor"]] != "bot_spray"
    no_address = store_client & (rng.random(m) < NO_ADDRESS_RATE)
    no_card = store_client & (rng.random(m) < CARD_NOT_YET_RATE)
    app_only = store_client & ~plan["guest"].astype(bool) & (rng.random(m) < APP_ONLY_RATE)
    ship_country = np.full(m, "US", dtype=object)
    card, cbin, last4 = card.astype(object), cbin.astype(object), last4.astype(object)
    for col in (email, phone):
        col[app_only] = None
    for col in (line1, line2, city, region, zip5, ship_country, *bill.values()):
        col[no_address | app_only] = None
    for col in (card, cbin, last4):
        col[no_card | app_only] = None

    ptype, valid, discount, referrer = _promo_lookup(ctx, plan["code"], ts, plan["ptype"])
    o = rng.random(m)
    drawn = np.where(o < 0.88, "redeemed", np.where(o < 0.97, "abandoned", "rejected")).astype(object)
    outcome = np.where(pd.isna(plan["outcome"]), drawn, plan["outcome"]).astype(object)
    outcome[~valid] = "rejected"
    return pd.DataFrame(
        {
            "ts": ts,
            "promo_code": plan["code"],
            "promo_type": ptype,
            "promo_valid": valid,
            "discount_value": discount,
            "referrer_account_id": referrer,
            "account_id": plan["account"],
            "is_guest": plan["guest"].astype(bool),
            "account_created_at": plan["created"],
            "account_segment": plan["segment"],
            "email": email,
            "phone": phone,
            "ship_line1": line1,
            "ship_line2": line2,
            "ship_city": city,
            "ship_region": region,
            "ship_postal_code": zip5,
            "ship_country": ship_country,
            "bill_line1": bill["line1"],
            "bill_line2": bill["line2"],
            "bill_city": bill["city"],
            "bill_region": bill["region"],
            "bill_postal_code": bill["postal"],
            "bill_country": bill["country"],
            "payment_fingerprint": card,
            "payment_bin": cbin,
            "payment_last4": last4,
            "device_id": device,
            "local_ip": local_ip,
            "ip": _ip_text(plan["ip"]),
            "user_agent": ua,
            "cart_total": _cart_totals(rng, ptype),
            "outcome": outcome,
            "actor": plan["actor"],
            "is_abuse": plan["abuse"].astype(bool),
        }
    )


def _render_bots(ctx: _Ctx, rng: np.random.Generator) -> pd.DataFrame:
    """Classic sprayers' and the drift farm's rows (their identity text is their own)."""
    rows = pd.DataFrame.from_records(ctx.bot_rows, columns=list(_BOT_COLUMNS))
    m = len(rows)
    ts = rows["ts"].to_numpy(dtype=float)
    ptype, valid, discount, referrer = _promo_lookup(
        ctx, rows["code"].to_numpy(dtype=object), ts, rows["ptype"].to_numpy(dtype=object)
    )
    outcome = rows["outcome"].to_numpy(dtype=object).copy()
    o = rng.random(m)
    drawn = np.where(o < 0.5, "redeemed", "abandoned").astype(object)
    outcome = np.where(pd.isna(outcome), drawn, outcome).astype(object)
    outcome[~valid] = "rejected"
    none = np.full(m, None, dtype=object)
    account = rows["account"].to_numpy(dtype=object)
    return pd.DataFrame(
        {
            "ts": ts,
            "promo_code": rows["code"].to_numpy(dtype=object),
            "promo_type": ptype,
            "promo_valid": valid,
            "discount_value": discount,
            "referrer_account_id": referrer,
            "account_id": account,
            "is_guest": pd.isna(account),
            "account_created_at": rows["created"].to_numpy(dtype=float),
            "account_segment": _obj(None if pd.isna(x) else "consumer" for x in account.tolist()),
            "email": rows["email"].to_numpy(dtype=object),
            **{c: none for c in ("phone", "ship_line1", "ship_line2", "ship_city", "ship_region")},
            **{c: none for c in ("ship_postal_code", "ship_country", "bill_line1", "bill_line2")},
            **{c: none for c in ("bill_city", "bill_region", "bill_postal_code", "bill_country")},
            **{c: none for c in ("payment_fingerprint", "payment_bin", "payment_last4")},
            "device_id": rows["device"].to_numpy(dtype=object),
            "local_ip": rows["local_ip"].to_numpy(dtype=object),
            "ip": _ip_text(rows["ip"].to_numpy(dtype=np.int64)),
            "user_agent": rows["ua"].to_numpy(dtype=object),
            "cart_total": rows["cart"].to_numpy(dtype=float),
            "outcome": outcome,
            "actor": rows["actor"].to_numpy(dtype=np.int64),
            "is_abuse": np.ones(m, bool),
        }
    )


# --------------------------------------------------------------------------------------------------
# Labels and feeds
# --------------------------------------------------------------------------------------------------


def _labels(
    cfg: SimulationConfig,
    rng: np.random.Generator,
    ts_s: npt.NDArray[np.float64],
    is_abuse: npt.NDArray[np.bool_],
    actor_codes: npt.NDArray[np.int64],
    actor_tier: npt.NDArray[np.object_],
    lookalike: npt.NDArray[np.bool_],
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.object_], npt.NDArray[np.object_], npt.NDArray[np.float64]]:
    """Return (event positions, label, source, label time in seconds) for the labeled attempts.

    Biased like human review: an abuser is caught less often the better it hides (the tiers' escape
    rates average ``never_labeled_share`` over the configured mix), reviewers miss some hidden abuse,
    and honest look-alikes (households, VPN users, movers, new accounts on shared networks) are
    reviewed and wrongly labeled abuse more often than ordinary shoppers.
    """
    m = len(ts_s)
    weight = {"naive": 0.5, "careful": 0.9, "sophisticated": 1.6, "rotating": 2.4, "none": 1.0}
    mix = list(cfg.evasion_mix) + [0.0] * (4 - len(cfg.evasion_mix))
    mean_w = sum(s * weight[t] for s, t in zip(mix, EVASION_TIERS, strict=True)) or 1.0
    escape = {t: min(0.95, cfg.never_labeled_share * w / mean_w) for t, w in weight.items()}
    miss = {"naive": 0.01, "careful": 0.03, "sophisticated": 0.07, "rotating": 0.10, "none": 0.02}
    n_actors = len(actor_tier)
    actor_escape = np.asarray([escape.get(str(t), escape["none"]) for t in actor_tier.tolist()])
    caught_actor = rng.random(n_actors) >= actor_escape
    row_tier = actor_tier[actor_codes]
    abuse_labeled = is_abuse & caught_actor[actor_codes] & (rng.random(m) < 0.9)
    review = cfg.legit_label_share * np.where(lookalike, 2.5, 1.0)
    legit_labeled = ~is_abuse & (rng.random(m) < review)
    pos = np.flatnonzero(abuse_labeled | legit_labeled)
    truth = is_abuse[pos]
    # Look-alikes are mislabeled six times as often as ordinary shoppers; the average stays label_noise.
    weight_noise = np.where(lookalike[pos], 3.0, 0.5)
    honest = ~is_abuse[pos]
    noise = (
        cfg.label_noise
        * weight_noise
        / max(float(weight_noise[honest].mean()) if honest.any() else 1.0, 1e-9)
    )
    flip = ~truth & (rng.random(len(pos)) < noise)
    missed = truth & (
        rng.random(len(pos)) < np.asarray([miss.get(str(t), 0.02) for t in row_tier[pos].tolist()])
    )
    label = np.where((truth & ~missed) | flip, "abuse", "legit").astype(object)
    abuse_sources = np.asarray(
        ["manual_review", "customer_support", "policy_audit", "feedback_api"], dtype=object
    )
    legit_sources = np.asarray(["policy_audit", "manual_review", "feedback_api"], dtype=object)
    source = np.where(
        label == "abuse",
        abuse_sources[rng.choice(4, len(pos), p=[0.45, 0.2, 0.15, 0.2])],
        legit_sources[rng.choice(3, len(pos), p=[0.5, 0.3, 0.2])],
    ).astype(object)
    median = np.asarray([cfg.label_delay_days.get(s, 3.0) for s in source.tolist()], dtype=float)
    delay = median * np.exp(rng.normal(0.0, 0.8, len(pos))) * _DAY
    label_ts = ts_s[pos] + np.maximum(delay, 3600.0)
    return pos, label, source, label_ts


#: Share of the exits/proxies seen at checkout that a feed ever lists (before the feed date).
FEED_LIST_SHARE = 0.75
#: Share of listed addresses that were on the feed before their first use at this store.
FEED_LISTED_BEFORE_SHARE = 0.3


def _feed(
    rng: np.random.Generator,
    pool: npt.NDArray[np.int64],
    up: npt.NDArray[np.float64],
    first_use: dict[int, float],
    end_s: float,
    range_share: float = 0.0,
) -> tuple[list[str], list[float]]:
    """Point-in-time feed entries: (ip or /24, listed_at seconds), partial, many listed after first use.

    Each exit is listed with probability ``FEED_LIST_SHARE``. One seen here is listed some days after
    its first use (lognormal, median a week) or, ``FEED_LISTED_BEFORE_SHARE`` of the time, between
    coming up and its first use; one never seen here a week or so after it came up. Listings dated
    after the feed date are not on the feed yet. A ``range_share`` of /24s (at least one when positive)
    are listed as a whole range, from their earliest member's listing on, instead of address by address.
    """
    listed_ip: dict[int, float] = {}
    for ip, came_up in zip(pool.tolist(), up.tolist(), strict=True):
        if rng.random() >= FEED_LIST_SHARE:
            continue
        used = first_use.get(ip)
        delay = 7 * _DAY * float(np.exp(rng.normal(0.0, 1.0)))
        if used is None:
            listed = came_up + delay
        elif rng.random() < FEED_LISTED_BEFORE_SHARE:
            listed = came_up + rng.random() * max(used - came_up, 0.0)
        else:
            listed = used + delay
        listed = math.floor(listed / 3600.0) * 3600.0
        if listed <= end_s:
            listed_ip[ip] = listed
    blocks = sorted({ip >> 8 for ip in pool.tolist()})
    n_ranges = max(1, round(range_share * len(blocks))) if range_share > 0 else 0
    ranges = set(rng.choice(blocks, n_ranges, replace=False).tolist()) if n_ranges else set()
    best: dict[str, float] = {}
    for ip, listed in sorted(listed_ip.items()):
        text = str(_ip_text(np.asarray([ip]))[0])
        if ip >> 8 in ranges:
            text = text.rsplit(".", 1)[0] + ".0/24"
        best[text] = min(listed, best.get(text, listed))
    ordered = sorted(best.items(), key=lambda kv: (kv[1], kv[0]))
    return [t for t, _ in ordered], [s for _, s in ordered]


def _iso(start: datetime, seconds: list[float]) -> list[str]:
    base = pd.Timestamp(start).tz_convert("UTC")
    return [(base + pd.Timedelta(seconds=s)).strftime("%Y-%m-%dT%H:%M:%SZ") for s in seconds]


# --------------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------------


def _to_utc(start: datetime, seconds: npt.NDArray[np.float64]) -> pd.DatetimeIndex:
    """Seconds after ``start`` (NaN = missing) as a UTC nanosecond DatetimeIndex."""
    secs = np.asarray(seconds, dtype=float)
    missing = np.isnan(secs)
    micros = np.where(missing, 0.0, np.round(secs * 1e6)).astype(np.int64)
    base_us = pd.Timestamp(start).tz_convert("UTC").value // 1000
    index = pd.to_datetime(micros + base_us, unit="us", utc=True).as_unit("ns")
    if missing.any():
        index = pd.DatetimeIndex(index.where(~missing))  # NaT where the value is missing
    return index


def _new_ctx(cfg: SimulationConfig) -> _Ctx:
    rng = np.random.default_rng(cfg.seed)
    r = random.Random(cfg.seed)
    space = _ip_space()
    tor, tor_up = _exits(rng, space.tor, 40, cfg.days)
    proxy, proxy_up = _exits(rng, space.proxy, 60, cfg.days)
    # Cloud egress shared by privacy relays, corporate VPNs and abusers' cloud boxes alike.
    cloud = np.unique(_datacenter_ips(rng, 24, space))
    cgnat = space.mobile[rng.integers(0, len(space.mobile), 14)] + rng.integers(256, 65_280, 14)
    disposable = tuple(sorted(d for d in _DISPOSABLE_BLOCKLIST if d.count(".") == 1 and len(d) <= 20))[::37]
    bank = _Bank(rng, space)
    # Parcel forwarders / drop addresses: doors that many unrelated shoppers ship to.
    drops = bank.take(max(4, cfg.n_events // 20_000))
    ctx = _Ctx(cfg, rng, r, space, _base_promotions(cfg), bank, tor, proxy, cloud, cgnat, drops, disposable)
    ctx.tor_up, ctx.proxy_up = tor_up, proxy_up
    return ctx


def _exits(
    rng: np.random.Generator, slash24: npt.NDArray[np.int64], n: int, days: int
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float64]]:
    """``n`` exit addresses in the given /24s and when each came up (seconds), sorted by that time.

    A quarter were up before the window; the rest come up through it, so exits are first seen (and
    listed) all along the history rather than all in its first days.
    """
    ips = np.unique(slash24[rng.integers(0, len(slash24), n)] + rng.integers(1, 255, n))
    k = len(ips)
    up_days = np.where(np.arange(k) < k // 4, rng.uniform(-60, 0, k), rng.uniform(0, days - 3, k))
    up_days = up_days[rng.permutation(k)]
    order = np.argsort(up_days, kind="stable")
    return ips[order], up_days[order] * _DAY


def simulate_history(config: SimulationConfig) -> SimulatedHistory:
    """Generate a labeled redemption history; the same config always yields identical frames."""
    cfg = config
    ctx = _new_ctx(cfg)
    d = float(cfg.days)
    n_bot = int(cfg.n_events * cfg.bot_share)
    n_abuse = int((cfg.n_events - n_bot) * cfg.abuse_share)
    _gen_welcome_cycling(ctx, int(n_abuse * _ABUSE_MIX["welcome_cycling"]))
    _gen_referral_self(ctx, int(n_abuse * _ABUSE_MIX["referral_self"]))
    _gen_code_leak(ctx, int(n_abuse * _ABUSE_MIX["code_leak"]), list(ctx.promos.leaks))
    _gen_intro_reset(ctx, int(n_abuse * _ABUSE_MIX["intro_reset"]))
    _gen_sample_stacking(ctx, int(n_abuse * _ABUSE_MIX["sample_stacking"]))
    _gen_wholesale_guest(ctx, int(n_abuse * _ABUSE_MIX["wholesale_guest"]))
    _gen_bot_spray(ctx, n_bot)

    drift = cfg.drift or DriftConfig()
    extra = int(cfg.n_events * drift.intensity) if drift.kind != "none" else 0
    leak_rows = list(ctx.promos.leaks)
    if drift.kind == "new_leak":
        code = "NOVA30"
        ctx.promos.add(code, "sitewide", "partner_drift", 30.0, drift.start_day - 10, None, limit=1)
        ctx.promos.leaks.append((code, float(drift.start_day)))
        leak_rows.append((code, float(drift.start_day)))
        _gen_code_leak(ctx, extra, [(code, float(drift.start_day))], cohort="drift")
    elif drift.kind == "new_bot_farm":
        _gen_drift_bot_farm(ctx, extra, float(drift.start_day))

    abuse_plan = _resolve_abuse_plan(ctx)
    # Honest traffic fills the rest, so a history has about n_events attempts whatever the drift.
    planned = len(abuse_plan["ts"]) + len(ctx.bot_rows) + (extra if drift.kind == "seasonal_legit" else 0)
    n_legit = max(0, cfg.n_events - planned)
    plans = [abuse_plan, _legit(ctx, n_legit)]
    if drift.kind == "seasonal_legit":
        seasonal = {"legit_household": (0.5, 3.0), "legit_cgnat": (0.35, 2.0), "legit_new": (0.15, 1.0)}
        plans.append(_legit(ctx, extra, start_day=float(drift.start_day), mix=seasonal, cohort="drift"))
    plan = _code_noise(ctx, _plan_concat(plans))
    for placeholder, kind in ((_PICK_TOR, "tor"), (_PICK_PROXY, "proxy")):
        rows = np.flatnonzero(plan["ip"] == placeholder)
        plan["ip"][rows] = ctx.pool_ips(kind, plan["ts"][rows])
    inside = (plan["ts"] >= 0) & (plan["ts"] < d * _DAY)
    plan = _plan_take(plan, np.flatnonzero(inside))
    render_rng = np.random.default_rng(cfg.seed + 2)
    frame = pd.concat([_render(ctx, plan, render_rng), _render_bots(ctx, render_rng)], ignore_index=True)
    frame = frame.iloc[np.argsort(frame["ts"].to_numpy(), kind="stable")].reset_index(drop=True)
    frame["request_id"] = [f"r{i:09d}" for i in range(len(frame))]
    frame["currency"] = "USD"

    ts_s = frame["ts"].to_numpy(dtype=float)
    events = frame[list(EVENT_COLUMNS)].copy()
    events["ts"] = _to_utc(cfg.start, ts_s)
    events["account_created_at"] = _to_utc(cfg.start, frame["account_created_at"].to_numpy(dtype=float))
    for col in ("promo_valid", "is_guest"):
        events[col] = events[col].astype(bool)
    for col in ("discount_value", "cart_total"):
        events[col] = events[col].astype(float)
    for col in EVENT_COLUMNS:
        if col not in ("ts", "account_created_at", "promo_valid", "is_guest", "discount_value", "cart_total"):
            values = events[col].to_numpy(dtype=object)
            values[pd.isna(values)] = None  # NaN from concat would break "missing means None"
            events[col] = values

    actors = ctx.actors.frame()
    actor_codes = frame["actor"].to_numpy(dtype=np.int64)
    actor_tier = actors["evasion"].to_numpy(dtype=object)
    truth = pd.DataFrame(
        {
            "request_id": frame["request_id"].astype(object),
            "actor_id": actors["actor_id"].to_numpy(dtype=object)[actor_codes],
            "pattern": actors["pattern"].to_numpy(dtype=object)[actor_codes],
            "is_abuse": frame["is_abuse"].astype(bool),
            "evasion": actor_tier[actor_codes],
        }
    )
    is_abuse = truth["is_abuse"].to_numpy(bool)
    trap = actors["trap"].to_numpy(dtype=object)[actor_codes]
    age = ts_s - frame["account_created_at"].to_numpy(dtype=float)
    lookalike = ~is_abuse & (
        np.isin(trap, ["household", "cgnat", "vpn", "mover", "forwarder"]) | (age < _DAY)
    )
    pos, label, source, label_s = _labels(
        cfg, np.random.default_rng(cfg.seed + 1), ts_s, is_abuse, actor_codes, actor_tier, lookalike
    )
    labels = pd.DataFrame(
        {
            "request_id": frame["request_id"].to_numpy()[pos].astype(object),
            "label": label,
            "label_source": source,
            "label_ts": _to_utc(cfg.start, label_s),
        }
    )
    labels = labels.sort_values("label_ts", kind="stable").reset_index(drop=True)

    prom = pd.DataFrame(ctx.promos.rows)
    prom["starts_at"] = _to_utc(cfg.start, prom["starts_at"].to_numpy(dtype=float))
    prom["ends_at"] = _to_utc(cfg.start, prom["ends_at"].to_numpy(dtype=float))
    prom["per_customer_limit"] = prom["per_customer_limit"].astype("Int64")
    prom["discount_value"] = prom["discount_value"].astype(float)
    prom["single_use"] = prom["single_use"].astype(bool)
    for col in ("eligible_segment", "referrer_account_id"):
        prom[col] = prom[col].astype(object).where(prom[col].notna(), None)
    leaks = pd.DataFrame(
        {
            "promo_code": [c for c, _ in leak_rows],
            "leaked_at": _to_utc(cfg.start, np.asarray([t * _DAY for _, t in leak_rows], dtype=float)),
        }
    )

    # Feeds, point in time: when each exit/proxy was first used here decides when it tends to be listed.
    first_use: dict[int, float] = {}
    ip_int = _ip_ints(events["ip"].to_numpy(dtype=object))
    for value, t in zip(ip_int.tolist(), ts_s.tolist(), strict=True):
        if value >= 0 and value not in first_use:
            first_use[value] = t
    feed_rng = np.random.default_rng(cfg.seed + 3)
    end_s = d * _DAY
    tor_entries, tor_at = _feed(feed_rng, ctx.tor_ips, ctx.tor_up, first_use, end_s)
    proxy_entries, proxy_at = _feed(feed_rng, ctx.proxy_ips, ctx.proxy_up, first_use, end_s, range_share=0.08)
    feed_date = (cfg.start + pd.Timedelta(days=cfg.days)).date().isoformat()
    return SimulatedHistory(
        events=events,
        labels=labels,
        promotions=prom,
        actors=actors,
        truth=truth,
        leaks=leaks,
        tor_exits=tor_entries,
        proxies=proxy_entries,
        feed_date=feed_date,
        tor_listed_at=_iso(cfg.start, tor_at),
        proxy_listed_at=_iso(cfg.start, proxy_at),
    )


def _ip_ints(texts: npt.NDArray[np.object_]) -> npt.NDArray[np.int64]:
    """Dotted IPv4 text -> integers (-1 for missing), via the unique values only."""
    codes, uniques = pd.factorize(pd.Series(texts, dtype=object))
    values = np.full(len(uniques) + 1, -1, dtype=np.int64)
    for i, text in enumerate(uniques.tolist()):
        a, b, c, dd = (int(x) for x in str(text).split("."))
        values[i] = (a << 24) | (b << 16) | (c << 8) | dd
    return values[codes]  # code -1 (missing) picks the trailing -1


def write_history(history: SimulatedHistory, raw_dir: Path) -> dict[str, Path]:
    """Validate and write the history's parquet files and simulated IP feeds under ``raw_dir``.

    Raw identity is written only here (``data/raw`` is the one place it may live). Feed lines are
    ``<ip-or-cidr> <listed_at>`` (ISO-8601 UTC) after a ``#`` header whose ``# date:`` line is the end
    of the history; a reader must use only entries listed before each event's time.
    """
    raw_dir = Path(raw_dir)
    (raw_dir / "ipintel").mkdir(parents=True, exist_ok=True)
    validate_events(history.events)
    validate_labels(history.labels)
    validate_promotions(history.promotions)
    paths: dict[str, Path] = {}
    for name in ("events", "labels", "promotions", "actors", "truth", "leaks"):
        path = raw_dir / f"{name}.parquet"
        getattr(history, name).to_parquet(path, index=False)
        paths[name] = path
    header = (
        "# simulated {what} feed generated by promoguard simulate; not real threat data\n"
        f"# date: {history.feed_date}\n"
        "# columns: <ip-or-cidr> <listed_at ISO-8601 UTC>; use an entry only from its listed_at on\n"
    )

    def lines(entries: list[str], listed: list[str]) -> str:
        if len(listed) == len(entries):
            return "".join(f"{e} {t}\n" for e, t in zip(entries, listed, strict=True))
        return "".join(f"{e}\n" for e in entries)

    tor_path = raw_dir / "ipintel" / "tor_exits.txt"
    tor_path.write_text(header.format(what="Tor exit") + lines(history.tor_exits, history.tor_listed_at))
    proxy_path = raw_dir / "ipintel" / "proxies.txt"
    proxy_path.write_text(
        header.format(what="VPN/proxy exit") + lines(history.proxies, history.proxy_listed_at)
    )
    paths["tor_exits"] = tor_path
    paths["proxies"] = proxy_path
    return paths


def summarize(history: SimulatedHistory) -> pd.DataFrame:
    """One row per pattern (legit kinds included) and a total row: volume, abuse and label coverage."""
    t = history.truth
    labeled = t["request_id"].isin(history.labels["request_id"])
    frame = pd.DataFrame(
        {"pattern": t["pattern"], "actor_id": t["actor_id"], "abuse": t["is_abuse"], "labeled": labeled}
    )
    g = frame.groupby("pattern", sort=False)
    out = pd.DataFrame(
        {
            "actors": g["actor_id"].nunique(),
            "events": g.size(),
            "abuse_events": g["abuse"].sum().astype(int),
            "abuse_rate": g["abuse"].mean(),
            "labeled_share": g["labeled"].mean(),
        }
    )
    order = [p for p in (*LEGIT_PATTERNS, *ABUSE_PATTERNS) if p in out.index]
    out = out.loc[order].reset_index()
    total = pd.DataFrame(
        [
            {
                "pattern": "total",
                "actors": frame["actor_id"].nunique(),
                "events": len(frame),
                "abuse_events": int(frame["abuse"].sum()),
                "abuse_rate": float(frame["abuse"].mean()),
                "labeled_share": float(frame["labeled"].mean()),
            }
        ]
    )
    return pd.concat([out, total], ignore_index=True)
