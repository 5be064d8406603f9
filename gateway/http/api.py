"""The HTTP API for agents and integrations (rules §8), served by `gateway run` on uvicorn.

Auth is a bearer token (`gateway.credentials`): an agent's own token acts as that agent only;
a service token acts for the agent it names in `X-Acting-User` (or the JSON field `as`), and
the history records both; a requester token (`POST /users/token`, issued to agents and
services) acts as one customer, on the cases they are party to, until it expires or is revoked.
No, unknown, expired or revoked token → 401; a valid token for something its holder may not
do → 403.

Every rule is `gateway.lifecycle`'s; this module only translates HTTP to those calls and
their errors to status codes (404, 403, 409, 422), never to a 500 (gateway/http/exchange.py:
what every endpoint shares).
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import socket
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import uvicorn
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import Route

from gateway import credentials, lifecycle, metrics, privacy
from gateway.addresses import canonical
from gateway.attachments import download_headers, open_attachment
from gateway.credentials import Caller
from gateway.errors import CannotListen, GatewayError
from gateway.http.deps import HttpDeps
from gateway.http.exchange import (
    PRIVATE,
    Acting,
    ApiError,
    acting_agent,
    agent_or_requester,
    body_bytes,
    caller_of,
    case_number,
    deps_of,
    json_attachments,
    json_body,
    multipart_body,
    ok_json,
    on_error,
    required_field,
    text_field,
)
from gateway.http.openapi import LIST_FILTERS, MAX_PAGE_LIMIT, PAGE_LIMIT, openapi_document
from gateway.http.portal import portal_routes
from gateway.model import Source
from store import cases, queries, users
from store.engine import ping
from store.transact import in_session, run_in, transaction

log = logging.getLogger("gateway.http.api")

DAEMON_LOOPS = frozenset({"worker", "sender", "imap", "maintenance", "api"})

LoopWatch = Callable[[], dict[str, bool]]


# --- endpoints -----------------------------------------------------------------------------------


async def healthz(request: Request) -> Response:
    """Store reachable and every loop of the daemon alive → 200; else 503."""
    store = True
    try:
        async with asyncio.timeout(5):
            await ping(deps_of(request).engine)
    except Exception:  # any failure to reach the store is "unhealthy", never an error page
        store = False
    loops = request.app.state.loops()
    healthy = store and all(loops.values())
    body = {"status": "ok" if healthy else "unavailable", "store": store, "loops": loops}
    return ok_json(body, 200 if healthy else 503)


async def metrics_text(request: Request) -> Response:
    return Response(await request.app.state.metrics.render(), media_type=metrics.CONTENT_TYPE, headers=PRIVATE)


async def openapi(request: Request) -> Response:
    return ok_json(request.app.state.openapi)


async def list_cases(request: Request) -> Response:
    caller = await caller_of(request)
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
    page = await in_session(deps_of(request).sessions, queries.cases_page, status, address, limit, before)
    answer = ok_json(page.as_json())
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
    caller = await caller_of(request)
    gw = deps_of(request)
    found = await open_attachment(gw.sessions, gw.blobs, case_number(request), int(request.path_params["attachment_id"]),
                                  None if caller.agent else caller.email)
    return FileResponse(found.path, media_type="application/octet-stream", headers=download_headers(found.name))


async def case_detail(request: Request) -> Response:
    caller = await caller_of(request)
    number = case_number(request)
    async with transaction(deps_of(request).sessions) as session:
        if not caller.agent:
            case = await run_in(session, cases.case_ref, number)
            user = await run_in(session, users.find, caller.email or "")
            if user is None or not case.admits(user):
                raise ApiError(403, f"not a party of {number}")
        return ok_json(await run_in(session, queries.case_detail, number, include_internal=caller.agent))


async def _posted(request: Request, actor_of: Callable[[Request, Caller, dict[str, Any]], Awaitable[Acting]]
                  ) -> tuple[dict[str, Any], str, str | None]:
    """The JSON body of an action, the acting user and the service they act through
    (`acting_agent` or `agent_or_requester`)."""
    caller = await caller_of(request)
    body = await json_body(request)
    actor, via = await actor_of(request, caller, body)
    return body, actor, via


async def post_status(request: Request) -> Response:
    body, actor, via = await _posted(request, acting_agent)
    return ok_json(await lifecycle.set_status(deps_of(request).desk, case_number(request), required_field(body, "status"), actor,
                                          text_field(body, "reason", False), via=via))


async def post_assign(request: Request) -> Response:
    body, actor, via = await _posted(request, acting_agent)
    return ok_json(await lifecycle.assign(deps_of(request).desk, case_number(request), required_field(body, "agent"), actor, via=via))


async def post_reply(request: Request) -> Response:
    body, actor, via = await _posted(request, acting_agent)
    files = json_attachments(body)
    return ok_json(await lifecycle.reply(deps_of(request).desk, case_number(request), required_field(body, "text"), actor, files,
                                     source=Source.API, via=via))


async def post_note(request: Request) -> Response:
    body, actor, via = await _posted(request, acting_agent)
    return ok_json(await lifecycle.note(deps_of(request).desk, case_number(request), required_field(body, "text"), actor, Source.API,
                                    via=via))


async def post_share(request: Request) -> Response:
    body, actor, via = await _posted(request, agent_or_requester)
    return ok_json(await lifecycle.share(deps_of(request).desk, case_number(request), required_field(body, "email"), actor, via=via))


async def post_close(request: Request) -> Response:
    body, actor, via = await _posted(request, agent_or_requester)
    return ok_json(await lifecycle.close(deps_of(request).desk, case_number(request), actor, text_field(body, "reason", False),
                                     via=via))


async def post_comment(request: Request) -> Response:
    """The requester's comment (the portal's "Kommenter"), JSON with base64 files or multipart."""
    caller = await caller_of(request)
    if caller.agent:
        raise ApiError(403, "comments are the requester's; agents answer with /reply or /note")
    ctype = request.headers.get("content-type", "")
    if ctype.lower().startswith("multipart/form-data"):
        text_value, files = multipart_body(await body_bytes(request), ctype)
    else:
        body = await json_body(request)
        await agent_or_requester(request, caller, body)
        text_value, files = text_field(body, "text", required=False) or "", json_attachments(body)
    assert caller.email is not None
    return ok_json(await lifecycle.comment(deps_of(request).desk, case_number(request), text_value, caller.email, files), 201)


async def search_users(request: Request) -> Response:
    caller = await caller_of(request)
    gw = deps_of(request)
    text_value = request.query_params.get("text", "")
    org = request.query_params.get("org")
    if not caller.agent:
        own = await in_session(gw.sessions, users.organisation_of, caller.email or "")
        if own is None or (org is not None and org.strip().lower() != own.lower()):
            raise ApiError(403, "a requester may search only their own organisation")
        org = own
    if not org:
        raise ApiError(422, "name the organisation: org=…")
    return ok_json(await lifecycle.search_users(gw.desk, text_value, org))


async def issue_token(request: Request) -> Response:
    """A requester token for one customer, for the portal acting on their behalf (agents and
    services only); it expires after `api.requester_token_lifetime_s`."""
    caller = await caller_of(request)
    if not caller.agent:
        raise ApiError(403, "only agents may issue requester tokens")
    body = await json_body(request)
    return ok_json(await credentials.issue_requester_token(deps_of(request).tokens, required_field(body, "email")))


async def unbounce(request: Request) -> Response:
    """Clear a user's bouncing mark (agents and services); the mail held for it goes out."""
    caller = await caller_of(request)
    if not caller.agent:
        raise ApiError(403, "only agents may clear a bouncing mark")
    body = await json_body(request)
    return ok_json(await lifecycle.unbounce(deps_of(request).desk, required_field(body, "email")))


