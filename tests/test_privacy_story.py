"""Data protection through the real daemon (`gateway run`, DEBUG logging) and the real CLI: a
mail in with a distinctive subject, body and attachment name, the agent's answer with a file,
a note, the requester's reply, an export, the case closed, an erasure over the HTTP API, the
timed jobs years later, a mail from the erased address, the audit trail. Then every log line
the daemon and the commands wrote is searched for those words: none may be there.
"""

from __future__ import annotations

import asyncio
import json
import os
import zipfile
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiosmtplib
import httpx
import pytest

from tests.cli_proc import run_cli
from tests.conftest import ADDRESS, ROOT, build_mail, free_port
from tests.daemon_proc import DaemonProcess

JENS = "jens@kunde.example"
AGENT = "anne@sa.example"
# Words that appear only in what people wrote: none may reach a log line.
SUBJECT = "Quetzalcoatl-fakturaen er forkert"
BODY = "Jeg betalte med Xylofonbetaling og beløbet passer ikke."
ATTACHMENT = "Lønseddel-Zanzibar.pdf"
REPLY_FILE = "Afgørelse-Quixotic.txt"
AGENT_TEXT = "Vi har rettet Marmeladefejlen på din faktura."
NOTE = "Kunden ringede om Pelikanbeløbet."
ANSWER = "Tak, men Zebraflaske-rabatten mangler stadig."
SECRETS = ("Quetzalcoatl", "Xylofonbetaling", "Zanzibar", "Quixotic", "Marmeladefejlen", "Pelikanbeløbet",
           "Pelikanbel", "Zebraflaske")


@pytest.fixture
async def daemon(tmp_path: Path) -> AsyncIterator[DaemonProcess]:
    proc = DaemonProcess(tmp_path, daemon={"log_level": "DEBUG", "log_format": "json", "grace_s": 10.0,
                                           "maintenance_interval_s": 1.0},
                         api={"enabled": True, "port": free_port()}, retention={"blob_grace_s": 0})
    await asyncio.to_thread(proc.start)
    try:
        yield proc
    finally:
        rc = await asyncio.to_thread(proc.stop)
        assert rc == 0, proc.tail()


class Cli:
    """The `gateway` command against the daemon's configuration; keeps every stderr it wrote."""

    def __init__(self, proc: DaemonProcess) -> None:
        self.proc = proc
        self.stderr: list[str] = []
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}

    async def __call__(self, *args: str, rc: int = 0) -> str:
        code, out, err = await asyncio.to_thread(run_cli, ["--config", str(self.proc.config_path), *args],
                                                 self.env, ROOT)
        self.stderr.append(err)
        assert code == rc, f"gateway {' '.join(args)} → {code}\n{err}"
        return out if rc == 0 else err


async def until(proc: DaemonProcess, sql: str, check: Callable[[Any], bool], timeout: float = 30.0) -> Any:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        value = await proc.scalar(sql)
        if check(value):
            return value
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"{sql} → {value!r}\n{proc.tail()}")
        await asyncio.sleep(0.1)


async def send(proc: DaemonProcess, raw: bytes) -> None:
    await aiosmtplib.send(raw, sender=JENS, recipients=[ADDRESS], hostname="127.0.0.1", port=proc.smtp_port)


async def test_no_log_line_carries_a_subject_body_or_attachment_name(daemon: DaemonProcess, tmp_path: Path) -> None:
    gateway = Cli(daemon)
    await gateway("users", "add", AGENT, "--name", "Anne Agent", "--agent")
    token = (await gateway("tokens", "issue", "--agent", AGENT)).strip()

    await send(daemon, build_mail(JENS, SUBJECT, BODY, attachments=[(ATTACHMENT, b"%PDF-1.4 data", "application/pdf")]))
    await until(daemon, "SELECT count(*) FROM support_case", lambda n: n == 1)
    reply_file = tmp_path / REPLY_FILE
    reply_file.write_text("Afgørelsen i sagen.", encoding="utf-8")
    await gateway("cases", "assign", "SAG-000001", AGENT, "--as", AGENT)
    await gateway("cases", "reply", "SAG-000001", AGENT_TEXT, "--attach", str(reply_file), "--as", AGENT)
    await gateway("cases", "note", "SAG-000001", NOTE, "--as", AGENT)
    await send(daemon, build_mail(JENS, f"SV: [SAG-000001] {SUBJECT}", ANSWER,
                                  attachments=[("Zanzibar-kvittering.pdf", b"%PDF-1.4 more", "application/pdf")]))
    await until(daemon, "SELECT count(*) FROM comment", lambda n: n == 4)

    export = tmp_path / "jens.zip"
    summary = json.loads(await gateway("users", "export", JENS, "--out", str(export), "--reason", "art. 15",
                                       "--json"))
    assert summary["comments"] == 3 and summary["attachments"] == 3 and summary["raw_mails"] == 2
    with zipfile.ZipFile(export) as zf:
        assert SUBJECT in zf.read("cases/SAG-000001.json").decode()
    await gateway("cases", "close", "SAG-000001", "--as", AGENT)

    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{daemon.settings.api.port}") as api:
        erased = await api.post("/users/erase", json={"email": JENS, "reason": "art. 17"},
                                headers={"Authorization": f"Bearer {token}"})
    assert erased.status_code == 200, erased.text
    assert erased.json()["files_deleted"] == 2
    audit = json.loads(await gateway("audit", "list", "--json"))
    assert [e["action"] for e in audit[:3]] == ["erase", "status tildelt -> lukket", "export"]
    assert audit[0]["actor"] == AGENT and audit[2]["actor"].startswith("cli:") and audit[2]["reason"] == "art. 15"
    assert {e["action"] for e in audit if e["source"] == "case_history"} == {
        "reply", "note", "status registreret -> tildelt", "status tildelt -> lukket"}

    refused = await gateway("users", "add", JENS, "--name", "Jens igen", rc=1)
    assert "blocked" in refused and "gateway users allow" in refused
    assert "--before: not an ISO 8601 time" in await gateway("audit", "list", "--before", "i går", rc=64)

    later = (datetime.now(UTC) + timedelta(days=6 * 365)).isoformat()
    jobs = json.loads(await gateway("maintenance", "--at", later, "--json"))
    assert ("closed_cases", "SAG-000001", True) in [(a["job"], a.get("case"), a["done"]) for a in jobs]

    await send(daemon, build_mail(JENS, f"SV: [SAG-000001] {SUBJECT}", ANSWER))  # the erased address again
    reason = await until(daemon, "SELECT reason FROM inbound_mail WHERE id = 3", lambda r: r is not None)
    assert "erased" in reason
    audit = json.loads(await gateway("audit", "list", "--json", "--limit", "2"))
    assert [(e["action"], e["actor"]) for e in audit] == [("retention", "system"), ("erase", AGENT)]

    await asyncio.to_thread(daemon.stop)
    lines = daemon.log_path.read_text(encoding="utf-8", errors="replace").splitlines()
    lines += [line for err in gateway.stderr for line in err.splitlines()]
    events = {e.get("event") for e in daemon.events()}
    assert {"mail.received", "mail.processed", "privacy.erased", "retention.job"} <= events, sorted(map(str, events))
    assert any(e.get("level") == "debug" for e in daemon.events())  # DEBUG really was on
    leaks = [(word, line) for line in lines for word in SECRETS if word in line]
    assert not leaks, leaks[:5]
