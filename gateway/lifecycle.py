"""The case lifecycle (rules §3): the actions of agents and requesters.

The status rules are `gateway.rules`, which the mail path (`gateway.pipeline.plan`) asks too;
who may act on a case is checked here, for the CLI and the HTTP API alike. Each action is one
transaction that takes the case's write lock first, checks the rules, writes the change and its
history row, and queues the rules §7 notifications to the requester and every party except the
actor — all or nothing. The timed jobs (rule 4) are in `gateway.jobs`.

Refusals are exceptions from `gateway.errors`: `NotFound` (unknown case or user), `Refused`
(the rules say no: illegal transition, outsider as share target), `InvalidInput` (the request
itself is malformed), and one defined here: `Forbidden` (this actor may not act on this case).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import mimetypes
import re
import unicodedata
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Any

from gateway import metrics, rules
from gateway.addresses import canonical
from gateway.clock import Clock
from gateway.errors import InvalidInput, NotFound, Refused
from gateway.model import CaseRef, CommentDraft, Event, Role, Source, Status, StoredAttachment, UserRef
from store import cases, outbox, users, writes
from store.blobs import BlobStore
from store.engine import OpenSession, Sessions
from store.transact import in_session, run_in, transaction

log = logging.getLogger("gateway.lifecycle")

MAX_TEXT = 100_000
MAX_ATTACHMENTS = 20
_NUMBER = re.compile(r"^[A-Za-z0-9-]{1,40}$")


class Forbidden(Refused):
    """The actor may not act on this case in this way (not a party, not an agent)."""


@dataclass(frozen=True)
class CaseDesk:
    """What the actions work with, built once by the root (`gateway.app`)."""

    sessions: Sessions
    blobs: BlobStore
    clock: Clock
    language: str  # `policy.language`: the notifications' language where the user has none
    message_id_domain: str
    max_attachment_bytes: int  # `smtp.max_message_size`: the size limit as for mail
    wake_sender: Callable[[], None]  # after the commit: send now rather than at the next poll



# --- input ----------------------------------------------------------------------------------------


def valid_number(number: str) -> bool:
    """Case numbers are short ASCII; anything else is no case, whatever the store would say."""
    return bool(_NUMBER.match(number or ""))


def utf8(value: str) -> str:
    """Text that can be stored: no lone surrogates (from JSON escapes or odd argv), no NUL."""
    return value.encode("utf-8", "replace").decode("utf-8").replace("\x00", "")


def parse_status(value: str) -> Status:
    status = rules.status_named(value)
    if status is None:
        raise InvalidInput(f"unknown status {value!r}; one of {rules.STATUS_WORDS}")
    return status


# --- attachments from the CLI or the API --------------------------------------------------------


@dataclass(frozen=True, slots=True)
class NewAttachment:
    name: str
    content_type: str
    data: bytes


def safe_name(name: str) -> str:
    """A file name without directories or control characters, bounded (rules §10)."""
    base = name.replace("\\", "/").rsplit("/", 1)[-1]
    base = "".join(ch for ch in base if unicodedata.category(ch)[0] != "C").strip().strip(".")
    return base[:255] or "attachment"


def read_attachments(paths: Sequence[str]) -> list[NewAttachment]:
    files = []
    for path in paths:
        try:
            data = Path(path).read_bytes()
        except OSError as exc:
            raise InvalidInput(f"cannot read {path}: {exc.strerror or exc}") from exc
        ctype = mimetypes.guess_type(path)[0] or "application/octet-stream"
        files.append(NewAttachment(Path(path).name, ctype, data))
    return files


async def _store_attachments(desk: CaseDesk, files: Sequence[NewAttachment]) -> tuple[StoredAttachment, ...]:
    if len(files) > MAX_ATTACHMENTS:
        raise InvalidInput(f"at most {MAX_ATTACHMENTS} attachments")
    limit = desk.max_attachment_bytes
    stored = []
    for f in files:
        if len(f.data) > limit:
            raise InvalidInput(f"attachment {safe_name(f.name)!r} is larger than {limit} bytes")
        sha = await asyncio.to_thread(desk.blobs.put, f.data)
        ctype = f.content_type if re.fullmatch(r"[\w.+-]{1,100}/[\w.+-]{1,100}", f.content_type or "") \
            else "application/octet-stream"
        stored.append(StoredAttachment(safe_name(f.name), len(f.data), sha, ctype))
    return tuple(stored)


def _text(value: str | None, what: str = "text", required: bool = True) -> str:
    text = utf8(value or "").strip()
    if required and not text:
        raise InvalidInput(f"{what} must not be empty")
    if len(text) > MAX_TEXT:
        raise InvalidInput(f"{what} is longer than {MAX_TEXT} characters")
    return text


# --- one transaction per action ------------------------------------------------------------------


@dataclass
class _Tx:
    """What an action works with: the session, the locked case (as it is now), the acting user,
    the time."""

    desk: CaseDesk
    session: OpenSession
    case: CaseRef
    actor: UserRef
    now: datetime
    via: str | None = None  # the API service the agent acts through, recorded beside them

    @property
    def is_agent(self) -> bool:
        return self.actor.role is Role.AGENT

    @property
    def admits_actor(self) -> bool:
        return self.case.admits(self.actor)

    async def notify(self, event: Event, context: dict[str, Any], only: UserRef | None = None) -> list[str]:
        return await run_in(self.session, cases.notify, self.case, event, context, self.now,
                            self.desk.language, self.desk.message_id_domain, self.actor.id, only)

    async def change_status(self, to: Status, reason: str | None, event: Event = Event.STATUS) -> list[str]:
        previous = self.case.status
        await run_in(self.session, cases.change_status, self.case, to, self.now, self.actor, reason, self.via)
        self.case = replace(self.case, status=to)
        return await self.notify(event, {"previous_status": previous.value, "actor_name": self.actor.name})


async def _user(session: OpenSession, email: str | None, role: str = "acting user") -> UserRef:
    if not email:
        raise InvalidInput(f"name the {role} (--as EMAIL on the command line, X-Acting-User in the API)")
    address = canonical(email)
    if address is None:
        raise InvalidInput(f"not a valid e-mail address: {email!r}")
    return await run_in(session, users.require, address)


@asynccontextmanager
async def _action(desk: CaseDesk, number: str, actor_email: str | None, name: str,
                  via: str | None = None) -> AsyncIterator[_Tx]:
    """One transaction that takes the case's write lock first (`cases.lock_case`)."""
    if not valid_number(number):
        raise NotFound(f"no case {number!r}")
    async with transaction(desk.sessions) as session:
        case = await run_in(session, cases.lock_case, number)
        actor = await _user(session, actor_email)
        yield _Tx(desk, session, case, actor, desk.clock.now(), via)
    metrics.record_action(name)
    desk.wake_sender()
    log.info("case.action", extra={"case": case.number, "action": name, "actor_id": actor.id, "via": via})