# --- a person's data (gateway/privacy.py), agents and services only ---------------------------------


def _flag(body: dict[str, Any], name: str) -> bool:
    value = body.get(name, False)
    if not isinstance(value, bool):
        raise ApiError(422, f"field {name!r} must be true or false")
    return value


async def users_export(request: Request) -> Response:
    """Everything stored about the person, as the zip `gateway users export` writes."""
    body, actor, via = await _posted(request, acting_agent)
    folder = Path(tempfile.mkdtemp(prefix="gw-export-"))
    try:
        out = folder / "export.zip"
        await privacy.export_person(deps_of(request).data, required_field(body, "email"), out, actor,
                                    text_field(body, "reason", False), via=via, internal=_flag(body, "internal"))
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    return FileResponse(out, media_type="application/zip", filename="export.zip",
                        background=BackgroundTask(shutil.rmtree, folder, ignore_errors=True))


async def users_erase(request: Request) -> Response:
    body, actor, via = await _posted(request, acting_agent)
    return ok_json(await privacy.erase_person(deps_of(request).data, required_field(body, "email"), actor,
                                          text_field(body, "reason", False), _flag(body, "dry_run"), via=via))


async def users_allow(request: Request) -> Response:
    body, actor, via = await _posted(request, acting_agent)
    return ok_json(await privacy.allow_address(deps_of(request).data, required_field(body, "email"), actor,
                                           text_field(body, "reason", False), via=via))


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
    handlers: dict[Any, Any] = {Exception: on_error, HTTPException: on_error, ApiError: on_error,
                                GatewayError: on_error}
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


