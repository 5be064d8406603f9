"""The sender loop: claim due outbox rows, render, deliver, mark (rules §7).

Once only, as far as the protocol allows: a row is claimed under a lease before it is sent
and marked `sent` right after the relay's 250. A crash between the 250 and that mark is the
one window where a message can go out twice (catalogue 29); it is resent with the same
Message-ID, so mail clients fold the copies (and a maildir keeps one file per Message-ID).
Transient failures retry with capped exponential back-off and jitter; 5xx and too many tries
end as `failed`.

A store outage never strands a row: the rows sent are marked once the store answers again,
and the others this sender still has `sending` go back to the queue, their try not counted
(`_recover`). A sender that starts does the same for its holder (a sender child of this run
that died).
"""

from __future__ import annotations

import asyncio
import logging
import random
from datetime import timedelta

from gateway.clock import Clock
from gateway.errors import DeliveryError, PermanentDeliveryError
from gateway.logs import bound
from gateway.model import Event, Status
from gateway.notify.compose import Notice, Renderer
from gateway.notify.transport import Mailer
from gateway.settings import OutboundSettings
from store.faults import is_outage
from store.outbox import DueNotification, OutboxQueue

log = logging.getLogger("gateway.sender")


def notice_of(due: DueNotification) -> Notice:
    ctx = due.context
    previous = ctx.get("previous_status")
    return Notice(
        event=Event(due.event), language=due.language, case_number=ctx.get("case_number", ""),
        case_subject=ctx.get("case_subject", ""), status=Status(ctx.get("status", Status.REGISTRERET.value)),
        previous_status=Status(previous) if previous else None, recipient_email=due.recipient,
        recipient_name=due.recipient_name, message_id=due.message_id,
        thread_ids=tuple(ctx.get("thread_ids", ())), follows_number=ctx.get("follows_number"),
        actor_name=ctx.get("actor_name"), reason=ctx.get("reason"),
        link=ctx.get("link"), link_purpose=ctx.get("link_purpose"),
    )


def backoff(attempts: int, cfg: OutboundSettings) -> float:
    base = min(cfg.backoff_max_s, cfg.backoff_initial_s * (2 ** max(0, attempts - 1)))
    return base * random.uniform(0.8, 1.2)


