"""Running the parse step inside a budget (RELIABILITY 38–41): child processes with a memory
limit and a deadline, so one hostile mail can neither stall nor kill the daemon; they also put
the parsing on the second core while the event loop goes on.

Each child has a pipe of its own and parses one mail at a time; the event loop reads its
answers as they come (`loop.add_reader`), with no thread in between. A child past the deadline,
or dead (the memory budget), is replaced, and only the mail it was parsing fails: the others
are in other children or wait for one. concurrent.futures' process pool, used before, cost the
worker 0.56 ms of CPU per 20 KB mail in its feeder and manager threads (the parse itself is
0.94 ms), and on a timeout it killed the whole pool, failing the mails of the other children.

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
from multiprocessing.connection import Connection
from typing import Any

from gateway.errors import UnusableMail
from gateway.model import ParsedMail
from gateway.pipeline.parse import Limits, parse_mail
from gateway.procname import name_process
from store.blobs import BlobStore

_blobs: BlobStore | None = None
OWNER_CHECK_S = 1.0
START_TIMEOUT_S = 30.0


def _init_child(blob_dir: str, memory_mb: int, owner: int) -> None:
    global _blobs
    _blobs = BlobStore(blob_dir)
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


def _serve(conn: Connection, blob_dir: str, memory_mb: int, owner: int) -> None:
    """The child: "ready", then one answer per job — ("ok", ParsedMail) or ("error", exception)
    — until its pipe closes."""
    name_process("gw-parse")
    _init_child(blob_dir, memory_mb, owner)
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
    """The child was dead before it got the job (killed from outside while idle)."""


class _Child:
    """One parse process and our end of its pipe; at most one job in hand."""

    def __init__(self, blob_dir: str, memory_mb: int) -> None:
        ctx = multiprocessing.get_context("forkserver")
        ours, theirs = ctx.Pipe(duplex=True)
        self.proc = ctx.Process(target=_serve, args=(theirs, blob_dir, memory_mb, os.getpid()),
                                name="gateway-parse", daemon=True)
        self.proc.start()
        theirs.close()  # its EOF is ours: the child leaves when we close or die
        self.conn = ours
        self._loop = asyncio.get_running_loop()
        self._answer: asyncio.Future[Any] = self._loop.create_future()
        self.alive = True  # until its pipe closes
        self._loop.add_reader(ours.fileno(), self._readable)

    async def ready(self) -> None:
        await asyncio.wait_for(self._answer, START_TIMEOUT_S)

    async def run(self, job: tuple[Any, ...], timeout_s: float) -> ParsedMail:
        self._answer = self._loop.create_future()
        try:
            self.conn.send(job)
        except (EOFError, OSError) as exc:
            raise _ChildGone() from exc
        result: ParsedMail = await asyncio.wait_for(self._answer, timeout_s)
        return result

    def _readable(self) -> None:
        try:
            kind, value = self.conn.recv()
        except (EOFError, OSError):
            self.alive = False
            self._loop.remove_reader(self.conn.fileno())
            if not self._answer.done():
                self._answer.set_exception(_ChildDied())
            return
        except Exception as exc:  # an answer we cannot unpickle; the child itself is fine
            kind, value = "error", RuntimeError(f"the parse answer could not be read: {type(exc).__name__}: {exc}")
        if self._answer.done():  # a job given up on (its caller was cancelled): nothing waits for it
            return
        if kind == "error":
            self._answer.set_exception(value)
        else:
            self._answer.set_result(value)

    def close(self, kill: bool = False) -> None:
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
    """Parses inline (CLI, tests) or in up to `processes` child processes (the daemon)."""

    def __init__(self, blobs: BlobStore, limits: Limits, in_subprocess: bool = False, processes: int = 1,
                 timeout_s: float = 30.0, memory_mb: int = 1024) -> None:
        self._blobs = blobs
        self._limits = limits
        self._in_subprocess = in_subprocess
        self._processes = max(1, processes)
        self._timeout = timeout_s
        self._memory_mb = memory_mb
        self._idle: deque[_Child] = deque()
        self._waiters: deque[asyncio.Future[_Child | None]] = deque()
        self._started = 0  # children running or starting
        self._children: set[_Child] = set()

    async def parse(self, raw: bytes, envelope_from: str | None = None,
                    envelope_to: tuple[str, ...] = ()) -> ParsedMail:
        if not self._in_subprocess:
            return parse_mail(raw, self._blobs.put, self._limits, envelope_from, envelope_to)
        job = (raw, self._limits, envelope_from, envelope_to)
        while True:
            child = await self._take()
            try:
                result = await child.run(job, self._timeout)
            except _ChildGone:  # dead before it got the job (killed from outside): another takes it
                self._discard(child)
                continue
            except TimeoutError as exc:
                self._discard(child)
                raise UnusableMail(f"parsing took longer than {self._timeout:g} s") from exc
            except _ChildDied as exc:
                self._discard(child)
                raise UnusableMail("the parser process died (memory budget)") from exc
            except asyncio.CancelledError:
                self._discard(child)  # it may still be parsing a job nobody waits for: a new one
                raise
            except Exception:
                self._give_back(child)  # the parse of this mail raised; the child is fine
                raise
            self._give_back(child)
            return result

    async def start(self) -> None:
        """Start every child now rather than with the first mails: starting them (a fork server
        of the worker's own, its imports) took ~0.25 s of CPU from the first burst."""
        if not self._in_subprocess:
            return
        children = await asyncio.gather(*(self._take() for _ in range(self._processes - self._started)))
        for child in children:
            self._give_back(child)

    async def _take(self) -> _Child:
        while True:
            if self._idle:
                child = self._idle.popleft()
                if child.alive:
                    return child
                self._discard(child)  # died while idle (killed from outside): nobody's mail is lost
                continue
            if self._started < self._processes:
                self._started += 1
                new: _Child | None = None
                try:
                    new = _Child(str(self._blobs.root), self._memory_mb)
                    self._children.add(new)
                    await new.ready()
                    return new
                except BaseException:
                    if new is not None:
                        self._discard(new)
                    else:
                        self._started -= 1
                        self._wake_one(None)
                    raise
            waiter: asyncio.Future[_Child | None] = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            try:
                given = await waiter
            except asyncio.CancelledError:
                handed = waiter.result() if waiter.done() and not waiter.cancelled() else None
                if handed is not None:
                    self._give_back(handed)  # handed to us as we were cancelled
                raise
            if given is not None:
                return given
            # None: a child was retired; its place is free for a new one

    def _give_back(self, child: _Child) -> None:
        if not self._wake_one(child):
            self._idle.append(child)

    def _wake_one(self, child: _Child | None) -> bool:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(child)
                return True
        return False

    def _discard(self, child: _Child) -> None:
        child.close(kill=True)
        self._children.discard(child)
        self._started -= 1
        self._wake_one(None)

    def close(self) -> None:
        """Each child sees its pipe close and leaves (one busy with a parse: killed)."""
        for child in self._children:
            child.close(kill=child not in self._idle)
        self._children.clear()
        self._idle.clear()
        self._started = 0
