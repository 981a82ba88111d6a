"""Circuit breakers: open after K failures, fail fast, probe once half-open, close or re-open; wrappers."""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from features.graph import Attempt
from serving.breaker import (
    BreakerGraph,
    BreakerOnline,
    BreakerOpen,
    BreakerState,
    BreakerVelocity,
    CircuitBreaker,
    DeadlinePassed,
    health_detail,
)
from serving.metrics import ServiceMetrics
from tests.scoring.conftest import FakeOnline, FakeResolver, FakeVelocity


class FakeClock:
    """A clock that moves only when told."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class Dependency:
    """A dependency that answers, fails or takes (fake) time on demand, and counts the calls it got."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.fail = False
        self.takes_s = 0.0
        self.calls = 0

    def __call__(self) -> str:
        self.calls += 1
        self.clock.advance(self.takes_s)
        if self.fail:
            raise ConnectionError("down")
        return "ok"


def _breaker(clock: FakeClock, **kwargs: Any) -> CircuitBreaker:
    return CircuitBreaker("velocity", **{"failures": 3, "cooldown_s": 2.0, "clock": clock, **kwargs})


def _fail(breaker: CircuitBreaker, dep: Callable[[], str], times: int) -> None:
    for _ in range(times):
        with pytest.raises(ConnectionError):
            breaker.call(dep)


def test_it_opens_after_k_consecutive_failures_and_then_fails_fast() -> None:
    clock = FakeClock()
    dep, breaker = Dependency(clock), _breaker(clock)
    dep.fail = True
    _fail(breaker, dep, 2)
    assert breaker.snapshot().state == "closed" and breaker.snapshot().consecutive_failures == 2
    _fail(breaker, dep, 1)
    state = breaker.snapshot()
    assert state.state == "open" and state.opened_total == 1 and state.level == 2
    for _ in range(5):
        with pytest.raises(BreakerOpen) as raised:
            breaker.call(dep)
        assert raised.value.dependency == "velocity" and 0 < raised.value.retry_in_s <= 2.0
    assert dep.calls == 3, "an open breaker must not touch its dependency"


def test_a_success_resets_the_count_of_consecutive_failures() -> None:
    clock = FakeClock()
    dep, breaker = Dependency(clock), _breaker(clock)
    dep.fail = True
    _fail(breaker, dep, 2)
    dep.fail = False
    assert breaker.call(dep) == "ok"
    dep.fail = True
    _fail(breaker, dep, 2)
    assert breaker.snapshot().state == "closed"


def test_after_the_cool_down_one_probe_goes_through_and_its_success_closes_the_breaker() -> None:
    clock = FakeClock()
    dep, breaker = Dependency(clock), _breaker(clock)
    dep.fail = True
    _fail(breaker, dep, 3)
    clock.advance(1.9)
    with pytest.raises(BreakerOpen):
        breaker.call(dep)
    clock.advance(0.2)
    dep.fail = False
    assert breaker.call(dep) == "ok"
    state = breaker.snapshot()
    assert state.state == "closed" and state.consecutive_failures == 0 and state.opened_total == 1
    assert breaker.call(dep) == "ok"


def test_while_the_probe_is_out_every_other_call_fails_fast() -> None:
    clock = FakeClock()
    dep, breaker = Dependency(clock), _breaker(clock)
    dep.fail = True
    _fail(breaker, dep, 3)
    clock.advance(2.0)
    seen: list[str] = []

    def probe() -> str:
        # The probe is in flight: a concurrent call must not reach the dependency.
        assert breaker.snapshot().state == "half_open"
        with pytest.raises(BreakerOpen):
            breaker.call(dep)
        seen.append("probe")
        return "ok"

    assert breaker.call(probe) == "ok"
    assert seen == ["probe"] and dep.calls == 3
    assert breaker.snapshot().state == "closed"


def test_a_failed_probe_opens_the_breaker_for_another_cool_down() -> None:
    clock = FakeClock()
    dep, breaker = Dependency(clock), _breaker(clock)
    dep.fail = True
    _fail(breaker, dep, 3)
    clock.advance(2.0)
    _fail(breaker, dep, 1)
    state = breaker.snapshot()
    assert state.state == "open" and state.opened_total == 2
    clock.advance(1.0)
    with pytest.raises(BreakerOpen):
        breaker.call(dep)
    assert dep.calls == 4
    clock.advance(1.0)
    dep.fail = False
    assert breaker.call(dep) == "ok" and breaker.snapshot().state == "closed"


def test_a_call_slower_than_the_bound_counts_as_a_failure_but_its_value_is_returned() -> None:
    clock = FakeClock()
    dep, breaker = Dependency(clock), _breaker(clock, slow_call_s=0.05)
    dep.takes_s = 0.2
    for _ in range(2):
        assert breaker.call(dep) == "ok"
    assert breaker.snapshot().consecutive_failures == 2
    assert breaker.call(dep) == "ok"
    assert breaker.snapshot().state == "open"
    with pytest.raises(BreakerOpen):
        breaker.call(dep)
    # A slow probe re-opens it too; a quick one closes it.
    clock.advance(2.0)
    assert breaker.call(dep) == "ok" and breaker.snapshot().state == "open"
    clock.advance(2.0)
    dep.takes_s = 0.01
    assert breaker.call(dep) == "ok" and breaker.snapshot().state == "closed"


