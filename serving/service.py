"""The promoguard scoring service: one BentoML class with /score, /outcome and /feedback.

Start it with ``bentoml serve serving.service:PromoGuard``. Settings are read once per worker, at start,
from the ``PROMOGUARD_*`` environment into the one :class:`config.settings.Settings` the command line
also uses, so the model the service loads is the one ``promoguard train`` registered under the same name.
The service starts and answers from the rules when there is no model yet, no Feast store, or no Redis:
``/readyz`` means "a model or the rules are loaded", never "every backend answers", because checkout
must get an answer either way.

Request bodies are flat JSON validated by the pydantic models of :mod:`scoring.schemas` (unknown
fields are a 400 naming the field). In front of the endpoints an ASGI guard checks the body size and
content type (JSON only: anything else is a 415 naming it), the ``X-API-Key`` header (constant-time
compare, on unless ``PROMOGUARD_REQUIRE_API_KEY=false``) and a per-key token bucket; it also turns
BentoML's validation answer into the contract's 400 (``{"error", "errors": [{field, message}]}``) and
serves the completed OpenAPI document (:mod:`serving.openapi`) at ``/docs.json``. Analysts read one
decision, frozen, with its counterfactual, at ``GET /decisions/{request_id}`` (:mod:`serving.decisions`).
The rate-limit bucket lives in each worker process (one per CPU), so with N workers a
key may reach up to N times ``PROMOGUARD_RATE_LIMIT_PER_MINUTE`` in all: a guard against a runaway
client, not a billing meter. Logs carry request ids, decisions and error kinds, never raw identity.
"""

from __future__ import annotations

import gc
import hmac
import json
import logging
import threading
import time
from collections.abc import Awaitable, Callable, MutableMapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import bentoml
from starlette.responses import JSONResponse

from config.quiet import quiet_third_party_warnings
from config.settings import InvalidSettings, Settings
from scoring.artifact import ArtifactError, LoadedModel
from scoring.controls import Controls
from scoring.controls_store import ControlsRefresher, ControlsStore
from scoring.log_queue import QueuedRecords
from scoring.records import IdempotencyConflict, RecordsLike
from scoring.rules import default_rules, load_rules
from scoring.schemas import (
    FeedbackRequest,
    FeedbackResponse,
    OutcomeRequest,
    OutcomeResponse,
    ScoreRequest,
    ScoreResponse,
)
from scoring.scorer import Scorer, ScorerConfig, VelocityLike
from scoring.state import open_records
from serving.breaker import MOUNT as HEALTH_MOUNT
from serving.breaker import (
    BreakerGraph,
    BreakerOnline,
    BreakerVelocity,
    CircuitBreaker,
    breakers_of,
    health_app,
    health_detail,
)
from serving.decisions import MOUNT as DECISIONS_MOUNT
from serving.decisions import decisions_app
from serving.identity import MOUNT as IDENTITY_MOUNT
from serving.identity import identity_app
from serving.lists import MOUNT as LISTS_MOUNT
from serving.lists import lists_app
from serving.metrics import service_metrics
from serving.model_cache import fetch_champion
from serving.openapi import complete_openapi, package_version
from serving.private_logs import redact_framework_errors
from serving.shadow import start_shadow

logger = logging.getLogger("promoguard.serving")

PROTECTED_PATHS = frozenset({"/score", "/outcome", "/feedback"})
#: Paths under these prefixes are protected too.
PROTECTED_PREFIXES = (DECISIONS_MOUNT + "/", IDENTITY_MOUNT + "/", LISTS_MOUNT + "/")
#: The one body type the endpoints accept.
JSON_TYPE = "application/json"
#: BentoML's readiness route; the guard adds the breakers' states to its answer.
READYZ = "/readyz"
#: How long a request waits for the SQLite velocity store's write lock before failing open.
SQLITE_BUSY_MS = 1000

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


# --- the guard in front of the endpoints -----------------------------------------------------------


