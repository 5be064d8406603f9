"""The inbox worker, the notification sender and the HTTP processes: children of `gateway run`.

Why: SMTP receiving and the worker's transactions both want the event loop and the GIL. In one
process a burst of mail makes every 250 wait behind case-creating transactions (and, on
SQLite, behind their write lock with the busy handler's sleeps). In a child process the
worker has the second core and the listener answers at its own pace; the sender has a child
of its own, so composing notifications never delays the next case.

The parent supervises (`child_loop`, one daemon loop per child): it starts the children,
forwards wake-ups (a mail was committed, a notification was queued) over a socket pair,
restarts a child that dies, and on shutdown sends SIGTERM and waits for it to finish its
batch. The children hold their claims as the daemon's run (`node:run`, store/node_run.py), so
when a child dies the parent gives its claims back at once, their try not counted, before it
starts the next one; the next start of a killed daemon takes them back likewise. A child
stops by itself when its socket pair closes, which is how it notices that the parent was
killed. /healthz reports a child dead while it is not running and while it keeps dying
(KEEPS_DYING deaths within KEEPS_DYING_WINDOW_S).
The worker child wakes the sender child itself when it has queued notifications (`Links`):
a receipt goes out within milliseconds, not at the sender's next poll a second later. The HTTP
children (`api.processes`, role "http") are gateway/runtime/web.py's: they hold no claims.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import multiprocessing
import os
import signal
import socket
import time
from collections import deque
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from multiprocessing.process import BaseProcess
from typing import Any

from gateway.app import App, Links, build
from gateway.procname import freeze_heap, name_process
from gateway.settings import Settings
from store.node_run import give_back

log = logging.getLogger("gateway.runtime.children")

RESTART_DELAYS_S = (0.5, 1.0, 2.0, 5.0, 10.0, 30.0)
# The listener comes first when the cores are busy: a 250 is what a sender waits for, a case
# can be made a moment later. The parse processes inherit it.
CHILD_NICENESS = {"worker": 10, "sender": 10, "http": 0}  # a page is someone waiting, as a 250 is
KEEPS_DYING = 3  # deaths within the window below: /healthz says the child is dead
KEEPS_DYING_WINDOW_S = 300.0


@dataclass
class ChildWatch:
    """What the supervisor knows about its child, for /healthz."""

    running: bool = False
    deaths: deque[float] = field(default_factory=lambda: deque(maxlen=KEEPS_DYING))

    def alive(self) -> bool:
        now = time.monotonic()
        dying = len(self.deaths) >= KEEPS_DYING and now - self.deaths[0] < KEEPS_DYING_WINDOW_S
        return self.running and not dying


class WorkerProcess:
    """One child process running `app.worker.run` (role "worker"), `app.sender.run` ("sender"),
    or serving the HTTP connections the daemon hands it ("http", `Links.api_connections`)."""

    def __init__(self, settings: Settings, role: str, links: Links = Links(), holder: str | None = None) -> None:
        self._settings = settings
        self._ours, theirs = socket.socketpair()
        self._ours.setblocking(False)
        ctx = multiprocessing.get_context("forkserver")
        self._proc: BaseProcess = ctx.Process(target=child_main, args=(settings, role, theirs, links, holder),
                                              name=f"gateway-{role}", daemon=False)
        self._theirs: socket.socket | None = theirs

    def start(self) -> int:
        self._proc.start()
        if self._theirs is not None:
            self._theirs.close()  # the child's end lives in the child only: its EOF = our death
            self._theirs = None
        return int(self._proc.pid or 0)

    def wake(self) -> None:
        try:
            self._ours.send(b"w")
        except BlockingIOError:
            pass  # the buffer is full of wake-ups the child has not read: it will wake anyway
        except OSError:
            pass  # the child is gone; the supervisor restarts it

    @property
    def exitcode(self) -> int | None:
        return self._proc.exitcode

    async def wait(self, timeout: float | None = None) -> int | None:
        """The exit code, or None when the child still runs after `timeout` seconds."""
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        while self._proc.exitcode is None:
            if deadline is not None and loop.time() >= deadline:
                return None
            await asyncio.sleep(0.05)
        return self._proc.exitcode

    async def stop(self, timeout: float) -> int | None:
        """SIGTERM, let it finish its batch; SIGKILL after `timeout`."""
        if self._proc.exitcode is None:
            self._proc.terminate()
        code = await self.wait(timeout)
        if code is None:
            log.warning("worker.process_killed", extra={"pid": self._proc.pid})
            self._proc.kill()
            code = await self.wait(5)
        self._ours.close()
        return code


def child_loop(role: str) -> Callable[[App, asyncio.Event], Coroutine[Any, Any, None]]:
    """A daemon loop that keeps one child of this role ("worker" or "sender") running until `stop`."""
    async def run(app: App, stop: asyncio.Event) -> None:
        wakeup = app.worker.wakeup if role == "worker" else app.sender.wakeup
        await supervise(app, stop, role, wakeup, app.links)

    return run


async def supervise(app: App, stop: asyncio.Event, role: str, wakeup: asyncio.Event, links: Links,
                     name: str | None = None) -> None:
    """Keep one child of `role` running until `stop`; /healthz knows it as `name` (the role)."""
    restarts = 0
    watch = ChildWatch()
    app.liveness[name or role] = watch.alive
    while not stop.is_set():
        child = WorkerProcess(app.settings, role, links, app.holder)
        pid = child.start()
        watch.running = True
        log.info("worker.process_started", extra={"role": role, "pid": pid})
        forward = asyncio.create_task(_forward_wakeups(wakeup, child))
        stopping = asyncio.create_task(stop.wait())
        exited = asyncio.create_task(child.wait())
        try:
            await asyncio.wait({stopping, exited}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            forward.cancel()
            stopping.cancel()
            exited.cancel()
        if stop.is_set():
            code = await child.stop(app.settings.daemon.grace_s)
            log.info("worker.process_stopped", extra={"role": role, "pid": pid, "exitcode": code})
            return
        watch.running = False
        watch.deaths.append(time.monotonic())
        log.error("worker.process_died", extra={"role": role, "pid": pid, "exitcode": child.exitcode})
        await child.stop(1.0)
        if role != "http":
            await _give_back(app, role)
        delay = RESTART_DELAYS_S[min(restarts, len(RESTART_DELAYS_S) - 1)]
        restarts += 1
        try:
            await asyncio.wait_for(stop.wait(), delay)
        except TimeoutError:
            pass


async def _give_back(app: App, role: str) -> None:
    """The dead child's claims back to the queue now, their try not counted. If the store does
    not answer, the next child gives them back when it starts (it holds the same run's claims)."""
    try:
        count = await give_back(app.engine, app.holder, role, app.clock.now())
    except Exception as exc:
        log.warning("worker.give_back_failed", extra={"role": role, "error": type(exc).__name__})
        return
    log.info("worker.claims_given_back", extra={"role": role, "count": count})


async def _forward_wakeups(wakeup: asyncio.Event, child: WorkerProcess) -> None:
    """The parent's worker and sender do not run; their wake-up events go to the children."""
    while True:
        await wakeup.wait()
        wakeup.clear()
        child.wake()


def child_main(settings: Settings, role: str, wake: socket.socket, links: Links = Links(),
               holder: str | None = None) -> None:
    """Entry point of the child process."""
    from gateway.logs import configure_logging

    name_process(f"gw-{role}")
    multiprocessing.set_forkserver_preload(["gateway.parse_pool"])  # its parse pool, as in the parent
    multiprocessing.set_start_method("forkserver", force=True)
    configure_logging(settings.daemon.log_format, settings.daemon.log_level)
    os.nice(CHILD_NICENESS[role])
    try:
        asyncio.run(_child(settings, role, wake, links, holder))
    except KeyboardInterrupt:
        pass


async def _child(settings: Settings, role: str, wake: socket.socket, links: Links, holder: str | None) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    signals = 0

    def on_signal() -> None:
        nonlocal signals
        signals += 1
        if signals > 1:
            os._exit(1)
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal)
    async with build(settings, role, holder=holder, links=links) as app:  # type: ignore[arg-type]
        wakeup = app.worker.wakeup if role == "worker" else app.sender.wakeup
        wake.setblocking(False)
        loop.add_reader(wake.fileno(), on_readable, wake, wakeup, functools.partial(_parent_gone, stop))
        if role == "sender" and links.notices_in is not None:
            loop.add_reader(links.notices_in.fileno(), on_readable, links.notices_in, wakeup, lambda: None)
        freeze_heap()
        log.info("worker.child_ready", extra={"role": role, "pid": os.getpid()})
        checkpointing = asyncio.ensure_future(app.checkpoints.run(stop)) if app.checkpoints else None
        try:
            await _run_role(app, role, links, stop)
        finally:
            loop.remove_reader(wake.fileno())
            wake.close()
            if checkpointing is not None:
                stop.set()
                await checkpointing


