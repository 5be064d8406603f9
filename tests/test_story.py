"""The whole story through the real daemon (`gateway run` as a child process), the real CLI
(`gateway cases …` as child processes) and a local SMTP sink that catches every notification.

Each step is checked twice: in the store (`gateway cases show --json`) and in the mails the
daemon sent, parsed back (To, Subject with the case tag, Message-ID, References).
"""

from __future__ import annotations

import asyncio
import email
import email.policy
import json
import os
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import aiosmtplib
import httpx
import pytest
from aiosmtpd.smtp import SMTP, Envelope, Session

from store import queries
from store.engine import make_engine, resolve_url, session_factory
from store.transact import run_in
from tests.cli_proc import run_cli
from tests.conftest import ADDRESS, ROOT, build_mail, free_port
from tests.daemon_proc import DaemonProcess

REQUESTER = "jens@kunde.example"
COLLEAGUE = "mette@kunde.example"
OUTSIDER = "ole@andet.example"
MAILBOX = "post@kunde.example"
AGENT = "anne@sa.example"
ORG = "Kunde A/S"
PORTAL = "https://serviceportal.statens-adm.example"


# --- the SMTP sink ---------------------------------------------------------------------------------


class Sink:
    """An aiosmtpd handler that keeps every message it is given, parsed."""

    def __init__(self) -> None:
        self.messages: list[EmailMessage] = []
        self.arrived = asyncio.Event()

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        raw = envelope.original_content or envelope.content
        assert isinstance(raw, bytes)
        message = email.message_from_bytes(raw, policy=email.policy.default)
        assert isinstance(message, EmailMessage)
        self.messages.append(message)
        self.arrived.set()
        return "250 2.0.0 kept"

    async def wait_for(self, count: int, timeout: float = 30.0) -> list[EmailMessage]:
        """Wait until `count` messages have arrived in all; returns the new ones since `count`-n."""
        deadline = asyncio.get_running_loop().time() + timeout
        while len(self.messages) < count:
            self.arrived.clear()
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0:
                raise AssertionError(f"expected {count} mails, got {len(self.messages)}: "
                                     f"{[(m['To'], m['Subject']) for m in self.messages]}")
            try:
                await asyncio.wait_for(self.arrived.wait(), left)
            except TimeoutError:
                pass
        return self.messages


@pytest.fixture
async def sink() -> AsyncIterator[tuple[Sink, int]]:
    handler = Sink()
    port = free_port()
    server = await asyncio.get_running_loop().create_server(
        lambda: SMTP(handler, hostname="sink.test", enable_SMTPUTF8=True), "127.0.0.1", port)
    try:
        yield handler, port
    finally:
        server.close()
        await server.wait_closed()


@pytest.fixture
async def daemon(tmp_path: Path, sink: tuple[Sink, int]) -> AsyncIterator[DaemonProcess]:
    proc = DaemonProcess(tmp_path, outbound={"transport": f"smtp://127.0.0.1:{sink[1]}", "backoff_initial_s": 1.0},
                         api={"enabled": True, "port": free_port()},
                         portal={"url": PORTAL})
    await asyncio.to_thread(proc.start)
    try:
        yield proc
    finally:
        rc = await asyncio.to_thread(proc.stop)
        assert rc == 0, proc.tail()


# --- helpers -------------------------------------------------------------------------------------------


