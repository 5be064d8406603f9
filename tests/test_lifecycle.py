"""The case lifecycle of rules §3 as tables: every (status, event) pair, the timed job, sharing.

The expectations are written out by hand below (not derived from `gateway.lifecycle`), so a
rule that drifts in the code fails here.
"""

from __future__ import annotations

import argparse
import asyncio
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from gateway import cli, jobs, lifecycle
from gateway.app import App, open_app
from gateway.clock import FrozenClock
from gateway.errors import NotFound, Refused
from gateway.model import Outcome, Status
from store import cases, queries, writes
from store.inbox import IncomingMail
from store.transact import run_in
from tests.conftest import ADDRESS, add_user, build_mail, make_settings

REQUESTER = "jens@kunde.example"
COLLEAGUE = "mette@kunde.example"
OUTSIDER = "ole@andet.example"
AGENT = "anne@sa.example"
AGENT2 = "bo@sa.example"
ORG = "Kunde A/S"

S = Status
ORDER = tuple(Status)  # registreret, paabegyndt, tildelt, afventer_internt, afventer_rekvirent, udfoert, lukket
REG, PAA, TIL, AFI, AFR, UDF, LUK = ORDER
NO = "refused"
SAME = "unchanged"
NEW = "new case"

# An agent sets status `to` (columns) on a case in status `from` (rows), the case has an assignee.
#        to:  registreret paabegyndt tildelt afv_internt afv_rekvirent udfoert lukket
AGENT_GRID = {
    REG: (SAME, PAA, TIL, AFI, AFR, UDF, LUK),
    PAA: (REG, SAME, TIL, AFI, AFR, UDF, LUK),
    TIL: (REG, PAA, SAME, AFI, AFR, UDF, LUK),
    AFI: (REG, PAA, TIL, SAME, AFR, UDF, LUK),
    AFR: (REG, PAA, TIL, AFI, SAME, UDF, LUK),
    UDF: (REG, PAA, TIL, AFI, AFR, SAME, LUK),
    LUK: (NO, NO, NO, NO, NO, NO, SAME),
}

# The status after each event, for a case in each status (columns in ORDER).
#                               registreret paabegyndt tildelt afv_int afv_rek udfoert lukket
EVENT_GRID: dict[str, tuple[Any, ...]] = {
    "assign":                   (TIL, TIL, TIL, TIL, TIL, TIL, NO),
    "reply":                    (REG, PAA, TIL, AFI, AFR, UDF, NO),
    "note":                     (REG, PAA, TIL, AFI, AFR, UDF, LUK),
    "share":                    (REG, PAA, TIL, AFI, AFR, UDF, NO),
    "requester close":          (LUK, LUK, LUK, LUK, LUK, LUK, NO),
    "party close":              (NO, NO, NO, NO, NO, NO, NO),
    "agent close":              (LUK, LUK, LUK, LUK, LUK, LUK, NO),
    "requester comment":        (REG, PAA, TIL, AFI, TIL, TIL, NO),
    "requester comment, no assignee": (REG, PAA, TIL, AFI, PAA, PAA, NO),
    "party comment":            (REG, PAA, TIL, AFI, TIL, TIL, NO),
    "outsider comment":         (NO, NO, NO, NO, NO, NO, NO),
    "customer sets status":     (NO, NO, NO, NO, NO, NO, NO),
    "mail reply":               (REG, PAA, TIL, AFI, TIL, TIL, NEW),
    "mail reply, no assignee":  (REG, PAA, TIL, AFI, PAA, PAA, NEW),
    "party mail reply":         (REG, PAA, TIL, AFI, TIL, TIL, NEW),
    "timed job after 8 days":   (REG, PAA, TIL, AFI, AFR, LUK, LUK),
    "timed job after 6 days":   (REG, PAA, TIL, AFI, AFR, UDF, LUK),
}

