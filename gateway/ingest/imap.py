"""The IMAP edge (rules §4): raw bytes from configured mailboxes into the durable inbox.

Per account, one `AccountReader` coroutine and two connections, each with a thread of its
own: one fetches, the other moves (flags, deletes) what is committed. The threads do only
blocking IMAP I/O (`gateway.ingest.mailbox.Mailbox`, the seam around imapclient); the coroutine does the store, the
lease and the waiting, so neither the event loop nor the other accounts ever wait on a server.

A round: SELECT (UIDVALIDITY compared with `imap_folder_state`; a change means every stored
UID is void, so the folder is read again from the start and the inbox's dedup key makes the
repeats harmless) → UID SEARCH → FETCH RFC822.SIZE for all of them (too big: moved to
`Oversized`, never fetched) → in batches of up to 200: FETCH BODY.PEEK[] (flags untouched)
→ one commit for the batch → UID MOVE / flag / delete of the committed UIDs. The thread
fetches the next batch and moves the previous one while a batch is being committed. The
order per message is what makes it safe: a crash before its move means it is fetched again
and deduplicated. A message the store refuses while the store is otherwise working counts a
try; after `max_tries` it goes to `failed_folder`. Only UIDs are used, never sequence
numbers; folder names only go through the imapclient API (catalogue 100). The last fetch
time of each folder is kept in `imap_folder_state.last_fetch_at` for the metrics (store/imap_state.py).

Then IDLE when the server offers it (checked in short slices so `stop` is honoured within
about a second, re-issued every `poll_interval_s` with a scan in between, the polling
fallback), else a plain wait of `poll_interval_s`.

An account logs in by password or by OAuth2 (XOAUTH2 / OAUTHBEARER, gateway.ingest.oauth); the
accounts of one Entra app share one token source. A shared mailbox is an account whose username
is its address: each mail read from an account has that address as its recipient unless the
server wrote a Delivered-To (the reply token may be there).

Failures of the server (cannot connect, login refused, TLS, connection lost, folder missing)
become `ImapProblem` with plain words, translated once in `gateway.ingest.mailbox`. The reader then logs
one line, waits a capped exponential back-off with jitter and reconnects. A bad account never
stops the others, the worker or the SMTP listener. Certificates are always verified.

Several nodes on one database: an account is read under a lease (`job_lease`, name
`imap:<account>`) renewed while the reader runs; a node that finds another live holder waits.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import random
import secrets
import socket
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Any, TypeVar

from gateway.clock import Clock
from gateway.errors import ConfigError, TemporaryFailure
from gateway.ingest.mailbox import DONE_KEYWORD, ImapProblem, Mailbox
from gateway.ingest.oauth import TokenSource, token_sources
from gateway.logs import bound
from gateway.settings import ImapAccount, ImapSettings
from store.engine import Database
from store.imap_state import FolderState, load_state, save_state
from store.inbox import Accepted, IncomingMail, header_end
from store.lease import Lease, LeaseLost

log = logging.getLogger("gateway.imap")

OVERSIZED_FOLDER = "Oversized"
IDLE_SLICE_S = 0.5                  # how long one IDLE check blocks: bounds the stop latency
IDLE_MAX_S = 25 * 60.0              # RFC 2177: re-issue IDLE well within 29 minutes
SIZE_WINDOW = 1000                  # UIDs per FETCH RFC822.SIZE
BATCH_MESSAGES = 200                # messages per FETCH BODY.PEEK[] and per inbox commit
BATCH_BYTES = 16_000_000
LEASE_S = 30.0
LEASE_RETRY_S = 5.0

T = TypeVar("T")


@dataclass(frozen=True)
class ImapIntake:
    """What the IMAP readers work with, built once by the root (`gateway.app`)."""

    settings: ImapSettings  # the accounts and the back-off
    engine: Database  # the accounts' leases and what each remembers (`store.imap_state`)
    clock: Clock
    commit: Callable[[list[IncomingMail]], Awaitable[list[Accepted]]]  # raw bytes, durably, in one go
    wait_for_store: Callable[[int], Awaitable[None]]  # StoreUnavailable when it does not answer
    wake_worker: Callable[[], None]  # mails were committed


def advance(last_uid: int, scanned: Sequence[int], done: set[int]) -> int:
    """The highest UID below which every scanned message is done (flag mode resumes there)."""
    for uid in sorted(scanned):
        if uid not in done:
            break
        last_uid = max(last_uid, uid)
    return last_uid


def batches(uids: Sequence[int], sizes: dict[int, int], max_count: int = BATCH_MESSAGES,
            max_bytes: int = BATCH_BYTES) -> Iterator[list[int]]:
    """Consecutive groups bounded by count and bytes (a single big message is its own group)."""
    batch: list[int] = []
    total = 0
    for uid in uids:
        if batch and (len(batch) >= max_count or total + sizes[uid] > max_bytes):
            yield batch
            batch, total = [], 0
        batch.append(uid)
        total += sizes[uid]
    if batch:
        yield batch


def envelope_to_of(raw: bytes) -> tuple[str, ...]:
    """The topmost Delivered-To, written by the mailbox's own server (the reply token lives there)."""
    end = header_end(raw, 65536)
    head = raw[: end if end is not None else 65536]
    for line in head.splitlines():
        if line[:13].lower() == b"delivered-to:":
            value = line[13:].strip().decode("ascii", "replace").strip("<>")
            return (value,) if value.count("@") == 1 and len(value) <= 320 else ()
    return ()


