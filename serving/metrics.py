"""Every Prometheus series the scoring service exports, defined once (``prometheus_client``).

``bentoml serve`` starts each worker with ``PROMETHEUS_MULTIPROC_DIR`` set, before the worker imports
this module, so ``prometheus_client`` writes every value to that folder and BentoML's ``/metrics``
aggregates all workers' files (a ``MultiProcessCollector``): whatever is registered here appears there
with no extra route. Counters and histograms add up across workers; each gauge names how its workers'
values combine (``multiprocess_mode``), which the single-process registry of the unit tests ignores.

The series, and what reads them (``deploy/prometheus/alerts.yml``, ``deploy/grafana/*.json``):

* ``promoguard_score_requests_total{promo_type, decision, band, path}``: scored attempts; ``path`` is
  ``model`` or ``rules`` (the fallback).
* ``promoguard_score_latency_seconds{path}``: time inside the service per scored attempt.
* ``promoguard_campaign_attempts_total{campaign, decision}`` and
  ``promoguard_campaign_discount_at_stake_total{campaign, decision}``: attempts and the sum of
  ``promotion.discount_value`` per campaign (campaign = promo code, as in the scoring log). Only the
  first :data:`DEFAULT_CAMPAIGN_LABELS` distinct codes a worker sees get a label of their own; the rest
  are ``other``, so a bot spraying random codes cannot blow up the series count. The bound is per
  worker process: workers that see different first codes together export at most workers x N.
* ``promoguard_campaign_outcomes_total{campaign, outcome}``: what checkout reported (redeemed,
  abandoned, reversed).
* ``promoguard_cap_exceeded_total{reason, promo_type}``: answers carrying a cap signal (a single-use
  code already spent, a per-customer limit reached).
* ``promoguard_feedback_total{label}``: labels received.
* ``promoguard_http_errors_total{route, status}``: every 4xx and 5xx answer, whoever produced it (the
  guard's 401/411/413/415/429, the contract's 400, the endpoints' 404/409/503, a crash's 500).
* ``promoguard_request_errors_total{kind}``: domain errors by kind (conflict, outcome_unavailable).
* ``promoguard_shadow_{scored,dropped,errors}_total``: the shadow challenger's work.
* ``promoguard_build_info{version}``: 1, labelled with the running package version.
* ``promoguard_drift_status``: the latest drift report's badge, 0 green, 1 amber, 2 red, -1 no report.
* ``promoguard_breaker_state{dependency}``: each dependency's circuit breaker (:mod:`serving.breaker`),
  0 closed, 1 half-open, 2 open; the worst of the live workers.
* ``promoguard_breaker_opened_total{dependency}``: times a breaker opened (a probe that failed too).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram

from scoring.schemas import ScoreRequest, ScoreResponse

if TYPE_CHECKING:
    from serving.breaker import BreakerState, CircuitBreaker

logger = logging.getLogger("promoguard.serving")

#: Distinct campaign codes per worker that get a label of their own (the others are ``other``).
DEFAULT_CAMPAIGN_LABELS = 50
#: The label of every campaign past the first N.
OTHER_CAMPAIGN = "other"
#: Reason codes of the cap rules in scoring/rules.yaml (single_use_code_spent, customer_cap_reached).
#: Matched by code, not rule id, so a site's own rules table that reuses the codes is counted too.
CAP_REASON_CODES = frozenset({"SINGLE_USE_SPENT", "CUSTOMER_CAP_REACHED"})
#: The drift badge as a number; -1 when no report has been written yet.
DRIFT_LEVELS = {"green": 0, "amber": 1, "red": 2}
NO_DRIFT_REPORT = -1
#: How often a worker looks at the drift report again (a stat per call, a read only when it changed).
DRIFT_REFRESH_S = 30.0
#: Latency buckets around the budgets: the 50 ms feature deadline and the 200 ms request deadline.
LATENCY_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.015, 0.025, 0.05, 0.1, 0.2, 0.5, 1.0)
#: Routes counted under their own name; any other path (a scanner's guesses) is ``other``.
KNOWN_ROUTES = (
    "/score", "/outcome", "/feedback", "/decisions", "/docs.json", "/livez", "/readyz", "/metrics",
    "/health",
)


class CampaignLabels:
    """The label of a campaign code: itself for the first ``limit`` distinct codes, else ``other``."""

    def __init__(self, limit: int = DEFAULT_CAMPAIGN_LABELS) -> None:
        """Start with no code admitted."""
        if limit < 0:
            raise ValueError(f"campaign label limit must be >= 0, got {limit}")
        self.limit = limit
        self._admitted: set[str] = set()
        self._lock = threading.Lock()

    def label(self, code: str) -> str:
        """The code's label, admitting it while there is room."""
        if code in self._admitted:
            return code
        with self._lock:
            if code in self._admitted:
                return code
            if len(self._admitted) < self.limit and code != OTHER_CAMPAIGN:
                self._admitted.add(code)
                return code
        return OTHER_CAMPAIGN

    @property
    def admitted(self) -> frozenset[str]:
        """The codes that have a label of their own."""
        return frozenset(self._admitted)


