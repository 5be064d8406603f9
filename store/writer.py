"""The daemon's inbox writer: the edges' group commits in a child process of its own. On
SQLite it commits with store/sqlite/writer.py's `Committer` (which also says how the other
processes share SQLite's write lock with it); on PostgreSQL through psycopg (store/pg/writer.py).

Why a process: the listener's event loop spends about a millisecond of pure Python on every
mail (aiosmtpd reading the DATA lines). A writer thread in the same process hands the GIL
back and forth with it on every SQLite call of a commit (context switches and system time
on every mail); each hand-over waits for a loop that is busy
receiving. The child does the hashing, the INSERTs and the fsync on the other core, and the
loop only writes the raw bytes to a socket and reads the ids back.

A batch is a frame with the pickled mails; its answer, a frame with the `Accepted` list or the
failure. Several batches may be on their way: the child hashes the next one while it commits
the one before, and answers in order. A caller that gives up (a timeout) leaves its answer to
be dropped. If the child dies, the batches it has not answered fail with StoreUnavailable
(451: the sender retries, and the dedup key makes a commit that did land harmless), and a new
child is started at once (or by the next batch, if that start failed); `alive` says whether
one runs, for /healthz. The child leaves when its socket closes, which is also how it
notices that the daemon was killed.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import pickle
import queue
import signal
import socket
import sqlite3
import threading
from collections import deque
from collections.abc import Callable, Sequence
from datetime import datetime
from multiprocessing.process import BaseProcess
from typing import TYPE_CHECKING, Any

from gateway.errors import StoreUnavailable
from gateway.procname import freeze_heap, name_process
from store.inbox import Accepted, IncomingMail
from store.sqlite.writer import BUSY, Committer

if TYPE_CHECKING:
    from store.pg.writer import PgCommitter

_HEADER = 8  # bytes of frame length, big-endian


class InboxWriter:
    """`accept_many` as the app's inbox has it; the commits happen in the writer process."""

    in_flight = 2  # batches worth handing over at once: it hashes one while it commits the other

    def __init__(self, url: str, busy_timeout_s: float) -> None:
        if url.startswith("postgresql"):
            # One: two batches in flight made two commits, each with its WAL flush, of what one
            # commit takes together (docs/benchmarks.md: fewer mails acknowledged a second).
            self.in_flight = 1
        self._url = url
        self._busy_timeout_s = busy_timeout_s
        self._ctx = multiprocessing.get_context("forkserver")
        # Shared memory: until when (time.monotonic) our commits want SQLite's write lock:
        # infinity while one waits or runs, QUIET_S past the last. `smtp_pause` reads it.
        self.busy_until = self._ctx.RawValue("d", 0.0)
        self._proc: BaseProcess | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._replies: asyncio.Task[None] | None = None
        self._pending: deque[asyncio.Future[list[Accepted]]] = deque()
        self._starting: asyncio.Lock | None = None
        self._sock: socket.socket | None = None
        self._closed = False
        self._restart: asyncio.Task[None] | None = None

    def alive(self) -> bool:
        """The writer process runs (or is being started again after it died)."""
        restarting = self._restart is not None and not self._restart.done()
        return not self._closed and (restarting or (self._proc is not None and self._proc.is_alive()))

    async def start(self) -> None:
        """Start the writer process and wait until it has its connection."""
        if self._starting is None:
            self._starting = asyncio.Lock()
        async with self._starting:
            if self._writer is not None:
                return
            ours, theirs = socket.socketpair()
            proc = self._ctx.Process(target=_serve, args=(self._url, self._busy_timeout_s, theirs, self.busy_until),
                                     name="gateway-inbox-writer", daemon=True)
            try:
                proc.start()
            finally:
                theirs.close()  # the child's end lives in the child only: its EOF is our death
            self._proc = proc
            self._sock = ours
            reader, writer = await asyncio.open_connection(sock=ours)
            try:
                status, detail = await _receive(reader)
            except (OSError, EOFError, asyncio.IncompleteReadError) as exc:
                writer.close()
                self._stop_child()
                raise StoreUnavailable("the inbox writer process did not start") from exc
            if status != "ready":
                writer.close()
                self._stop_child()
                raise StoreUnavailable(f"the inbox writer process did not start: {detail}")
            self._writer = writer
            self._replies = asyncio.create_task(self._read_replies(reader, writer), name="inbox-writer-replies")

    async def accept_many(self, mails: Sequence[IncomingMail], now: datetime) -> list[Accepted]:
        """Batches may overlap: the process hashes the next one while it commits this one, and
        the answers come back in the order the batches went out."""
        if not mails:
            return []
        await self.start()
        answer = self.submit_many(mails, now)
        if self._writer is not None:
            with contextlib.suppress(OSError):  # a lost connection answers `answer` (_read_replies)
                await self._writer.drain()  # a big batch (IMAP's 4 MB) waits for the socket here
        return await answer

    def submit_many(self, mails: Sequence[IncomingMail], now: datetime) -> asyncio.Future[list[Accepted]]:
        """The batch goes out now; the future answers for it. Before `start`, or after the
        process died, the future starts a new one first."""
        writer = self._writer
        if writer is None or writer.is_closing():
            return asyncio.ensure_future(self._restart_and_accept(mails, now))
        payload = pickle.dumps((list(mails), now), protocol=pickle.HIGHEST_PROTOCOL)
        answer: asyncio.Future[list[Accepted]] = asyncio.get_running_loop().create_future()
        # The whole frame goes into the transport's buffer at once (never half a frame), and its
        # place in the queue of answers is taken in the same step.
        writer.writelines([len(payload).to_bytes(_HEADER, "big"), payload])
        self._pending.append(answer)
        return answer

    async def _restart_and_accept(self, mails: Sequence[IncomingMail], now: datetime) -> list[Accepted]:
        await self.start()
        if self._writer is None or self._writer.is_closing():
            raise StoreUnavailable("the inbox writer process is gone")
        return await self.submit_many(mails, now)

    async def _read_replies(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                status, detail = await _receive(reader)
                answer = self._pending.popleft()
                if answer.done():  # its caller gave up (a timeout, a shutdown): the reply is dropped
                    continue
                if status == "ok":
                    answer.set_result(list(detail))
                else:
                    message, cause = detail
                    answer.set_exception(_unavailable(message, cause))
        except (OSError, EOFError, asyncio.IncompleteReadError, IndexError):
            pass
        finally:  # the process is gone: whatever it had not answered was not committed, or is unknown
            if self._writer is writer:
                self._writer = None
            writer.close()
            while self._pending:
                answer = self._pending.popleft()
                if not answer.done():
                    answer.set_exception(StoreUnavailable("the inbox writer process is gone"))
            self._stop_child(wait_s=0.2)
            self.busy_until.value = 0.0
            if not self._closed:
                self._restart = asyncio.ensure_future(self._start_again())

    async def _start_again(self) -> None:
        try:
            await self.start()
        except (StoreUnavailable, OSError):
            pass  # the next batch tries again; until then `alive` says no

    def _stop_child(self, wait_s: float = 5.0) -> None:
        proc, self._proc = self._proc, None
        if proc is not None:
            proc.join(wait_s)  # a live child leaves on the closed socket; one that hangs is killed
            if proc.exitcode is None:
                proc.kill()
                proc.join(1.0)

    def close(self) -> None:
        """End our side of the socket; the child finishes the batches in hand and leaves."""
        self._closed = True
        if self._restart is not None:
            self._restart.cancel()
        sock, self._sock = self._sock, None
        if sock is not None:  # now: the transport's own close waits for the event loop
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_WR)
        writer, self._writer = self._writer, None
        if writer is not None:
            writer.close()
        if self._replies is not None:
            self._replies.cancel()
            self._replies = None
        self._stop_child()


