"""Seeded, reproducible generator of labeled promo-redemption history with every abuse pattern.

The history is the demo and test data source. It is built so that a model has to learn what it would
on a real store: abuse hides behind cheap identity (fresh emails, accounts, public IPs) while keeping
some hard identity (device, household, card, phone, home network), and honest traffic contains the
look-alikes that punish lazy rules (families at one address, thousands of phones behind one carrier
NAT, honest VPN users, people who move or mistype).

Legit traffic (the bulk) is generated vectorised per actor group with numpy; abuse traffic (a few
percent) is generated per attempt with a seeded ``random.Random``, which keeps every pattern readable.
The same :class:`SimulationConfig` always gives identical frames.

Outputs (see :class:`SimulatedHistory`): ``events``/``labels``/``promotions`` in the contract of
:mod:`features.events`, plus evaluation-only ground truth (``actors``, ``truth``, ``leaks``) that must
never become a feature.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import pandas as pd
from disposable_email_domains import blocklist as _DISPOSABLE_BLOCKLIST

from features.events import EVENT_COLUMNS, validate_events, validate_labels, validate_promotions
from features.ipintel import cloud_ranges

DriftKind = Literal["none", "new_leak", "new_bot_farm", "seasonal_legit"]
Evasion = Literal["none", "naive", "careful", "sophisticated"]

ABUSE_PATTERNS = (
    "welcome_cycling",
    "referral_self",
    "code_leak",
    "intro_reset",
    "sample_stacking",
    "wholesale_guest",
    "bot_spray",
)
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

#: Share of non-bot abuse attempts per pattern.
_ABUSE_MIX = {
    "welcome_cycling": 0.30,
    "referral_self": 0.15,
    "code_leak": 0.24,
    "intro_reset": 0.09,
    "sample_stacking": 0.12,
    "wholesale_guest": 0.10,
}
#: (share of legit attempts, mean attempts per actor).
_LEGIT_MIX = {
    "legit_repeat": (0.40, 4.0),
    "legit_new": (0.14, 1.0),
    "legit_household": (0.20, 3.0),
    "legit_cgnat": (0.10, 3.0),
    "legit_vpn": (0.04, 3.0),
    "legit_mover": (0.05, 5.0),
    "legit_typo": (0.04, 4.0),
    "legit_wholesale": (0.03, 6.0),
}

_DAY = 86_400.0
_INTERNAL_COLUMNS = (*EVENT_COLUMNS, "actor_id", "pattern", "is_abuse")
_ZERO_DEVICE = "00000000-0000-0000-0000-000000000000"


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
    never_labeled_share: float = 0.30
    #: Share of legit attempts that get a (reviewed or audited) legit label.
    legit_label_share: float = 0.06
    #: Share of labeled legit attempts wrongly labeled abuse.
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
    #: Shares of naive / careful / sophisticated abusers.
    evasion_mix: tuple[float, float, float] = (0.5, 0.3, 0.2)
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
        if abs(sum(self.evasion_mix) - 1.0) > 1e-6 or min(self.evasion_mix) < 0:
            raise ValueError(
                f"evasion_mix must be three non-negative shares summing to 1: {self.evasion_mix}"
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
    truth: pd.DataFrame
    #: One row per leaked code: promo_code, leaked_at (evaluation only).
    leaks: pd.DataFrame = field(default_factory=pd.DataFrame)
    tor_exits: list[str] = field(default_factory=list)
    proxies: list[str] = field(default_factory=list)
    feed_date: str = ""


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
)
_PROVIDER_P = (0.45, 0.12, 0.10, 0.07, 0.11, 0.03, 0.02, 0.04, 0.03, 0.03)
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
        f"{w}.{x}.{y}.{z}" for w, x, y, z in zip(a.tolist(), b.tolist(), c.tolist(), d.tolist(), strict=True)
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
# Identity text
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


@dataclass
class _People:
    """Vectorised persona attributes (one row per person); strings are object arrays."""

    first: npt.NDArray[np.object_]
    last: npt.NDArray[np.object_]
    email: npt.NDArray[np.object_]
    phone: npt.NDArray[np.object_]  # ten digits
    phone_style: npt.NDArray[np.int64]
    street_no: npt.NDArray[np.int64]
    street: npt.NDArray[np.object_]
    suffix: npt.NDArray[np.int64]
    unit: npt.NDArray[np.object_]  # e.g. "4B" or None
    city: npt.NDArray[np.int64]
    zip5: npt.NDArray[np.object_]
    card: npt.NDArray[np.object_]
    card2: npt.NDArray[np.object_]
    bin: npt.NDArray[np.object_]
    last4: npt.NDArray[np.object_]
    device: npt.NDArray[np.object_]
    device2: npt.NDArray[np.object_]
    local_ip: npt.NDArray[np.object_]
    local_ip2: npt.NDArray[np.object_]
    home_ip: npt.NDArray[np.object_]
    ua: npt.NDArray[np.object_]
    ua2: npt.NDArray[np.object_]


def _local_ips(rng: np.random.Generator, n: int) -> npt.NDArray[np.object_]:
    kind = rng.random(n)
    x, y, z = rng.integers(0, 256, n), rng.integers(0, 256, n), rng.integers(2, 254, n)
    out = np.empty(n, dtype=object)
    out[:] = [
        f"192.168.{x_ % 4 if k < 0.45 else x_}.{z_}" if k < 0.8 else f"10.{x_}.{y_}.{z_}"
        for k, x_, y_, z_ in zip(kind.tolist(), x.tolist(), y.tolist(), z.tolist(), strict=True)
    ]
    return out


def _make_people(
    rng: np.random.Generator, n: int, space: _IpSpace, gmail_share: float | None = None
) -> _People:
    first = np.asarray(_FIRST, dtype=object)[rng.integers(0, len(_FIRST), n)]
    last = np.asarray(_LAST, dtype=object)[rng.integers(0, len(_LAST), n)]
    p = np.asarray(_PROVIDER_P)
    if gmail_share is not None:
        p = p * (1 - gmail_share) / (1 - p[0])
        p[0] = gmail_share
    provider = np.asarray(_PROVIDERS, dtype=object)[rng.choice(len(_PROVIDERS), n, p=p / p.sum())]
    style = rng.integers(0, 4, n)
    num = rng.integers(1, 9999, n)
    email = _obj(
        f"{f}.{la}{nn % 100}@{pr}"
        if s == 0
        else f"{f}{la}{nn % 1000}@{pr}"
        if s == 1
        else f"{f[0]}{la}{nn % 97}@{pr}"
        if s == 2
        else f"{la}.{f}@{pr}"
        for f, la, pr, s, nn in zip(
            first.tolist(), last.tolist(), provider.tolist(), style.tolist(), num.tolist(), strict=True
        )
    )
    city = rng.integers(0, len(_CITIES), n)
    area = np.asarray([c[3] for c in _CITIES], dtype=object)[city]
    local = rng.integers(2_000_000, 9_999_999, n)
    phone = _obj(f"{a}{loc}" for a, loc in zip(area.tolist(), local.tolist(), strict=True))
    has_unit = rng.random(n) < 0.35
    units = rng.integers(1, 30, n)
    letters = np.asarray(list("ABCDEF"), dtype=object)[rng.integers(0, 6, n)]
    unit = _obj(
        f"{u}{ch}" if h else None
        for h, u, ch in zip(has_unit.tolist(), units.tolist(), letters.tolist(), strict=True)
    )
    zprefix = np.asarray([c[2] for c in _CITIES], dtype=object)[city]
    zsuffix = rng.integers(0, 100, n)
    zip5 = _obj(f"{zp}{zs:02d}" for zp, zs in zip(zprefix.tolist(), zsuffix.tolist(), strict=True))
    card_hex = rng.bytes(16 * n).hex()
    card = _obj(card_hex[i : i + 16] for i in range(0, 32 * n, 32))
    card2 = _obj(card_hex[i + 16 : i + 32] for i in range(0, 32 * n, 32))
    bins = np.asarray(_BINS, dtype=object)[rng.integers(0, len(_BINS), n)]
    last4 = _obj(f"{v:04d}" for v in rng.integers(0, 10_000, n).tolist())
    mobile_first = rng.random(n) < 0.5
    ua_d = np.asarray(_UA_DESKTOP, dtype=object)[rng.integers(0, len(_UA_DESKTOP), n)]
    ua_m = np.asarray(_UA_MOBILE, dtype=object)[rng.integers(0, len(_UA_MOBILE), n)]
    return _People(
        first=first,
        last=last,
        email=email,
        phone=phone,
        phone_style=rng.choice(5, n, p=[0.3, 0.2, 0.25, 0.15, 0.1]),
        street_no=rng.integers(1, 9900, n),
        street=np.asarray(_STREETS, dtype=object)[rng.integers(0, len(_STREETS), n)],
        suffix=rng.integers(0, len(_SUFFIXES), n),
        unit=unit,
        city=city,
        zip5=zip5,
        card=card,
        card2=card2,
        bin=bins,
        last4=last4,
        device=_uuids(rng, n),
        device2=_uuids(rng, n),
        local_ip=_local_ips(rng, n),
        local_ip2=_local_ips(rng, n),
        home_ip=_ip_text(_residential_ips(rng, n, space)),
        ua=np.where(mobile_first, ua_m, ua_d),
        ua2=np.where(mobile_first, ua_d, ua_m),
    )


def _line1(no: int, street: str, suffix: int, long: bool = False) -> str:
    return f"{no} {street} {_SUFFIXES[suffix][1 if long else 0]}"


def _unit_text(unit: str | None) -> str | None:
    return f"Apt {unit}" if unit else None


def address_variant(
    no: int, street: str, suffix: int, unit: str | None, style: int
) -> tuple[str, str | None]:
    """One way of writing the same shipping address (line1, line2); style 0 is the canonical form.

    The variants are what one household produces across orders: "123 Main St Apt 4B",
    "123 main street #4b", "123 Main, Apt 4-B" all name one door.
    """
    short, long = _SUFFIXES[suffix]
    num, let = (unit[:-1], unit[-1]) if unit else ("", "")
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
        return (f"{no} {street}, Apt {num}-{let}" if unit else f"{no} {street}"), None
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


def gmail_variant(local: str, r: random.Random, tag: int) -> str:
    """A gmail address that the mailbox folds into ``local@gmail.com`` but a naive join does not."""
    bare = local.replace(".", "")
    trick = r.randrange(5)
    if trick == 0:  # dot trick
        cut = sorted(r.sample(range(1, len(bare)), k=min(2, len(bare) - 1)))
        parts = [bare[: cut[0]], *(bare[a:b] for a, b in zip(cut, [*cut[1:], len(bare)], strict=True))]
        return ".".join(parts) + "@gmail.com"
    if trick == 1:
        return f"{local}+promo{tag}@gmail.com"
    if trick == 2:
        return f"{bare}@googlemail.com"
    if trick == 3:
        return f"{local.capitalize()}+{tag}@Gmail.com"
    return f"{bare}+deal{tag}@googlemail.com"


# --------------------------------------------------------------------------------------------------
# Promotions
# --------------------------------------------------------------------------------------------------


@dataclass
class _Promos:
    """The promotion catalog being built, with the lookups generators need."""

    rows: list[dict[str, Any]] = field(default_factory=list)
    by_code: dict[str, dict[str, Any]] = field(default_factory=dict)
    sitewide: list[tuple[float, float, str]] = field(default_factory=list)  # (start_s, end_s, code)
    leaks: list[tuple[str, float]] = field(default_factory=list)

    def add(
        self,
        code: str,
        promo_type: str,
        campaign: str,
        discount: float,
        start_s: float,
        end_s: float | None,
        *,
        single_use: bool = False,
        limit: int | None = 1,
        segment: str | None = None,
        referrer: str | None = None,
    ) -> None:
        row = {
            "promo_code": code,
            "promo_type": promo_type,
            "campaign": campaign,
            "discount_value": float(discount),
            "single_use": single_use,
            "per_customer_limit": limit,
            "eligible_segment": segment,
            "referrer_account_id": referrer,
            "starts_at": start_s,
            "ends_at": end_s,
        }
        self.rows.append(row)
        self.by_code[code] = row


def _base_promotions(cfg: SimulationConfig) -> _Promos:
    d = cfg.days * _DAY
    p = _Promos()
    p.add("WELCOME10", "welcome", "welcome_2026", 10.0, -30 * _DAY, 0.65 * d)
    p.add("WELCOME15", "welcome", "welcome_summer", 15.0, 0.4 * d, None)
    p.add("TRIAL30", "intro_offer", "subscription_intro", 30.0, -60 * _DAY, None)
    p.add("FREESAMPLE", "free_sample", "sample_box", 12.0, -10 * _DAY, None)
    p.add(
        "WHOLESALE20", "wholesale", "trade_program", 20.0, -90 * _DAY, None, limit=None, segment="wholesale"
    )
    p.add("VIP25", "wholesale", "vip_club", 25.0, -90 * _DAY, None, limit=None, segment="vip")
    p.add("SAVE10", "sitewide", "evergreen", 10.0, -365 * _DAY, None, limit=None)
    names = ("SUMMER", "FLASH", "WEEKEND", "BACK2SCHOOL", "FALL", "HOLIDAY", "SPRING", "MEGA")
    t, i = -7 * _DAY, 0
    while t < d:
        length = 14 * _DAY
        code = f"{names[i % len(names)]}{20 + 5 * (i % 3)}"
        if code in p.by_code:
            code = f"{code}X{i}"
        p.add(code, "sitewide", f"sitewide_{i:02d}", 20.0 + 5 * (i % 3), t, t + length + 2 * _DAY, limit=None)
        p.sitewide.append((t, t + length + 2 * _DAY, code))
        t += length
        i += 1
    # Targeted codes meant for a small audience; they leak at different times.
    for j, frac in enumerate((0.25, 0.5, 0.72)):
        code = f"PARTNER{35 + 5 * j}-{'ABC'[j]}{7 * (j + 3)}"
        p.add(code, "sitewide", f"partner_{j}", 35.0 + 5 * j, -5 * _DAY, None, limit=1)
        p.leaks.append((code, frac * d))
    return p


# --------------------------------------------------------------------------------------------------
# Generator state and per-attempt rows (abuse)
# --------------------------------------------------------------------------------------------------


@dataclass
class _Ctx:
    cfg: SimulationConfig
    rng: np.random.Generator
    r: random.Random
    space: _IpSpace
    promos: _Promos
    tor_ips: list[str]
    proxy_ips: list[str]
    cgnat_ips: npt.NDArray[np.object_]
    disposable: tuple[str, ...]
    actors: list[dict[str, Any]] = field(default_factory=list)
    rows: list[tuple[Any, ...]] = field(default_factory=list)
    next_actor: int = 0
    next_account: int = 0

    def actor(
        self,
        pattern: str,
        is_abuser: bool,
        evasion: str = "none",
        trap: str = "none",
        household: str | None = None,
        cohort: str = "base",
    ) -> str:
        self.next_actor += 1
        actor_id = f"u{self.next_actor:07d}"
        self.actors.append(
            {
                "actor_id": actor_id,
                "pattern": pattern,
                "is_abuser": is_abuser,
                "evasion": evasion,
                "trap": trap,
                "household_id": household,
                "cohort": cohort,
            }
        )
        return actor_id

    def account(self) -> str:
        self.next_account += 1
        return f"acct_{self.next_account:08d}"

    def outcome(self, valid: bool) -> str:
        if not valid:
            return "rejected"
        x = self.r.random()
        return "redeemed" if x < 0.88 else "abandoned" if x < 0.97 else "rejected"

    def sitewide_code(self, t: float) -> str:
        for s, e, code in self.promos.sitewide:
            if s <= t < e - 2 * _DAY:
                return code
        return "SAVE10"

    def welcome_code(self, t: float) -> str:
        d = self.cfg.days * _DAY
        if t < 0.4 * d:
            return "WELCOME10"
        if t >= 0.65 * d:
            return "WELCOME15"
        return "WELCOME10" if self.r.random() < 0.5 else "WELCOME15"

    def row(
        self,
        *,
        actor: str,
        pattern: str,
        abuse: bool,
        t: float,
        code: str,
        promo_type: str | None = None,
        email: str | None,
        phone: str | None,
        addr: tuple[str, str | None, str, str, str] | None,
        card: tuple[str, str, str] | None,
        device: str | None,
        local_ip: str | None,
        ip: str | None,
        ua: str | None,
        account: str | None,
        created: float | None,
        segment: str | None = "consumer",
        cart: float | None = None,
        referrer: str | None = None,
        bill_same: bool = True,
        outcome: str | None = None,
    ) -> None:
        promo = self.promos.by_code.get(code)
        valid = promo is not None
        ptype = promo["promo_type"] if promo is not None else (promo_type or "sitewide")
        discount = float(promo["discount_value"]) if promo is not None else 0.0
        if referrer is None and promo is not None:
            referrer = promo["referrer_account_id"]
        ship = addr if addr is not None else (None, None, None, None, None)
        bill = ship if bill_same else (None, None, None, None, None)
        self.rows.append(
            (
                t,
                code,
                ptype,
                valid,
                discount,
                referrer,
                account,
                account is None,
                created if created is not None else np.nan,
                segment if account is not None else None,
                email,
                phone,
                *ship,
                "US" if addr is not None else None,
                *bill,
                "US" if (addr is not None and bill_same) else None,
                *(card if card is not None else (None, None, None)),
                device,
                local_ip,
                ip,
                ua,
                float(cart if cart is not None else round(self.r.lognormvariate(4.0, 0.6), 2)),
                outcome or self.outcome(valid),
                actor,
                pattern,
                abuse,
            )
        )


_ROW_COLUMNS = (
    "ts",
    "promo_code",
    "promo_type",
    "promo_valid",
    "discount_value",
    "referrer_account_id",
    "account_id",
    "is_guest",
    "account_created_at",
    "account_segment",
    "email",
    "phone",
    "ship_line1",
    "ship_line2",
    "ship_city",
    "ship_region",
    "ship_postal_code",
    "ship_country",
    "bill_line1",
    "bill_line2",
    "bill_city",
    "bill_region",
    "bill_postal_code",
    "bill_country",
    "payment_fingerprint",
    "payment_bin",
    "payment_last4",
    "device_id",
    "local_ip",
    "ip",
    "user_agent",
    "cart_total",
    "outcome",
    "actor_id",
    "pattern",
    "is_abuse",
)


def _evasion(ctx: _Ctx) -> str:
    x = ctx.r.random()
    a, b, _ = ctx.cfg.evasion_mix
    return "naive" if x < a else "careful" if x < a + b else "sophisticated"


@dataclass
class _Person:
    """One persona's identity as plain strings, for per-attempt generation."""

    first: str
    last: str
    email: str
    phone: str
    style: int
    no: int
    street: str
    suffix: int
    unit: str | None
    city: int
    zip5: str
    card: tuple[str, str, str]
    device: str
    local_ip: str
    home_ip: str
    ua: str

    def addr(self, style: int = 0) -> tuple[str, str | None, str, str, str]:
        line1, line2 = address_variant(self.no, self.street, self.suffix, self.unit, style)
        c = _CITIES[self.city]
        return line1, line2, c[0], c[1], self.zip5

    def phone_text(self, style: int | None = None) -> str:
        return format_phone(self.phone, self.style if style is None else style)