async def gateway(proc: DaemonProcess, *args: str, ok: bool = True) -> tuple[int, str, str]:
    """Run the `gateway` CLI against the daemon's configuration (without blocking the sink)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    rc, out, err = await asyncio.to_thread(run_cli, ["--config", str(proc.config_path), *args], env, ROOT)
    if ok:
        assert rc == 0, f"gateway {' '.join(args)} → {rc}\n{err}"
    return rc, out, err


async def show(proc: DaemonProcess, number: str) -> dict[str, Any]:
    _, out, _ = await gateway(proc, "cases", "show", number, "--json")
    return json.loads(out)  # type: ignore[no-any-return]


async def users(proc: DaemonProcess) -> None:
    for address, name, extra in ((REQUESTER, "Jens Jensen", ["--org", ORG]),
                                 (COLLEAGUE, "Mette Madsen", ["--org", ORG]),
                                 (OUTSIDER, "Ole Olsen", ["--org", "Andet ApS"]),
                                 (MAILBOX, "Kunde A/S Fællespostkasse", ["--org", ORG, "--shared-mailbox"]),
                                 (AGENT, "Anne Agent", ["--agent"])):
        await gateway(proc, "users", "add", address, "--name", name, *extra)


async def send(proc: DaemonProcess, raw: bytes, sender: str, recipient: str = ADDRESS) -> None:
    await aiosmtplib.send(raw, sender=sender, recipients=[recipient], hostname="127.0.0.1", port=proc.smtp_port)


async def answer(proc: DaemonProcess, notice: EmailMessage, sender: str, text: str) -> str:
    """Reply to a notification as a mail client does: to its Reply-To, In-Reply-To its Message-ID."""
    reply_to = notice["Reply-To"].addresses[0].addr_spec
    raw = build_mail(sender, f"SV: {notice['Subject']}", text, to=reply_to, in_reply_to=notice["Message-ID"])
    await send(proc, raw, sender, reply_to)
    return reply_to


async def until(proc: DaemonProcess, number: str, check: Any, timeout: float = 30.0) -> dict[str, Any]:
    """Poll the store until `check(case)` holds; then the case as `gateway cases show --json` sees it."""
    settings = proc.settings
    engine = make_engine(resolve_url(settings.database.url, settings.base_dir))
    deadline = asyncio.get_running_loop().time() + timeout
    try:
        while True:
            async with session_factory(engine)() as session:
                case = await run_in(session, queries.case_by_number, number)
                if case is not None and check(await run_in(session, queries.case_detail, number)):
                    break
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(f"{number} never reached the expected state:\n{proc.tail()}")
            await asyncio.sleep(0.1)
    finally:
        await engine.dispose()
    shown = await show(proc, number)
    assert check(shown)
    return shown


async def who_changed_last(proc: DaemonProcess, number: str) -> str | None:
    """The address of the user recorded on the newest history row (the mail path labels it "mail")."""
    rows = await proc.rows("SELECT u.email FROM status_change s JOIN support_case c ON c.id = s.case_id "
                           "LEFT JOIN app_user u ON u.id = s.by_id WHERE c.number = :n ORDER BY s.id DESC LIMIT 1",
                           n=number)
    return rows[0][0] if rows else None


def text_of(message: EmailMessage) -> str:
    part = message.get_body(preferencelist=("plain",))
    assert part is not None
    return str(part.get_content())  # type: ignore[attr-defined]


def check_notice(message: EmailMessage, to: str, number: str, subject_has: str, thread: str | None = None) -> None:
    assert message["To"].addresses[0].addr_spec == to
    assert message["Subject"].startswith(f"[{number}]") and subject_has in message["Subject"], message["Subject"]
    assert message["Message-ID"].endswith("@gateway.statens-adm.example>")
    assert message["Auto-Submitted"] in ("auto-generated", "auto-replied")  # receipts answer a mail
    assert f"{PORTAL}/sager/{number}" in text_of(message)
    if thread is not None:
        assert thread in str(message["References"]), (thread, message["References"])


# --- the story ----------------------------------------------------------------------------------------


async def test_full_story(daemon: DaemonProcess, sink: tuple[Sink, int]) -> None:
    mails, _ = sink
    await users(daemon)

    # 1. a mail in → case registreret, receipt to the requester
    first_id = "<story-1@kunde.example>"
    await send(daemon, build_mail(REQUESTER, "Min faktura er forkert", "Beløbet er for højt.", message_id=first_id),
               REQUESTER)
    case = await until(daemon, "SAG-000001", lambda c: c["status"] == "registreret")
    [receipt] = await mails.wait_for(1)
    check_notice(receipt, REQUESTER, "SAG-000001", "Vi har modtaget din henvendelse", thread=first_id)

    # 2. the agent assigns (CLI) → tildelt, mail "Tildelt"
    await gateway(daemon, "cases", "assign", "SAG-000001", AGENT, "--as", AGENT)
    case = await until(daemon, "SAG-000001", lambda c: c["status"] == "tildelt")
    assert case["assignee"]["email"] == AGENT and case["history"][-1]["by"] == AGENT
    assigned = (await mails.wait_for(2))[1]
    check_notice(assigned, REQUESTER, "SAG-000001", "Tildelt", thread=first_id)

    # 3. afventer_rekvirent → a mail that asks for an answer
    await gateway(daemon, "cases", "status", "SAG-000001", "afventer_rekvirent", "--as", AGENT)
    waiting = (await mails.wait_for(3))[2]
    check_notice(waiting, REQUESTER, "SAG-000001", "Afventer rekvirent")
    assert "Vi mangler svar fra dig" in text_of(waiting)

    # 4. the requester answers that mail → comment, back to tildelt (assigned); no mail to the actor
    token_address = await answer(daemon, waiting, REQUESTER, "Her er kontonummeret.")
    assert token_address.startswith("kundebetjening+sag-000001.")
    case = await until(daemon, "SAG-000001", lambda c: c["status"] == "tildelt" and len(c["comments"]) == 2)
    assert case["comments"][1]["visible_text"] == "Her er kontonummeret."
    assert case["history"][-1]["from"] == "afventer_rekvirent"
    assert await who_changed_last(daemon, "SAG-000001") == REQUESTER

    # 5. udfoert, through the daemon's HTTP API this time
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{daemon.settings.api.port}") as api:
        health = await api.get("/healthz")
        writer = {"inbox_writer": True}  # a writer process on SQLite and PostgreSQL alike
        pages = {"http.1": True, "http.2": True}  # api.processes = 2: the pages in two children
        assert health.status_code == 200 and health.json()["loops"] == {
            "api": True, "maintenance": True, "sender": True, "smtp": True, "worker": True, **writer, **pages}
        _, token, _ = await gateway(daemon, "tokens", "issue", "--agent", AGENT)  # the agent's own token
        response = await api.post("/cases/SAG-000001/status", json={"status": "udfoert"},
                                  headers={"Authorization": f"Bearer {token.strip()}"})
        assert response.status_code == 200, response.text
        assert "gateway_outbox_depth" in (await api.get("/metrics")).text
    done = (await mails.wait_for(4))[3]
    check_notice(done, REQUESTER, "SAG-000001", "Udført")
    assert "genåbner vi sagen" in text_of(done)

    # 6. a reply to the udfoert case reopens it
    await answer(daemon, done, REQUESTER, "Det er desværre ikke løst.")
    case = await until(daemon, "SAG-000001", lambda c: c["status"] == "tildelt" and len(c["comments"]) == 3)
    assert case["history"][-1]["from"] == "udfoert"

    # 7. udfoert again, then 8 days later the timed job closes it (gateway maintenance --at)
    await gateway(daemon, "cases", "status", "SAG-000001", "udfoert", "--as", AGENT)
    done_again = (await mails.wait_for(5))[4]
    check_notice(done_again, REQUESTER, "SAG-000001", "Udført")
    later = (datetime.now(UTC) + timedelta(days=8)).isoformat()
    _, out, _ = await gateway(daemon, "maintenance", "--at", later, "--dry-run", "--json")
    assert [(a["case"], a["done"]) for a in json.loads(out)] == [("SAG-000001", False)]
    _, out, _ = await gateway(daemon, "maintenance", "--at", later, "--json")
    assert json.loads(out)[0] == {**json.loads(out)[0], "case": "SAG-000001", "to": "lukket", "done": True}
    case = await show(daemon, "SAG-000001")
    assert case["status"] == "lukket" and case["history"][-1]["by"] == "system"
    closed = (await mails.wait_for(6))[5]
    check_notice(closed, REQUESTER, "SAG-000001", "Lukket", thread=first_id)
    _, out, _ = await gateway(daemon, "maintenance", "--at", later, "--json")
    assert json.loads(out) == []  # a second run has nothing left to do

    # 8. a reply to the closed case → a new case linked to the old one, and the receipt says so
    await answer(daemon, closed, REQUESTER, "Jeg har et nyt spørgsmål om samme faktura.")
    new = await until(daemon, "SAG-000002", lambda c: c["status"] == "registreret")
    assert new["follows"] == "SAG-000001" and new["requester"]["email"] == REQUESTER
    assert (await show(daemon, "SAG-000001"))["status"] == "lukket"
    followup = (await mails.wait_for(7))[6]
    check_notice(followup, REQUESTER, "SAG-000002", "SAG-000001")

    assert [m["To"].addresses[0].addr_spec for m in mails.messages] == [REQUESTER] * 7
    assert len({m["Message-ID"] for m in mails.messages}) == 7


async def test_sharing_story(daemon: DaemonProcess, sink: tuple[Sink, int]) -> None:
    mails, _ = sink
    await users(daemon)
    await send(daemon, build_mail(REQUESTER, "Adgang til systemet", "Vi kan ikke logge ind."), REQUESTER)
    await until(daemon, "SAG-000001", lambda c: True)
    await mails.wait_for(1)

    # share with a colleague of the same organisation → mailed with the link; her reply lands on the case
    _, out, _ = await gateway(daemon, "cases", "share", "SAG-000001", COLLEAGUE, "--as", REQUESTER, "--json")
    assert json.loads(out)["party"] == COLLEAGUE
    shared = (await mails.wait_for(2))[1]
    check_notice(shared, COLLEAGUE, "SAG-000001", "delt med dig")
    await answer(daemon, shared, COLLEAGUE, "Det gælder også mig.")
    case = await until(daemon, "SAG-000001", lambda c: len(c["comments"]) == 2)
    assert case["comments"][1]["author"] == COLLEAGUE and case["parties"][0]["email"] == COLLEAGUE

    # share with an outsider → refused, with a clear message and a non-zero exit
    rc, _, err = await gateway(daemon, "cases", "share", "SAG-000001", OUTSIDER, "--as", REQUESTER, ok=False)
    assert rc != 0 and "own organisation" in err
    rc, _, err = await gateway(daemon, "cases", "status", "SAG-000001", "udfoert", "--as", REQUESTER, ok=False)
    assert rc != 0 and "only agents" in err
    rc, _, err = await gateway(daemon, "cases", "status", "SAG-999999", "udfoert", "--as", AGENT, ok=False)
    assert rc != 0 and "no case" in err
    rc, _, err = await gateway(daemon, "cases", "note", "SAG-000001", "Intern", ok=False)
    assert rc != 0 and "--as" in err
    _, out, _ = await gateway(daemon, "users", "search", "mad", "--org", ORG, "--json")
    assert [u["email"] for u in json.loads(out)] == [COLLEAGUE]

    # an agent's status change reaches the requester and the party
    await gateway(daemon, "cases", "assign", "SAG-000001", AGENT, "--as", AGENT)
    both = (await mails.wait_for(4))[2:]
    assert sorted(m["To"].addresses[0].addr_spec for m in both) == sorted([COLLEAGUE, REQUESTER])


async def test_shared_mailbox_gets_every_notification(daemon: DaemonProcess, sink: tuple[Sink, int]) -> None:
    mails, _ = sink
    await users(daemon)
    await send(daemon, build_mail(MAILBOX, "Fakturaspørgsmål", "Hvem betaler?"), MAILBOX)
    case = await until(daemon, "SAG-000001", lambda c: True)
    assert case["requester"] == {**case["requester"], "email": MAILBOX, "kind": "shared_mailbox"}
    await gateway(daemon, "cases", "assign", "SAG-000001", AGENT, "--as", AGENT)
    await gateway(daemon, "cases", "status", "SAG-000001", "afventer_rekvirent", "--as", AGENT)
    await gateway(daemon, "cases", "reply", "SAG-000001", "Vi har brug for fakturanummeret.", "--as", AGENT)
    await gateway(daemon, "cases", "note", "SAG-000001", "Kunden har ringet.", "--as", AGENT)
    await gateway(daemon, "cases", "status", "SAG-000001", "udfoert", "--as", AGENT)
    received = await mails.wait_for(5)
    assert [m["To"].addresses[0].addr_spec for m in received] == [MAILBOX] * 5
    subjects = [m["Subject"] for m in received]
    for subject, expected in zip(subjects, ("modtaget", "Tildelt", "Afventer rekvirent", "svar", "Udført"),
                                 strict=True):
        assert subject.startswith("[SAG-000001]") and expected.lower() in subject.lower(), subjects
    await asyncio.sleep(1.5)  # the internal note never becomes a mail
    assert len(mails.messages) == 5
