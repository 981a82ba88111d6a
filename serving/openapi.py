"""The OpenAPI document a checkout engineer reads: BentoML's generated one, completed.

BentoML generates ``/docs.json`` from the pydantic models (field descriptions, the reason-code enum),
but titles it with the service name, versions it "None", declares no security scheme, describes
errors with its own generic shapes and cannot list the answers the guard in front of the endpoints
gives. :func:`complete_openapi` rewrites that document once per worker: title and the package
version, a description, the ``X-API-Key`` scheme on every protected operation, the true error shapes
(400 as a list of ``{field, message}``, 401, 404, 409, 411, 413, 415, 429), a request and a response
example, and ``GET /decisions/{request_id}`` and ``GET /identity/{request_id}``, which are served beside
the BentoML endpoints.
"""

from __future__ import annotations

import copy
import json
from importlib import metadata
from typing import Any

from pydantic import BaseModel

from scoring.schemas import DecisionRecord, ErrorResponse
from serving.identity import IdentityResponse
from serving.lists import ListEntries, ListEntryRequest, ListEntryView

TITLE = "promoguard scoring API"
SECURITY_SCHEME = "ApiKeyAuth"
_REF = "#/components/schemas/{model}"

DESCRIPTION = """\
Scores a promo-code attempt at checkout: a 0-100 risk **score**, its **band**, a **decision**
(allow, watch, verify, refuse the discount) and the **signals** behind it, each with a stable
reason **code** (the enum of `signals[].code`; the README's reason-code table says what each means).

The score agrees with the decision: refuse is always in the high band, verify at least medium, allow
below the promotion's verify threshold. The deciding rule comes first in `signals`, then the largest
contributions; the points add up to the score.

**Authentication**: send one of the service's keys in the `X-API-Key` header on `/score`, `/outcome`,
`/feedback` and `/decisions/{request_id}` (health and metrics are open).

**Bodies** are flat JSON (`Content-Type: application/json`; anything else is a 415). Unknown fields
are a 400 naming the field. A malformed `ip`, `device.local_ip` or `cart.currency` is a 400; a
malformed `email` or `phone` is accepted and raises the `EMAIL_INVALID` / `PHONE_INVALID` signal.

**Errors** are `{"error": "..."}`; a 400 adds `errors`, one `{field, message}` per invalid field.
Checkout always gets a decision: a failing dependency gives a degraded answer from the rules, never
a 5xx.
"""

#: The README's example request (the demo's welcome-code attempt).
REQUEST_EXAMPLE: dict[str, Any] = {
    "request_id": "try-me-1",
    "promotion": {"code": "WELCOME10", "type": "welcome", "discount_value": 15.0, "per_customer_limit": 1},
    "account": {"is_guest": True},
    "email": "Jane.Doe+promo@gmail.com",
    "phone": "+1 415-555-0100",
    "shipping_address": {
        "line1": "123 Main St Apt 4B",
        "city": "San Francisco",
        "region": "CA",
        "postal_code": "94110",
        "country": "US",
    },
    "payment": {"fingerprint": "fp_demo_0001", "bin": "424242", "last4": "4242"},
    "device": {"device_id": "3f2b8c1e-9a4d-4e7b-8c2a-5d6e7f8a9b0c", "user_agent": "Mozilla/5.0"},
    "ip": "73.162.10.21",
    "cart": {"total": 64.0, "currency": "USD"},
}

