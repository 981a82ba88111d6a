"""The replay engine: recorded attempts, in time order, through the service's own :class:`Scorer`.

Nothing here re-implements a decision. Each attempt becomes the /score body checkout would have sent
(:mod:`replay.requests`) and goes through the same ``Scorer.score`` the service runs: identity
resolution, online features, velocity counters, caps and their reservations, hard rules, the model
artifact and its per-promotion thresholds. What differs is only what the service takes from the
world around it:

* **Time.** The scorer's clock is the attempt's own timestamp, so windows and reservation expiry see
  the history's time, not the wall clock.
* **Online features.** :class:`PointInTimeOnline` answers each attempt with the feature store's
  state just before it (the batch pipeline's point-in-time rows, labels only as known then): what a
  continuously materialized online store would have held.
* **State.** Velocity counters, caps and the scoring log start empty in a work folder and are warmed
  by replaying the preceding window (its answers are not reported).
* **Outcomes.** After each answer the recorded outcome is reported as checkout would: a redemption
  that promoguard did not refuse is confirmed (it counts against caps from then on); anything else
  releases the hold.
"""

from __future__ import annotations

import math
import multiprocessing as mp
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from features.graph import MemoryGraph
from features.velocity import SqliteVelocity
from scoring.artifact import LoadedModel
from scoring.records import Records
from scoring.rules import RulesTable
from scoring.schemas import OutcomeRequest, ScoreRequest
from scoring.scorer import IdentityResolverLike, Scorer, ScorerConfig

#: Columns of the decisions frame, one row per replayed attempt.
DECISION_COLUMNS: tuple[str, ...] = (
    "request_id",
    "ts",
    "score",
    "band",
    "decision",
    "degraded",
    "fallback",
    "top_signals",
)


class PointInTimeOnline:
    """An online store that answers each replayed attempt with its own pre-event feature values.

    ``features`` holds one row per attempt (``request_id`` plus ``{view}__{feature}`` columns, from
    :func:`features.pipeline.pre_event_features`). A request the frame does not hold reads as all
    missing, which the scorer treats like an unknown entity.
    """

    def __init__(self, features: pd.DataFrame) -> None:
        """Index the rows by request id; values stay in one float64 matrix."""
        self.feature_names = tuple(c for c in features.columns if "__" in c)
        self._row = {str(r): i for i, r in enumerate(features["request_id"].tolist())}
        self._values = features[list(self.feature_names)].to_numpy(dtype=np.float64, na_value=np.nan)

    def read(self, entity_rows: Mapping[str, str | None], deadline: float | None = None) -> dict[str, float]:
        """The features of the attempt named by ``entity_rows['request_id']``."""
        i = self._row.get(str(entity_rows.get("request_id")))
        if i is None:
            return dict.fromkeys(self.feature_names, math.nan)
        return dict(zip(self.feature_names, self._values[i].tolist(), strict=True))

    def close(self) -> None:
        """Nothing to release."""


@dataclass
class _Clock:
    now: float = 0.0

    def __call__(self) -> float:
        return self.now


@dataclass(frozen=True)
class Replayer:
    """What one configuration replays with: the model (None: rules only), rules and identity resolver."""

    resolver: IdentityResolverLike
    model: LoadedModel | None
    rules: RulesTable
    #: Deadlines far beyond any replay step: in process nothing is slow, and a GC pause must not turn
    #: an answer into a rules fallback the service would not have given.
    config: ScorerConfig = field(
        default_factory=lambda: ScorerConfig(feature_deadline_ms=60_000.0, request_deadline_ms=120_000.0)
    )

    @property
    def model_version(self) -> str | None:
        """The replayed model's version (None for the rules alone)."""
        return None if self.model is None else self.model.version


@contextmanager
def _scorer(
    replayer: Replayer, online: PointInTimeOnline, work_dir: Path | None
) -> Iterator[tuple[Scorer, _Clock]]:
    clock = _Clock()
    with tempfile.TemporaryDirectory(prefix="promoguard-replay-", dir=work_dir) as tmp:
        # Scratch files: this replay alone reads them, and a crash throws the replay away anyway.
        velocity = SqliteVelocity(Path(tmp) / "velocity.db", scratch=True)
        records = Records(Path(tmp) / "scores.db", scratch=True)
        scorer = Scorer(
            replayer.resolver,
            online,
            velocity,
            replayer.model,
            replayer.rules,
            records,
            replayer.config,
            clock,
            # The graph grows with the replayed history, as the service's would have.
            graph=MemoryGraph(),
        )
        try:
            yield scorer, clock
        finally:
            scorer.close()


def _seconds(value: Any) -> float:
    return pd.Timestamp(value).timestamp()


