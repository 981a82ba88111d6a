"""Start the scoring service as a process (for `promoguard serve`, the demo, benchmarks and e2e tests)."""

from __future__ import annotations

import copy
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import httpx
from rich.console import Console

from promoguard.settings import Settings

SERVICE = "serving.service:PromoGuard"


#: The first port of Linux's default ephemeral range, when /proc does not say.
_EPHEMERAL_LOW_DEFAULT = 32768


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return _EPHEMERAL_LOW_DEFAULT


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody is bound to now, for a service about to be started on it.

    Chosen at random below the kernel's ephemeral range: a port from ``bind((host, 0))`` comes from the
    range the kernel also takes the local ports of outgoing connections from, so any HTTP, Redis or
    PostgreSQL client on the machine could take it before the service binds it (it happened: four
    service starts failed while a demo ran beside the test suite).
    """
    low = _ephemeral_low()
    rng = random.SystemRandom()
    for _ in range(200):
        port = rng.randrange(max(1024, low - 12_000), low)
        with socket.socket() as sock:
            try:
                sock.bind((host, port))
            except OSError:
                continue
            return port
    with socket.socket() as sock:  # that whole stretch taken: let the kernel choose after all
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def service_env(settings: Settings, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment the service process gets: settings root, registry and model, telemetry off, overrides.

    The registry and the model name are passed explicitly so that the service loads the very model the
    command line trains and promotes under these settings.
    """
    env = {
        **os.environ,
        "PROMOGUARD_ROOT": str(settings.root),
        "PROMOGUARD_MLFLOW_URI": settings.mlflow_tracking_uri,
        "PROMOGUARD_MODEL_NAME": settings.model_name,
        "BENTOML_DO_NOT_TRACK": "true",
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "GX_ANALYTICS_ENABLED": "false",
    }
    env.setdefault("BENTOML_HOME", str(settings.data_dir / "bentoml"))
    if settings.tor_exit_source:
        env.setdefault("PROMOGUARD_TOR_EXIT_LIST", settings.tor_exit_source)
    if settings.proxy_source:
        env.setdefault("PROMOGUARD_PROXY_LIST", settings.proxy_source)
    env.update(extra or {})
    return env


def start_service(
    settings: Settings,
    port: int,
    *,
    extra_env: Mapping[str, str] | None = None,
    log: IO[bytes] | None = None,
    service: str = SERVICE,
    host: str = "127.0.0.1",
) -> subprocess.Popen[bytes]:
    """Launch `bentoml serve` on host:port in its own process group (so it can be stopped whole)."""
    bentoml_cli = Path(sys.executable).parent / "bentoml"
    return subprocess.Popen(
        [str(bentoml_cli), "serve", service, "--port", str(port), "--host", host],
        cwd=settings.root,
        env=service_env(settings, extra_env),
        stdout=log,
        stderr=subprocess.STDOUT if log is not None else None,
        start_new_session=True,
    )


def wait_ready(url: str, proc: subprocess.Popen[bytes], timeout_s: float = 120.0) -> None:
    """Poll /readyz until it answers 200; raise RuntimeError naming the reason otherwise."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the service exited with status {proc.returncode} before it was ready")
        try:
            if httpx.get(f"{url}/readyz", timeout=1.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise RuntimeError(f"the service did not become ready at {url} within {timeout_s:.0f}s")


def stop_service(proc: subprocess.Popen[bytes], timeout_s: float = 15.0) -> None:
    """Stop the service's whole process group, politely first."""
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=timeout_s)


@contextmanager
def running_service(
    settings: Settings,
    port: int,
    *,
    extra_env: Mapping[str, str] | None = None,
    log: IO[bytes] | None = None,
    service: str = SERVICE,
) -> Iterator[str]:
    """A started, ready service (``module:Class``) for the duration of the block; yields its base URL."""
    proc = start_service(settings, port, extra_env=extra_env, log=log, service=service)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, proc)
        yield url
    finally:
        stop_service(proc)


def example_request(settings: Settings) -> dict[str, Any]:
    """The API document's example /score body, with a welcome code from the world's promotions table."""
    from serving.openapi import REQUEST_EXAMPLE

    body = copy.deepcopy(REQUEST_EXAMPLE)
    body["request_id"] = f"demo-{int(time.time())}"
    promotions = settings.raw_dir / "promotions.parquet"
    if promotions.exists():
        import pandas as pd

        promos = pd.read_parquet(promotions)
        welcome = promos[promos["promo_type"] == "welcome"]
        if len(welcome):
            body["promotion"]["code"] = str(welcome["promo_code"].iloc[0])
    return body


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def port_in_use(port: int) -> bool:
    """True when something already accepts connections on 127.0.0.1:port."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def run_service(
    settings: Settings, *, port: int, demo: bool, console: Console, host: str = "127.0.0.1"
) -> int:
    """Run the service in the foreground on ``host`` (``0.0.0.0``: every interface, behind a proxy or in
    a container); with ``demo``, show one scored request and a curl command."""
    if port_in_use(port):
        console.print(f"[red]port {port} is already in use[/red]: stop what listens there or pass --port")
        return 2
    extra = {"PROMOGUARD_REQUIRE_API_KEY": "false"} if demo and not settings.api_keys else {}
    proc = start_service(settings, port, extra_env=extra, host=host)
    # Every interface includes the loopback one; a named interface is asked directly.
    url = f"http://{'127.0.0.1' if host in ('0.0.0.0', '::', '') else host}:{port}"
    # The service runs in its own process group (so Ctrl-C reaches it once, through us); a SIGTERM
    # to this command must stop it too instead of leaving an orphan holding the port.
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        wait_ready(url, proc)
        if demo:
            body = example_request(settings)
            answer = httpx.post(f"{url}/score", json=body, timeout=10.0)
            console.print(f"[bold]POST {url}/score[/bold] -> {answer.status_code}")
            console.print_json(answer.text)
            body["request_id"] = "try-me-1"
            console.print(
                "\nThe service is answering on localhost. Try it: the same shopper claims this "
                "one-per-customer welcome code a second time while the first attempt holds its one use, so "
                "expect the per-customer cap to refuse it (CUSTOMER_CAP_REACHED):"
            )
            console.print(
                f"curl -s -X POST {url}/score -H 'Content-Type: application/json' -d '{json.dumps(body)}'",
                soft_wrap=True,
                highlight=False,
            )
            console.print("\nPress Ctrl-C to stop.")
        return proc.wait()
    except KeyboardInterrupt:
        return 0
    finally:
        stop_service(proc)
