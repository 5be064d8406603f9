"""What the API's endpoints share: reading a request (the caller's token, a JSON or multipart
body within its size limit, the acting user, uploaded files) and answering (JSON, never cached;
a GatewayError as its status code, never a 500)."""

from __future__ import annotations

import base64
import binascii
import json
import logging
from email.message import Message
from email.parser import BytesParser
from email.policy import compat32
from typing import Any

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from gateway import credentials, lifecycle
from gateway.addresses import canonical
from gateway.credentials import Caller
from gateway.errors import GatewayError, NotFound, Refused, TemporaryFailure
from gateway.http.deps import HttpDeps
from gateway.model import Role
from store import users
from store.transact import in_session

# The API's lines keep the API's logger, whichever of its modules logs them.
log = logging.getLogger("gateway.http.api")


# --- errors ------------------------------------------------------------------------------------


class ApiError(Exception):
    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers


# On every response: no browser guesses a type (a case's JSON holds customers' text), and no
# cache keeps what a token was needed to see.
PRIVATE = {"X-Content-Type-Options": "nosniff", "Cache-Control": "private, no-store"}


def error_json(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers={**PRIVATE, **(headers or {})})


_STATUS_OF: tuple[tuple[type[Exception], int], ...] = (
    (NotFound, 404), (lifecycle.Forbidden, 403), (lifecycle.InvalidInput, 422), (Refused, 409),
    (TemporaryFailure, 503), (GatewayError, 422),
)


async def on_error(request: Request, exc: Exception) -> Response:
    if isinstance(exc, ApiError):
        return error_json(exc.status, exc.message, exc.headers)
    if isinstance(exc, HTTPException):
        return error_json(exc.status_code, str(exc.detail), dict(exc.headers or {}))
    for kind, status in _STATUS_OF:
        if isinstance(exc, kind):
            if status == 503:
                log.warning("api.store_error", extra={"error": type(exc).__name__, "path": request.url.path})
                return error_json(503, "the store is unavailable; try again")
            return error_json(status, str(exc))
    log.exception("api.failed", extra={"path": request.url.path})
    return error_json(500, "internal error")


# --- request helpers ------------------------------------------------------------------------------


def deps_of(request: Request) -> HttpDeps:
    return request.app.state.gateway  # type: ignore[no-any-return]


def case_number(request: Request) -> str:
    number = str(request.path_params.get("number", ""))
    if not lifecycle.valid_number(number):
        raise NotFound(f"no case {number!r}")
    return number


async def caller_of(request: Request) -> Caller:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise ApiError(401, "a bearer token is required", {"WWW-Authenticate": "Bearer"})
    try:
        return await credentials.authenticate(deps_of(request).tokens, token)
    except credentials.Unauthenticated as exc:
        raise ApiError(401, str(exc), {"WWW-Authenticate": 'Bearer error="invalid_token"'}) from None


async def body_bytes(request: Request) -> bytes:
    limit = deps_of(request).settings.smtp.max_message_size * 4 // 3 + 65536  # base64 attachments
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise ApiError(413, f"request body larger than {limit} bytes")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ApiError(413, f"request body larger than {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def json_body(request: Request) -> dict[str, Any]:
    ctype = request.headers.get("content-type", "application/json").split(";")[0].strip().lower()
    if ctype not in ("application/json", ""):
        raise ApiError(415, "send application/json")
    raw = await body_bytes(request)
    if not raw.strip():
        return {}
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError):
        raise ApiError(400, "the body is not valid JSON") from None
    if not isinstance(body, dict):
        raise ApiError(422, "the body must be a JSON object")
    return body


def text_field(body: dict[str, Any], name: str, required: bool = True) -> str | None:
    value = body.get(name)
    if value is None:
        if required:
            raise ApiError(422, f"field {name!r} is required")
        return None
    if not isinstance(value, str):
        raise ApiError(422, f"field {name!r} must be a string")
    return lifecycle.utf8(value)


def required_field(body: dict[str, Any], name: str) -> str:
    value = text_field(body, name)
    assert value is not None
    return value


Acting = tuple[str, str | None]  # the acting user's address, and the service they act through


async def acting_agent(request: Request, caller: Caller, body: dict[str, Any]) -> Acting:
    """The agent an agent token belongs to, or the one a service token names for this request."""
    if not caller.agent:
        raise ApiError(403, "this action is for agents")
    named = request.headers.get("x-acting-user") or text_field(body, "as", required=False)
    if caller.service is None:
        assert caller.email is not None
        if named is not None and canonical(named) != caller.email:
            raise ApiError(403, "an agent token acts only as its own agent")
        return caller.email, None
    address = canonical(named)
    if address is None:
        raise ApiError(422, "a service token names the acting agent in the X-Acting-User header or the field 'as'")
    user = await in_session(deps_of(request).sessions, users.find, address)
    if user is None or user.role is not Role.AGENT:
        raise ApiError(403, f"{address} is not a registered agent")
    return user.email, caller.service


async def agent_or_requester(request: Request, caller: Caller, body: dict[str, Any]) -> Acting:
    """An agent (as `acting_agent`) or the requester holding the token."""
    if caller.agent:
        return await acting_agent(request, caller, body)
    named = request.headers.get("x-acting-user") or body.get("as")
    if named is not None and canonical(str(named)) != caller.email:
        raise ApiError(403, "a requester token acts only as its own user")
    assert caller.email is not None
    return caller.email, None


def ok_json(data: Any, status: int = 200) -> JSONResponse:
    return JSONResponse(data, status_code=status, headers=PRIVATE)


# --- attachments ---------------------------------------------------------------------------------


def json_attachments(body: dict[str, Any]) -> list[lifecycle.NewAttachment]:
    items = body.get("attachments") or []
    if not isinstance(items, list):
        raise ApiError(422, "field 'attachments' must be a list")
    files = []
    for item in items:
        if not isinstance(item, dict):
            raise ApiError(422, "each attachment is an object with name, content_type and data (base64)")
        try:
            data = base64.b64decode(required_field(item, "data"), validate=True)
        except (binascii.Error, ValueError):
            raise ApiError(422, "attachment data must be base64") from None
        files.append(lifecycle.NewAttachment(text_field(item, "name", False) or "attachment",
                                             text_field(item, "content_type", False) or "application/octet-stream", data))
    return files


def multipart_body(raw: bytes, content_type: str) -> tuple[str, list[lifecycle.NewAttachment]]:
    """A multipart/form-data body: a `text` field and any number of files."""
    try:
        head = f"Content-Type: {content_type}\r\nMIME-Version: 1.0\r\n\r\n".encode("latin-1", "replace")
        message = BytesParser(policy=compat32).parsebytes(head + raw)
        if not message.is_multipart():
            raise ApiError(422, "a multipart/form-data body with a boundary is required")
        return _form_parts(message)
    except ApiError:
        raise
    except Exception as exc:  # the stdlib parser's errors, translated once here
        raise ApiError(422, f"unreadable multipart body: {type(exc).__name__}") from None


def _form_parts(message: Message) -> tuple[str, list[lifecycle.NewAttachment]]:
    text, files = "", []
    for part in message.get_payload():
        if not isinstance(part, Message) or part.is_multipart():
            continue
        name = part.get_param("name", header="content-disposition")
        filename = part.get_filename()
        payload = part.get_payload(decode=True)
        data = payload if isinstance(payload, bytes) else b""
        if filename is None and name == "text":
            text = data.decode(part.get_content_charset() or "utf-8", "replace")
        elif filename is not None:
            files.append(lifecycle.NewAttachment(str(filename), part.get_content_type(), data))
    return text, files