# Which notification each event queues when it changes something (None: no mail at all).
EVENT_MAIL = {
    "assign": "status", "reply": "reply", "note": None, "share": "shared", "requester close": "status",
    "agent close": "status", "requester comment": "status", "requester comment, no assignee": "status",
    "party comment": "status", "mail reply": "status", "mail reply, no assignee": "status",
    "party mail reply": "status", "timed job after 8 days": "status", "timed job after 6 days": None,
}


async def people(app: App) -> None:
    await add_user(app, REQUESTER, "Jens Jensen", ORG)
    await add_user(app, COLLEAGUE, "Mette Madsen", ORG)
    await add_user(app, OUTSIDER, "Ole Olsen", "Andet ApS")
    await add_user(app, AGENT, "Anne Agent", agent=True)
    await add_user(app, AGENT2, "Bo Agent", agent=True)


@pytest.fixture
async def world(app: App) -> App:
    await people(app)
    return app


async def new_case(app: App, status: Status, assignee: bool = True, party: bool = True) -> str:
    """A case in `status` whose clock started now, with the colleague as a party."""
    now = app.clock.now()
    async with app.sessions() as session, session.begin():
        requester = await run_in(session, queries.require_user, REQUESTER)
        number = await run_in(session, writes.next_case_number, "SAG-", 6)
        case_id = await run_in(session, writes.create_case, number, "Faktura", queries.user_ref(requester), now)
        if assignee:
            await run_in(session, cases.assign, case_id, (await run_in(session, queries.require_user, AGENT)).id, now)
        if party:
            await run_in(session, writes.add_party, case_id, (await run_in(session, queries.require_user, COLLEAGUE)).id, now, None)
        if status is not Status.REGISTRERET:
            await run_in(session, writes.set_status, case_id, status, now, None, "setup")
    return number


async def detail(app: App, number: str) -> dict[str, Any]:
    async with app.sessions() as session:
        return await run_in(session, queries.case_detail, number)


async def mails(app: App, number: str | None = None) -> list[dict[str, Any]]:
    async with app.sessions() as session:
        rows = await run_in(session, queries.list_outbox)
    return [r for r in rows if number is None or r["case"] == number]


async def ingest(app: App, raw: bytes):
    _, result = await app.ingest_now(IncomingMail(raw, "test", None, (ADDRESS,)))
    return result


# --- the agent's status grid ----------------------------------------------------------------------


async def test_agent_status_grid(world: App) -> None:
    wrong = []
    for frm in ORDER:
        for to, expected in zip(ORDER, AGENT_GRID[frm], strict=True):
            number = await new_case(world, frm)
            before = await detail(world, number)
            sent_before = len(await mails(world, number))
            try:
                result = await lifecycle.set_status(world.desk, number, to, AGENT, reason="test")
                got = SAME if not result["changed"] else Status(result["status"])
            except Refused:
                got = NO
            after = await detail(world, number)
            new_mails = (await mails(world, number))[sent_before:]
            if got != expected:
                wrong.append(f"{frm.value} → {to.value}: expected {expected}, got {got}")
                continue
            if expected in (SAME, NO):
                if after["history"] != before["history"] or new_mails or after["status"] != frm.value:
                    wrong.append(f"{frm.value} → {to.value}: changed something although {expected}")
                continue
            last = after["history"][-1]
            if (last["from"], last["to"], last["by"]) != (frm.value, to.value, AGENT):
                wrong.append(f"{frm.value} → {to.value}: history row {last}")
            sent = sorted((m["event"], m["recipients"][0]) for m in new_mails)
            if sent != [("status", REQUESTER), ("status", COLLEAGUE)]:
                wrong.append(f"{frm.value} → {to.value}: notifications {sent}")
    assert not wrong, "\n".join(wrong)


async def test_tildelt_needs_an_assignee(world: App) -> None:
    number = await new_case(world, Status.PAABEGYNDT, assignee=False)
    with pytest.raises(Refused, match="assign"):
        await lifecycle.set_status(world.desk, number, Status.TILDELT, AGENT)


# --- every other event against every status --------------------------------------------------------


