"""The HTTP API for agents and integrations (rules §8), served by `gateway run` on uvicorn.

Auth is a bearer token (`gateway.credentials`): an agent's own token acts as that agent only;
a service token acts for the agent it names in `X-Acting-User` (or the JSON field `as`), and
the history records both; a requester token (`POST /users/token`, issued to agents and
services) acts as one customer, on the cases they are party to, until it expires or is revoked.
No, unknown, expired or revoked token → 401; a valid token for something its holder may not
do → 403.

Every rule is `gateway.lifecycle`'s; this module only translates HTTP to those calls and
their errors to status codes (404, 403, 409, 422), never to a 500.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
import shutil
import tempfile
from collections.abc import Awaitable, Callable
from email.message import Message
from email.parser import BytesParser
from email.policy import compat32
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import uvicorn
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Route

from gateway import credentials, lifecycle, metrics, privacy
from gateway.addresses import canonical
from gateway.attachments import download_headers, open_attachment
from gateway.credentials import Caller
from gateway.errors import CannotListen, GatewayError, NotFound, Refused, TemporaryFailure
from gateway.http.deps import HttpDeps
from gateway.http.openapi import LIST_FILTERS, MAX_PAGE_LIMIT, PAGE_LIMIT, openapi_document
from gateway.http.portal import portal_routes
from gateway.model import Role, Source
from store import cases, queries, users
from store.engine import ping
from store.transact import in_session, run_in, transaction

log = logging.getLogger("gateway.http.api")

DAEMON_LOOPS = frozenset({"worker", "sender", "imap", "maintenance", "api"})

LoopWatch = Callable[[], dict[str, bool]]


# --- tokens -----------------------------------------------------------------------------------


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


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers={**PRIVATE, **(headers or {})})


_STATUS_OF: tuple[tuple[type[Exception], int], ...] = (
    (NotFound, 404), (lifecycle.Forbidden, 403), (lifecycle.InvalidInput, 422), (Refused, 409),
    (TemporaryFailure, 503), (GatewayError, 422),
)


async def _on_error(request: Request, exc: Exception) -> Response:
    if isinstance(exc, ApiError):
        return _error(exc.status, exc.message, exc.headers)
    if isinstance(exc, HTTPException):
        return _error(exc.status_code, str(exc.detail), dict(exc.headers or {}))
    for kind, status in _STATUS_OF:
        if isinstance(exc, kind):
            if status == 503:
                log.warning("api.store_error", extra={"error": type(exc).__name__, "path": request.url.path})
                return _error(503, "the store is unavailable; try again")
            return _error(status, str(exc))
    log.exception("api.failed", extra={"path": request.url.path})
    return _error(500, "internal error")


# --- request helpers ------------------------------------------------------------------------------


def _gw(request: Request) -> HttpDeps:
    return request.app.state.gateway  # type: ignore[no-any-return]


def _number(request: Request) -> str:
    number = str(request.path_params.get("number", ""))
    if not lifecycle.valid_number(number):
        raise NotFound(f"no case {number!r}")
    return number


async def _caller(request: Request) -> Caller:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise ApiError(401, "a bearer token is required", {"WWW-Authenticate": "Bearer"})
    try:
        return await credentials.authenticate(_gw(request).tokens, token)
    except credentials.Unauthenticated as exc:
        raise ApiError(401, str(exc), {"WWW-Authenticate": 'Bearer error="invalid_token"'}) from None


async def _body_bytes(request: Request) -> bytes:
    limit = _gw(request).settings.smtp.max_message_size * 4 // 3 + 65536  # base64 attachments
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


async def _json(request: Request) -> dict[str, Any]:
    ctype = request.headers.get("content-type", "application/json").split(";")[0].strip().lower()
    if ctype not in ("application/json", ""):
        raise ApiError(415, "send application/json")
    raw = await _body_bytes(request)
    if not raw.strip():
        return {}
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError):
        raise ApiError(400, "the body is not valid JSON") from None
    if not isinstance(body, dict):
        raise ApiError(422, "the body must be a JSON object")
    return body


def _field(body: dict[str, Any], name: str, required: bool = True) -> str | None:
    value = body.get(name)
    if value is None:
        if required:
            raise ApiError(422, f"field {name!r} is required")
        return None
    if not isinstance(value, str):
        raise ApiError(422, f"field {name!r} must be a string")
    return lifecycle.utf8(value)


def _required(body: dict[str, Any], name: str) -> str:
    value = _field(body, name)
    assert value is not None
    return value


Acting = tuple[str, str | None]  # the acting user's address, and the service they act through


async def _agent_actor(request: Request, caller: Caller, body: dict[str, Any]) -> Acting:
    """The agent an agent token belongs to, or the one a service token names for this request."""
    if not caller.agent:
        raise ApiError(403, "this action is for agents")
    named = request.headers.get("x-acting-user") or _field(body, "as", required=False)
    if caller.service is None:
        assert caller.email is not None
        if named is not None and canonical(named) != caller.email:
            raise ApiError(403, "an agent token acts only as its own agent")
        return caller.email, None
    address = canonical(named)
    if address is None:
        raise ApiError(422, "a service token names the acting agent in the X-Acting-User header or the field 'as'")
    user = await in_session(_gw(request).sessions, users.find, address)
    if user is None or user.role is not Role.AGENT:
        raise ApiError(403, f"{address} is not a registered agent")
    return user.email, caller.service


async def _actor(request: Request, caller: Caller, body: dict[str, Any]) -> Acting:
    """An agent (as `_agent_actor`) or the requester holding the token."""
    if caller.agent:
        return await _agent_actor(request, caller, body)
    named = request.headers.get("x-acting-user") or body.get("as")
    if named is not None and canonical(str(named)) != caller.email:
        raise ApiError(403, "a requester token acts only as its own user")
    assert caller.email is not None
    return caller.email, None


def _ok(data: Any, status: int = 200) -> JSONResponse:
    return JSONResponse(data, status_code=status, headers=PRIVATE)


# --- attachments ---------------------------------------------------------------------------------


def _json_attachments(body: dict[str, Any]) -> list[lifecycle.NewAttachment]:
    items = body.get("attachments") or []
    if not isinstance(items, list):
        raise ApiError(422, "field 'attachments' must be a list")
    files = []
    for item in items:
        if not isinstance(item, dict):
            raise ApiError(422, "each attachment is an object with name, content_type and data (base64)")
        try:
            data = base64.b64decode(_required(item, "data"), validate=True)
        except (binascii.Error, ValueError):
            raise ApiError(422, "attachment data must be base64") from None
        files.append(lifecycle.NewAttachment(_field(item, "name", False) or "attachment",
                                             _field(item, "content_type", False) or "application/octet-stream", data))
    return files


def _multipart(raw: bytes, content_type: str) -> tuple[str, list[lifecycle.NewAttachment]]:
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


# --- endpoints -----------------------------------------------------------------------------------


async def healthz(request: Request) -> Response:
    """Store reachable and every loop of the daemon alive → 200; else 503."""
    store = True
    try:
        async with asyncio.timeout(5):
            await ping(_gw(request).engine)
    except Exception:  # any failure to reach the store is "unhealthy", never an error page
        store = False
    loops = request.app.state.loops()
    healthy = store and all(loops.values())
    body = {"status": "ok" if healthy else "unavailable", "store": store, "loops": loops}
    return _ok(body, 200 if healthy else 503)


async def metrics_text(request: Request) -> Response:
    return Response(await request.app.state.metrics.render(), media_type=metrics.CONTENT_TYPE, headers=PRIVATE)


async def openapi(request: Request) -> Response:
    return _ok(request.app.state.openapi)


async def list_cases(request: Request) -> Response:
    caller = await _caller(request)
    status = request.query_params.get("status", "active")
    if status not in LIST_FILTERS:
        raise ApiError(422, f"status must be one of {', '.join(LIST_FILTERS)}")
    user = request.query_params.get("user")
    address = canonical(user) if user else None
    if user and address is None:
        raise ApiError(422, "user must be an e-mail address")
    if not caller.agent:
        if address is not None and address != caller.email:
            raise ApiError(403, "a requester sees only their own cases")
        address = caller.email
    limit, before = _page_params(request)
    page = await in_session(_gw(request).sessions, queries.cases_page, status, address, limit, before)
    answer = _ok(page.as_json())
    if page.next is not None:  # the next page as a link too (RFC 8288): this query, `before` moved on
        query = urlencode([*((k, v) for k, v in request.query_params.multi_items() if k != "before"),
                           ("before", page.next)])
        answer.headers["Link"] = f'</cases?{query}>; rel="next"'
    return answer


def _page_params(request: Request) -> tuple[int, tuple[Any, int] | None]:
    """`limit` (1-1000, default 100) and `before`, the `next` of the page before."""
    limit = request.query_params.get("limit", str(PAGE_LIMIT))
    if not limit.isdigit() or not 1 <= int(limit) <= MAX_PAGE_LIMIT:
        raise ApiError(422, f"limit must be a whole number from 1 to {MAX_PAGE_LIMIT}")
    before = request.query_params.get("before")
    try:
        return int(limit), queries.parse_case_cursor(before) if before is not None else None
    except ValueError as exc:
        raise ApiError(422, f"before: {exc}") from None


async def attachment(request: Request) -> Response:
    """One attachment of a case, as a download, for whoever may see the case (and the comment)."""
    caller = await _caller(request)
    gw = _gw(request)
    found = await open_attachment(gw.sessions, gw.blobs, _number(request), int(request.path_params["attachment_id"]),
                                  None if caller.agent else caller.email)
    return FileResponse(found.path, media_type="application/octet-stream", headers=download_headers(found.name))


async def case_detail(request: Request) -> Response:
    caller = await _caller(request)
    number = _number(request)
    async with transaction(_gw(request).sessions) as session:
        if not caller.agent:
            case = await run_in(session, cases.case_ref, number)
            user = await run_in(session, users.find, caller.email or "")
            if user is None or not case.admits(user):
                raise ApiError(403, f"not a party of {number}")
        return _ok(await run_in(session, queries.case_detail, number, include_internal=caller.agent))


async def _posted(request: Request, actor_of: Callable[[Request, Caller, dict[str, Any]], Awaitable[Acting]]
                  ) -> tuple[dict[str, Any], str, str | None]:
    """The JSON body of an action, the acting user and the service they act through
    (`_agent_actor` or `_actor`)."""
    caller = await _caller(request)
    body = await _json(request)
    actor, via = await actor_of(request, caller, body)
    return body, actor, via


async def post_status(request: Request) -> Response:
    body, actor, via = await _posted(request, _agent_actor)
    return _ok(await lifecycle.set_status(_gw(request).desk, _number(request), _required(body, "status"), actor,
                                          _field(body, "reason", False), via=via))


async def post_assign(request: Request) -> Response:
    body, actor, via = await _posted(request, _agent_actor)
    return _ok(await lifecycle.assign(_gw(request).desk, _number(request), _required(body, "agent"), actor, via=via))


async def post_reply(request: Request) -> Response:
    body, actor, via = await _posted(request, _agent_actor)
    files = _json_attachments(body)
    return _ok(await lifecycle.reply(_gw(request).desk, _number(request), _required(body, "text"), actor, files,
                                     source=Source.API, via=via))


async def post_note(request: Request) -> Response:
    body, actor, via = await _posted(request, _agent_actor)
    return _ok(await lifecycle.note(_gw(request).desk, _number(request), _required(body, "text"), actor, Source.API,
                                    via=via))


async def post_share(request: Request) -> Response:
    body, actor, via = await _posted(request, _actor)
    return _ok(await lifecycle.share(_gw(request).desk, _number(request), _required(body, "email"), actor, via=via))


async def post_close(request: Request) -> Response:
    body, actor, via = await _posted(request, _actor)
    return _ok(await lifecycle.close(_gw(request).desk, _number(request), actor, _field(body, "reason", False),
                                     via=via))


async def post_comment(request: Request) -> Response:
    """The requester's comment (the portal's "Kommenter"), JSON with base64 files or multipart."""
    caller = await _caller(request)
    if caller.agent:
        raise ApiError(403, "comments are the requester's; agents answer with /reply or /note")
    ctype = request.headers.get("content-type", "")
    if ctype.lower().startswith("multipart/form-data"):
        text_value, files = _multipart(await _body_bytes(request), ctype)
    else:
        body = await _json(request)
        await _actor(request, caller, body)
        text_value, files = _field(body, "text", required=False) or "", _json_attachments(body)
    assert caller.email is not None
    return _ok(await lifecycle.comment(_gw(request).desk, _number(request), text_value, caller.email, files), 201)


async def search_users(request: Request) -> Response:
    caller = await _caller(request)
    gw = _gw(request)
    text_value = request.query_params.get("text", "")
    org = request.query_params.get("org")
    if not caller.agent:
        own = await in_session(gw.sessions, users.organisation_of, caller.email or "")
        if own is None or (org is not None and org.strip().lower() != own.lower()):
            raise ApiError(403, "a requester may search only their own organisation")
        org = own
    if not org:
        raise ApiError(422, "name the organisation: org=…")
    return _ok(await lifecycle.search_users(gw.desk, text_value, org))


async def issue_token(request: Request) -> Response:
    """A requester token for one customer, for the portal acting on their behalf (agents and
    services only); it expires after `api.requester_token_lifetime_s`."""
    caller = await _caller(request)
    if not caller.agent:
        raise ApiError(403, "only agents may issue requester tokens")
    body = await _json(request)
    return _ok(await credentials.issue_requester_token(_gw(request).tokens, _required(body, "email")))


async def unbounce(request: Request) -> Response:
    """Clear a user's bouncing mark (agents and services); the mail held for it goes out."""
    caller = await _caller(request)
    if not caller.agent:
        raise ApiError(403, "only agents may clear a bouncing mark")
    body = await _json(request)
    return _ok(await lifecycle.unbounce(_gw(request).desk, _required(body, "email")))


