"""The OpenAPI 3 document the HTTP API serves at /openapi.json (written by hand, kept beside
the handlers in gateway/http/api.py; schemathesis checks the two agree)."""

from __future__ import annotations

from typing import Any

from gateway import lifecycle
from gateway.model import Status

LIST_FILTERS = ("active", "done", "all", *(s.value for s in Status))
PAGE_LIMIT, MAX_PAGE_LIMIT = 100, 1000

_EMAIL = {"type": "string", "format": "email", "maxLength": 320}
_NUMBER_PARAM = {"name": "number", "in": "path", "required": True, "example": "SAG-000001",
                 "schema": {"type": "string", "pattern": "^[A-Za-z0-9-]{1,40}$"}}
_ACTING = {"name": "X-Acting-User", "in": "header", "required": False,
           "description": "With a service token: the agent it acts for (required for actions). With an agent "
                          "token: if given, the token's own agent.", "schema": _EMAIL}
_AS = {"as": {**_EMAIL, "description": "The acting agent (instead of X-Acting-User)."}}
_TEXT = {"type": "string", "minLength": 1, "maxLength": lifecycle.MAX_TEXT}
_ATTACHMENTS = {"type": "array", "maxItems": lifecycle.MAX_ATTACHMENTS, "items": {
    "type": "object", "required": ["data"], "properties": {
        "name": {"type": "string", "maxLength": 255}, "content_type": {"type": "string", "maxLength": 200},
        "data": {"type": "string", "format": "byte", "description": "base64"}}}}
_ERRORS = {
    "400": "The body is not valid JSON", "401": "No or unknown bearer token",
    "403": "The token's holder may not do this", "404": "No such case or user",
    "409": "The rules refuse it (illegal transition, closed case, outsider)", "413": "The body is too large",
    "415": "Unsupported content type", "422": "Invalid input", "503": "The store is unavailable",
}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json_content(schema: dict[str, Any]) -> dict[str, Any]:
    return {"application/json": {"schema": schema}}


def _operation(summary: str, ok: dict[str, Any], params: list[dict[str, Any]] | None = None,
               body: dict[str, Any] | None = None, ok_status: str = "200", errors: str = "400 401 403 404 409 422 503",
               secure: bool = True) -> dict[str, Any]:
    op: dict[str, Any] = {"summary": summary, "parameters": params or [], "responses": {
        ok_status: {"description": "OK", "content": ok},
        **{code: {"description": _ERRORS[code], "content": _json_content(_ref("Error"))} for code in errors.split()},
    }}
    if body is not None:
        op["requestBody"] = {"required": True, "content": body}
    op["security"] = [{"bearer": []}] if secure else []
    return op


def _action(summary: str, properties: dict[str, Any], required: list[str]) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "object", "properties": {**properties, **_AS}}
    if required:
        schema["required"] = required
    op = _operation(summary, _json_content(_ref("ActionResult")), [_NUMBER_PARAM, _ACTING], _json_content(schema),
                    errors="400 401 403 404 409 413 415 422 503")
    op["requestBody"]["required"] = bool(required)
    return {"post": op}


def openapi_document() -> dict[str, Any]:
    """The OpenAPI 3.0 description served at /openapi.json."""
    filters = [{"name": "status", "in": "query", "required": False,
                "schema": {"type": "string", "enum": list(LIST_FILTERS), "default": "active"}},
               {"name": "user", "in": "query", "required": False, "schema": _EMAIL},
               {"name": "limit", "in": "query", "required": False,
                "schema": {"type": "integer", "minimum": 1, "maximum": MAX_PAGE_LIMIT, "default": PAGE_LIMIT}},
               {"name": "before", "in": "query", "required": False,
                "description": "The `next` of the page before: the page after it.",
                "schema": {"type": "string", "maxLength": 40}}]
    search = [{"name": "text", "in": "query", "required": False, "schema": {"type": "string", "maxLength": 200}},
              {"name": "org", "in": "query", "required": False, "schema": {"type": "string", "maxLength": 200}}]
    comment = {"type": "object", "properties": {"text": {"type": "string", "maxLength": lifecycle.MAX_TEXT},
                                                "attachments": _ATTACHMENTS}}
    form = {"type": "object", "properties": {"text": {"type": "string"},
                                             "file": {"type": "array", "items": {"type": "string", "format": "binary"}}}}
    return {
        "openapi": "3.0.3",
        "info": {"title": "Kundebetjening gateway API", "version": "1",
                 "description": "Cases, statuses and sharing for agents and integrations (rules §3, §8)."},
        "paths": {
            "/healthz": {"get": _operation("Store reachable and loops alive", _json_content(_ref("Health")),
                                           errors="503", secure=False)},
            "/metrics": {"get": _operation("Prometheus metrics", {"text/plain": {"schema": {"type": "string"}}},
                                           errors="503", secure=False)},
            "/cases": {"get": _operation("Cases, filtered as in the portal, the last changed first, a page at a time",
                                         _json_content(_ref("CasePage")), filters, errors="401 403 422 503")},
            "/cases/{number}/attachments/{attachment_id}": {"get": _operation(
                "One attachment of the case, as a download (who may see the case and the comment)",
                {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
                [_NUMBER_PARAM, {"name": "attachment_id", "in": "path", "required": True,
                                 "schema": {"type": "integer", "minimum": 1}}],
                errors="401 403 404 503")},
            "/cases/{number}": {"get": _operation("One case with comments and history",
                                                  _json_content(_ref("CaseDetail")), [_NUMBER_PARAM],
                                                  errors="401 403 404 503")},
            "/cases/{number}/status": _action("Set the status (agents)", {
                "status": {"type": "string", "enum": [s.value for s in Status]},
                "reason": {"type": "string", "maxLength": 1000}}, ["status"]),
            "/cases/{number}/assign": _action("Assign to an agent (→ tildelt)", {"agent": _EMAIL}, ["agent"]),
            "/cases/{number}/reply": _action("Public answer, mailed to the parties (agents)",
                                             {"text": _TEXT, "attachments": _ATTACHMENTS}, ["text"]),
            "/cases/{number}/note": _action("Internal note, never mailed (agents)", {"text": _TEXT}, ["text"]),
            "/cases/{number}/share": _action("Share with a user of the requester's organisation",
                                             {"email": _EMAIL}, ["email"]),
            "/cases/{number}/close": _action("Close (the requester's \"Luk\", or an agent)",
                                             {"reason": {"type": "string", "maxLength": 1000}}, []),
            "/cases/{number}/comments": {"post": _operation(
                "The requester's comment with attachments", _json_content(_ref("ActionResult")), [_NUMBER_PARAM],
                {**_json_content(comment), "multipart/form-data": {"schema": form}}, ok_status="201",
                errors="400 401 403 404 409 413 415 422 503")},
            "/users/search": {"get": _operation("Users of an organisation by name or address",
                                                _json_content({"type": "array", "items": _ref("User")}), search,
                                                errors="401 403 422 503")},
            "/users/token": {"post": _operation(
                "Issue a requester token for a customer (agents)", _json_content(_ref("Token")), [],
                _json_content({"type": "object", "required": ["email"], "properties": {"email": _EMAIL}}),
                errors="400 401 403 404 409 415 422 503")},
            "/users/unbounce": {"post": _operation(
                "Clear a user's bouncing mark; the notifications held for it go out (agents)",
                _json_content(_ref("Unbounced")), [],
                _json_content({"type": "object", "required": ["email"], "properties": {"email": _EMAIL}}),
                errors="400 401 403 404 415 422 503")},
            **_privacy_paths(),
        },
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": _schemas(),
        },
    }


