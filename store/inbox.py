"""The durable inbox (rules §4): raw bytes are committed here before any edge acknowledges.

States: pending → processing (claimed with a lease) → done | pending again (attempts < max)
| quarantined. A claim whose lease ran out (its node died) is taken back by the next claim.
The hot path (insert, claim) is SQLAlchemy Core, not ORM sessions (docs/benchmarks.md).

Dedup key: SHA-256 over the header block minus trace headers that relays and stores add, plus
the body with line endings normalised. The same mail by SMTP and IMAP, or delivered twice,
has one key; the same Message-ID with other content (pre-emption, catalogue 34) does not.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import cache, partial
from typing import Any, Protocol

from sqlalchemy import and_, bindparam, case, func, insert, or_, select, text, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.orm import Session

from gateway.errors import StoreUnavailable
from store.faults import store_errors
from store.models import IN_ID_ORDER, INBOX_DUE, InboundMail, InboundRaw

T = InboundMail.__table__  # type: ignore[attr-defined]
RAW = InboundRaw.__table__  # type: ignore[attr-defined]

_TRACE = re.compile(
    rb"^(received|return-path|delivered-to|x-original-to|authentication-results|arc-[a-z-]+|"
    rb"x-gateway-[a-z-]+|x-spam-[a-z-]+|status|x-status|x-uid|x-keywords|content-length|lines|"
    rb"x-rcpt-to|x-envelope-[a-z-]+)\s*:", re.IGNORECASE)
_MSGID = re.compile(rb"^message-id\s*:\s*(<[^<>\s]{1,500}>)", re.IGNORECASE | re.MULTILINE)


@dataclass(frozen=True, slots=True)
class Accepted:
    inbound_id: int
    duplicate: bool


@dataclass(frozen=True, slots=True)
class IncomingMail:
    raw: bytes
    source: str
    envelope_from: str | None = None
    envelope_to: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class ClaimedMail:
    """A claimed inbox row, without its raw bytes (`read_raw` fetches them when they are parsed)."""

    id: int
    source: str
    envelope_from: str | None
    envelope_to: tuple[str, ...]
    attempts: int
    size: int = 0  # of the raw bytes


@dataclass(frozen=True)
class Claim:
    """Who holds an inbox row: the worker's name and the claim's attempt number (each claim adds
    one, so an old holder's attempt never matches again: a fencing token)."""

    holder: str
    attempt: int

    @property
    def params(self) -> dict[str, Any]:
        return {"holder": self.holder, "attempt": self.attempt}


# The row is still held by the claim whose `params` are bound: a write with this in its WHERE
# changes nothing once the lease ran out and another worker claimed the mail.
CLAIM_HOLDS = (T.c.state == "processing", T.c.claimed_by == bindparam("holder"), T.c.attempts == bindparam("attempt"))


def dedup_key(raw: bytes) -> str:
    """SHA-256 over the headers minus trace headers, then the body, without carriage returns
    (a mail with CRLF line ends and the same with LF have one key).

    The body is hashed in chunks, so a 35 MB mail is never copied whole. Dropping every CR is
    one pass, `bytes.replace(b"\r", b"")`: 2.8 µs for 20 KB against 11.7 µs for
    `bytes.translate(None, b"\r")` (the same bytes) and more for CRLF by LF; this key is
    computed on the listener's path for every mail.
    """
    start = len(raw) - len(raw.lstrip(b"\r\n")) if raw[:1] in (b"\r", b"\n") else 0
    crlf = raw.find(b"\r\n\r\n", start)
    lf = raw.find(b"\n\n", start, crlf + 1 if crlf >= 0 else len(raw))  # only one before it counts
    ends = [i for i in (crlf, lf) if i >= 0]
    split = min(ends) if ends else len(raw)
    head = raw[start:split].replace(b"\r", b"")
    kept: list[bytes] = []
    skipping = False
    for line in head.split(b"\n"):
        if line[:1] in (b" ", b"\t"):
            if not skipping:
                kept.append(line)
            continue
        skipping = bool(_TRACE.match(line))
        if not skipping:
            kept.append(line)
    digest = hashlib.sha256(b"\n".join(kept))
    end = len(raw)
    while end > split and raw[end - 1:end] in (b"\r", b"\n"):
        end -= 1  # trailing line ends do not make another mail
    if end > split:
        digest.update(b"\n\n")
        body_start = split + (4 if raw[split:split + 4] == b"\r\n\r\n" else 2)
        for i in range(body_start, end, _CHUNK):
            digest.update(raw[i:min(end, i + _CHUNK)].replace(b"\r", b""))
    return digest.hexdigest()


_CHUNK = 1 << 20


def header_end(raw: bytes, limit: int) -> int | None:
    """Where the first blank line (`\\r?\\n\\r?\\n`) of `raw[:limit]` starts; None without one.

    The answer of that regular expression, found with `bytes.find`: the regex tried a match
    at every byte of the header, and a plain find for the LF form
    scans a whole CRLF body. The first CRLF CRLF, cheap to find, bounds the other searches.
    """
    stop = min(limit, len(raw))
    crlf = raw.find(b"\r\n\r\n", 0, stop)
    bound = crlf + 4 if crlf >= 0 else stop
    lf = raw.find(b"\n\n", 0, bound)
    mixed = raw.find(b"\n\r\n", 0, lf + 2 if lf >= 0 else bound)  # counts only if it starts before lf
    found = [i for i in (lf, mixed) if i >= 0]
    if not found:
        return None
    first = min(found)  # the first LF of the blank line; a CR before it belongs to the match
    return first - 1 if first > 0 and raw[first - 1] == 13 else first


def message_id_of(raw: bytes) -> str | None:
    end = header_end(raw, 262144)  # CRLF or LF: never read a body line as a header
    head = raw[: end if end is not None else 262144]
    match = _MSGID.search(head)
    return match.group(1).decode("ascii", "replace") if match else None


def row_of(mail: IncomingMail, now: datetime) -> dict[str, Any]:
    return {
        "received_at": now, "source": mail.source[:100],
        "envelope_from": (mail.envelope_from or "")[:320] or None,
        "envelope_to": list(mail.envelope_to)[:100], "raw": mail.raw, "size": len(mail.raw),
        "sha256": hashlib.sha256(mail.raw).hexdigest(), "message_id": message_id_of(mail.raw),
        "dedup_key": dedup_key(mail.raw), "state": "pending", "attempts": 0,
    }


@cache
def insert_statement(dialect: str) -> Any:
    module = postgresql if dialect == "postgresql" else sqlite
    return module.insert(T).on_conflict_do_nothing(index_elements=["dedup_key"]).returning(T.c.id, T.c.dedup_key)


def insert_batch(conn: Connection, rows: list[dict[str, Any]]) -> list[Accepted]:
    """Insert a batch of `row_of` rows in the caller's transaction; one `Accepted` per row, in order.

    One multi-row INSERT … ON CONFLICT DO NOTHING (a statement per mail costs more than the
    SMTP session that brought it). A key it did not insert already existed, or came twice in
    this batch: a duplicate. Synchronous, so an async engine runs it with `run_sync` and the
    SQLite writer of the daemon on its own thread.
    """
    first = first_of_each_key(rows)
    raws = {row["dedup_key"]: row["raw"] for row in first}
    heads = [{k: v for k, v in row.items() if k != "raw"} for row in first]
    stmt = insert_statement(conn.dialect.name)
    # A dict (one row) or a list (many): either way the statement compiled once is reused.
    returned = conn.execute(stmt, heads if len(heads) > 1 else heads[0]).all()
    ids = {key: int(new_id) for new_id, key in returned}
    if returned:
        conn.execute(insert(RAW), [{"inbound_id": int(new_id), "raw": raws[key]} for new_id, key in returned])
    missing = [row["dedup_key"] for row in first if row["dedup_key"] not in ids]
    if missing:
        found = conn.execute(select(T.c.id, T.c.dedup_key).where(T.c.dedup_key.in_(missing)))
        ids.update({key: int(old_id) for old_id, key in found})
    return accepted_in_order(rows, ids, {key for _, key in returned})


def first_of_each_key(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The batch without the mails it holds twice (the first copy stays)."""
    return list({row["dedup_key"]: row for row in reversed(rows)}.values())[::-1]


def accepted_in_order(rows: list[dict[str, Any]], ids: dict[str, int], fresh: set[str]) -> list[Accepted]:
    """One `Accepted` per row: new for the first copy of a key this batch inserted, else a
    duplicate (stored before, or twice in this batch)."""
    fresh = set(fresh)
    result = []
    for row in rows:
        key = row["dedup_key"]
        result.append(Accepted(ids[key], key not in fresh))
        fresh.discard(key)
    return result


_RAW = select(RAW.c.raw).where(RAW.c.inbound_id == bindparam("id"))


def read_raw(conn: Connection, inbound_id: int) -> bytes:
    return bytes(conn.execute(_RAW, {"id": inbound_id}).scalar() or b"")


def read_raws(conn: Connection, inbound_ids: Sequence[int]) -> dict[int, bytes]:
    """The raw bytes of several (small) mails in one SELECT."""
    rows = conn.execute(_RAWS, {"ids": list(inbound_ids)})
    return {int(inbound_id): bytes(raw or b"") for inbound_id, raw in rows}


_RAWS = select(RAW.c.inbound_id, RAW.c.raw).where(RAW.c.inbound_id.in_(bindparam("ids", expanding=True)))


def claim_mails(db: Connection | Session, limit: int, holder: str, now: datetime, lease_s: float,
                only_id: int | None = None) -> list[ClaimedMail]:
    """Take up to `limit` pending (or abandoned) mails, oldest first, under a lease. In a
    transaction of its own (on PostgreSQL it changes how the rest of it is planned)."""
    conn = db.connection() if isinstance(db, Session) else db
    # `claimed_until` of a pending mail is when a failed one may be tried again
    due = or_(and_(T.c.state == "pending", or_(T.c.claimed_until.is_(None), T.c.claimed_until <= now)),
              and_(T.c.state == "processing", T.c.claimed_until < now))
    pick = select(T.c.id).where(text(INBOX_DUE), due).order_by(T.c.id).limit(limit)
    if only_id is not None:
        pick = pick.where(T.c.id == only_id)
    if conn.dialect.name == "postgresql":
        conn.exec_driver_sql(IN_ID_ORDER)
        pick = pick.with_for_update(skip_locked=True)
    stmt = (update(T).where(T.c.id.in_(pick.scalar_subquery()))
            .values(state="processing", claimed_until=now + timedelta(seconds=lease_s),
                    claimed_by=holder[:100], attempts=T.c.attempts + 1)
            .returning(T.c.id, T.c.source, T.c.envelope_from, T.c.envelope_to, T.c.attempts, T.c.size))
    rows = sorted(conn.execute(stmt).all(), key=lambda r: r.id)
    # The raw bytes are read one mail at a time, when it is parsed (`read_raw`): RETURNING
    # them from the UPDATE makes SQLite buffer every claimed row, several 35 MB mails at once.
    return [ClaimedMail(r.id, r.source, r.envelope_from, tuple(r.envelope_to or ()), r.attempts, r.size or 0)
            for r in rows]


class Inbox:
    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def accept(self, mail: IncomingMail, now: datetime) -> Accepted:
        return (await self.accept_many([mail], now))[0]

    async def accept_many(self, mails: Sequence[IncomingMail], now: datetime) -> list[Accepted]:
        """Commit many mails in one durable transaction (group commit)."""
        rows = [row_of(mail, now) for mail in mails]
        try:
            async with self._engine.begin() as conn:
                return await conn.run_sync(insert_batch, rows)
        except (OperationalError, DBAPIError, OSError) as exc:
            raise StoreUnavailable(f"inbox commit failed: {type(exc).__name__}") from exc

    async def failed(self, inbound_id: int, error: str, attempts: int, max_attempts: int,
                     now: datetime, retry_delay_s: float = 0.0, claim: Claim | None = None) -> str:
        """Record a processing failure: back to pending, not to be claimed again before
        `retry_delay_s` × 2^(tries − 1) (at most an hour) has passed; or quarantined after the
        last try (catalogue 27). With `claim`, only while it holds: "lost" when another
        worker has taken the mail since."""
        state = "quarantined" if attempts >= max_attempts else "pending"
        delay = min(retry_delay_s * 2 ** max(attempts - 1, 0), 3600.0)
        not_before = now + timedelta(seconds=delay) if state == "pending" and delay > 0 else None
        values: dict[str, Any] = {"state": state, "last_error": error[:2000], "claimed_until": not_before}
        if state == "quarantined":
            values.update(outcome="quarantined", reason=f"processing failed {attempts} times: {error[:500]}",
                          processed_at=now)
        stmt = update(T).where(T.c.id == inbound_id, *(CLAIM_HOLDS if claim else ())).values(**values)
        with store_errors("inbox"):
            async with self._engine.begin() as conn:
                done = await conn.execute(stmt, claim.params if claim else {})
        return state if done.rowcount == 1 else "lost"

    async def release(self, ids: Sequence[int], holder: str) -> None:
        """Give back claims not started (graceful shutdown), without counting an attempt; only
        those `holder` still holds."""
        if not ids:
            return
        with store_errors("inbox"):
            async with self._engine.begin() as conn:
                await conn.execute(update(T).where(T.c.id.in_(list(ids)), T.c.state == "processing",
                                                   T.c.claimed_by == holder[:100])
                                   .values(state="pending", claimed_until=None, attempts=T.c.attempts - 1))

    async def release_stranded(self, holder: str, keep: Sequence[int] = ()) -> int:
        """Give back every claim `holder` holds but `keep` (the mails in the worker's hands),
        without counting a try: claims whose work a store error cut off, or whose claim
        committed though its answer was lost."""
        cond = [T.c.state == "processing", T.c.claimed_by == holder[:100]]
        if keep:
            cond.append(T.c.id.not_in(list(keep)))
        with store_errors("inbox"):
            async with self._engine.begin() as conn:
                done = await conn.execute(update(T).where(*cond).values(
                    state="pending", claimed_until=None,
                    attempts=case((T.c.attempts > 0, T.c.attempts - 1), else_=0)))
        return int(done.rowcount or 0)

    async def reprocess(self, inbound_id: int | None = None, quarantined: bool = False) -> int:
        """Put mails back in the queue (`gateway reprocess ID|--quarantined`)."""
        cond = T.c.id == inbound_id if inbound_id is not None else T.c.state == "quarantined"
        cond = cond & (T.c.state != "expired")  # its raw bytes were deleted (retention, erasure)
        if inbound_id is None and not quarantined:
            return 0
        with store_errors("inbox"):
            async with self._engine.begin() as conn:
                result = await conn.execute(update(T).where(cond).values(
                    state="pending", attempts=0, claimed_until=None, outcome=None, processed_at=None))
        return int(result.rowcount or 0)

    async def depth(self) -> dict[str, int]:
        with store_errors("inbox"):
            async with self._engine.connect() as conn:
                rows = (await conn.execute(select(T.c.state, func.count()).group_by(T.c.state))).all()
        return {str(state): int(count) for state, count in rows}

    async def wait_for_store(self, attempts: int = 3) -> None:
        for i in range(attempts):
            try:
                async with self._engine.connect() as conn:
                    await conn.execute(select(1))
                return
            except (OperationalError, DBAPIError, OSError):
                await asyncio.sleep(0.2 * (i + 1))
        raise StoreUnavailable("the store does not answer")


class BatchStore(Protocol):
    async def accept_many(self, mails: Sequence[IncomingMail], now: datetime) -> list[Accepted]: ...


class GroupCommitter:
    """Share one durable commit between the mails that arrive together (docs/benchmarks.md).

    Each caller gets a future for its own `Accepted` (`submit`). A mail goes to the store at
    once when fewer than `in_flight` batches are there; otherwise it waits, and the mails that
    waited go together as the next batch the moment a batch is answered. So a lone mail is
    committed at once and a burst pays one fsync per batch. The daemon's SQLite writer process
    takes two batches: it hashes the next while it commits the one before.

    No task of its own: everything happens in `submit` and in the callbacks of the answers. On
    a busy event loop every await between the store's answer and the 250 is one more turn of
    the loop (with the writer process's `submit_many`, one turn from its reply to the caller).
    """

    def __init__(self, inbox: BatchStore, now: Any, max_batch: int = 64, in_flight: int = 1) -> None:
        self._inbox = inbox
        self._submit: Callable[[list[IncomingMail], datetime], asyncio.Future[list[Accepted]]] | None = getattr(
            inbox, "submit_many", None)  # a store that answers by future (store/writer.py)
        self._now = now
        self._max_batch = max_batch
        self._free = in_flight
        self._waiting: deque[tuple[IncomingMail, asyncio.Future[Accepted]]] = deque()
        self._answers: set[asyncio.Future[list[Accepted]]] = set()

    def submit(self, mail: IncomingMail) -> asyncio.Future[Accepted]:
        """The answer for `mail`: its `Accepted`, or the store's failure (451)."""
        future: asyncio.Future[Accepted] = asyncio.get_running_loop().create_future()
        self._waiting.append((mail, future))
        self._dispatch()
        return future

    async def accept(self, mail: IncomingMail) -> Accepted:
        return await self.submit(mail)

    def _dispatch(self) -> None:
        while self._free > 0 and self._waiting:
            live: list[tuple[IncomingMail, asyncio.Future[Accepted]]] = []
            while self._waiting and len(live) < self._max_batch:
                mail, future = self._waiting.popleft()
                if not future.done():  # its caller left (a lost connection): no 250 is owed
                    live.append((mail, future))
            if not live:
                return
            self._free -= 1
            mails = [m for m, _ in live]
            try:
                answer = (self._submit(mails, self._now()) if self._submit is not None
                          else asyncio.ensure_future(self._inbox.accept_many(mails, self._now())))
            except Exception as exc:
                answer = asyncio.get_running_loop().create_future()
                answer.set_exception(exc)
            self._answers.add(answer)
            answer.add_done_callback(partial(self._settle, live))

    def _settle(self, live: list[tuple[IncomingMail, asyncio.Future[Accepted]]],
                answer: asyncio.Future[list[Accepted]]) -> None:
        self._answers.discard(answer)
        self._free += 1
        failure = StoreUnavailable("the inbox commit was cut off") if answer.cancelled() else answer.exception()
        results = answer.result() if failure is None else []
        if failure is None and len(results) != len(live):
            failure = StoreUnavailable(f"the store answered {len(results)} of {len(live)} mails")
        for i, (_, future) in enumerate(live):
            if future.done():
                continue
            if failure is not None:  # every waiter of the batch gets it (451)
                future.set_exception(failure)
            else:
                future.set_result(results[i])
        self._dispatch()

    async def close(self) -> None:
        """Cut off what is in flight; the waiting callers get StoreUnavailable (451)."""
        while self._waiting:
            _, future = self._waiting.popleft()
            if not future.done():
                future.set_exception(StoreUnavailable("the gateway is stopping"))
        for answer in list(self._answers):
            answer.cancel()
