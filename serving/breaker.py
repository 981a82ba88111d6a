"""Circuit breakers in front of the scorer's dependencies: fail fast while one is down.

Without them a frozen Redis costs every request its socket timeouts (velocity read, graph, reservation,
record: one after the other), the workers' threads fill up and checkout waits seconds for a rules answer
it could have had in milliseconds. A :class:`CircuitBreaker` counts consecutive failures of one
dependency; after ``failures`` of them it *opens*: calls raise :class:`BreakerOpen` at once, without
touching the dependency, for ``cooldown_s``. Then it is *half-open*: the next call goes through as the
one probe (the others still fail fast); its success closes the breaker, its failure opens it again for
another cool-down. A call that raises counts as a failure, and so does one that returns later than
``slow_call_s``: a dependency that answers past the request's deadline is no use to it either (the late
value is still returned; the scorer decides what a late answer is worth).

No background thread: the breaker changes state only inside calls, under one lock, so a breaker left
open with no traffic says "open" until the next call after its cool-down. The clock is injectable.

The wrappers (:class:`BreakerOnline`, :class:`BreakerVelocity`, :class:`BreakerGraph`) satisfy the
scorer's protocols (:mod:`scoring.scorer`) and route every call of the request path through their
dependency's breaker; ``close`` (and the graph's ``view``/``prune``, which serve analysts and maintenance,
not checkout) pass straight through. ``failures=0`` turns a breaker off: every call goes through and is
never counted. The model needs no wrapper: the scorer runs each prediction through its breaker
(``model_guard``), which counts only errors, since a slow model in the worker means a slow host.
:func:`health_detail` is the breakers' states as JSON: :func:`health_app` serves it at
``GET /health/detail``, and the service's guard adds it to BentoML's bodiless ``/readyz`` answer; both
are open without an API key.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal, TypeVar

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from features.graph import Attempt, Resolution
from scoring.scorer import IdentityGraphLike, OnlineFeaturesLike, ReservationLike, VelocityLike

_T = TypeVar("_T")

BreakerStateName = Literal["closed", "open", "half_open"]
#: The state as a number, for the ``promoguard_breaker_state`` gauge (worst is highest).
STATE_LEVELS: Mapping[str, int] = {"closed": 0, "half_open": 1, "open": 2}
#: Where :func:`health_app` is mounted.
MOUNT = "/health"

DEFAULT_FAILURES = 3
DEFAULT_COOLDOWN_S = 2.0


class BreakerOpen(RuntimeError):
    """A call refused without trying because its dependency's breaker is open (or probing)."""

    def __init__(self, dependency: str, retry_in_s: float) -> None:
        """Name the dependency and how long until a probe may go through."""
        super().__init__(f"{dependency} circuit breaker is open: retry in {retry_in_s:.2f}s")
        self.dependency = dependency
        self.retry_in_s = retry_in_s


class DeadlinePassed(RuntimeError):
    """An online read asked for after its request's deadline: not sent, and not the store's fault."""


@dataclass(frozen=True)
class BreakerState:
    """One breaker as metrics and health see it."""

    dependency: str
    state: BreakerStateName
    consecutive_failures: int
    opened_total: int
    #: False when the breaker is turned off (``failures=0``): calls are never counted.
    enabled: bool = True

    @property
    def level(self) -> int:
        """0 closed, 1 half-open, 2 open."""
        return STATE_LEVELS[self.state]

    def as_json(self) -> dict[str, Any]:
        """The state as a JSON object."""
        return asdict(self)


