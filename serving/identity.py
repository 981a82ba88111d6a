"""``GET /identity/{request_id}``: who an attempt resolved to in the identity graph, for analysts.

Mounted beside ``/decisions`` and behind the same guard (``X-API-Key``, rate limit). It answers the
person and the household the attempt was resolved to (:func:`features.graph.explain`): the person's
linked attempts with the evidence that joined each, its account count and keyed account hashes, the
promotion codes it tried, first and last seen; the household's accounts and attempts. Only keyed hashes
and counts leave the graph: no raw email, phone, address, card or IP exists there to return.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pydantic import BaseModel, Field
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from features.graph import IdentityView, explain
from scoring.scorer import Scorer

MOUNT = "/identity"


class LinkedAttempt(BaseModel):
    """One attempt of the person, with the evidence kinds that joined it to the person."""

    request_id: str
    ts: str | None
    evidence: list[str] = Field(
        description="Key kinds shared with earlier attempts (empty: it founded the person)."
    )


class PersonView(BaseModel):
    """The person an attempt resolved to, as the graph holds it now."""

    person_id: str
    accounts: int
    account_keys: list[str] = Field(description="Keyed hashes of the person's accounts (at most 50).")
    emails: int
    households: int
    promotion_codes: dict[str, int] = Field(description="Attempts per promotion code.")
    first_seen: str | None
    last_seen: str | None
    linked_attempts: list[LinkedAttempt] = Field(description="The person's latest attempts (at most 50).")
    evidence_kinds: list[str]


class HouseholdView(BaseModel):
    """The household (normalised address) an attempt shipped to."""

    household_id: str
    accounts: int
    attempts: int
    first_seen: str | None
    last_seen: str | None


class IdentityResponse(BaseModel):
    """``GET /identity/{request_id}``: the attempt's person and household; hashes and counts only."""

    request_id: str
    person_id: str
    household_id: str | None
    evidence: list[str] = Field(description="Key kinds that joined this attempt to an earlier person.")
    person: PersonView
    household: HouseholdView | None


def identity_for(scorer: Scorer, request_id: str) -> IdentityResponse | None:
    """The identity view of ``request_id`` from this scorer's graph; None when it was never resolved.

    Raises RuntimeError when the service runs without an identity graph.
    """
    graph: Any = scorer.graph
    if graph is None:
        raise RuntimeError("the identity graph is not available")
    view: IdentityView | None = explain(graph.view(), request_id)
    if view is None:
        return None
    return IdentityResponse(
        request_id=view.request_id,
        person_id=view.person_id,
        household_id=view.household_id,
        evidence=list(view.evidence),
        person=PersonView.model_validate(view.person),
        household=None if view.household is None else HouseholdView.model_validate(view.household),
    )


def identity_app(scorer_of: Callable[[], Scorer]) -> Starlette:
    """The ASGI app answering ``/{request_id}`` (mounted at :data:`MOUNT`); ``scorer_of`` finds the scorer."""

    async def identity(request: Request) -> Response:
        request_id = str(request.path_params["request_id"])
        if not request_id or len(request_id) > 128:
            return JSONResponse({"error": "request_id: 1 to 128 characters"}, status_code=404)
        try:
            found = await run_in_threadpool(identity_for, scorer_of(), request_id)
        except Exception as exc:
            # The graph is down or frozen: say so, never a 500 for a dependency.
            message = f"identity graph unavailable: {type(exc).__name__}"
            return JSONResponse({"error": message}, status_code=503)
        if found is None:
            return JSONResponse({"error": f"request_id {request_id!r} was never resolved"}, status_code=404)
        return JSONResponse(found.model_dump(mode="json"))

    return Starlette(routes=[Route("/{request_id:path}", identity, methods=["GET"])])