# --- a person's data (gateway/privacy.py), agents and services only ---------------------------------


def _flag(body: dict[str, Any], name: str) -> bool:
    value = body.get(name, False)
    if not isinstance(value, bool):
        raise ApiError(422, f"field {name!r} must be true or false")
    return value


async def users_export(request: Request) -> Response:
    """Everything stored about the person, as the zip `gateway users export` writes."""
    body, actor, via = await _posted(request, _agent_actor)
    folder = Path(tempfile.mkdtemp(prefix="gw-export-"))
    try:
        out = folder / "export.zip"
        await privacy.export_person(_gw(request).data, _required(body, "email"), out, actor,
                                    _field(body, "reason", False), via=via, internal=_flag(body, "internal"))
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    return FileResponse(out, media_type="application/zip", filename="export.zip",
                        background=BackgroundTask(shutil.rmtree, folder, ignore_errors=True))


async def users_erase(request: Request) -> Response:
    body, actor, via = await _posted(request, _agent_actor)
    return _ok(await privacy.erase_person(_gw(request).data, _required(body, "email"), actor,
                                          _field(body, "reason", False), _flag(body, "dry_run"), via=via))


async def users_allow(request: Request) -> Response:
    body, actor, via = await _posted(request, _agent_actor)
    return _ok(await privacy.allow_address(_gw(request).data, _required(body, "email"), actor,
                                           _field(body, "reason", False), via=via))


