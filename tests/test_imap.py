"""IMAP ingestion against a real Dovecot on 127.0.0.1 (tests/dovecot.py), plus its pure helpers.

One Dovecot serves the module; every test has its own mailbox user, so tests stay independent.
"""

from __future__ import annotations

import asyncio
import dataclasses
import imaplib
import logging
import shutil
import socket
import ssl
import subprocess
import sys
import time
import tracemalloc
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from imapclient.exceptions import LoginError
from sqlalchemy import func, select

from gateway.app import App, open_app
from gateway.clock import FrozenClock, SystemClock
from gateway.errors import ConfigError, StoreUnavailable
from gateway.ingest.imap import (
    AccountReader,
    Backoff,
    FolderState,
    ImapIntake,
    Lease,
    LeaseLost,
    advance,
    batches,
    check_config,
    envelope_to_of,
    imap_loop,
    load_state,
    save_state,
)
from gateway.ingest.imap_check import check_accounts
from gateway.ingest.mailbox import DONE_KEYWORD, Mailbox, translate
from gateway.settings import ImapAccount, Settings
from store import queries
from store.inbox import Accepted, IncomingMail
from store.models import ImapFolderState, InboundMail
from store.transact import run_in
from tests.conftest import ROOT, build_mail, make_settings
from tests.dovecot import MISSING, Dovecot, dovecot_binary

# -- fixtures and helpers ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def dovecot() -> Iterator[Dovecot]:
    if dovecot_binary() is None:
        pytest.skip(MISSING)
    server = Dovecot(tls=shutil.which("openssl") is not None, spare_users=40)
    server.start()
    yield server
    server.close()


@pytest.fixture
def user(dovecot: Dovecot) -> str:
    return dovecot.fresh_user()


def account(dovecot: Dovecot, username: str, **overrides: Any) -> ImapAccount:
    values: dict[str, Any] = {"name": name_of(username), "host": "127.0.0.1", "port": dovecot.port,
                              "tls": "none", "username": username, "password": dovecot.users[username],
                              "poll_interval_s": 30.0}
    return ImapAccount(**{**values, **overrides})


def name_of(username: str) -> str:
    return username.split("@")[0]


def imap_settings(tmp_path: Path, *accounts: ImapAccount, initial: float = 0.1, cap: float = 0.5) -> Settings:
    return make_settings(tmp_path, imap={"accounts": tuple(accounts), "backoff_initial_s": initial,
                                         "backoff_max_s": cap})


def mails(n: int, tag: str = "") -> list[bytes]:
    return [build_mail(sender=f"borger{i}@borger.example", subject=f"Spørgsmål {tag}{i}") for i in range(n)]


@asynccontextmanager
async def running(settings: Settings, reader: type[AccountReader] = AccountReader) -> AsyncIterator[App]:
    """The app with its IMAP loop and inbox worker running, stopped (and checked) on exit."""
    async with open_app(settings, clock=SystemClock()) as app:
        stop = asyncio.Event()
        tasks = [asyncio.create_task(imap_loop(app.imap_intake, stop, reader)), asyncio.create_task(app.worker.run(stop))]
        try:
            yield app
        finally:
            stop.set()
            done, pending = await asyncio.wait(tasks, timeout=10)
            assert not pending, "the loops did not stop within 10 s"
            for task in done:
                task.result()


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        assert time.monotonic() < deadline, f"not reached within {timeout} s"
        await asyncio.sleep(0.05)


async def case_count(app: App) -> int:
    async with app.sessions() as session:
        return len(await run_in(session, queries.list_cases, "all"))


async def inbound_count(app: App) -> int:
    async with app.engine.connect() as conn:
        return int((await conn.execute(select(func.count()).select_from(InboundMail))).scalar_one())


async def folder(dovecot: Dovecot, username: str, name: str) -> int:
    return await asyncio.to_thread(dovecot.count, username, name)


def events(caplog: pytest.LogCaptureFixture, name: str, account_name: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.getMessage() == name and getattr(r, "account", None) == account_name]


# -- against Dovecot --------------------------------------------------------------------------


async def _equals(value: Awaitable[int], expected: int) -> bool:
    return await value == expected


async def last_fetch_at(app: App, account_name: str) -> datetime | None:
    table = ImapFolderState.__table__  # type: ignore[attr-defined]
    async with app.engine.connect() as conn:
        return (await conn.execute(select(table.c.last_fetch_at).where(table.c.account == account_name))).scalar()


async def test_fifty_messages_become_fifty_cases(dovecot: Dovecot, user: str, tmp_path: Path) -> None:
    dovecot.append(user, mails(50))
    started = datetime.now(UTC)
    async with running(imap_settings(tmp_path, account(dovecot, user))) as app:
        await eventually(lambda: _equals(case_count(app), 50), timeout=30)
        assert await folder(dovecot, user, "INBOX") == 0
        assert await folder(dovecot, user, "Processed") == 50
        assert (await load_state(app.engine, name_of(user), "INBOX")).uidvalidity is not None
        fetched = await last_fetch_at(app, name_of(user))  # for the metrics: is the account alive
        assert fetched is not None and fetched >= started
        assert await inbound_count(app) == 50