async def run_event(app: App, event: str, number: str, clock: FrozenClock) -> str | None:
    """Perform `event`; the number of a new case when one was opened."""
    match event:
        case "assign":
            await lifecycle.assign(app.desk, number, AGENT2, AGENT)
        case "reply":
            await lifecycle.reply(app.desk, number, "Her er svaret.", AGENT)
        case "note":
            await lifecycle.note(app.desk, number, "Internt: ring til økonomi.", AGENT)
        case "share":
            async with app.sessions() as session, session.begin():
                case = await run_in(session, queries.require_case, number)
                await session.delete(await session.get(writes.CaseParty, (case.id, (
                    await run_in(session, queries.require_user, COLLEAGUE)).id)))
            await lifecycle.share(app.desk, number, COLLEAGUE, REQUESTER)
        case "requester close":
            await lifecycle.close(app.desk, number, REQUESTER, "Fortrudt")
        case "party close":
            await lifecycle.close(app.desk, number, COLLEAGUE, "Fortrudt")
        case "agent close":
            await lifecycle.close(app.desk, number, AGENT, "Dublet")
        case "requester comment" | "requester comment, no assignee":
            await lifecycle.comment(app.desk, number, "Her er oplysningerne.", REQUESTER)
        case "party comment":
            await lifecycle.comment(app.desk, number, "Jeg svarer for Jens.", COLLEAGUE)
        case "outsider comment":
            await lifecycle.comment(app.desk, number, "Hej", OUTSIDER)
        case "customer sets status":
            await lifecycle.set_status(app.desk, number, Status.UDFOERT, REQUESTER)
        case "mail reply" | "mail reply, no assignee" | "party mail reply":
            sender = COLLEAGUE if event.startswith("party") else REQUESTER
            result = await ingest(app, build_mail(sender, f"SV: [{number}] Faktura",
                                                  "Her er de oplysninger, I bad om."))
            return result.case if result.case != number else None
        case _ if event.startswith("timed job"):
            days = 8 if "8" in event else 6
            clock.advance(days=days)
            await jobs.close_done_cases(app.jobs)
        case _:
            raise AssertionError(event)
    return None


@pytest.mark.parametrize("event", list(EVENT_GRID))
async def test_event_grid(world: App, clock: FrozenClock, event: str) -> None:
    wrong = []
    for frm, expected in zip(ORDER, EVENT_GRID[event], strict=True):
        number = await new_case(world, frm, assignee="no assignee" not in event or frm is TIL)
        history = (await detail(world, number))["history"]
        sent_before = len(await mails(world))
        opened = None
        try:
            opened = await run_event(world, event, number, clock)
            got: Any = NEW if opened else Status((await detail(world, number))["status"])
        except Refused:
            got = NO
        after = await detail(world, number)
        # only this row's case (and a case it opened): earlier rows' cases may age meanwhile
        new_mails = [m for m in (await mails(world))[sent_before:] if m["case"] in (number, opened)]
        if got != expected:
            wrong.append(f"{frm.value}: expected {expected}, got {got}")
        elif expected == NO and (after["history"] != history or new_mails):
            wrong.append(f"{frm.value}: refused, yet history or mail changed")
        elif expected == NEW:
            assert opened is not None
            new = await detail(world, opened)
            if new["follows"] != number or after["status"] != LUK.value or \
                    [m["event"] for m in new_mails] != ["followup"]:
                wrong.append(f"{frm.value}: new case {new['follows']} / {[m['event'] for m in new_mails]}")
        elif expected != NO:
            wrong += check_effects(event, frm, expected, history, after, new_mails)
    assert not wrong, f"{event}:\n" + "\n".join(wrong)


