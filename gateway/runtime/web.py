"""Serviceportalen's pages and the API in child processes of `gateway run` (`api.processes`).

Why: one event loop is one core. A case page of 200 comments costs the daemon ~4.5 ms of CPU;
ten customers reading such pages at once queued behind each other in the daemon's one loop (p95
60–70 ms on a quiet machine), and every page delayed the SMTP listener's next 250 as well. With
`api.processes` = N the daemon binds the listening socket once and N children accept on it (the
kernel hands each connection to one of them): the pages use the other core, and the SMTP loop
never waits behind a page. 0 serves them in the daemon's own loop, as before.

The parent keeps the socket for the children's whole life: a child that dies is restarted by
its supervisor (gateway/runtime/children.py) and the connections that arrive meanwhile wait
in the backlog for its siblings. What a child cannot know by itself, the parent shares in
memory (`Board`): the liveness of the daemon's loops and parts for /healthz, published every
PUBLISH_S (a snapshot older than STALE_S reads as `"daemon": false`: a parent that no longer
publishes is stuck), and the count of case actions for /metrics (gateway/metrics.py). An
action in a child wakes the sender child over the worker's notices socket (`Links`).
"""

from __future__ import annotations

import asyncio
import json
import logging
import multiprocessing
import socket
import time
from contextlib import suppress
from dataclasses import replace
from typing import Any

from gateway import metrics
from gateway.app import App
from gateway.errors import CannotListen
from gateway.http.api import build_api, sibling_loops, warn_deprecated
from gateway.runtime.children import supervise

log = logging.getLogger("gateway.runtime.web")

PUBLISH_S = 0.2
STALE_S = 5.0
BACKLOG = 2048
_HEALTH_BYTES = 8192


class Board:
    """Shared memory between the daemon and its HTTP children (passed to them at their start)."""

    def __init__(self) -> None:
        ctx = multiprocessing.get_context("forkserver")
        self._health: Any = ctx.Array("c", _HEALTH_BYTES)  # a SynchronizedString: JSON [monotonic time, {loop: alive}]
        self.actions = ctx.Array("q", len(metrics.ACTIONS))  # `metrics.ActionCounts`' slots

    def publish(self, loops: dict[str, bool]) -> None:
        data = json.dumps([time.monotonic(), loops]).encode()
        if len(data) >= _HEALTH_BYTES:  # dozens of loops would fit; say so rather than truncate
            data = json.dumps([time.monotonic(), {"health_board": False}]).encode()
        with self._health.get_lock():
            self._health.value = data

    def loops(self) -> dict[str, bool]:
        """The daemon's loops as it last published them; `daemon: false` when that is stale."""
        with self._health.get_lock():
            data = self._health.value
        if not data:
            return {"daemon": False}
        at, loops = json.loads(data)
        if time.monotonic() - at > STALE_S:
            return {**loops, "daemon": False}
        return dict(loops)


def listen(host: str, port: int) -> socket.socket:
    """The daemon's HTTP listening socket (`api.host`/`api.port`; port 0 picks a free one)."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                             flags=socket.AI_PASSIVE)[0]
        sock = socket.socket(family, kind, proto)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(address)
            sock.listen(BACKLOG)
        except OSError:
            sock.close()
            raise
    except OSError:
        raise CannotListen(f"api: cannot listen on {host}:{port}") from None
    sock.setblocking(False)
    return sock


async def web_loop(app: App, stop: asyncio.Event) -> None:
    """The daemon's "api" loop with `api.processes` > 0: bind, keep the children serving,
    publish the daemon's liveness to them until `stop`; then wait for them to finish."""
    cfg = app.settings.api
    warn_deprecated(cfg)
    # Built once here, unused: what cannot be served (a single sign-on secret missing from the
    # environment) stops the daemon with its reason, rather than each child dying at its start.
    build_api(app.http)
    sock = listen(cfg.host, cfg.port)
    board = Board()
    links = replace(app.links, api_socket=sock, board=board)
    alive = sibling_loops(app.liveness)
    log.info("api.listening", extra={"host": cfg.host, "port": sock.getsockname()[1], "processes": cfg.processes})
    children = [asyncio.create_task(supervise(app, stop, "http", asyncio.Event(), links, name=f"http.{i + 1}"))
                for i in range(cfg.processes)]
    try:
        while not stop.is_set() and not any(c.done() for c in children):
            board.publish(alive())
            with suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), PUBLISH_S)
        board.publish(alive())
        await asyncio.gather(*children)
    finally:
        for child in children:
            child.cancel()
        sock.close()