def _privacy_paths() -> dict[str, Any]:
    """A person's data (gateway/privacy.py), agents and services only; the reason is audited."""
    def body(**extra: Any) -> dict[str, Any]:
        return _json_content({"type": "object", "required": ["email", "reason"], "properties": {
            "email": _EMAIL, "reason": {"type": "string", "minLength": 1, "maxLength": 1000}, **extra, **_AS}})

    flag = {"type": "boolean", "default": False}
    zip_file = {"application/zip": {"schema": {"type": "string", "format": "binary"}}}
    errors = "400 401 403 404 409 415 422 503"
    return {
        "/users/export": {"post": _operation("Everything stored about a person, as a zip (agents)", zip_file,
                                             [_ACTING], body(internal=flag), errors=errors)},
        "/users/erase": {"post": _operation(
            "Erase a person's mails, files, text and name; block their address (agents)",
            _json_content({"type": "object", "required": ["email", "dry_run"]}), [_ACTING], body(dry_run=flag),
            errors=errors)},
        "/users/allow": {"post": _operation(
            "Let an erased person's address register again by mail (agents)",
            _json_content({"type": "object", "required": ["email", "blocked"]}), [_ACTING], body(),
            errors=errors)},
    }


def _schemas() -> dict[str, Any]:
    status = {"type": "string", "enum": [s.value for s in Status]}
    nullable_str = {"type": "string", "nullable": True}
    user = {"type": "object", "properties": {"email": {"type": "string"}, "name": {"type": "string"},
                                             "kind": {"type": "string"}, "organisation": nullable_str}}
    return {
        "Error": {"type": "object", "required": ["error"], "properties": {"error": {"type": "string"}}},
        "Health": {"type": "object", "required": ["status", "store", "loops"], "properties": {
            "status": {"type": "string", "enum": ["ok", "unavailable"]}, "store": {"type": "boolean"},
            "loops": {"type": "object", "additionalProperties": {"type": "boolean"}}}},
        "CaseSummary": {"type": "object", "required": ["number", "status"], "properties": {
            "number": {"type": "string"}, "subject": {"type": "string"}, "status": status,
            "requester": {"type": "string"}, "updated_at": nullable_str}},
        "CasePage": {"type": "object", "required": ["items", "next"], "properties": {
            "items": {"type": "array", "items": _ref("CaseSummary")},
            "next": {**nullable_str, "description": "Pass as `before` for the next page; null: no more."}}},
        "CaseDetail": {"type": "object", "required": ["number", "status", "comments", "history"], "properties": {
            "number": {"type": "string"}, "subject": {"type": "string"}, "status": status,
            "follows": nullable_str, "close_reason": nullable_str,
            "comments": {"type": "array", "items": {"type": "object"}},
            "history": {"type": "array", "items": {"type": "object"}}}},
        "ActionResult": {"type": "object", "required": ["case", "action", "status", "changed", "notifications"],
                         "properties": {"case": {"type": "string"}, "action": {"type": "string"}, "status": status,
                                        "changed": {"type": "boolean"},
                                        "notifications": {"type": "array", "items": {"type": "string"}}}},
        "User": user,
        "Token": {"type": "object", "required": ["email", "token", "expires_at"],
                  "properties": {"email": {"type": "string"}, "token": {"type": "string"},
                                 "expires_at": {"type": "string", "format": "date-time"}}},
        "Unbounced": {"type": "object", "required": ["email", "was_bouncing", "released"],
                      "properties": {"email": {"type": "string"}, "was_bouncing": {"type": "boolean"},
                                     "released": {"type": "integer", "description": "held notifications sent again"}}},
    }
