"""The composition root: the only module that constructs and wires the runtime objects.

`build(settings, role)` opens the store and wires what one process of the product needs:

    cli      a command (`gateway cases …`, `ingest`, tests): the store, the worker inline
    daemon   `gateway run`'s own process: a new node run, the inbox writer process, the SMTP
             listener over the group committer, the links to its children
    worker   the worker child: its parse processes, SMTP pauses, deferred fsync, checkpoints
    sender   the sender child

Nothing is patched after construction: every collaborator is a constructor argument.
tests/test_layers.py checks that no other module constructs these objects.

The use-cases and surfaces are never handed the `App` (nor import this module): each gets its
slice, made here from the App's parts on first use: `desk` (the case actions), `tokens` (the
API's tokens), `jobs` (the timed jobs), `http` (the API and the portal), `imap_intake` (the
IMAP readers). They are made lazily so that a command imports only what it uses.
"""

from __future__ import annotations

import functools
import logging
import socket
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from gateway.apply import Steps
from gateway.clock import Clock, SystemClock
from gateway.datastore import DataStore
from gateway.ingest.smtp import InboxHandler, SmtpListener
from gateway.model import Result
from gateway.notify.compose import TEMPLATES_DIR, Renderer
from gateway.notify.send import Sender
from gateway.notify.transport import mailer_from_settings
from gateway.parse_pool import ParseRunner
from gateway.pipeline.parse import Limits
from gateway.settings import Settings
from gateway.worker import InboxWorker, default_holder
from store.blobs import BlobStore
from store.engine import (
    Database,
    Sessions,
    check_durability,
    defer_fsync,
    make_engine,
    resolve_url,
    session_factory,
)
from store.inbox import Accepted, BatchStore, GroupCommitter, Inbox, IncomingMail
from store.migrate import HEAD, create_folder, require_file, require_head, upgrade
from store.node_run import begin_run, default_node_id
from store.outbox import OutboxQueue
from store.sqlite.wal import Checkpointer, checkpoint_elsewhere
from store.sqlite.writer import smtp_pause, smtp_quiet
from store.transact import Transactor
from store.writer import InboxWriter

if TYPE_CHECKING:
    from gateway.credentials import TokenDesk
    from gateway.http.deps import HttpDeps
    from gateway.ingest.imap import ImapIntake
    from gateway.jobs import JobDesk
    from gateway.lifecycle import CaseDesk

log = logging.getLogger("gateway.runtime.daemon")

Role = Literal["cli", "daemon", "worker", "sender", "http"]


@dataclass(frozen=True)
class Links:
    """What the children of one daemon share besides the settings (passed to them at start)."""

    smtp_busy: Any = None  # the SQLite inbox writer's `busy_until` (store.sqlite.writer.smtp_pause)
    # A socket pair: the worker child writes a byte to `notices_out` when it has queued
    # notifications, the sender child wakes when `notices_in` has one.
    notices_out: socket.socket | None = None
    notices_in: socket.socket | None = None
    # An HTTP child only (gateway/runtime/web.py): where the daemon hands it connections, and
    # what the daemon shares with its HTTP children (its loops' liveness, the action counts).
    api_connections: socket.socket | None = None
    board: Any = None

    def close(self) -> None:
        for end in (self.notices_out, self.notices_in):
            if end is not None:
                end.close()


def _make_links(smtp_busy: Any) -> Links:
    out, into = socket.socketpair()
    for end in (out, into):
        end.setblocking(False)
    return Links(smtp_busy, out, into)