async def test_idle_ingests_within_two_seconds_and_stops_fast(dovecot: Dovecot, user: str, tmp_path: Path) -> None:
    # A poll interval of a minute: only IDLE can explain a mail seen within two seconds.
    acct = account(dovecot, user, poll_interval_s=60.0)
    async with open_app(imap_settings(tmp_path, acct), clock=SystemClock()) as app:
        stop = asyncio.Event()
        tasks = [asyncio.create_task(imap_loop(app.imap_intake, stop)), asyncio.create_task(app.worker.run(stop))]
        await eventually(lambda: _has_state(app, acct.name))
        await asyncio.sleep(0.3)  # the reader is now in IDLE
        await asyncio.to_thread(dovecot.append, user, mails(1))
        appended = time.monotonic()
        await eventually(lambda: _equals(case_count(app), 1), timeout=2.0)
        assert time.monotonic() - appended < 2.0
        stop.set()
        stopping = time.monotonic()
        await asyncio.wait_for(asyncio.gather(*tasks), timeout=5)
        assert time.monotonic() - stopping < 1.5, "stop must be honoured within about a second"
    assert await folder(dovecot, user, "Processed") == 1


async def _has_state(app: App, name: str) -> bool:
    state = await load_state(app.engine, name, "INBOX")
    return state.uidvalidity is not None


def _crash_and_start(dovecot: Dovecot) -> None:
    dovecot.kill()
    dovecot.start()


@pytest.mark.parametrize("restart", [Dovecot.restart, _crash_and_start], ids=["restart", "crash"])
async def test_server_restart_mid_run_loses_and_doubles_nothing(dovecot: Dovecot, user: str, tmp_path: Path,
                                                                 caplog: pytest.LogCaptureFixture,
                                                                 restart: Callable[[Dovecot], None]) -> None:
    caplog.set_level(logging.INFO, logger="gateway.imap")
    acct = account(dovecot, user)  # polls only every 30 s: the reader must notice the loss itself
    dovecot.append(user, mails(40, "a"))
    async with running(imap_settings(tmp_path, acct)) as app:
        await eventually(lambda: _positive(inbound_count(app)))
        await asyncio.to_thread(restart, dovecot)  # while the 40 are being taken
        await asyncio.to_thread(dovecot.append, user, mails(10, "b"))
        await eventually(lambda: _equals(case_count(app), 50), timeout=90)  # generous: the whole suite shares two cores
        # A move the killed server had not made durable shows up in INBOX again and is found by
        # the reader's next scan (the dedup key keeps it one case): allow a poll interval.
        await eventually(lambda: _equals(folder(dovecot, user, "Processed"), 50), timeout=60)
        assert await inbound_count(app) == 50
        assert await folder(dovecot, user, "INBOX") == 0
    assert len(events(caplog, "imap.connected", acct.name)) >= 2, "the reader must have reconnected"


async def _positive(value: Awaitable[int]) -> bool:
    return await value > 0


class CrashAfterCommit(AccountReader):
    """Dies like a killed process: right after the inbox commit, before the move."""

    async def after_commit(self, uids: list[int]) -> None:
        raise asyncio.CancelledError


async def test_item92_crash_between_commit_and_move_gives_one_case(dovecot: Dovecot, user: str, tmp_path: Path) -> None:
    acct = account(dovecot, user)
    settings = imap_settings(tmp_path, acct)
    dovecot.append(user, mails(1))
    async with open_app(settings, clock=SystemClock()) as app:
        await asyncio.wait_for(imap_loop(app.imap_intake, asyncio.Event(), CrashAfterCommit), timeout=10)
        assert await inbound_count(app) == 1
    assert await folder(dovecot, user, "INBOX") == 1, "not moved: the crash came first"
    async with running(settings) as app:
        await eventually(lambda: _equals(folder(dovecot, user, "Processed"), 1))
        await eventually(lambda: _equals(case_count(app), 1))
        assert await inbound_count(app) == 1
    assert await folder(dovecot, user, "INBOX") == 0


class CutsItsMover(AccountReader):
    """Records which connection moves, and cuts the second connection before its first move."""

    moved_on: list[str] = []

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        for name, box in (("fetching", self.box), ("moving", self.mover)):
            def move(uids: Sequence[int], folder: str, _move: Any = box.move, _name: str = name) -> None:
                if folder == self.account.move_to:
                    CutsItsMover.moved_on.append(_name)
                _move(uids, folder)
            box.move = move  # type: ignore[method-assign]

    async def after_commit(self, uids: list[int]) -> None:
        if not CutsItsMover.moved_on:  # once: the server drops the second connection
            self.mover.client.socket().shutdown(socket.SHUT_RDWR)
        await super().after_commit(uids)


