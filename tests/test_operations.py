"""What an operator reads (issue 17, items 5 and 6): the log events and `/metrics` of a whole
story through the real daemon (`gateway run` with its worker and sender children, the default),
the real console script for the mail piped in and the timed jobs, and a local relay that takes
some notifications and refuses one.

The story, once per module: five mails by SMTP (three from registered users, two from
strangers, quarantined under `policy.unknown_sender = "quarantine"`), the first again (a
duplicate), one by `gateway ingest`; receipts to three users and a refused one; an agent's
status change through the API; `gateway maintenance` closing that case a week later. Then every
log line is held to docs/operations.md's list of events, and every metric it lists to the known run.
"""

from __future__ import annotations

import ast
import asyncio
import json
import logging
import os
import re
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiosmtplib
import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from gateway.logs import JsonFormatter, TextFormatter
from tests.cli_proc import run_cli
from tests.conftest import ADDRESS, ROOT, build_mail, free_port
from tests.daemon_proc import DaemonProcess
from tests.sink import Sink, SinkHandler

OPERATIONS = (ROOT / "docs" / "operations.md").read_text(encoding="utf-8")
TOKEN = "operations-agent-token-0123456789"
AGENT = "anne@sa.example"
USERS = ("jens@kunde.example", "mette@kunde.example", "afvist@kunde.example")  # the relay refuses afvist@
STRANGERS = ("x@fremmed.example", "y@fremmed.example")


def section(title: str) -> str:
    return OPERATIONS.split(f"\n## {title}\n", 1)[1].split("\n## ", 1)[0]


def documented_events() -> set[str]:
    return set(re.findall(r"^\| `([a-z_]+(?:\.[a-z_]+)+)` \|", section("Log events"), re.M))


def documented_metrics() -> set[str]:
    return set(re.findall(r"^\| `(gateway_[a-z_]+)", section("Metrics and health"), re.M))


# --- the story --------------------------------------------------------------------------------------


class RefusingHandler(SinkHandler):
    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str, options: Any) -> str:
        if address.startswith("afvist@"):
            return "550 5.1.1 <afvist@kunde.example>: no such user"
        return await super().handle_RCPT(server, session, envelope, address, options)


@dataclass
class Story:
    log: list[dict[str, Any]] = field(default_factory=list)  # the daemon's lines and the commands'
    metrics: str = ""
    imap_fetch: datetime = datetime(2026, 1, 5, 9, 30, tzinfo=UTC)