def route_of(path: str) -> str:
    """A bounded route label for a request path (``/decisions/<id>`` is ``/decisions``)."""
    for route in KNOWN_ROUTES:
        if path == route or path.startswith(route + "/"):
            return route
    return "other"


def drift_status(reports_dir: Path) -> int:
    """The badge of ``reports_dir/latest.json`` as a level (:data:`DRIFT_LEVELS`), -1 when there is none."""
    path = reports_dir / "latest.json"
    try:
        status = json.loads(path.read_text(encoding="utf-8")).get("status")
    except FileNotFoundError:
        return NO_DRIFT_REPORT
    except (OSError, ValueError, AttributeError) as exc:
        logger.warning("drift report %s unreadable (%s): drift status unknown", path, type(exc).__name__)
        return NO_DRIFT_REPORT
    return DRIFT_LEVELS.get(str(status), NO_DRIFT_REPORT)


class ServiceMetrics:
    """The service's series in one registry, with the helpers the endpoints and the guard call."""

    def __init__(
        self,
        registry: CollectorRegistry = REGISTRY,
        campaign_limit: int = DEFAULT_CAMPAIGN_LABELS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """Create (register) every series; call once per registry."""
        self.campaigns = CampaignLabels(campaign_limit)
        self.clock = clock
        self.requests = Counter(
            "promoguard_score_requests_total", "Scored attempts",
            ["promo_type", "decision", "band", "path"], registry=registry,
        )
        self.latency = Histogram(
            "promoguard_score_latency_seconds", "Scoring time inside the service", ["path"],
            buckets=LATENCY_BUCKETS, registry=registry,
        )
        self.campaign_attempts = Counter(
            "promoguard_campaign_attempts_total",
            "Scored attempts per campaign (promo code; the first N codes, the rest as 'other')",
            ["campaign", "decision"], registry=registry,
        )
        self.campaign_discount = Counter(
            "promoguard_campaign_discount_at_stake_total",
            "Sum of promotion.discount_value of scored attempts per campaign, in the cart's currency",
            ["campaign", "decision"], registry=registry,
        )
        self.campaign_outcomes = Counter(
            "promoguard_campaign_outcomes_total", "Outcomes checkout reported per campaign",
            ["campaign", "outcome"], registry=registry,
        )
        self.cap_exceeded = Counter(
            "promoguard_cap_exceeded_total",
            "Answers carrying a cap signal (single-use code spent, per-customer limit reached)",
            ["reason", "promo_type"], registry=registry,
        )
        self.feedback = Counter(
            "promoguard_feedback_total", "Labels received through /feedback", ["label"], registry=registry
        )
        self.http_errors = Counter(
            "promoguard_http_errors_total", "4xx and 5xx answers by route and status",
            ["route", "status"], registry=registry,
        )
        self.errors = Counter(
            "promoguard_request_errors_total", "Rejected calls", ["kind"], registry=registry
        )
        self.shadow_dropped = Counter(
            "promoguard_shadow_dropped_total",
            "Shadowed requests dropped because the shadow queue was full (never a live answer)",
            registry=registry,
        )
        self.shadow_scored = Counter(
            "promoguard_shadow_scored_total", "Requests the shadow challenger scored and logged",
            ["live_decision", "challenger_decision"], registry=registry,
        )
        self.shadow_errors = Counter(
            "promoguard_shadow_errors_total", "Shadowed requests not scored or not logged", registry=registry
        )
        # Every worker sets the same value; the largest of the live workers is that value.
        self.build_info = Gauge(
            "promoguard_build_info", "Always 1; the running promoguard version as a label", ["version"],
            registry=registry, multiprocess_mode="livemax",
        )
        # Workers re-read the report at different moments: the value read last is the current one. It
        # is first set by watch_drift, from the report: a placeholder -1 set here would be the most
        # recent value while a starting worker loads its model, hiding a red report the others read.
        self.drift = Gauge(
            "promoguard_drift_status", "Latest drift report: 0 green, 1 amber, 2 red, -1 no report",
            registry=registry, multiprocess_mode="livemostrecent",
        )
        # Each worker has its own breakers: one worker that cannot reach a dependency is what on-call
        # must see, so the worst (highest) state of the live workers is the value.
        self.breaker_state = Gauge(
            "promoguard_breaker_state", "Circuit breaker of a dependency: 0 closed, 1 half-open, 2 open",
            ["dependency"], registry=registry, multiprocess_mode="livemax",
        )
        self.breaker_opened = Counter(
            "promoguard_breaker_opened_total", "Times a dependency's circuit breaker opened",
            ["dependency"], registry=registry,
        )
        self._breaker_opened_seen: dict[str, int] = {}
        self._breaker_lock = threading.Lock()
        self._reports_dir: Path | None = None
        self._drift_checked = float("-inf")
        self._drift_mtime: float | None = None

    def limit_campaigns(self, limit: int) -> None:
        """Give the first ``limit`` distinct campaign codes a label of their own (call before traffic)."""
        self.campaigns = CampaignLabels(limit)

    def observe_score(self, request: ScoreRequest, response: ScoreResponse) -> None:
        """Count one answered /score: totals, latency, the campaign's attempts and stake, cap signals."""
        path = "rules" if response.fallback else "model"
        promo = request.promotion
        self.requests.labels(promo_type=promo.type, decision=response.decision, band=response.band,
                             path=path).inc()
        self.latency.labels(path=path).observe(response.latency_ms / 1000.0)
        campaign = self.campaigns.label(promo.code)
        self.campaign_attempts.labels(campaign=campaign, decision=response.decision).inc()
        if promo.discount_value:
            self.campaign_discount.labels(campaign=campaign, decision=response.decision).inc(
                promo.discount_value
            )
        for reason in cap_reasons(signal.code for signal in response.signals):
            self.cap_exceeded.labels(reason=reason, promo_type=promo.type).inc()
        self.refresh_drift()

    def observe_outcome(self, promo_code: str | None, outcome: str) -> None:
        """Count an outcome checkout reported for a scored attempt of ``promo_code``."""
        campaign = self.campaigns.label(promo_code) if promo_code else OTHER_CAMPAIGN
        self.campaign_outcomes.labels(campaign=campaign, outcome=outcome).inc()

    def observe_http_error(self, path: str, status: int) -> None:
        """Count a 4xx or 5xx answer (other statuses are ignored)."""
        if status >= 400:
            self.http_errors.labels(route=route_of(path), status=str(status)).inc()

    def observe_breaker(self, state: BreakerState) -> None:
        """Publish one breaker's state; count each opening once (the breaker's own total is the truth)."""
        self.breaker_state.labels(dependency=state.dependency).set(state.level)
        with self._breaker_lock:
            seen = self._breaker_opened_seen.get(state.dependency, 0)
            if state.opened_total > seen:
                self.breaker_opened.labels(dependency=state.dependency).inc(state.opened_total - seen)
                self._breaker_opened_seen[state.dependency] = state.opened_total
            elif state.dependency not in self._breaker_opened_seen:
                # Created at zero, so a dashboard's rate() has a series before the first opening.
                self.breaker_opened.labels(dependency=state.dependency)
                self._breaker_opened_seen[state.dependency] = state.opened_total

    def watch_breakers(self, breakers: Iterable[CircuitBreaker]) -> None:
        """Publish each breaker's state now and at every transition (call once, before traffic)."""
        for breaker in breakers:
            breaker.watch(self.observe_breaker)

    def set_build_info(self, version: str) -> None:
        """Publish the running version."""
        self.build_info.labels(version=version).set(1)

    def watch_drift(self, reports_dir: Path) -> None:
        """Publish the drift badge of ``reports_dir`` now, and again whenever the report changes."""
        self._reports_dir = reports_dir
        self._drift_checked = float("-inf")
        self._drift_mtime = None
        self.refresh_drift()

    def refresh_drift(self) -> None:
        """Re-read the drift report when :data:`DRIFT_REFRESH_S` has passed and the file changed."""
        if self._reports_dir is None:
            return
        now = self.clock()
        if now - self._drift_checked < DRIFT_REFRESH_S:
            return
        self._drift_checked = now
        try:
            mtime: float | None = (self._reports_dir / "latest.json").stat().st_mtime
        except OSError:
            mtime = None
        if mtime is not None and mtime == self._drift_mtime:
            return
        self._drift_mtime = mtime
        self.drift.set(drift_status(self._reports_dir))


def cap_reasons(codes: Iterable[str]) -> list[str]:
    """The cap reason codes among ``codes``, each once, lower case (the label values)."""
    return sorted({code.lower() for code in codes if code in CAP_REASON_CODES})


_shared: ServiceMetrics | None = None
_shared_lock = threading.Lock()


def service_metrics() -> ServiceMetrics:
    """The worker's one set of series in the default registry (created by the first caller).

    The service and the guard in front of it share it: registering a series twice in one registry is
    an error, and BentoML builds the guard and the service separately in each worker.
    """
    global _shared
    with _shared_lock:
        if _shared is None:
            _shared = ServiceMetrics(REGISTRY)
        return _shared