# --- the application ------------------------------------------------------------------------------


def build_api(deps: HttpDeps, loops: LoopWatch | None = None) -> Starlette:
    """The Starlette application over one opened store's `HttpDeps` (tests use it in-process)."""
    routes = [
        Route("/healthz", healthz), Route("/metrics", metrics_text), Route("/openapi.json", openapi),
        Route("/cases", list_cases), Route("/cases/{number}", case_detail),
        Route("/cases/{number}/attachments/{attachment_id:int}", attachment),
        Route("/cases/{number}/status", post_status, methods=["POST"]),
        Route("/cases/{number}/assign", post_assign, methods=["POST"]),
        Route("/cases/{number}/reply", post_reply, methods=["POST"]),
        Route("/cases/{number}/note", post_note, methods=["POST"]),
        Route("/cases/{number}/share", post_share, methods=["POST"]),
        Route("/cases/{number}/close", post_close, methods=["POST"]),
        Route("/cases/{number}/comments", post_comment, methods=["POST"]),
        Route("/users/search", search_users), Route("/users/token", issue_token, methods=["POST"]),
        Route("/users/unbounce", unbounce, methods=["POST"]),
        Route("/users/export", users_export, methods=["POST"]), Route("/users/erase", users_erase, methods=["POST"]),
        Route("/users/allow", users_allow, methods=["POST"]),
        *portal_routes(deps),  # Serviceportalen's pages, /static/ and /favicon.ico (gateway/http/portal)
    ]
    handlers: dict[Any, Any] = {Exception: _on_error, HTTPException: _on_error, ApiError: _on_error,
                                GatewayError: _on_error}
    api = Starlette(routes=routes, exception_handlers=handlers)
    api.state.gateway = deps
    api.state.loops = loops or (lambda: {})
    api.state.openapi = openapi_document()
    api.state.metrics = metrics.StoreMetrics(deps.engine)
    api.state.port = None
    return api


