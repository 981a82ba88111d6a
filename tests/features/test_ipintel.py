"""IP intelligence: offline ranges and feeds, the HTTP provider against a local server, the URL guard."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pandas as pd
import pytest

import features.ipintel as ipintel
from features.ipintel import (
    CombinedIpIntel,
    HttpIpIntel,
    IpIntel,
    OfflineIpIntel,
    check_intel_url,
    cloud_ranges,
    read_feed,
)


class _IntelHandler(BaseHTTPRequestHandler):
    """Answers like an IPASIS-style API; ``/slow/...`` sleeps past the client timeout."""

    seen: list[tuple[str, str | None]] = []  # noqa: RUF012 - shared by the test server on purpose

    def do_GET(self) -> None:
        type(self).seen.append((self.path, self.headers.get("X-API-Key")))
        if self.path.startswith("/slow/"):
            time.sleep(0.6)
        if self.path.startswith("/broken/"):
            self.send_response(500)
            self.end_headers()
            return
        if self.path == "/feed.txt":
            body = b"# tor exits\n198.51.100.9\n2001:db8:dead::/48 # a whole block\n"
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
        else:
            ip = self.path.rsplit("/", 1)[-1]
            payload = {"ip": ip, "security": {"is_proxy": ip.endswith(".66"), "is_vpn": False,
                                              "is_tor": ip.endswith(".99"), "is_hosting": ip.endswith(".7")},
                       "asn": {"org": "Example Hosting"}}
            body = json.dumps(payload).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:  # silence the default stderr access log
        return


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _IntelHandler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture(scope="module")
def offline() -> OfflineIpIntel:
    return OfflineIpIntel(tor_exit_list=["185.220.101.7"], proxy_list=["45.0.0.0/16"])


# --- offline ----------------------------------------------------------------------------------------


def test_datacenter_ip_from_the_embedded_ranges_is_flagged_with_its_provider(offline: OfflineIpIntel) -> None:
    _version, ranges = cloud_ranges()
    for wanted in ("aws", "gcp", "azure"):
        cidr, provider = next((c, p) for c, p in ranges if p == wanted and ":" not in c)
        first = cidr.split("/")[0]
        intel = offline.lookup(first)
        assert intel.is_datacenter and intel.provider == provider, cidr


def test_ipv6_datacenter_range_is_flagged(offline: OfflineIpIntel) -> None:
    _version, ranges = cloud_ranges()
    cidr = next(c for c, _p in ranges if ":" in c)
    address = cidr.split("/")[0].rstrip(":") + "::5"
    assert offline.lookup(address).is_datacenter


def test_residential_looking_ip_is_not_flagged(offline: OfflineIpIntel) -> None:
    intel = offline.lookup("73.162.45.10")
    assert intel == IpIntel(source="offline")


def test_invalid_ip_is_not_looked_up(offline: OfflineIpIntel) -> None:
    assert offline.lookup("not-an-ip").source == "invalid"
    assert offline.lookup("").source == "invalid"


def test_tor_and_proxy_feed_files_with_comments_and_cidrs(tmp_path: Path) -> None:
    tor = tmp_path / "tor.txt"
    tor.write_text("# exits, dated 2026-01-01\n185.220.101.7\n\n2001:db8:1::/48  # v6 block\n")
    proxy = tmp_path / "proxy.txt"
    proxy.write_text("45.0.0.0/16\nnot-an-ip\n")
    intel = OfflineIpIntel(tor_exit_list=str(tor), proxy_list=str(proxy), include_cloud=False)
    assert intel.lookup("185.220.101.7").is_tor
    assert not intel.lookup("185.220.101.8").is_tor
    assert intel.lookup("2001:db8:1:ffff::1").is_tor
    assert intel.lookup("45.0.200.1").is_proxy_or_vpn
    assert not intel.lookup("45.1.0.1").is_proxy_or_vpn
    assert intel.feeds_loaded == {"cloud": 0, "tor": 2, "proxy": 1}
    assert "tor:2" in intel.data_version


def test_missing_feeds_are_loud_once(caplog: pytest.LogCaptureFixture) -> None:
    ipintel.reset_warn_once()
    with caplog.at_level(logging.WARNING, logger="features.ipintel"):
        first = OfflineIpIntel(include_cloud=False)
        OfflineIpIntel(include_cloud=False)
    warnings = [r for r in caplog.records if "no tor and no proxy feed" in r.getMessage()]
    assert len(warnings) == 1
    assert first.feeds_loaded["tor"] == 0 and first.feeds_loaded["proxy"] == 0


def test_unreadable_feed_names_the_source(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"missing\.txt"):
        OfflineIpIntel(tor_exit_list=str(tmp_path / "missing.txt"), include_cloud=False)
    with pytest.raises(ValueError, match="scheme"):
        read_feed("ftp://example.org/tor.txt")


def test_feed_can_be_read_from_an_http_url(server: str) -> None:
    intel = OfflineIpIntel(
        tor_exit_list=f"{server}/feed.txt", proxy_list=["45.0.0.0/16"], include_cloud=False
    )
    assert intel.lookup("198.51.100.9").is_tor
    assert intel.lookup("2001:db8:dead:1::1").is_tor


# --- HTTP provider ----------------------------------------------------------------------------------


def test_http_provider_reads_flags_and_sends_the_api_key(server: str) -> None:
    client = HttpIpIntel(f"{server}/v1", api_key="k-123", allow_loopback_for_tests=True)
    intel = client.lookup("203.0.113.7")
    assert intel.is_datacenter and not intel.is_tor and intel.provider == "Example Hosting"
    assert intel.source == "http"
    assert client.lookup("203.0.113.99").is_tor
    assert client.lookup("203.0.113.66").is_proxy_or_vpn
    assert ("/v1/203.0.113.7", "k-123") in _IntelHandler.seen


def test_http_cache_hit_avoids_a_second_request(server: str) -> None:
    client = HttpIpIntel(f"{server}/cached", allow_loopback_for_tests=True)
    first = client.lookup("198.51.100.23")
    before = sum(p == "/cached/198.51.100.23" for p, _ in _IntelHandler.seen)
    second = client.lookup(" 198.51.100.23 ")
    after = sum(p == "/cached/198.51.100.23" for p, _ in _IntelHandler.seen)
    assert first == second and before == after == 1
    assert client.requests_sent == 1


def test_http_cache_entries_expire(server: str) -> None:
    client = HttpIpIntel(f"{server}/ttl", cache_ttl_s=0.0, allow_loopback_for_tests=True)
    client.lookup("198.51.100.24")
    client.lookup("198.51.100.24")
    assert client.requests_sent == 2


def test_http_timeout_fails_open_or_closed(server: str) -> None:
    slow = f"{server}/slow"
    open_client = HttpIpIntel(slow, timeout_s=0.1, fail_open=True, allow_loopback_for_tests=True)
    closed_client = HttpIpIntel(slow, timeout_s=0.1, fail_open=False, allow_loopback_for_tests=True)
    opened = open_client.lookup("198.51.100.1")
    closed = closed_client.lookup("198.51.100.1")
    assert opened == IpIntel(source="http-error")
    assert closed.is_proxy_or_vpn and closed.source == "http-error"


def test_http_server_error_is_not_cached(server: str) -> None:
    client = HttpIpIntel(f"{server}/broken", fail_open=True, allow_loopback_for_tests=True)
    assert client.lookup("198.51.100.2").source == "http-error"
    client.lookup("198.51.100.2")
    assert client.requests_sent == 2


def test_http_provider_never_sends_invalid_input(server: str) -> None:
    client = HttpIpIntel(f"{server}/v1", allow_loopback_for_tests=True)
    assert client.lookup("../../admin").source == "invalid"
    assert client.requests_sent == 0


def test_combined_asks_http_only_when_offline_is_clean(server: str, offline: OfflineIpIntel) -> None:
    client = HttpIpIntel(f"{server}/combo", allow_loopback_for_tests=True)
    combined = CombinedIpIntel(offline, client)
    assert combined.lookup("185.220.101.7").source == "offline"  # Tor per the offline feed
    assert client.requests_sent == 0
    remote = combined.lookup("203.0.113.66")
    assert remote.is_proxy_or_vpn and remote.source == "offline+http"


@pytest.mark.parametrize(
    "url",
    ["file:///etc/passwd", "ftp://example.org/ip", "http://127.0.0.1:8080", "http://10.0.0.1/api",
     "http://169.254.169.254/latest/meta-data", "http://[::1]:9000", "http://192.168.1.1",
     "http://[fe80::1]", "http://224.0.0.1", "http://0.0.0.0", "http://localhost:1234", "https://", "gopher://x"],
)
def test_url_guard_refuses_non_http_and_internal_targets(url: str) -> None:
    with pytest.raises(ValueError, match="ipintel_http_url"):
        check_intel_url(url)


def test_loopback_escape_hatch_admits_loopback_only() -> None:
    assert check_intel_url("http://127.0.0.1:9/v1/", allow_loopback_for_tests=True) == "http://127.0.0.1:9/v1"
    with pytest.raises(ValueError):
        check_intel_url("http://10.0.0.1", allow_loopback_for_tests=True)
    with pytest.raises(ValueError):
        check_intel_url("http://169.254.169.254", allow_loopback_for_tests=True)


def test_url_guard_accepts_a_public_literal_address() -> None:
    assert check_intel_url("https://8.8.8.8/lookup") == "https://8.8.8.8/lookup"


def test_http_failure_log_does_not_contain_the_ip(server: str, caplog: pytest.LogCaptureFixture) -> None:
    client = HttpIpIntel(f"{server}/broken", allow_loopback_for_tests=True)
    with caplog.at_level(logging.DEBUG):
        client.lookup("198.51.100.77")
    assert caplog.records
    assert all("198.51.100.77" not in r.getMessage() for r in caplog.records)


def test_a_dated_feed_flags_an_ip_only_from_the_time_it_was_listed(tmp_path: Path) -> None:
    from features.identity import IdentityConfig, IdentityResolver, resolve_frame

    feed = tmp_path / "tor.txt"
    feed.write_text("# dated feed\n203.0.113.9 2026-06-10T00:00:00Z\n203.0.113.10\n", encoding="utf-8")
    intel = OfflineIpIntel(tor_exit_list=str(feed), proxy_list=["198.51.100.0/24"], include_cloud=False)
    assert intel.feeds_loaded["tor"] == 2
    events = pd.DataFrame(
        {
            "request_id": ["before", "after", "undated"],
            "ts": pd.to_datetime(["2026-06-09", "2026-06-11", "2026-06-01"], utc=True),
            "ip": ["203.0.113.9", "203.0.113.9", "203.0.113.10"],
        }
    )
    resolver = IdentityResolver(IdentityConfig(pepper="p" * 32, dev_pepper=True), intel)
    flags = resolve_frame(events, resolver).set_index("request_id")["ip_is_tor"].to_dict()
    assert flags == {"before": False, "after": True, "undated": True}
    # Serving asks now, after every listing: the flag is raised.
    assert intel.lookup("203.0.113.9").is_tor is True


def test_a_feed_line_with_a_broken_date_is_skipped_and_counted(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    feed = tmp_path / "tor.txt"
    feed.write_text("203.0.113.9 not-a-date\n203.0.113.10 2026-06-10\n", encoding="utf-8")
    with caplog.at_level("WARNING"):
        intel = OfflineIpIntel(tor_exit_list=str(feed), proxy_list=["198.51.100.0/24"], include_cloud=False)
    assert intel.feeds_loaded["tor"] == 1
    assert "1 line(s)" in caplog.text
