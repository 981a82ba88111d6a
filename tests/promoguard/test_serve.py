"""``promoguard serve --host``: the service listens on the interface it is given, loopback by default."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

import promoguard.demo
from promoguard.cli import app
from promoguard.demo import free_port, start_service, stop_service, wait_ready
from promoguard.settings import Settings


def _outward_address() -> str | None:
    """This machine's address on a non-loopback interface, None when it has none."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.connect(("10.255.255.255", 1))  # no packet is sent: this only picks a route
            address = str(sock.getsockname()[0])
    except OSError:
        return None
    return None if address.startswith("127.") else address


def test_serve_hands_the_host_to_the_service_and_defaults_to_loopback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[dict[str, Any]] = []

    def fake_run_service(settings: Settings, **kwargs: Any) -> int:
        seen.append(kwargs)
        return 0

    monkeypatch.setattr(promoguard.demo, "run_service", fake_run_service)
    for args in ([], ["--host", "0.0.0.0"]):
        result = CliRunner().invoke(app, ["serve", "--root", str(tmp_path), *args], catch_exceptions=False)
        assert result.exit_code == 0, result.output
    assert [k["host"] for k in seen] == ["127.0.0.1", "0.0.0.0"]


@pytest.mark.slow
def test_a_service_on_every_interface_answers_on_an_outward_address(tmp_path: Path) -> None:
    address = _outward_address()
    if address is None:
        pytest.skip("this machine has no non-loopback IPv4 address to reach the service on")
    settings = Settings.from_env({}, root=tmp_path)
    port = free_port()
    proc = start_service(settings, port, host="0.0.0.0", extra_env={"PROMOGUARD_REQUIRE_API_KEY": "false"})
    try:
        wait_ready(f"http://127.0.0.1:{port}", proc)
        assert httpx.get(f"http://{address}:{port}/livez", timeout=5.0).status_code == 200
    finally:
        stop_service(proc)


def test_free_ports_lie_below_the_range_outgoing_connections_take_theirs_from() -> None:
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    ports = {free_port() for _ in range(20)}
    assert all(1024 <= p < low for p in ports)
    assert len(ports) > 1  # random, so that two tests starting services at once do not pick the same
    for port in ports:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", port))