@dataclass
class App:
    settings: Settings
    clock: Clock
    engine: Database
    sessions: Sessions
    tx: Transactor
    inbox: Inbox
    outbox: OutboxQueue
    blobs: BlobStore
    parser: ParseRunner
    worker: InboxWorker
    sender: Sender
    # Who holds this process's claims: in `gateway run` the node's `node:run` (store/node_run.py).
    holder: str = ""
    # Where the edges commit raw mail: the inbox, or in `gateway run` the daemon's inbox writer
    # process (store/writer.py), which SMTP and IMAP share.
    intake: BatchStore | None = None
    # What /healthz asks besides the daemon's loops (name -> alive now); the supervisor of each
    # child adds its own.
    liveness: dict[str, Callable[[], bool]] = field(default_factory=dict)
    # The daemon only: the SMTP listener (not started), its committer, the children's links.
    smtp: SmtpListener | None = None
    committer: GroupCommitter | None = None
    links: Links = field(default_factory=Links)
    # The worker child only, on SQLite: the WAL checkpoints it runs for the whole node.
    checkpoints: Checkpointer | None = None
    # After an action queued notifications: the sender's wake-up (in a child: a byte to the
    # sender child, `Links.notices_out`).
    wake_sender: Callable[[], None] | None = None

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

    # --- the slices the use-cases and surfaces get (see the module's docstring) ---

    @functools.cached_property
    def desk(self) -> CaseDesk:
        from gateway.lifecycle import CaseDesk

        s = self.settings
        return CaseDesk(self.sessions, self.blobs, self.clock, s.policy.language, s.mail.message_id_domain,
                        s.smtp.max_message_size, self.wake_sender or self.sender.wakeup.set)

    @functools.cached_property
    def tokens(self) -> TokenDesk:
        from gateway.credentials import TokenDesk

        return TokenDesk(self.sessions, self.clock, self.settings.api)

    @functools.cached_property
    def jobs(self) -> JobDesk:
        from gateway.jobs import JobDesk

        s = self.settings
        return JobDesk(self.sessions, self.tx, self.engine, self.clock, s.policy.close_after_days,
                       s.daemon.maintenance_interval_s, s.policy.language, s.mail.message_id_domain,
                       self.sender.run_once, s.retention, self.data_store())

    @functools.cached_property
    def http(self) -> HttpDeps:
        from gateway.http.deps import HttpDeps

        return HttpDeps(self.settings, self.desk, self.tokens, self.sessions, self.tx, self.blobs, self.clock,
                        self.engine, self.liveness, self.data_store())

    @functools.cached_property
    def imap_intake(self) -> ImapIntake:
        from gateway.ingest.imap import ImapIntake

        return ImapIntake(self.settings.imap, self.engine, self.clock, self.accept_many, self.inbox.wait_for_store,
                          self.worker.wakeup.set)


def limits_of(settings: Settings) -> Limits:
    w = settings.worker
    return Limits(w.max_header_bytes, w.max_header_line_bytes, w.max_mime_parts, w.max_mime_depth,
                  charset_fallbacks=settings.mail.charset_fallbacks)


def node_id(settings: Settings) -> str:
    """`daemon.node_id`, or one derived from the host, the store and the base directory."""
    return settings.daemon.node_id or default_node_id(resolve_url(settings.database.url, settings.base_dir),
                                                      str(settings.base_dir))


async def start_node_run(engine: Database, settings: Settings, clock: Clock) -> str:
    """The next run of this node; its earlier runs' claims go back to the queue at once."""
    node = node_id(settings)
    holder, mails, notices = await begin_run(engine, node, clock.now())
    log.info("daemon.run_started", extra={"node": node, "holder": holder, "mails_taken_back": mails,
                                          "notifications_taken_back": notices})
    return holder


async def _migrate(engine: Database) -> None:
    before = await upgrade(engine)
    if before != HEAD:
        log.info("store.migrated", extra={"from_revision": before or "none", "to_revision": HEAD})


