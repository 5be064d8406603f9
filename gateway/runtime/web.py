"""Serviceportalen's pages and the API in child processes of `gateway run` (`api.processes`).

Why: one event loop is one core. A case page of 200 comments costs ~4.5 ms of CPU; ten
customers reading such pages at once queued behind each other in the daemon's one loop (p95
60–70 ms on a quiet machine), and every page delayed the SMTP listener's next 250 as well. With
`api.processes` = N, N children serve the port. The daemon accepts each connection (a few
microseconds in its loop) and hands it to the next live child in turn (`Dispatcher`, the
descriptor over a socket pair), as Node's cluster module does: ten keep-alive sessions are five
and five. Two ways were measured and left: one listening socket shared by the children
(asyncio accepts a whole burst at each wake-up, so the child that woke first took all ten of
the benchmark's sessions while its sibling idled), and a socket each with `SO_REUSEPORT` (the
kernel spreads connections by a hash of their addresses: 7/3 or 8/2 in two runs of ten, and
the fuller child set the p95: 47 and 100 ms). The pages use the other core, and the SMTP loop
never waits behind a page. 0 serves them in the daemon's own loop, as before.

The daemon supervises the children (gateway/runtime/children.py): a child that dies is started
again, and meanwhile the dispatcher hands new connections to its siblings. What a child cannot know by itself, the daemon
shares in memory (`Board`): the liveness of its loops and parts for /healthz, published every
PUBLISH_S (a snapshot older than STALE_S reads as `"daemon": false`: a daemon that no longer
publishes is stuck), and the count of case actions for /metrics (gateway/metrics.py). An action
in a child wakes the sender child over the worker's notices socket (`Links`).
"""

from __future__ import annotations

import asyncio
import json
import logging
import multiprocessing
import socket
import time
from collections.abc import Callable
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
ACCEPT_BURST = 64  # connections accepted at one wake-up of the daemon's loop
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


class Dispatcher:
    """Accepts the HTTP connections in the daemon and hands each to the next child in turn that
    is alive (`alive`), its descriptor over that child's socket pair (SCM_RIGHTS). While no child
    is alive, connections wait in a child's pair until its successor reads them."""

    def __init__(self, sock: socket.socket, pairs: list[socket.socket], alive: list[Callable[[], bool]]) -> None:
        self._sock, self._pairs, self._alive = sock, pairs, alive
        self._next = 0

    def start(self) -> None:
        asyncio.get_running_loop().add_reader(self._sock.fileno(), self._accept)

    def stop(self) -> None:
        asyncio.get_running_loop().remove_reader(self._sock.fileno())

    def _accept(self) -> None:
        for _ in range(ACCEPT_BURST):
            try:
                conn, _ = self._sock.accept()
            except (BlockingIOError, InterruptedError, ConnectionAbortedError):
                return
            except OSError as exc:  # out of descriptors: the next wake-up tries again
                log.warning("api.accept_failed", extra={"error": type(exc).__name__})
                return
            with conn:
                self._hand(conn)

    def _hand(self, conn: socket.socket) -> None:
        n = len(self._pairs)
        order = [(self._next + k) % n for k in range(n)]
        alive = [i for i in order if self._alive[i]()]
        for i in alive or order:
            try:
                socket.send_fds(self._pairs[i], [b"c"], [conn.fileno()])
            except OSError:  # its pair is full or broken: the next child
                continue
            self._next = (i + 1) % n
            return
        log.warning("api.connection_dropped", extra={"reason": "no HTTP child takes connections"})



async def web_loop(app: App, stop: asyncio.Event) -> None:
    """The daemon's "api" loop with `api.processes` > 0: listen, keep the children serving and
    hand them the connections, publish the daemon's liveness to them until `stop`; then wait
    for them to finish what they serve."""
    cfg = app.settings.api
    warn_deprecated(cfg)
    # Built once here, unused: what cannot be served (a single sign-on secret missing from the
    # environment) stops the daemon with its reason, rather than each child dying at its start.
    build_api(app.http)
    sock = listen(cfg.host, cfg.port)
    board = Board()
    # (ours, the child's); the daemon keeps both ends for the children's whole life, so what a
    # child left unread goes to its successor. One message a connection: 1 byte, 1 descriptor.
    pairs = [socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET) for _ in range(cfg.processes)]
    names = [f"http.{i + 1}" for i in range(cfg.processes)]
    children = [asyncio.create_task(supervise(app, stop, "http", asyncio.Event(),
                                              replace(app.links, api_connections=theirs, board=board), name=name))
                for (_, theirs), name in zip(pairs, names, strict=True)]
    await asyncio.sleep(0)  # each supervisor names its child in `app.liveness` first
    alive = sibling_loops(app.liveness)
    for ours, _ in pairs:
        ours.setblocking(False)
    dispatcher = Dispatcher(sock, [ours for ours, _ in pairs], [app.liveness[name] for name in names])
    dispatcher.start()
    log.info("api.listening", extra={"host": cfg.host, "port": sock.getsockname()[1], "processes": cfg.processes})
    try:
        while not stop.is_set() and not any(c.done() for c in children):
            board.publish(alive())
            with suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), PUBLISH_S)
        dispatcher.stop()
        board.publish(alive())
        await asyncio.gather(*children)
    finally:
        with suppress(ValueError, OSError):
            dispatcher.stop()
        sock.close()
        for child in children:
            child.cancel()
        for pair in pairs:
            for end in pair:
                end.close()
