"""`gateway run` as a real child process: logs, signals, SIGKILL mid-burst, stale claims.

The promise under test (rules §4): a mail that got 250 is in the inbox and becomes exactly one
case, whatever happens to the process; a mail that did not get 250 is retried by the sender
and still becomes exactly one case.
"""

from __future__ import annotations

import asyncio
import functools
import json
import os
import random
import signal
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import update

from gateway.settings import load_settings
from store.engine import make_engine, resolve_url
from store.inbox import Inbox, IncomingMail
from store.migrate import upgrade
from store.models import InboundMail
from tests import smtp_probes as probes
from tests.conftest import ROOT, free_port
from tests.daemon_proc import DaemonProcess
from tests.smtp_probes import Reply

T = InboundMail.__table__  # type: ignore[attr-defined]


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float = 30.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or check}")
        await asyncio.sleep(0.1)


def mails(n: int, tag: str) -> list[bytes]:
    """n distinct mails from one sender; the Message-ID carries the index."""
    return [probes.message(f"{tag} {i}", body=f"Mail {i} of the {tag} run.\r\n",
                           message_id=f"<{tag}-{i}-{uuid.uuid4().hex[:8]}@borger.example>")
            for i in range(n)]


def message_id(raw: bytes) -> str:
    return raw.split(b"Message-ID: ", 1)[1].split(b"\r\n", 1)[0].decode()


async def settled(proc: DaemonProcess) -> bool:
    """Every stored mail has been processed (none pending, none claimed)."""
    return not await proc.scalar("SELECT count(*) FROM inbound_mail WHERE state IN ('pending', 'processing')")


async def cases_per_mail(proc: DaemonProcess) -> dict[str, int]:
    rows = await proc.rows("SELECT message_id, count(*), count(DISTINCT case_id) FROM inbound_mail "
                           "GROUP BY message_id")
    assert all(stored == 1 for _, stored, _ in rows), "a mail was stored twice"
    return {mid: cases for mid, _, cases in rows}


async def test_make_run_config_listens_on_2525_with_durable_sqlite() -> None:
    settings = load_settings(ROOT / "config" / "gateway.toml", env={})
    assert (settings.smtp.host, settings.smtp.port, settings.smtp.enabled) == ("127.0.0.1", 2525, True)
    assert settings.database.url.startswith("sqlite")
    makefile = (ROOT / "Makefile").read_text()
    assert "gateway --config config/gateway.toml run" in makefile


async def test_run_receives_logs_each_mail_and_exits_0_on_sigterm(tmp_path: Path) -> None:
    with DaemonProcess(tmp_path) as proc:
        proc.start()
        sent = mails(3, "logged")
        replies = [await probes.deliver(proc.smtp_port, raw) for raw in sent]
        assert all(r.code == 250 for r in replies), replies
        refused = await probes.deliver(proc.smtp_port, probes.message(), recipients=("x@elsewhere.example",))
        assert refused.code == 550
        await eventually(lambda: settled(proc), what="the worker")
        assert set((await cases_per_mail(proc)).values()) == {1}
        started = time.monotonic()
        assert proc.stop() == 0
        took = time.monotonic() - started
        assert took < 4, f"an idle daemon took {took:.1f} s to stop"
    received = proc.events("mail.received")
    processed = proc.events("mail.processed")
    ids = [int(r.text.rsplit(" ", 1)[1]) for r in replies]
    assert sorted(e["inbound_id"] for e in received) == ids
    assert sorted(e["inbound_id"] for e in processed) == ids
    assert all(e["outcome"] == "created" and e["case"] for e in processed)
    assert [e["reply"] for e in proc.events("smtp.rcpt_refused")] == ["550 5.7.1"]
    assert proc.events("daemon.stopped")
    assert b"of the logged run" not in proc.log_path.read_bytes()  # no mail bodies in logs


async def test_sigint_stops_like_sigterm(tmp_path: Path) -> None:
    with DaemonProcess(tmp_path) as proc:
        proc.start()
        proc.signal(signal.SIGINT)
        assert proc.wait(15) == 0