class CircuitBreaker:
    """Consecutive-failure circuit breaker of one dependency; thread-safe, no background thread."""

    def __init__(
        self,
        dependency: str,
        failures: int = DEFAULT_FAILURES,
        cooldown_s: float = DEFAULT_COOLDOWN_S,
        slow_call_s: float | None = None,
        clock: Callable[[], float] = time.monotonic,
        on_change: Callable[[BreakerState], object] | None = None,
    ) -> None:
        """Start closed. ``failures=0`` turns the breaker off; ``slow_call_s=None`` counts only errors.

        ``on_change`` is called with the new state at every transition (and once now), under the
        breaker's lock so that transitions are published in order: it must return at once.
        """
        if failures < 0:
            raise ValueError(f"failures must be >= 0, got {failures}")
        if cooldown_s <= 0:
            raise ValueError(f"cooldown_s must be > 0, got {cooldown_s}")
        if slow_call_s is not None and slow_call_s <= 0:
            raise ValueError(f"slow_call_s must be > 0 or None, got {slow_call_s}")
        self.dependency = dependency
        self.failures = failures
        self.cooldown_s = cooldown_s
        self.slow_call_s = slow_call_s
        self.clock = clock
        self.on_change = on_change
        self._lock = threading.Lock()
        self._state: BreakerStateName = "closed"
        self._consecutive = 0
        self._opened_total = 0
        self._opened_at = 0.0
        self._probe_started: float | None = None
        with self._lock:
            self._publish()

    @property
    def enabled(self) -> bool:
        """False when turned off (``failures=0``)."""
        return self.failures > 0

    def watch(self, on_change: Callable[[BreakerState], object]) -> None:
        """Call ``on_change`` at every transition from now on, and once now with the current state."""
        with self._lock:
            self.on_change = on_change
            self._publish()

    def snapshot(self) -> BreakerState:
        """The current state as stored (open turns half-open at the first call after the cool-down)."""
        with self._lock:
            return self._snapshot()

    def _snapshot(self) -> BreakerState:
        return BreakerState(self.dependency, self._state, self._consecutive, self._opened_total, self.enabled)

    def _publish(self) -> None:
        if self.on_change is not None:
            self.on_change(self._snapshot())

    def _admit(self) -> bool:
        """Let a call through (True when it is the half-open probe), or raise :class:`BreakerOpen`."""
        now = self.clock()
        with self._lock:
            if self._state == "closed":
                return False
            if self._state == "open":
                left = self._opened_at + self.cooldown_s - now
                if left > 0:
                    raise BreakerOpen(self.dependency, left)
                self._state = "half_open"
                self._probe_started = now
                self._publish()
                return True
            # Half-open: one probe at a time. A probe that never reported (its thread died) must not
            # wedge the breaker, so after a cool-down another call may probe.
            started = self._probe_started
            if started is not None and now - started < self.cooldown_s:
                raise BreakerOpen(self.dependency, started + self.cooldown_s - now)
            self._probe_started = now
            return True

    def _settle(self, ok: bool, probe: bool) -> None:
        now = self.clock()
        with self._lock:
            if ok:
                if self._state == "closed":
                    self._consecutive = 0
                elif probe and self._state == "half_open":
                    self._state = "closed"
                    self._consecutive = 0
                    self._probe_started = None
                    self._publish()
                # Otherwise a call admitted before the breaker opened came back late: only the probe
                # decides, or two racing threads would flap the breaker.
                return
            self._consecutive += 1
            # A failed probe re-opens at once; a closed breaker after K in a row. A late failure of a call
            # admitted while closed, arriving when the breaker is already open, changes nothing.
            if (probe and self._state == "half_open") or (
                self._state == "closed" and self._consecutive >= self.failures
            ):
                self._state = "open"
                self._opened_at = now
                self._opened_total += 1
                self._probe_started = None
                self._publish()

    def call(self, fn: Callable[[], _T]) -> _T:
        """``fn()`` through the breaker: raise :class:`BreakerOpen` while open, count the outcome otherwise.

        An exception of ``fn`` is re-raised after it is counted; a value that came later than
        ``slow_call_s`` is returned, and counted as a failure.
        """
        if not self.enabled:
            return fn()
        probe = self._admit()
        started = self.clock()
        try:
            value = fn()
        except BaseException:
            self._settle(False, probe)
            raise
        slow = self.slow_call_s is not None and self.clock() - started > self.slow_call_s
        self._settle(not slow, probe)
        return value


# --- the scorer's dependencies behind breakers ------------------------------------------------------


class BreakerOnline:
    """An online feature reader (:class:`scoring.scorer.OnlineFeaturesLike`) behind a breaker."""

    def __init__(self, inner: OnlineFeaturesLike, breaker: CircuitBreaker) -> None:
        """Wrap ``inner``."""
        self.inner = inner
        self.breaker = breaker

    def read(self, entity_rows: Mapping[str, str | None], deadline: float | None = None) -> dict[str, float]:
        """The inner read through the breaker; a read whose deadline already passed is refused uncounted.

        The reader would refuse it too; a request that is late before it asks (a queue, a pause of its
        worker) says nothing about the store, so it must not open the breaker under load.
        """
        if deadline is not None and time.perf_counter() >= deadline:
            raise DeadlinePassed("online feature read: the request's deadline passed before it was sent")
        return self.breaker.call(lambda: self.inner.read(entity_rows, deadline))

    def close(self) -> None:
        """Close the inner reader."""
        self.inner.close()