def _result(tx: _Tx, action: str, changed: bool, notifications: list[str], **extra: Any) -> dict[str, Any]:
    return {"case": tx.case.number, "action": action, "status": tx.case.status.value, "changed": changed,
            "notifications": notifications, **extra}


def _require_agent(tx: _Tx, what: str) -> None:
    if not tx.is_agent:
        raise Forbidden(f"only agents may {what}; {tx.actor.email} is not an agent")


def _refuse_closed(tx: _Tx) -> None:
    if rules.is_final(tx.case.status):
        raise Refused(f"{tx.case.number} is closed (lukket) and can never be changed; a new mail opens a new case")


# --- agents' actions ------------------------------------------------------------------------------


async def set_status(desk: CaseDesk, number: str, status: Status | str, actor: str | None,
                     reason: str | None = None, via: str | None = None) -> dict[str, Any]:
    target = status if isinstance(status, Status) else parse_status(status)
    reason = _text(reason, "reason", required=False) or None
    async with _action(desk, number, actor, "status", via) as tx:
        _require_agent(tx, "set a status")
        current = tx.case.status
        refusal = rules.agent_refusal(current, target, tx.case.assignee_id is not None)
        if refusal:
            raise Refused(f"{tx.case.number}: {current.value} → {target.value} refused: {refusal}")
        if current is target:
            return _result(tx, "status", False, [], previous_status=current.value)
        if target is Status.LUKKET:
            await run_in(tx.session, cases.set_close_reason, tx.case.id, reason)
        ids = await tx.change_status(target, reason)
        return _result(tx, "status", True, ids, previous_status=current.value)