async def test_item17_shutdown_turns_new_sessions_away_lets_data_finish_and_a_second_signal_exits_now(
        tmp_path: Path) -> None:
    with DaemonProcess(tmp_path, daemon={"grace_s": 20.0}) as proc:
        proc.start()
        busy = await probes.RawSmtp.connect(proc.smtp_port)
        await busy.greet()
        for line in ("MAIL FROM:<anna@borger.example>", f"RCPT TO:<{probes.ADDRESS}>", "DATA"):
            await busy.command(line)
        await busy.send(probes.message("in flight"))
        proc.signal(signal.SIGTERM)
        await asyncio.sleep(0.5)
        late = await probes.RawSmtp.connect(proc.smtp_port)
        assert (await late.reply()).text.startswith("4.3.2")  # 421: shutting down
        await late.close()
        await busy.send(b".\r\n")
        acked = await busy.reply()
        assert acked.code == 250, acked
        assert (await busy.reply()).code == 421
        await busy.close()
        assert proc.wait(15) == 0
        [(state,)] = await proc.rows("SELECT state FROM inbound_mail")
        assert state in ("pending", "done")

        proc.start()  # again, now with a session that never finishes its DATA
        stuck = await probes.RawSmtp.connect(proc.smtp_port)
        await stuck.greet()
        for line in ("MAIL FROM:<anna@borger.example>", f"RCPT TO:<{probes.ADDRESS}>", "DATA"):
            await stuck.command(line)
        proc.signal(signal.SIGTERM)
        await asyncio.sleep(0.5)
        assert proc.running  # waiting for the session, within the grace time
        started = time.monotonic()
        proc.signal(signal.SIGTERM)
        assert proc.wait(5) == 1
        assert time.monotonic() - started < 2
        await stuck.close()
    assert proc.events("daemon.forced_exit")


async def deliver_until_acked(port: int, pending: dict[int, bytes], sessions: int = 10,
                              attempts: int = 20) -> None:
    """The sender's retry loop: resend what has no 250 yet until every mail has one."""
    for _ in range(attempts):
        if not pending:
            return
        order = sorted(pending)
        replies, _ = await probes.timed_deliveries(port, [pending[i] for i in order], sessions)
        for i, reply in zip(order, replies, strict=True):
            if reply.code == 250:
                del pending[i]
        await asyncio.sleep(0.2)
    raise AssertionError(f"{len(pending)} mails never got 250")


async def test_item15_item16_sigkill_during_200_mails_loses_nothing_and_doubles_nothing(tmp_path: Path) -> None:
    seed = random.randrange(1_000_000)
    rng = random.Random(seed)
    sent = mails(200, "crash")
    with DaemonProcess(tmp_path, worker={"lease_s": 2.0, "parse_in_subprocess": True}) as proc:
        proc.start()
        client = asyncio.create_task(probes.timed_deliveries(proc.smtp_port, sent, sessions=10))
        await asyncio.sleep(rng.uniform(0.2, 1.2))
        proc.kill()
        replies, _ = await client
        acked = {message_id(raw) for raw, reply in zip(sent, replies, strict=True) if reply.code == 250}
        stored = {mid for (mid,) in await proc.rows("SELECT message_id FROM inbound_mail")}
        assert acked <= stored, f"seed {seed}: 250 given for mails not in the inbox: {sorted(acked - stored)[:5]}"
        assert all(r.code in (0, 250) for r in replies), {str(r) for r in replies}

        proc.start()
        pending = {i: raw for i, (raw, reply) in enumerate(zip(sent, replies, strict=True)) if reply.code != 250}
        await deliver_until_acked(proc.smtp_port, pending)
        await eventually(lambda: settled(proc), timeout=60, what="every mail processed after the restart")
        per_mail = await cases_per_mail(proc)
        assert proc.stop() == 0
    assert sorted(per_mail) == sorted(message_id(raw) for raw in sent), f"seed {seed}"
    assert set(per_mail.values()) == {1}, f"seed {seed}: a mail without (or with two) cases"
    assert await proc.scalar("SELECT count(*) FROM support_case") == 200