class _EmbeddedServer(uvicorn.Server):
    """uvicorn inside the daemon's loop: the daemon owns SIGTERM/SIGINT, not uvicorn."""

    def capture_signals(self):  # type: ignore[no-untyped-def, override]
        from contextlib import nullcontext

        return nullcontext()


def _sibling_loops(parts: dict[str, Callable[[], bool]] | None = None) -> LoopWatch:
    """The daemon's loops running now (a loop that ended is no longer among the tasks), and its
    other parts (`HttpDeps.liveness`: the SMTP listener, the inbox writer, the worker and sender
    children, which are dead while their loop still runs)."""
    expected = {t.get_name() for t in asyncio.all_tasks()} & DAEMON_LOOPS
    parts = parts if parts is not None else {}

    def alive() -> dict[str, bool]:
        running = {t.get_name() for t in asyncio.all_tasks() if not t.done()}
        found = {name: name in running for name in expected}
        for name, check in parts.items():
            found[name] = found.get(name, True) and check()
        return dict(sorted(found.items()))

    return alive


async def _serve(server: uvicorn.Server) -> None:
    try:
        await server.serve()
    except SystemExit:  # uvicorn exits the process when it cannot bind; we end this loop instead
        raise CannotListen(f"api: cannot listen on {server.config.host}:{server.config.port}") from None


async def api_loop(deps: HttpDeps, stop: asyncio.Event) -> None:
    """Serve the API until `stop` is set (`api.host`/`api.port`; port 0 picks a free one)."""
    cfg = deps.settings.api
    if cfg.agent_tokens:
        log.warning("api.deprecated_agent_tokens", extra={"count": len(cfg.agent_tokens),
                                                          "replace_with": "gateway tokens issue --service NAME"})
    api = build_api(deps, _sibling_loops(deps.liveness))
    config = uvicorn.Config(api, host=cfg.host, port=cfg.port, log_config=None, access_log=False, lifespan="off",
                            server_header=False, timeout_graceful_shutdown=int(deps.settings.daemon.grace_s))
    server = _EmbeddedServer(config)
    serving = asyncio.create_task(_serve(server), name="api.http")
    stopping = asyncio.create_task(stop.wait())
    while not server.started and not serving.done():
        await asyncio.sleep(0.02)
    if server.started:
        api.state.port = int(server.servers[0].sockets[0].getsockname()[1])
        log.info("api.listening", extra={"host": cfg.host, "port": api.state.port})
    await asyncio.wait({serving, stopping}, return_when=asyncio.FIRST_COMPLETED)
    server.should_exit = True
    stopping.cancel()
    await serving
