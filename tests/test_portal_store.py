"""The portal's rows in the store (SQLite and PostgreSQL): sessions, single-use links, the
attempt counters with their back-off, and the reads that find a user's cases and nothing else."""

from __future__ import annotations

import asyncio
from datetime import timedelta

from gateway import lifecycle
from gateway.app import App
from gateway.clock import FrozenClock
from gateway.model import Status
from store import portal, portal_cases
from store.inbox import IncomingMail
from tests.conftest import ADDRESS, add_user, build_mail

HOUR = timedelta(hours=1)


async def user_id(app: App, email: str) -> int:
    found = await app.tx.read(portal.user_by_email, email)
    assert found is not None
    return found.id


async def new_case(app: App, sender: str, subject: str = "Spørgsmål") -> str:
    _, result = await app.ingest_now(IncomingMail(build_mail(sender=sender, subject=subject), "test", None, (ADDRESS,)))
    assert result is not None and result.case
    return result.case


# --- sessions ----------------------------------------------------------------------------------


async def test_a_session_lives_until_it_idles_expires_or_ends(app: App, clock: FrozenClock) -> None:
    await add_user(app, "jens@kunde.example", "Jens")
    uid = await user_id(app, "jens@kunde.example")
    now = clock.now()
    await app.tx.run(portal.start_session, uid, "h1", "password", now, now + 12 * HOUR)
    found = await app.tx.read(portal.session_of, "h1", now, HOUR)
    assert found is not None and found.user.email == "jens@kunde.example" and found.method == "password"
    assert await app.tx.read(portal.session_of, "other", now, HOUR) is None
    # idle: an hour without a request ends it; a touch keeps it alive
    assert await app.tx.read(portal.session_of, "h1", now + HOUR, HOUR) is None
    await app.tx.run(portal.touch_session, found.id, now + 50 * timedelta(minutes=1))
    assert await app.tx.read(portal.session_of, "h1", now + HOUR, HOUR) is not None
    # its end, whatever the touches
    assert await app.tx.read(portal.session_of, "h1", now + 12 * HOUR, 24 * HOUR) is None
    assert await app.tx.run(portal.end_session, "h1")
    assert await app.tx.read(portal.session_of, "h1", now, HOUR) is None


async def test_a_new_password_ends_every_session_of_the_user(app: App, clock: FrozenClock) -> None:
    await add_user(app, "jens@kunde.example", "Jens")
    await add_user(app, "mette@kunde.example", "Mette")
    jens, mette = await user_id(app, "jens@kunde.example"), await user_id(app, "mette@kunde.example")
    now = clock.now()
    for uid, token in ((jens, "a"), (jens, "b"), (mette, "c")):
        await app.tx.run(portal.start_session, uid, token, "password", now, now + HOUR)
    await app.tx.run(portal.set_password, jens, "$argon2id$x", now)
    assert await app.tx.read(portal.password_hash, jens) == "$argon2id$x"
    assert [await app.tx.read(portal.session_of, t, now, HOUR) is None for t in "abc"] == [True, True, False]
    await app.tx.run(portal.set_password, jens, "$argon2id$y", now)  # the upsert replaces
    assert await app.tx.read(portal.password_hash, jens) == "$argon2id$y"


# --- links -------------------------------------------------------------------------------------------


async def test_a_link_is_used_once_and_only_before_it_expires(app: App, clock: FrozenClock) -> None:
    now = clock.now()
    expires = now + timedelta(minutes=30)
    await app.tx.run(portal.create_link, "sel-1", "Ny@Borger.example", "register", "/sager/SAG-000001", now, expires)
    await app.tx.run(portal.create_link, "sel-2", "ny@borger.example", "register", None, now, expires)
    shown = await app.tx.read(portal.link_of, "sel-1", now)
    assert shown == portal.Link("ny@borger.example", "register", "/sager/SAG-000001")
    assert await app.tx.read(portal.link_of, "sel-1", now) == shown  # showing it does not use it
    assert await app.tx.run(portal.take_link, "sel-1", now) == shown
    assert await app.tx.run(portal.take_link, "sel-1", now) is None  # used
    assert await app.tx.read(portal.link_of, "sel-1", now) is None
    assert await app.tx.run(portal.take_link, "sel-2", expires) is None  # expired
    assert await app.tx.run(portal.take_link, "nothing", now) is None


async def test_two_uses_of_one_link_at_once_one_wins(app: App, clock: FrozenClock) -> None:
    now = clock.now()
    await app.tx.run(portal.create_link, "sel-race", "a@b.example", "reset", None, now, now + HOUR)
    got = await asyncio.gather(*(app.tx.run(portal.take_link, "sel-race", now) for _ in range(4)))
    assert sum(link is not None for link in got) == 1


