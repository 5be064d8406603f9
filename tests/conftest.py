"""Shared fixtures: settings on a temporary SQLite file (or PostgreSQL), an opened App, mail builders."""

from __future__ import annotations

import dataclasses
import functools
import os
import shutil
import socket
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import pytest

from gateway.app import App, open_app
from gateway.apply import Steps
from gateway.clock import FrozenClock
from gateway.model import Role, UserKind
from gateway.pipeline import Planner
from gateway.settings import Settings, load_settings
from gateway.worker import InboxWorker
from store import queries, writes
from store.transact import run_in

ROOT = Path(__file__).resolve().parent.parent
CORPUS = ROOT / "tests" / "corpus"  # third-party test data: see tests/corpus/LICENSES.md
ADDRESS = "kundebetjening@statens-adm.example"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def database_url(tmp_path: Path) -> str:
    """SQLite in the test's folder, or a fresh schema on PostgreSQL when the suite runs there."""
    pg = os.environ.get("GATEWAY_TEST_DATABASE_URL")
    if pg:
        from tests.pg import fresh_database

        return fresh_database(pg)
    db = tmp_path / "gateway.db"
    if not db.exists():
        db.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(_sqlite_template(), db)
    return f"sqlite+aiosqlite:///{db}"


@functools.cache
def _sqlite_template() -> Path:
    """One migrated SQLite store per pytest process, copied for each test: a copy is a
    millisecond, a migration ~150 ms (tests of the migrations themselves start empty files)."""
    import asyncio
    import concurrent.futures
    import tempfile

    from store.engine import make_engine
    from store.migrate import upgrade

    path = Path(tempfile.mkdtemp(prefix="gw-template-")) / "gateway.db"

    async def migrate() -> None:
        engine = make_engine(f"sqlite+aiosqlite:///{path}")
        try:
            await upgrade(engine)
        finally:
            await engine.dispose()

    with concurrent.futures.ThreadPoolExecutor(1) as pool:  # callers may be inside a running loop
        pool.submit(asyncio.run, migrate()).result()
    return path


def make_settings(tmp_path: Path, **sections: dict[str, Any]) -> Settings:
    env = {"GATEWAY_BASE_DIR": str(tmp_path)}
    base = load_settings(ROOT / "config" / "gateway.toml", env=env)
    base = dataclasses.replace(base, base_dir=str(tmp_path))
    changes: dict[str, Any] = {
        "database": dataclasses.replace(base.database, url=database_url(tmp_path)),
        "storage": dataclasses.replace(base.storage, blob_dir=str(tmp_path / "blobs")),
        "outbound": dataclasses.replace(base.outbound, transport=f"maildir:{tmp_path}/outbound"),
        "smtp": dataclasses.replace(base.smtp, port=0),
        "api": dataclasses.replace(base.api, port=0),
        "worker": dataclasses.replace(base.worker, parse_in_subprocess=False),
        "daemon": dataclasses.replace(base.daemon, log_format="text"),
        # Tests send bursts from one address; the loop breaker has its own test (test_hostile).
        "policy": dataclasses.replace(base.policy, max_mails_per_sender_per_hour=0),
    }
    for name, values in sections.items():
        changes[name] = dataclasses.replace(changes.get(name, getattr(base, name)), **values)
    return dataclasses.replace(base, **changes)


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return make_settings(tmp_path)


@pytest.fixture
def clock() -> FrozenClock:
    return FrozenClock()


@pytest.fixture
async def app(settings: Settings, clock: FrozenClock) -> AsyncIterator[App]:
    async with open_app(settings, clock=clock) as opened:
        yield opened


def worker_of(app: App, holder: str | None = None, *, planner: Planner | None = None, tx: Any = None,
              inbox: Any = None, smtp_quiet: Callable[[], bool] | None = None) -> InboxWorker:
    """A worker on the app's store, wired as gateway.app wires its own, with the seams a test
    replaces: the plan step, the transactor and inbox (a failing store), the SMTP pauses."""
    steps = Steps.from_settings(app.settings)
    if planner is not None:
        steps = dataclasses.replace(steps, policy=dataclasses.replace(steps.policy, planner=planner))
    return InboxWorker(tx or app.tx, inbox or app.inbox, app.parser, app.settings.worker, steps, app.clock,
                       holder or app.worker.holder, smtp_quiet=smtp_quiet)


async def detail(app: App, number: str) -> dict[str, Any]:
    """`gateway cases show NUMBER --json`, as the tests read it."""
    async with app.sessions() as session:
        return await run_in(session, queries.case_detail, number)


async def outbox(app: App) -> list[dict[str, Any]]:
    """`gateway outbox list --json`."""
    async with app.sessions() as session:
        return await run_in(session, queries.list_outbox)


async def add_user(app: App, email: str, name: str = "", org: str | None = None,
                   shared: bool = False, agent: bool = False) -> None:
    async with app.sessions() as session, session.begin():
        await run_in(session, writes.add_user, email, name or email.split("@")[0].title(), org,
                              UserKind.SHARED_MAILBOX if shared else UserKind.PERSON,
                              Role.AGENT if agent else Role.CUSTOMER, app.clock.now())


def build_mail(sender: str = "jens@borger.example", subject: str = "Spørgsmål om min faktura",
               body: str = "Hej Kundebetjening,\n\nJeg har et spørgsmål om min faktura.\n\nMvh Jens",
               to: str = ADDRESS, message_id: str | None = None, in_reply_to: str | None = None,
               headers: dict[str, str] | None = None, attachments: list[tuple[str, bytes, str]] | None = None,
               cc: str | None = None) -> bytes:
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = to
    if cc:
        msg["Cc"] = cc
    msg["Subject"] = subject
    msg["Message-ID"] = message_id or f"<{uuid.uuid4().hex}@borger.example>"
    msg["Date"] = format_datetime(datetime(2026, 1, 5, 10, 0, tzinfo=UTC))
    if in_reply_to:
        msg["In-Reply-To"] = in_reply_to
        msg["References"] = in_reply_to
    for key, value in (headers or {}).items():
        msg[key] = value
    msg.set_content(body)
    for name, data, ctype in attachments or []:
        maintype, subtype = ctype.split("/")
        msg.add_attachment(data, maintype=maintype, subtype=subtype, filename=name)
    return msg.as_bytes()


MailBuilder = Callable[..., bytes]


@pytest.fixture
def mail() -> MailBuilder:
    return build_mail