async def _until(proc: DaemonProcess, sql: str, want: Any, what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while (got := await proc.scalar(sql)) != want:
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: {got!r}, not {want!r}\n{proc.tail()}")
        await asyncio.sleep(0.1)


async def _cli(proc: DaemonProcess, story: Story, *args: str) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    rc, out, err = await asyncio.to_thread(run_cli, ["--config", str(proc.config_path), *args], env, ROOT)
    assert rc == 0, f"gateway {' '.join(args)} → {rc}\n{err}"
    story.log.extend(json.loads(line) for line in err.splitlines() if line.startswith("{"))
    return out


async def _api_ready(port: int) -> None:
    deadline = time.monotonic() + 30
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as api:
        while True:
            try:
                if (await api.get("/healthz")).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "the API never answered"
            await asyncio.sleep(0.1)


async def _mails_in(proc: DaemonProcess, story: Story, tmp: Path) -> None:
    mails = [build_mail(sender, subject=f"Spørgsmål {i}") for i, sender in enumerate((*USERS, *STRANGERS))]
    for sender, raw in zip((*USERS, *STRANGERS), mails, strict=True):
        await aiosmtplib.send(raw, sender=sender, recipients=[ADDRESS], hostname="127.0.0.1", port=proc.smtp_port)
    await aiosmtplib.send(mails[0], sender=USERS[0], recipients=[ADDRESS], hostname="127.0.0.1",
                          port=proc.smtp_port)  # the same mail again: no second mail in the inbox
    piped = tmp / "piped.eml"
    piped.write_bytes(build_mail(USERS[1], subject="Og en til"))
    await _cli(proc, story, "ingest", str(piped), "--json")
    await _until(proc, "SELECT count(*) FROM inbound_mail WHERE processed_at IS NOT NULL", 6, "mails processed")
    await _until(proc, "SELECT count(*) FROM outbox WHERE state IN ('pending', 'sending')", 0, "receipts sent")


async def _story(tmp: Path) -> Story:
    story, sink = Story(), Sink()
    sink.handler = RefusingHandler()
    await sink.start()
    api_port = free_port()
    proc = DaemonProcess(tmp, api={"enabled": True, "port": api_port, "agent_tokens": [TOKEN]},
                         outbound={"transport": f"smtp://127.0.0.1:{sink.port}", "max_attempts": 2},
                         policy={"unknown_sender": "quarantine"})
    try:
        for address in USERS:
            await _cli(proc, story, "users", "add", address, "--name", address.split("@")[0].title())
        await _cli(proc, story, "users", "add", AGENT, "--name", "Anne Agent", "--agent")
        await asyncio.to_thread(proc.start)
        await _api_ready(api_port)
        await _mails_in(proc, story, tmp)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{api_port}") as api:
            headers = {"Authorization": f"Bearer {TOKEN}", "X-Acting-User": AGENT}
            r = await api.post("/cases/SAG-000001/status", json={"status": "udfoert"}, headers=headers)
            assert r.status_code == 200, r.text
            await _until(proc, "SELECT count(*) FROM outbox WHERE state IN ('pending', 'sending')", 0, "status mail")
            later = (datetime.now(UTC) + timedelta(days=8)).isoformat()
            await _cli(proc, story, "maintenance", "--at", later, "--json")  # closes SAG-000001, mails it
            await _imap_fetched(proc, story.imap_fetch)
            story.metrics = (await api.get("/metrics")).text
        assert await asyncio.to_thread(proc.stop) == 0, proc.tail()
        story.log[:0] = proc.events()
    finally:
        proc.kill()
        await sink.stop()
    return story


async def _imap_fetched(proc: DaemonProcess, at: datetime) -> None:
    """What the IMAP edge writes after a fetch (its own tests run Dovecot; here it is one row)."""
    from sqlalchemy.ext.asyncio import AsyncEngine

    from store.engine import make_engine, resolve_url
    from store.models import ImapFolderState

    settings = proc.settings
    engine: AsyncEngine = make_engine(resolve_url(settings.database.url, settings.base_dir))
    try:
        async with engine.begin() as conn:
            await conn.execute(ImapFolderState.__table__.insert().values(  # type: ignore[attr-defined]
                account="kb", folder="INBOX", last_uid=7, failures={}, last_fetch_at=at))
    finally:
        await engine.dispose()


@pytest.fixture(scope="module")
def story(tmp_path_factory: pytest.TempPathFactory) -> Story:
    return asyncio.run(_story(tmp_path_factory.mktemp("story")))


# --- item 5: log events --------------------------------------------------------------------------------


def test_every_log_line_of_the_story_is_a_documented_event(story: Story) -> None:
    documented = documented_events()
    assert story.log and all({"ts", "level", "event", "logger"} <= set(line) for line in story.log)
    unknown = sorted({line["event"] for line in story.log} - documented)
    assert not unknown, f"log events not in docs/operations.md's list: {unknown}"
    seen = {line["event"] for line in story.log}
    assert {"daemon.started", "mail.received", "mail.processed", "notify.sent", "notify.failed",
            "case.action", "case.auto_closed", "daemon.stopped"} <= seen, seen


def test_the_notification_events_keep_their_names(story: Story) -> None:
    """`extra={"event": …}` once replaced `notify.sent` by `receipt`: an alert on notify.failed never fired."""
    sent = [line for line in story.log if line["event"] == "notify.sent"]
    failed = [line for line in story.log if line["event"] == "notify.failed"]
    assert sorted(line["notice"] for line in sent) == ["receipt"] * 3 + ["status"] * 2, sent
    assert [line["notice"] for line in failed] == ["receipt"] and "550" in failed[0]["error"]


def _log_calls() -> list[tuple[str, set[str], set[str]]]:
    """Every logging call in the code: (where, its event names, the keys of its literal `extra`)."""
    found = []
    for path in sorted([*(ROOT / "gateway").rglob("*.py"), *(ROOT / "store").rglob("*.py")]):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.args
                    and node.func.attr in ("debug", "info", "warning", "error", "exception", "critical")
                    and isinstance(node.func.value, ast.Name) and node.func.value.id in ("log", "logger")):
                continue
            names = _names(node.args[0])
            extra = next((k.value for k in node.keywords if k.arg == "extra"), None)
            keys = {k.value for k in extra.keys if isinstance(k, ast.Constant)} if isinstance(extra, ast.Dict) else set()
            found.append((f"{path.relative_to(ROOT)}:{node.lineno}", names, keys))
    return found


def _names(expr: ast.expr) -> set[str]:
    """The event names a call's first argument can be: a string, or either branch of an `if`."""
    if isinstance(expr, ast.IfExp):
        return _names(expr.body) | _names(expr.orelse)
    return {expr.value} if isinstance(expr, ast.Constant) and isinstance(expr.value, str) else {ast.unparse(expr)}