# -- the lease --------------------------------------------------------------------------------

class Backoff:
    """Capped exponential delays with jitter, so many gateways do not reconnect in step."""

    def __init__(self, initial_s: float, max_s: float, rng: Callable[[], float] = random.random) -> None:
        self._initial, self._max, self._rng = initial_s, max_s, rng
        self.step = 0

    def next(self) -> float:
        delay = min(self._max, self._initial * 2 ** min(self.step, 30))
        self.step += 1
        return delay * (0.5 + 0.5 * self._rng())

    def reset(self) -> None:
        self.step = 0


async def _sleep_until(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), timeout=seconds)


# -- one account ------------------------------------------------------------------------------

class AccountReader:
    """Reads one account until `stop`: lease → connect → scan → wait → scan …, back-off on trouble."""

    lease_retry_s = LEASE_RETRY_S

    def __init__(self, intake: ImapIntake, account: ImapAccount, holder: str, tokens: TokenSource | None = None) -> None:
        self.intake = intake
        self.account = account
        self.box = Mailbox(account, tokens=tokens)
        # A second connection, with a thread of its own, moves (flags, deletes) what is committed,
        # while the first one fetches the next batch: on one connection the two took turns.
        self.mover = Mailbox(account, tokens=tokens)
        self.lease = Lease(intake.engine, f"imap:{account.name}", holder, intake.clock.now, LEASE_S)
        self.backoff = Backoff(intake.settings.backoff_initial_s, intake.settings.backoff_max_s)
        self.state = FolderState()
        self._keywords = False
        self._searched = 0  # the highest UID the last SEARCH of this session answered
        self._pool = ThreadPoolExecutor(1, thread_name_prefix=f"imap-{account.name}")
        self._mover_pool = ThreadPoolExecutor(1, thread_name_prefix=f"imap-{account.name}-after")
        self._log = {"account": account.name}

    def submit(self, fn: Callable[..., T], *args: Any) -> asyncio.Future[T]:
        """Hand one blocking Mailbox call to this account's thread, now (calls run in order)."""
        return asyncio.get_running_loop().run_in_executor(self._pool, functools.partial(fn, *args))

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        return await self.submit(fn, *args)

    async def call_mover(self, fn: Callable[..., T], *args: Any) -> T:
        """One blocking call on the second connection, in its own thread."""
        return await asyncio.get_running_loop().run_in_executor(self._mover_pool, functools.partial(fn, *args))

    async def run(self, stop: asyncio.Event) -> None:
        try:
            while not stop.is_set():
                await self._turn(stop)
        finally:
            await self._disconnect()
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._mover_pool.shutdown(wait=False, cancel_futures=True)
            try:
                await self.lease.release()
            except Exception:  # the lease simply runs out
                log.warning("imap.lease_release_failed", extra=self._log)

    async def _turn(self, stop: asyncio.Event) -> None:
        """One lease check and, if ours, one IMAP session; on trouble one log line and one back-off step."""
        try:
            if not await self.lease.acquire():
                log.debug("imap.lease_held_elsewhere", extra=self._log)
                await _sleep_until(stop, self.lease_retry_s)
                return
            await self._session(stop)
        except LeaseLost:
            log.warning("imap.lease_lost", extra=self._log)
            await self._disconnect()
        except Exception as exc:
            if not isinstance(exc, TemporaryFailure):
                log.exception("imap.error", extra=self._log)
            await self._disconnect()
            delay = self.backoff.next()
            log.warning("imap.unavailable", extra={**self._log, "problem": str(exc) or type(exc).__name__,
                                                   "retry_in_s": round(delay, 2), "attempt": self.backoff.step})
            await _sleep_until(stop, delay)

    async def _disconnect(self) -> None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(asyncio.gather(self.call(self.box.close), self.call_mover(self.mover.close)),
                                   timeout=3.0)

    async def _session(self, stop: asyncio.Event) -> None:
        a = self.account
        await asyncio.gather(self.call(self.box.connect), self.call_mover(self.mover.connect))
        self.state = await load_state(self.intake.engine, a.name, a.folder)
        log.info("imap.connected", extra={**self._log, "folder": a.folder, "idle": self.box.can_idle})
        while not stop.is_set():
            # SELECT again each round: a folder deleted and rebuilt under an open session is
            # not always reported to it, but a fresh SELECT shows the new UIDVALIDITY.
            await self._select()
            # Then scan until a scan finds nothing: a message that arrived during one was
            # announced in the answers to its commands, and IDLE would not announce it again.
            while await self.scan() and not stop.is_set():
                pass
            self.backoff.reset()  # a full round went through: the account is healthy again
            await self._wait(stop)

    async def _select(self) -> None:
        a = self.account
        info, after = await asyncio.gather(self.call(self.box.select, a.folder),
                                           self.call_mover(self.mover.select, a.folder))
        if after.uidvalidity != info.uidvalidity:  # rebuilt between the two SELECTs: next round
            raise ImapProblem(f"folder {a.folder!r} changed its UIDVALIDITY while it was opened")
        self._keywords = info.keywords
        self._searched = 0
        if self.state.uidvalidity != info.uidvalidity:
            if self.state.uidvalidity is not None:
                log.warning("imap.uidvalidity_changed", extra={**self._log, "folder": a.folder,
                                                               "old": self.state.uidvalidity, "new": info.uidvalidity})
            self.state = FolderState(info.uidvalidity)
            await save_state(self.intake.engine, a.name, a.folder, self.state, None)

    def criteria(self) -> list[str]:
        if self.account.after != "flag":
            return ["UNDELETED"]
        found = ["UID", f"{self.state.last_uid + 1}:*", "UNDELETED"]
        return [*found, "NOT", "KEYWORD", DONE_KEYWORD] if self._keywords else found

    async def scan(self) -> int:
        """Take every waiting message of the folder into the inbox; how many were taken or set aside."""
        found = await self.call(self.box.search, self.criteria())
        self._searched = max([self._searched, *found])
        uids = [u for u in found if u > self._floor()]
        progress = 0
        for start in range(0, len(uids), SIZE_WINDOW):
            window = uids[start:start + SIZE_WINDOW]
            sizes = await self.call(self.box.sizes, window)
            progress += await self._set_aside_oversized(sizes)
            fitting = [u for u in window if u in sizes and sizes[u] <= self.account.max_message_size]
            progress += await self._take_all(list(batches(fitting, sizes)))
        await save_state(self.intake.engine, self.account.name, self.account.folder, self.state, self.intake.clock.now())
        return progress

    async def _take_all(self, groups: list[list[int]]) -> int:
        """Batch by batch, overlapped: while one batch is committed, the next is fetched and
        handed to the store too (two in flight), and the one before is moved on the second
        connection (each move still after its own commit)."""
        ahead: asyncio.Future[dict[int, IncomingMail]] | None = None
        storing: deque[tuple[dict[int, IncomingMail], asyncio.Future[tuple[list[int], list[int]]]]] = deque()
        finishing: asyncio.Future[None] | None = None
        taken = 0

        async def settle() -> None:
            nonlocal finishing, taken
            mails, stored = storing.popleft()
            done, refused = await stored
            if finishing is not None:
                await finishing
            finishing = asyncio.ensure_future(self._finish(sorted(mails), done, refused))
            taken += len(done)

        try:
            for i, batch in enumerate(groups):
                mails = await (ahead or self.submit(self.fetch, batch))
                ahead = self.submit(self.fetch, groups[i + 1]) if i + 1 < len(groups) else None
                await self.lease.renew_if_due()
                storing.append((mails, asyncio.ensure_future(self._store(mails))))
                if len(storing) > 1:
                    await settle()
            while storing:
                await settle()
            if finishing is not None:
                await finishing
        finally:
            for future in (ahead, finishing, *(stored for _, stored in storing)):
                if future is not None and not future.done():
                    future.cancel()
        return taken

    def _floor(self) -> int:
        # UID n:* also matches the last message when n is past it: filter here too.
        return self.state.last_uid if self.account.after == "flag" else 0

    async def _set_aside_oversized(self, sizes: dict[int, int]) -> int:
        big = sorted(u for u, s in sizes.items() if s > self.account.max_message_size)
        if big:
            await self.call(self.box.move, big, OVERSIZED_FOLDER)
            log.warning("imap.oversized", extra={**self._log, "uids": big[:20], "count": len(big),
                                                 "sizes": [sizes[u] for u in big[:20]],
                                                 "limit": self.account.max_message_size})
        return len(big)

    async def _finish(self, fetched: list[int], done: list[int], refused: list[int]) -> None:
        """After the commit: move/flag/delete what is stored; a refused message counts a try."""
        if done:
            self.intake.wake_worker()
            await self.after_commit(done)
        given_up = await self._count_failures(refused)
        self.state = replace(self.state, last_uid=advance(self.state.last_uid, fetched, {*done, *given_up}))
        if refused or given_up:
            await save_state(self.intake.engine, self.account.name, self.account.folder, self.state, None)

    async def commit(self, mails: list[IncomingMail]) -> list[Accepted]:
        """The one place raw bytes reach the store."""
        return await self.intake.commit(mails)

    def fetch(self, uids: list[int]) -> dict[int, IncomingMail]:
        """In the account's thread: a batch's raw bytes as inbox mails (the writer hashes them)."""
        source = f"imap:{self.account.name}"
        mailbox = (self.account.username,) if self.account.username.count("@") == 1 else ()
        return {uid: IncomingMail(raw, source, None, envelope_to_of(raw) or mailbox)
                for uid, raw in sorted(self.box.bodies(uids).items())}

    async def _store(self, mails: dict[int, IncomingMail]) -> tuple[list[int], list[int]]:
        """Commit a batch in one transaction; if that fails, one by one to find the refused ones."""
        if not mails:
            return [], []
        try:
            results = await self.commit(list(mails.values()))
            self._log_stored(list(mails), results)
            return list(mails), []
        except Exception as exc:
            log.warning("imap.commit_failed", extra={**self._log, "count": len(mails), "error": type(exc).__name__})
            if len(mails) == 1:
                await self.intake.wait_for_store(1)  # store down: StoreUnavailable, back off
                return [], list(mails)
        done, refused = [], []
        for uid, mail in mails.items():
            try:
                self._log_stored([uid], await self.commit([mail]))
                done.append(uid)
            except Exception:
                await self.intake.wait_for_store(1)
                refused.append(uid)
        return done, refused

    def _log_stored(self, uids: list[int], results: list[Accepted]) -> None:
        for uid, accepted in zip(uids, results, strict=True):
            with bound(inbound_id=accepted.inbound_id):
                log.info("mail.received", extra={**self._log, "uid": uid, "duplicate": accepted.duplicate})

    async def after_commit(self, uids: list[int]) -> None:
        """Move, flag or delete what is now safely in the inbox (a crash before this: refetch)."""
        a = self.account
        if a.after == "move":
            await self.call_mover(self.mover.move, uids, a.move_to)
        elif a.after == "flag":
            await self.call_mover(self.mover.flag, uids, self._keywords)
        else:
            await self.call_mover(self.mover.delete, uids)

    async def _count_failures(self, refused: list[int]) -> list[int]:
        """Count one more try for each refused message; those past max_tries go to the failure folder."""
        if not refused:
            return []
        failures = dict(self.state.failures)
        given_up = []
        for uid in refused:
            failures[str(uid)] = failures.get(str(uid), 0) + 1
            if failures[str(uid)] >= self.account.max_tries:
                given_up.append(uid)
                del failures[str(uid)]
        log.warning("imap.store_refused", extra={**self._log, "uids": refused[:20]})
        if given_up:
            await self.call(self.box.move, given_up, self.account.failed_folder)
            log.error("imap.moved_to_failed", extra={**self._log, "uids": given_up[:20],
                                                     "folder": self.account.failed_folder})
        self.state = replace(self.state, failures=failures)
        return given_up

    async def _wait(self, stop: asyncio.Event) -> None:
        """Until the server announces mail, the polling interval passes, or `stop`."""
        if stop.is_set():
            return
        deadline = time.monotonic() + min(self.account.poll_interval_s, IDLE_MAX_S)
        if not self.box.can_idle:
            while not stop.is_set() and time.monotonic() < deadline:
                await _sleep_until(stop, min(LEASE_S / 6, deadline - time.monotonic()))
                await self.lease.renew_if_due()
            return
        await self.call(self.box.idle_start)
        try:
            if not await self._arrived_before_idle():
                while not stop.is_set() and time.monotonic() < deadline:
                    if await self.call(self.box.idle_wait, IDLE_SLICE_S):
                        break
                    await self.lease.renew_if_due()
        except BaseException:
            self.box.forget_idle()
            raise
        await self.call(self.box.idle_end)

    async def _arrived_before_idle(self) -> bool:
        """A message that came after the last SEARCH and before IDLE began is not announced in
        IDLE: Dovecot reports it only in the answer to DONE, after the whole wait (a poll
        interval). So once IDLE runs, the second connection searches as the scan does, for UIDs
        past the last SEARCH's; what comes later, IDLE announces."""
        seen = max(self._searched, self._floor())
        newer = await self.call_mover(self.mover.search_fresh, [*self.criteria(), "UID", f"{seen + 1}:*"])
        return any(uid > seen for uid in newer)


