"""`gateway run`: one asyncio process with every loop of the product.

SIGTERM/SIGINT: stop accepting (421 to new SMTP connections), finish the mails in flight,
exit 0 within the grace time; a second signal exits at once.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import Callable, Coroutine
from typing import Any

from gateway.app import App, open_app
from gateway.ingest.smtp import InboxHandler, SmtpListener
from gateway.settings import Settings
from store.inbox import GroupCommitter

log = logging.getLogger("gateway.daemon")

Loop = Callable[[App, asyncio.Event], Coroutine[Any, Any, None]]


async def _worker_loop(app: App, stop: asyncio.Event) -> None:
    await app.worker.run(stop)


async def _sender_loop(app: App, stop: asyncio.Event) -> None:
    await app.sender.run(stop)


def extra_loops(settings: Settings) -> list[tuple[str, Loop]]:
    """The loops of the other capabilities, each in its own module."""
    loops: list[tuple[str, Loop]] = [("sender", _sender_loop)]
    if settings.imap.accounts:
        from gateway.ingest.imap import imap_loop

        loops.append(("imap", imap_loop))
    try:
        from gateway.lifecycle import maintenance_loop
    except ImportError:
        pass
    else:
        loops.append(("maintenance", maintenance_loop))
    if settings.api.enabled:
        try:
            from gateway.api import api_loop
        except ImportError:
            pass
        else:
            loops.append(("api", api_loop))
    return loops


async def run_daemon(settings: Settings) -> int:
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

    async with open_app(settings) as app:
        committer = GroupCommitter(app.inbox, app.clock.now)
        smtp: SmtpListener | None = None
        if settings.smtp.enabled:
            handler = InboxHandler(committer.accept, settings.smtp, settings.mail.addresses,
                                   on_accepted=lambda _a: app.worker.wakeup.set())
            smtp = SmtpListener(handler, settings.smtp)
            await smtp.start()
        tasks = {asyncio.create_task(_worker_loop(app, stop), name="worker")}
        for name, run in extra_loops(settings):
            tasks.add(asyncio.create_task(run(app, stop), name=name))
        log.info("daemon.started", extra={"pid": os.getpid(), "loops": sorted(t.get_name() for t in tasks)})
        await _until_stopped(stop, tasks)
        deadline = loop.time() + settings.daemon.grace_s  # one budget for the whole shutdown
        if smtp is not None:
            await smtp.close(settings.daemon.grace_s)
        stop.set()
        done, pending = await asyncio.wait(tasks, timeout=max(0.5, deadline - loop.time()))
        for task in pending:
            task.cancel()
        await committer.close()
        failed = [t for t in done if not t.cancelled() and t.exception() is not None]
        for task in failed:
            log.error("daemon.loop_failed", extra={"loop": task.get_name(), "error": repr(task.exception())})
    log.info("daemon.stopped")
    return 1 if failed else 0


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