def check_effects(event: str, frm: Status, expected: Status, history: list[dict[str, Any]],
                  after: dict[str, Any], new_mails: list[dict[str, Any]]) -> list[str]:
    changed = expected is not frm
    rows = after["history"][len(history):]
    wrong = []
    if changed and [(r["from"], r["to"]) for r in rows] != [(frm.value, expected.value)]:
        wrong.append(f"{frm.value}: history {rows}")
    if not changed and rows and event != "assign":
        wrong.append(f"{frm.value}: history written without a change: {rows}")
    events = {m["event"] for m in new_mails}
    kind = EVENT_MAIL[event]
    if kind is None:
        if new_mails:
            wrong.append(f"{frm.value}: mailed {events} although nothing is to be mailed")
    elif kind in ("reply", "shared") or changed:
        if frm is UDF and changed and event not in ("agent close", "requester close", "assign") \
                and not event.startswith("timed"):
            kind = "reopened"
        if events != {kind}:
            wrong.append(f"{frm.value}: expected {kind} mails, got {events}")
    elif new_mails:
        wrong.append(f"{frm.value}: mailed {events} without a change")
    return wrong


# --- who gets which mail ---------------------------------------------------------------------------


async def test_item76_notifications_skip_the_actor_and_reach_every_party(world: App) -> None:
    number = await new_case(world, Status.AFVENTER_REKVIRENT)
    await lifecycle.comment(world.desk, number, "Svar fra Mette", COLLEAGUE)
    sent = await mails(world, number)
    assert sorted(m["recipients"][0] for m in sent) == [REQUESTER]  # not Mette, who acted
    await lifecycle.set_status(world.desk, number, Status.UDFOERT, AGENT)
    sent = (await mails(world, number))[1:]
    assert [m["recipients"][0] for m in sent] == [REQUESTER, COLLEAGUE]


async def test_note_is_internal_and_never_mailed(world: App) -> None:
    number = await new_case(world, Status.TILDELT)
    await lifecycle.note(world.desk, number, "Kunden er VIP", AGENT)
    [note] = (await detail(world, number))["comments"]
    assert note["public"] is False and note["visible_text"] == "Kunden er VIP"
    assert await mails(world, number) == []
    async with world.sessions() as session:
        public = await run_in(session, queries.case_detail, number, include_internal=False)
    assert public["comments"] == []


async def test_reply_with_attachment_is_stored(world: App, tmp_path: Path) -> None:
    number = await new_case(world, Status.TILDELT)
    path = tmp_path / "vejledning.pdf"
    path.write_bytes(b"%PDF-1.4 vejledning")
    args = argparse.Namespace(cases_command="reply", number=number, text="Se vedhæftede.", actor=AGENT,
                              attach=[str(path)], json=True)
    result = await lifecycle.run_cli_action(world.desk, args)
    assert result["action"] == "reply" and len(result["notifications"]) == 2
    [comment] = (await detail(world, number))["comments"]
    assert comment["source"] == "agent" and comment["public"] is True
    [att] = comment["attachments"]
    assert att["name"] == "vejledning.pdf" and att["content_type"] == "application/pdf"
    assert world.blobs.get(att["sha256"]) == b"%PDF-1.4 vejledning"


@pytest.mark.parametrize(("command", "extra", "error", "message"), [
    ("status", {"status": "udfoert"}, NotFound, "no case"),
    ("status", {"status": "nonsense"}, Refused, "unknown status"),
    ("assign", {"agent": COLLEAGUE}, Refused, "not an agent"),
    ("share", {"email": OUTSIDER}, Refused, "own organisation"),
    ("share", {"email": "nobody@kunde.example"}, Refused, "own organisation"),
    ("reply", {"text": "  "}, Refused, "must not be empty"),
    ("reply", {"text": "x", "attach": ["/nonexistent/file.pdf"]}, Refused, "cannot read"),
    ("note", {"text": "x"}, Refused, "--as"),
])
async def test_cli_refusals_are_clear(world: App, command: str, extra: dict[str, Any], error: type,
                                      message: str) -> None:
    number = await new_case(world, Status.TILDELT)
    if message == "no case":
        number = "SAG-999999"
    actor = None if message == "--as" else AGENT
    args = argparse.Namespace(**{"cases_command": command, "number": number, "actor": actor, "attach": [],
                                 "reason": None, **extra})
    with pytest.raises(error, match=message):
        await lifecycle.run_cli_action(world.desk, args)