class Sender:
    def __init__(self, queue: OutboxQueue, renderer: Renderer, mailer: Mailer, cfg: OutboundSettings,
                 clock: Clock, lease_s: float = 300.0, holder: str = "") -> None:
        self._queue = queue
        self.holder = holder  # the daemon's `node:run` (store/node_run.py)
        self._renderer = renderer
        self._mailer = mailer
        self._cfg = cfg
        self._clock = clock
        self._lease_s = lease_s
        self.sent = 0
        self.failed = 0
        self.wakeup = asyncio.Event()
        self._to_mark: list[int] = []
        self._marking: asyncio.Lock = asyncio.Lock()

    async def run_once(self, limit: int = 100) -> int:
        due = await self._queue.claim(limit, self._clock.now(), self._lease_s, self.holder)
        if not due:
            return 0
        gate = asyncio.Semaphore(max(1, self._cfg.concurrency))

        async def one(item: DueNotification) -> None:
            with bound(outbox_id=item.id, case=item.context.get("case_number")):
                async with gate:  # the slot is the relay connection; marking happens after it
                    reply = await self._deliver(item)
                if reply is not None:
                    await self._mark_sent(item.id)
                    self.sent += 1
                    log.info("notify.sent", extra={"notice": item.event, "reply": reply[:80]})

        # One recipient's notices go one after the other, in the order they were made (a status
        # change, then the answer after it); different recipients' at once.
        by_recipient: dict[str, list[DueNotification]] = {}
        for item in due:
            by_recipient.setdefault(item.recipient.lower(), []).append(item)

        async def in_order(items: list[DueNotification]) -> None:
            for item in items:
                await one(item)

        # Every delivery runs to its end before a failure is raised: a row must not go back to
        # the queue while it is still being sent.
        outcomes = await asyncio.gather(*(in_order(items) for items in by_recipient.values()),
                                        return_exceptions=True)
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                raise outcome
        return len(due)

    async def _deliver(self, due: DueNotification) -> str | None:
        """The relay's reply when it accepted; None when the row was rescheduled or failed."""
        try:
            message = self._renderer.compose(notice_of(due))
            reply = await self._mailer.send(message, self._renderer.envelope_from(), (due.recipient,))
        except PermanentDeliveryError as exc:
            await self._fail(due, str(exc))
            return None
        except DeliveryError as exc:
            if due.attempts >= self._cfg.max_attempts:
                await self._fail(due, f"gave up after {due.attempts} tries: {exc}")
                return None
            at = self._clock.now() + timedelta(seconds=backoff(due.attempts, self._cfg))
            await self._queue.mark_retry(due.id, str(exc), at)
            log.warning("notify.retry", extra={"attempts": due.attempts, "error": str(exc)[:200]})
            return None
        except (ValueError, KeyError) as exc:  # a row we cannot render: an operator must look
            await self._fail(due, f"cannot render: {exc}")
            return None
        return reply

    async def _mark_sent(self, row_id: int) -> None:
        """Mark right after the relay's 250; rows sent while a mark commits share the next commit."""
        self._to_mark.append(row_id)
        async with self._marking:
            if row_id not in self._to_mark:
                return  # an earlier commit took it along
            batch, self._to_mark = self._to_mark, []
            try:
                await self._queue.mark_sent(batch, self._clock.now())
            except BaseException:
                self._to_mark[:0] = batch  # sent: marked when the store answers again (`_recover`)
                raise

    async def _fail(self, due: DueNotification, error: str) -> None:
        await self._queue.mark_failed(due.id, error)
        self.failed += 1
        log.error("notify.failed", extra={"notice": due.event, "error": error[:200]})

    async def _recover(self) -> bool:
        """After a store error: mark what was sent, give back what this holder still has
        `sending` (none of it was sent). False while the store does not answer."""
        try:
            if self._to_mark:
                batch = list(self._to_mark)
                await self._queue.mark_sent(batch, self._clock.now())
                self._to_mark = [row for row in self._to_mark if row not in batch]
            if self.holder:
                count = await self._queue.release_stranded(self.holder, self._clock.now())
                if count:
                    log.info("notify.released", extra={"count": count})
        except Exception as exc:
            log.warning("notify.store_error", extra={"step": "recover", "error": type(exc).__name__})
            return False
        return True

    async def run(self, stop: asyncio.Event) -> None:
        interval_s = self._cfg.poll_interval_s
        stranded = True  # a sender child of this run may have died with rows `sending`
        clean = getattr(self._mailer, "clean_stale", None)  # what a killed delivery left half-written
        if clean is not None:
            await clean()
        while not stop.is_set():
            if stranded:
                stranded = not await self._recover()
                if stranded:
                    await _pause(stop, min(interval_s, 0.5))
                    continue
            try:
                if await self.run_once():
                    continue
            except Exception as exc:  # the store hiccuped: keep the loop alive, give back its rows
                stranded = True
                log.warning("notify.loop_error", extra={"error": type(exc).__name__, "outage": is_outage(exc)})
            self.wakeup.clear()
            await _either(self.wakeup, stop, interval_s)
        close = getattr(self._mailer, "close", None)
        if close is not None:
            await close()


async def _either(wakeup: asyncio.Event, stop: asyncio.Event, seconds: float) -> None:
    """Until woken, stopped, or `seconds` have passed."""
    waits = {asyncio.ensure_future(wakeup.wait()), asyncio.ensure_future(stop.wait())}
    try:
        await asyncio.wait(waits, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waits:
            w.cancel()


async def _pause(stop: asyncio.Event, seconds: float) -> None:
    try:
        await asyncio.wait_for(stop.wait(), seconds)
    except TimeoutError:
        pass
