"""The composition root: the only module that wires every layer together."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker
from sqlmodel.ext.asyncio.session import AsyncSession

from gateway.clock import Clock, SystemClock
from gateway.datastore import DataStore
from gateway.model import Result
from gateway.notify.send import Sender, make_sender
from gateway.parsing import ParseRunner
from gateway.pipeline.parse import Limits
from gateway.settings import Settings
from gateway.worker import InboxWorker
from store.blobs import BlobStore
from store.engine import check_durability, make_engine, resolve_url, session_factory
from store.inbox import Accepted, BatchStore, Inbox, IncomingMail
from store.migrate import HEAD, create_folder, require_file, require_head, upgrade
from store.node_run import begin_run, default_node_id
from store.outbox import OutboxQueue
from store.transact import Transactor

log = logging.getLogger("gateway.app")


@dataclass
class App:
    settings: Settings
    clock: Clock
    engine: AsyncEngine
    sessions: async_sessionmaker[AsyncSession]
    tx: Transactor
    inbox: Inbox
    outbox: OutboxQueue
    blobs: BlobStore
    parser: ParseRunner
    worker: InboxWorker
    sender: Sender
    # Who holds this process's claims: in `gateway run` the node's `node:run` (store/node_run.py).
    holder: str = ""
    # Where the edges commit raw mail: the inbox, or in `gateway run` on SQLite the daemon's
    # inbox writer (store/sqlite_writer.py), which SMTP and IMAP share.
    intake: BatchStore | None = None
    # What /healthz asks besides the daemon's loops: the SMTP listener, the inbox writer, the
    # worker and sender children (name -> alive now).
    liveness: dict[str, Callable[[], bool]] = field(default_factory=dict)

    def data_store(self) -> DataStore:
        """What the data-protection use-cases need (retention, export, erasure, audit)."""
        sqlite_url = self.engine.url.render_as_string(hide_password=False) if self.tx.sync_engine else None
        return DataStore(self.tx, self.engine, self.blobs, self.clock, sqlite_url)

    async def accept_many(self, mails: list[IncomingMail]) -> list[Accepted]:
        return await (self.intake or self.inbox).accept_many(mails, self.clock.now())

    async def accept(self, mail: IncomingMail) -> Accepted:
        return await self.inbox.accept(mail, self.clock.now())

    async def ingest_now(self, mail: IncomingMail) -> tuple[Accepted, Result | None]:
        """Store one mail durably, then process it at once (the pipe path)."""
        accepted = await self.accept(mail)
        if accepted.duplicate:
            return accepted, None
        results = await self.worker.run_once(limit=1, only_id=accepted.inbound_id)
        return accepted, results[0] if results else None


def limits_of(settings: Settings) -> Limits:
    w = settings.worker
    return Limits(w.max_header_bytes, w.max_header_line_bytes, w.max_mime_parts, w.max_mime_depth,
                  charset_fallbacks=settings.mail.charset_fallbacks)


def node_id(settings: Settings) -> str:
    """`daemon.node_id`, or one derived from the host, the store and the base directory."""
    return settings.daemon.node_id or default_node_id(resolve_url(settings.database.url, settings.base_dir),
                                                      str(settings.base_dir))


async def start_node_run(engine: AsyncEngine, settings: Settings, clock: Clock) -> str:
    """The next run of this node; its earlier runs' claims go back to the queue at once."""
    node = node_id(settings)
    holder, mails, notices = await begin_run(engine, node, clock.now())
    log.info("daemon.run_started", extra={"node": node, "holder": holder, "mails_taken_back": mails,
                                          "notifications_taken_back": notices})
    return holder


async def _migrate(engine: AsyncEngine) -> None:
    before = await upgrade(engine)
    if before != HEAD:
        log.info("store.migrated", extra={"from_revision": before or "none", "to_revision": HEAD})


@asynccontextmanager
async def open_app(settings: Settings, clock: Clock | None = None, migrate: bool = False,
                   subprocess_parse: bool | None = None, holder: str | None = None,
                   new_run: bool = False) -> AsyncIterator[App]:
    """The wired application. Only `migrate=True` (`gateway db upgrade`, `gateway run`) creates
    or migrates the store; otherwise a missing store or another schema is `StoreNotReady`.
    `new_run` (the daemon): start the node's next run and hold its claims as `node:run`;
    `holder` (its children): hold claims as that run."""
    clock = clock or SystemClock()
    url = resolve_url(settings.database.url, settings.base_dir)
    (create_folder if migrate else require_file)(url)
    engine = make_engine(url, settings.database.busy_timeout_ms, settings.database.echo)
    try:
        await (_migrate(engine) if migrate else require_head(engine))
        await check_durability(engine)
        if new_run:
            holder = await start_node_run(engine, settings, clock)
        sessions = session_factory(engine)
        blobs = BlobStore(settings.path(settings.storage.blob_dir))
        w = settings.worker
        in_sub = w.parse_in_subprocess if subprocess_parse is None else subprocess_parse
        parser = ParseRunner(blobs, limits_of(settings), in_subprocess=in_sub, timeout_s=w.parse_timeout_s,
                             memory_mb=w.parse_memory_mb, processes=w.parse_processes)
        inbox = Inbox(engine)
        tx = Transactor(engine, sessions, settings.database.busy_timeout_ms)
        worker = InboxWorker(tx, inbox, parser, settings, clock, holder)
        queue = OutboxQueue(engine)
        sender = make_sender(settings, queue, clock, worker.holder)
        worker.on_processed = sender.wakeup.set
        app = App(settings, clock, engine, sessions, tx, inbox, queue, blobs, parser, worker, sender,
                  holder=holder or worker.holder)
        try:
            yield app
        finally:
            parser.close()
            tx.close()
    finally:
        await engine.dispose()
