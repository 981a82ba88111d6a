"""The scoring log's writes off the request path: :class:`QueuedRecords` wraps any records backend.

``append`` keeps the record in a bounded in-memory queue and returns at once; one background thread
per process writes what has queued up, in batches of one transaction each (``append_many`` of
:class:`scoring.records.Records` and :class:`scoring.records_pg.PostgresRecords`; one ``append`` per
record for a backend without it). On a loaded worker a batch holds every answer given while the
previous batch was written, so the log costs one commit (and one cross-process write lock) per batch,
not per request.

What the wrapper promises, so that no answered request is lost and idempotency still holds:

* a queued record counts as logged: ``lookup`` (a retry gets the same answer, a changed body under the
  same id is an :class:`~scoring.records.IdempotencyConflict`), ``append`` of a concurrent twin (it
  gets the first answer) and ``scored`` (``/outcome``, ``/feedback``, ``GET /decisions``) see it
  before it is written;
* a full queue makes ``append`` write synchronously, as without the queue;
* a failed batch write is kept at the head of the queue and retried with a growing pause (its
  exception type is logged, nothing else); while the backend is away the queue fills, and appends then
  fail synchronously, as without the queue, which the scorer reports as a degraded answer;
* ``close`` writes everything still queued before closing the backend (and logs an error with how
  many records it could not write if the backend never came back within ``close_timeout_s``).

The queue is per process. Two attempts with the same ``request_id`` that reach two worker processes
within the same moment (before either is written) each get their own answer; the log keeps the one
written first, and the writer of the other logs a warning naming the request id. Without the queue
the second would have got the first's answer; a client retries after a timeout, not within a few
milliseconds, so the window is what a batch takes to write.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from scoring.records import (
    DEFAULT_RETENTION_DAYS,
    SCORE_COLUMNS,
    IdempotencyConflict,
    PruneCounts,
    RecordsLike,
    ScoreRecord,
    ShadowRecord,
    score_values,
)

logger = logging.getLogger(__name__)

#: Records written per transaction at most.
BATCH_SIZE = 256
#: Seconds the writer waits after the first record of a batch, so that a quiet worker still writes
#: several answers per commit (an answer is durable this much later; the queue answers for it meanwhile).
LINGER_S = 0.005
#: First and longest pause, seconds, between two attempts to write a batch the backend refused.
RETRY_FIRST_S, RETRY_MAX_S = 0.05, 2.0


class QueuedRecords:
    """A :class:`~scoring.records.RecordsLike` whose score appends are written in the background.

    Every other call (outcomes, feedback, shadow rows, prune, count) goes to the wrapped backend at
    once; ``prune`` and ``count`` first wait for the queue to be written.
    """

    def __init__(
        self, inner: RecordsLike, *, maxsize: int = 10_000, batch_size: int = BATCH_SIZE,
        linger_s: float = LINGER_S, close_timeout_s: float = 30.0,
    ) -> None:
        """Wrap ``inner``; at most ``maxsize`` records wait in memory (more are written synchronously)."""
        if maxsize < 1 or batch_size < 1:
            raise ValueError("maxsize and batch_size must be >= 1")
        self.inner = inner
        self.maxsize = maxsize
        self.batch_size = batch_size
        self.linger_s = linger_s
        self.close_timeout_s = close_timeout_s
        # Queued or being written, by request id: what lookup/append/scored answer from until committed.
        self._pending: dict[str, ScoreRecord] = {}
        self._queue: deque[ScoreRecord] = deque()
        self._cond = threading.Condition()
        self._closing = False
        self._closed = False
        self._writer = threading.Thread(target=self._run, name="scoring-log-writer", daemon=True)
        self._writer.start()

    # -- the request path ---------------------------------------------------------------------------

    def _queued(self, request_id: str, body_sha256: str) -> dict[str, Any] | None:
        """The queued answer for ``request_id`` (IdempotencyConflict for another body), else None."""
        with self._cond:
            rec = self._pending.get(request_id)
        if rec is None:
            return None
        if rec.body_sha256 != body_sha256:
            raise IdempotencyConflict(request_id)
        return dict(rec.response)

    def lookup(self, request_id: str, body_sha256: str) -> dict[str, Any] | None:
        """The stored or queued answer for a retry, None when new; IdempotencyConflict for a changed body."""
        # The queue first: a record leaves it only once committed, so it is always in one of the two.
        queued = self._queued(request_id, body_sha256)
        if queued is not None:
            return queued
        return self.inner.lookup(request_id, body_sha256)

    def append(self, rec: ScoreRecord) -> dict[str, Any]:
        """Queue one attempt and return its answer; a queued twin's answer (or conflict) wins.

        Written synchronously when the queue is full or closed.
        """
        with self._cond:
            twin = self._pending.get(rec.request_id)
            if twin is None and not self._closing and len(self._pending) < self.maxsize:
                self._pending[rec.request_id] = rec
                self._queue.append(rec)
                self._cond.notify()
                return dict(rec.response)
        if twin is not None:
            if twin.body_sha256 != rec.body_sha256:
                raise IdempotencyConflict(rec.request_id)
            return dict(twin.response)
        return self.inner.append(rec)

    def scored(self, request_id: str) -> dict[str, Any] | None:
        """The logged (or queued) row of a scored attempt, or None."""
        with self._cond:
            rec = self._pending.get(request_id)
        if rec is not None:
            return dict(zip(SCORE_COLUMNS, score_values(rec), strict=True))
        return self.inner.scored(request_id)

    def history(self, request_id: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """Outcomes and feedback received for a scored attempt, oldest first (never queued)."""
        return self.inner.history(request_id)

    def add_outcome(self, request_id: str, outcome: str, reservation: str, ts: datetime) -> None:
        """Log what checkout did with an attempt (written at once)."""
        self.inner.add_outcome(request_id, outcome, reservation, ts)

    def add_feedback(self, request_id: str, label: str, source: str, ts: datetime) -> None:
        """Store a label in the label contract's shape (written at once)."""
        self.inner.add_feedback(request_id, label, source, ts)

    def append_shadow(self, recs: Sequence[ShadowRecord]) -> int:
        """Log challenger answers (the shadow worker's own batches, already off the request path)."""
        return self.inner.append_shadow(recs)

    def prune(
        self, now: datetime, days: float = DEFAULT_RETENTION_DAYS, *, vacuum: bool = False
    ) -> PruneCounts:
        """Write the queue, then delete decisions older than ``days`` with what followed them."""
        self.flush(self.close_timeout_s)
        return self.inner.prune(now, days, vacuum=vacuum)

    def count(self, table: str) -> int:
        """Rows in one of the service's tables, once the queue is written."""
        self.flush(self.close_timeout_s)
        return self.inner.count(table)

    @property
    def pending(self) -> int:
        """Records answered for but not yet committed."""
        with self._cond:
            return len(self._pending)

    def flush(self, timeout_s: float | None = None) -> bool:
        """Wait until every record queued so far is written; False when ``timeout_s`` ran out first."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        with self._cond:
            while self._pending and self._writer.is_alive():
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                self._cond.wait(left)
            return not self._pending

    def close(self) -> None:
        """Write everything still queued, stop the writer, then close the wrapped backend."""
        with self._cond:
            if self._closed:
                return
            self._closing = True
            self._cond.notify_all()
        self._writer.join(self.close_timeout_s)
        with self._cond:
            self._closed = True
            left = len(self._pending)
            self._cond.notify_all()
        if left:
            logger.error("scoring log closed with %d answered requests it could not write", left)
        self.inner.close()

    # -- the writer ---------------------------------------------------------------------------------

    def _next_batch(self) -> list[ScoreRecord] | None:
        """The next records to write (waiting for some), or None once closing with nothing left."""
        with self._cond:
            while not self._queue and not self._closing:
                self._cond.wait()
            if not self._queue or self._closed:
                return None
            lingering = not self._closing and len(self._queue) < self.batch_size
        if lingering and self.linger_s > 0:
            time.sleep(self.linger_s)
        with self._cond:
            count = min(self.batch_size, len(self._queue))
            return [self._queue.popleft() for _ in range(count)]

    def _run(self) -> None:
        pause = RETRY_FIRST_S
        while True:
            batch = self._next_batch()
            if batch is None:
                return
            try:
                skipped = self._write(batch)
            except Exception as exc:
                # Kept, in order, at the head of the queue: the next attempt writes it first.
                logger.warning("scoring log batch of %d not written, retrying: %s", len(batch),
                               type(exc).__name__)
                with self._cond:
                    self._queue.extendleft(reversed(batch))
                    if self._closing:
                        # Closing waits at most close_timeout_s for a backend that keeps failing.
                        self._cond.wait(pause)
                if not self._closing:
                    time.sleep(pause)
                pause = min(RETRY_MAX_S, pause * 2)
                continue
            pause = RETRY_FIRST_S
            for rec in skipped:
                self._report_twin(rec)
            with self._cond:
                for rec in batch:
                    if self._pending.get(rec.request_id) is rec:
                        del self._pending[rec.request_id]
                self._cond.notify_all()

    def _write(self, batch: list[ScoreRecord]) -> list[ScoreRecord]:
        """Write ``batch`` in one transaction when the backend can; the records it already held."""
        append_many = getattr(self.inner, "append_many", None)
        if append_many is not None:
            skipped: list[ScoreRecord] = append_many(batch)
            return skipped
        held = []
        for rec in batch:
            try:
                stored = self.inner.append(rec)
            except IdempotencyConflict:
                held.append(rec)
                continue
            if stored != dict(rec.response):
                held.append(rec)
        return held

    def _report_twin(self, rec: ScoreRecord) -> None:
        """A record whose id another process logged first: the log keeps that one; say so if it differs."""
        try:
            stored = self.inner.lookup(rec.request_id, rec.body_sha256)
        except IdempotencyConflict:
            stored = None
        except Exception as exc:
            logger.warning("scoring log twin check of request_id=%s failed: %s", rec.request_id,
                           type(exc).__name__)
            return
        if stored != dict(rec.response):
            logger.warning("request_id=%s was logged first with another answer by a concurrent twin",
                           rec.request_id)
