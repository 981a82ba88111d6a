"""``GET /decisions/{request_id}``: the decision record of one scored request, for analysts.

A small Starlette app mounted beside the BentoML endpoints (BentoML's own APIs are POST only). It runs
behind the same guard (``X-API-Key``, rate limit) and reads the worker's own scorer: the scoring log,
and the loaded model and rules that a counterfactual re-scores with. The work (a SQLite read and a few
dozen re-scorings for a counterfactual) runs in a thread, off the event loop and off the checkout path.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from scoring.decisions import decision_record
from scoring.schemas import DecisionRecord
from scoring.scorer import Scorer

MOUNT = "/decisions"


def record_for(scorer: Scorer, request_id: str) -> DecisionRecord | None:
    """The decision record of ``request_id`` from this scorer's log, model and rules."""
    return decision_record(scorer.records, request_id, scorer.model, scorer.rules)


def decisions_app(scorer_of: Callable[[], Scorer]) -> Starlette:
    """The ASGI app answering ``/{request_id}`` (mounted at :data:`MOUNT`); ``scorer_of`` finds the scorer."""

    async def decision(request: Request) -> Response:
        request_id = str(request.path_params["request_id"])
        if not request_id or len(request_id) > 128:
            return JSONResponse({"error": "request_id: 1 to 128 characters"}, status_code=404)
        try:
            record = await run_in_threadpool(record_for, scorer_of(), request_id)
        except Exception as exc:
            # The scoring log (PostgreSQL, in production) is away: a retryable 503, never a 500.
            return JSONResponse({"error": f"the scoring log is unavailable: {type(exc).__name__}"},
                                status_code=503)
        if record is None:
            return JSONResponse({"error": f"request_id {request_id!r} was never scored"}, status_code=404)
        body: dict[str, Any] = record.model_dump(mode="json")
        return JSONResponse(body)

    return Starlette(routes=[Route("/{request_id:path}", decision, methods=["GET"])])