async def test_customer_may_not_use_agent_actions(world: App) -> None:
    number = await new_case(world, Status.TILDELT)
    for call in (lifecycle.assign(world.desk, number, AGENT, REQUESTER),
                 lifecycle.reply(world.desk, number, "hej", REQUESTER),
                 lifecycle.note(world.desk, number, "hej", COLLEAGUE)):
        with pytest.raises(lifecycle.Forbidden):
            await call


async def test_close_records_the_reason(world: App) -> None:
    number = await new_case(world, Status.PAABEGYNDT)
    await lifecycle.close(world.desk, number, REQUESTER, "Jeg fandt selv svaret")
    case = await detail(world, number)
    assert case["status"] == "lukket" and case["close_reason"] == "Jeg fandt selv svaret"
    assert case["history"][-1] == {**case["history"][-1], "by": REQUESTER, "reason": "Jeg fandt selv svaret"}


# --- the timed job ------------------------------------------------------------------------------------


async def test_timed_job_twice_at_once_closes_each_case_once(world: App, clock: FrozenClock) -> None:
    old = await new_case(world, Status.UDFOERT)
    clock.advance(days=3)
    young = await new_case(world, Status.UDFOERT)
    active = await new_case(world, Status.TILDELT)
    clock.advance(days=4, minutes=1)  # `old` is 7 days + 1 minute in udfoert, `young` 4 days
    first, second = await asyncio.gather(jobs.close_done_cases(world.jobs), jobs.close_done_cases(world.jobs))
    assert sorted(a["case"] for a in first + second) == [old]
    closes = [h for h in (await detail(world, old))["history"] if h["to"] == "lukket"]
    assert len(closes) == 1 and closes[0]["by"] == "system" and closes[0]["from"] == "udfoert"
    assert [m["recipients"][0] for m in await mails(world, old)] == [REQUESTER, COLLEAGUE]
    assert (await detail(world, young))["status"] == "udfoert"
    assert (await detail(world, active))["status"] == "tildelt"
    clock.advance(days=3)
    assert [a["case"] for a in await jobs.close_done_cases(world.jobs)] == [young]
    assert await jobs.close_done_cases(world.jobs) == []


async def test_reopening_restarts_the_clock(world: App, clock: FrozenClock) -> None:
    number = await new_case(world, Status.UDFOERT)
    clock.advance(days=6)
    result = await ingest(world, build_mail(REQUESTER, f"SV: [{number}] Faktura", "Det virker stadig ikke."))
    assert result.action is Outcome.REOPENED
    clock.advance(hours=1)
    await lifecycle.set_status(world.desk, number, Status.UDFOERT, AGENT)
    clock.advance(days=2)  # 8 days since the first udfoert, 2 since the second
    assert await jobs.close_done_cases(world.jobs) == []
    clock.advance(days=5, minutes=1)
    assert [a["case"] for a in await jobs.close_done_cases(world.jobs)] == [number]


async def test_dry_run_changes_nothing(world: App, clock: FrozenClock) -> None:
    number = await new_case(world, Status.UDFOERT)
    clock.advance(days=8)
    [planned] = await jobs.close_done_cases(world.jobs, dry_run=True)
    assert planned == {**planned, "case": number, "to": "lukket", "done": False}
    assert (await detail(world, number))["status"] == "udfoert"
    assert await mails(world, number) == []


async def test_close_after_days_is_configurable(tmp_path: Path, clock: FrozenClock) -> None:
    settings = make_settings(tmp_path, policy={"close_after_days": 2})
    async with open_app(settings, clock=clock) as app:
        await people(app)
        number = await new_case(app, Status.UDFOERT)
        clock.advance(days=2, seconds=1)
        assert [a["case"] for a in await jobs.close_done_cases(app.jobs)] == [number]