class TokenBucket:
    """Per-caller token buckets: ``rate_per_minute`` sustained, the same number as burst."""

    def __init__(self, rate_per_minute: int, clock: Callable[[], float] = time.monotonic) -> None:
        """Start every caller with a full bucket."""
        self.capacity = float(max(1, rate_per_minute))
        self.refill_per_s = self.capacity / 60.0
        self.clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def take(self, caller: str) -> float:
        """0 when allowed, else the seconds until the next token."""
        now = self.clock()
        with self._lock:
            tokens, last = self._buckets.get(caller, (self.capacity, now))
            tokens = min(self.capacity, tokens + (now - last) * self.refill_per_s)
            if tokens >= 1.0:
                self._buckets[caller] = (tokens - 1.0, now)
                return 0.0
            self._buckets[caller] = (tokens, now)
            return (1.0 - tokens) / self.refill_per_s


def key_matches(presented: str, keys: tuple[str, ...]) -> str | None:
    """The configured key equal to ``presented`` (constant-time, every key compared), else None."""
    found = None
    for key in keys:
        if hmac.compare_digest(presented.encode(), key.encode()):
            found = key
    return found


def field_errors(detail: Any) -> list[dict[str, str]]:
    """BentoML's validation detail (pydantic's error list) as the contract's ``[{field, message}]``."""
    if not isinstance(detail, list):
        return [{"field": "body", "message": str(detail)}]
    out = []
    for err in detail:
        if not isinstance(err, dict):
            out.append({"field": "body", "message": str(err)})
            continue
        loc = [str(part) for part in err.get("loc") or [] if part != "body"]
        kind = str(err.get("type", ""))
        message = str(err.get("msg", "invalid")).removeprefix("Value error, ")
        if kind == "extra_forbidden":
            message = "unknown field: not part of the contract"
        elif kind == "missing":
            message = "required"
        out.append({"field": ".".join(loc) or "body", "message": message})
    return out


def contract_400(body: bytes) -> bytes:
    """Rewrite a BentoML 400 body into ``{"error", "errors": [{field, message}]}``."""
    try:
        data = json.loads(body)
    except ValueError:
        data = {"error": body.decode("utf-8", "replace")}
    if isinstance(data, list) and data and isinstance(data[0], dict):
        data = data[0]
    if not isinstance(data, dict):
        data = {"error": str(data)}
    if isinstance(data.get("errors"), list) and isinstance(data.get("error"), str):
        return body  # already in the contract's shape (the /lists endpoints answer so themselves)
    errors = field_errors(data["detail"]) if "detail" in data else [
        {"field": "body", "message": str(data.get("error", "invalid request body"))}]
    count = f"{len(errors)} field" + ("s" if len(errors) != 1 else "")
    return json.dumps({"error": f"invalid request body: {count}", "errors": errors}).encode()


def _media_type(headers: dict[str, str]) -> str | None:
    value = headers.get("content-type")
    return None if value is None else value.split(";", 1)[0].strip().lower()


