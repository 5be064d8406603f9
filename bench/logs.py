#!/usr/bin/env python3
"""The cost of a log line: the gateway's own JSON formatter against structlog (issue 18).

    .venv/bin/python bench/logs.py                 # 100k lines each way, 5 rounds
    .venv/bin/python bench/logs.py --lines 20000 --rounds 3

In the same run, alternating, each round:
  floor       `json.dumps` of the line's fields with a timestamp: what any JSON logger must do
  stdlib      `log.info("mail.processed", extra={...})` through logging and gateway.logs.JsonFormatter
  stdlib+bound  the same inside `logs.bound(inbound_id=…, case=…)` (the fields from the binding)
  structlog   structlog's own pipeline (merge_contextvars, add_log_level, TimeStamper, JSONRenderer)
              with bound contextvars, cached logger, writing to the same null stream
  structlog/stdlib  structlog as the formatter of stdlib logging (ProcessorFormatter): what the
              gateway would need, since its libraries (uvicorn, alembic, aiosmtpd) log through stdlib
and the import cost of `gateway.logs` and of `structlog` (fresh interpreters, median of 15).
Every figure is also given as a ratio to the floor of its round. structlog is optional: without
it only the stdlib rows are printed.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

FIELDS = {"outcome": "created", "reason": "", "source": "smtp"}


class Null(io.TextIOBase):
    def write(self, s: str) -> int:
        return len(s)


def floor(n: int) -> float:
    started = time.perf_counter()
    for i in range(n):
        json.dumps({"ts": datetime.now(UTC).isoformat(timespec="milliseconds"), "level": "info",
                    "event": "mail.processed", "logger": "gateway.worker", "inbound_id": i, "case": "SAG-000001",
                    **FIELDS}, ensure_ascii=False, default=str)
    return time.perf_counter() - started


def _stdlib_logger() -> logging.Logger:
    from gateway.logs import JsonFormatter

    handler = logging.StreamHandler(Null())
    handler.setFormatter(JsonFormatter())
    log = logging.getLogger("gateway.bench")
    log.handlers[:] = [handler]
    log.propagate = False
    log.setLevel(logging.INFO)
    return log


def stdlib(n: int) -> float:
    log = _stdlib_logger()
    started = time.perf_counter()
    for i in range(n):
        log.info("mail.processed", extra={"inbound_id": i, "case": "SAG-000001", **FIELDS})
    return time.perf_counter() - started


def stdlib_bound(n: int) -> float:
    from gateway.logs import bound

    log = _stdlib_logger()
    started = time.perf_counter()
    for i in range(n):
        with bound(inbound_id=i, case="SAG-000001"):
            log.info("mail.processed", extra=FIELDS)
    return time.perf_counter() - started


def structlog_native(n: int) -> float:
    import structlog

    structlog.reset_defaults()
    structlog.configure(
        processors=[structlog.contextvars.merge_contextvars, structlog.processors.add_log_level,
                    structlog.processors.TimeStamper(fmt="iso", utc=True), structlog.processors.JSONRenderer()],
        logger_factory=structlog.WriteLoggerFactory(file=Null()), cache_logger_on_first_use=True)
    log = structlog.get_logger("gateway.bench")
    started = time.perf_counter()
    for i in range(n):
        with structlog.contextvars.bound_contextvars(inbound_id=i, case="SAG-000001"):
            log.info("mail.processed", **FIELDS)
    return time.perf_counter() - started


def structlog_stdlib(n: int) -> float:
    import structlog

    handler = logging.StreamHandler(Null())
    handler.setFormatter(structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[structlog.contextvars.merge_contextvars, structlog.stdlib.add_log_level,
                           structlog.stdlib.ExtraAdder(), structlog.processors.TimeStamper(fmt="iso", utc=True)],
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                    structlog.processors.JSONRenderer()]))
    log = logging.getLogger("gateway.bench.structlog")
    log.handlers[:] = [handler]
    log.propagate = False
    log.setLevel(logging.INFO)
    started = time.perf_counter()
    for i in range(n):
        with structlog.contextvars.bound_contextvars(inbound_id=i, case="SAG-000001"):
            log.info("mail.processed", extra=FIELDS)
    return time.perf_counter() - started


def import_ms(module: str, runs: int = 15) -> float:
    """Median wall time of `python -c "import <module>"` less that of `python -c "pass"`."""
    def once(code: str) -> float:
        started = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)
        return time.perf_counter() - started

    base = statistics.median(once("pass") for _ in range(runs))
    return (statistics.median(once(f"import {module}") for _ in range(runs)) - base) * 1000


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--lines", type=int, default=100_000)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    try:
        import structlog  # noqa: F401
        ways = {"stdlib": stdlib, "stdlib+bound": stdlib_bound, "structlog": structlog_native,
                "structlog/stdlib": structlog_stdlib}
    except ImportError:
        ways = {"stdlib": stdlib, "stdlib+bound": stdlib_bound}
    print(f"load average at start: {Path('/proc/loadavg').read_text().split()[:3]}")
    results: dict[str, list[float]] = {"floor": [], **{name: [] for name in ways}}
    for r in range(1, args.rounds + 1):
        base = floor(args.lines)
        results["floor"].append(base)
        row = [f"round {r}: floor {args.lines / base / 1000:.0f}k lines/s"]
        for name, way in ways.items():
            took = way(args.lines)
            results[name].append(took / base)
            row.append(f"{name} {args.lines / took / 1000:.0f}k/s ({took / base:.2f}x floor)")
        print("; ".join(row), flush=True)
    print("median time per line as a multiple of the floor's:")
    for name in ways:
        print(f"  {name:17} {statistics.median(results[name]):.2f}x   "
              f"({statistics.median(results['floor']) / args.lines * 1e6 * statistics.median(results[name]):.1f} µs)")
    print("import cost (ms, fresh interpreter, median of 15, less `python -c pass`):")
    for module in ("logging, json", "gateway.logs", *(("structlog",) if "structlog" in ways else ())):
        print(f"  {module:17} {import_ms(module):.1f} ms")
    print(f"load average at end: {Path('/proc/loadavg').read_text().split()[:3]}")


if __name__ == "__main__":
    main()