@asynccontextmanager
async def build(settings: Settings, role: Role = "cli", clock: Clock | None = None, *, migrate: bool = False,
                subprocess_parse: bool | None = None, holder: str | None = None,
                links: Links | None = None) -> AsyncIterator[App]:
    """The wired application of one process. Only `migrate=True` (`gateway db upgrade`, `gateway
    run`) creates or migrates the store; otherwise a missing store or another schema is
    `StoreNotReady`. The daemon starts the node's next run and holds its claims as `node:run`;
    its children (`holder`, `links`) hold them as that run."""
    clock = clock or SystemClock()
    url = resolve_url(settings.database.url, settings.base_dir)
    (create_folder if migrate else require_file)(url)
    engine = make_engine(url, settings.database.busy_timeout_ms, settings.database.echo)
    async with AsyncExitStack() as stack:
        stack.push_async_callback(engine.dispose)
        await (_migrate(engine) if migrate else require_head(engine))
        await check_durability(engine)
        liveness: dict[str, Callable[[], bool]] = {}
        writer = None
        if role == "daemon":
            holder = await start_node_run(engine, settings, clock)
            writer = await _start_writer(engine, settings, stack)
            # Only SQLite's one write lock is worth the worker's waiting for the SMTP commits.
            links = _make_links(writer.busy_until if writer and engine.dialect.name == "sqlite" else None)
            stack.callback(links.close)
            if writer is not None:
                liveness["inbox_writer"] = writer.alive
        links = links or Links()
        holder = holder or default_holder()
        w = settings.worker
        sessions = session_factory(engine)
        blobs = BlobStore(settings.path(settings.storage.blob_dir))
        in_sub = w.parse_in_subprocess if subprocess_parse is None else subprocess_parse
        parser = ParseRunner(blobs, limits_of(settings), in_subprocess=in_sub, timeout_s=w.parse_timeout_s,
                             memory_mb=w.parse_memory_mb, processes=w.parse_processes)
        stack.callback(parser.close)
        # In the children of a daemon on SQLite, writes wait for the SMTP commits to pause.
        paused = links.smtp_busy is not None and role in ("worker", "sender")
        tx = Transactor(engine, sessions, settings.database.busy_timeout_ms,
                        before_write=functools.partial(smtp_pause, links.smtp_busy) if paused else None)
        stack.callback(tx.close)
        inbox = Inbox(engine)
        queue = OutboxQueue(engine)
        sender = Sender(queue, Renderer(TEMPLATES_DIR, settings, clock=clock.now), mailer_from_settings(settings),
                        settings.outbound, clock, holder=holder)
        on_processed = functools.partial(_nudge, links.notices_out) \
            if role in ("worker", "http") and links.notices_out is not None else sender.wakeup.set
        quiet: Callable[[], bool] | None = \
            functools.partial(smtp_quiet, links.smtp_busy) if paused and role == "worker" else None
        if role == "worker" and tx.pg_engine is not None:
            # PostgreSQL has no one write lock that the SMTP commits wait for: the larger groups
            # always (a group's reads cost a round trip or two, whatever its size).
            quiet = _always

        worker = InboxWorker(tx, inbox, parser, w, Steps.from_settings(settings), clock, holder,
                             on_processed=on_processed, smtp_quiet=quiet)
        intake: BatchStore | None = writer or (inbox if role == "daemon" else None)
        committer = smtp = None
        if intake is not None:
            committer = GroupCommitter(intake, clock.now, in_flight=getattr(intake, "in_flight", 1))
            stack.push_async_callback(committer.close)
            if settings.smtp.enabled:
                handler = InboxHandler(committer.submit, settings.smtp, settings.mail.addresses,
                                       on_accepted=lambda _accepted: worker.wakeup.set())
                smtp = SmtpListener(handler, settings.smtp)
        checkpoints = await _child_store(role, settings, engine, tx, paused, quiet)
        if role == "worker":
            await parser.start()
        yield App(settings, clock, engine, sessions, tx, inbox, queue, blobs, parser, worker, sender,
                  holder=holder, intake=intake, liveness=liveness, smtp=smtp, committer=committer,
                  links=links, checkpoints=checkpoints, wake_sender=on_processed)


async def _start_writer(engine: Database, settings: Settings, stack: AsyncExitStack) -> InboxWriter | None:
    """The edges commit through a writer process of its own (store/writer.py says why;
    on PostgreSQL store/pg/writer.py), which SMTP and IMAP share."""
    if engine.dialect.name not in ("sqlite", "postgresql"):
        return None

    writer = InboxWriter(engine.url.render_as_string(hide_password=False),
                               settings.database.busy_timeout_ms / 1000)
    await writer.start()
    stack.callback(writer.close)
    return writer


async def _child_store(role: Role, settings: Settings, engine: Database, tx: Transactor, beside_writer: bool,
                       quiet: Callable[[], bool] | None) -> Checkpointer | None:
    """The children's store. Beside the daemon's SQLite writer they run no WAL checkpoint in their
    commits: the worker's Checkpointer runs them for the node. The worker's own transactions wait
    for no fsync, on PostgreSQL too (durable with the next commit that waits, store/engine.py)."""
    if role == "worker" and tx.pg_engine is not None:
        defer_fsync(tx.pg_engine)
    if role not in ("worker", "sender") or tx.sync_engine is None:
        return None
    checkpoints = None
    if beside_writer:
        await checkpoint_elsewhere(tx.sync_engine, engine)
        if quiet is not None:
            checkpoints = Checkpointer(engine.url.render_as_string(hide_password=False),
                                       settings.database.busy_timeout_ms, quiet)
    if role == "worker":
        defer_fsync(tx.sync_engine)
    return checkpoints


@asynccontextmanager
async def open_app(settings: Settings, clock: Clock | None = None, migrate: bool = False,
                   subprocess_parse: bool | None = None, holder: str | None = None) -> AsyncIterator[App]:
    """`build(settings, "cli", …)`: a command's (and a test's) application."""
    async with build(settings, "cli", clock, migrate=migrate, subprocess_parse=subprocess_parse,
                     holder=holder) as app:
        yield app


def _always() -> bool:
    return True


def _nudge(notices: socket.socket) -> None:
    try:
        notices.send(b"n")
    except OSError:
        pass  # full of nudges the sender has not read yet (it will wake anyway), or it is gone
