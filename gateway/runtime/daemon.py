"""`gateway run`: one asyncio process with every loop of the product.

SIGTERM/SIGINT: stop accepting (421 to new SMTP connections), finish the mails in flight,
exit 0 within the grace time; a second signal exits at once.

Each start is the node's next run (store/node_run.py): the claims its earlier run left (a
SIGKILL, a power cut) go back to the queue before anything else starts, not after a lease.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import signal
from collections.abc import Callable, Coroutine
from typing import Any

from gateway.app import App, build
from gateway.errors import CannotListen
from gateway.ingest.smtp import SmtpListener
from gateway.procname import freeze_heap, name_process
from gateway.runtime.children import child_loop, on_readable
from gateway.settings import Settings

log = logging.getLogger("gateway.runtime.daemon")

Loop = Callable[[App, asyncio.Event], Coroutine[Any, Any, None]]


async def _worker_loop(app: App, stop: asyncio.Event) -> None:
    await app.worker.run(stop)


async def _sender_loop(app: App, stop: asyncio.Event) -> None:
    await app.sender.run(stop)


async def _maintenance_loop(app: App, stop: asyncio.Event) -> None:
    from gateway.jobs import maintenance_loop

    await maintenance_loop(app.jobs, stop)


async def _imap_loop(app: App, stop: asyncio.Event) -> None:
    from gateway.ingest.imap import imap_loop

    await imap_loop(app.imap_intake, stop)


async def _api_loop(app: App, stop: asyncio.Event) -> None:
    if app.settings.api.processes > 0:  # served by children of their own (gateway/runtime/web.py)
        from gateway.runtime.web import web_loop

        await web_loop(app, stop)
        return
    from gateway.http.api import api_loop

    await api_loop(app.http, stop)


def extra_loops(settings: Settings) -> list[tuple[str, Loop]]:
    """The loops of the other capabilities, each in its own module, each given its slice of the
    application (`App.jobs`, `App.imap_intake`, `App.http`)."""
    loops: list[tuple[str, Loop]] = [("sender", _sender_loop), ("maintenance", _maintenance_loop)]
    if settings.imap.accounts:
        loops.append(("imap", _imap_loop))
    if settings.api.enabled:
        loops.append(("api", _api_loop))
    return loops


def _clean_children() -> None:
    """Child processes (worker, parse pool) start from a fork server, not by forking the daemon.

    A forked child would inherit the listening socket and the open SMTP connections: after a
    SIGKILL of the daemon it keeps them open, so clients hang instead of retrying and the
    restarted daemon cannot bind its port.
    """
    multiprocessing.set_forkserver_preload(_CHILD_MODULES)
    multiprocessing.set_start_method("forkserver", force=True)


# What the children run, imported once by the fork server: each child then starts as a fork
# with them loaded, instead of each child importing SQLAlchemy and the rest for itself, which
# made the daemon's start slow and costly in CPU.
_CHILD_MODULES = ["gateway.parse_pool", "gateway.runtime.children", "gateway.http.api", "store.writer"]


async def run_daemon(settings: Settings) -> int:
    name_process("gw-daemon")
    _clean_children()
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    signals = 0

    def on_signal(signum: int) -> None:
        nonlocal signals
        signals += 1
        if signals > 1:
            log.warning("daemon.forced_exit", extra={"signal": signum})
            os._exit(1)
        log.info("daemon.stopping", extra={"signal": signum})
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal, sig)

    async with build(settings, "daemon", migrate=True) as app:
        if app.smtp is not None:
            await _listen(app.smtp, settings)
            app.liveness["smtp"] = app.smtp.serving
        # With parsing in a child process, the worker and the sender each run in a child of
        # their own (gateway/runtime/children.py): the second core for them, and an SMTP loop
        # that never waits behind a case transaction.
        separate = settings.worker.parse_in_subprocess
        if not separate and app.links.notices_in is not None:  # the HTTP children's nudges
            loop.add_reader(app.links.notices_in.fileno(), on_readable, app.links.notices_in, app.sender.wakeup,
                            lambda: None)
        worker = child_loop("worker") if separate else _worker_loop
        tasks = {asyncio.create_task(worker(app, stop), name="worker")}
        for name, run in extra_loops(settings):
            if separate and name == "sender":
                run = child_loop("sender")
            tasks.add(asyncio.create_task(run(app, stop), name=name))
        freeze_heap()
        log.info("daemon.started", extra={"pid": os.getpid(), "loops": sorted(t.get_name() for t in tasks)})
        await _until_stopped(stop, tasks)
        deadline = loop.time() + settings.daemon.grace_s  # one budget for the whole shutdown
        if app.smtp is not None:
            await app.smtp.close(settings.daemon.grace_s)
        stop.set()
        done, pending = await asyncio.wait(tasks, timeout=max(0.5, deadline - loop.time()))
        for task in pending:
            task.cancel()
        failed = [t for t in done if not t.cancelled() and t.exception() is not None]
        for task in failed:
            log.error("daemon.loop_failed", extra={"loop": task.get_name(), "error": repr(task.exception())})
    log.info("daemon.stopped")
    for task in failed:
        if isinstance(task.exception(), CannotListen):  # the API's port: one line and its own exit code
            raise task.exception()  # type: ignore[misc]
    return 1 if failed else 0


async def _listen(smtp: SmtpListener, settings: Settings) -> None:
    try:
        await smtp.start()
    except OSError as exc:  # the port is taken, or not ours to bind
        cfg = settings.smtp
        raise CannotListen(f"smtp: cannot listen on {cfg.host}:{cfg.port}: {exc.strerror or exc}") from None


async def _until_stopped(stop: asyncio.Event, tasks: set[asyncio.Task[None]]) -> None:
    """Wait for a signal, or for a loop that died (then stop the rest)."""
    waiter = asyncio.create_task(stop.wait())
    done, _ = await asyncio.wait({waiter, *tasks}, return_when=asyncio.FIRST_COMPLETED)
    if waiter not in done:
        waiter.cancel()
        for task in done:
            log.error("daemon.loop_ended", extra={"loop": task.get_name(),
                                                  "error": repr(task.exception()) if not task.cancelled() else ""})
        stop.set()