def replay(
    bodies: Sequence[Mapping[str, Any]],
    outcomes: Sequence[str],
    online: PointInTimeOnline,
    replayer: Replayer,
    *,
    warm: int = 0,
    work_dir: Path | None = None,
    progress: Callable[[int], None] | None = None,
) -> pd.DataFrame:
    """Replay ``bodies`` (in time order, each with a ``timestamp``) and return the answers.

    The first ``warm`` bodies only warm the counters and caps; the frame holds one row per later body
    (:data:`DECISION_COLUMNS`). ``outcomes`` are the recorded outcomes (redeemed, abandoned, rejected),
    aligned with ``bodies``. ``progress`` is called with the number of bodies done so far.
    """
    if len(outcomes) != len(bodies):
        raise ValueError(f"outcomes: {len(outcomes)} given for {len(bodies)} bodies")
    rows: list[tuple[Any, ...]] = []
    with _scorer(replayer, online, work_dir) as (scorer, clock):
        for i, (body, outcome) in enumerate(zip(bodies, outcomes, strict=True)):
            req = ScoreRequest.model_validate(body)
            clock.now = _seconds(body["timestamp"])
            answer = scorer.score(req)
            honoured = outcome == "redeemed" and answer.decision != "refuse"
            scorer.outcome(
                OutcomeRequest(request_id=req.request_id, outcome="redeemed" if honoured else "abandoned")
            )
            if i >= warm:
                rows.append(
                    (
                        req.request_id,
                        pd.Timestamp(body["timestamp"]),
                        answer.score,
                        answer.band,
                        answer.decision,
                        answer.degraded,
                        answer.fallback,
                        [s.name for s in answer.signals[:3]],
                    )
                )
            if progress is not None and (i + 1) % 500 == 0:
                progress(i + 1)
        if progress is not None:
            progress(len(bodies))
    frame = pd.DataFrame(rows, columns=list(DECISION_COLUMNS))
    frame["ts"] = pd.to_datetime(frame["ts"], utc=True)
    return frame


def replay_many(
    bodies: Sequence[Mapping[str, Any]],
    outcomes: Sequence[str],
    online: PointInTimeOnline,
    replayers: Sequence[Replayer],
    *,
    warm: int = 0,
    work_dir: Path | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> list[pd.DataFrame]:
    """:func:`replay` once per configuration, each in a forked process of its own, side by side.

    Every configuration keeps its own counters, caps and log, so the replays are independent and two
    cores replay two configurations in the time of one. ``progress(i, done)`` reports configuration
    ``i``'s bodies done. Where ``fork`` is not available, or for a single configuration, they run here.
    """

    def run(i: int, tick: Callable[[int], None] | None) -> pd.DataFrame:
        return replay(bodies, outcomes, online, replayers[i], warm=warm, work_dir=work_dir, progress=tick)

    if len(replayers) < 2 or "fork" not in mp.get_all_start_methods():
        return [run(i, None if progress is None else partial(progress, i)) for i in range(len(replayers))]
    return _in_forked_children(run, len(replayers), progress)


def _in_forked_children(
    run: Callable[[int, Callable[[int], None] | None], pd.DataFrame],
    n: int,
    progress: Callable[[int, int], None] | None,
    poll_s: float = 0.25,
) -> list[pd.DataFrame]:
    """``run(i, tick)`` for i < n, each in a forked child; the frames come back through pipes."""
    ctx = mp.get_context("fork")
    counters = [ctx.Value("q", 0) for _ in range(n)]
    pipes = [ctx.Pipe(duplex=False) for _ in range(n)]

    def child(i: int) -> None:
        try:
            pipes[i][1].send(("ok", run(i, partial(setattr, counters[i], "value"))))
        except BaseException as exc:  # sent to the parent, which raises it with the configuration named
            pipes[i][1].send(("error", f"{type(exc).__name__}: {exc}"))

    procs = [ctx.Process(target=child, args=(i,), daemon=True) for i in range(n)]
    for proc in procs:
        proc.start()
    results: dict[int, tuple[str, Any]] = {}
    try:
        while len(results) < n:
            for i, (recv, _) in enumerate(pipes):
                if i in results:
                    continue
                if recv.poll(poll_s):
                    results[i] = recv.recv()
                elif not procs[i].is_alive():
                    results[i] = ("error", f"the replay process exited with code {procs[i].exitcode}")
            for i, counter in enumerate(counters):
                if progress is not None:
                    progress(i, int(counter.value))
    finally:
        for proc in procs:
            proc.join(timeout=5)
            if proc.is_alive():
                proc.kill()
    failed = [f"configuration {i + 1}: {results[i][1]}" for i in range(n) if results[i][0] != "ok"]
    if failed:
        raise RuntimeError("replay failed: " + "; ".join(failed))
    return [results[i][1] for i in range(n)]