def _persons(ctx: _Ctx, n: int, gmail_share: float | None = None) -> list[_Person]:
    p = _make_people(ctx.rng, n, ctx.space, gmail_share)
    return [
        _Person(
            p.first[i],
            p.last[i],
            p.email[i],
            p.phone[i],
            int(p.phone_style[i]),
            int(p.street_no[i]),
            p.street[i],
            int(p.suffix[i]),
            p.unit[i],
            int(p.city[i]),
            p.zip5[i],
            (p.card[i], p.bin[i], p.last4[i]),
            p.device[i],
            p.local_ip[i],
            p.home_ip[i],
            p.ua[i],
        )
        for i in range(n)
    ]


class _PersonPool:
    """Fresh personas drawn in batches: building one at a time costs a full vectorised pass each."""

    def __init__(self, ctx: _Ctx, batch: int = 512) -> None:
        self.ctx, self.batch = ctx, batch
        self.items: list[_Person] = []

    def take(self) -> _Person:
        if not self.items:
            self.items = _persons(self.ctx, self.batch)[::-1]
        return self.items.pop()


def _fresh_card(r: random.Random) -> tuple[str, str, str]:
    return f"{r.getrandbits(64):016x}", r.choice(_BINS), f"{r.randrange(10_000):04d}"


def _fresh_email(person: _Person, r: random.Random, tag: int) -> str:
    """A brand-new mailbox at another provider (what careful abusers do instead of alias tricks)."""
    first = r.choice(_FIRST) if r.random() < 0.5 else person.first
    provider = r.choice(("outlook.com", "yahoo.com", "proton.me", "icloud.com", "hotmail.com"))
    return f"{first}{r.choice(_LAST)[:4]}{tag}{r.randrange(100)}@{provider}"


