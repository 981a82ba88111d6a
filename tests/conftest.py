"""Shared test configuration: telemetry off, and the rule for tests that need Redis or PostgreSQL."""

from __future__ import annotations

import os
import socket
import sys

import prometheus_client  # noqa: F401  (imported before Feast, see below)
import pytest

# Importing Feast points prometheus_client at a multiprocess folder, unless prometheus_client was
# imported first. Multiprocess values live in per-process files shared by every registry, so a unit
# test's fresh CollectorRegistry would start from the counts of earlier tests in the same worker.

# pytest-xdist workers run with a bare __main__ (no __file__, no __spec__). pyspark's Connect package
# takes that for a doctest run and calls sys.exit(0) when great-expectations imports it; give the
# worker's __main__ a file name so the import behaves as in any normal program.
_main = sys.modules["__main__"]
if getattr(_main, "__spec__", None) is None and not hasattr(_main, "__file__"):
    _main.__file__ = "pytest-xdist-worker"

os.environ.setdefault("BENTOML_DO_NOT_TRACK", "true")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")


@pytest.hookimpl(wrapper=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> object:
    """Make ``--dist loadgroup`` group again: the end-to-end tests share one built world per worker.

    pytest-xdist 3.8 tags an ``xdist_group`` test by rewriting ``item._nodeid``; pytest 9 reads the node
    id from ``item._id`` instead, so the tag never reached the scheduler and every worker built its
    own world. Carry the tagged id over once every other hook has run.
    """
    result = yield
    from _pytest.nodeid import NodeId

    for item in items:
        tagged = vars(item).get("_nodeid")
        if isinstance(tagged, str) and tagged != item.nodeid:
            item._id = NodeId.parse(tagged)  # noqa: SLF001 - the one field pytest 9 reads the id from
    return result


def service_answers(host: str, port: int, timeout: float = 0.5) -> bool:
    """True when a TCP connection to host:port succeeds within timeout."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def require_service(name: str, host: str, port: int) -> None:
    """Skip (or fail under PROMOGUARD_REQUIRE_SERVICES=1) when a backing service does not answer."""
    if service_answers(host, port):
        return
    message = f"{name} does not answer on {host}:{port}"
    if os.environ.get("PROMOGUARD_REQUIRE_SERVICES") == "1":
        pytest.fail(f"{message} and PROMOGUARD_REQUIRE_SERVICES=1")
    pytest.skip(message)


@pytest.fixture
def redis_available() -> None:
    """Require the Redis at 127.0.0.1:6379."""
    require_service("Redis", "127.0.0.1", 6379)


@pytest.fixture
def postgres_available() -> None:
    """Require the PostgreSQL at 127.0.0.1:5432."""
    require_service("PostgreSQL", "127.0.0.1", 5432)