async def _run_role(app: App, role: str, links: Links, stop: asyncio.Event) -> None:
    if role == "http":
        await _serve_http(app, links, stop)
    else:
        await (app.worker if role == "worker" else app.sender).run(stop)


async def _serve_http(app: App, links: Links, stop: asyncio.Event) -> None:
    """An HTTP child: the connections the daemon hands it (gateway/runtime/web.py) served by
    uvicorn until `stop`, with /healthz and the action counts from the daemon's board."""
    from gateway import metrics
    from gateway.http.api import build_api, serve

    if links.api_connections is None or links.board is None:
        raise RuntimeError("an HTTP child needs the daemon's connections and board")
    metrics.count_actions_in(links.board.actions)
    await serve(build_api(app.http, links.board.loops), app.http, stop, links.api_connections)


def on_readable(sock: socket.socket, wakeup: asyncio.Event, gone: Callable[[], None]) -> None:
    """A byte on a wake-up socket sets `wakeup`; its end (EOF) calls `gone`."""
    try:
        data = sock.recv(4096)
    except BlockingIOError:
        return
    except OSError:
        data = b""
    if data:
        wakeup.set()
        return
    asyncio.get_running_loop().remove_reader(sock.fileno())
    gone()


def _parent_gone(stop: asyncio.Event) -> None:
    """The wake socket closed: the parent is gone. Finish the batch in hand and stop."""
    log.warning("worker.parent_gone")
    stop.set()
