#!/usr/bin/env python3
"""Ingestion throughput and memory against the floor of bare mail-parser (issue: foundation).

    .venv/bin/python bench/ingest.py --n 1000            # realistic mix, seed 42
    .venv/bin/python bench/ingest.py --big-mb 25          # one mail with a 25 MiB attachment

The mix comes from bench/gen_corpus.py. In the same run it measures:
  floor      bare `mailparser.parse_from_bytes` over every mail (one core)
  inbox      committing the raw mails to the durable inbox (group commit)
  worker     the inbox worker: parse, classify, thread, reply-strip, blobs, one transaction
             per mail, parsing in a child process (the daemon's mode) and inline
and prints mails/s, ms per mail and the ratio to the floor. `--big-mb` runs the 25 MB mail
in a fresh process and reports the peak RSS increase against its size on the wire.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
GEN = ROOT / "bench" / "gen_corpus.py"


def corpus(n: int, seed: int) -> list[bytes]:
    out = Path(tempfile.gettempdir()) / f"gateway-bench-corpus-{seed}-{n}"
    if not out.exists() or len(list(out.glob("*.eml"))) < n:
        subprocess.run([sys.executable, str(GEN), "--out", str(out), "--n", str(n), "--seed", str(seed)],
                       check=True, stdout=subprocess.DEVNULL)
    files = sorted(out.glob("*.eml"))[:n]
    return [f.read_bytes() for f in files]


def floor(mails: list[bytes]) -> float:
    import mailparser

    started = time.perf_counter()
    for raw in mails:
        mailparser.parse_from_bytes(raw)
    return time.perf_counter() - started


async def pipeline(mails: list[bytes], subprocess_parse: bool) -> tuple[float, float, dict[str, int]]:
    from gateway.app import open_app
    from gateway.settings import load_settings
    from store.inbox import IncomingMail

    with tempfile.TemporaryDirectory() as tmp:
        base = load_settings(ROOT / "config" / "gateway.toml", env={})
        settings = dataclasses.replace(
            base, base_dir=tmp,
            database=dataclasses.replace(base.database, url=f"sqlite+aiosqlite:///{tmp}/bench.db"),
            storage=dataclasses.replace(base.storage, blob_dir=f"{tmp}/blobs"),
            worker=dataclasses.replace(base.worker, parse_in_subprocess=subprocess_parse, batch_size=64))
        async with open_app(settings, migrate=True) as app:
            started = time.perf_counter()
            for i in range(0, len(mails), 64):
                await app.inbox.accept_many([IncomingMail(raw, "bench", None, settings.mail.addresses)
                                             for raw in mails[i:i + 64]], app.clock.now())
            accepted = time.perf_counter() - started
            started = time.perf_counter()
            outcomes: dict[str, int] = {}
            while results := await app.worker.run_once():
                for r in results:
                    outcomes[r.action.value] = outcomes.get(r.action.value, 0) + 1
            processed = time.perf_counter() - started
    return accepted, processed, outcomes


def big(mb: float) -> None:
    """Runs in a fresh process: peak RSS increase of ingesting one mail with a big attachment."""
    path = Path(tempfile.gettempdir()) / f"gateway-bench-big-{mb:g}.eml"
    if not path.exists():
        subprocess.run([sys.executable, str(GEN), "--big-attachment-mb", str(mb), "--out-file", str(path)],
                       check=True, stdout=subprocess.DEVNULL)
    code = f"""
import asyncio, dataclasses, json, resource, sys, tempfile, time
sys.path.insert(0, {str(ROOT)!r})
from gateway.app import open_app
from gateway.settings import load_settings
from store.inbox import IncomingMail
import mailparser  # imported before the baseline, like the gateway's own modules

async def main():
    with tempfile.TemporaryDirectory() as tmp:
        base = load_settings({str(ROOT / 'config' / 'gateway.toml')!r}, env={{}})
        s = dataclasses.replace(base, base_dir=tmp,
            database=dataclasses.replace(base.database, url=f"sqlite+aiosqlite:///{{tmp}}/b.db"),
            storage=dataclasses.replace(base.storage, blob_dir=f"{{tmp}}/blobs"),
            worker=dataclasses.replace(base.worker, parse_in_subprocess=False))
        async with open_app(s, migrate=True) as app:
            raw = open({str(path)!r}, "rb").read()
            base_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            t = time.perf_counter()
            _, result = await app.ingest_now(IncomingMail(raw, "bench", None, s.mail.addresses))
            took = time.perf_counter() - t
            peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            print(json.dumps({{"wire_mb": len(raw) / 1e6, "baseline_mb": base_kb / 1024,
                              "increase_mb": (peak_kb - base_kb) / 1024, "seconds": took,
                              "action": result.action.value}}))
asyncio.run(main())
"""
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    data = json.loads(out.strip().splitlines()[-1])
    floor_code = f"""
import resource, mailparser, json
raw = open({str(path)!r}, "rb").read()
b = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
mailparser.parse_from_bytes(raw)
print(json.dumps((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - b) / 1024))
"""
    bare = json.loads(subprocess.run([sys.executable, "-c", floor_code], check=True, capture_output=True,
                                     text=True).stdout.strip())
    ratio = data["increase_mb"] / data["wire_mb"]
    print(f"big mail: {data['wire_mb']:.1f} MB on the wire, {data['action']} in {data['seconds']:.2f} s")
    print(f"  peak RSS increase: gateway {data['increase_mb']:.0f} MB ({ratio:.1f}x wire; target < 5x), "
          f"bare mail-parser {bare:.0f} MB ({bare / data['wire_mb']:.1f}x)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--big-mb", type=float, default=0)
    args = ap.parse_args()
    if args.big_mb:
        big(args.big_mb)
        return
    mails = corpus(args.n, args.seed)
    size = sum(map(len, mails)) / len(mails) / 1000
    print(f"{len(mails)} mails, mean {size:.0f} KB (gen_corpus.py --seed {args.seed})")
    bare = floor(mails)
    print(f"floor  bare mail-parser        {len(mails) / bare:7.1f} mails/s  {bare / len(mails) * 1000:6.2f} ms/mail")
    for sub in (True, False):
        accepted, processed, outcomes = asyncio.run(pipeline(mails, sub))
        mode = "child-process parse" if sub else "inline parse"
        rate = len(mails) / processed
        print(f"inbox  group-commit accept     {len(mails) / accepted:7.1f} mails/s  "
              f"{accepted / len(mails) * 1000:6.2f} ms/mail")
        print(f"worker {mode:22} {rate:7.1f} mails/s  {processed / len(mails) * 1000:6.2f} ms/mail  "
              f"= {rate / (len(mails) / bare):.0%} of floor (target >= 50%)  {outcomes}")
    print(f"peak RSS of this process: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")


if __name__ == "__main__":
    main()