async def test_sigterm_during_a_burst_processes_every_acknowledged_mail(tmp_path: Path) -> None:
    sent = mails(120, "burst")
    with DaemonProcess(tmp_path, worker={"lease_s": 2.0}) as proc:
        proc.start()
        client = asyncio.create_task(probes.timed_deliveries(proc.smtp_port, sent, sessions=10))
        await asyncio.sleep(0.4)
        proc.signal(signal.SIGTERM)
        replies, _ = await client
        assert proc.wait(15) == 0
        codes = {r.code for r in replies}
        assert codes <= {0, 250, 421}, codes
        acked = {message_id(raw) for raw, r in zip(sent, replies, strict=True) if r.code == 250}
        assert acked, "the burst was stopped before any mail got through"
        stored = {mid for (mid,) in await proc.rows("SELECT message_id FROM inbound_mail")}
        assert acked <= stored
        assert not await proc.scalar("SELECT count(*) FROM inbound_mail WHERE state = 'processing'")

        proc.start()
        await eventually(lambda: settled(proc), timeout=60, what="the acknowledged mails")
        per_mail = await cases_per_mail(proc)
        assert proc.stop() == 0
    assert acked <= set(per_mail) and all(per_mail[m] == 1 for m in acked)


async def test_a_stale_claim_is_taken_back_after_the_lease(tmp_path: Path) -> None:
    """A node died holding a claim: the mail is processed once the lease runs out, not before."""
    proc = DaemonProcess(tmp_path, worker={"lease_s": 2.0})
    settings = proc.settings
    engine = make_engine(resolve_url(settings.database.url, settings.base_dir))
    await upgrade(engine)
    now = datetime.now(UTC)
    raw = probes.message("claimed by a dead node")
    await Inbox(engine).accept(IncomingMail(raw, "smtp", "anna@borger.example", (probes.ADDRESS,)), now)
    async with engine.begin() as conn:
        await conn.execute(update(T).values(state="processing", attempts=1, claimed_by="dead-node:1",
                                            claimed_until=now + timedelta(seconds=60)))
    try:
        with proc:
            proc.start()
            # The lease runs out 2 s after the daemon is up, however long its start took.
            async with engine.begin() as conn:
                await conn.execute(update(T).values(claimed_until=datetime.now(UTC) + timedelta(seconds=2)))
            await asyncio.sleep(1.0)
            assert await proc.scalar("SELECT state FROM inbound_mail") == "processing"
            await eventually(lambda: settled(proc), timeout=15, what="the stale claim")
            assert await proc.scalar("SELECT outcome FROM inbound_mail") == "created"
            assert proc.stop() == 0
    finally:
        await engine.dispose()


async def test_item12_store_fault_in_the_daemon_answers_451_then_one_case(tmp_path: Path) -> None:
    """The database locked by another process: 451; the retry after the fault makes one case."""
    import sqlite3

    with DaemonProcess(tmp_path, database={"busy_timeout_ms": 300}, smtp={"store_timeout_s": 3.0}) as proc:
        proc.start()
        url = make_engine(resolve_url(proc.settings.database.url, proc.settings.base_dir)).url
        raw = probes.message("during the fault")
        if url.get_backend_name() == "sqlite":
            lock = sqlite3.connect(str(url.database), isolation_level=None)
            lock.execute("BEGIN EXCLUSIVE")
            reply = await probes.deliver(proc.smtp_port, raw)
            lock.execute("ROLLBACK")
            lock.close()
        else:
            reply = await _deliver_with_pg_table_lock(proc, raw)
        assert reply.code == 451 and reply.text.startswith("4.3.0"), reply
        retry = await probes.deliver(proc.smtp_port, raw)
        assert retry.code == 250, retry
        await eventually(lambda: settled(proc), what="the retried mail")
        assert await cases_per_mail(proc) == {message_id(raw): 1}
        assert proc.stop() == 0


