#!/usr/bin/env python3
"""CPU time of the parse step (parse_mail: decoding, HTML to text, reply and signature) per mail.

    .venv/bin/python bench/parse_cpu.py                      # this tree
    .venv/bin/python bench/parse_cpu.py --tree /tmp/old      # another checkout's code, same mails

CPU time of this process (best of --repeat passes over the mails of bench/ingest.py's mix), so
other load on the machine moves it far less than wall-clock rates. Alternate two trees in one
run to compare them.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tree", default=str(ROOT), help="the checkout whose gateway/ is measured")
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT / "bench"))
    from ingest import corpus  # the same generated mix as bench/ingest.py

    mails = corpus(args.n, args.seed)
    sys.path.insert(0, args.tree)
    for name in [m for m in sys.modules if m == "gateway" or m.startswith("gateway.")]:
        del sys.modules[name]
    from gateway.pipeline.parse import parse_mail

    for raw in mails[:20]:
        parse_mail(raw)
    best = float("inf")
    for _ in range(args.repeat):
        started = time.process_time()
        for raw in mails:
            parse_mail(raw)
        best = min(best, time.process_time() - started)
    print(f"{args.tree}: {best / len(mails) * 1000:.3f} ms CPU per mail "
          f"(best of {args.repeat}, {len(mails)} mails, seed {args.seed})")


if __name__ == "__main__":
    main()
