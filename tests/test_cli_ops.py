"""The `gateway` command as an operator and an agent meet it (issue 17, items 7, 8, 9, 13, 14):
lists a page at a time, newest first; no store made by a command that only reads; one line and
a sysexits code for every mistake; a readable case; `--version` and help. Each through the
console script's `main` in a process of its own (tests/cli_proc.py), the closed pipe through
the installed `gateway` script itself.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.app import App, open_app
from gateway.cli import build_parser
from gateway.clock import FrozenClock
from gateway.http.api import build_api
from gateway.lifecycle import assign, note, reply, set_status, share
from gateway.model import Event, Role, Status, UserKind
from store import writes
from store.inbox import IncomingMail
from store.migrate import HEAD
from store.transact import run_in
from tests.cli_proc import run_cli
from tests.conftest import ADDRESS, ROOT, build_mail, free_port
from tests.daemon_proc import DaemonProcess

ENV = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
AGENT = "anne@sa.example"
REQUESTER = "jens@kunde.example"
COLLEAGUE = "mette@kunde.example"
ON_PG = bool(os.environ.get("GATEWAY_TEST_DATABASE_URL"))
STATUSES = tuple(s.value for s in Status)
EVENTS = tuple(e.value for e in Event)
INBOX_STATES = ("pending", "processing", "done", "quarantined")
OUTBOX_STATES = ("pending", "sending", "sent", "failed", "held")


def cli(*args: str, config: Path | None = None, cwd: Path = ROOT, env: dict[str, str] | None = None
        ) -> tuple[int, str, str]:
    argv = ["--config", str(config), *args] if config else list(args)
    return run_cli(argv, {**ENV, **(env or {})}, cwd)


def one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


async def add(app: App, email: str, name: str, agent: bool = False, org: str | None = "Kunde A/S") -> None:
    async with app.sessions() as session, session.begin():
        await run_in(session, writes.add_user, email, name, None if agent else org, UserKind.PERSON,
                     Role.AGENT if agent else Role.CUSTOMER, app.clock.now())


# --- item 7: lists, newest first, a page at a time ------------------------------------------------------


async def _seven_cases(proc: DaemonProcess) -> None:
    """Seven cases a minute apart; then SAG-000002 changes, so it is the newest."""
    clock = FrozenClock()
    async with open_app(proc.settings, clock=clock, subprocess_parse=False) as app:
        await add(app, AGENT, "Anne Agent", agent=True)
        for i in range(7):
            clock.advance(minutes=1)
            await app.ingest_now(IncomingMail(build_mail(f"kunde{i}@borger.example", f"Sag {i}"), "pipe", None,
                                              (ADDRESS,)))
        clock.advance(minutes=1)
        await set_status(app.desk, "SAG-000002", "paabegyndt", AGENT)


def _all_pages(config: Path, *args: str) -> tuple[list[Any], list[str]]:
    """Follow the `more: --before X` lines; every item and every cursor seen."""
    items: list[Any] = []
    cursors: list[str] = []
    before: list[str] = []
    while True:
        rc, out, err = cli(*args, "--limit", "3", "--json", *before, config=config)
        assert rc == 0, err
        items.extend(json.loads(out))
        more = [line for line in err.splitlines() if line.startswith("more: ")]
        if not more:
            return items, cursors
        cursors.append(more[0].removeprefix("more: --before "))
        before = ["--before", cursors[-1]]


def test_lists_are_newest_first_a_page_at_a_time(tmp_path: Path) -> None:
    proc = DaemonProcess(tmp_path)
    asyncio.run(_seven_cases(proc))
    inbox, cursors = _all_pages(proc.config_path, "inbox", "list")
    assert [m["id"] for m in inbox] == [7, 6, 5, 4, 3, 2, 1] and cursors == ["5", "2"]
    outbox, _ = _all_pages(proc.config_path, "outbox", "list")
    assert [n["id"] for n in outbox] == sorted((n["id"] for n in outbox), reverse=True) and len(outbox) == 8
    cases, cursors = _all_pages(proc.config_path, "cases", "list", "--status", "all")
    assert [c["number"] for c in cases] == [f"SAG-00000{n}" for n in (2, 7, 6, 5, 4, 3, 1)] and len(cursors) == 2
    rc, out, err = cli("inbox", "list", "--state", "done", "--limit", "7", "--json", config=proc.config_path)
    assert rc == 0 and len(json.loads(out)) == 7 and "more" not in err
    for bad in (["inbox", "list", "--before", "x"], ["cases", "list", "--before", "7"],
                ["outbox", "list", "--limit", "0"]):
        rc, _, err = cli(*bad, config=proc.config_path)
        assert rc == 64 and "Traceback" not in err, (bad, err)


async def _many_mails(proc: DaemonProcess, count: int) -> None:
    async with open_app(proc.settings, subprocess_parse=False) as app:
        await app.inbox.accept_many([IncomingMail(build_mail(subject=f"Nr. {i}"), "smtp", None, (ADDRESS,))
                                     for i in range(count)], app.clock.now())


def test_a_list_says_when_there_is_more_than_the_default_page(tmp_path: Path) -> None:
    """It showed the oldest 1000 mails, and not that there were more."""
    proc = DaemonProcess(tmp_path)
    asyncio.run(_many_mails(proc, 105))
    rc, out, err = cli("inbox", "list", "--json", config=proc.config_path)
    shown = [m["id"] for m in json.loads(out)]
    assert rc == 0 and shown == list(range(105, 5, -1)) and err.strip() == "more: --before 6"


async def test_the_api_pages_cases_with_next(tmp_path: Path) -> None:
    proc = DaemonProcess(tmp_path, api={"agent_tokens": ["page-token-0123456789"]})
    await _seven_cases(proc)
    headers = {"Authorization": "Bearer page-token-0123456789"}
    async with open_app(proc.settings, subprocess_parse=False) as app, httpx.AsyncClient(
            transport=httpx.ASGITransport(app=build_api(app.http)), base_url="http://gw") as api:
        numbers, url = [], "/cases?status=all&limit=3"
        while url:
            answer = await api.get(url, headers=headers)
            page = answer.json()
            numbers.extend(c["number"] for c in page["items"])
            url = f"/cases?status=all&limit=3&before={page['next']}" if page["next"] else ""
            assert answer.headers.get("link") == (f'<{url}>; rel="next"' if url else None)  # the same, as a link
        assert numbers == [f"SAG-00000{n}" for n in (2, 7, 6, 5, 4, 3, 1)]
        for query in ("limit=0", "limit=1001", "limit=x", "before=nonsense", "before=99999999999999999-1"):
            r = await api.get(f"/cases?{query}", headers=headers)
            assert r.status_code == 422, (query, r.text)


async def test_cases_changed_in_the_same_instant_are_each_listed_once(app: App) -> None:
    """A worker's transaction of several mails gives their cases one `updated_at`: the cursor
    carries the id too, so a page boundary between them skips and repeats none."""
    from store import queries

    for i in range(5):  # the frozen clock does not move: five cases, one instant
        await app.ingest_now(IncomingMail(build_mail(f"samtidig{i}@borger.example"), "pipe", None, (ADDRESS,)))
    seen: list[str] = []
    before = None
    async with app.sessions() as session:
        while True:
            page = await run_in(session, queries.cases_page, "all", None, 2, before)
            seen.extend(c["number"] for c in page.items)
            if page.next is None:
                break
            before = queries.parse_case_cursor(page.next)
    assert seen == [f"SAG-00000{n}" for n in (5, 4, 3, 2, 1)]


# --- item 8: only `db upgrade` and `run` make a store ---------------------------------------------------


READS = (["cases", "list"], ["cases", "show", "SAG-000001"], ["inbox", "list"], ["outbox", "list"],
         ["users", "list"], ["maintenance", "--dry-run"], ["reprocess", "--quarantined"])


def test_outside_the_checkout_without_a_config_no_command_makes_a_store(tmp_path: Path) -> None:
    mail = tmp_path / "mail.eml"
    mail.write_bytes(build_mail())
    here = tmp_path / "elsewhere"
    here.mkdir()
    for args in (*READS, ["ingest", str(mail)], ["users", "add", "a@b.example", "--name", "A"]):
        rc, _, err = cli(*args, cwd=here)
        assert rc == 78 and one_line(err) == (f"gateway: no store at {here}/var/gateway.db (check database.url, "
                                              "or create it with `gateway db upgrade`)"), (args, err)
    assert list(here.iterdir()) == []


@pytest.mark.sqlite_only
def test_a_mistyped_database_url_is_refused_not_created(tmp_path: Path) -> None:
    proc = DaemonProcess(tmp_path, database={"url": f"sqlite+aiosqlite:///{tmp_path}/gatewya.db"})
    for args in READS:
        rc, _, err = cli(*args, config=proc.config_path)
        assert rc == 78 and f"no store at {tmp_path}/gatewya.db" in one_line(err), (args, err)
    assert not (tmp_path / "gatewya.db").exists() and not (tmp_path / "blobs").exists()
    (tmp_path / "gatewya.db").touch()  # a file, but no schema in it
    rc, _, err = cli("cases", "list", config=proc.config_path)
    assert rc == 78 and "has no schema" in one_line(err)


@pytest.mark.sqlite_only
def test_an_older_schema_is_refused_until_db_upgrade(tmp_path: Path) -> None:
    from store.engine import make_engine
    from store.migrate import upgrade

    path = tmp_path / "old.db"

    async def at_0005() -> None:
        engine = make_engine(f"sqlite+aiosqlite:///{path}")
        try:
            await upgrade(engine, "0005")
        finally:
            await engine.dispose()

    asyncio.run(at_0005())
    proc = DaemonProcess(tmp_path, database={"url": f"sqlite+aiosqlite:///{path}"})
    rc, _, err = cli("cases", "list", config=proc.config_path)
    assert rc == 78 and one_line(err) == (f"gateway: the store at {path} is at schema 0005, this gateway needs "
                                          f"{HEAD}: run `gateway db upgrade`")
    rc, out, err = cli("db", "upgrade", config=proc.config_path)
    assert rc == 0 and HEAD in out, err
    assert cli("cases", "list", config=proc.config_path)[0] == 0


@pytest.mark.skipif(not ON_PG, reason="PostgreSQL half: set GATEWAY_TEST_DATABASE_URL")
def test_a_missing_postgresql_database_is_refused(tmp_path: Path) -> None:
    from sqlalchemy.engine import make_url

    url = make_url(os.environ["GATEWAY_TEST_DATABASE_URL"]).set(database="gw_no_such_database")
    proc = DaemonProcess(tmp_path, database={"url": url.render_as_string(hide_password=False)})
    rc, _, err = cli("cases", "list", config=proc.config_path)
    assert rc == 78 and "no database" in one_line(err) and "gw_no_such_database" in err


@pytest.mark.sqlite_only
def test_run_creates_the_store_and_says_so(tmp_path: Path) -> None:
    proc = DaemonProcess(tmp_path, database={"url": f"sqlite+aiosqlite:///{tmp_path}/new/gateway.db"})
    try:
        proc.start()
        assert proc.stop() == 0
    finally:
        proc.kill()
    [migrated] = proc.events("store.migrated")
    assert (migrated["from_revision"], migrated["to_revision"]) == ("none", HEAD)


# --- item 9: one line and a sysexits code ----------------------------------------------------------------


@pytest.fixture
def store(tmp_path: Path) -> DaemonProcess:
    proc = DaemonProcess(tmp_path)

    async def one_case() -> None:
        async with open_app(proc.settings, subprocess_parse=False) as app:
            await add(app, AGENT, "Anne Agent", agent=True)
            await app.ingest_now(IncomingMail(build_mail(REQUESTER), "pipe", None, (ADDRESS,)))

    asyncio.run(one_case())
    return proc


@pytest.mark.parametrize(("args", "env", "code", "says"), [
    (["cases", "status", "SAG-000001", "bogus", "--as", AGENT], {}, 64, "'afventer_internt', 'afventer_rekvirent'"),
    (["render", "bogus"], {}, 64, "'receipt', 'reply', 'status'"),
    (["cases", "list", "--status", "open"], {}, 64, "'active', 'done', 'all', 'registreret'"),
    (["inbox", "list", "--state", "waiting"], {}, 64, "'pending', 'processing', 'done', 'quarantined'"),
    (["outbox", "list", "--state", "lost"], {}, 64, "'pending', 'sending', 'sent', 'failed', 'held'"),
    (["cases", "list", "--user", "not-an-address"], {}, 64, "gateway: usage: --user: not an e-mail address"),
    (["cases", "list", "--user", "nobody@kunde.example"], {}, 64, "gateway: usage: --user: no user nobody@"),
    (["ingest", "/no/such/mail.eml"], {}, 66, "gateway: cannot read /no/such/mail.eml: No such file or directory"),
    (["cases", "list"], {"GATEWAY_SMPT__PORT": "25"}, 78, "unknown key smpt.port (from the environment variable"),
    (["cases", "list"], {"GATEWAY_DATABASE__URL": "mysql://db/gw"}, 78, "database.url: unsupported 'mysql'"),
    (["cases", "list"], {"GATEWAY_DATABASE__URL": "sqlite:///x.db"}, 78, "database.url: unsupported 'sqlite'"),
    (["cases", "list"], {"GATEWAY_DAEMON__LOG_LEVEL": "LOUD"}, 78, "daemon.log_level: must be one of DEBUG"),
], ids=lambda v: " ".join(v) if isinstance(v, list) else None)
def test_a_mistake_is_one_line_and_a_sysexits_code(store: DaemonProcess, args: list[str], env: dict[str, str],
                                                   code: int, says: str) -> None:
    rc, out, err = cli(*args, config=store.config_path, env=env)
    assert (rc, out) == (code, ""), err
    assert "Traceback" not in err and says in err.splitlines()[-1], err
    if code != 64 or "usage:" in says:  # argparse shows its usage line first; the others say one line
        one_line(err)


@pytest.mark.sqlite_only
def test_a_locked_store_is_one_line_and_75(store: DaemonProcess) -> None:
    """The store's driver error reaches the command translated at the store's edge (no
    fallback for driver errors in the CLI): one line, 75, try again."""
    import sqlite3

    lock = sqlite3.connect(str(Path(store.settings.database.url.split("///", 1)[1])), isolation_level=None)
    lock.execute("BEGIN EXCLUSIVE")
    try:
        rc, out, err = cli("users", "add", "ny@kunde.example", "--name", "Ny", config=store.config_path,
                           env={"GATEWAY_DATABASE__BUSY_TIMEOUT_MS": "100"})
    finally:
        lock.execute("ROLLBACK")
        lock.close()
    assert (rc, out) == (75, ""), err
    assert one_line(err) == "gateway: temporary failure, try again: the store does not answer (OperationalError)"


def _taken() -> tuple[socket.socket, int]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    return sock, sock.getsockname()[1]


@pytest.mark.parametrize("which", ["smtp", "api"])
def test_run_with_its_port_taken_names_the_address(tmp_path: Path, which: str) -> None:
    sock, port = _taken()
    with sock:
        sections: dict[str, Any] = {"api": {"enabled": True, "port": port if which == "api" else free_port()}}
        if which == "smtp":
            sections["smtp"] = {"port": port}
        proc = DaemonProcess(tmp_path, **sections)
        rc, _, err = cli("run", config=proc.config_path, cwd=tmp_path)
    last = err.strip().splitlines()[-1]
    assert rc == 71 and "Traceback" not in err, err
    assert last.startswith(f"gateway: {which}: cannot listen on 127.0.0.1:{port}"), err


def test_a_closed_pipe_is_silent(store: DaemonProcess) -> None:
    """`gateway cases list | head`: the reader is gone before the first line is written."""
    script = Path(sys.executable).parent / "gateway"
    with subprocess.Popen([str(script), "--config", str(store.config_path), "inbox", "list", "--json"],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=ENV) as child:
        assert child.stdout is not None and child.stderr is not None
        child.stdout.close()
        err = child.stderr.read()
        rc = child.wait(60)
    assert err == b"" and rc == 141


# --- item 13: a readable case ---------------------------------------------------------------------------


async def _a_full_case(proc: DaemonProcess) -> None:
    clock = FrozenClock()
    async with open_app(proc.settings, clock=clock, subprocess_parse=False) as app:
        await add(app, AGENT, "Anne Agent", agent=True)
        await add(app, REQUESTER, "Jens Jensen")
        await add(app, COLLEAGUE, "Mette Madsen")
        raw = build_mail(REQUESTER, "Min faktura", "Hvor er min faktura?",
                         attachments=[("faktura.pdf", b"%PDF" * 300, "application/pdf")])
        await app.ingest_now(IncomingMail(raw, "pipe", None, (ADDRESS,)))
        for step in (lambda: assign(app.desk, "SAG-000001", AGENT, AGENT),
                     lambda: share(app.desk, "SAG-000001", COLLEAGUE, REQUESTER),
                     lambda: note(app.desk, "SAG-000001", "Kunden ringede \x1b[2J i går.", AGENT),
                     lambda: reply(app.desk, "SAG-000001", "Den er sendt.", AGENT, []),
                     lambda: set_status(app.desk, "SAG-000001", "afventer_rekvirent", AGENT, "venter på svar")):
            clock.advance(minutes=5)
            await step()


def test_cases_show_prints_a_readable_case(tmp_path: Path) -> None:
    proc = DaemonProcess(tmp_path)
    asyncio.run(_a_full_case(proc))
    rc, out, err = cli("cases", "show", "SAG-000001", config=proc.config_path)
    assert rc == 0, err
    text = out.splitlines()
    assert text[0] == "SAG-000001  Min faktura"
    for expected in ("  Status      Afventer rekvirent (afventer_rekvirent)",
                     "  Requester   Jens Jensen <jens@kunde.example>", "  Assignee    Anne Agent <anne@sa.example>",
                     "Parties (1)", "  Mette Madsen <mette@kunde.example>", "Comments (3)",
                     "      Hvor er min faktura?", "      Den er sendt.", "History"):
        assert expected in text, (expected, out)
    assert "Attachments (1)  fetch one: gateway cases attachment SAG-000001 ID --out FILE" in text
    comments = [line for line in text if line.startswith("  [")]
    assert comments[0].endswith("jens@kunde.example  by mail") and "INTERNAL NOTE" in comments[1]
    assert all(" UTC  " in line for line in comments)
    assert "Kunden ringede \\x1b[2J i går." in out and "\x1b" not in out  # a terminal's escape, shown
    [row] = [line for line in text if line.strip().startswith("1  faktura.pdf")]
    assert "1.2 KB" in row and "(comment 1)" in row
    assert any("anne@sa.example" in line and "tildelt -> afventer_rekvirent  (venter på svar)" in line
               for line in text)


# --- item 14: --version, help, a duplicate's case --------------------------------------------------------


def test_version_and_help() -> None:
    rc, out, _ = cli("--version")
    assert rc == 0 and out.strip() == "gateway 0.1.0"
    rc, out, _ = cli("--help")
    assert rc == 0 and all(word in out for word in (*STATUSES, *EVENTS))
    for args, words in ((["inbox", "list"], INBOX_STATES), (["outbox", "list"], OUTBOX_STATES),
                        (["cases", "status"], STATUSES), (["render"], EVENTS)):
        rc, out, _ = cli(*args, "--help")
        assert rc == 0 and all(word in out for word in words), (args, out)


def test_every_subcommand_has_a_one_line_description() -> None:
    missing = []

    def walk(parser: Any, path: str) -> None:
        for action in parser._actions:
            if action.__class__.__name__ != "_SubParsersAction":
                continue
            described = {a.dest: a.help for a in action._choices_actions}
            for name, sub in action.choices.items():
                if not described.get(name) or "\n" in described[name]:
                    missing.append(f"{path} {name}".strip())
                walk(sub, f"{path} {name}")

    walk(build_parser(), "")
    assert not missing, missing


def test_ingest_of_a_duplicate_names_its_case(tmp_path: Path) -> None:
    proc = DaemonProcess(tmp_path)
    mail = tmp_path / "mail.eml"
    mail.write_bytes(build_mail(REQUESTER))
    first = json.loads(cli("ingest", str(mail), "--json", config=proc.config_path)[1])
    rc, out, err = cli("ingest", str(mail), "--json", config=proc.config_path)
    again = json.loads(out)
    assert rc == 0 and first["case"] == "SAG-000001", err
    assert again == {"action": "duplicate", "case": "SAG-000001", "inbound_id": first["inbound_id"],
                     "reason": f"same mail as inbound {first['inbound_id']}, case SAG-000001"}


async def test_on_postgresql_a_mails_bytes_and_a_comments_texts_are_compressed_with_lz4(app: Any) -> None:
    """Migration 0012 (issue 23): pglz was 55% of the inbox writer's backend CPU; on SQLite, and
    on a PostgreSQL built without lz4, nothing changes."""
    from sqlalchemy import text

    if app.engine.dialect.name != "postgresql":
        pytest.skip("a PostgreSQL column setting")
    async with app.engine.connect() as conn:
        offered = (await conn.execute(text(
            "SELECT enumvals FROM pg_settings WHERE name = 'default_toast_compression'"))).scalar()
        if "lz4" not in (offered or []):
            pytest.skip("this PostgreSQL was built without lz4")
        rows = (await conn.execute(text(
            "SELECT c.relname, a.attname, a.attcompression FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid "
            "WHERE (c.relname, a.attname) IN (('inbound_raw', 'raw'), ('comment', 'visible_text'), "
            "('comment', 'full_text'), ('comment', 'html')) ORDER BY 1, 2"))).all()
    assert [(t, c, m.decode() if isinstance(m, bytes) else m) for t, c, m in rows] == [("comment", "full_text", "l"), ("comment", "html", "l"),
                                                   ("comment", "visible_text", "l"), ("inbound_raw", "raw", "l")]