class RequestGuard:
    """ASGI middleware: body size, content type, API key and per-key rate limit on the scoring endpoints.

    It also gives the contract's shape to BentoML's 400 answers and serves the completed OpenAPI
    document: both are rewrites of what BentoML sends, so the endpoints themselves stay BentoML's.
    """

    def __init__(self, app: ASGIApp) -> None:
        """Read the guard's settings from the environment once, when the worker builds its app."""
        self.app = app
        self.settings = Settings.from_env()
        self.bucket = TokenBucket(self.settings.rate_limit_per_minute)
        self.metrics = service_metrics()
        # Published as the worker starts, long before its service has loaded the model.
        self.metrics.watch_drift(self.settings.reports_dir)
        self._openapi: bytes | None = None
        if self.settings.require_api_key and not self.settings.api_keys:
            logger.error("PROMOGUARD_API_KEYS is empty while keys are required: every call gets 401")

    @staticmethod
    async def _reject(send: Send, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        body = json.dumps({"error": message}).encode()
        await RequestGuard._answer(send, status, body, headers)

    @staticmethod
    async def _answer(send: Send, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
        raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        raw += [(k.encode(), v.encode()) for k, v in (headers or {}).items()]
        await send({"type": "http.response.start", "status": status, "headers": raw})
        await send({"type": "http.response.body", "body": body})

    async def _openapi_document(self, scope: Scope, receive: Receive, send: Send) -> None:
        """BentoML's /docs.json, completed (once per worker) by :func:`serving.openapi.complete_openapi`."""
        if self._openapi is None:
            status, body = await self._capture(scope, receive)
            if status != 200:
                await self._answer(send, status, body)
                return
            doc = complete_openapi(json.loads(body), self.settings.max_body_bytes)
            self._openapi = json.dumps(doc).encode()
        await self._answer(send, 200, self._openapi)

    async def _readiness(self, scope: Scope, receive: Receive, send: Send) -> None:
        """BentoML's readiness answer, with this worker's breakers as its body once it is ready.

        The status stays BentoML's (200 once a model or the rules are loaded), so a probe reading only
        the status sees no change; an operator reading the body sees how the service is answering.
        """
        status, body = await self._capture(scope, receive)
        if status != 200:
            reason = body.decode("utf-8", "replace").strip() or "not ready"
            await self._reject(send, status, reason)
            return
        detail = {"ready": True, **health_detail(_scorer_breakers(_worker_scorer()))}
        await self._answer(send, 200, json.dumps(detail).encode())

    async def _capture(self, scope: Scope, receive: Receive) -> tuple[int, bytes]:
        status = 500
        chunks: list[bytes] = []

        async def keep(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            elif message["type"] == "http.response.body":
                chunks.append(bytes(message.get("body", b"")))

        await self.app(scope, receive, keep)
        return status, b"".join(chunks)

    async def _with_contract_400(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Hand the request on; a 400 from BentoML is rewritten to the contract's field list."""
        held: Message | None = None
        chunks: list[bytes] = []

        async def relay(message: Message) -> None:
            nonlocal held
            if message["type"] == "http.response.start" and message["status"] == 400:
                held = message
                return
            if held is None:
                await send(message)
                return
            if message["type"] == "http.response.body":
                chunks.append(bytes(message.get("body", b"")))
                if not message.get("more_body", False):
                    body = contract_400(b"".join(chunks))
                    headers = [(k, v) for k, v in held.get("headers", []) if k.lower() != b"content-length"]
                    headers.append((b"content-length", str(len(body)).encode()))
                    await send({**held, "headers": headers})
                    await send({"type": "http.response.body", "body": body})

        await self.app(scope, receive, relay)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Check a protected request, then hand it on; every 4xx and 5xx answer is counted by status."""
        if scope.get("type") != "http":
            await self.app(scope, receive, send)
            return
        status = 0

        async def counted(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self._guard(scope, receive, counted)
        except Exception:
            # What escapes here reaches the client as a 500 from the server's outermost handler.
            status = status or 500
            raise
        finally:
            self.metrics.observe_http_error(scope.get("path") or "", status)

    async def _guard(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path") or ""
        if path == LISTS_MOUNT:
            # A mounted app answers only below its mount: GET /lists would be redirected to /lists/.
            path = LISTS_MOUNT + "/"
            scope = {**scope, "path": path, "raw_path": path.encode()}
        if path == "/docs.json" and scope.get("method") == "GET":
            await self._openapi_document(scope, receive, send)
            return
        if path == READYZ and scope.get("method") == "GET":
            await self._readiness(scope, receive, send)
            return
        if path not in PROTECTED_PATHS and not path.startswith(PROTECTED_PREFIXES):
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        caller = "anonymous"
        if self.settings.require_api_key:
            key = key_matches(headers.get("x-api-key", ""), self.settings.api_keys)
            if key is None:
                await self._reject(send, 401, "missing or invalid X-API-Key header")
                return
            # The bucket is named by a digest prefix so that keys never sit in memory twice or in logs.
            caller = "key:" + hmac.new(b"bucket", key.encode(), "sha256").hexdigest()[:16]
        length = headers.get("content-length")
        if scope.get("method") == "POST":
            if length is None or not length.isdigit():
                await self._reject(send, 411, "a Content-Length header is required")
                return
            if int(length) > self.settings.max_body_bytes:
                await self._reject(send, 413, f"body larger than {self.settings.max_body_bytes} bytes")
                return
            media = _media_type(headers)
            if media is not None and media != JSON_TYPE:
                # BentoML would try to parse a form or multipart body (and answer 500 on some).
                await self._reject(send, 415, f"unsupported content type {media}: send {JSON_TYPE}",
                                   {"accept": JSON_TYPE})
                return
        wait = self.bucket.take(caller)
        if wait > 0:
            await self._reject(send, 429, "rate limit exceeded", {"retry-after": str(max(1, round(wait)))})
            return
        if scope.get("method") == "POST":
            await self._with_contract_400(scope, receive, send)
            return
        await self.app(scope, receive, send)


# --- building the dependencies ---------------------------------------------------------------------


def _sqlite_path(uri: str) -> Path | None:
    return Path(uri[len("sqlite:///"):]) if uri.startswith("sqlite:///") else None


def load_model(settings: Settings) -> LoadedModel | None:
    """The champion of ``settings.model_name`` (an explicit directory first, then the registry or its cache).

    None when there is no usable model: the service then answers from the rules.
    """
    try:
        if settings.model_dir is not None:
            return LoadedModel.from_dir(settings.model_dir)
        db = _sqlite_path(settings.mlflow_tracking_uri)
        # One cache per model name: falling back to a cached version of another model would be
        # answering with a model nobody promoted under this name.
        cache = settings.serving_dir / "models" / settings.model_name
        if db is not None and not db.exists() and not any(cache.glob("*/manifest.json")):
            # No registry has ever been written here: do not create an empty one just to ask.
            logger.warning("no model registry at %s yet: answering from the rules", db)
            return None
        return LoadedModel.from_dir(fetch_champion(settings.mlflow_tracking_uri, settings.model_name, cache))
    except ArtifactError as exc:
        logger.warning("no usable model (%s): answering from the rules", exc)
        return None


def build_velocity(settings: Settings) -> VelocityLike | None:
    """The velocity store of the configured backend, or None (rules fallback) when it cannot open."""
    from features import velocity

    try:
        if settings.velocity_backend == "redis":
            client = velocity.redis_client(settings.redis_url, settings.redis_socket_timeout_s)
            return velocity.RedisVelocity(client, retention_s=settings.velocity_retention_days * 86_400)
        settings.serving_dir.mkdir(parents=True, exist_ok=True)
        # A local file is busy only because sibling threads hold the write lock (and, on a loaded host,
        # wait for the GIL while holding it); giving up after the store's default 50 ms fails open and
        # lets a burst on one capped code, the very case a cap exists for, slip past it. Waiting is
        # bounded by the traffic timeout of the service, and costs latency only during such a burst.
        return velocity.SqliteVelocity(
            settings.serving_dir / "velocity.db", busy_timeout_ms=SQLITE_BUSY_MS, checkpoint_interval_s=0.5,
            retention_s=settings.velocity_retention_days * 86_400,
        )
    except Exception as exc:
        logger.warning("velocity store unavailable (%s): every answer will be degraded", type(exc).__name__)
        return None


def build_graph(settings: Settings, redis_connection: Any = None) -> Any:
    """The identity graph beside the velocity store (SQLite file or Redis), or None when it cannot open.

    ``redis_connection``: the velocity store's Redis client, shared so that after an outage one pool
    reconnects, not two.
    """
    from features import graph, velocity

    config = graph.GraphConfig(
        max_persons_per_key=settings.graph_max_persons_per_key, retention_days=settings.graph_retention_days
    )
    try:
        if settings.velocity_backend == "redis":
            client = redis_connection or velocity.redis_client(
                settings.redis_url, settings.redis_socket_timeout_s
            )
            return graph.RedisGraph(client, config)
        settings.serving_dir.mkdir(parents=True, exist_ok=True)
        return graph.SqliteGraph(settings.serving_dir / "graph.db", config, busy_timeout_ms=SQLITE_BUSY_MS,
                                 checkpoint_interval_s=0.5)
    except Exception as exc:
        logger.warning("identity graph unavailable (%s): every answer will be degraded", type(exc).__name__)
        return None


def build_online(settings: Settings) -> Any:
    """Feast online features, or None when the store is not applied or cannot be opened."""
    feast_dir = settings.feast_dir
    if not feast_dir.exists():
        # Checked before importing Feast, which alone takes seconds to import.
        logger.warning("no Feast store in %s yet: answering from the rules", feast_dir)
        return None
    try:
        from features.store import OnlineFeatures, StoreConfig

        return OnlineFeatures(StoreConfig.from_settings(settings))
    except Exception as exc:
        logger.warning("Feast online store unavailable (%s): answering from the rules", type(exc).__name__)
        return None


def build_scorer(settings: Settings) -> Scorer:
    """Wire every dependency of the scorer from the settings."""
    from config.resolver import identity_resolver

    resolver = identity_resolver(settings)
    rules = load_rules(settings.rules_path) if settings.rules_path else default_rules()
    model = load_model(settings)
    records: RecordsLike = open_records(settings.state_url, settings.serving_dir, checkpoint_interval_s=0.5)
    if settings.log_queue:
        # The log's write leaves the request path; retries and twins still see the queued answer.
        records = QueuedRecords(records, maxsize=settings.log_queue_size)
    config = ScorerConfig(
        feature_deadline_ms=settings.feature_deadline_ms, request_deadline_ms=settings.request_deadline_ms,
        exploration=settings.exploration_shares,
    )
    velocity_store = build_velocity(settings)
    online, velocity, graph = build_breakers(
        settings, build_online(settings), velocity_store,
        build_graph(settings, getattr(velocity_store, "client", None)),
    )
    # Only errors count: the model runs in this process, so its being slow means the host is.
    model_guard = None if model is None else CircuitBreaker(
        "model", failures=settings.breaker_failures, cooldown_s=settings.breaker_cooldown_s,
    )
    return Scorer(
        resolver, online, velocity, model, rules, records, config, graph=graph, model_guard=model_guard,
    )


def build_breakers(
    settings: Settings, online: Any, velocity: VelocityLike | None, graph: Any
) -> tuple[Any, VelocityLike | None, Any]:
    """Put each dependency that opened behind its own circuit breaker (:mod:`serving.breaker`).

    On Redis a call slower than the whole request's deadline (or the socket timeout, if longer) counts
    as a failure: its request falls back to the rules anyway. A tighter bound (the 50 ms feature
    deadline) opened the breakers when the host, not Redis, was slow: on a loaded 2-core host the wait
    for the interpreter lock after a reply alone reaches tens of milliseconds. A frozen Redis is caught
    by its socket timeout either way. A SQLite file has no latency bound: its writers wait for each
    other on purpose (:data:`SQLITE_BUSY_MS`), and a burst on one capped code must not open the breaker
    and let the burst past its cap; only its errors count.
    """
    redis_slow_s = max(settings.redis_socket_timeout_s, settings.request_deadline_ms / 1000.0)

    def breaker(name: str, backend: str) -> CircuitBreaker:
        return CircuitBreaker(
            name, failures=settings.breaker_failures, cooldown_s=settings.breaker_cooldown_s,
            slow_call_s=redis_slow_s if backend == "redis" else None,
        )

    backend = settings.velocity_backend
    return (
        None if online is None else BreakerOnline(online, breaker("online_features", settings.online_store)),
        None if velocity is None else BreakerVelocity(velocity, breaker("velocity", backend)),
        None if graph is None else BreakerGraph(graph, breaker("identity_graph", backend)),
    )


class MissingApiKeys(InvalidSettings):
    """Keys are required (the default) but none is configured: every scoring call would be a 401."""


def check_api_keys(settings: Settings) -> None:
    """Refuse a start that could only answer 401: keys required and none configured."""
    if settings.require_api_key and not settings.api_keys:
        raise MissingApiKeys(
            "PROMOGUARD_API_KEYS is empty while PROMOGUARD_REQUIRE_API_KEY is true: set the comma-separated "
            "keys checkout sends, or PROMOGUARD_REQUIRE_API_KEY=false to open the scoring endpoints"
        )


def _error(ctx: bentoml.Context, status: int, message: str) -> JSONResponse:
    # BentoML copies ctx.response.status_code onto the response; both must agree.
    ctx.response.status_code = status
    return JSONResponse({"error": message}, status_code=status)


# --- the HTTP server's own per-request work ------------------------------------------------------------

#: Every URL, for BentoML's tracing exclusion list: its OpenTelemetry middleware is installed whatever
#: the sample rate, and a zero rate still builds a span per request; an excluded URL skips it whole.
ALL_URLS = ".*"


def framework_config(settings: Settings) -> dict[str, Any]:
    """BentoML service configuration for the settings' ``tracing`` and ``access_log`` switches.

    Off, they save a worker the OpenTelemetry span and the access-log record of every request; an
    operator's ``BENTOML_CONFIG`` (exporter, skip paths) applies on top of what is returned here.
    """
    tracing: dict[str, Any] = {} if settings.tracing else {"excluded_urls": ALL_URLS}
    return {"logging": {"access": {"enabled": settings.access_log}}, "tracing": tracing}


def with_framework_settings(service: Any) -> None:
    """Make a BentoML service read :func:`framework_config` from the environment's settings each time
    BentoML configures its server (``bentoml serve``, then each worker), never at import.

    BentoML reads a service's configuration in ``Service.inject_config`` just before it builds the
    server, so the service's class is swapped for one whose ``inject_config`` first applies the settings.
    Settings that do not parse leave the defaults (both off): the start is refused with a message
    naming the variable by :meth:`PromoGuard.refuse_unusable_settings` and by each worker.

    It then copies the merged ``threads`` (an operator's ``BENTOML_CONFIG`` over the decorator's) back
    into the service's own configuration: BentoML merges that file into the configuration its server
    reads ``workers`` from, but sizes each worker's thread pool from the service's own, where the
    decorator's value would otherwise always win.
    """
    from bentoml._internal.container import BentoMLContainer

    base = type(service)

    def inject_config(self: Any) -> None:
        try:
            settings = Settings.from_env()
        except InvalidSettings:
            settings = None
        if settings is not None:
            config = dict(self.config)
            config.update(framework_config(settings))
            self.config = config
        base.inject_config(self)
        threads = BentoMLContainer.config.services[self.name].get().get("threads")
        if threads and threads != self.config.get("threads"):
            self.config = {**self.config, "threads": threads}

    members = {"__slots__": (), "inject_config": inject_config}
    service.__class__ = type(f"Configured{base.__name__}", (base,), members)


# --- the service -----------------------------------------------------------------------------------


# One worker process per CPU: scoring is CPU-bound Python, so a single process saturates one core
# (the GIL) at about 100 requests/s here, while the SQLite files, Redis and the per-worker caches are
# all safe to share between processes. Threads let a worker keep answering while some requests wait
# on a dependency up to their deadline. An operator overrides both with a BentoML configuration file
# (``BENTOML_CONFIG``, ``services: {promoguard: {workers: N}}``).
SERVER_CONFIG: dict[str, Any] = {
    "workers": "cpu_count",
    "threads": 8,
    "traffic": {"timeout": 5},
    "endpoints": {"livez": "/livez", "readyz": READYZ},
    # Off until the settings say otherwise (with_framework_settings, below, reads them at serve time).
    "logging": {"access": {"enabled": False}},
    "tracing": {"excluded_urls": ALL_URLS},
}


@bentoml.service(name="promoguard", **SERVER_CONFIG)
class PromoGuard:
    """Scores promo-code attempts at checkout; answers from the rules when the model path is unavailable."""

    def __init__(self) -> None:
        """Build settings, dependencies and metric series once per worker."""
        quiet_third_party_warnings()
        redact_framework_errors()
        self.settings = Settings.from_env()
        check_api_keys(self.settings)
        self.scorer = build_scorer(self.settings)
        # Campaign controls and lists: read once now, then whenever the store's version moves.
        self.controls = ControlsStore(self.settings.state_url, self.settings.serving_dir)
        self.controls_refresher = ControlsRefresher(
            self.controls, self._publish_controls, self.settings.controls_refresh_s
        )
        logger.info(
            "promoguard ready: model=%s rules=%s feast=%s velocity=%s",
            self.scorer.model.version if self.scorer.model else "none (rules)",
            self.scorer.rules.version,
            "on" if self.scorer.online is not None else "off",
            self.settings.velocity_backend if self.scorer.velocity is not None else "off",
        )
        # Every series lives in serving.metrics; the guard in front shares the same worker-wide set.
        self.metrics = service_metrics()
        self.metrics.limit_campaigns(self.settings.metrics_campaigns)
        self.metrics.set_build_info(package_version())
        # The guard published it already if Starlette built the middleware stack first (it builds it
        # lazily, at the first ASGI call); once more here costs a stat and guarantees it either way.
        self.metrics.watch_drift(self.settings.reports_dir)
        self.metrics.watch_breakers(_scorer_breakers(self.scorer))
        self.m_shadow_dropped = self.metrics.shadow_dropped
        self.m_shadow_scored = self.metrics.shadow_scored
        self.m_shadow_errors = self.metrics.shadow_errors
        self.shadow = start_shadow(
            self.settings, self.scorer, on_drop=self.m_shadow_dropped.inc, on_error=self.m_shadow_errors.inc,
            on_logged=lambda row: self.m_shadow_scored.labels(
                live_decision=row.live_decision, challenger_decision=row.challenger_decision
            ).inc(),
        )
        # What is loaded by now (libraries, model, Feast registry: ~480k objects) lives as long as the
        # worker. Frozen, it is never walked by the cyclic collector again: measured at 200 req/s, the
        # full collections that paused a worker for 220-230 ms mid-request took 6-13 ms after this.
        gc.freeze()

    def _publish_controls(self, controls: Controls) -> None:
        # One reference swap: a request in flight keeps reading the snapshot it started with.
        self.scorer.controls = controls

    @bentoml.on_deployment
    def refuse_unusable_settings() -> None:
        """Stop ``bentoml serve`` itself, once, before any worker starts, on settings it cannot serve with.

        Raised in a worker instead, the same error would only make the server restart that worker
        forever; here it ends the command with one line naming the variable to fix.
        """
        try:
            check_api_keys(Settings.from_env())
        except InvalidSettings as exc:
            raise SystemExit(f"promoguard cannot start: {exc}") from None

    def __is_ready__(self) -> bool:
        """Ready once a model or the rules table is loaded (backends may still be down)."""
        return self.scorer.model is not None or bool(self.scorer.rules.rules)

    @bentoml.api(route="/score", input_spec=ScoreRequest, output_spec=ScoreResponse)
    def score(self, ctx: bentoml.Context, **body: Any) -> ScoreResponse | JSONResponse:
        """Score one promo-code attempt: risk 0-100, band, decision and the signals behind it."""
        req = ScoreRequest.model_validate(body)
        try:
            resp = self.scorer.score(req)
        except IdempotencyConflict as exc:
            self.metrics.errors.labels(kind="conflict").inc()
            return _error(ctx, 409, str(exc))
        path = "rules" if resp.fallback else "model"
        self.metrics.observe_score(req, resp)
        # Debug only: the access log and the scoring log already hold every request, and building a
        # record per request that no handler prints cost about 1% of a worker's CPU at 200 requests/s.
        logger.debug("scored request_id=%s score=%d decision=%s path=%s",
                     resp.request_id, resp.score, resp.decision, path)
        return resp

    @bentoml.api(route="/outcome", input_spec=OutcomeRequest, output_spec=OutcomeResponse)
    def outcome(self, ctx: bentoml.Context, **body: Any) -> OutcomeResponse | JSONResponse:
        """Confirm (redeemed) or release (abandoned, reversed) the reservation of a scored attempt."""
        req = OutcomeRequest.model_validate(body)
        try:
            scored = self.scorer.records.scored(req.request_id)
        except Exception as exc:
            return self._log_unavailable(ctx, "outcome", req.request_id, exc)
        if scored is None:
            return _error(ctx, 404, f"request_id {req.request_id!r} was never scored")
        try:
            answer = self.scorer.outcome(req)
        except Exception as exc:
            self.metrics.errors.labels(kind="outcome_unavailable").inc()
            logger.warning("outcome for request_id=%s failed: %s", req.request_id, type(exc).__name__)
            return _error(ctx, 503, "the reservation store is unavailable; retry the outcome later")
        self.metrics.observe_outcome(scored.get("promo_code"), req.outcome)
        return answer

    def _log_unavailable(
        self, ctx: bentoml.Context, call: str, request_id: str, exc: Exception
    ) -> JSONResponse:
        """A 503 for a call the scoring log could not serve: the caller retries it, nothing is lost."""
        self.metrics.errors.labels(kind=f"{call}_unavailable").inc()
        logger.warning("%s for request_id=%s: scoring log unavailable: %s", call, request_id,
                       type(exc).__name__)
        return _error(ctx, 503, f"the scoring log is unavailable; retry the {call} later")

    @bentoml.api(route="/feedback", input_spec=FeedbackRequest, output_spec=FeedbackResponse)
    def feedback(self, ctx: bentoml.Context, **body: Any) -> FeedbackResponse | JSONResponse:
        """Store a label (abuse or legit) for a scored attempt, for retraining."""
        req = FeedbackRequest.model_validate(body)
        try:
            if self.scorer.records.scored(req.request_id) is None:
                return _error(ctx, 404, f"request_id {req.request_id!r} was never scored")
            self.scorer.records.add_feedback(req.request_id, req.label, req.source, datetime.now(UTC))
        except Exception as exc:
            return self._log_unavailable(ctx, "feedback", req.request_id, exc)
        self.metrics.feedback.labels(label=req.label).inc()
        return FeedbackResponse(request_id=req.request_id, stored=True)

    @bentoml.on_shutdown
    def shutdown(self) -> None:
        """Stop the shadow worker, then close the online reader, the velocity store and the scoring log."""
        if self.shadow is not None:
            self.shadow.close()
        self.controls_refresher.close()
        self.scorer.close()


def _worker_scorer() -> Scorer:
    scorer: Scorer = bentoml.get_current_service().scorer
    return scorer


def _worker_service() -> PromoGuard:
    service: PromoGuard = bentoml.get_current_service()
    return service


def _scorer_breakers(scorer: Scorer) -> list[CircuitBreaker]:
    return breakers_of(scorer.online, scorer.velocity, scorer.graph, scorer.model_guard)


with_framework_settings(PromoGuard)
PromoGuard.add_asgi_middleware(RequestGuard)  # type: ignore[attr-defined]
PromoGuard.mount_asgi_app(decisions_app(_worker_scorer), path=DECISIONS_MOUNT)  # type: ignore[attr-defined]
PromoGuard.mount_asgi_app(identity_app(_worker_scorer), path=IDENTITY_MOUNT)  # type: ignore[attr-defined]
PromoGuard.mount_asgi_app(  # type: ignore[attr-defined]
    lists_app(lambda: _worker_service().controls, lambda: _worker_scorer().resolver,
              lambda: _worker_service().controls_refresher.refresh()),
    path=LISTS_MOUNT,
)
PromoGuard.mount_asgi_app(  # type: ignore[attr-defined]
    health_app(lambda: _scorer_breakers(_worker_scorer())), path=HEALTH_MOUNT
)
