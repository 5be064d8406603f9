#!/usr/bin/env python3
"""IMAP ingestion throughput against a private Dovecot (issue 4).

    .venv/bin/python bench/imap.py --n 1000 --size 20000

One ~20 KB mail from bench/gen_corpus.py (--fixed-size), copied N times with its own
Message-ID and Subject, is appended to a Dovecot INBOX (tests/dovecot.py). In the same run:
  floor       a bare imapclient loop: login, SELECT, UID SEARCH, FETCH BODY.PEEK[] of all N
              (200 UIDs per FETCH, like the gateway), nothing stored, nothing moved; the same
              with one UID per FETCH is shown beside it
  imap        the gateway's IMAP loop: every mail committed to the inbox and moved to Processed
  end to end  the same plus the inbox worker, until every mail has become a case
and prints mails/s and the ratio to the floor (targets: >= 100 mails/s, >= 50% of the floor).
The worker runs as `gateway run` runs it (in a child process of its own, parsing in a further
child) unless --inline-parse (worker and parsing in this process).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import multiprocessing
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any

from imapclient import IMAPClient

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
GEN = ROOT / "bench" / "gen_corpus.py"

from gateway.app import App, build  # noqa: E402
from gateway.clock import SystemClock  # noqa: E402
from gateway.ingest.imap import BATCH_MESSAGES, imap_loop  # noqa: E402
from gateway.settings import ImapAccount, Settings, load_settings  # noqa: E402
from tests.dovecot import Dovecot  # noqa: E402


def variants(n: int, size: int) -> list[bytes]:
    path = Path(tempfile.gettempdir()) / f"gateway-bench-fixed-{size}.eml"
    if not path.exists():
        subprocess.run([sys.executable, str(GEN), "--fixed-size", str(size), "--out-file", str(path)],
                       check=True, stdout=subprocess.DEVNULL)
    raw = path.read_bytes().replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    out = []
    for i in range(n):
        mail = re.sub(rb"(?mi)^Message-ID:.*$", f"Message-ID: <bench-{i}@borger.example>".encode(), raw, count=1)
        mail = re.sub(rb"(?mi)^Subject:.*$", f"Subject: Bench-mail {i}".encode(), mail, count=1)
        out.append(mail)
    return out


def fill(server: Dovecot, user: str, mails: list[bytes]) -> None:
    with server.client(user) as c:
        for raw in mails:
            c.append("INBOX", raw)


def floor(server: Dovecot, user: str, n: int, per_fetch: int = BATCH_MESSAGES, quiet: bool = False) -> float:
    """Seconds for a bare imapclient loop to fetch all n, `per_fetch` UIDs per FETCH command.

    `quiet`: with imaplib's debug level at 0, as the gateway sets it (gateway/ingest/mailbox.py,
    `Mailbox._quiet_imaplib`): shown beside the floor, so the ratio can be read against both."""
    started = time.perf_counter()
    with IMAPClient("127.0.0.1", port=server.port, ssl=False, timeout=60) as c:
        if quiet:
            c._imap.debug = 0
        c.login(user, server.users[user])
        c.select_folder("INBOX")
        uids = c.search(["UNDELETED"])
        got = 0
        for i in range(0, len(uids), per_fetch):
            got += len(c.fetch(uids[i:i + per_fetch], ["BODY.PEEK[]"]))
    took = time.perf_counter() - started
    assert got == n, f"fetched {got} of {n}"
    return took


def settings_for(tmp: str, server: Dovecot, user: str, inline_parse: bool) -> Settings:
    base = load_settings(ROOT / "config" / "gateway.toml", env={})
    account = ImapAccount(name="bench", host="127.0.0.1", port=server.port, tls="none", username=user,
                          password=server.users[user])
    return dataclasses.replace(
        base, base_dir=tmp,
        database=dataclasses.replace(base.database, url=f"sqlite+aiosqlite:///{tmp}/bench.db"),
        storage=dataclasses.replace(base.storage, blob_dir=f"{tmp}/blobs"),
        outbound=dataclasses.replace(base.outbound, transport=f"maildir:{tmp}/outbound"),
        worker=dataclasses.replace(base.worker, parse_in_subprocess=not inline_parse, batch_size=64),
        imap=dataclasses.replace(base.imap, accounts=(account,)),
        policy=dataclasses.replace(base.policy, max_mails_per_sender_per_hour=0))  # one sender, 1000 mails


async def wait_until(done: Callable[[], Awaitable[bool]]) -> None:
    while not await done():
        await asyncio.sleep(0.02)


async def gateway_run(server: Dovecot, user: str, n: int, inline_parse: bool, worker: bool) -> float:
    """Seconds from the start of the loops until all n are moved (and, with the worker, are cases)."""
    watcher = server.client(user)  # one connection for STATUS polls: cheap for Dovecot
    moved = lambda: asyncio.to_thread(  # noqa: E731
        lambda: watcher.folder_status("Processed", [b"MESSAGES"]).get(b"MESSAGES") == n if
        watcher.folder_exists("Processed") else False)
    with tempfile.TemporaryDirectory() as tmp:
        # the daemon's own wiring (its inbox writer), as `gateway run` has it
        async with build(settings_for(tmp, server, user, inline_parse), "daemon", SystemClock(), migrate=True) as app:
            stop = asyncio.Event()
            started = time.perf_counter()
            tasks = [asyncio.create_task(imap_loop(app.imap_intake, stop))]
            if worker:
                tasks.append(asyncio.create_task(worker_loop(inline_parse)(app, stop)))
            await wait_until(moved)
            if worker:
                await wait_until(lambda: processed(app, n))
            took = time.perf_counter() - started
            stop.set()
            await asyncio.gather(*tasks)
            depth = await app.inbox.depth()
    watcher.logout()
    assert sum(depth.values()) == n, f"{depth} for {n} mails"
    assert not worker or depth.get("done") == n, f"{depth}: not all became cases"
    assert server.count(user, "INBOX") == 0
    return took


def worker_loop(inline_parse: bool) -> Callable[[App, asyncio.Event], Coroutine[Any, Any, None]]:
    """As `gateway run` does it: with parsing in a child, the worker runs in a child process."""
    if inline_parse:
        return lambda app, stop: app.worker.run(stop)
    from gateway.runtime.children import child_loop

    multiprocessing.set_start_method("forkserver", force=True)
    return child_loop("worker")


async def processed(app: App, n: int) -> bool:
    depth = await app.inbox.depth()
    return depth.get("done", 0) + depth.get("quarantined", 0) == n


def refill(server: Dovecot, user: str, mails: list[bytes]) -> None:
    with server.client(user) as c:
        if c.folder_exists("Processed"):
            c.delete_folder("Processed")
    fill(server, user, mails)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--size", type=int, default=20000)
    ap.add_argument("--repeat", type=int, default=3, help="floor and edge runs, alternated; medians shown")
    ap.add_argument("--inline-parse", action="store_true", help="parse in the worker's process")
    args = ap.parse_args()
    mails = variants(args.n, args.size)
    n = args.n
    bare: list[float] = []
    single: list[float] = []
    quiet: list[float] = []
    edge: list[float] = []
    with Dovecot(spare_users=1) as server:
        user = server.fresh_user()
        for _ in range(args.repeat):  # alternated, so a busy moment of the machine hits both
            refill(server, user, mails)
            bare.append(floor(server, user, n))
            single.append(floor(server, user, n, per_fetch=1))
            quiet.append(floor(server, user, n, quiet=True))
            edge.append(asyncio.run(gateway_run(server, user, n, args.inline_parse, worker=False)))
        refill(server, user, mails)
        full = asyncio.run(gateway_run(server, user, n, args.inline_parse, worker=True))
    b, e = statistics.median(bare), statistics.median(edge)
    mode = "inline" if args.inline_parse else "child-process"
    print(f"{n} mails of {sum(map(len, mails)) / n / 1000:.1f} KB in a Dovecot INBOX; medians of {args.repeat} runs; "
          "targets >= 100 mails/s and >= 50% of the floor")
    print(f"floor       bare imapclient, FETCH BODY.PEEK[] only      {n / b:7.1f} mails/s  "
          f"({BATCH_MESSAGES} UIDs per FETCH; one per FETCH: {n / statistics.median(single):.1f} mails/s)")
    q = statistics.median(quiet)
    print(f"            the same with imaplib's debug level 0 (as the gateway runs it)  {n / q:7.1f} mails/s")
    print(f"imap edge   fetched, committed to the inbox, moved       {n / e:7.1f} mails/s  = {b / e:.0%} of floor"
          f"  (runs: {', '.join(f'{b_ / e_:.0%}' for b_, e_ in zip(bare, edge, strict=True))}; "
          f"{q / e:.0%} of the debug-0 floor)")
    print(f"end to end  the same with the worker: every mail a case  {n / full:7.1f} mails/s  = {b / full:.0%} of floor"
          f"  ({mode} parse)")


if __name__ == "__main__":
    main()