#: The README's example answer, from a real call (regenerated with the README's "The scoring API").
RESPONSE_EXAMPLE: dict[str, Any] = json.loads(
    # --- generated: begin
    """{
     "request_id": "try-me-1",
     "score": 97,
     "band": "high",
     "decision": "refuse",
     "signals": [
      {
       "name": "customer_cap_reached",
       "code": "CUSTOMER_CAP_REACHED",
       "description": "per-customer limit of 1 use across every welcome code already reached on this device, payment method, phone number, email address and shipping household",
       "points": 69,
       "source": "rule"
      },
      {
       "name": "code_age",
       "code": "CODE_AGE",
       "description": "code first used 90 days ago",
       "points": 8,
       "source": "model"
      },
      {
       "name": "code_shared_widely",
       "code": "CODE_SHARED_WIDELY",
       "description": "code used from 1 device in the last 24 hours",
       "points": 8,
       "source": "model"
      },
      {
       "name": "code_new_account_share",
       "code": "CODE_NEW_ACCOUNT_SHARE",
       "description": "100% of this code's attempts in the last 7 days came from new accounts or guests",
       "points": 5,
       "source": "model"
      },
      {
       "name": "one_per_customer",
       "code": "ONE_PER_CUSTOMER",
       "description": "a code limited to one use per customer",
       "points": 3,
       "source": "model"
      },
      {
       "name": "account_new",
       "code": "ACCOUNT_NEW",
       "description": "guest checkout, so no account history",
       "points": 2,
       "source": "model"
      },
      {
       "name": "code_attempts",
       "code": "CODE_ATTEMPTS",
       "description": "1 attempt with this code in the last 24 hours",
       "points": 2,
       "source": "model"
      },
      {
       "name": "baseline",
       "code": "BASELINE",
       "description": "typical risk of an attempt before any signal",
       "points": 0,
       "source": "model"
      },
      {
       "name": "email_alias",
       "code": "EMAIL_ALIAS",
       "description": "email uses an alias (plus tag or dots) of another mailbox",
       "points": 0,
       "source": "identity"
      }
     ],
     "model_version": "promo-abuse-20261202092031-58t",
     "degraded": false,
     "fallback": null,
     "latency_ms": 6.245
    }"""  # noqa: E501 (a real answer's description, verbatim)
    # --- generated: end
)


def _error(
    description: str, example: str, *, fields: bool = False, headers: dict[str, Any] | None = None
) -> dict[str, Any]:
    body: dict[str, Any] = {"error": example}
    if fields:
        body["errors"] = [
            {"field": "promotion.code", "message": "required"},
            {"field": "ip", "message": "not an IP address (IPv4 or IPv6 expected)"},
        ]
    out: dict[str, Any] = {
        "description": description,
        "content": {
            "application/json": {"schema": {"$ref": _REF.format(model="ErrorResponse")}, "example": body}
        },
    }
    if headers:
        out["headers"] = headers
    return out


def _common_errors() -> dict[str, Any]:
    return {
        "400": _error(
            "The body is not valid: one entry per invalid field.",
            "invalid request body: 2 fields",
            fields=True,
        ),
        "401": _error(
            "X-API-Key is missing or not one of the service's keys.", "missing or invalid X-API-Key header"
        ),
        "411": _error("No Content-Length header.", "a Content-Length header is required"),
        "413": _error("The body is larger than the service accepts.", "body larger than 65536 bytes"),
        "415": _error(
            "The body is not JSON.", "unsupported content type multipart/form-data: send application/json"
        ),
        "429": _error(
            "This key sent more requests a minute than the service allows.",
            "rate limit exceeded",
            headers={"Retry-After": {"description": "Seconds to wait.", "schema": {"type": "integer"}}},
        ),
    }