def test_a_probe_that_never_reports_does_not_wedge_the_breaker() -> None:
    clock = FakeClock()
    dep, breaker = Dependency(clock), _breaker(clock)
    dep.fail = True
    _fail(breaker, dep, 3)
    clock.advance(2.0)
    in_flight, release = threading.Event(), threading.Event()

    def stuck() -> str:
        in_flight.set()
        release.wait(10)
        return "late"

    # A probe that hangs (its socket has no timeout): nobody else gets through until a cool-down passes.
    hung = threading.Thread(target=lambda: breaker.call(stuck))
    hung.start()
    assert in_flight.wait(10)
    with pytest.raises(BreakerOpen):
        breaker.call(dep)
    clock.advance(2.0)
    dep.fail = False
    assert breaker.call(dep) == "ok" and breaker.snapshot().state == "closed"
    release.set()
    hung.join(10)
    assert breaker.snapshot().state == "closed"


def test_zero_failures_turns_the_breaker_off() -> None:
    clock = FakeClock()
    dep, breaker = Dependency(clock), _breaker(clock, failures=0)
    dep.fail = True
    _fail(breaker, dep, 10)
    state = breaker.snapshot()
    assert state.state == "closed" and state.enabled is False and dep.calls == 10


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="failures"):
        CircuitBreaker("x", failures=-1)
    with pytest.raises(ValueError, match="cooldown"):
        CircuitBreaker("x", cooldown_s=0)
    with pytest.raises(ValueError, match="slow_call_s"):
        CircuitBreaker("x", slow_call_s=0)


def test_transitions_are_published_in_order() -> None:
    clock = FakeClock()
    seen: list[BreakerState] = []
    dep, breaker = Dependency(clock), _breaker(clock, on_change=seen.append)
    dep.fail = True
    _fail(breaker, dep, 3)
    clock.advance(2.0)
    dep.fail = False
    breaker.call(dep)
    assert [s.state for s in seen] == ["closed", "open", "half_open", "closed"]
    assert seen[1].opened_total == 1


def test_thread_safety_smoke_many_threads_open_once_and_never_lose_a_count() -> None:
    breaker = CircuitBreaker("velocity", failures=50, cooldown_s=60.0)
    barrier = threading.Barrier(16)

    def fail() -> str:
        raise ConnectionError("down")

    def hammer(_: int) -> list[str]:
        barrier.wait()
        outcomes = []
        for _ in range(200):
            try:
                breaker.call(fail)
            except BreakerOpen:
                outcomes.append("fast")
            except ConnectionError:
                outcomes.append("tried")
        return outcomes

    with ThreadPoolExecutor(max_workers=16) as pool:
        outcomes = [o for chunk in pool.map(hammer, range(16)) for o in chunk]
    state = breaker.snapshot()
    assert state.state == "open" and state.opened_total == 1
    # Calls admitted while closed number at least K (they opened it) and at most K plus the calls that
    # were in flight when it opened (one per thread).
    tried = outcomes.count("tried")
    assert 50 <= tried <= 50 + 16, tried
    assert tried + outcomes.count("fast") == 16 * 200
    assert state.consecutive_failures == tried


def test_the_velocity_wrapper_routes_every_request_path_call_through_one_breaker() -> None:
    clock = FakeClock()
    inner = FakeVelocity()
    velocity = BreakerVelocity(inner, _breaker(clock))
    assert velocity.record("r1", 1.0, [("c", "m")]) is True
    assert velocity.read([("c", 0.0)]) == [1]
    res = velocity.reserve("r1", "promo:X", ["*"], 1, 60.0, 1.0, quorum=1, decisive=["*"])
    assert res.status == "reserved"
    assert velocity.release("r1") is True and velocity.confirm("r1") is False
    inner.fail = True
    with pytest.raises(RuntimeError, match="velocity down"):
        velocity.read([("c", 0.0)])
    with pytest.raises(RuntimeError, match="velocity down"):
        velocity.reserve("r2", "promo:X", ["*"], 1, 60.0, 1.0)
    with pytest.raises(RuntimeError, match="velocity down"):
        velocity.record("r2", 1.0, [])
    for call in (lambda: velocity.confirm("r2"), lambda: velocity.release("r2"), lambda: velocity.read([])):
        with pytest.raises(BreakerOpen):
            call()
    velocity.close()
    assert inner.closed


def test_the_online_wrapper_refuses_a_late_read_without_counting_it() -> None:
    import time

    clock = FakeClock()
    inner = FakeOnline({"f": 1.0})
    online = BreakerOnline(inner, _breaker(clock))
    assert online.read({"device_id": "d"}, time.perf_counter() + 5.0) == {"f": 1.0}
    for _ in range(5):
        with pytest.raises(DeadlinePassed):
            online.read({"device_id": "d"}, time.perf_counter() - 0.001)
    assert online.breaker.snapshot().consecutive_failures == 0 and len(inner.rows) == 1
    inner.fail = True
    for _ in range(3):
        with pytest.raises(RuntimeError):
            online.read({"device_id": "d"})
    with pytest.raises(BreakerOpen):
        online.read({"device_id": "d"})
    online.close()
    assert inner.closed