async def test_maintenance_cli_runs_as_of_a_time_and_delivers(world: App, clock: FrozenClock) -> None:
    number = await new_case(world, Status.UDFOERT)
    at = (clock.now() + timedelta(days=8)).isoformat()
    planned = await cli.maintenance(world.settings, at, dry_run=True)
    assert [(a["case"], a["done"]) for a in planned] == [(number, False)]
    done = await cli.maintenance(world.settings, at, dry_run=False)
    assert [(a.get("case"), a["done"]) for a in done] == [(number, True), (None, True)]
    assert done[1] == {"job": "deliver_notifications", "count": 2, "done": True}
    assert (await detail(world, number))["status"] == "lukket"
    assert {m["state"] for m in await mails(world, number)} == {"sent"}
    assert len(list((Path(world.settings.base_dir) / "outbound" / "new").iterdir())) == 2
    with pytest.raises(Refused, match="ISO"):
        await cli.maintenance(world.settings, "next tuesday", dry_run=True)


async def test_lease_lets_one_node_run_per_interval(world: App, clock: FrozenClock) -> None:
    assert await jobs.take_lease(world.jobs, "maintenance", "node-a", 300)
    assert not await jobs.take_lease(world.jobs, "maintenance", "node-b", 300)
    assert await jobs.take_lease(world.jobs, "maintenance", "node-a", 300)  # renews its own
    clock.advance(seconds=301)
    assert await jobs.take_lease(world.jobs, "maintenance", "node-b", 300)
    assert not await jobs.take_lease(world.jobs, "maintenance", "node-a", 300)


async def closed_then_stopped(app: App, number: str, task: asyncio.Task[None], stop: asyncio.Event) -> None:
    """Wait (up to 5 s) for the maintenance loop to close the case, then stop the loop."""
    for _ in range(100):
        if (await detail(app, number))["status"] == "lukket":
            break
        await asyncio.sleep(0.05)
    stop.set()
    await asyncio.wait_for(task, 5)
    assert (await detail(app, number))["status"] == "lukket"


async def test_maintenance_loop_closes_and_stops(tmp_path: Path, clock: FrozenClock) -> None:
    settings = make_settings(tmp_path, daemon={"maintenance_interval_s": 1.0})
    async with open_app(settings, clock=clock) as app:
        await people(app)
        number = await new_case(app, Status.UDFOERT)
        clock.advance(days=7, seconds=1)
        stop = asyncio.Event()
        task = asyncio.create_task(jobs.maintenance_loop(app.jobs, stop))
        await closed_then_stopped(app, number, task, stop)


@pytest.mark.sqlite_only
async def test_maintenance_loop_outlives_a_locked_store(tmp_path: Path, clock: FrozenClock) -> None:
    """Its lease reports a locked store as StoreUnavailable; that once ended the loop, and with it
    the daemon (a CI run saw `gateway run` shut down while another process held the lock)."""
    import sqlite3

    settings = make_settings(tmp_path, daemon={"maintenance_interval_s": 1.0}, database={"busy_timeout_ms": 100})
    async with open_app(settings, clock=clock) as app:
        await people(app)
        number = await new_case(app, Status.UDFOERT)
        clock.advance(days=7, seconds=1)
        lock = sqlite3.connect(str(app.engine.url.database), isolation_level=None)
        lock.execute("BEGIN EXCLUSIVE")
        stop = asyncio.Event()
        task = asyncio.create_task(jobs.maintenance_loop(app.jobs, stop))
        await asyncio.sleep(1.5)  # at least one tick against the locked store
        assert not task.done(), task
        lock.execute("ROLLBACK")
        lock.close()
        await closed_then_stopped(app, number, task, stop)


# --- sharing and who may add to a case -----------------------------------------------------------------