def to_openapi30(schema: Any) -> Any:
    """A pydantic JSON schema (2020-12 flavour) in OpenAPI 3.0's dialect: nullable, no const, no $defs."""
    if isinstance(schema, list):
        return [to_openapi30(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: to_openapi30(v) for k, v in schema.items() if k not in ("$defs", "examples")}
    if "const" in out:
        out["enum"] = [out.pop("const")]
    for key in ("anyOf", "oneOf"):
        branches = out.get(key)
        if isinstance(branches, list) and any(b == {"type": "null"} for b in branches):
            rest = [b for b in branches if b != {"type": "null"}]
            out.pop(key)
            if len(rest) == 1:
                only = rest[0]
                if "$ref" in only:
                    out["allOf"] = [only]
                else:
                    out.update({k: v for k, v in only.items() if k not in out})
            else:
                out[key] = rest
            out["nullable"] = True
    return out


def _components(*models: type[BaseModel]) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for model in models:
        schema = model.model_json_schema(ref_template=_REF)
        for name, sub in schema.get("$defs", {}).items():
            found[name] = to_openapi30(sub)
        found[model.__name__] = to_openapi30(schema)
    return found


def _analyst_path(
    summary: str, description: str, operation: str, model: str, found: str, extra: dict[str, Any]
) -> dict[str, Any]:
    """A GET ``/{request_id}`` lookup for analysts: API key, the id in the path, ``model`` when found."""
    return {
        "get": {
            "tags": ["Service APIs"],
            "summary": summary,
            "description": description,
            "operationId": operation,
            "security": [{SECURITY_SCHEME: []}],
            "parameters": [
                {
                    "name": "request_id",
                    "in": "path",
                    "required": True,
                    "description": "The request_id the attempt was scored under.",
                    "schema": {"type": "string", "minLength": 1, "maxLength": 128},
                }
            ],
            "responses": {
                "200": {
                    "description": found,
                    "content": {"application/json": {"schema": {"$ref": _REF.format(model=model)}}},
                },
                "401": _common_errors()["401"],
                "429": _common_errors()["429"],
                **extra,
            },
        }
    }


def _identity_path() -> dict[str, Any]:
    return _analyst_path(
        "The person and household one attempt resolved to (analysts only)",
        "Who the identity graph resolved the attempt to: the person (attempts joined by two strong "
        "identities, or the same account) with its linked attempts and the evidence kinds that joined "
        "each, accounts (keyed hashes), codes tried, first and last seen; and the household (the "
        "normalised shipping address). Keyed hashes and counts only: the graph holds no raw identifier.",
        "promoguard__identity",
        "IdentityResponse",
        "The person and household.",
        {
            "404": _error(
                "No attempt was resolved under this request_id.", "request_id 'x' was never resolved"
            ),
            "503": _error(
                "The identity graph is down; retry later.", "identity graph unavailable: GraphUnavailable"
            ),
        },
    )


def _health_paths() -> dict[str, Any]:
    """``/readyz`` and ``/health/detail``: open routes with each dependency's circuit breaker."""
    breaker = {
        "type": "object",
        "properties": {
            "dependency": {"type": "string"},
            "state": {"type": "string", "enum": ["closed", "half_open", "open"]},
            "consecutive_failures": {"type": "integer"},
            "opened_total": {"type": "integer"},
            "enabled": {"type": "boolean", "description": "False when turned off (no failures counted)."},
        },
    }
    detail: dict[str, Any] = {
        "type": "object",
        "properties": {
            "degraded": {"type": "boolean", "description": "Some breaker of this worker is not closed."},
            "breakers": {
                "type": "object",
                "description": "By dependency: online_features, velocity, identity_graph, model.",
                "additionalProperties": breaker,
            },
        },
    }
    ready = copy.deepcopy(detail)
    ready["properties"]["ready"] = {"type": "boolean"}

    def route(summary: str, text: str, schema: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
        ok = {"description": "This worker's breakers.", "content": {"application/json": {"schema": schema}}}
        return {"get": {"summary": summary, "description": text, "responses": {"200": ok, **extra}}}

    return {
        "/readyz": route(
            "Readiness, with each dependency's circuit breaker",
            "200 once a model or the rules are loaded, degraded or not: a degraded service still "
            "answers, from the rules. No API key.",
            ready,
            {"503": _error("Not ready yet: nothing is loaded.", "not ready")},
        ),
        "/health/detail": route(
            "Each dependency's circuit breaker",
            "The breakers of the worker that answers; always 200. No API key.",
            detail,
            {},
        ),
    }


def _decisions_path() -> dict[str, Any]:
    return _analyst_path(
        "The decision record of one scored request (analysts only)",
        "The answer exactly as it was given (score, band, decision, signals), the model and rules "
        "versions, every model input (hashed identity keys only, never raw identity), timings, outcomes "
        "and labels received since, and for verify and refuse answers a counterfactual: the smallest set "
        "of signals (found greedily over the top signals, re-scoring the model and rules on the stored "
        "inputs) whose absence would have changed the decision. Computed on demand, off the checkout "
        "path; never part of the /score answer.",
        "promoguard__decision",
        "DecisionRecord",
        "The decision record.",
        {"404": _error("No attempt was scored under this request_id.", "request_id 'x' was never scored")},
    )


def _json_ref(model: str) -> dict[str, Any]:
    return {"application/json": {"schema": {"$ref": _REF.format(model=model)}}}


def _lists_paths() -> dict[str, Any]:
    """``/lists``: the allow and deny lists (API key; keyed hashes only)."""
    secured = {"tags": ["Service APIs"], "security": [{SECURITY_SCHEME: []}]}
    list_param = {"name": "list", "in": "path", "required": True, "description": "allow or deny.",
                  "schema": {"type": "string", "enum": ["allow", "deny"]}}
    common = {"401": _common_errors()["401"], "429": _common_errors()["429"]}
    return {
        "/lists": {"get": {
            **secured, "operationId": "promoguard__lists", "summary": "The live allow and deny entries",
            "description": "Every entry that has not expired, oldest first: kind, keyed hash, reason, who "
                           "added it and when, until when. `?list=allow` or `?list=deny` shows one list.",
            "parameters": [{**list_param, "in": "query", "required": False}],
            "responses": {"200": {"description": "The entries.", "content": _json_ref("ListEntries")},
                          **common},
        }},
        "/lists/{list}": {"post": {
            **secured, "operationId": "promoguard__lists_add",
            "summary": "Add or renew an allow or deny entry",
            "description": "A deny entry refuses every attempt it matches, with its reason; an allow entry "
                           "allows, except past a hard cap or on a spent single-use code. The raw value is "
                           "hashed with the service's pepper and never stored. Applies on this replica at "
                           "once and on the others within PROMOGUARD_CONTROLS_REFRESH_S seconds; audited.",
            "parameters": [list_param],
            "requestBody": {"required": True, "content": _json_ref("ListEntryRequest")},
            "responses": {
                "201": {"description": "The entry as stored.", "content": _json_ref("ListEntryView")},
                "400": _common_errors()["400"], **common,
            },
        }},
        "/lists/{list}/{kind}/{key}": {"delete": {
            **secured, "operationId": "promoguard__lists_remove", "summary": "Remove an allow or deny entry",
            "description": "Removes the entry of this kind and keyed hash; audited.",
            "parameters": [list_param,
                           {"name": "kind", "in": "path", "required": True, "schema": {"type": "string"}},
                           {"name": "key", "in": "path", "required": True, "schema": {"type": "string"}}],
            "responses": {"200": {"description": "Removed."},
                          "404": _error("There is no such entry.", "no such entry"), **common},
        }},
    }


_SUMMARIES = {
    "/score": "Score one promo-code attempt",
    "/outcome": "Report what checkout did with a scored attempt",
    "/feedback": "Label a scored attempt (abuse or legit) for retraining",
}


def package_version() -> str:
    """The installed promoguard distribution's version."""
    try:
        return metadata.version("promoguard")
    except metadata.PackageNotFoundError:
        return "0.0.0"


def complete_openapi(doc: dict[str, Any], max_body_bytes: int | None = None) -> dict[str, Any]:
    """BentoML's generated document with title, version, security, true errors, examples and /decisions."""
    out = copy.deepcopy(doc)
    out["info"] = {"title": TITLE, "version": package_version(), "description": DESCRIPTION}
    components = out.setdefault("components", {})
    schemas = components.setdefault("schemas", {})
    for name, schema in _components(
        ErrorResponse, DecisionRecord, IdentityResponse, ListEntryRequest, ListEntryView, ListEntries
    ).items():
        schemas.setdefault(name, schema)
    components["securitySchemes"] = {
        SECURITY_SCHEME: {
            "type": "apiKey",
            "in": "header",
            "name": "X-API-Key",
            "description": "One of the keys in PROMOGUARD_API_KEYS.",
        }
    }
    paths = out.setdefault("paths", {})
    errors = _common_errors()
    if max_body_bytes is not None:
        errors["413"]["content"]["application/json"]["example"] = {
            "error": f"body larger than {max_body_bytes} bytes"
        }
    for path, summary in _SUMMARIES.items():
        op = paths.get(path, {}).get("post")
        if op is None:
            continue
        op["summary"] = summary
        op["security"] = [{SECURITY_SCHEME: []}]
        responses = {k: v for k, v in op.get("responses", {}).items() if str(k) == "200"}
        responses.update(errors)
        if path == "/score":
            responses["409"] = _error(
                "The request_id was already scored with a different body.",
                "request_id 'try-me-1' was already scored with a different body; use a "
                "new request_id for a new attempt",
            )
        else:
            responses["404"] = _error(
                "No attempt was scored under this request_id.", "request_id 'x' was never scored"
            )
        if path == "/outcome":
            responses["503"] = _error(
                "The reservation store is down; retry later.",
                "the reservation store is unavailable; retry the outcome later",
            )
        responses["500"] = _error(
            "A bug in the service (dependency failures never give a 5xx).",
            "An unexpected error has occurred, please check the server log.",
        )
        op["responses"] = responses
        body = op.get("requestBody")
        if isinstance(body, dict):
            body["required"] = True
            if path == "/score":
                body.setdefault("content", {}).setdefault("application/json", {})["example"] = REQUEST_EXAMPLE
        if path == "/score" and "200" in responses:
            responses["200"].setdefault("content", {}).setdefault("application/json", {})["example"] = (
                RESPONSE_EXAMPLE
            )
    paths["/decisions/{request_id}"] = _decisions_path()
    paths["/identity/{request_id}"] = _identity_path()
    paths.update(_health_paths())
    paths.update(_lists_paths())
    used = str(paths)
    for stale in ("InvalidArgument", "NotFound", "InternalServerError"):
        if f"/{stale}'" not in used:
            schemas.pop(stale, None)
    return out