def sibling_loops(parts: dict[str, Callable[[], bool]] | None = None) -> LoopWatch:
    """The daemon's loops running now (a loop that ended is no longer among the tasks), and its
    other parts (`HttpDeps.liveness`: the SMTP listener, the inbox writer, the worker, sender and
    HTTP children, which are dead while their loop still runs)."""
    expected = {t.get_name() for t in asyncio.all_tasks()} & DAEMON_LOOPS
    parts = parts if parts is not None else {}

    def alive() -> dict[str, bool]:
        running = {t.get_name() for t in asyncio.all_tasks() if not t.done()}
        found = {name: name in running for name in expected}
        for name, check in parts.items():
            found[name] = found.get(name, True) and check()
        return dict(sorted(found.items()))

    return alive


def warn_deprecated(cfg: Any) -> None:
    if cfg.agent_tokens:
        log.warning("api.deprecated_agent_tokens", extra={"count": len(cfg.agent_tokens),
                                                          "replace_with": "gateway tokens issue --service NAME"})


async def _serve(server: uvicorn.Server, handed: bool) -> None:
    try:
        await server.serve(sockets=[] if handed else None)  # handed: no listening socket of its own
    except SystemExit:  # uvicorn exits the process when it cannot bind; we end this loop instead
        raise CannotListen(f"api: cannot listen on {server.config.host}:{server.config.port}") from None


async def api_loop(deps: HttpDeps, stop: asyncio.Event) -> None:
    """Serve the API and the pages in this process until `stop` is set (`api.host`/`api.port`;
    port 0 picks a free one). With `api.processes` > 0 the daemon's children serve them
    instead (gateway/runtime/web.py), each through `serve` on the connections it is handed."""
    warn_deprecated(deps.settings.api)
    api = build_api(deps, sibling_loops(deps.liveness))
    await serve(api, deps, stop)


async def serve(api: Starlette, deps: HttpDeps, stop: asyncio.Event, handed: socket.socket | None = None) -> None:
    """uvicorn on `api` until `stop`: on its own port, or (an HTTP child of the daemon) on the
    connections the daemon hands it over `handed`, one descriptor a message."""
    cfg = deps.settings.api
    config = uvicorn.Config(api, host=cfg.host, port=cfg.port, log_config=None, access_log=False, lifespan="off",
                            server_header=False, timeout_graceful_shutdown=int(deps.settings.daemon.grace_s))
    server = _EmbeddedServer(config)
    serving = asyncio.create_task(_serve(server, handed is not None), name="api.http")
    stopping = asyncio.create_task(stop.wait())
    while not server.started and not serving.done():
        await asyncio.sleep(0.02)
    if server.started and handed is None:
        api.state.port = int(server.servers[0].sockets[0].getsockname()[1])
        log.info("api.listening", extra={"host": cfg.host, "port": api.state.port})
    if server.started and handed is not None:
        _take_connections(server, handed)
    await asyncio.wait({serving, stopping}, return_when=asyncio.FIRST_COMPLETED)
    if handed is not None:
        asyncio.get_running_loop().remove_reader(handed.fileno())  # the rest wait for a successor
    server.should_exit = True
    stopping.cancel()
    await serving


def _take_connections(server: uvicorn.Server, handed: socket.socket) -> None:
    """Serve each connection the daemon hands over, as uvicorn serves those it accepts itself."""
    loop = asyncio.get_running_loop()
    config = server.config

    def protocol() -> asyncio.Protocol:
        return config.http_protocol_class(config=config, server_state=server.server_state,  # type: ignore[call-arg]
                                          app_state=server.lifespan.state, _loop=loop)

    def readable() -> None:
        for _ in range(64):
            try:
                _, fds, _, _ = socket.recv_fds(handed, 1, 1)
            except (BlockingIOError, InterruptedError):
                return
            if not fds:  # the daemon closed its end: it is gone
                loop.remove_reader(handed.fileno())
                return
            conn = socket.socket(fileno=fds[0])
            conn.setblocking(False)
            loop.create_task(loop.connect_accepted_socket(protocol, conn))

    handed.setblocking(False)
    loop.add_reader(handed.fileno(), readable)