async def test_share_within_the_organisation_only(world: App) -> None:
    number = await new_case(world, Status.TILDELT, party=False)
    result = await lifecycle.share(world.desk, number, COLLEAGUE.upper(), REQUESTER)
    assert result["changed"] and result["party"] == COLLEAGUE
    [shared] = await mails(world, number)
    assert shared["event"] == "shared" and shared["recipients"] == [COLLEAGUE]
    assert (await lifecycle.share(world.desk, number, COLLEAGUE, AGENT))["changed"] is False
    for who in (OUTSIDER, AGENT2, "ukendt@kunde.example"):
        with pytest.raises(Refused, match="own organisation"):
            await lifecycle.share(world.desk, number, who, REQUESTER)
    with pytest.raises(Refused, match="requester"):
        await lifecycle.share(world.desk, number, REQUESTER, AGENT)
    with pytest.raises(lifecycle.Forbidden):
        await lifecycle.share(world.desk, number, COLLEAGUE, OUTSIDER)
    assert [p["email"] for p in (await detail(world, number))["parties"]] == [COLLEAGUE]


async def test_shared_colleague_can_reply_by_mail(world: App) -> None:
    number = await new_case(world, Status.AFVENTER_REKVIRENT, party=False)
    await lifecycle.share(world.desk, number, COLLEAGUE, REQUESTER)
    [shared] = await mails(world, number)
    result = await ingest(world, build_mail(COLLEAGUE, "Re: noget", "Jeg svarer for Jens.",
                                            in_reply_to=shared["message_id"]))
    assert (result.action, result.case) == (Outcome.COMMENTED, number)
    assert (await detail(world, number))["status"] == "tildelt"


async def test_outsider_mail_about_a_case_never_reaches_it(world: App) -> None:
    number = await new_case(world, Status.TILDELT)
    result = await ingest(world, build_mail(OUTSIDER, f"SV: [{number}] Faktura", "Jeg blander mig."))
    assert result.action is Outcome.CREATED and result.case != number
    assert len((await detail(world, number))["comments"]) == 0


AUTH = "Authentication-Results"
AUTHSERV = "mx.sa.example"


@pytest.mark.parametrize(("cc_sharing", "auth", "expected"), [
    (False, "dmarc=pass", []),
    (True, "dmarc=pass", [COLLEAGUE]),  # Ole on Cc is outside the organisation: never a party
    (True, "dmarc=fail", []),
])
async def test_item66_cc_sharing(tmp_path: Path, clock: FrozenClock, cc_sharing: bool, auth: str,
                          expected: list[str]) -> None:
    settings = make_settings(tmp_path, policy={"cc_sharing": cc_sharing, "sender_authentication": "mark",
                                               "authserv_id": AUTHSERV})
    async with open_app(settings, clock=clock) as app:
        await people(app)
        raw = build_mail(REQUESTER, cc=f"{COLLEAGUE}, {OUTSIDER}",
                         headers={AUTH: f"{AUTHSERV}; {auth} header.from=kunde.example"})
        result = await ingest(app, raw)
        case = await detail(app, result.case)
        assert [p["email"] for p in case["parties"]] == expected
        shared = [m["recipients"][0] for m in await mails(app) if m["event"] == "shared"]
        assert shared == expected


async def test_search_users_of_one_organisation(world: App) -> None:
    by_name = await lifecycle.search_users(world.desk, "mette", ORG)
    by_address = await lifecycle.search_users(world.desk, "@kunde.example", ORG.lower())
    other_org = await lifecycle.search_users(world.desk, "ole", ORG)
    wildcard = await lifecycle.search_users(world.desk, "%", ORG)
    no_org = await lifecycle.search_users(world.desk, "", "Findes ikke")
    assert [u["email"] for u in by_name] == [COLLEAGUE]
    assert [u["email"] for u in by_address] == [REQUESTER, COLLEAGUE]  # by name: Jens, Mette
    assert other_org == [] and wildcard == [] and no_org == []


async def test_concurrent_actions_on_one_case_serialise(world: App) -> None:
    number = await new_case(world, Status.TILDELT)
    results = await asyncio.gather(*(lifecycle.set_status(world.desk, number, s, AGENT)
                                     for s in (Status.UDFOERT, Status.AFVENTER_INTERNT, Status.PAABEGYNDT)))
    assert all(r["changed"] for r in results)
    history = (await detail(world, number))["history"][-3:]
    assert [h["from"] for h in history[1:]] == [h["to"] for h in history[:-1]]  # a chain, nothing lost