def _rotation(ctx: _Ctx, evasion: str, keep: tuple[str, ...]) -> set[str]:
    """Which hard identities an abuser changes on every attempt; ``keep`` is never rotated."""
    pool = [h for h in ("device", "card", "phone", "local_ip") if h not in keep]
    if evasion == "careful":
        return set(ctx.r.sample(pool, 1))
    if evasion == "sophisticated":
        return set(ctx.r.sample(pool, 2))
    return set()


def _abuse_ip(ctx: _Ctx, person: _Person, evasion: str) -> str:
    if evasion == "sophisticated":
        return str(_ip_text(_residential_ips(ctx.rng, 1, ctx.space))[0])
    if evasion == "careful" and ctx.r.random() < 0.5:
        return ctx.r.choice(ctx.proxy_ips)
    return person.home_ip


def _gap(ctx: _Ctx, evasion: str, mean_days: float) -> float:
    if evasion == "sophisticated":
        return (2.0 + ctx.r.expovariate(1 / (mean_days * 1.5))) * _DAY
    return ctx.r.expovariate(1 / mean_days) * _DAY


def _cycle_identity(
    ctx: _Ctx, person: _Person, rotate: set[str], k: int
) -> tuple[str, str | None, tuple[str, str, str], str]:
    device = _py_uuid(ctx.r) if ("device" in rotate and k > 0) else person.device
    phone = (
        format_phone(f"{person.phone[:3]}{ctx.r.randrange(2_000_000, 9_999_999)}", ctx.r.randrange(5))
        if ("phone" in rotate and k > 0)
        else person.phone_text(ctx.r.randrange(5))
    )
    card = _fresh_card(ctx.r) if ("card" in rotate and k > 0) else person.card
    local_ip = (
        f"192.168.{ctx.r.randrange(256)}.{ctx.r.randrange(2, 254)}"
        if ("local_ip" in rotate and k > 0)
        else person.local_ip
    )
    return device, phone, card, local_ip