async def assign(desk: CaseDesk, number: str, agent: str | None, actor: str | None,
                 via: str | None = None) -> dict[str, Any]:
    async with _action(desk, number, actor, "assign", via) as tx:
        _require_agent(tx, "assign cases")
        _refuse_closed(tx)
        assignee = await _user(tx.session, agent, "assignee")
        if assignee.role is not Role.AGENT:
            raise Refused(f"{assignee.email} is not an agent; cases are assigned to agents only")
        current = tx.case.status
        if current is Status.TILDELT and tx.case.assignee_id == assignee.id:
            return _result(tx, "assign", False, [], assignee=assignee.email)
        await run_in(tx.session, cases.assign, tx.case.id, assignee.id, tx.now)
        tx.case = replace(tx.case, assignee_id=assignee.id)
        ids: list[str] = []
        if current is not Status.TILDELT:
            ids = await tx.change_status(Status.TILDELT, f"assigned to {assignee.email}")
        return _result(tx, "assign", True, ids, assignee=assignee.email, previous_status=current.value)


async def reply(desk: CaseDesk, number: str, text: str | None, actor: str | None,
                attachments: Sequence[NewAttachment] = (), source: Source = Source.AGENT,
                via: str | None = None) -> dict[str, Any]:
    """A public answer: a comment the customer sees, and a `reply` mail to the parties."""
    body = _text(text)
    stored = await _store_attachments(desk, attachments)
    async with _action(desk, number, actor, "reply", via) as tx:
        _require_agent(tx, "reply")
        _refuse_closed(tx)
        await run_in(tx.session, writes.add_comment, tx.case.id, tx.actor.id, CommentDraft(body, body, None, stored),
                     source, tx.now, via=via)
        await run_in(tx.session, writes.touch_case, tx.case.id, tx.now)
        ids = await tx.notify(Event.REPLY, {"actor_name": tx.actor.name})
        return _result(tx, "reply", True, ids)


async def note(desk: CaseDesk, number: str, text: str | None, actor: str | None,
               source: Source = Source.AGENT, via: str | None = None) -> dict[str, Any]:
    """An internal note: kept on the case, never mailed, never shown to customers."""
    body = _text(text)
    async with _action(desk, number, actor, "note", via) as tx:
        _require_agent(tx, "write internal notes")
        draft = CommentDraft(body, body, None, (), public=False)
        await run_in(tx.session, writes.add_comment, tx.case.id, tx.actor.id, draft, source, tx.now, via=via)
        return _result(tx, "note", True, [])


# --- actions of agents and of the customer side ----------------------------------------------------


async def share(desk: CaseDesk, number: str, email: str | None, actor: str | None,
                via: str | None = None) -> dict[str, Any]:
    """Share with a user of the requester's own organisation (rules §1, §5); anyone else is refused."""
    async with _action(desk, number, actor, "share", via) as tx:
        if not tx.is_agent and not tx.admits_actor:
            raise Forbidden(f"{tx.actor.email} is not a party of {tx.case.number}")
        _refuse_closed(tx)
        target = await _share_target(tx, email)
        if not await run_in(tx.session, writes.add_party, tx.case.id, target.id, tx.now, tx.actor.id):
            return _result(tx, "share", False, [], party=target.email)
        await run_in(tx.session, writes.touch_case, tx.case.id, tx.now)
        ids = await tx.notify(Event.SHARED, {"actor_name": tx.actor.name}, only=target)
        return _result(tx, "share", True, ids, party=target.email)


async def _share_target(tx: _Tx, email: str | None) -> UserRef:
    address = canonical(email)
    if address is None:
        raise InvalidInput(f"not a valid e-mail address: {email!r}")
    organisation_id = tx.case.requester_org_id
    if organisation_id is None:
        raise Refused(f"the requester of {tx.case.number} belongs to no organisation, so the case cannot be shared")
    target = await run_in(tx.session, users.find, address)
    if target is None or target.organisation_id != organisation_id:
        org = await run_in(tx.session, users.organisation_name, organisation_id)
        raise Refused(f"{address} is not a user of {org or 'the requester’s organisation'}; "
                      "a case can be shared only with users of the requester's own organisation")
    if target.id == tx.case.requester_id:
        raise Refused(f"{address} is the requester of {tx.case.number}")
    return target