async def test_committed_mail_is_moved_over_a_second_connection_whose_loss_loses_nothing(
        dovecot: Dovecot, user: str, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The second connection moves what is committed while the first fetches; when it breaks, the
    session starts again, the unmoved mails are fetched again and stay one case each."""
    caplog.set_level(logging.INFO, logger="gateway.imap")
    CutsItsMover.moved_on = []
    acct = account(dovecot, user)
    dovecot.append(user, mails(5))
    async with running(imap_settings(tmp_path, acct), CutsItsMover) as app:
        await eventually(lambda: _equals(folder(dovecot, user, "Processed"), 5))
        await eventually(lambda: _equals(case_count(app), 5))
        assert await inbound_count(app) == 5
    assert await folder(dovecot, user, "INBOX") == 0
    assert CutsItsMover.moved_on and set(CutsItsMover.moved_on) == {"moving"}
    assert events(caplog, "imap.unavailable", acct.name), "the broken connection was noticed"
    assert len(events(caplog, "imap.connected", acct.name)) >= 2


def test_imaplib_formats_its_debug_lines_only_when_they_are_logged(dovecot: Dovecot, user: str) -> None:
    """imapclient sets imaplib's debug level 5, and imaplib then formats the repr of every
    response (megabytes per FETCH) before the logger drops it: off, unless that logger shows DEBUG."""
    logger = logging.getLogger("imapclient.imaplib")
    levels = []
    for level in (logging.WARNING, logging.DEBUG):
        before = logger.level
        logger.setLevel(level)
        box = Mailbox(account(dovecot, user))
        try:
            box.connect()
            levels.append(box.client._imap.debug)
        finally:
            box.close()
            logger.setLevel(before)
    assert levels == [0, 5]


async def test_in_gateway_run_imap_commits_through_the_daemons_inbox_writer(
        dovecot: Dovecot, user: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The daemon has one inbox writer process (store/writer.py, on PostgreSQL with
    store/pg/writer.py); SMTP and IMAP share it."""
    from gateway.app import build
    from store.inbox import Inbox
    from store.writer import InboxWriter

    batches: list[int] = []
    write = InboxWriter.accept_many

    async def counted(self: InboxWriter, mails: Sequence[IncomingMail], now: datetime) -> list[Accepted]:
        batches.append(len(mails))
        return await write(self, mails, now)

    monkeypatch.setattr(InboxWriter, "accept_many", counted)

    async def not_here(*_args: Any) -> None:
        raise AssertionError("committed through the app's own inbox")

    monkeypatch.setattr(Inbox, "accept_many", not_here)
    dovecot.append(user, mails(3))
    async with build(imap_settings(tmp_path, account(dovecot, user)), "daemon", SystemClock()) as app:
        stop = asyncio.Event()
        task = asyncio.create_task(imap_loop(app.imap_intake, stop))
        await eventually(lambda: _equals(folder(dovecot, user, "Processed"), 3))
        stop.set()
        await asyncio.wait_for(task, 10)
        assert await inbound_count(app) == 3
    assert sum(batches) == 3


async def test_item96_bad_account_backs_off_and_the_good_one_works(dovecot: Dovecot, user: str, tmp_path: Path,
                                                            caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="gateway.imap")
    good = account(dovecot, user)
    bad = account(dovecot, user, name="bad", password="wrong")
    dovecot.append(user, mails(5))
    async with running(imap_settings(tmp_path, bad, good, initial=0.1, cap=0.4)) as app:
        await eventually(lambda: _equals(case_count(app), 5))
        await asyncio.sleep(2.5)
    warnings = events(caplog, "imap.unavailable", "bad")
    # each step: a refused login (about 0.5 s at Dovecot) and a delay of 0.05-0.4 s, so a
    # handful of steps in these ~3 s; a reconnect loop without back-off would log hundreds
    assert 3 <= len(warnings) <= 20
    assert [r.attempt for r in warnings] == list(range(1, len(warnings) + 1)), "one line per back-off step"  # type: ignore[attr-defined]
    assert all("login refused" in r.problem for r in warnings)  # type: ignore[attr-defined]
    assert not events(caplog, "imap.unavailable", good.name)
    assert await folder(dovecot, user, "Processed") == 5


async def test_item93_flag_mode_and_uidvalidity_change_without_duplicates(dovecot: Dovecot, user: str, tmp_path: Path,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="gateway.imap")
    acct = account(dovecot, user, folder="Support", after="flag", poll_interval_s=0.5)
    first = mails(3, "first")
    dovecot.append(user, first, folder="Support")
    async with running(imap_settings(tmp_path, acct)) as app:
        await eventually(lambda: _equals(case_count(app), 3))
        assert await folder(dovecot, user, "Support") == 3
        with dovecot.client(user) as c:
            c.select_folder("Support", readonly=True)
            flags = c.get_flags(c.search("ALL"))
        assert all(b"\\Seen" in f and DONE_KEYWORD.encode() in f for f in flags.values())
        old = (await load_state(app.engine, acct.name, "Support")).uidvalidity

        # The folder is deleted and rebuilt under the reader: a new UIDVALIDITY, the old mails again.
        await asyncio.to_thread(_rebuild, dovecot, user, "Support", [*first, *mails(1, "new")])
        await eventually(lambda: _equals(case_count(app), 4), timeout=20)
        await eventually(lambda: _uidvalidity_changed(app, acct.name, old))
        await asyncio.sleep(1.0)  # a further poll must not add anything
        assert await case_count(app) == 4
        assert await inbound_count(app) == 4
    assert events(caplog, "imap.uidvalidity_changed", acct.name)


def _rebuild(dovecot: Dovecot, username: str, name: str, raws: list[bytes]) -> None:
    with dovecot.client(username) as c:
        c.delete_folder(name)
        c.create_folder(name)
        for raw in raws:
            c.append(name, raw)


async def _uidvalidity_changed(app: App, name: str, old: int | None) -> bool:
    state = await load_state(app.engine, name, "Support")
    return state.uidvalidity not in (None, old)


async def test_delete_mode_and_duplicate_in_the_mailbox(dovecot: Dovecot, user: str, tmp_path: Path) -> None:
    raw = mails(1)[0]
    dovecot.append(user, [raw, raw, *mails(2, "x")])
    async with running(imap_settings(tmp_path, account(dovecot, user, after="delete"))) as app:
        await eventually(lambda: _equals(folder(dovecot, user, "INBOX"), 0))
        await eventually(lambda: _equals(case_count(app), 3))
        assert await inbound_count(app) == 3
    assert await folder(dovecot, user, "Processed") == 0


async def test_item94_oversized_message_is_set_aside(dovecot: Dovecot, user: str, tmp_path: Path,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="gateway.imap")
    big = build_mail(body="x" * 20_000, subject="stor")
    dovecot.append(user, [big, *mails(1)])
    async with running(imap_settings(tmp_path, account(dovecot, user, max_message_size=10_000))) as app:
        await eventually(lambda: _equals(folder(dovecot, user, "Oversized"), 1))
        await eventually(lambda: _equals(case_count(app), 1))
        assert await inbound_count(app) == 1
    assert await folder(dovecot, user, "INBOX") == 0
    assert events(caplog, "imap.oversized", name_of(user))


class RefusesPoison(AccountReader):
    """A store that refuses one particular mail while it accepts the others."""

    async def commit(self, mails: list[IncomingMail]) -> list[Accepted]:
        if any(b"X-Poison: yes" in m.raw for m in mails):
            raise StoreUnavailable("refused")
        return await super().commit(mails)


async def test_item99_message_that_cannot_be_stored_goes_to_failed_folder(dovecot: Dovecot, user: str,
                                                                   tmp_path: Path) -> None:
    poison = build_mail(headers={"X-Poison": "yes"})
    dovecot.append(user, [poison, *mails(2)])
    acct = account(dovecot, user, max_tries=2, idle=False, poll_interval_s=0.2)
    async with running(imap_settings(tmp_path, acct), RefusesPoison) as app:
        await eventually(lambda: _equals(folder(dovecot, user, "Failed"), 1))
        await eventually(lambda: _equals(case_count(app), 2))
        assert await folder(dovecot, user, "INBOX") == 0
        assert (await load_state(app.engine, acct.name, "INBOX")).failures == {}


@pytest.mark.parametrize("after", ["move", "flag"])
async def test_a_mail_that_comes_between_the_last_search_and_idle_is_taken_at_once(
        dovecot: Dovecot, user: str, tmp_path: Path, after: str) -> None:
    """Dovecot does not announce in IDLE a message that came before IDLE began (only in the
    answer to DONE, a poll interval later). The reader looks once from its second connection
    after IDLE starts. And it must not take what it already has for new: it IDLEs, not spins."""
    searches = 0

    class AppendsAfterAnEmptyScan(AccountReader):
        planted = False

        async def scan(self) -> int:
            nonlocal searches
            searches += 1
            found = await super().scan()
            if not found and not self.planted:
                self.planted = True  # lands after this SEARCH, before the IDLE that follows
                await asyncio.to_thread(dovecot.append, user, mails(1, "between"))
            return found

    acct = account(dovecot, user, after=after)  # polls every 30 s: only IDLE or the look can find it
    dovecot.append(user, mails(2))
    async with running(imap_settings(tmp_path, acct), AppendsAfterAnEmptyScan) as app:
        started = time.monotonic()
        await eventually(lambda: _equals(inbound_count(app), 3), timeout=10)
        assert time.monotonic() - started < 10
        before = searches
        await asyncio.sleep(2.0)
        assert searches - before <= 1, "scanning again and again instead of waiting in IDLE"


async def test_item98_one_node_at_a_time_reads_an_account(dovecot: Dovecot, user: str, tmp_path: Path) -> None:
    class QuickRetry(AccountReader):
        lease_retry_s = 0.2

    acct = account(dovecot, user)  # polls every 30 s: node B must notice the new mails by IDLE
    settings = imap_settings(tmp_path, acct)
    dovecot.append(user, mails(20))
    async with open_app(settings, clock=SystemClock()) as app:
        stop_a, stop_b = asyncio.Event(), asyncio.Event()
        node_a = asyncio.create_task(imap_loop(app.imap_intake, stop_a, QuickRetry))
        await eventually(lambda: _equals(inbound_count(app), 20))
        node_b = asyncio.create_task(imap_loop(app.imap_intake, stop_b, QuickRetry))  # a second node, same database
        await asyncio.sleep(0.5)
        stop_a.set()
        await asyncio.wait_for(node_a, 5)
        await asyncio.to_thread(dovecot.append, user, mails(5, "b"))
        await eventually(lambda: _equals(inbound_count(app), 25))  # node B took over
        stop_b.set()
        await asyncio.wait_for(node_b, 5)
    assert await folder(dovecot, user, "Processed") == 25


@pytest.mark.parametrize(("overrides", "expected", "rc"), [
    ({}, "ok     ", 0),
    ({"password": "wrong"}, "login refused", 1),
    ({"port": 1}, "cannot connect", 1),
    ({"folder": "Nowhere"}, "'Nowhere' does not exist", 1),
    ({"tls": "implicit"}, "TLS failure", 1),
    ({"host": "imap.example.dk", "tls": "none"}, "only allowed for a loopback host", 1),
], ids=["ok", "password", "closed-port", "folder", "tls-on-plain-port", "plaintext-remote"])
async def test_check_says_what_is_wrong(dovecot: Dovecot, user: str, tmp_path: Path, overrides: dict[str, Any],
                                        expected: str, rc: int, capsys: pytest.CaptureFixture[str]) -> None:
    assert await check_accounts(imap_settings(tmp_path, account(dovecot, user, **overrides))) == rc
    out = capsys.readouterr().out
    assert expected in out and out.count("\n") == 1, out


async def test_item96_check_verifies_certificates(dovecot: Dovecot, user: str, tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    if not dovecot.tls:
        pytest.fail("openssl is needed to test TLS against Dovecot")
    implicit = account(dovecot, user, name="implicit", host="localhost", port=dovecot.imaps_port, tls="implicit")
    starttls = account(dovecot, user, name="starttls", host="localhost", tls="starttls")
    assert await check_accounts(imap_settings(tmp_path, implicit, starttls)) == 1
    out = capsys.readouterr().out
    assert out.count("certificate not trusted") == 2, out
    monkeypatch.setenv("SSL_CERT_FILE", str(dovecot.ca_file))  # our test CA, trusted the ordinary way
    assert await check_accounts(imap_settings(tmp_path, implicit, starttls)) == 0
    assert capsys.readouterr().out.count("ok     ") == 2


def test_gateway_imap_check_command(dovecot: Dovecot, user: str, tmp_path: Path) -> None:
    config = tmp_path / "gateway.toml"
    config.write_text(f"""
[database]
url = "sqlite+aiosqlite:///{tmp_path}/gw.db"
[[imap.accounts]]
name = "support"
host = "127.0.0.1"
port = {dovecot.port}
tls = "none"
username = "{user}"
password = "secret"
[[imap.accounts]]
name = "typo"
host = "127.0.0.1"
port = {dovecot.port}
tls = "none"
username = "{user}"
password = "not-the-password"
""", encoding="utf-8")
    done = subprocess.run([sys.executable, "-m", "gateway", "--config", str(config), "imap", "check"],
                          capture_output=True, text=True, cwd=ROOT, timeout=60)
    lines = done.stdout.splitlines()
    assert done.returncode == 1, done.stderr
    assert lines[0].startswith("ok     support: logged in") and "Processed" in lines[0]
    assert lines[1].startswith("FAILED typo: login refused") and "check username and password" in lines[1]


# -- the pure helpers -------------------------------------------------------------------------


@pytest.mark.parametrize(("last", "scanned", "done", "expected"), [
    (0, [1, 2, 3], {1, 2, 3}, 3),
    (0, [1, 2, 3], {1, 3}, 1),
    (5, [6, 7], set(), 5),
    (5, [], set(), 5),
    (2, [4, 9], {4, 9}, 9),
])
def test_advance(last: int, scanned: list[int], done: set[int], expected: int) -> None:
    assert advance(last, scanned, done) == expected


@pytest.mark.parametrize(("sizes", "max_count", "max_bytes", "expected"), [
    ([10, 10, 10], 2, 100, [[1, 2], [3]]),
    ([60, 60, 10], 10, 100, [[1], [2, 3]]),
    ([500, 1], 10, 100, [[1], [2]]),
    ([], 10, 100, []),
])
def test_batches(sizes: list[int], max_count: int, max_bytes: int, expected: list[list[int]]) -> None:
    by_uid = {i + 1: s for i, s in enumerate(sizes)}
    assert list(batches(list(by_uid), by_uid, max_count, max_bytes)) == expected


@pytest.mark.parametrize(("rng", "expected"), [
    (0.0, [0.5, 1.0, 2.0, 4.0, 4.0]),
    (1.0, [1.0, 2.0, 4.0, 8.0, 8.0]),
])
def test_backoff_is_capped_exponential_with_jitter(rng: float, expected: list[float]) -> None:
    backoff = Backoff(1.0, 8.0, rng=lambda: rng)
    assert [backoff.next() for _ in expected] == expected
    backoff.reset()
    assert backoff.next() == expected[0]


@pytest.mark.parametrize(("raw", "expected"), [
    (b"Delivered-To: kundebetjening+abc@x.example\r\nTo: a@b\r\n\r\nbody", ("kundebetjening+abc@x.example",)),
    (b"Delivered-To: first@x.example\nDelivered-To: second@x.example\n\nbody", ("first@x.example",)),
    (b"To: a@b\r\n\r\nDelivered-To: body@x.example\r\n", ()),
    (b"Delivered-To: not an address\r\n\r\n", ()),
])
def test_envelope_to_is_the_topmost_delivered_to(raw: bytes, expected: tuple[str, ...]) -> None:
    assert envelope_to_of(raw) == expected


async def test_lease_one_holder_at_a_time(settings: Settings) -> None:
    clock = FrozenClock()
    async with open_app(settings, clock=clock) as app:
        a = Lease(app.engine, "imap:x", "node-a", clock.now, ttl_s=30)
        b = Lease(app.engine, "imap:x", "node-b", clock.now, ttl_s=30)
        assert await a.acquire()
        assert not await b.acquire()
        assert await a.acquire()  # renewal
        clock.advance(seconds=31)  # node A died: its lease runs out
        assert await b.acquire()
        assert not await a.acquire()
        with pytest.raises(LeaseLost):
            await a.renew()
        await b.release()
        assert await a.acquire()


def _cert_error() -> ssl.SSLCertVerificationError:
    exc = ssl.SSLCertVerificationError(1, "certificate verify failed")
    exc.verify_message = "self-signed certificate"
    return exc


@pytest.mark.parametrize(("exc", "connecting", "expected"), [
    (LoginError("b'[AUTHENTICATIONFAILED] Authentication failed.'"), False,
     "login refused by imap.example.dk:993 for kb@x.example: [AUTHENTICATIONFAILED]"),
    (_cert_error(), True, "TLS failure with imap.example.dk:993: certificate not trusted (self-signed certificate)"),
    (socket.gaierror(-2, "Name or service not known"), True, "cannot connect to imap.example.dk:993: host name not found"),
    (ConnectionRefusedError(111, "Connection refused"), True, "cannot connect to imap.example.dk:993: Connection refused"),
    (TimeoutError(), False, "connection lost to imap.example.dk:993: no answer in time"),
    (imaplib.IMAP4.abort("socket error: EOF"), False, "connection lost to imap.example.dk:993: socket error: EOF"),
    (imaplib.IMAP4.error("Unexpected IDLE response: b'* BYE Server shutting down.'"), False,
     "connection lost to imap.example.dk:993: the server said goodbye"),
    (imaplib.IMAP4.error("create failed: [NOPERM] Permission denied"), False,
     "imap.example.dk:993 refused a command: create failed: [NOPERM]"),
], ids=["login", "certificate", "dns", "refused", "timeout", "eof", "bye", "refused-command"])
def test_library_errors_become_plain_words(exc: Exception, connecting: bool, expected: str) -> None:
    acct = ImapAccount(name="kb", host="imap.example.dk", username="kb@x.example")
    problem = translate(exc, acct, connecting)
    assert str(problem).startswith(expected), str(problem)
    assert "secret" not in str(problem)


@pytest.mark.parametrize(("overrides", "message"), [
    ({"move_to": "INBOX"}, "cannot also be where mail is moved to"),
    ({"failed_folder": "INBOX"}, "cannot also be where mail is moved to"),
    ({"folder": "Oversized"}, "cannot also be where mail is moved to"),
])
def test_config_mistakes_are_refused(overrides: dict[str, Any], message: str) -> None:
    acct = ImapAccount(**{"name": "kb", "host": "127.0.0.1", "username": "kb", **overrides})
    with pytest.raises(ConfigError, match=message):
        check_config([acct])


def test_account_names_must_differ() -> None:
    acct = ImapAccount(name="kb", host="127.0.0.1", username="kb")
    check_config([acct, dataclasses.replace(acct, name="other")])
    with pytest.raises(ConfigError, match="its own name"):
        check_config([acct, acct])


async def test_loop_without_accounts_waits_for_stop(app: App) -> None:
    stop = asyncio.Event()
    task = asyncio.create_task(imap_loop(app.imap_intake, stop))
    await asyncio.sleep(0.1)
    assert not task.done()
    stop.set()
    await asyncio.wait_for(task, 1)


@pytest.mark.parametrize("value", [1, 2**31 - 1, 2**31, 2**32 - 1], ids=["1", "int32-max", "2^31", "uint32-max"])
async def test_folder_state_holds_every_imap_number(settings: Settings, value: int) -> None:
    # UIDVALIDITY and UIDs are unsigned 32-bit: a server may well hand out 2^32 - 1.
    async with open_app(settings, clock=FrozenClock()) as app:
        state = FolderState(uidvalidity=value, last_uid=value, failures={str(value): 2})
        await save_state(app.engine, "kb", "INBOX", state, app.clock.now())
        assert await load_state(app.engine, "kb", "INBOX") == state


# -- items 91, 95, 97 -------------------------------------------------------------------------


def _flags(dovecot: Dovecot, username: str, name: str = "INBOX") -> dict[int, tuple[bytes, ...]]:
    """The flags of every message in a folder, seen over a connection of our own (EXAMINE, so
    looking changes nothing)."""
    with dovecot.client(username) as c:
        c.select_folder(name, readonly=True)
        return {int(uid): tuple(flags) for uid, flags in c.get_flags(c.search("ALL")).items()}


async def test_item91_crash_between_fetch_and_commit_leaves_the_mail_unseen_then_one_case(
        dovecot: Dovecot, user: str, tmp_path: Path) -> None:
    fetched: list[bytes] = []

    class CrashBeforeCommit(AccountReader):
        """Dies like a killed process: the batch is fetched, the inbox commit never happens."""

        async def commit(self, mails: list[IncomingMail]) -> list[Accepted]:
            fetched.extend(m.raw for m in mails)
            raise asyncio.CancelledError

    raws = mails(3, "crash")
    acct = account(dovecot, user)
    settings = imap_settings(tmp_path, acct)
    dovecot.append(user, raws)
    assert not any(b"\\Seen" in f for f in (await asyncio.to_thread(_flags, dovecot, user)).values())
    async with open_app(settings, clock=SystemClock()) as app:
        await asyncio.wait_for(imap_loop(app.imap_intake, asyncio.Event(), CrashBeforeCommit), timeout=30)
        assert await inbound_count(app) == 0, "the commit never happened"
    # the whole of each message was fetched before the crash (the server stores lines with CRLF)
    assert sorted(fetched) == sorted(r.replace(b"\n", b"\r\n") for r in raws)
    flags = await asyncio.to_thread(_flags, dovecot, user)
    assert len(flags) == 3, "still in INBOX"
    assert not [uid for uid, f in flags.items() if b"\\Seen" in f], f"the fetch must be BODY.PEEK[]: {flags}"
    assert await folder(dovecot, user, "Processed") == 0

    async with running(settings) as app:  # the restart
        await eventually(lambda: _equals(folder(dovecot, user, "Processed"), 3), timeout=30)
        await eventually(lambda: _equals(case_count(app), 3), timeout=30)
        await asyncio.sleep(0.5)  # nothing more may come
        assert await case_count(app) == 3
        assert await inbound_count(app) == 3
        async with app.sessions() as session:
            titles = sorted(c["subject"] for c in await run_in(session, queries.list_cases, "all"))
    assert titles == sorted(f"Spørgsmål crash{i}" for i in range(3)), "one case per mail"
    assert await folder(dovecot, user, "INBOX") == 0


@pytest.mark.parametrize("stage", ["search", "sizes"], ids=["after-search", "after-size-fetch"])
async def test_item95_message_expunged_between_search_and_fetch_is_skipped(
        dovecot: Dovecot, user: str, tmp_path: Path, caplog: pytest.LogCaptureFixture, stage: str) -> None:
    """Another client expunges one of the found UIDs before the FETCH RFC822.SIZE ("search") or
    between it and the FETCH BODY.PEEK[] ("sizes")."""
    caplog.set_level(logging.INFO, logger="gateway.imap")
    expunged: list[int] = []

    class ExpungedMeanwhile(Mailbox):
        def _other_client_expunges(self, uids: list[int]) -> None:
            if expunged or len(uids) < 3:
                return
            victim = uids[1]
            with dovecot.client(user) as other:  # a second connection, as another mail client
                other.select_folder("INBOX")
                other.delete_messages([victim])
                other.uid_expunge([victim])
            expunged.append(victim)

        def search(self, criteria: list[str]) -> list[int]:
            uids = super().search(criteria)
            if stage == "search":
                self._other_client_expunges(uids)
            return uids

        def sizes(self, uids: Sequence[int]) -> dict[int, int]:
            found = super().sizes(uids)
            if stage == "sizes":
                self._other_client_expunges(sorted(found))
            return found

    class Reader(AccountReader):
        def __init__(self, intake: ImapIntake, acct: ImapAccount, holder: str, *rest: Any) -> None:
            super().__init__(intake, acct, holder, *rest)
            self.box = ExpungedMeanwhile(acct)

    dovecot.append(user, mails(3, "x"))
    acct = account(dovecot, user)
    async with running(imap_settings(tmp_path, acct), Reader) as app:
        await eventually(lambda: _equals(folder(dovecot, user, "Processed"), 2), timeout=30)
        await eventually(lambda: _equals(case_count(app), 2), timeout=30)
        await asyncio.sleep(0.5)
        assert await inbound_count(app) == 2
        async with app.sessions() as session:
            titles = sorted(c["subject"] for c in await run_in(session, queries.list_cases, "all"))
        state = await load_state(app.engine, acct.name, "INBOX")
    assert len(expunged) == 1, "the other client's expunge must have happened"
    assert titles == ["Spørgsmål x0", "Spørgsmål x2"]
    assert await folder(dovecot, user, "INBOX") == 0
    assert await folder(dovecot, user, "Failed") == 0
    assert state.failures == {}
    problems = [r for r in caplog.records if r.name == "gateway.imap" and r.levelno >= logging.WARNING]
    assert not problems, [(r.getMessage(), getattr(r, "problem", None)) for r in problems]
    assert len(events(caplog, "imap.connected", acct.name)) == 1, "no reconnect: the round went through"


class HostileImap:
    """A fake IMAP server on 127.0.0.1 (item 97). It greets, takes any login, has one message in
    INBOX and says it is small (RFC822.SIZE `claimed`); the FETCH BODY.PEEK[] is answered with a
    literal `{announced}` whose bytes are trickled, one every `pace_s`, and never finished."""

    def __init__(self, announced: int, claimed: int, pace_s: float) -> None:
        self.announced, self.claimed, self.pace_s = announced, claimed, pace_s
        self.connections = 0
        self.body_fetches: list[float] = []   # time.time() of each answer that starts the literal
        self.trickled: list[int] = []         # bytes of the literal sent, per answer
        self.port = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()

    async def __aenter__(self) -> HostileImap:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for writer in list(self._writers):
            writer.close()  # ends every trickle and read loop at its next step
        tasks = list(self._tasks)
        if tasks:
            await asyncio.wait(tasks, timeout=5)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._writers.add(writer)
        self.connections += 1
        try:
            writer.write(b"* OK [CAPABILITY IMAP4rev1 AUTH=PLAIN] hostile ready\r\n")
            while line := await reader.readline():
                tag, _, command = line.decode("ascii", "replace").rstrip("\r\n").partition(" ")
                verb = command.upper()
                untagged = ""
                if verb.startswith("CAPABILITY"):
                    untagged = "* CAPABILITY IMAP4rev1 AUTH=PLAIN\r\n"
                elif verb.startswith("LIST"):
                    untagged = '* LIST (\\HasNoChildren) "/" INBOX\r\n' if "INBOX" in verb else ""
                elif verb.startswith(("SELECT", "EXAMINE")):
                    untagged = ("* FLAGS (\\Seen \\Deleted)\r\n* OK [PERMANENTFLAGS (\\Seen \\Deleted \\*)] ok\r\n"
                                "* 1 EXISTS\r\n* 0 RECENT\r\n* OK [UIDVALIDITY 7] ok\r\n* OK [UIDNEXT 2] ok\r\n")
                elif verb.startswith("UID SEARCH"):
                    untagged = "* SEARCH 1\r\n"
                elif verb.startswith("UID FETCH") and "RFC822.SIZE" in verb:
                    untagged = f"* 1 FETCH (UID 1 RFC822.SIZE {self.claimed})\r\n"
                elif verb.startswith("UID FETCH") and "BODY" in verb:
                    writer.write(f"* 1 FETCH (UID 1 BODY[] {{{self.announced}}}\r\n".encode())
                    self.body_fetches.append(time.time())
                    self.trickled.append(0)
                    await self._trickle(reader, writer)
                    return
                elif verb.startswith("LOGOUT"):
                    writer.write(f"* BYE bye\r\n{tag} OK done\r\n".encode())
                    await writer.drain()
                    return
                writer.write(f"{untagged}{tag} OK done\r\n".encode())
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()
            self._writers.discard(writer)
            self._tasks.discard(task)

    async def _trickle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while not reader.at_eof() and not writer.is_closing():
            writer.write(b"x")
            await writer.drain()
            self.trickled[-1] += 1
            await asyncio.sleep(self.pace_s)


@pytest.mark.parametrize(("announced", "claimed", "expected"), [
    (2_000_000_000, 1_000, "literal of 2000000000 bytes"),  # the size it claimed was a lie
    (5_000, 5_000, "too slowly"),  # within the limit, but one byte every 50 ms would take 250 s
], ids=["huge-literal", "trickled-literal"])
async def test_item97_hostile_server_with_a_huge_literal_is_bounded(
        dovecot: Dovecot, user: str, tmp_path: Path, caplog: pytest.LogCaptureFixture,
        announced: int, claimed: int, expected: str) -> None:
    caplog.set_level(logging.INFO, logger="gateway.imap")
    timeout_s = 3.0  # the hostile account's socket timeout (the default is SOCKET_TIMEOUT_S)

    class ShortTimeout(AccountReader):
        def __init__(self, intake: ImapIntake, acct: ImapAccount, holder: str, *rest: Any) -> None:
            super().__init__(intake, acct, holder, *rest)
            if acct.name == "hostile":
                self.box = Mailbox(acct, timeout_s=timeout_s)

    good = account(dovecot, user)
    dovecot.append(user, mails(3, "good"))
    tracemalloc.start()
    try:
        async with HostileImap(announced, claimed, pace_s=0.05) as server:
            hostile = ImapAccount(name="hostile", host="127.0.0.1", port=server.port, tls="none",
                                  username="x@example.test", password="y", idle=False, poll_interval_s=0.5,
                                  max_message_size=10_000)
            settings = imap_settings(tmp_path, hostile, good, initial=0.1, cap=0.5)
            async with running(settings, ShortTimeout) as app:
                await eventually(lambda: _logged(caplog, "imap.unavailable", "hostile"), timeout=60)
                await eventually(lambda: _at_least(server.body_fetches, 2), timeout=30)  # the account goes on
                await eventually(lambda: _equals(case_count(app), 3), timeout=30)
                await asyncio.to_thread(dovecot.append, user, mails(2, "later"))
                await eventually(lambda: _equals(case_count(app), 5), timeout=30)  # the good one goes on too
            _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    first = events(caplog, "imap.unavailable", "hostile")[0]
    problem: str = first.problem  # type: ignore[attr-defined]
    assert expected in problem, problem
    # bounded in time: the refusal comes within the socket timeout plus the literal's size at the
    # minimum rate, long before the literal could have been read (generous: two shared cores)
    assert first.created - server.body_fetches[0] < timeout_s + 15, first.created - server.body_fetches[0]
    assert max(server.trickled) < 1_000, "given up long before the end of the literal (1000 bytes: 50 s)"
    assert peak < 100_000_000, f"{peak} bytes at the peak: memory follows what the server announced"
    assert not events(caplog, "imap.unavailable", good.name)
    assert await folder(dovecot, user, "Processed") == 5


async def _logged(caplog: pytest.LogCaptureFixture, name: str, account_name: str) -> bool:
    return bool(events(caplog, name, account_name))


async def _at_least(items: list[float], n: int) -> bool:
    return len(items) >= n
