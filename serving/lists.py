"""``/lists``: the allow and deny lists over HTTP, for a case-management tool or an analyst's script.

Mounted beside ``/decisions`` and behind the same guard (``X-API-Key``, rate limit). Every change is
audited with the caller's key (as a short hash, never the key itself) and takes effect on this worker at
once and on every other within ``PROMOGUARD_CONTROLS_REFRESH_S``.

* ``GET /lists`` (``?list=deny``): the live entries, keyed hashes only.
* ``POST /lists/{allow|deny}`` with ``{"kind": "email", "value": "a@b.example", "reason": "...",
  "expires_at": "2027-01-01T00:00:00Z"}`` (or ``"expires_in_days": 30``): adds or renews an entry. The
  raw ``value`` is hashed with the service's pepper and dropped; ``"key"`` gives the hash itself (the
  only form for household, local_network and person, as a decision record or ``GET /identity`` shows).
* ``DELETE /lists/{allow|deny}/{kind}/{key}``: removes one.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from scoring.controls import LIST_NAMES, InvalidControl, ListEntry, ListKind, ListName, list_key, utc_now
from scoring.controls_store import ControlsStore

MOUNT = "/lists"


class ListEntryRequest(BaseModel):
    """``POST /lists/{list}``: one identity to add to the allow or deny list."""

    model_config = ConfigDict(extra="forbid")

    kind: ListKind = Field(description="What the entry identifies (household, local_network, person by key).")
    value: str | None = Field(
        default=None, min_length=1, max_length=512,
        description="The raw identifier (an email, phone, device id, card fingerprint, account id, IP, or an "
                    "IP of the network): hashed with the service's pepper and dropped.",
    )
    key: str | None = Field(
        default=None, min_length=1, max_length=128,
        description="The keyed hash instead, as a decision record or GET /identity shows it.",
    )
    reason: str = Field(min_length=1, max_length=200, description="Why: a deny entry's refusal says it.")
    expires_at: datetime | None = Field(default=None, description="When the entry stops applying (ISO-8601).")
    expires_in_days: float | None = Field(default=None, gt=0, le=3650, description="Or: days from now.")


class ListEntryView(BaseModel):
    """One entry as stored: a keyed hash, never the raw identifier."""

    list: ListName
    kind: ListKind
    key: str
    reason: str
    added_by: str = Field(description="Who added it (an API key's short hash, or the operator's name).")
    added_at: datetime | None
    expires_at: datetime | None


class ListEntries(BaseModel):
    """``GET /lists``: the live entries, oldest first."""

    entries: list[ListEntryView]


def entry_json(entry: ListEntry) -> dict[str, Any]:
    """One entry as the API answers it."""
    return ListEntryView.model_validate(entry, from_attributes=True).model_dump(mode="json")


def actor_of(request: Request) -> str:
    """Who made a change over HTTP: a short hash of the API key presented (the key itself is a secret)."""
    key = request.headers.get("x-api-key", "")
    return "api-key:" + hashlib.sha256(key.encode()).hexdigest()[:8] if key else "api"


def expiry(body: ListEntryRequest, now: datetime) -> datetime | None:
    """The entry's expiry from ``expires_at`` or ``expires_in_days``; InvalidControl naming the field."""
    if body.expires_at is not None and body.expires_in_days is not None:
        raise InvalidControl("expires_at: give expires_at or expires_in_days, not both")
    if body.expires_at is not None:
        when = body.expires_at if body.expires_at.tzinfo else body.expires_at.replace(tzinfo=UTC)
        if when <= now:
            raise InvalidControl("expires_at: must be in the future")
        return when.astimezone(UTC)
    return None if body.expires_in_days is None else now + timedelta(days=body.expires_in_days)


def entry_from_body(list_name: str, body: Any, resolver: Any, now: datetime) -> ListEntry:
    """An add request as a :class:`ListEntry` (raw value hashed); InvalidControl naming the bad field."""
    if list_name not in LIST_NAMES:
        raise InvalidControl(f"list: expected one of {', '.join(LIST_NAMES)}, got {list_name!r}")
    try:
        req = ListEntryRequest.model_validate(body)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"]) or "body"
        message = "unknown field" if first["type"] == "extra_forbidden" else str(first["msg"])
        raise InvalidControl(f"{field}: {message}") from None
    if (req.value is None) == (req.key is None):
        raise InvalidControl("value: give the raw value or its key, exactly one of them")
    key = list_key(resolver, req.kind, req.value) if req.value is not None else str(req.key).strip()
    return ListEntry(list=list_name, kind=req.kind, key=key, reason=req.reason.strip(),  # type: ignore[arg-type]
                     expires_at=expiry(req, now))


def _bad_request(exc: InvalidControl) -> JSONResponse:
    # The contract's 400 shape, as /score answers it: the field named first, then what is wrong.
    field, _, message = str(exc).partition(": ")
    return JSONResponse(
        {"error": "invalid request body: 1 field", "errors": [{"field": field, "message": message}]},
        status_code=400,
    )


def lists_app(store_of: Callable[[], ControlsStore], resolver_of: Callable[[], Any],
              changed: Callable[[], object]) -> Starlette:
    """The ASGI app mounted at :data:`MOUNT`; ``changed`` refreshes the worker's snapshot after a change."""

    async def show(request: Request) -> Response:
        wanted = request.query_params.get("list")
        if wanted is not None and wanted not in LIST_NAMES:
            return _bad_request(InvalidControl(f"list: expected one of {', '.join(LIST_NAMES)}"))
        entries = await run_in_threadpool(lambda: store_of().entries(wanted, now=utc_now()))
        return JSONResponse({"entries": [entry_json(e) for e in entries]})

    async def add(request: Request) -> Response:
        try:
            body = await request.json()
        except ValueError:
            return _bad_request(InvalidControl("body: expected a JSON object"))
        try:
            entry = entry_from_body(str(request.path_params["list"]), body, resolver_of(), utc_now())
        except InvalidControl as exc:
            return _bad_request(exc)
        stored = await run_in_threadpool(store_of().add_entry, entry, actor_of(request))
        await run_in_threadpool(changed)
        return JSONResponse(entry_json(stored), status_code=201)

    async def remove(request: Request) -> Response:
        params = request.path_params
        gone = await run_in_threadpool(
            store_of().remove_entry, str(params["list"]), str(params["kind"]), str(params["key"]),
            actor_of(request),
        )
        if not gone:
            return JSONResponse({"error": "no such entry"}, status_code=404)
        await run_in_threadpool(changed)
        return JSONResponse({"removed": True})

    return Starlette(routes=[
        Route("/", show, methods=["GET"]),
        Route("/{list}", add, methods=["POST"]),
        Route("/{list}/{kind}/{key}", remove, methods=["DELETE"]),
    ])