async def test_a_proved_address_becomes_a_customer_and_a_known_one_stays_itself(app: App, clock: FrozenClock) -> None:
    await add_user(app, "post@kunde.example", "Fællespostkassen", "Kunde A/S", shared=True)
    made = await app.tx.run(portal.ensure_customer, "ny@borger.example", "Ny Borger", clock.now())
    assert (made.email, made.name, made.role, made.kind) == ("ny@borger.example", "Ny Borger", "customer", "person")
    known = await app.tx.run(portal.ensure_customer, "POST@kunde.example", "ignored", clock.now())
    assert (known.name, known.kind, known.organisation) == ("Fællespostkassen", "shared_mailbox", "Kunde A/S")
    nameless = await app.tx.run(portal.ensure_customer, "anne@borger.example", "  ", clock.now())
    assert nameless.name == "anne"


# --- attempt counters -----------------------------------------------------------------------------


async def test_attempts_past_the_free_ones_wait_twice_as_long_each_time(app: App, clock: FrozenClock) -> None:
    rule = portal.Throttle(free=3, quiet=timedelta(minutes=15), cap=timedelta(seconds=10))
    now = clock.now()
    for n in range(1, 4):
        assert await app.tx.run(portal.throttle_hit, "k", now, rule) == n
        assert await app.tx.read(portal.throttle_wait, ["k"], now) == 0
    waits = []
    for _ in range(5):
        await app.tx.run(portal.throttle_hit, "k", now, rule)
        waits.append(await app.tx.read(portal.throttle_wait, ["k", "other"], now))
    assert waits == [1, 2, 4, 8, 10]  # capped
    assert await app.tx.read(portal.throttle_wait, ["k"], now + timedelta(seconds=10)) == 0
    # a quiet spell starts the count over; clearing forgets it at once
    later = now + timedelta(minutes=16)
    assert await app.tx.run(portal.throttle_hit, "k", later, rule) == 1
    await app.tx.run(portal.throttle_clear, "k")
    assert await app.tx.run(portal.throttle_hit, "k", later, rule) == 1


async def test_attempts_counted_at_once_are_all_counted(app: App, clock: FrozenClock) -> None:
    rule = portal.Throttle(free=100)
    await asyncio.gather(*(app.tx.run(portal.throttle_hit, "busy", clock.now(), rule) for _ in range(10)))
    assert await app.tx.run(portal.throttle_hit, "busy", clock.now(), rule) == 11


async def test_purge_removes_what_has_ended(app: App, clock: FrozenClock) -> None:
    await add_user(app, "jens@kunde.example", "Jens")
    uid = await user_id(app, "jens@kunde.example")
    now = clock.now()
    await app.tx.run(portal.start_session, uid, "old", "password", now - 13 * HOUR, now - HOUR)
    await app.tx.run(portal.start_session, uid, "live", "password", now, now + HOUR)
    await app.tx.run(portal.create_link, "old-link", "a@b.example", "reset", None, now - 48 * HOUR, now - 47 * HOUR)
    await app.tx.run(portal.create_link, "new-link", "a@b.example", "reset", None, now, now + HOUR)
    await app.tx.run(portal.throttle_hit, "quiet", now - 48 * HOUR, portal.Throttle(free=5))
    await app.tx.run(portal.throttle_hit, "recent", now, portal.Throttle(free=5))
    assert await app.tx.run(portal.purge, now) == 3
    assert await app.tx.read(portal.session_of, "live", now, HOUR) is not None
    assert await app.tx.read(portal.link_of, "new-link", now) is not None


# --- the user's cases and nothing else ----------------------------------------------------------------


async def test_mine_sager_lists_own_and_shared_cases_filtered_and_paged(app: App, clock: FrozenClock) -> None:
    await add_user(app, "jens@kunde.example", "Jens", "Kunde A/S")
    await add_user(app, "mette@kunde.example", "Mette", "Kunde A/S")
    await add_user(app, "agent@sa.example", "Anne", agent=True)
    numbers = []
    for i in range(5):
        clock.advance(minutes=1)
        numbers.append(await new_case(app, "jens@kunde.example", f"Sag {i}"))
    clock.advance(minutes=1)
    metters = await new_case(app, "mette@kunde.example", "Mettes egen")
    clock.advance(minutes=1)
    await lifecycle.share(app.desk, metters, "jens@kunde.example", "mette@kunde.example")
    clock.advance(minutes=1)
    await lifecycle.set_status(app.desk, numbers[0], Status.UDFOERT, "agent@sa.example")
    jens = await user_id(app, "jens@kunde.example")

    rows, total = await app.tx.read(portal_cases.my_cases, jens, "active", 25, 0)
    assert total == 5 and [r.number for r in rows] == [metters, *reversed(numbers[1:])]  # newest change first
    rows, total = await app.tx.read(portal_cases.my_cases, jens, "done", 25, 0)
    assert (total, [r.number for r in rows], rows[0].status) == (1, [numbers[0]], "udfoert")
    rows, total = await app.tx.read(portal_cases.my_cases, jens, "all", 2, 2)
    assert total == 6 and [r.number for r in rows] == [numbers[4], numbers[3]]
    assert await app.tx.read(portal_cases.my_cases, jens, "all", 25, 50) == ([], 6)  # past the last page
    mette = await user_id(app, "mette@kunde.example")
    rows, total = await app.tx.read(portal_cases.my_cases, mette, "all", 25, 0)
    assert [r.number for r in rows] == [metters]