def _unavailable(message: str, cause: str) -> StoreUnavailable:
    failure = StoreUnavailable(message)
    failure.__cause__ = sqlite3.OperationalError(cause)
    return failure


async def _receive(reader: asyncio.StreamReader) -> tuple[str, Any]:
    size = int.from_bytes(await reader.readexactly(_HEADER), "big")
    status, detail = pickle.loads(await reader.readexactly(size))
    return str(status), detail


def _serve(url: str, busy_timeout_s: float, sock: socket.socket, busy_until: Any) -> None:
    """The writer process: batches in, their `Accepted` lists (or failures) out, in order, until
    EOF. This thread reads and hashes; on SQLite a second one commits, so the hashing of one
    batch overlaps the INSERTs and the fsync of the one before (on PostgreSQL, below, not)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a Ctrl-C is for the daemon, which closes our socket
    name_process("gw-writer")
    stream = sock.makefile("rb")

    def send(reply: tuple[str, Any]) -> None:
        payload = pickle.dumps(reply, protocol=pickle.HIGHEST_PROTOCOL)
        sock.sendall(len(payload).to_bytes(_HEADER, "big") + payload)

    try:
        committer = _committer(url, busy_timeout_s, busy_until)
    except Exception as exc:
        send(("failed", f"{type(exc).__name__}: {exc}"))
        return
    freeze_heap()
    send(("ready", None))
    # On PostgreSQL one batch is in flight at a time (InboxWriter.in_flight): nothing to overlap,
    # so this thread commits it too, and no hand-over to a second thread (a wake-up and the GIL
    # each way) stands between a batch and its 250s.
    inline = url.startswith("postgresql")
    work: queue.Queue[list[dict[str, Any]] | Exception | None] = queue.Queue(maxsize=2)
    commits = None if inline else threading.Thread(target=_commit_loop, args=(committer, work, send),
                                                   name="commits")
    if commits is not None:
        commits.start()
    try:
        while len(header := stream.read(_HEADER)) == _HEADER:
            size = int.from_bytes(header, "big")
            if len(frame := stream.read(size)) < size:
                break  # the daemon is gone half-way through a batch: nothing was committed
            rows: list[dict[str, Any]] | Exception
            try:
                mails, now = pickle.loads(frame)
                busy_until.value = BUSY
                rows = committer.rows(mails, now)
            except Exception as exc:  # answered in its turn
                rows = exc
            if commits is None:
                with contextlib.suppress(OSError):
                    send(_commit(committer, rows, more=False))
            else:
                work.put(rows)
    except OSError:
        pass
    finally:
        if commits is not None:
            work.put(None)
            commits.join()
        committer.close()


def _committer(url: str, busy_timeout_s: float, busy_until: Any) -> Committer | PgCommitter:
    if url.startswith("postgresql"):
        from store.pg.writer import PgCommitter

        return PgCommitter(url)
    return Committer(url, busy_timeout_s, busy_until)


def _commit_loop(committer: Committer | PgCommitter, work: queue.Queue[list[dict[str, Any]] | Exception | None],
                 send: Callable[[tuple[str, Any]], None]) -> None:
    while (rows := work.get()) is not None:
        reply = _commit(committer, rows, more=not work.empty())
        with contextlib.suppress(OSError):
            send(reply)


def _commit(committer: Committer | PgCommitter, rows: list[dict[str, Any]] | Exception,
            more: bool) -> tuple[str, Any]:
    """The answer to one batch: ("ok", its `Accepted` list) or ("unavailable", (message, cause))."""
    try:
        if isinstance(rows, Exception):
            raise StoreUnavailable(f"inbox commit failed: {type(rows).__name__}") from rows
        return ("ok", committer.commit(rows, more=more))
    except StoreUnavailable as exc:
        return ("unavailable", (str(exc), str(exc.__cause__ or exc)))
    except Exception as exc:  # never leave the daemon waiting for an answer
        return ("unavailable", (f"inbox commit failed: {type(exc).__name__}", str(exc)))