def _gen_welcome_cycling(ctx: _Ctx, budget: int, cohort: str = "base") -> None:
    d = ctx.cfg.days * _DAY
    people = _persons(ctx, max(1, budget // 5), gmail_share=0.8)
    used = 0
    for person in people:
        if used >= budget:
            break
        ev = _evasion(ctx)
        actor = ctx.actor("welcome_cycling", True, ev, household=None, cohort=cohort)
        rotate = _rotation(ctx, ev, keep=("address",))
        k_total = 3 + int(ctx.r.expovariate(1 / 3))
        t = ctx.r.uniform(0, d * 0.8)
        local = person.email.split("@")[0]
        gmail = person.email.endswith("@gmail.com")
        for k in range(k_total):
            if t >= d:
                break
            if k == 0:
                email = person.email
            elif gmail and (ev == "naive" or ctx.r.random() < 0.6):
                email = gmail_variant(local, ctx.r, k)
            elif ev == "naive" and ctx.r.random() < 0.7:
                user, dom = person.email.split("@")
                email = f"{user}+{k}@{dom}"
            else:
                email = _fresh_email(person, ctx.r, k)
            if ctx.r.random() < 0.1:
                email = f" {email.upper()} " if ctx.r.random() < 0.5 else email.capitalize()
            device, phone, card, local_ip = _cycle_identity(ctx, person, rotate, k)
            acct = ctx.account()
            ctx.row(
                actor=actor,
                pattern="welcome_cycling",
                abuse=k > 0,
                t=t,
                code=ctx.welcome_code(t),
                email=email,
                phone=phone,
                addr=person.addr(ctx.r.randrange(6) if ev != "naive" else 0),
                card=card,
                device=device,
                local_ip=local_ip,
                ip=_abuse_ip(ctx, person, ev),
                ua=person.ua,
                account=acct,
                created=t - ctx.r.uniform(60, 1800),
            )
            used += 1
            t += _gap(ctx, ev, 1.5)


def _gen_referral_self(ctx: _Ctx, budget: int, referrer_codes: list[tuple[str, str]]) -> None:
    d = ctx.cfg.days * _DAY
    people = _persons(ctx, max(1, budget // 5))
    pool = _PersonPool(ctx)
    used = 0
    for person in people:
        if used >= budget:
            break
        ev = _evasion(ctx)
        actor = ctx.actor("referral_self", True, ev)
        referrer = ctx.account()
        code = f"REF-{referrer[-6:]}{ctx.r.choice('KMPQRTXZ')}"
        created = ctx.r.uniform(-120, 0.3 * ctx.cfg.days) * _DAY
        ctx.promos.add(code, "referral", "refer_a_friend", 15.0, created, None, limit=1, referrer=referrer)
        referrer_codes.append((code, referrer))
        # The referrer's own ordinary orders: the history a referee is compared with.
        t = max(created, 0.0) + ctx.r.uniform(0, 10) * _DAY
        for _ in range(1 + int(ctx.r.random() < 0.5)):
            ctx.row(
                actor=actor,
                pattern="referral_self",
                abuse=False,
                t=t,
                code=ctx.sitewide_code(t),
                email=person.email,
                phone=person.phone_text(),
                addr=person.addr(),
                card=person.card,
                device=person.device,
                local_ip=person.local_ip,
                ip=person.home_ip,
                ua=person.ua,
                account=referrer,
                created=created,
            )
            used += 1
            t += ctx.r.uniform(1, 6) * _DAY
        # Shared hard identities: naive keeps all, careful one or two, sophisticated exactly one.
        hard = ["device", "phone", "address", "local_ip", "card"]
        shared = set(hard) if ev == "naive" else set(ctx.r.sample(hard, 2 if ev == "careful" else 1))
        for k in range(2 + int(ctx.r.expovariate(1 / 2.5))):
            if t >= d:
                break
            fresh = pool.take()
            ctx.row(
                actor=actor,
                pattern="referral_self",
                abuse=True,
                t=t,
                code=code,
                email=_fresh_email(fresh, ctx.r, k),
                phone=person.phone_text(ctx.r.randrange(5)) if "phone" in shared else fresh.phone_text(),
                addr=person.addr(ctx.r.randrange(6)) if "address" in shared else fresh.addr(),
                card=person.card if "card" in shared else fresh.card,
                device=person.device if "device" in shared else fresh.device,
                local_ip=person.local_ip if "local_ip" in shared else fresh.local_ip,
                ip=_abuse_ip(ctx, person, ev) if ev != "naive" else person.home_ip,
                ua=person.ua,
                account=ctx.account(),
                created=t - ctx.r.uniform(60, 3600),
            )
            used += 1
            t += _gap(ctx, ev, 1.0)


def _gen_code_leak(ctx: _Ctx, budget: int, leaks: list[tuple[str, float]], cohort: str = "base") -> None:
    d = ctx.cfg.days * _DAY
    per_code = max(1, budget // max(1, len(leaks)))
    for code, leak_t in leaks:
        # Prior customers: one honest redemption before the leak, re-redeemed under new emails after.
        n_prior = max(2, per_code // 25)
        priors = _persons(ctx, n_prior)
        used = 0
        for person in priors:
            ev = _evasion(ctx)
            actor = ctx.actor("code_leak", True, ev, cohort=cohort)
            acct = ctx.account()
            t0 = ctx.r.uniform(max(0.0, leak_t - 20 * _DAY), leak_t)
            ctx.row(
                actor=actor,
                pattern="code_leak",
                abuse=False,
                t=t0,
                code=code,
                email=person.email,
                phone=person.phone_text(),
                addr=person.addr(),
                card=person.card,
                device=person.device,
                local_ip=person.local_ip,
                ip=person.home_ip,
                ua=person.ua,
                account=acct,
                created=t0 - 200 * _DAY,
            )
            used += 1
            rotate = _rotation(ctx, ev, keep=("address",))
            t = leak_t + ctx.r.expovariate(1 / 2.0) * _DAY
            for k in range(1, 2 + int(ctx.r.random() < 0.5)):
                if t >= d:
                    break
                device, phone, card, local_ip = _cycle_identity(ctx, person, rotate, k)
                ctx.row(
                    actor=actor,
                    pattern="code_leak",
                    abuse=True,
                    t=t,
                    code=code,
                    email=_fresh_email(person, ctx.r, k),
                    phone=phone,
                    addr=person.addr(ctx.r.randrange(6)),
                    card=card,
                    device=device,
                    local_ip=local_ip,
                    ip=_abuse_ip(ctx, person, ev),
                    ua=person.ua,
                    account=ctx.account(),
                    created=t - ctx.r.uniform(60, 900),
                )
                used += 1
                t += _gap(ctx, ev, 1.0)
        # Strangers: a wave that starts at the leak and decays over days.
        n_strangers = max(5, int((per_code - used) / 1.2))
        strangers = _persons(ctx, n_strangers)
        for person in strangers:
            ev = _evasion(ctx)
            actor = ctx.actor("code_leak", True, ev, cohort=cohort)
            t = leak_t + ctx.r.expovariate(1 / 3.0) * _DAY
            for k in range(1 + int(ctx.r.random() < 0.2)):
                if t >= d:
                    break
                guest = ctx.r.random() < 0.4
                ctx.row(
                    actor=actor,
                    pattern="code_leak",
                    abuse=True,
                    t=t,
                    code=code,
                    email=person.email if k == 0 else _fresh_email(person, ctx.r, k),
                    phone=person.phone_text(),
                    addr=person.addr(),
                    card=person.card,
                    device=person.device,
                    local_ip=person.local_ip,
                    ip=person.home_ip if ctx.r.random() < 0.6 else str(ctx.r.choice(ctx.cgnat_ips)),
                    ua=person.ua,
                    account=None if guest else ctx.account(),
                    created=None if guest else t - ctx.r.uniform(60, 5 * _DAY),
                )
                t += ctx.r.uniform(0.1, 3) * _DAY


def _gen_intro_reset(ctx: _Ctx, budget: int) -> None:
    d = ctx.cfg.days * _DAY
    people = _persons(ctx, max(1, budget // 3))
    used = 0
    for person in people:
        if used >= budget:
            break
        ev = _evasion(ctx)
        actor = ctx.actor("intro_reset", True, ev)
        rotate = _rotation(ctx, ev, keep=("card",))
        t = ctx.r.uniform(0, 0.4 * d)
        k = 0
        while t < d:
            email = (
                person.email
                if k == 0
                else (
                    gmail_variant(person.email.split("@")[0], ctx.r, k)
                    if person.email.endswith("@gmail.com") and ev == "naive"
                    else _fresh_email(person, ctx.r, k)
                )
            )
            device, phone, card, local_ip = _cycle_identity(ctx, person, rotate, k)
            ctx.row(
                actor=actor,
                pattern="intro_reset",
                abuse=k > 0,
                t=t,
                code="TRIAL30",
                email=email,
                phone=phone,
                addr=person.addr(0 if ev == "naive" else ctx.r.randrange(6)),
                card=card,
                device=device,
                local_ip=local_ip,
                ip=_abuse_ip(ctx, person, ev),
                ua=person.ua,
                account=ctx.account(),
                created=t - ctx.r.uniform(60, 600),
                cart=round(ctx.r.uniform(19, 39), 2),
            )
            used += 1
            k += 1
            t += (28 + ctx.r.uniform(0, 6)) * _DAY  # the intro month runs out, then a "new" subscriber


def _gen_sample_stacking(ctx: _Ctx, budget: int) -> None:
    d = ctx.cfg.days * _DAY
    people = _persons(ctx, max(1, budget // 5))
    pool = _PersonPool(ctx)
    used = 0
    for person in people:
        if used >= budget:
            break
        ev = _evasion(ctx)
        hh = f"h{ctx.next_actor + 1:07d}"
        actor = ctx.actor("sample_stacking", True, ev, household=hh)
        t = ctx.r.uniform(0, 0.7 * d)
        styles = list(range(6))
        ctx.r.shuffle(styles)
        for k in range(3 + int(ctx.r.expovariate(1 / 2.5))):
            if t >= d:
                break
            fake = pool.take()
            same_device = ev == "naive" or (ev == "careful" and ctx.r.random() < 0.5)
            guest = ctx.r.random() < 0.5
            ctx.row(
                actor=actor,
                pattern="sample_stacking",
                abuse=k > 0,
                t=t,
                code="FREESAMPLE",
                email=person.email if k == 0 else fake.email,
                phone=person.phone_text() if k == 0 or ctx.r.random() < 0.3 else fake.phone_text(),
                addr=person.addr(0 if k == 0 else styles[k % 6]),
                card=person.card if k == 0 else fake.card,
                device=person.device if same_device or k == 0 else fake.device,
                local_ip=person.local_ip if same_device or k == 0 else fake.local_ip,
                ip=_abuse_ip(ctx, person, ev),
                ua=person.ua,
                account=None if guest else ctx.account(),
                created=None if guest else t - 300.0,
                cart=round(ctx.r.uniform(0, 8), 2),
            )
            used += 1
            t += _gap(ctx, ev, 2.0)


def _gen_wholesale_guest(ctx: _Ctx, budget: int) -> None:
    d = ctx.cfg.days * _DAY
    people = _persons(ctx, max(1, budget // 2))
    used = 0
    for person in people:
        if used >= budget:
            break
        ev = _evasion(ctx)
        actor = ctx.actor("wholesale_guest", True, ev)
        t = ctx.r.uniform(0, d)
        for _ in range(1 + int(ctx.r.expovariate(1 / 1.5))):
            if t >= d:
                break
            ctx.row(
                actor=actor,
                pattern="wholesale_guest",
                abuse=True,
                t=t,
                code="WHOLESALE20" if ctx.r.random() < 0.6 else "VIP25",
                email=person.email,
                phone=person.phone_text(),
                addr=person.addr(),
                card=person.card,
                device=person.device,
                local_ip=person.local_ip,
                ip=_abuse_ip(ctx, person, ev),
                ua=person.ua,
                account=None,
                created=None,
                cart=round(ctx.r.lognormvariate(4.6, 0.5), 2),
            )
            used += 1
            t += _gap(ctx, ev, 4.0)


def _bot_code(ctx: _Ctx) -> tuple[str, str]:
    stem = ctx.r.choice(_BOT_CODE_STEMS)
    x = ctx.r.random()
    if x < 0.4:
        code = f"{stem}{ctx.r.randrange(5, 100)}"
    elif x < 0.7:
        code = "".join(ctx.r.choice("ABCDEFGHJKLMNPQRSTUVWXYZ23456789") for _ in range(8))
    else:
        code = f"REF-{ctx.r.randrange(10**6):06d}{ctx.r.choice('KMPQRTXZ')}"
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
    d = ctx.cfg.days * _DAY
    leaked = {c for c, _ in ctx.promos.leaks}
    valid_codes = [c for c in ctx.promos.by_code if not c.startswith("REF-") and c not in leaked]
    used = 0
    while used < budget:
        ev = _evasion(ctx)
        actor = ctx.actor("bot_spray", True, ev)
        dc_pool = _ip_text(_datacenter_ips(ctx.rng, 6, ctx.space)).tolist()
        farm_ua = ctx.r.choice(_UA_BOT_NAIVE) if ev != "sophisticated" else ctx.r.choice(_UA_DESKTOP)
        for _ in range(ctx.r.randrange(2, 6)):
            t = ctx.r.uniform(0, d)
            size = ctx.r.randrange(15, 120) if ev != "sophisticated" else ctx.r.randrange(5, 30)
            mean_gap = {"naive": 4.0, "careful": 20.0, "sophisticated": 240.0}[ev]
            for _ in range(size):
                if used >= budget or t >= d:
                    break
                hit = ctx.r.random() < 0.08
                code, ptype = (ctx.r.choice(valid_codes), "") if hit else _bot_code(ctx)
                if ev == "naive":
                    ip = ctx.r.choice(dc_pool)
                elif ev == "careful":
                    ip = ctx.r.choice(ctx.tor_ips) if ctx.r.random() < 0.5 else ctx.r.choice(ctx.proxy_ips)
                else:  # rotating residential proxies: absent from every feed
                    ip = str(_ip_text(_residential_ips(ctx.rng, 1, ctx.space))[0])
                x = ctx.r.random()
                local = f"{ctx.r.choice(_FIRST)}{ctx.r.randrange(10**5)}"
                email = (
                    None
                    if x < 0.2
                    else f"{local}@{ctx.r.choice(ctx.disposable)}"
                    if x < 0.8
                    else f"{local}@{ctx.r.choice(('gmail.com', 'outlook.com', 'yahoo.com'))}"
                )
                valid = code in ctx.promos.by_code
                ctx.row(
                    actor=actor,
                    pattern="bot_spray",
                    abuse=True,
                    t=t,
                    code=code,
                    promo_type=ptype or None,
                    email=email,
                    phone=None,
                    addr=None,
                    card=None,
                    device=_bot_device(ctx),
                    local_ip=None if ctx.r.random() < 0.7 else "10.0.2.15",
                    ip=ip,
                    ua=farm_ua,
                    account=None,
                    created=None,
                    cart=round(ctx.r.uniform(1, 60), 2),
                    outcome=None if not valid else ("redeemed" if ctx.r.random() < 0.4 else "abandoned"),
                )
                used += 1
                t += ctx.r.expovariate(1 / mean_gap)


def _gen_drift_bot_farm(ctx: _Ctx, budget: int, start_s: float) -> None:
    """An emulator farm on mobile proxies farming welcome codes with fresh accounts."""
    d = ctx.cfg.days * _DAY
    devices = [_py_uuid(ctx.r) for _ in range(12)]
    domain = "mailbox-" + "".join(ctx.r.choice("abcdefghijkmnpqrstuvwxyz") for _ in range(5)) + ".net"
    used = 0
    while used < budget:
        actor = ctx.actor("bot_spray", True, "sophisticated", cohort="drift")
        t = ctx.r.uniform(start_s, d)
        for _ in range(ctx.r.randrange(20, 60)):
            if used >= budget or t >= d:
                break
            valid = ctx.r.random() < 0.6
            code, ptype = (ctx.welcome_code(t), "welcome") if valid else _bot_code(ctx)
            ctx.row(
                actor=actor,
                pattern="bot_spray",
                abuse=True,
                t=t,
                code=code,
                promo_type=ptype,
                email=f"{ctx.r.choice(_FIRST)}.{ctx.r.choice(_LAST)}{ctx.r.randrange(10**4)}@{domain}",
                phone=None,
                addr=None,
                card=None,
                device=ctx.r.choice(devices),
                local_ip="10.0.2.16",
                ip=str(ctx.r.choice(ctx.cgnat_ips)),
                ua=UA_DRIFT_FARM,
                account=ctx.account(),
                created=t - ctx.r.uniform(5, 120),
                cart=round(ctx.r.uniform(20, 45), 2),
            )
            used += 1
            t += ctx.r.expovariate(1 / 90.0)


# --------------------------------------------------------------------------------------------------
# Legit traffic (vectorised)
# --------------------------------------------------------------------------------------------------


def _legit(
    ctx: _Ctx,
    budget: int,
    *,
    start_s: float = 0.0,
    mix: dict[str, tuple[float, float]] | None = None,
    cohort: str = "base",
    referrer_codes: list[tuple[str, str]] | None = None,
) -> pd.DataFrame:
    rng, d = ctx.rng, ctx.cfg.days * _DAY
    mix = mix or _LEGIT_MIX
    total_share = sum(s for s, _ in mix.values())
    kinds, counts = [], []
    for kind, (share, mean_k) in mix.items():
        n_act = max(1, round(budget * share / total_share / mean_k))
        kinds.append(kind)
        counts.append(n_act)
    kind_of = np.repeat(np.arange(len(kinds)), counts)
    n = len(kind_of)
    people = _make_people(rng, n, ctx.space)
    kind_names = np.asarray(kinds, dtype=object)[kind_of]
    is_kind = {k: kind_names == k for k in kinds}
    means = np.asarray([mix[k][1] for k in kinds])[kind_of]
    k_per = np.where(means <= 1.0, 1, 1 + rng.poisson(np.maximum(means - 1.0, 0.0)))

    # Households: 2-5 members share the first member's address and home network.
    hh_index = np.arange(n)
    if "legit_household" in is_kind:
        members = np.flatnonzero(is_kind["legit_household"])
        sizes = rng.integers(2, 6, len(members))
        head = np.repeat(np.arange(len(sizes)), sizes)[: len(members)]
        first_of = members[np.searchsorted(head, head, side="left")]
        hh_index[members] = first_of
        for attr in ("street_no", "street", "suffix", "unit", "city", "zip5", "home_ip"):
            arr = getattr(people, attr)
            arr[members] = arr[first_of]
        shared = rng.random(len(members)) < 0.3
        shared = shared[np.searchsorted(members, first_of)]  # decided per household (by its head)
        people.device2[members[shared]] = people.device[first_of[shared]]
        people.local_ip2[members[shared]] = people.local_ip[first_of[shared]]
    start_id = ctx.next_actor
    actor_ids = _obj(f"u{start_id + i + 1:07d}" for i in range(n))
    ctx.next_actor += n
    hh_ids = _obj(f"h{start_id + j + 1:07d}" for j in hh_index.tolist())
    trap_map = {
        "legit_household": "household",
        "legit_cgnat": "cgnat",
        "legit_vpn": "vpn",
        "legit_mover": "mover",
        "legit_typo": "typo",
    }
    for i in range(n):
        ctx.actors.append(
            {
                "actor_id": actor_ids[i],
                "pattern": kind_names[i],
                "is_abuser": False,
                "evasion": "none",
                "trap": trap_map.get(kind_names[i], "none"),
                "household_id": hh_ids[i],
                "cohort": cohort,
            }
        )

    # Accounts: most existed before the window; "new" customers join inside it.
    new_cust = is_kind.get("legit_new", np.zeros(n, bool)) | (rng.random(n) < 0.12)
    join = np.where(new_cust, rng.uniform(start_s, d, n), rng.uniform(-400, 0, n) * _DAY)
    join = np.maximum(join, -400 * _DAY)
    guest = new_cust & (rng.random(n) < 0.3)
    acct_num = ctx.next_account + 1 + np.arange(n)
    ctx.next_account += n
    account = _obj(
        None if g else f"acct_{a:08d}" for g, a in zip(guest.tolist(), acct_num.tolist(), strict=True)
    )
    wholesale = is_kind.get("legit_wholesale", np.zeros(n, bool))
    seg_choice = np.where(rng.random(n) < 0.7, "wholesale", "vip")
    segment = np.where(wholesale, seg_choice, "consumer").astype(object)
    segment[guest] = None

    # Events: repeat each actor, times uniform between max(join, start_s) and the end.
    a = np.repeat(np.arange(n), k_per)
    m = len(a)
    lo = np.maximum(join, start_s)[a]
    ts = np.where(new_cust[a] & (k_per[a] == 1), lo, lo + rng.random(m) * (d - lo))
    order = np.lexsort((ts, a))
    a, ts = a[order], ts[order]
    first_pos = np.r_[0, np.cumsum(k_per)[:-1]]
    is_first = np.zeros(m, bool)
    is_first[first_pos[k_per > 0]] = True

    def ev(arr: npt.NDArray[Any]) -> npt.NDArray[Any]:
        return arr[a]

    # Codes.
    x = rng.random(m)
    codes = np.empty(m, dtype=object)
    ptypes = np.empty(m, dtype=object)
    sw_starts = np.asarray([s for s, _, _ in ctx.promos.sitewide])
    sw_codes = np.asarray([c for _, _, c in ctx.promos.sitewide], dtype=object)
    sw_idx = np.clip(np.searchsorted(sw_starts, ts, side="right") - 1, 0, len(sw_codes) - 1)
    codes[:] = np.where(rng.random(m) < 0.8, sw_codes[sw_idx], "SAVE10")
    ptypes[:] = "sitewide"
    joined_inside = ev(new_cust) & is_first & ~ev(guest)
    welcome = joined_inside & (x < 0.6)
    wcode = np.where(
        ts < 0.4 * d,
        "WELCOME10",
        np.where(ts >= 0.65 * d, "WELCOME15", np.where(rng.random(m) < 0.5, "WELCOME10", "WELCOME15")),
    )
    codes[welcome], ptypes[welcome] = wcode[welcome], "welcome"
    if referrer_codes:
        ref = joined_inside & (x >= 0.6) & (x < 0.8)
        pick = rng.integers(0, len(referrer_codes), int(ref.sum()))
        codes[ref] = _obj(referrer_codes[i][0] for i in pick.tolist())
        ptypes[ref] = "referral"
    y = rng.random(m)
    intro = is_first & ~welcome & (ptypes == "sitewide") & (y < 0.05)
    codes[intro], ptypes[intro] = "TRIAL30", "intro_offer"
    sample = is_first & (ptypes == "sitewide") & (y >= 0.05) & (y < 0.09)
    codes[sample], ptypes[sample] = "FREESAMPLE", "free_sample"
    # The partner codes' intended audience uses them now and then, before and after any leak.
    leak_codes = [c for c, _ in ctx.promos.leaks]
    audience = (ptypes == "sitewide") & (y >= 0.09) & (y < 0.093) & ~ev(guest)
    if leak_codes:
        codes[audience] = np.asarray(leak_codes, dtype=object)[
            rng.integers(0, len(leak_codes), int(audience.sum()))
        ]
    ws = ev(wholesale) & ~ev(guest) & (rng.random(m) < 0.75)
    codes[ws] = np.where(ev(segment)[ws] == "vip", "VIP25", "WHOLESALE20")
    ptypes[ws] = "wholesale"
    discount = np.asarray([ctx.promos.by_code[c]["discount_value"] for c in codes.tolist()], dtype=float)
    referrer = _obj(
        ctx.promos.by_code[c]["referrer_account_id"] if p == "referral" else None
        for c, p in zip(codes.tolist(), ptypes.tolist(), strict=True)
    )

    # Identity per event.
    second = rng.random(m) < 0.3
    device = np.where(second, ev(people.device2), ev(people.device))
    local_ip = np.where(second, ev(people.local_ip2), ev(people.local_ip))
    ua = np.where(second, ev(people.ua2), ev(people.ua))
    u = rng.random(m)
    cgnat_pick = ctx.cgnat_ips[rng.integers(0, len(ctx.cgnat_ips), m)]
    other = _ip_text(_residential_ips(rng, m, ctx.space))
    ip = np.where(u < 0.65, ev(people.home_ip), np.where(u < 0.9, cgnat_pick, other))
    cg = is_kind.get("legit_cgnat", np.zeros(n, bool))[a]
    ip[cg] = np.where(rng.random(int(cg.sum())) < 0.9, cgnat_pick[cg], ev(people.home_ip)[cg])
    ua[cg] = np.asarray(_UA_MOBILE, dtype=object)[rng.integers(0, len(_UA_MOBILE), int(cg.sum()))]
    vpn = is_kind.get("legit_vpn", np.zeros(n, bool))[a]
    proxy_pool = np.asarray(ctx.proxy_ips, dtype=object)
    ip[vpn] = np.where(
        rng.random(int(vpn.sum())) < 0.85,
        proxy_pool[rng.integers(0, len(proxy_pool), int(vpn.sum()))],
        ev(people.home_ip)[vpn],
    )

    style = np.where(rng.random(m) < 0.9, ev(people.phone_style), rng.integers(0, 5, m))
    phone = _obj(format_phone(p, s) for p, s in zip(ev(people.phone).tolist(), style.tolist(), strict=True))
    phone[rng.random(m) < 0.05] = None
    email = ev(people.email).copy()
    vary = np.flatnonzero(rng.random(m) < 0.05)
    email[vary] = _obj(
        f" {e} " if i % 3 == 0 else e.upper() if i % 3 == 1 else e.capitalize()
        for i, e in enumerate(email[vary].tolist())
    )

    suffix_long = rng.random(m) < 0.15
    no, street, suffix = ev(people.street_no), ev(people.street), ev(people.suffix)
    line1 = _obj(
        _line1(int(q), s, int(f), bool(lg))
        for q, s, f, lg in zip(
            no.tolist(), street.tolist(), suffix.tolist(), suffix_long.tolist(), strict=True
        )
    )
    line2 = _obj(_unit_text(un) for un in ev(people.unit).tolist())
    city_idx = ev(people.city)
    city = np.asarray([c[0] for c in _CITIES], dtype=object)[city_idx]
    region = np.asarray([c[1] for c in _CITIES], dtype=object)[city_idx]
    zip5 = ev(people.zip5).copy()

    # Movers: a new address (and home network) from a per-actor move time on.
    if "legit_mover" in is_kind:
        mv = is_kind["legit_mover"]
        move_t = rng.uniform(0.2 * d, 0.8 * d, n)
        moved = mv[a] & (ts >= move_t[a])
        new = _make_people(rng, n, ctx.space)
        line1[moved] = _obj(
            _line1(int(q), s, int(f))
            for q, s, f in zip(
                new.street_no[a][moved].tolist(),
                new.street[a][moved].tolist(),
                new.suffix[a][moved].tolist(),
                strict=True,
            )
        )
        line2[moved] = _obj(_unit_text(un) for un in new.unit[a][moved].tolist())
        zip5[moved] = new.zip5[a][moved]
        ip[moved & (u < 0.65)] = new.home_ip[a][moved & (u < 0.65)]
    # Typos: a slip in the email or the street on some orders.
    if "legit_typo" in is_kind:
        slip = np.flatnonzero(is_kind["legit_typo"][a] & (rng.random(m) < 0.35))
        for j in slip.tolist():
            if ctx.r.random() < 0.5:
                user, dom = str(email[j]).strip().split("@")
                email[j] = (
                    f"{_typo(user, ctx.r)}@{dom}" if ctx.r.random() < 0.6 else f"{user}@{_typo(dom, ctx.r)}"
                )
            else:
                line1[j] = _typo(str(line1[j]), ctx.r)

    card_second = rng.random(m) < 0.1
    card = np.where(card_second, ev(people.card2), ev(people.card))
    bill_same = rng.random(m) < 0.85
    none_arr = np.full(m, None, dtype=object)
    cart = np.round(np.where(ev(wholesale), rng.lognormal(6.0, 0.5, m), rng.lognormal(4.1, 0.6, m)), 2)
    cart = np.where(ptypes == "free_sample", np.round(rng.uniform(0, 8, m), 2), cart)
    o = rng.random(m)
    outcome = np.where(o < 0.88, "redeemed", np.where(o < 0.97, "abandoned", "rejected")).astype(object)
    created = np.where(ev(guest), np.nan, ev(join) - np.where(ev(new_cust), rng.uniform(60, 3600, m), 0.0))
    frame = pd.DataFrame(
        {
            "ts": ts,
            "promo_code": codes,
            "promo_type": ptypes,
            "promo_valid": np.ones(m, bool),
            "discount_value": discount,
            "referrer_account_id": referrer,
            "account_id": ev(account),
            "is_guest": ev(guest),
            "account_created_at": created,
            "account_segment": ev(segment),
            "email": email,
            "phone": phone,
            "ship_line1": line1,
            "ship_line2": line2,
            "ship_city": city,
            "ship_region": region,
            "ship_postal_code": zip5,
            "ship_country": np.full(m, "US", dtype=object),
            "bill_line1": np.where(bill_same, line1, none_arr),
            "bill_line2": np.where(bill_same, line2, none_arr),
            "bill_city": np.where(bill_same, city, none_arr),
            "bill_region": np.where(bill_same, region, none_arr),
            "bill_postal_code": np.where(bill_same, zip5, none_arr),
            "bill_country": np.where(bill_same, "US", none_arr).astype(object),
            "payment_fingerprint": card,
            "payment_bin": ev(people.bin),
            "payment_last4": ev(people.last4),
            "device_id": device,
            "local_ip": local_ip,
            "ip": ip,
            "user_agent": ua,
            "cart_total": cart,
            "outcome": outcome,
            "actor_id": ev(actor_ids),
            "pattern": ev(kind_names),
            "is_abuse": np.zeros(m, bool),
        }
    )
    # Card bin/last4 follow the card actually used.
    frame.loc[card_second, "payment_last4"] = _obj(
        f"{(int(v) * 7 + 3) % 10_000:04d}" for v in frame.loc[card_second, "payment_last4"].tolist()
    )
    return frame


# --------------------------------------------------------------------------------------------------
# Labels
# --------------------------------------------------------------------------------------------------


def _labels(
    cfg: SimulationConfig,
    rng: np.random.Generator,
    ts_s: npt.NDArray[np.float64],
    is_abuse: npt.NDArray[np.bool_],
    actor_codes: npt.NDArray[np.int64],
    n_actors: int,
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.object_], npt.NDArray[np.object_], npt.NDArray[np.float64]]:
    """Return (event positions, label, source, label time in seconds) for the labeled attempts."""
    m = len(ts_s)
    caught_actor = rng.random(n_actors) >= cfg.never_labeled_share
    abuse_labeled = is_abuse & caught_actor[actor_codes] & (rng.random(m) < 0.9)
    legit_labeled = ~is_abuse & (rng.random(m) < cfg.legit_label_share)
    pos = np.flatnonzero(abuse_labeled | legit_labeled)
    truth = is_abuse[pos]
    flip = ~truth & (rng.random(len(pos)) < cfg.label_noise)
    label = np.where(truth | flip, "abuse", "legit").astype(object)
    abuse_sources = np.asarray(
        ["manual_review", "customer_support", "policy_audit", "feedback_api"], dtype=object
    )
    legit_sources = np.asarray(["policy_audit", "manual_review", "feedback_api"], dtype=object)
    source = np.where(
        truth,
        abuse_sources[rng.choice(4, len(pos), p=[0.45, 0.2, 0.15, 0.2])],
        legit_sources[rng.choice(3, len(pos), p=[0.5, 0.3, 0.2])],
    ).astype(object)
    median = np.asarray([cfg.label_delay_days.get(s, 3.0) for s in source.tolist()], dtype=float)
    delay = median * np.exp(rng.normal(0.0, 0.8, len(pos))) * _DAY
    label_ts = ts_s[pos] + np.maximum(delay, 3600.0)
    return pos, label, source, label_ts


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


def simulate_history(config: SimulationConfig) -> SimulatedHistory:
    """Generate a labeled redemption history; the same config always yields identical frames."""
    cfg = config
    rng = np.random.default_rng(cfg.seed)
    r = random.Random(cfg.seed)
    space = _ip_space()
    promos = _base_promotions(cfg)
    tor = _ip_text(space.tor[rng.integers(0, len(space.tor), 40)] + rng.integers(1, 255, 40))
    proxy = _ip_text(space.proxy[rng.integers(0, len(space.proxy), 60)] + rng.integers(1, 255, 60))
    cgnat_base = space.mobile[rng.integers(0, len(space.mobile), 14)]
    cgnat = _ip_text(cgnat_base + rng.integers(256, 65_280, 14))
    disposable = tuple(sorted(d for d in _DISPOSABLE_BLOCKLIST if d.count(".") == 1 and len(d) <= 20))[::37]
    ctx = _Ctx(
        cfg, rng, r, space, promos, sorted(set(tor.tolist())), sorted(set(proxy.tolist())), cgnat, disposable
    )

    n_bot = int(cfg.n_events * cfg.bot_share)
    rest = cfg.n_events - n_bot
    n_abuse = int(rest * cfg.abuse_share)
    referrer_codes: list[tuple[str, str]] = []
    # Legit referrers' codes first so legit referees can use them.
    for _ in range(max(3, cfg.n_events // 2000)):
        acct = ctx.account()
        code = f"REF-{acct[-6:]}{r.choice('ABCDEFGHJ')}"
        promos.add(code, "referral", "refer_a_friend", 15.0, r.uniform(-200, 0) * _DAY, None, referrer=acct)
        referrer_codes.append((code, acct))
    legit_ref_codes = list(referrer_codes)
    _gen_welcome_cycling(ctx, int(n_abuse * _ABUSE_MIX["welcome_cycling"]))
    _gen_referral_self(ctx, int(n_abuse * _ABUSE_MIX["referral_self"]), referrer_codes)
    _gen_code_leak(ctx, int(n_abuse * _ABUSE_MIX["code_leak"]), promos.leaks)
    _gen_intro_reset(ctx, int(n_abuse * _ABUSE_MIX["intro_reset"]))
    _gen_sample_stacking(ctx, int(n_abuse * _ABUSE_MIX["sample_stacking"]))
    _gen_wholesale_guest(ctx, int(n_abuse * _ABUSE_MIX["wholesale_guest"]))
    _gen_bot_spray(ctx, n_bot)

    drift = cfg.drift or DriftConfig()
    start_drift = drift.start_day * _DAY
    extra = int(cfg.n_events * drift.intensity)
    leak_rows: list[tuple[str, float]] = list(promos.leaks)
    if drift.kind == "new_leak":
        code = "PARTNER50-DRIFT"
        promos.add(code, "sitewide", "partner_drift", 50.0, start_drift - 10 * _DAY, None, limit=1)
        promos.leaks.append((code, start_drift))
        leak_rows.append((code, start_drift))
        _gen_code_leak(ctx, extra, [(code, start_drift)], cohort="drift")
    elif drift.kind == "new_bot_farm":
        _gen_drift_bot_farm(ctx, extra, start_drift)

    abuse_frame = pd.DataFrame.from_records(ctx.rows, columns=list(_ROW_COLUMNS))
    n_legit = max(0, cfg.n_events - len(abuse_frame) - (extra if drift.kind != "none" else 0))
    frames = [abuse_frame, _legit(ctx, n_legit, referrer_codes=legit_ref_codes)]
    if drift.kind == "seasonal_legit":
        seasonal_mix = {"legit_household": (0.5, 3.0), "legit_cgnat": (0.35, 2.0), "legit_new": (0.15, 1.0)}
        frames.append(
            _legit(
                ctx,
                extra,
                start_s=start_drift,
                mix=seasonal_mix,
                cohort="drift",
                referrer_codes=legit_ref_codes,
            )
        )
    frame = pd.concat(frames, ignore_index=True)
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

    truth = pd.DataFrame(
        {
            "request_id": frame["request_id"].astype(object),
            "actor_id": frame["actor_id"].astype(object),
            "pattern": frame["pattern"].astype(object),
            "is_abuse": frame["is_abuse"].astype(bool),
        }
    )
    actors = pd.DataFrame(
        ctx.actors, columns=["actor_id", "pattern", "is_abuser", "evasion", "trap", "household_id", "cohort"]
    )
    actors["is_abuser"] = actors["is_abuser"].astype(bool)
    actor_codes = pd.Categorical(truth["actor_id"], categories=actors["actor_id"]).codes.astype(np.int64)
    pos, label, source, label_s = _labels(
        cfg,
        np.random.default_rng(cfg.seed + 1),
        ts_s,
        truth["is_abuse"].to_numpy(bool),
        actor_codes,
        len(actors),
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

    prom = pd.DataFrame(promos.rows)
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
            "leaked_at": _to_utc(cfg.start, np.asarray([t for _, t in leak_rows], dtype=float)),
        }
    )
    feed_date = (cfg.start + pd.Timedelta(days=cfg.days)).date().isoformat()
    return SimulatedHistory(
        events=events,
        labels=labels,
        promotions=prom,
        actors=actors,
        truth=truth,
        leaks=leaks,
        tor_exits=ctx.tor_ips,
        proxies=ctx.proxy_ips,
        feed_date=feed_date,
    )


def write_history(history: SimulatedHistory, raw_dir: Path) -> dict[str, Path]:
    """Validate and write the history's parquet files and simulated IP feeds under ``raw_dir``.

    Raw identity is written only here (``data/raw`` is the one place it may live).
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
    )
    tor_path = raw_dir / "ipintel" / "tor_exits.txt"
    tor_path.write_text(header.format(what="Tor exit") + "\n".join(history.tor_exits) + "\n")
    proxy_path = raw_dir / "ipintel" / "proxies.txt"
    proxy_path.write_text(header.format(what="VPN/proxy exit") + "\n".join(history.proxies) + "\n")
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