class BreakerVelocity:
    """A velocity store (:class:`scoring.scorer.VelocityLike`), each request-path call behind a breaker."""

    def __init__(self, inner: VelocityLike, breaker: CircuitBreaker) -> None:
        """Wrap ``inner``."""
        self.inner = inner
        self.breaker = breaker

    def record(self, request_id: str, ts: float, updates: Sequence[tuple[str, str]]) -> bool:
        """The inner ``record`` through the breaker."""
        return self.breaker.call(lambda: self.inner.record(request_id, ts, updates))

    def read(self, queries: Sequence[tuple[str, float]]) -> list[int]:
        """The inner ``read`` through the breaker."""
        return self.breaker.call(lambda: self.inner.read(queries))

    def reserve(
        self,
        request_id: str,
        scope: str,
        identities: Sequence[str],
        limit: int,
        ttl_s: float,
        now: float,
        *,
        quorum: int = 1,
        decisive: Sequence[str] = (),
    ) -> ReservationLike:
        """The inner ``reserve`` through the breaker."""
        return self.breaker.call(lambda: self.inner.reserve(
            request_id, scope, identities, limit, ttl_s, now, quorum=quorum, decisive=decisive
        ))

    def confirm(self, request_id: str) -> bool:
        """The inner ``confirm`` through the breaker."""
        return self.breaker.call(lambda: self.inner.confirm(request_id))

    def release(self, request_id: str, *, confirmed: bool = False) -> bool:
        """The inner ``release`` through the breaker."""
        return self.breaker.call(lambda: self.inner.release(request_id, confirmed=confirmed))

    def close(self) -> None:
        """Close the inner store."""
        self.inner.close()


class BreakerGraph:
    """An identity graph (:class:`scoring.scorer.IdentityGraphLike`), ``resolve`` behind a breaker."""

    def __init__(self, inner: IdentityGraphLike, breaker: CircuitBreaker) -> None:
        """Wrap ``inner``."""
        self.inner = inner
        self.breaker = breaker

    def resolve(self, attempt: Attempt) -> Resolution:
        """The inner ``resolve`` through the breaker."""
        return self.breaker.call(lambda: self.inner.resolve(attempt))

    def view(self) -> Any:
        """The inner graph's read-only view (for ``/identity``, off the checkout path): not counted."""
        return self.inner.view()  # type: ignore[attr-defined]

    def prune(self, now: float, retention_days: float | None = None) -> int:
        """The inner graph's prune (maintenance): not counted."""
        pruned: int = self.inner.prune(now, retention_days)  # type: ignore[attr-defined]
        return pruned

    def close(self) -> None:
        """Close the inner graph."""
        self.inner.close()


def breakers_of(*deps: object) -> list[CircuitBreaker]:
    """The breakers among ``deps``: breakers themselves, and those of wrapped dependencies.

    None and bare dependencies are skipped.
    """
    found = (d if isinstance(d, CircuitBreaker) else getattr(d, "breaker", None) for d in deps)
    return [b for b in found if isinstance(b, CircuitBreaker)]


def health_detail(breakers: Sequence[CircuitBreaker]) -> dict[str, Any]:
    """The body of ``GET /health/detail``: each dependency's breaker, and whether any is not closed."""
    states = [b.snapshot() for b in breakers]
    return {
        "degraded": any(s.state != "closed" for s in states),
        "breakers": {s.dependency: s.as_json() for s in states},
    }


def health_app(breakers_of_worker: Callable[[], Sequence[CircuitBreaker]]) -> Starlette:
    """The ASGI app answering ``/detail`` (mounted at :data:`MOUNT`): this worker's breaker states.

    Always 200: the service answers (from the rules) whatever its dependencies do, which ``/readyz``
    says; this says how. Each worker process has its own breakers, so two calls may see two workers.
    """

    async def detail(request: Request) -> Response:
        return JSONResponse(health_detail(breakers_of_worker()))

    return Starlette(routes=[Route("/detail", detail, methods=["GET"])])