# -- entry points -----------------------------------------------------------------------------

def check_config(accounts: Sequence[ImapAccount]) -> None:
    """Mistakes the settings cannot see alone: names shared, or a folder that feeds itself."""
    names = [a.name for a in accounts]
    if len(set(names)) != len(names):
        raise ConfigError("imap.accounts: every account needs its own name")
    for a in accounts:
        targets = [a.failed_folder, OVERSIZED_FOLDER, *([a.move_to] if a.after == "move" else [])]
        if a.folder in targets:
            raise ConfigError(f"imap.accounts {a.name}: folder {a.folder!r} cannot also be where mail is moved to")


async def imap_loop(intake: ImapIntake, stop: asyncio.Event, reader: type[AccountReader] = AccountReader,
                    tokens: dict[str, TokenSource] | None = None) -> None:
    """Read every configured account until `stop`; the daemon runs this beside the SMTP edge."""
    accounts = intake.settings.accounts
    check_config(accounts)
    tokens = token_sources(accounts) if tokens is None else tokens
    if not accounts:  # nothing to read: do not end early, the daemon would take that as a failure
        await stop.wait()
        return
    holder = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"
    async with asyncio.TaskGroup() as group:
        for account in accounts:
            group.create_task(reader(intake, account, holder, tokens.get(account.name)).run(stop),
                              name=f"imap:{account.name}")
