"""The composition root: the only module that wires every layer together."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker
from sqlmodel.ext.asyncio.session import AsyncSession

from gateway import metrics
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
from store.migrate import upgrade
from store.outbox import OutboxQueue
from store.transact import Transactor


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
    # Where the edges commit raw mail: the inbox, or in `gateway run` on SQLite the daemon's
    # inbox writer (store/sqlite_writer.py), which SMTP and IMAP share.
    intake: BatchStore | None = None

    def data_store(self) -> DataStore:
        """What the data-protection use-cases need (retention, export, erasure, audit)."""
        sqlite_url = self.engine.url.render_as_string(hide_password=False) if self.tx.sync_engine else None
        return DataStore(self.tx, self.engine, self.blobs, self.clock, sqlite_url)

    async def accept_many(self, mails: list[IncomingMail]) -> list[Accepted]:
        return await (self.intake or self.inbox).accept_many(mails, self.clock.now())

    async def accept(self, mail: IncomingMail) -> Accepted:
        accepted = await self.inbox.accept(mail, self.clock.now())
        if not accepted.duplicate:
            metrics.record_received(mail.source.split(":", 1)[0])
        return accepted

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


@asynccontextmanager
async def open_app(settings: Settings, clock: Clock | None = None, migrate: bool = True,
                   subprocess_parse: bool | None = None) -> AsyncIterator[App]:
    clock = clock or SystemClock()
    url = resolve_url(settings.database.url, settings.base_dir)
    engine = make_engine(url, settings.database.busy_timeout_ms, settings.database.echo)
    try:
        if migrate:
            await upgrade(engine)
        await check_durability(engine)
        sessions = session_factory(engine)
        blobs = BlobStore(settings.path(settings.storage.blob_dir))
        w = settings.worker
        in_sub = w.parse_in_subprocess if subprocess_parse is None else subprocess_parse
        parser = ParseRunner(blobs, limits_of(settings), in_subprocess=in_sub, timeout_s=w.parse_timeout_s,
                             memory_mb=w.parse_memory_mb, processes=w.parse_processes)
        inbox = Inbox(engine)
        tx = Transactor(engine, sessions, settings.database.busy_timeout_ms)
        worker = InboxWorker(tx, inbox, parser, settings, clock)
        queue = OutboxQueue(engine)
        sender = make_sender(settings, queue, clock)
        worker.on_processed = sender.wakeup.set
        app = App(settings, clock, engine, sessions, tx, inbox, queue, blobs, parser, worker, sender)
        try:
            yield app
        finally:
            parser.close()
            tx.close()
    finally:
        await engine.dispose()
