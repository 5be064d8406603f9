"""The mail in hand is bound to every log line once (gateway/logs.py `bound`, issue 18): its
lines through the pipeline carry its inbound id and case number, and the next mail's never do."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest

from gateway.app import App
from gateway.logs import JsonFormatter, TextFormatter, bound, current
from store.inbox import IncomingMail
from tests.conftest import ADDRESS, add_user, build_mail, worker_of


class Lines(logging.Handler):
    """The lines as the daemon writes them: formatted where they are logged."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.setFormatter(JsonFormatter())
        self.lines: list[dict[str, Any]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(json.loads(self.format(record)))


@pytest.fixture
def lines() -> Iterator[Lines]:
    handler, root = Lines(), logging.getLogger("gateway")
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        yield handler
    finally:
        root.removeHandler(handler)
        root.setLevel(level)


def _record(**extra: Any) -> logging.LogRecord:
    return logging.getLogger("gateway.test").makeRecord(
        "gateway.test", logging.INFO, __file__, 1, "mail.processed", (), None, extra=extra)


def test_a_binding_nests_ends_with_its_block_and_yields_to_a_calls_own_fields() -> None:
    with bound(inbound_id=7):
        with bound(case="SAG-000001"):
            assert current() == {"inbound_id": 7, "case": "SAG-000001"}
            inside, own = _record(), _record(case="SAG-000009")
        assert current() == {"inbound_id": 7}
    outside = _record()
    assert current() == {}
    entry = json.loads(JsonFormatter().format(inside))  # formatted after the block: stamped when made
    assert (entry["inbound_id"], entry["case"]) == (7, "SAG-000001") and "gateway_bound" not in entry
    assert (inside.inbound_id, inside.case) == (7, "SAG-000001")  # type: ignore[attr-defined]
    assert json.loads(JsonFormatter().format(own))["case"] == "SAG-000009"  # the call's own field wins
    assert "inbound_id=7" in TextFormatter().format(inside)
    assert "inbound_id" not in json.loads(JsonFormatter().format(outside))
    assert not hasattr(outside, "inbound_id")


def test_a_binding_is_not_seen_by_other_tasks() -> None:
    async def story() -> None:
        seen: dict[str, dict[str, Any]] = {}

        async def mail(inbound_id: int) -> None:
            with bound(inbound_id=inbound_id):
                await asyncio.sleep(0.01)  # the other mail's task runs meanwhile
                seen[str(inbound_id)] = current()

        await asyncio.gather(mail(1), mail(2))
        assert seen == {"1": {"inbound_id": 1}, "2": {"inbound_id": 2}} and current() == {}

    asyncio.run(story())


async def test_each_mails_lines_carry_its_inbound_id_and_case_and_no_others(app: App, lines: Lines) -> None:
    await add_user(app, "jens@borger.example")
    await add_user(app, "mette@borger.example")
    ids = [(await app.accept(IncomingMail(build_mail(sender, subject=f"Sag {i}"), "smtp", sender, (ADDRESS,))))
           .inbound_id for i, sender in enumerate(("jens@borger.example", "mette@borger.example"))]
    results = await app.worker.run_once()
    assert await app.sender.run_once() == 2
    assert current() == {}

    cases = {r.inbound_id: r.case for r in results}
    assert sorted(cases) == sorted(ids) and all(cases.values()) and len(set(cases.values())) == 2
    processed = [line for line in lines.lines if line["event"] == "mail.processed"]
    assert sorted((line["inbound_id"], line["case"]) for line in processed) == sorted(cases.items())
    sent = [line for line in lines.lines if line["event"] == "notify.sent"]
    assert sorted(line["case"] for line in sent) == sorted(cases.values())
    assert all("outbox_id" in line and "inbound_id" not in line for line in sent)  # nothing left over
    # Every line that names a mail or a case names one and only its own: none carries the
    # other mail's id beside its case, none a binding that outlived its mail.
    for line in lines.lines:
        if "inbound_id" in line and line.get("case"):
            assert cases[line["inbound_id"]] == line["case"], line


async def test_a_failing_mails_lines_name_it_and_the_next_mails_do_not(app: App, lines: Lines) -> None:
    """A group that fails is retried mail by mail (`_process`): the failure's lines and the
    good mails' each name their own mail."""
    from gateway.pipeline.plan import make_plan

    def poisoned(parsed: Any, *args: Any, **kwargs: Any) -> Any:
        if "POISON" in parsed.subject:
            raise RuntimeError("this mail breaks the plan")
        return make_plan(parsed, *args, **kwargs)

    await add_user(app, "jens@borger.example")
    raws = [build_mail("jens@borger.example", subject=s) for s in ("Først", "POISON", "Sidst")]
    ids = [(await app.accept(IncomingMail(raw, "smtp", "jens@borger.example", (ADDRESS,)))).inbound_id
           for raw in raws]
    results = await worker_of(app, planner=poisoned).run_once()
    assert current() == {}
    events = [(line["event"], line.get("inbound_id"), line.get("case")) for line in lines.lines
              if line["event"].startswith("mail.")]
    cases = {r.inbound_id: r.case for r in results}
    assert ("mail.failed", ids[1], None) in events and ("mail.retry", ids[1], None) in events
    assert [e for e in events if e[0] == "mail.processed"] == [
        ("mail.processed", ids[0], cases[ids[0]]), ("mail.processed", ids[2], cases[ids[2]])]
    assert all(e[1] in ids for e in events) and cases[ids[0]] and cases[ids[2]]
