"""The inbox worker: claims mails, parses them (gateway.parse_pool), and hands them, a group
per transaction, to the mail transaction (gateway.apply.handle_all).

Failures are recorded and retried; after `max_attempts` a mail is quarantined with its error,
never deleted (`gateway reprocess` puts it back). A mail that can never be understood
(`UnusableMail`) is quarantined at once with the reason.

Every claim taken is finished, failed (its try counted) or given back (not counted), on every
path. A store outage (store/faults.py) is not the mail's fault: the mails it cut off are given
back as soon as the store answers again (`_give_back_stranded`: every claim of this worker's
holder that is not in its hands), so they are done within seconds of the store's return, not
after their lease. That also covers a claim that committed though its answer was lost, and
the claims of a worker child that died in this run (the supervisor gives those back first).
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

from gateway.apply import Steps, handle_all
from gateway.clock import Clock
from gateway.errors import LostClaim, UnusableMail
from gateway.logs import bound
from gateway.model import Outcome, ParsedMail, Result
from gateway.parse_pool import ParseRunner
from gateway.settings import WorkerSettings
from store.faults import is_outage, is_store_error
from store.inbox import Claim, ClaimedMail, Inbox, claim_mails, read_raw, read_raws
from store.transact import Transactor

log = logging.getLogger("gateway.worker")

# Mails whose parse is ready share a transaction (one commit for up to eight). On SQLite that
# transaction holds the one write lock; the worker child begins none while SMTP commits follow
# each other (store/sqlite/writer.py, smtp_pause), so a burst's 250s never queue behind it.
GROUP_MAX = 8
# While the SMTP commits pause, a group may be larger: it keeps no 250 waiting, and fewer, larger
# transactions drain a burst's backlog sooner.
QUIET_GROUP_MAX = 32
# Batches claimed and parsing ahead of the writes: the next batch parses while this one is
# written. Not more: parsing a whole burst while it arrives takes the CPU the SMTP listener
# needs.
AHEAD = 2
SMALL_MAIL = 256 * 1024  # raw bytes read together for a batch's mails up to this size
OUTAGE_PAUSE_S = 0.5  # between tries while the store does not answer


def default_holder() -> str:
    """The holder of a worker outside the daemon (`gateway ingest`, tests): this process."""
    return f"cli-{socket.gethostname()}:{os.getpid()}"[:100]


class InboxWorker:
    def __init__(self, tx: Transactor, inbox: Inbox, parser: ParseRunner, cfg: WorkerSettings, steps: Steps,
                 clock: Clock, holder: str | None = None, on_processed: Callable[[], None] | None = None,
                 smtp_quiet: Callable[[], bool] | None = None) -> None:
        self._tx = tx
        self._inbox = inbox
        self._parser = parser
        self._cfg = cfg
        self._steps = steps
        self._clock = clock
        self.holder = (holder or default_holder())[:100]  # the daemon's `node:run` (store/node_run.py)
        # The claims this worker works on (claimed, not yet finished, failed or given back); and
        # how often claims of ours were left outside them (a store outage cut their work off),
        # against how many of those times a give-back has covered.
        self._in_hand: set[int] = set()
        self._strandings = 0
        self._given_back = 0
        self.wakeup = asyncio.Event()
        self.processed = 0
        self.on_processed: Callable[[], None] = on_processed or (lambda: None)
        # Whether the SMTP commits are pausing (store.sqlite.writer.smtp_quiet): then a group may
        # be larger, as it keeps nobody's 250 waiting.
        self.smtp_quiet: Callable[[], bool] = smtp_quiet or (lambda: False)

    async def run_once(self, limit: int | None = None, only_id: int | None = None) -> list[Result]:
        """One batch from claim to outcome (the CLI's `process`, a mail handled at once)."""
        cfg = self._cfg
        claimed = await self._claim_batch(limit or cfg.batch_size, only_id)
        flow = await self._start(claimed)
        results: list[Result] = []
        try:
            while flow:
                await asyncio.wait([flow[0][1]])  # wait with no transaction open
                results.extend(await self._apply_group(_take_ready(flow)))
        except Exception:
            await self._give_back([mail for mail in claimed if mail.id in self._in_hand])
            raise
        return results

    async def _claim_batch(self, limit: int, only_id: int | None = None) -> list[ClaimedMail]:
        """A claim on the same transaction thread as the writes of the outcomes, in turn with
        them: as a connection of its own it would wait for their lock while a backlog drains,
        and the flow would run dry meanwhile. It does not wait for SMTP pauses."""
        claimed = await self._tx.run_now(claim_mails, limit, self.holder, self._clock.now(),
                                         self._cfg.lease_s, only_id)
        self._in_hand.update(mail.id for mail in claimed)
        return claimed

    async def _start(self, claimed: list[ClaimedMail]) -> deque[tuple[ClaimedMail, asyncio.Future[Any]]]:
        """The claimed mails in order, each with its parse under way (in the child processes)."""
        raws = await self._read_small(claimed)
        return deque((mail, asyncio.ensure_future(self._parse(mail, raws.pop(mail.id, None)))) for mail in claimed)

    async def _read_small(self, claimed: list[ClaimedMail]) -> dict[int, bytes]:
        """The raw bytes of the batch's small mails in one read (a read a mail was a tenth of the
        worker's time on 20 KB mails); a big one is read when its turn comes, so a batch of big
        mails is never in memory at once."""
        small = [mail.id for mail in claimed if 0 < mail.size <= SMALL_MAIL]
        if len(small) < 2:
            return {}
        try:
            return await self._tx.read(read_raws, small)
        except Exception:  # each mail tries again on its own, and fails on its own
            return {}

    async def _parse(self, mail: ClaimedMail, raw: bytes | None = None) -> ParsedMail | Exception:
        with bound(inbound_id=mail.id):  # its own task: a parser library's warnings name the mail
            try:
                if raw is None:
                    raw = await self._tx.read(read_raw, mail.id)
                return await self._parser.parse(raw, mail.envelope_from, mail.envelope_to)
            except Exception as exc:  # reported per mail
                return exc

    async def _apply_group(self, group: list[tuple[ClaimedMail, ParsedMail | Exception]]) -> list[Result]:
        """The mails whose parse is ready share one transaction: one durable commit for them all.

        If any of them fails, the group is rolled back and each mail is retried on its own, so
        one poison mail never takes the others down with it. A store outage is raised (the
        caller gives back what is not finished); so is one while a mail's failure is recorded.
        """
        if len(group) > 1 and all(isinstance(p, ParsedMail) for _, p in group):
            work = [(mail.id, self._claim(mail), parsed) for mail, parsed in group]
            try:
                results = await self._tx.run(handle_all, self._steps, work, self._clock.now())  # type: ignore[arg-type]
            except Exception as exc:
                if is_outage(exc):
                    raise
                log.info("worker.group_retry_single", extra={"size": len(group), "error": type(exc).__name__})
            else:
                done = [self._done(result, nudge=False) for result in results]
                if any(result.notifications for result in done):
                    self.on_processed()  # once for the group's commit
                return done
        return [await self._process(mail, parsed) for mail, parsed in group]

    async def _process(self, mail: ClaimedMail, parsed: ParsedMail | Exception) -> Result:
        with bound(inbound_id=mail.id):
            return await self._process_bound(mail, parsed)

    async def _process_bound(self, mail: ClaimedMail, parsed: ParsedMail | Exception) -> Result:
        try:
            if isinstance(parsed, UnusableMail):
                return await self._quarantine(mail, str(parsed))
            if isinstance(parsed, Exception):
                raise parsed
            result = (await self._tx.run(handle_all, self._steps, [(mail.id, self._claim(mail), parsed)],
                                         self._clock.now()))[0]
        except LostClaim as exc:
            # Rolled back: the worker that holds the mail now applies it, once.
            self._in_hand.discard(mail.id)
            log.warning("mail.lost_claim", extra={"error": str(exc)})
            return Result(Outcome.QUARANTINED, None, str(exc), mail.id, retry=True)
        except Exception as exc:
            if is_outage(exc):
                raise  # not this mail's fault: given back, its try not counted
            if is_store_error(exc):
                return await self._failed(mail, f"store: {type(exc).__name__}")
            log.exception("mail.failed")
            return await self._failed(mail, f"{type(exc).__name__}: {exc}")
        return self._done(result)

    def _claim(self, mail: ClaimedMail) -> Claim:
        return Claim(self.holder, mail.attempts)

    def _done(self, result: Result, nudge: bool = True) -> Result:
        """A mail applied; the sender woken when it has something to send (`nudge`: here)."""
        self._in_hand.discard(result.inbound_id)
        self.processed += 1
        if nudge and result.notifications:
            self.on_processed()
        with bound(inbound_id=result.inbound_id, case=result.case):
            log.info("mail.processed", extra={"outcome": result.action.value, "reason": result.reason})
        return result

    async def _quarantine(self, mail: ClaimedMail, reason: str) -> Result:
        await self._inbox.failed(mail.id, reason, attempts=1, max_attempts=1, now=self._clock.now(),
                                 claim=self._claim(mail))
        self._in_hand.discard(mail.id)
        log.warning("mail.quarantined", extra={"reason": reason})
        return Result(Outcome.QUARANTINED, None, reason, mail.id)

    async def _failed(self, mail: ClaimedMail, error: str) -> Result:
        cfg = self._cfg
        state = await self._inbox.failed(mail.id, error, mail.attempts, cfg.max_attempts, self._clock.now(),
                                         cfg.retry_delay_s, claim=self._claim(mail))
        self._in_hand.discard(mail.id)
        if state == "lost":
            log.warning("mail.lost_claim", extra={"error": error[:200]})
            return Result(Outcome.QUARANTINED, None, error, mail.id, retry=True)
        log.warning("mail.retry" if state == "pending" else "mail.quarantined",
                    extra={"attempts": mail.attempts, "error": error[:200]})
        if state == "quarantined":
                return Result(Outcome.QUARANTINED, None, error, mail.id)
        return Result(Outcome.QUARANTINED, None, error, mail.id, retry=True)

    async def run(self, stop: asyncio.Event) -> None:
        """Process the inbox until `stop` is set.

        Two loops share the flow of claimed mails. The feeder claims and starts parsing up to
        AHEAD batches ahead; the applier writes the outcomes in order, a group of parsed mails
        per transaction. While SMTP commits come one after another, the applier waits for them
        to pause (store.sqlite.writer.smtp_pause) but the parsing goes on, on the other core:
        after a burst only the writes are left. On stop, the group in hand is finished and the
        mails not yet applied are given back to the inbox, their attempt not counted.

        A new worker first gives back whatever its holder still has claimed: the claims of a
        worker child of this run that died (if its supervisor could not already).
        """
        self._strand(())
        flow: deque[tuple[ClaimedMail, asyncio.Future[Any]]] = deque()
        room, arrived, halt = asyncio.Event(), asyncio.Event(), asyncio.Event()
        feeder = asyncio.ensure_future(self._feed(flow, stop, halt, room, arrived))
        try:
            await self._apply_flow(flow, stop, room, arrived)
        finally:
            # The feeder is not cancelled: a claim cut off halfway would leave its mails
            # claimed and not in the flow (and aiosqlite's connection inside a transaction).
            halt.set()
            try:
                await feeder
            finally:
                for _, parse in flow:
                    parse.cancel()
                await self._give_back([mail for mail, _ in flow])

    async def _feed(self, flow: deque[tuple[ClaimedMail, asyncio.Future[Any]]], stop: asyncio.Event,
                    halt: asyncio.Event, room: asyncio.Event, arrived: asyncio.Event) -> None:
        cfg = self._cfg
        window = cfg.batch_size * AHEAD
        while not (stop.is_set() or halt.is_set()):
            if len(flow) >= window:
                room.clear()
                await _first(stop, halt, room)
                continue
            if self._strandings > self._given_back and not await self._give_back_stranded():
                await _first(stop, halt, timeout=OUTAGE_PAUSE_S)
                continue
            self.wakeup.clear()  # before the claim: a wake-up during it is not lost
            try:
                claimed = await self._claim_batch(min(cfg.batch_size, window - len(flow)))
                if claimed:
                    flow.extend(await self._start(claimed))
                    arrived.set()
                    continue
            except Exception as exc:  # a claim holds no mail's data: whatever failed, the store did
                # The claim may have committed though its answer was lost: give back, then claim.
                self._strand(())
                log.warning("worker.store_error", extra={"step": "claim", "error": type(exc).__name__,
                                                         "outage": is_outage(exc)})
                await _first(stop, halt, timeout=OUTAGE_PAUSE_S)
                continue
            await _first(stop, halt, self.wakeup, timeout=cfg.poll_interval_s)

    async def _apply_flow(self, flow: deque[tuple[ClaimedMail, asyncio.Future[Any]]], stop: asyncio.Event,
                          room: asyncio.Event, arrived: asyncio.Event) -> None:
        interval = self._cfg.poll_interval_s
        while not stop.is_set():
            if not flow:
                arrived.clear()
                await _first(stop, arrived)
                continue
            await _first(stop, flow[0][1])  # wait with no transaction open
            if stop.is_set():
                return
            group = _take_ready(flow, most=QUIET_GROUP_MAX if self.smtp_quiet() else GROUP_MAX)
            try:
                results = await self._apply_group(group)
            except Exception as exc:
                if not is_outage(exc):
                    raise
                # The store stopped answering: what of the group is not finished goes back to
                # the queue as soon as it answers again (the feeder gives it back).
                self._strand(mail.id for mail, _ in group)
                log.warning("worker.store_error", extra={"step": "apply", "error": type(exc).__name__})
                results = []
                await _first(stop, timeout=OUTAGE_PAUSE_S)
            room.set()
            if results and all(r.retry for r in results) and not flow:
                # only failures and nothing else in hand: don't spin. Never with claims in hand:
                # their leases would run out while it waits (two nodes stole each other's mails).
                await _first(stop, timeout=min(interval * 4, 5.0))

    def _strand(self, ids: Iterable[int]) -> None:
        """These claims are no longer worked on here: `_give_back_stranded` returns them."""
        self._in_hand.difference_update(ids)
        self._strandings += 1

    async def _give_back_stranded(self) -> bool:
        """Every claim of this holder that is not in hand back to the queue; False while the
        store does not answer. Claims stranded while it runs are left for the next one."""
        covers = self._strandings
        try:
            count = await self._inbox.release_stranded(self.holder, keep=sorted(self._in_hand))
        except Exception as exc:  # no mail's data in it either: tried again in a moment
            log.warning("worker.store_error", extra={"step": "give_back", "error": type(exc).__name__,
                                                     "outage": is_outage(exc)})
            return False
        self._given_back = covers
        if count:
            log.info("worker.released", extra={"count": count, "why": "stranded"})
        return True

    async def _give_back(self, mails: list[ClaimedMail]) -> None:
        if not mails:
            return
        try:
            await self._inbox.release([mail.id for mail in mails], self.holder)
        except Exception as exc:  # the next start of this node takes them back (store/node_run.py)
            self._strand(mail.id for mail in mails)
            log.warning("worker.release_failed", extra={"count": len(mails), "error": type(exc).__name__})
        else:
            self._in_hand.difference_update(mail.id for mail in mails)
            log.info("worker.released", extra={"count": len(mails)})


def _take_ready(flow: deque[tuple[ClaimedMail, asyncio.Future[Any]]],
                most: int = GROUP_MAX) -> list[tuple[ClaimedMail, Any]]:
    """The head of the flow (its parse done) and the parsed mails right behind it, up to
    `most`: they share a transaction."""
    mail, future = flow.popleft()
    group = [(mail, future.result())]
    while flow and flow[0][1].done() and len(group) < most:
        ready, done = flow.popleft()
        group.append((ready, done.result()))
    return group


async def _first(*waits: asyncio.Event | asyncio.Future[Any], timeout: float | None = None) -> None:
    """Until one of the events is set or futures done, or `timeout` seconds have passed."""
    pending = [w if isinstance(w, asyncio.Future) else asyncio.ensure_future(w.wait()) for w in waits]
    try:
        await asyncio.wait(pending, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for wait, task in zip(waits, pending, strict=True):
            if task is not wait:
                task.cancel()