async def close(desk: CaseDesk, number: str, actor: str | None, reason: str | None = None,
                via: str | None = None) -> dict[str, Any]:
    """"Luk" (rule 5): the requester closes a case they regret; agents may close as well."""
    why = _text(reason, "reason", required=False) or None
    async with _action(desk, number, actor, "close", via) as tx:
        if not tx.is_agent and tx.actor.id != tx.case.requester_id:
            raise Forbidden(f"only the requester of {tx.case.number} (or an agent) may close it")
        current = tx.case.status
        refusal = rules.requester_close_refusal(current)
        if refusal:
            raise Refused(f"{tx.case.number}: {refusal}")
        await run_in(tx.session, cases.set_close_reason, tx.case.id, why)
        default = "closed by an agent" if tx.is_agent else "closed by the requester"
        ids = await tx.change_status(Status.LUKKET, why or default)
        return _result(tx, "close", True, ids, previous_status=current.value, reason=why)


async def comment(desk: CaseDesk, number: str, text: str | None, actor: str | None,
                  attachments: Sequence[NewAttachment] = (), source: Source = Source.API) -> dict[str, Any]:
    """The requester's (or a party's) comment from the portal side (its pages or the API); rules 1–2 apply."""
    body = _text(text, required=not attachments)
    stored = await _store_attachments(desk, attachments)
    async with _action(desk, number, actor, "comment") as tx:
        if not tx.admits_actor:
            raise Forbidden(f"{tx.actor.email} is not the requester or a party of {tx.case.number}")
        if rules.is_final(tx.case.status):
            raise Refused(f"{tx.case.number} is closed and can never be reopened; write a new case instead")
        await run_in(tx.session, writes.add_comment, tx.case.id, tx.actor.id, CommentDraft(body, body, None, stored),
                     source, tx.now)
        await run_in(tx.session, writes.touch_case, tx.case.id, tx.now)
        current = tx.case.status
        move = rules.after_answer(current, tx.case.assignee_id is not None)
        ids: list[str] = []
        if move is not None:
            ids = await tx.change_status(move.to, "reopened by the requester's comment" if move.reopens
                                         else "answer from the requester",
                                         Event.REOPENED if move.reopens else Event.STATUS)
        return _result(tx, "comment", True, ids, previous_status=current.value)


# --- users ---------------------------------------------------------------------------------------


async def search_users(desk: CaseDesk, text: str, org: str, limit: int = 50) -> list[dict[str, Any]]:
    """Users of one organisation whose name or address contains `text` (for sharing)."""
    return await in_session(desk.sessions, users.search, utf8(text or "").strip(), utf8(org or "").strip(), limit)


async def unbounce(desk: CaseDesk, email: str | None) -> dict[str, Any]:
    """The operator's word that mail to a user works again (`gateway users unbounce`,
    `POST /users/unbounce`): the mark goes, and the notifications held for it go out."""
    address = require_address(email)
    async with transaction(desk.sessions) as session:
        was = await run_in(session, writes.clear_bouncing, address)
        released = await run_in(session, outbox.release_bouncing, address, desk.clock.now())
    desk.wake_sender()
    log.info("user.unbounced", extra={"was_bouncing": was, "released": released})
    return {"email": address, "was_bouncing": was, "released": released}


def require_address(email: str | None) -> str:
    """The canonical form of an address given by an operator or agent, or InvalidInput."""
    address = canonical(email)
    if address is None:
        raise InvalidInput(f"not a valid e-mail address: {email!r}")
    return address


# --- the CLI -------------------------------------------------------------------------------------


async def run_cli_action(desk: CaseDesk, args: argparse.Namespace) -> dict[str, Any]:
    """`gateway cases status|assign|reply|note|share|close NUMBER … --as EMAIL`."""
    command, number, actor = args.cases_command, args.number, args.actor
    if not actor:
        raise Refused("name the acting user with --as EMAIL (or GATEWAY_ACTOR)")
    if command == "status":
        return await set_status(desk, number, args.status, actor, getattr(args, "reason", None))
    if command == "assign":
        return await assign(desk, number, args.agent, actor)
    if command == "reply":
        return await reply(desk, number, args.text, actor, read_attachments(getattr(args, "attach", []) or []))
    if command == "note":
        return await note(desk, number, args.text, actor)
    if command == "share":
        return await share(desk, number, args.email, actor)
    if command == "close":
        return await close(desk, number, actor, getattr(args, "reason", None))
    raise InvalidInput(f"unknown case action {command!r}")
