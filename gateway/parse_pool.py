"""Running the parse step inside a budget (catalogue 38–41): child processes with a memory
limit and a deadline, so one hostile mail can neither stall nor kill the daemon; they also put
the parsing on the second core while the event loop goes on.

Each child has a pipe of its own and parses one mail at a time, with the next one waiting in
its pipe; the event loop reads its answers as they come (`loop.add_reader`), with no thread in
between. A child past the deadline, or dead (the memory budget), is replaced, and only the mail
it was parsing fails: the ones behind it go to another child. Not concurrent.futures' process
pool: its feeder and manager threads cost CPU on every mail, and on a timeout it kills the whole
pool, failing the mails of the other children.

A job is written to the child's pipe from the event loop, which blocks while a large mail goes
through the pipe: the runner lives in the worker's own process (`gateway run`), where nothing
else waits on that loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import os
import resource
import threading
import time
from collections import deque
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

from gateway.errors import UnusableMail
from gateway.model import ParsedMail
from gateway.pipeline.parse import Limits, parse_mail
from gateway.procname import freeze_heap, name_process
from store.blobs import BlobStore

_blobs: BlobStore | None = None
OWNER_CHECK_S = 1.0
START_TIMEOUT_S = 30.0


def _init_child(blobs: BlobStore, memory_mb: int, owner: int) -> None:
    global _blobs
    _blobs = blobs  # the parent's, pickled: a path and the folders known to exist
    if memory_mb > 0:
        limit = memory_mb * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    threading.Thread(target=_exit_with, args=(owner,), name="owner-watch", daemon=True).start()


def _exit_with(owner: int) -> None:
    """A parse process started from a fork server is not the child of the process that owns
    it: when that owner is killed (a worker child after SIGKILL) while a parse runs, nothing
    tells it. So it looks once a second and leaves with its owner (idle, it also sees the EOF
    of its pipe)."""
    while True:
        time.sleep(OWNER_CHECK_S)
        try:
            os.kill(owner, 0)
        except ProcessLookupError:
            os._exit(0)
        except PermissionError:
            pass  # exists, owned by someone else: cannot be ours, but do not guess


def _parse_in_child(raw: bytes, limits: Limits, envelope_from: str | None,
                    envelope_to: tuple[str, ...]) -> ParsedMail:
    assert _blobs is not None
    try:
        return parse_mail(raw, _blobs.put, limits, envelope_from, envelope_to)
    except MemoryError as exc:
        raise UnusableMail("parsing exceeded the memory budget") from exc


def _serve(conn: Connection, blobs: BlobStore, memory_mb: int, owner: int) -> None:
    """The child: "ready", then one answer per job — ("ok", ParsedMail) or ("error", exception)
    — until its pipe closes."""
    name_process("gw-parse")
    _init_child(blobs, memory_mb, owner)
    freeze_heap()
    conn.send(("ready", None))
    while True:
        try:
            raw, limits, envelope_from, envelope_to = conn.recv()
        except (EOFError, OSError):
            return
        try:
            reply: tuple[str, Any] = ("ok", _parse_in_child(raw, limits, envelope_from, envelope_to))
        except Exception as exc:
            reply = ("error", exc)
        try:
            conn.send(reply)
        except (EOFError, OSError):
            return
        except Exception as exc:  # an answer pickle cannot carry
            conn.send(("error", RuntimeError(f"the parse answer could not be sent: {type(exc).__name__}: {exc}")))


class _ChildDied(Exception):
    """The child died with a job in hand."""


class _ChildGone(Exception):
    """The child was gone before it began the job (killed from outside, or for another mail)."""


class _Child:
    """One parse process and our end of its pipe. It parses its jobs in the order they were
    written; the one it is parsing (the head) has the deadline."""

    def __init__(self, blobs: BlobStore, memory_mb: int, timeout_s: float, retire: Callable[[_Child], None],
                 freed: Callable[[], None]) -> None:
        ctx = multiprocessing.get_context("forkserver")
        ours, theirs = ctx.Pipe(duplex=True)
        self.proc = ctx.Process(target=_serve, args=(theirs, blobs, memory_mb, os.getpid()),
                                name="gateway-parse", daemon=True)
        self.proc.start()
        theirs.close()  # its EOF is ours: the child leaves when we close or die
        self.conn = ours
        self._loop = asyncio.get_running_loop()
        self._timeout = timeout_s
        self._retire = retire
        self._freed = freed
        self._ready: asyncio.Future[None] = self._loop.create_future()
        self._jobs: deque[asyncio.Future[Any]] = deque()
        self._deadline: asyncio.TimerHandle | None = None
        self.head_started = 0.0  # when it began the job it is parsing
        self.alive = True  # until its pipe closes or it is killed
        self._loop.add_reader(ours.fileno(), self._readable)

    @property
    def load(self) -> int:
        """Jobs written to it and not answered yet."""
        return len(self._jobs)

    @property
    def ready(self) -> bool:
        return self._ready.done() and self.alive

    async def started(self) -> None:
        await asyncio.wait_for(asyncio.shield(self._ready), START_TIMEOUT_S)

    def submit(self, job: tuple[Any, ...]) -> asyncio.Future[Any]:
        """Write the job to the child; the future has its answer."""
        try:
            self.conn.send(job)
        except (EOFError, OSError) as exc:
            raise _ChildGone() from exc
        answer: asyncio.Future[Any] = self._loop.create_future()
        self._jobs.append(answer)
        if len(self._jobs) == 1:
            self._begin_head()
        return answer

    def _begin_head(self) -> None:
        self.head_started = time.monotonic()
        self._deadline = self._loop.call_later(self._timeout, self._overdue)

    def _overdue(self) -> None:
        self._deadline = None
        self._end(TimeoutError())

    def _readable(self) -> None:
        try:
            kind, value = self.conn.recv()
        except (EOFError, OSError):
            self._end(_ChildDied())
            return
        except Exception as exc:  # an answer we cannot unpickle; the child itself is fine
            kind, value = "error", RuntimeError(f"the parse answer could not be read: {type(exc).__name__}: {exc}")
        if kind == "ready":
            if not self._ready.done():
                self._ready.set_result(None)
            return
        if not self._jobs:
            return
        answer = self._jobs.popleft()
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None
        if self._jobs:
            self._begin_head()  # the next job was already in its pipe: it has begun
        if not answer.done():  # else given up on (its caller was cancelled): nothing waits for it
            if kind == "error":
                answer.set_exception(value)
            else:
                answer.set_result(value)
        self._freed()

    def _end(self, head_error: BaseException) -> None:
        """Dead or overdue: the job it was parsing fails with `head_error`; the ones behind it
        had not begun, and go to another child."""
        if not self.alive:
            return
        self.alive = False
        if not self._ready.done():
            self._ready.set_exception(_ChildDied())
        for i, answer in enumerate(self._jobs):
            if not answer.done():
                answer.set_exception(head_error if i == 0 else _ChildGone())
        self._jobs.clear()
        self._retire(self)

    def close(self, kill: bool = False) -> None:
        self.alive = False
        if self._deadline is not None:
            self._deadline.cancel()
        with contextlib.suppress(Exception):
            self._loop.remove_reader(self.conn.fileno())
        self.conn.close()
        if kill:
            self.proc.kill()
        self.proc.join(1.0 if kill else 5.0)
        if self.proc.exitcode is None:
            self.proc.kill()
            self.proc.join(1.0)


class ParseRunner:
    """Parses inline (CLI, tests) or in up to `processes` child processes (the daemon).

    A child is given its next small mail while it still parses the one before (up to `DEPTH`
    jobs), so it never waits for the worker's event loop between two mails: that loop shares
    its process with the transactions, and a child that waited for it to hand over the next
    job was idle half the time while a backlog drained. A big mail goes only to a child with
    nothing in hand: writing it into a busy child's pipe would block the loop.
    """

    DEPTH = 2
    SMALL_JOB = 48 * 1024  # raw bytes; fits a pipe's buffer beside the job before it

    def __init__(self, blobs: BlobStore, limits: Limits, in_subprocess: bool = False, processes: int = 1,
                 timeout_s: float = 30.0, memory_mb: int = 1024) -> None:
        self._blobs = blobs
        self._limits = limits
        self._in_subprocess = in_subprocess
        self._processes = max(1, processes)
        self._timeout = timeout_s
        self._memory_mb = memory_mb
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._started = 0  # children running or starting
        self._children: set[_Child] = set()

    async def parse(self, raw: bytes, envelope_from: str | None = None,
                    envelope_to: tuple[str, ...] = ()) -> ParsedMail:
        if not self._in_subprocess:
            return parse_mail(raw, self._blobs.put, self._limits, envelope_from, envelope_to)
        job = (raw, self._limits, envelope_from, envelope_to)
        depth = self.DEPTH if len(raw) <= self.SMALL_JOB else 1
        while True:
            child = await self._slot(depth)
            try:
                answer = child.submit(job)
            except _ChildGone:  # dead before it got the job (killed from outside): another takes it
                self._retire(child)
                continue
            try:
                result: ParsedMail = await answer
            except _ChildGone:  # it died for a mail in front of ours, before ours began
                continue
            except TimeoutError as exc:
                raise UnusableMail(f"parsing took longer than {self._timeout:g} s") from exc
            except _ChildDied as exc:
                raise UnusableMail("the parser process died (memory budget)") from exc
            return result

    async def start(self) -> None:
        """Start every child now rather than with the first mails: starting them (a fork server
        of the worker's own, its imports) would take CPU from the first burst."""
        if self._in_subprocess:
            await asyncio.gather(*(self._new_child() for _ in range(self._processes - self._started)))

    async def _slot(self, depth: int) -> _Child:
        """A child with nothing in hand; else a new child while there are fewer than
        `processes`; else the one with the fewest jobs, if fewer than `depth` (of two with as
        many, the one that began its job last: the other may be stuck); else wait for an answer
        or a retired child."""
        while True:
            ready = [c for c in self._children if c.ready]
            best = min(ready, key=lambda c: (c.load, -c.head_started)) if ready else None
            if best is not None and best.load == 0:
                return best
            if self._started < self._processes:
                return await self._new_child()
            if best is not None and best.load < depth:
                return best
            waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            try:
                await waiter
            except asyncio.CancelledError:
                if waiter.done() and not waiter.cancelled():
                    self._wake_one()  # woken as it was cancelled: the next one looks instead
                raise

    async def _new_child(self) -> _Child:
        self._started += 1
        child: _Child | None = None
        try:
            child = _Child(self._blobs, self._memory_mb, self._timeout, self._retire, self._wake_one)
            self._children.add(child)
            await child.started()
            return child
        except BaseException:
            if child is not None:
                self._retire(child)
            else:
                self._started -= 1
                self._wake_one()
            raise

    def _wake_one(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    def _retire(self, child: _Child) -> None:
        """Kill it and free its place (a new one starts when a mail needs it)."""
        if child not in self._children:
            return
        self._children.discard(child)
        self._started -= 1
        child.close(kill=True)
        self._wake_one()

    def close(self) -> None:
        """Each child sees its pipe close and leaves (one busy with a parse: killed)."""
        for child in self._children:
            child.close(kill=child.load > 0)
        self._children.clear()
        self._started = 0