async def _deliver_with_pg_table_lock(proc: DaemonProcess, raw: bytes) -> Reply:
    settings = proc.settings
    engine = make_engine(resolve_url(settings.database.url, settings.base_dir))
    try:
        async with engine.connect() as conn:
            await conn.exec_driver_sql("BEGIN")
            await conn.exec_driver_sql("LOCK TABLE inbound_mail IN ACCESS EXCLUSIVE MODE")
            reply = await probes.deliver(proc.smtp_port, raw)
            await conn.exec_driver_sql("ROLLBACK")
        return reply
    finally:
        await engine.dispose()


def _descendants(pid: int) -> set[int]:
    """Every live process below `pid`, from /proc."""
    parents: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents[int(stat.parent.name)] = int(fields[1])
    found, frontier = set(), {pid}
    while frontier:
        frontier = {child for child, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def _names(pids: set[int]) -> set[str]:
    """The names (`comm`) of those still alive."""
    found = set()
    for pid in pids:
        try:
            if _alive(pid):
                found.add(Path(f"/proc/{pid}/comm").read_text().strip())
        except OSError:
            continue
    return found


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


async def test_the_worker_process_is_restarted_when_it_dies(tmp_path: Path) -> None:
    """…and what it started (its fork server, its parse processes) goes with it, not orphaned."""
    with DaemonProcess(tmp_path) as proc:
        proc.start()
        def ready() -> list[dict]:
            return [e for e in proc.events("worker.child_ready") if e["role"] == "worker"]

        await eventually(lambda: asyncio.sleep(0, bool(ready())), what="the worker")
        assert (await probes.deliver(proc.smtp_port, probes.message("before"))).code == 250
        await eventually(lambda: settled(proc), what="the first mail")  # the parse pool runs now
        [started] = [e for e in proc.events("worker.process_started") if e["role"] == "worker"]
        below = _descendants(started["pid"])
        assert below, "the worker started no parse processes"
        os.kill(started["pid"], signal.SIGKILL)
        await eventually(lambda: asyncio.sleep(0, len(ready()) == 2), what="a new worker")
        await eventually(lambda: asyncio.sleep(0, not any(_alive(p) for p in below)), timeout=10,
                         what="the dead worker's fork server and parse processes to go")
        raw = probes.message("after the restart")
        assert (await probes.deliver(proc.smtp_port, raw)).code == 250
        await eventually(lambda: settled(proc), what="the mail")
        assert (await cases_per_mail(proc))[message_id(raw)] == 1
        assert proc.stop() == 0
    assert [(e["role"], e["exitcode"]) for e in proc.events("worker.process_died")] == [("worker", -signal.SIGKILL)]


async def test_every_process_of_the_daemon_leaves_when_it_is_killed(tmp_path: Path) -> None:
    """SIGKILL of `gateway run`: the inbox writer, the worker, the sender, the fork servers and
    the parse processes all notice and leave by themselves (nobody reaps them here)."""
    with DaemonProcess(tmp_path) as proc:
        proc.start()
        assert proc.process is not None
        # the worker starts its parse processes before it takes mail, not with the first one
        pid = proc.process.pid
        await eventually(lambda: asyncio.sleep(0, "gw-parse" in _names(_descendants(pid))),
                         what="the parse processes, before any mail")
        assert (await probes.deliver(proc.smtp_port, probes.message("one"))).code == 250
        await eventually(lambda: settled(proc), what="the mail")
        below = _descendants(proc.process.pid)
        names = _names(below)
        assert len(below) >= 5, names  # writer, worker, sender, fork server(s), parse processes
        # each named for `top` and `ps`, the fork servers and the resource tracker excepted
        assert Path(f"/proc/{proc.process.pid}/comm").read_text().strip() == "gw-daemon"
        assert {"gw-worker", "gw-sender", "gw-parse", "gw-writer"} <= names, names
        proc.process.kill()
        proc.process.wait(10)
        await eventually(lambda: asyncio.sleep(0, not any(_alive(p) for p in below)), timeout=15,
                         what="every process the daemon started to leave")


async def test_the_worker_child_wakes_the_sender_child_for_a_receipt(tmp_path: Path) -> None:
    """The sender child polls once a second; woken by the worker child, it sends a new case's
    receipt at once. Three mails in a row: each receipt within 0.6 s of its case (a poll alone
    would make that happen for all three in about one run out of five)."""
    with DaemonProcess(tmp_path) as proc:
        proc.start()
        outbound = tmp_path / "outbound" / "new"
        for i, raw in enumerate(mails(3, "receipt")):
            assert (await probes.deliver(proc.smtp_port, raw)).code == 250
            await eventually(functools.partial(_count, proc, "support_case", i + 1), timeout=30, what="the case")
            made = time.monotonic()
            while len(list(outbound.glob("*"))) < i + 1:
                assert time.monotonic() - made < 0.6, "the receipt waited for the sender's poll"
                await asyncio.sleep(0.01)
        assert proc.stop() == 0


async def _count(proc: DaemonProcess, table: str, n: int) -> bool:
    return bool(await proc.scalar(f"SELECT count(*) FROM {table}") >= n)


# --- issue 24 item 2, issue 17 items 10 and 11: claims come back at once; /healthz -------------


def _worker_pid(proc: DaemonProcess) -> int:
    return proc.child_pid("worker")


async def _settled_but_foreign(proc: DaemonProcess) -> bool:
    return not await proc.scalar("SELECT count(*) FROM inbound_mail WHERE state IN ('pending', 'processing') "
                                 "AND (claimed_by IS NULL OR claimed_by NOT LIKE 'other-node:%')")


async def _claimed_by_another_node(proc: DaemonProcess) -> str:
    """A mail that a live node of the same store holds (its lease runs 10 minutes more)."""
    settings = proc.settings
    engine = make_engine(resolve_url(settings.database.url, settings.base_dir))
    raw = probes.message("held by the other node")
    try:
        await upgrade(engine)
        accepted = await Inbox(engine).accept(IncomingMail(raw, "smtp", "anna@borger.example", (probes.ADDRESS,)),
                                              datetime.now(UTC))
        async with engine.begin() as conn:
            await conn.execute(update(T).where(T.c.id == accepted.inbound_id).values(
                state="processing", attempts=1, claimed_by="other-node:3",
                claimed_until=datetime.now(UTC) + timedelta(seconds=600)))
    finally:
        await engine.dispose()
    return message_id(raw)


async def test_issue24_item2_a_killed_daemon_takes_its_own_claims_back_at_start_not_after_the_lease(
        tmp_path: Path) -> None:
    """SIGKILL of the whole process group while the worker holds claims; the lease is the
    default 300 s. The restarted daemon (the node's next run) makes every case within 15 s,
    and leaves the claim of another live node alone."""
    sent = mails(150, "restart")
    with DaemonProcess(tmp_path, worker={"parse_in_subprocess": True}) as proc:
        foreign = await _claimed_by_another_node(proc)
        proc.start()
        client = asyncio.create_task(probes.timed_deliveries(proc.smtp_port, sent, sessions=10))
        _, held = await proc.freeze_worker_holding_claims()
        proc.kill_group()
        replies, _ = await client
        proc.start()
        back = time.monotonic()
        pending = {i: raw for i, (raw, reply) in enumerate(zip(sent, replies, strict=True)) if reply.code != 250}
        await deliver_until_acked(proc.smtp_port, pending)
        await eventually(lambda: _settled_but_foreign(proc), timeout=15, what="every case after the restart")
        took = time.monotonic() - back
        per_mail = await cases_per_mail(proc)
        [(state, holder)] = await proc.rows("SELECT state, claimed_by FROM inbound_mail WHERE message_id = :m",
                                            m=foreign)
        assert proc.stop() == 0
    assert held > 0 and took < 15
    [started] = [e for e in proc.events("daemon.run_started")][-1:]
    assert started["mails_taken_back"] >= 1 and started["holder"].endswith(":2")
    assert (state, holder) == ("processing", "other-node:3")  # another node's claim waits for its lease
    assert all(per_mail[message_id(raw)] == 1 for raw in sent)


async def test_issue17_item10_a_killed_worker_childs_claims_are_given_back_at_once(tmp_path: Path) -> None:
    """The supervisor sees its worker child die and gives the child's claims back before it
    starts the next one: the mails are done within 10 s, not after the 300 s lease, and the
    killed try is not counted."""
    sent = mails(150, "child")
    with DaemonProcess(tmp_path, worker={"parse_in_subprocess": True}) as proc:
        proc.start()
        client = asyncio.create_task(probes.timed_deliveries(proc.smtp_port, sent, sessions=10))
        pid, held = await proc.freeze_worker_holding_claims()
        os.kill(pid, signal.SIGKILL)
        killed = time.monotonic()
        replies, _ = await client
        assert all(r.code == 250 for r in replies), {str(r) for r in replies}
        await eventually(lambda: settled(proc), timeout=10, what="the dead child's mails")
        took = time.monotonic() - killed
        per_mail = await cases_per_mail(proc)
        attempts = {a for (a,) in await proc.rows("SELECT attempts FROM inbound_mail")}
        assert proc.stop() == 0
    assert held > 0 and took < 10
    assert set(per_mail.values()) == {1} and len(per_mail) == 150
    assert attempts == {1}, "the killed child's try was counted"
    [given] = proc.events("worker.claims_given_back")
    assert given["role"] == "worker" and given["count"] >= 1


async def _health(port: int) -> tuple[int, dict]:
    import httpx

    async with httpx.AsyncClient(timeout=10) as client:
        response = await client.get(f"http://127.0.0.1:{port}/healthz")
    return response.status_code, response.json()


async def test_issue17_item11_healthz_names_every_part_and_answers_503_while_the_worker_keeps_dying(
        tmp_path: Path) -> None:
    port = free_port()
    with DaemonProcess(tmp_path, api={"enabled": True, "port": port}) as proc:
        proc.start()
        await eventually(lambda: asyncio.sleep(0, bool(proc.events("api.listening"))), what="the API")
        def ready(role: str) -> int:
            return sum(e["role"] == role for e in proc.events("worker.child_ready"))

        await eventually(lambda: asyncio.sleep(0, ready("worker") + ready("sender") + ready("http") == 4),
                         what="the children")
        code, body = await _health(port)
        parts = {"smtp", "worker", "sender", "maintenance", "api", "inbox_writer", "http.1", "http.2"}
        assert code == 200 and parts <= set(body["loops"]) and all(body["loops"].values()), body
        for deaths in range(1, 4):
            before = ready("worker")
            os.kill(_worker_pid(proc), signal.SIGKILL)
            await eventually(lambda: asyncio.sleep(0, ready("worker") > before),  # noqa: B023
                             timeout=20, what=f"worker restart {deaths}")
        code, body = await _health(port)
        assert code == 503 and body["loops"]["worker"] is False, body
        assert all(alive for name, alive in body["loops"].items() if name != "worker"), body
        assert body["status"] == "unavailable"
        assert proc.stop() == 0


def test_a_started_process_keeps_its_heap_out_of_the_collectors_scans() -> None:
    """`freeze_heap` (each of the daemon's processes, once started): what the start left alive
    is frozen, its garbage collected first, so a full collection later scans only what came
    after (the worker's took 143-207 ms each under bench/smtp.py before)."""
    import subprocess
    import sys

    script = (
        "import gc, json, weakref, sqlalchemy, gateway.app\n"
        "from gateway.procname import freeze_heap\n"
        "class Cycle: pass\n"
        "a, b = Cycle(), Cycle(); a.b, b.a = b, a; start_garbage = weakref.ref(a); del a, b\n"  # in a cycle
        "before = len(gc.get_objects())\n"
        "freeze_heap()\n"
        "print(json.dumps([before, gc.get_freeze_count(), len(gc.get_objects()), start_garbage() is None]))\n")
    out = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60, check=True)
    before, frozen, tracked, collected = json.loads(out.stdout)
    assert before > 50_000 and frozen > 0.9 * before and tracked < 1_000
    assert collected, "the start's garbage was frozen, not collected"
