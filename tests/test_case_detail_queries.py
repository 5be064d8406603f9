"""A case's detail (the API's `GET /cases/{number}`, `gateway cases show`) reads its comments,
their authors and their attachments in a fixed number of queries, however many comments the
case has (it was two queries a comment: ~400 for a case of 200)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import event

from gateway.app import App
from gateway.model import CommentDraft, Source, StoredAttachment
from store import queries, writes
from store.transact import run_in
from tests.conftest import add_user, detail

AGENT, JENS = "anne@sa.example", "jens@kunde.example"


@contextmanager
def statements(app: App) -> Iterator[list[str]]:
    seen: list[str] = []

    def count(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        seen.append(statement)

    event.listen(app.engine.sync_engine, "before_cursor_execute", count)
    try:
        yield seen
    finally:
        event.remove(app.engine.sync_engine, "before_cursor_execute", count)


async def case_with(app: App, comments: int) -> str:
    async with app.sessions() as session, session.begin():
        jens = await run_in(session, queries.require_user, JENS)
        agent = await run_in(session, queries.require_user, AGENT)
        number = await run_in(session, writes.next_case_number, "SAG-", 6)
        await run_in(session, writes.create_case, number, "Faktura", queries.user_ref(jens), app.clock.now())
        case_id = await run_in(session, queries.case_id_by_number, number)
        for k in range(comments):
            files = (StoredAttachment(f"bilag-{k}.pdf", 100 + k, f"{k:064x}", "application/pdf"),) if k % 3 == 0 else ()
            draft = CommentDraft(f"kommentar {k}", f"kommentar {k}", None, files, public=k % 4 != 3)
            await run_in(session, writes.add_comment, case_id, (agent if k % 2 else jens).id, draft,
                         Source.API if k % 2 else Source.EMAIL, app.clock.now())
    return number


async def test_the_detail_reads_comments_in_a_fixed_number_of_queries(app: App) -> None:
    await add_user(app, JENS, "Jens Jensen", "Kunde A/S")
    await add_user(app, AGENT, "Anne Agent", agent=True)
    small, big = await case_with(app, 3), await case_with(app, 40)
    counts = {}
    for number in (small, big):
        for internal in (True, False):
            async with app.sessions() as session:
                with statements(app) as seen:
                    shown = await run_in(session, queries.case_detail, number, include_internal=internal)
            counts[number, internal] = len(seen)
    assert counts[small, True] == counts[big, True] == counts[small, False] == counts[big, False] <= 10, counts

    shown = await detail(app, big)
    assert [c["visible_text"] for c in shown["comments"]] == [f"kommentar {k}" for k in range(40)]
    assert [c["author"] for c in shown["comments"][:2]] == [JENS, AGENT]
    assert [c["public"] for c in shown["comments"][:4]] == [True, True, True, False]
    assert shown["comments"][0]["attachments"] == [
        {"id": shown["comments"][0]["attachments"][0]["id"], "name": "bilag-0.pdf", "size": 100,
         "sha256": f"{0:064x}", "content_type": "application/pdf"}]
    assert shown["comments"][1]["attachments"] == [] and len(shown["comments"][3]["attachments"]) == 1
    async with app.sessions() as session:
        public = await run_in(session, queries.case_detail, big, include_internal=False)
    assert [c["visible_text"] for c in public["comments"]] == [f"kommentar {k}" for k in range(40) if k % 4 != 3]
    assert all(c["public"] for c in public["comments"])
