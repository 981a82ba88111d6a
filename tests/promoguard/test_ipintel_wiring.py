"""PROMOGUARD_IPINTEL_URL reaches the identity resolver of every deployable through one helper.

The HTTP provider is exercised against a stdlib server on 127.0.0.1 (which is why the helper takes
``allow_loopback_for_tests``); the batch identity step and offline scoring are checked to build their
resolver through the same helper as the service.
"""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import pytest
from typer.testing import CliRunner

import config.resolver
from config.resolver import identity_resolver
from features.identity import IdentityResolver
from features.ipintel import CombinedIpIntel, HttpIpIntel
from promoguard.settings import Settings

#: A documentation address: in no cloud range and no feed, so only the HTTP provider can flag it.
PROXY_IP = "198.51.100.7"
CLEAN_IP = "198.51.100.8"


class _Intel(BaseHTTPRequestHandler):
    """``GET /v1/<ip>``: a VPN exit for PROXY_IP, nothing for any other address; counts the calls."""

    asked: ClassVar[list[str]] = []

    def do_GET(self) -> None:
        ip = self.path.rsplit("/", 1)[-1]
        type(self).asked.append(ip)
        answer = {"is_vpn": True, "asn": {"org": "Example VPN"}} if ip == PROXY_IP else {}
        body = json.dumps(answer).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        """Keep the test output quiet."""


@pytest.fixture
def intel_server() -> Iterator[tuple[str, list[str]]]:
    """The local IP intelligence API; yields its base URL and the IPs it was asked about."""
    _Intel.asked = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Intel)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1", _Intel.asked
    finally:
        server.shutdown()
        server.server_close()


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _settings(tmp_path: Path, **env: str) -> Settings:
    return Settings.from_env(env, root=tmp_path)


def test_the_resolver_consults_the_configured_http_provider(
    intel_server: tuple[str, list[str]], tmp_path: Path
) -> None:
    url, asked = intel_server
    settings = _settings(tmp_path, PROMOGUARD_IPINTEL_URL=url, PROMOGUARD_IPINTEL_API_KEY="k-1")
    resolver = identity_resolver(settings, allow_loopback_for_tests=True)
    flagged = resolver.resolve({"ip": PROXY_IP})
    assert flagged.ip_is_proxy_or_vpn and flagged.ip_provider == "Example VPN"
    clean = resolver.resolve({"ip": CLEAN_IP})
    assert not clean.ip_is_proxy_or_vpn and not clean.ip_is_datacenter
    assert asked == [PROXY_IP, CLEAN_IP]
    # Answers are cached: the API is asked once per address.
    resolver.resolve({"ip": PROXY_IP})
    assert asked == [PROXY_IP, CLEAN_IP]


@pytest.mark.parametrize(("fail_open", "flagged"), [("true", False), ("false", True)])
def test_with_the_provider_down_the_resolver_follows_the_fail_open_setting(
    fail_open: str, flagged: bool, tmp_path: Path
) -> None:
    settings = _settings(
        tmp_path,
        PROMOGUARD_IPINTEL_URL=f"http://127.0.0.1:{_closed_port()}/v1",
        PROMOGUARD_IPINTEL_FAIL_OPEN=fail_open,
        PROMOGUARD_IPINTEL_TIMEOUT_S="0.5",
    )
    resolver = identity_resolver(settings, allow_loopback_for_tests=True)
    assert resolver.resolve({"ip": PROXY_IP}).ip_is_proxy_or_vpn is flagged


def test_without_a_url_no_http_provider_is_built_and_internal_hosts_are_refused(tmp_path: Path) -> None:
    offline_only = identity_resolver(_settings(tmp_path))
    assert not isinstance(offline_only.ipintel, CombinedIpIntel)
    # The loopback allowance is for tests only: settings alone never aim the service at internal hosts.
    for url in ("http://127.0.0.1:8080/v1", "http://169.254.169.254/latest", "http://10.0.0.5/v1"):
        with pytest.raises(ValueError, match="not a public address"):
            identity_resolver(_settings(tmp_path, PROMOGUARD_IPINTEL_URL=url))


def test_a_public_url_and_the_other_settings_reach_the_provider(tmp_path: Path) -> None:
    # A literal public address: building the client opens no connection.
    settings = _settings(
        tmp_path, PROMOGUARD_IPINTEL_URL="https://8.8.8.8/v1/", PROMOGUARD_IPINTEL_FAIL_OPEN="false",
        PROMOGUARD_IPINTEL_TIMEOUT_S="0.3",
    )
    intel = identity_resolver(settings).ipintel
    assert isinstance(intel, CombinedIpIntel) and isinstance(intel.http, HttpIpIntel)
    assert intel.http.url == "https://8.8.8.8/v1" and intel.http.fail_open is False
    intel.http.close()


class _Built(Exception):
    """Raised by the spy once the resolver is built, to stop a command there."""


def _write_tiny_history(root: Path) -> None:
    from simulation.simulate import SimulationConfig, simulate_history, write_history

    write_history(simulate_history(SimulationConfig(n_events=1_000, days=14, seed=3)), root / "data" / "raw")


def test_the_batch_identity_step_and_offline_scoring_build_the_resolver_from_settings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from promoguard.cli import app
    from promoguard.offline import score_events

    _write_tiny_history(tmp_path)
    seen: list[Settings] = []

    def spy(settings: Settings, **kwargs: bool) -> IdentityResolver:
        seen.append(settings)
        raise _Built

    monkeypatch.setattr(config.resolver, "identity_resolver", spy)
    monkeypatch.setenv("PROMOGUARD_IPINTEL_URL", "https://8.8.8.8/v1")
    result = CliRunner().invoke(app, ["features", "build", "--root", str(tmp_path)])
    assert isinstance(result.exception, _Built), result.output
    with pytest.raises(_Built):
        score_events(Settings.from_env({}, root=tmp_path), tmp_path / "data" / "raw" / "events.parquet")
    assert [s.ipintel_http_url for s in seen] == ["https://8.8.8.8/v1", None]
    assert all(s.root == tmp_path.resolve() for s in seen)