async def test_a_case_is_found_only_for_its_requester_and_parties(app: App) -> None:
    await add_user(app, "jens@kunde.example", "Jens", "Kunde A/S")
    await add_user(app, "mette@kunde.example", "Mette", "Kunde A/S")
    await add_user(app, "ole@andet.example", "Ole", "Andet A/S")
    number = await new_case(app, "jens@kunde.example")
    jens, mette, ole = [await user_id(app, e) for e in ("jens@kunde.example", "mette@kunde.example",
                                                         "ole@andet.example")]
    head = await app.tx.read(portal_cases.member_case, number, jens)
    assert head is not None and (head.requester_email, head.organisation) == ("jens@kunde.example", "Kunde A/S")
    assert await app.tx.read(portal_cases.member_case, number.lower(), jens) == head
    assert await app.tx.read(portal_cases.member_case, number, mette) is None
    assert await app.tx.read(portal_cases.member_case, number, ole) is None
    assert await app.tx.read(portal_cases.member_case, "SAG-999999", jens) is None
    assert await app.tx.read(portal_cases.member_case_page, number, ole) is None
    await lifecycle.share(app.desk, number, "mette@kunde.example", "jens@kunde.example")
    assert await app.tx.read(portal_cases.member_case, number, mette) is not None
    page = await app.tx.read(portal_cases.member_case_page, number, mette)
    assert page is not None and page.head == head and [p.email for p in page.parties] == ["mette@kunde.example"]


async def test_the_case_page_shows_public_comments_only_and_their_files(app: App) -> None:
    await add_user(app, "jens@kunde.example", "Jens", "Kunde A/S")
    await add_user(app, "agent@sa.example", "Anne Agent", agent=True)
    _, result = await app.ingest_now(IncomingMail(build_mail(
        sender="jens@kunde.example", attachments=[("bilag.pdf", b"%PDF-1.4", "application/pdf")]), "t", None, (ADDRESS,)))
    assert result is not None and result.case
    number = result.case
    await lifecycle.note(app.desk, number, "Intern: kunden er sur", "agent@sa.example")
    await lifecycle.reply(app.desk, number, "Vi kigger på det", "agent@sa.example",
                          [lifecycle.NewAttachment("svar.txt", "text/plain", b"svar")])
    jens = await user_id(app, "jens@kunde.example")
    head = await app.tx.read(portal_cases.member_case, number, jens)
    assert head is not None
    page = await app.tx.read(portal_cases.case_page, head)
    assert [c.by_agent for c in page.comments] == [False, True]
    assert all("Intern" not in c.text for c in page.comments)
    assert page.comments[1].author_name == "Anne Agent"
    [mine], [answer] = page.comments[0].files, page.comments[1].files
    assert (mine.name, answer.name) == ("bilag.pdf", "svar.txt")
    assert [h.to_status for h in page.history] == ["registreret"]
    got = await app.tx.read(portal_cases.download, head.id, answer.id)
    assert got is not None and got.name == "svar.txt"
    assert await app.tx.read(portal_cases.download, head.id + 1000, answer.id) is None  # another case's id


async def test_people_are_customers_of_the_organisation_only(app: App) -> None:
    await add_user(app, "jens@kunde.example", "Jens", "Kunde A/S")
    await add_user(app, "mette@kunde.example", "Mette", "Kunde A/S")
    await add_user(app, "post@kunde.example", "Postkassen", "Kunde A/S", shared=True)
    await add_user(app, "ole@andet.example", "Ole", "Andet A/S")
    await add_user(app, "agent@kunde.example", "Agent i firmaet", "Kunde A/S", agent=True)
    jens = await app.tx.read(portal.user_by_email, "jens@kunde.example")
    assert jens is not None and jens.organisation_id is not None
    found = await app.tx.read(portal_cases.people, jens.organisation_id,
                              ["POST@kunde.example", "ole@andet.example", "agent@kunde.example", "mette@kunde.example",
                               "nobody@kunde.example"])
    assert [p.email for p in found] == ["post@kunde.example", "mette@kunde.example"]
