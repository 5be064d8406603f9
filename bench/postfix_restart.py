"""Postfix in front of the gateway, which is SIGKILLed and restarted under a backlog: does
Postfix meet `421 4.7.0 Too many connections`, and how long does its queue take to drain?

    .venv/bin/python bench/postfix_restart.py --mails 3000 --concurrency 40

A private Postfix (tests/postfix.py) relays to `gateway run` (tests/daemon_proc.py, SQLite);
smtp-source feeds it MAILS mails over 30 sessions while the daemon's process group is killed
KILLS times, 2.5 s apart, each time down for 3 s. Reported: the most connections to the
gateway's port seen at once (`ss`, every 20 ms), the 421s in Postfix's log, and the seconds
Postfix needed to empty its queue after the last restart.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.daemon_proc import DaemonProcess  # noqa: E402
from tests.postfix import Postfix  # noqa: E402


async def connections(port: int) -> int:
    out = subprocess.run(["ss", "-tnH", "state", "established", f"( dport = :{port} )"],
                         capture_output=True, text=True).stdout
    return len(out.splitlines())


async def run(mails: int, size: int, concurrency: int, kills: int) -> None:
    proc = DaemonProcess(Path(tempfile.mkdtemp(prefix="gw-bench-postfix-")), worker={"parse_in_subprocess": True},
                         policy={"max_auto_answers_per_day": 1_000_000})
    postfix = Postfix(proc.smtp_port, "statens-adm.example",
                      smtp_destination_concurrency_limit=str(concurrency)).start()
    peak = 0

    async def watch() -> None:
        nonlocal peak
        while True:
            peak = max(peak, await connections(proc.smtp_port))
            await asyncio.sleep(0.02)

    watching = asyncio.create_task(watch())
    try:
        proc.start()
        source = subprocess.Popen(
            ["smtp-source", "-c", "-s", "30", "-m", str(mails), "-l", str(size), "-f", "loadgen@example.org",
             "-t", "kundebetjening@statens-adm.example", "-S", "load", f"127.0.0.1:{postfix.port}"],
            stdout=subprocess.DEVNULL)
        for _ in range(kills):
            await asyncio.sleep(2.5)
            assert proc.process is not None
            os.killpg(proc.process.pid, signal.SIGKILL)
            proc.process.wait()
            await asyncio.sleep(3.0)
            proc.start()
        source.wait()
        started = time.monotonic()
        while postfix.queued() and time.monotonic() - started < 300:
            await asyncio.sleep(0.2)
        drained = time.monotonic() - started
        busy = postfix.replies(r"(said|refused to talk to me): 421 4\.7\.0")
        print(f"mails {mails}, Postfix concurrency {concurrency}, kills {kills}: peak connections {peak}, "
              f"421 4.7.0 replies {len(busy)}, queue drained {drained:.1f} s after the feed, "
              f"left {postfix.queued()}")
    finally:
        watching.cancel()
        proc.kill()
        postfix.remove()
        shutil.rmtree(proc.dir, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mails", type=int, default=3000)
    parser.add_argument("--size", type=int, default=10000)
    parser.add_argument("--concurrency", type=int, default=20, help="Postfix smtp_destination_concurrency_limit")
    parser.add_argument("--kills", type=int, default=4)
    args = parser.parse_args()
    asyncio.run(run(args.mails, args.size, args.concurrency, args.kills))


if __name__ == "__main__":
    main()