def test_the_graph_wrapper_guards_resolve_and_passes_view_and_prune_through(tmp_path: Path) -> None:
    from features.graph import SqliteGraph

    clock = FakeClock()
    inner = SqliteGraph(tmp_path / "graph.db")
    graph = BreakerGraph(inner, _breaker(clock))
    attempt = Attempt.from_keys("r1", 1000.0, {"account_key": "a1", "device_key": "d1"})
    resolution = graph.resolve(attempt)
    assert resolution.person_id
    assert graph.view() is not None
    assert graph.prune(2000.0) >= 0

    def down(attempt: Attempt) -> Any:
        raise ConnectionError("graph down")

    inner.resolve = down  # type: ignore[method-assign]
    for _ in range(3):
        with pytest.raises(ConnectionError):
            graph.resolve(attempt)
    with pytest.raises(BreakerOpen):
        graph.resolve(attempt)
    # Analysts' reads are not the checkout path: they still reach the graph while resolve is cut off.
    assert graph.view() is not None
    graph.close()


def test_metrics_show_each_state_and_count_each_opening_once() -> None:
    registry = CollectorRegistry()
    metrics = ServiceMetrics(registry)
    clock = FakeClock()
    dep, breaker = Dependency(clock), _breaker(clock)
    metrics.watch_breakers([breaker])

    def value(name: str) -> float | None:
        return registry.get_sample_value(name, {"dependency": "velocity"})

    assert value("promoguard_breaker_state") == 0 and value("promoguard_breaker_opened_total") == 0
    dep.fail = True
    _fail(breaker, dep, 3)
    assert value("promoguard_breaker_state") == 2 and value("promoguard_breaker_opened_total") == 1
    clock.advance(2.0)
    _fail(breaker, dep, 1)
    assert value("promoguard_breaker_opened_total") == 2
    clock.advance(2.0)
    dep.fail = False
    breaker.call(dep)
    assert value("promoguard_breaker_state") == 0 and value("promoguard_breaker_opened_total") == 2


def test_health_detail_names_every_breaker_and_whether_any_is_not_closed() -> None:
    clock = FakeClock()
    velocity, graph = _breaker(clock), CircuitBreaker("identity_graph", clock=clock)
    assert health_detail([velocity, graph])["degraded"] is False
    dep = Dependency(clock)
    dep.fail = True
    _fail(velocity, dep, 3)
    body = health_detail([velocity, graph])
    assert body["degraded"] is True
    assert body["breakers"]["velocity"] == {
        "dependency": "velocity", "state": "open", "consecutive_failures": 3, "opened_total": 1,
        "enabled": True,
    }
    assert body["breakers"]["identity_graph"]["state"] == "closed"


def test_a_model_that_keeps_raising_is_not_asked_again_until_its_cool_down_ends(
    tmp_path: Path, artifact_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import scoring.scorer as scorer_module
    from features.graph import SqliteGraph
    from scoring.artifact import LoadedModel
    from scoring.records import Records
    from scoring.rules import default_rules
    from scoring.schemas import ScoreRequest
    from scoring.scorer import Scorer, ScorerConfig

    clock = FakeClock()
    guard = CircuitBreaker("model", failures=2, cooldown_s=2.0, clock=clock)
    real = scorer_module.model_answer_for
    state = {"broken": True, "calls": 0}

    def predict(*args: Any, **kwargs: Any) -> Any:
        state["calls"] += 1
        if state["broken"]:
            raise ValueError("the artifact's features do not match the frame")
        return real(*args, **kwargs)

    monkeypatch.setattr(scorer_module, "model_answer_for", predict)
    scorer = Scorer(
        FakeResolver(), FakeOnline({}), FakeVelocity(), LoadedModel.from_dir(artifact_dir), default_rules(),
        Records(tmp_path / "scores.db"),
        ScorerConfig(feature_deadline_ms=5000.0, request_deadline_ms=10000.0),
        graph=SqliteGraph(tmp_path / "graph.db"), model_guard=guard,
    )

    def attempt(request_id: str) -> Any:
        return scorer.score(ScoreRequest.model_validate({
            "request_id": request_id, "promotion": {"code": "SAVE10", "type": "sitewide"},
            "account": {"account_id": f"acct-{request_id}"},
            "device": {"device_id": f"dev-{request_id}-0001"},
        }))

    answers = [attempt(f"r{i}") for i in range(5)]
    # Two failures open the breaker; the next three attempts never reach the model.
    assert state["calls"] == 2
    assert all(a.fallback == "rules" and a.degraded and a.model_version is None for a in answers)
    assert guard.snapshot().state == "open"

    state["broken"] = False
    clock.advance(2.0)
    probe = attempt("probe")
    assert state["calls"] == 3
    assert probe.fallback is None and probe.degraded is False and probe.model_version == "7"
    assert guard.snapshot().state == "closed"
    scorer.close()
