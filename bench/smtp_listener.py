"""The SMTP listener alone: the CPU a mail of the process that runs it, the store answering at once.

    .venv/bin/python bench/smtp_listener.py --n 2000 --rounds 3 [--old DIR]

Each round runs, one after the other, each of these in a child process and sends it N mails of
SIZE octets with Postfix's smtp-source over SESSIONS sessions (one mail a connection):
  floor     stock aiosmtpd with a handler that only answers 250
  stock     this checkout's listener on aiosmtpd's own protocol (SmtpListener(fast=False))
  fast      this checkout's listener with the adapter's fast paths
  old       the listener of the checkout DIR (e.g. a git worktree of an older commit), if given
The figure is the child's CPU time (from /proc) during the load, a mail: steadier than wall
time on a shared machine, and the fast paths are CPU. Compare within a round.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ADDRESS = "kundebetjening@statens-adm.example"

CHILD = """
import asyncio, sys
from store.inbox import Accepted
port, variant = int(sys.argv[1]), sys.argv[2]

class Null:
    async def handle_DATA(self, server, session, envelope):
        return "250 2.0.0 Ok"

async def store(mail, ids=iter(range(1, 10**9))):
    return Accepted(next(ids), False)

async def main():
    loop = asyncio.get_running_loop()
    if variant == "floor":
        from aiosmtpd.smtp import SMTP
        await loop.create_server(lambda: SMTP(Null(), decode_data=False, data_size_limit=35_000_000,
                                              hostname="floor", ident="floor"), "127.0.0.1", port)
    else:
        from gateway.ingest.smtp import InboxHandler, SmtpListener
        from gateway.settings import SmtpSettings
        cfg = SmtpSettings(port=port)
        fast = {"fast": False} if variant == "stock" else {}
        await SmtpListener(InboxHandler(store, cfg, (sys.argv[3],)), cfg, **fast).start()
    print("ready", flush=True)
    await asyncio.Event().wait()

asyncio.run(main())
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure(variant: str, tree: Path, args: argparse.Namespace) -> tuple[float, float]:
    """(ms of CPU a mail, mails a second) of one variant."""
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(tree)}
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(port), variant, ADDRESS], cwd=tree, env=env,
                             stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "ready"
        before, started = cpu_s(child.pid), time.perf_counter()
        subprocess.run(["smtp-source", "-s", str(args.sessions), "-m", str(args.n), "-l", str(args.size),
                        "-f", "loadgen@example.org", "-t", ADDRESS, f"127.0.0.1:{port}"], check=True, timeout=600)
        seconds = time.perf_counter() - started
        return (cpu_s(child.pid) - before) * 1000 / args.n, args.n / seconds
    finally:
        child.kill()
        child.wait()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--sessions", type=int, default=10)
    parser.add_argument("--size", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--old", type=Path, help="another checkout whose listener runs as 'old'")
    args = parser.parse_args()
    variants = [("floor", ROOT), ("stock", ROOT), ("fast", ROOT)] + ([("old", args.old)] if args.old else [])
    cpu: dict[str, list[float]] = {name: [] for name, _ in variants}
    print(f"{args.n} mails of {args.size} octets, {args.sessions} sessions; CPU ms a mail (mails/s)")
    for round_ in range(1, args.rounds + 1):
        line = []
        turn = round_ % len(variants)  # each variant takes each place in the order in turn
        for name, tree in variants[turn:] + variants[:turn]:
            ms, rate = measure(name, tree, args)
            cpu[name].append(ms)
            line.append(f"{name} {ms:.3f} ({rate:.0f}/s)")
        print(f"round {round_}: " + ", ".join(line), flush=True)
    floor = statistics.median(cpu["floor"])
    print("median: " + ", ".join(f"{name} {statistics.median(v):.3f} ms ({statistics.median(v) / floor:.0%} of the floor)"
                                 for name, v in cpu.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
