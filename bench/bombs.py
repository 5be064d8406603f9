#!/usr/bin/env python3
"""What the worst inputs cost before they are quarantined (catalogue 38-41).

    .venv/bin/python bench/bombs.py

Each bomb is ingested in a fresh process through the real pipeline (inbox commit, worker,
quarantine); the script prints wall time and the peak RSS increase of that process.
Target: each under 1 s and under 200 MB.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

BOMBS = {
    "nesting depth 1000 (item 38)": "nested(1000)",
    "flat 100k parts (item 39)": "flat(100_000)",
    "subject with 10k encoded-words (item 40)": "encoded_subject(10_000)",
    "100k folded header lines (item 41)": "folded(100_000)",
}

CHILD = """
import asyncio, dataclasses, json, resource, sys, tempfile, time
sys.path.insert(0, {root!r})
from gateway.app import open_app
from gateway.settings import load_settings
from store.inbox import IncomingMail

def nested(depth):
    head = b"From: a@borger.example\\r\\nSubject: deep\\r\\nMIME-Version: 1.0\\r\\n"
    return head + b"".join(f'Content-Type: multipart/mixed; boundary="b{{i}}"\\r\\n\\r\\n--b{{i}}\\r\\n'.encode()
                           for i in range(depth)) + b"Content-Type: text/plain\\r\\n\\r\\nbottom\\r\\n"
def flat(n):
    return (b"From: a@borger.example\\r\\nSubject: flat\\r\\nMIME-Version: 1.0\\r\\n"
            b'Content-Type: multipart/mixed; boundary="b"\\r\\n\\r\\n'
            + b"--b\\r\\nContent-Type: text/plain\\r\\n\\r\\nx\\r\\n" * n + b"--b--\\r\\n")
def encoded_subject(n):
    return b"From: a@borger.example\\r\\nSubject: " + b" ".join([b"=?utf-8?q?=C3=A6?="] * n) + b"\\r\\n\\r\\nb\\r\\n"
def folded(n):
    return b"From: a@borger.example\\r\\nSubject: x" + b"\\r\\n y" * n + b"\\r\\n\\r\\nb\\r\\n"

async def main():
    raw = {expr}
    with tempfile.TemporaryDirectory() as tmp:
        base = load_settings({config!r}, env={{}})
        s = dataclasses.replace(base, base_dir=tmp,
            database=dataclasses.replace(base.database, url=f"sqlite+aiosqlite:///{{tmp}}/b.db"),
            storage=dataclasses.replace(base.storage, blob_dir=f"{{tmp}}/blobs"),
            worker=dataclasses.replace(base.worker, parse_in_subprocess=False))
        async with open_app(s, migrate=True) as app:
            before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            started = time.perf_counter()
            _, result = await app.ingest_now(IncomingMail(raw, "bench", None, s.mail.addresses))
            took = time.perf_counter() - started
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({{"size": len(raw), "seconds": took, "rss_mb": (peak - before) / 1024,
                      "action": result.action.value, "reason": result.reason}}))
asyncio.run(main())
"""


def main() -> None:
    print(f"{'input':44} {'size':>9} {'time':>8} {'+RSS':>8}  outcome")
    for name, expr in BOMBS.items():
        code = CHILD.format(root=str(ROOT), expr=expr, config=str(ROOT / "config" / "gateway.toml"))
        out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
        r = json.loads(out.strip().splitlines()[-1])
        print(f"{name:44} {r['size'] / 1e3:7.0f}KB {r['seconds'] * 1000:6.1f}ms {r['rss_mb']:6.1f}MB  "
              f"{r['action']}: {r['reason']}")


if __name__ == "__main__":
    main()