def test_the_code_logs_only_documented_events_and_never_overwrites_one() -> None:
    from gateway.logs import RESERVED

    calls, documented = _log_calls(), documented_events()
    assert len(calls) > 40
    used = set().union(*(names for _, names, _ in calls))
    assert not used - documented, f"logged but not in docs/operations.md's list: {sorted(used - documented)}"
    assert not documented - used - {"library.message"}, f"in docs/operations.md but never logged: {sorted(documented - used)}"
    clashing = [(where, keys & set(RESERVED)) for where, _, keys in calls if keys & set(RESERVED)]
    assert not clashing, clashing


@pytest.mark.parametrize("formatter", [JsonFormatter(), TextFormatter()], ids=["json", "text"])
def test_no_extra_field_replaces_the_event(formatter: logging.Formatter) -> None:
    record = logging.getLogger("gateway.test").makeRecord(
        "gateway.test", logging.ERROR, __file__, 1, "notify.failed", (), None,
        extra={"event": "receipt", "level": "x", "ts": "y", "logger": "z", "outbox_id": 7})
    line = formatter.format(record)
    if isinstance(formatter, JsonFormatter):
        entry = json.loads(line)
        assert (entry["event"], entry["level"], entry["logger"]) == ("notify.failed", "error", "gateway.test")
        assert entry["extra_event"] == "receipt" and entry["outbox_id"] == 7 and entry["ts"] != "y"
    else:
        assert line.split()[:2] == ["error", "notify.failed"]


def test_a_librarys_message_is_one_documented_event() -> None:
    record = logging.getLogger("uvicorn.error").makeRecord(
        "uvicorn.error", logging.ERROR, __file__, 1, "[Errno 98] address in use", (), None)
    entry = json.loads(JsonFormatter().format(record))
    assert entry["event"] == "library.message" and "Errno 98" in entry["message"]


# --- item 6: metrics ---------------------------------------------------------------------------------


def _samples(text: str) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    out: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return out


def _by(label: str, values: dict[tuple[tuple[str, str], ...], float]) -> dict[str, float]:
    return {dict(labels)[label]: value for labels, value in values.items()}


def test_every_listed_metric_is_right_with_the_daemons_real_processes(story: Story) -> None:
    """Counted where the work happens, these stayed 0: the worker and sender run in children, the
    piped mail and the timed close in commands of their own."""
    s = _samples(story.metrics)
    bucket = s["gateway_processing_seconds_bucket"]
    checks = {
        "gateway_mails_received_total": _by("source", s["gateway_mails_received_total"]) == {"smtp": 5, "pipe": 1},
        "gateway_mails_processed_total":
            _by("outcome", s["gateway_mails_processed_total"]) == {"created": 4, "quarantined": 2},
        "gateway_mails_quarantined_total": s["gateway_mails_quarantined_total"] == {(): 2},
        "gateway_processing_seconds": s["gateway_processing_seconds_count"] == {(): 6}
            and bucket[(("le", "+Inf"),)] == 6 and 0 < s["gateway_processing_seconds_sum"][()] < 600
            and sorted(bucket.values()) == [bucket[k] for k in sorted(bucket, key=lambda k: float(k[0][1]))],
        "gateway_inbox_depth": _by("state", s["gateway_inbox_depth"]) == {"pending": 0, "processing": 0,
                                                                         "quarantined": 2},
        "gateway_outbox_depth": _by("state", s["gateway_outbox_depth"]) == {"pending": 0, "sending": 0, "failed": 1,
                                                                           "held": 0},
        "gateway_notifications_sent_total":
            _by("event", s["gateway_notifications_sent_total"]) == {"receipt": 3, "status": 2},
        "gateway_notifications_failed": _by("event", s["gateway_notifications_failed"]) == {"receipt": 1},
        "gateway_cases_auto_closed_total": s["gateway_cases_auto_closed_total"] == {(): 1},
        "gateway_imap_last_fetch_timestamp_seconds": s["gateway_imap_last_fetch_timestamp_seconds"]
            == {(("account", "kb"), ("folder", "INBOX")): story.imap_fetch.timestamp()},
        "gateway_case_actions_total": _by("action", s["gateway_case_actions_total"]) == {"status": 1},
    }
    assert set(checks) == documented_metrics(), "docs/operations.md's metrics and this test's checks differ"
    wrong = {name: {k: v for k, v in s.items() if k.startswith(name)} for name, ok in checks.items() if not ok}
    assert not wrong, wrong
    assert not [name for name in s if name.endswith("_created")]
