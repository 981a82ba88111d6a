"""Shadow scoring in the service: a challenger answers a share of live traffic, off the request path.

The challenger is ``PROMOGUARD_SHADOW_MODEL`` (a registered version number or alias of the configured
model name) and/or ``PROMOGUARD_SHADOW_RULES`` (a rules YAML); whichever is not set is the live one.
``PROMOGUARD_SHADOW_SHARE`` of the requests (drawn from a hash of ``request_id``, so a retry is drawn the
same) are handed over after their live answer is logged: :meth:`ShadowRunner.submit` is one hash and
one non-blocking ``put`` into a bounded queue (``PROMOGUARD_SHADOW_QUEUE``). When the queue is full the
shadow work is dropped and counted, never the live answer. One worker thread per service worker takes
the requests off the queue, scores each with :func:`scoring.shadow.shadow_record` (the scorer's own
model and verdict code, on the inputs the live path read; it writes no velocity and no reservation) and
logs a batch of rows to the scoring log's ``shadow`` table in one transaction.

The live answer never waits for the shadow, but the worker shares the process: its CPU time competes
for the GIL and its batched writes take the scoring log's write lock between requests' writes. A share
of a few percent keeps that noise small; ``promoguard_shadow_dropped_total`` says when the worker
cannot keep up.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from config.settings import Settings
from scoring.artifact import ArtifactError, LoadedModel
from scoring.policy import unit_draw
from scoring.records import ShadowRecord
from scoring.rules import load_rules
from scoring.schemas import ScoreResponse
from scoring.scorer import RequestContext, Scorer, Verdict
from scoring.shadow import Challenger, challenger_policy, shadow_record
from serving.model_cache import fetch_version

logger = logging.getLogger(__name__)

#: Most rows the worker writes in one transaction.
BATCH = 64


@dataclass(frozen=True)
class _Work:
    ctx: RequestContext
    verdict: Verdict
    response: ScoreResponse


def in_shadow(request_id: str, share: float) -> bool:
    """True when this request is in the shadowed share (a hash of ``request_id``: retries agree)."""
    return share > 0.0 and unit_draw(request_id, "shadow") < share


class ShadowRunner:
    """A bounded queue and one worker thread scoring shadowed requests with a challenger.

    ``on_drop``, ``on_logged`` and ``on_error`` are told about each dropped request, each logged row and
    each request the worker failed to score or log (the service counts them as Prometheus series).
    """

    def __init__(
        self,
        scorer: Scorer,
        challenger: Challenger,
        share: float,
        queue_size: int,
        *,
        on_drop: Callable[[], None] | None = None,
        on_logged: Callable[[ShadowRecord], None] | None = None,
        on_error: Callable[[], None] | None = None,
        batch: int = BATCH,
    ) -> None:
        """Start the worker thread (a daemon: it never holds a stopping process up)."""
        if not 0.0 <= share <= 1.0:
            raise ValueError(f"share must be between 0 and 1, got {share}")
        self.scorer = scorer
        self.challenger = challenger
        self.share = float(share)
        self.policy = challenger_policy(scorer, challenger)
        self.batch = max(1, int(batch))
        self._queue: queue.Queue[_Work | None] = queue.Queue(maxsize=max(1, int(queue_size)))
        self._on_drop = on_drop
        self._on_logged = on_logged
        self._on_error = on_error
        self._counts = threading.Lock()
        self.submitted = 0
        self.dropped = 0
        self.logged = 0
        self.failed = 0
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="promoguard-shadow", daemon=True)
        self._thread.start()

    # -- the request thread's side: O(1), never blocks ----------------------------------------------

    def submit(self, ctx: RequestContext, verdict: Verdict, response: ScoreResponse) -> bool:
        """Queue one live answer for the challenger if it is in the share; False when not taken or dropped.

        Never blocks and never raises for a full queue: that drops the shadow work and counts it.
        The signature is :attr:`scoring.scorer.Scorer.on_scored`'s.
        """
        if self._closed or not in_shadow(ctx.req.request_id, self.share):
            return False
        try:
            self._queue.put_nowait(_Work(ctx, verdict, response))
        except queue.Full:
            with self._counts:
                self.dropped += 1
            if self._on_drop is not None:
                self._on_drop()
            return False
        with self._counts:
            self.submitted += 1
        return True

    @property
    def pending(self) -> int:
        """Requests queued or being scored."""
        return self._queue.unfinished_tasks

    # -- the worker's side ------------------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            work: list[_Work] = []
            stop = first is None
            if first is not None:
                work.append(first)
            while not stop and len(work) < self.batch:
                try:
                    more = self._queue.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    stop = True
                else:
                    work.append(more)
            try:
                self._score(work)
            finally:
                for _ in range(len(work) + (1 if stop else 0)):
                    self._queue.task_done()
            if stop:
                return

    def _score(self, work: list[_Work]) -> None:
        rows: list[ShadowRecord] = []
        for item in work:
            try:
                rows.append(shadow_record(self.scorer, self.challenger, self.policy, item.ctx, item.verdict,
                                          item.response))
            except Exception as exc:
                logger.warning("shadow scoring of request_id=%s failed: %s", item.ctx.req.request_id,
                               type(exc).__name__)
                self._failed(1)
        if not rows:
            return
        try:
            self.scorer.records.append_shadow(rows)
        except Exception as exc:
            logger.warning("logging %d shadow rows failed: %s", len(rows), type(exc).__name__)
            self._failed(len(rows))
            return
        with self._counts:
            self.logged += len(rows)
        if self._on_logged is not None:
            for row in rows:
                self._on_logged(row)

    def _failed(self, n: int) -> None:
        with self._counts:
            self.failed += n
        if self._on_error is not None:
            for _ in range(n):
                self._on_error()

    def wait(self, timeout_s: float = 10.0) -> bool:
        """Wait until every queued request is scored and logged (tests, shutdown); False on timeout."""
        deadline = time.monotonic() + timeout_s
        while self._queue.unfinished_tasks:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.005)
        return True

    def close(self, timeout_s: float = 5.0) -> None:
        """Stop taking work, let the worker finish what is queued (up to ``timeout_s``), then stop it."""
        if self._closed:
            return
        self._closed = True
        try:
            self._queue.put(None, timeout=timeout_s)
        except queue.Full:
            logger.warning("shadow queue still full at shutdown: %d shadowed requests not scored",
                           self._queue.qsize())
            return
        self._thread.join(timeout_s)


# --- building the challenger -----------------------------------------------------------------------


def load_challenger(settings: Settings) -> Challenger | None:
    """The configured challenger, or None when shadow scoring is off or the challenger cannot be loaded.

    A challenger that cannot be loaded turns the shadow off (logged as an error): comparing with
    anything but the version asked for would mislead. The service answers either way.
    """
    if settings.shadow_share <= 0.0:
        if settings.shadow_model or settings.shadow_rules:
            logger.info("a shadow challenger is configured but PROMOGUARD_SHADOW_SHARE is 0: shadow is off")
        return None
    if not settings.shadow_model and not settings.shadow_rules:
        logger.warning("PROMOGUARD_SHADOW_SHARE is set without PROMOGUARD_SHADOW_MODEL or "
                       "PROMOGUARD_SHADOW_RULES: there is no challenger, shadow is off")
        return None
    rules = None
    if settings.shadow_rules is not None:
        try:
            rules = load_rules(settings.shadow_rules)
        except (OSError, ValueError) as exc:
            logger.error("shadow rules %s cannot be loaded (%s): shadow is off", settings.shadow_rules, exc)
            return None
    model = None
    if settings.shadow_model:
        # Not the champion's cache: the champion falls back to the newest version cached there, which
        # must never be a challenger's.
        cache = settings.serving_dir / "shadow-models" / settings.model_name
        try:
            model = LoadedModel.from_dir(
                fetch_version(settings.mlflow_tracking_uri, settings.model_name, settings.shadow_model, cache)
            )
        except ArtifactError as exc:
            logger.error("shadow model %s cannot be loaded (%s): shadow is off", settings.shadow_model, exc)
            return None
    return Challenger(model=model, rules=rules)


def start_shadow(
    settings: Settings,
    scorer: Scorer,
    *,
    on_drop: Callable[[], None] | None = None,
    on_logged: Callable[[ShadowRecord], None] | None = None,
    on_error: Callable[[], None] | None = None,
) -> ShadowRunner | None:
    """Load the challenger, start its worker and hook it to ``scorer`` (None when shadow is off)."""
    challenger = load_challenger(settings)
    if challenger is None:
        return None
    runner = ShadowRunner(
        scorer, challenger, settings.shadow_share, settings.shadow_queue,
        on_drop=on_drop, on_logged=on_logged, on_error=on_error,
    )
    scorer.on_scored = runner.submit
    logger.info("shadow on: %s scores %.1f%% of requests (queue %d)", challenger.describe(),
                100 * settings.shadow_share, settings.shadow_queue)
    return runner
