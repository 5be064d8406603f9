#!/usr/bin/env python3
"""Serviceportalen's pages against the JSON API's reads of the same cases (issue 19, Speed).

    .venv/bin/python bench/portal.py --db sqlite --rounds 3
    .venv/bin/python bench/portal.py --db postgresql --rounds 3

Seeds a fresh store directly (10 customers of one organisation, each with 1,000 cases of which
50 are shared with them by a colleague, and each with one case of 200 public comments — plus
internal notes, files and a status history), starts the real daemon (`gateway run`), logs 10
sessions in through the login form, and gets a requester token for each from the API. Then, a
round at a time, it drives each target with `--sessions` concurrent clients (one per session,
keep-alive), each making `--requests` requests in a bounded loop:

    page list   GET /sager?vis=alle           (Mine sager, page 1 of 40)
    api list    GET /cases?status=all         (the same user's cases, requester token)
    page case   GET /sager/<the big case>     (200 comments)
    api case    GET /cases/<the big case>

and reports p50/p95/p99 latency, requests/s, the client's CPU and the daemon's CPU per request
(its service time, which the rest of the machine's load hardly moves) per target, and the
page/API ratio of the p95 in the same round. `--code DIR --python VENV/bin/python` runs another
checkout's daemon (old against new with one client). The medians over the rounds are printed last: the machine is shared and noisy.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sqlalchemy import insert  # noqa: E402

from store.models import (  # noqa: E402
    AppUser,
    Attachment,
    CaseParty,
    Comment,
    Organisation,
    StatusChange,
    SupportCase,
)

PASSWORD = "benchmark-password-2026"
AGENT_TOKEN = "bench-portal-agent-token-0123456789"
PG_DB = "gw_bench_portal"
ACTIVE = ["registreret", "paabegyndt", "tildelt", "afventer_internt", "afventer_rekvirent"]
DONE = ["udfoert", "lukket"]
TEXT = ("Hej Kundebetjening. Jeg kan ikke logge på lønsystemet efter opdateringen i går, og mine "
        "kolleger i afdelingen har samme problem. Vi har prøvet at nulstille adgangskoden og at "
        "genstarte computeren, men fejlen kommer igen: 'Adgang nægtet (kode 4711)'. ")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --- the store ------------------------------------------------------------------------------------------


@dataclass
class Seeded:
    emails: list[str]
    big_cases: list[str]  # per user, the number of the case with the many comments


def _rows(n_users: int, n_cases: int, n_comments: int, shared: int, password_hash: str) -> dict[Any, list[dict[str, Any]]]:
    """Every row to insert, by table, with explicit ids (inserted in this order)."""
    now = datetime.now(UTC).replace(microsecond=0)
    users = [{"id": 1, "email": "agent@sa.example", "name": "Anne Agent", "role": "agent", "kind": "person",
              "created_at": now}]
    users += [{"id": 2 + i, "email": f"bench{i}@kunde.example", "name": f"Bruger {i:02d}", "role": "customer",
               "kind": "person", "organisation_id": 1, "created_at": now} for i in range(n_users)]
    own = n_cases - shared
    cases, changes, comments, files, parties = [], [], [], [], []
    for i in range(n_users):
        for j in range(own):
            case_id = i * own + j + 1
            status = (ACTIVE + DONE + ACTIVE)[j % 12] if j else "afventer_rekvirent"
            at = now - timedelta(hours=j * 7 + i)  # case 0 of each user is its newest
            # Udført for less than `policy.close_after_days`: the timed job closes (and mails)
            # nothing while the rounds run; it closed ~1,600 cases at the start of the first.
            since = at if status != "udfoert" else max(at, now - timedelta(days=1))
            cases.append({"id": case_id, "number": f"SAG-{case_id:06d}", "subject": f"Sag {j} om lønsystemet",
                          "requester_id": 2 + i, "status": status, "created_at": at - timedelta(days=3),
                          "updated_at": at, "status_changed_at": since})
            changes.append({"case_id": case_id, "at": at - timedelta(days=3), "by_label": "mail",
                            "from_status": None, "to_status": "registreret"})
            if status != "registreret":
                changes.append({"case_id": case_id, "at": at, "by_label": "agent@sa.example",
                                "from_status": "registreret", "to_status": status})
        neighbour = (i + 1) % n_users  # a colleague shares some of theirs with this user
        parties += [{"case_id": neighbour * own + j + 1, "user_id": 2 + i, "added_at": now}
                    for j in range(1, shared + 1)]
        big = i * own + 1
        for k in range(n_comments + n_comments // 10):
            comment_id = len(comments) + 1
            agent = k % 2 == 1
            comments.append({"id": comment_id, "case_id": big, "author_id": 1 if agent else 2 + i,
                             "created_at": now - timedelta(days=3) + timedelta(minutes=10 * k),
                             "source": "api" if agent else "mail", "public": k < n_comments,
                             "visible_text": f"{k}: " + TEXT * (1 + k % 3), "full_text": "", "signature": "",
                             "kind": "comment"})
            if k % 20 == 0:
                files.append({"comment_id": comment_id, "name": f"bilag-{k}.pdf", "size": 12345 + k,
                              "sha256": f"{k:064x}", "content_type": "application/pdf"})
    passwords = [{"user_id": 2 + i, "password_hash": password_hash, "set_at": now} for i in range(n_users)]
    from store.models import PortalPassword

    return {Organisation: [{"id": 1, "name": "Bench A/S"}], AppUser: users, SupportCase: cases,
            CaseParty: parties, StatusChange: changes, Comment: comments, Attachment: files,
            PortalPassword: passwords}


async def seed(url: str, n_users: int, n_cases: int, n_comments: int, shared: int) -> Seeded:
    from argon2 import PasswordHasher

    from store.engine import make_engine

    tables = _rows(n_users, n_cases, n_comments, shared, PasswordHasher().hash(PASSWORD))
    engine = make_engine(url)
    try:
        async with engine.begin() as conn:
            for model, rows in tables.items():
                for start in range(0, len(rows), 2000):
                    await conn.execute(insert(model.__table__), rows[start:start + 2000])  # type: ignore[attr-defined]
            if engine.dialect.name == "postgresql":  # explicit ids: move the sequences past them
                for model in (Organisation, AppUser, SupportCase, Comment):
                    table = model.__tablename__
                    await conn.exec_driver_sql(
                        f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), (SELECT max(id) FROM {table}))")
            await conn.exec_driver_sql("ANALYZE")
    finally:
        await engine.dispose()
    own = n_cases - shared
    return Seeded([f"bench{i}@kunde.example" for i in range(n_users)],
                  [f"SAG-{i * own + 1:06d}" for i in range(n_users)])


def fresh_postgres(base: str) -> str:
    admin = ["psql", "-h", "127.0.0.1", "-U", "postgres", "-q", "-c"]
    subprocess.run([*admin, f"DROP DATABASE IF EXISTS {PG_DB}"], check=True)
    subprocess.run([*admin, f"CREATE DATABASE {PG_DB}"], check=True)
    return base.rsplit("/", 1)[0] + f"/{PG_DB}"


# --- the daemon -------------------------------------------------------------------------------------------


def write_config(folder: Path, url: str, port: int, extra: list[str] = []) -> Path:  # noqa: B006
    sections: dict[str, list[str]] = {}
    for item in extra:
        key, _, value = item.partition("=")
        section, _, name = key.partition(".")
        sections.setdefault(section, []).append(f"{name} = {value}")
    config = folder / "gateway.toml"
    config.write_text(f"""
[database]
url = "{url}"
[storage]
blob_dir = "{folder}/blobs"
[outbound]
transport = "maildir:{folder}/outbound"
[smtp]
port = {free_port()}
[api]
port = {port}
requester_token_secret = "bench-requester-secret-0123456789"
agent_tokens = ["{AGENT_TOKEN}"]
[portal]
url = "http://127.0.0.1:{port}"
attempts_per_client = 1000
[daemon]
log_level = "WARNING"
""", encoding="utf-8")
    if sections:  # TOML: a table may be named once, so the extra keys go in by text after its header
        text = config.read_text(encoding="utf-8")
        for section, lines in sections.items():
            header = f"[{section}]\n"
            text = text.replace(header, header + "\n".join(lines) + "\n") if header in text \
                else text + header + "\n".join(lines) + "\n"
        config.write_text(text, encoding="utf-8")
    return config


@dataclass(frozen=True)
class Code:
    """Which checkout's daemon to run (`--code`, `--python`): old and new measured by one client."""

    root: Path = ROOT
    python: str = sys.executable


def gateway(code: Code, config: Path, *args: str, log: Any = None) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    env["PYTHONPATH"] = str(code.root)  # that checkout's `gateway`, whatever the venv installed
    return subprocess.Popen([code.python, "-m", "gateway", "--config", str(config), *args], cwd=code.root, env=env,
                            stdout=log or subprocess.DEVNULL, stderr=subprocess.STDOUT)


def wait_healthy(base: str, proc: subprocess.Popen[bytes], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"gateway run exited with {proc.returncode}")
        try:
            if httpx.get(f"{base}/healthz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise TimeoutError("the daemon did not answer /healthz")


# --- the clients ----------------------------------------------------------------------------------------------


class Session:
    """A keep-alive HTTP/1.1 connection of its own for the measured GETs: one request line and
    a few headers written, the status line and Content-Length parsed, the body read as bytes.
    The client shares the two cores with the daemon it measures: httpx (still used for the
    logins) parses in pure Python and decoded each 168 KB page to text; this costs 0.01-0.03 of
    a core at 10 sessions (`client CPU` in the report)."""

    def __init__(self, base: str, headers: dict[str, str]) -> None:
        host, _, port = base.removeprefix("http://").partition(":")
        self.host, self.port = host, int(port)
        extra = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        self._head = f"Host: {host}:{port}\r\n{extra}\r\n".encode()
        self._io: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None

    async def get(self, path: str) -> tuple[int, bytes]:
        try:
            return await self._get(path)
        except (asyncio.IncompleteReadError, ConnectionError) as exc:
            if isinstance(exc, asyncio.IncompleteReadError) and exc.partial:
                raise
            await self.aclose()  # the server ended an idle keep-alive connection (uvicorn: after 5 s)
            return await self._get(path)

    async def _get(self, path: str) -> tuple[int, bytes]:
        if self._io is None:
            self._io = await asyncio.open_connection(self.host, self.port, limit=1 << 20)
        reader, writer = self._io
        writer.write(b"GET " + path.encode() + b" HTTP/1.1\r\n" + self._head)
        head = await reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        length = re.search(rb"\r\ncontent-length: *(\d+)", head, re.IGNORECASE)
        if length is None:
            raise AssertionError(f"{path}: no Content-Length: {head[:300]!r}")
        return status, await reader.readexactly(int(length.group(1)))

    async def aclose(self) -> None:
        if self._io is not None:
            self._io[1].close()
            self._io = None


async def log_in(base: str, email: str) -> Session:
    async with httpx.AsyncClient(base_url=base, timeout=30) as client:
        form = await client.get("/login")
        csrf = re.search(r'name="csrf" value="([^"]+)"', form.text)
        assert csrf, form.text[:300]
        answer = await client.post("/login", data={"csrf": csrf.group(1), "email": email, "password": PASSWORD})
        assert answer.status_code == 303, (answer.status_code, answer.text[:300])
        cookies = "; ".join(f"{name}={value}" for name, value in client.cookies.items())
    return Session(base, {"Cookie": cookies})


async def api_client(base: str, email: str) -> Session:
    answer = httpx.post(f"{base}/users/token", json={"email": email}, timeout=30,
                        headers={"Authorization": f"Bearer {AGENT_TOKEN}"})
    assert answer.status_code == 200, answer.text
    return Session(base, {"Authorization": f"Bearer {answer.json()['token']}"})


@dataclass
class Figures:
    p50: float
    p95: float
    p99: float
    rps: float
    client_cpu: float = 0.0  # the client's CPU seconds per wall second (1.0 = one core)
    server_cpu_ms: float = 0.0  # the daemon and its children: CPU (user + system) per request, the service time


def _pct(sorted_ms: list[float], q: float) -> float:
    return sorted_ms[min(len(sorted_ms) - 1, int(q * len(sorted_ms)))]


async def drive(clients: list[Session], paths: list[str], requests: int, check: str) -> Figures:
    """Each client its own path, `requests` times one after the other; all clients at once."""
    latencies: list[float] = []
    expected = check.encode()

    async def one(client: Session, path: str) -> None:
        for _ in range(requests):
            started = time.perf_counter()
            status, body = await client.get(path)
            latencies.append((time.perf_counter() - started) * 1000)
            if status != 200 or expected not in body:
                raise AssertionError(f"{path}: {status} {body[:200]!r}")

    started, cpu = time.perf_counter(), time.process_time()
    await asyncio.gather(*(one(c, p) for c, p in zip(clients, paths, strict=True)))
    wall = time.perf_counter() - started
    latencies.sort()
    return Figures(_pct(latencies, 0.50), _pct(latencies, 0.95), _pct(latencies, 0.99), len(latencies) / wall,
                   (time.process_time() - cpu) / wall)


async def measure(base: str, seeded: Seeded, sessions: int, requests: int, rounds: int,
                  only: list[str] | None = None, profile: tuple[int, Path] | None = None,
                  daemon_pid: int | None = None) -> list[dict[str, Figures]]:
    emails = [seeded.emails[i % len(seeded.emails)] for i in range(sessions)]
    bigs = [seeded.big_cases[i % len(seeded.big_cases)] for i in range(sessions)]
    pages = [await log_in(base, e) for e in emails]
    apis = [await api_client(base, e) for e in emails]
    targets = {
        "page list": (pages, ["/sager?vis=alle"] * sessions, "Mine sager"),
        "api list": (apis, ["/cases?status=all"] * sessions, '"number"'),
        "page case": (pages, [f"/sager/{n}" for n in bigs], "Samtale"),
        "api case": (apis, [f"/cases/{n}" for n in bigs], '"comments"'),
    }
    targets = {name: target for name, target in targets.items() if not only or name in only}
    for clients, paths, check in targets.values():  # warm up: caches, connections, first renders
        await drive(clients, paths, 3, check)
    results = []
    spy = _profile(*profile) if profile else None
    try:
        for round_no in range(1, rounds + 1):
            result = {}
            for name, (clients, paths, check) in targets.items():
                cpu = cpu_seconds(daemon_pid)
                result[name] = await drive(clients, paths, requests, check)
                if daemon_pid is not None:
                    result[name].server_cpu_ms = (cpu_seconds(daemon_pid) - cpu) * 1000 / (requests * len(clients))
            results.append(result)
            print(f"round {round_no} (load {load()}): " + "; ".join(
                f"{n} p50 {f.p50:.1f} p95 {f.p95:.1f} p99 {f.p99:.1f} ms {f.rps:.0f}/s client CPU {f.client_cpu:.2f} "
                f"server {f.server_cpu_ms:.2f} ms CPU/request"
                for n, f in result.items())
                + "".join(f"; ratio p95 {w} {ratio(result, w):.2f}" for w in ("list", "case")
                          if f"page {w}" in result and f"api {w}" in result), flush=True)
    finally:
        if spy is not None:
            spy.send_signal(2)
            spy.wait(60)
        for client in (*pages, *apis):
            await client.aclose()
    return results


def _profile(pid: int, output: Path) -> subprocess.Popen[bytes]:
    """py-spy (pip install py-spy) on the daemon while the rounds run: collapsed stacks in `output`."""
    spy = subprocess.Popen([str(Path(sys.executable).parent / "py-spy"), "record", "-p", str(pid), "-r", "250", "--subprocesses",
                            "--format", "raw", "-o", str(output)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(1.0)
    return spy


def cpu_seconds(pid: int | None) -> float:
    """User + system CPU so far (/proc/PID/stat) of a process and all its descendants — the
    daemon's HTTP, worker and sender children start from its fork server — 0 without one.
    Unlike latency it hardly moves with the load of the rest of the machine."""
    if pid is None:
        return 0.0
    stats: dict[int, tuple[int, float]] = {}  # pid -> (parent, CPU seconds)
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:  # gone meanwhile
                continue
            stats[int(entry.name)] = (int(fields[1]), (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK"))
    family, total = {pid}, 0.0
    for _ in range(8):  # bounded: the daemon's tree is a few levels deep
        family |= {p for p, (parent, _) in stats.items() if parent in family}
    for p in family:
        total += stats.get(p, (0, 0.0))[1]
    return total


def load() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def ratio(result: dict[str, Figures], what: str) -> float:
    return result[f"page {what}"].p95 / result[f"api {what}"].p95


def report(results: list[dict[str, Figures]], label: str) -> str:
    lines = [f"| {label} | p50 ms | p95 ms | p99 ms | requests/s | client CPU | server CPU ms/request |",
             "|---|---|---|---|---|---|---|"]
    for name in results[0]:
        med = {k: statistics.median(getattr(r[name], k) for r in results)
               for k in ("p50", "p95", "p99", "rps", "client_cpu", "server_cpu_ms")}
        lines.append(f"| {name} | {med['p50']:.1f} | {med['p95']:.1f} | {med['p99']:.1f} | {med['rps']:.0f} "
                     f"| {med['client_cpu']:.2f} | {med['server_cpu_ms']:.2f} |")
    for what in ("list", "case"):
        if f"page {what}" not in results[0] or f"api {what}" not in results[0]:
            continue
        ratios = [ratio(r, what) for r in results]
        lines.append(f"| page/API p95, {what} | {statistics.median(ratios):.2f} "
                     f"(rounds: {', '.join(f'{x:.2f}' for x in ratios)}) | | | | | |")
    return "\n".join(lines)


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--db", choices=["sqlite", "postgresql"], default="sqlite")
    parser.add_argument("--pg-url", default="postgresql+asyncpg://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--users", type=int, default=10)
    parser.add_argument("--cases", type=int, default=1000, help="cases each user sees (own and shared)")
    parser.add_argument("--shared", type=int, default=50, help="of which shared with them by a colleague")
    parser.add_argument("--comments", type=int, default=200, help="public comments of each user's big case")
    parser.add_argument("--sessions", type=int, default=10)
    parser.add_argument("--requests", type=int, default=40, help="per session, per target, per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--only", action="append", choices=["page list", "api list", "page case", "api case"],
                        help="measure only these targets (repeatable)")
    parser.add_argument("--profile", type=Path, help="py-spy's collapsed stacks of the daemon, into this file")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder (the daemon's log)")
    parser.add_argument("--code", type=Path, default=ROOT, help="the checkout whose daemon runs (default: this one)")
    parser.add_argument("--python", default=sys.executable, help="the interpreter (venv) that runs the daemon")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="an extra setting for the daemon's config (repeatable), e.g. api.http_processes=2")
    args = parser.parse_args()
    code = Code(args.code.resolve(), args.python)

    folder = Path(tempfile.mkdtemp(prefix="gw-bench-portal-"))
    url = fresh_postgres(args.pg_url) if args.db == "postgresql" else f"sqlite+aiosqlite:///{folder}/gateway.db"
    port = free_port()
    config = write_config(folder, url, port, args.set)
    if gateway(code, config, "db", "upgrade").wait() != 0:
        raise SystemExit("gateway db upgrade failed")
    started = time.perf_counter()
    seeded = await seed(url, args.users, args.cases, args.comments, args.shared)
    print(f"seeded {args.users} users x {args.cases} cases, {args.comments} comments a big case "
          f"in {time.perf_counter() - started:.1f} s ({args.db})", flush=True)
    with (folder / "daemon.log").open("wb") as log:
        daemon = gateway(code, config, "run", log=log)
        try:
            base = f"http://127.0.0.1:{port}"
            wait_healthy(base, daemon)
            results = await measure(base, seeded, args.sessions, args.requests, args.rounds, args.only,
                                    (daemon.pid, args.profile) if args.profile else None, daemon.pid)
        finally:
            daemon.terminate()
            daemon.wait(30)
    print(f"\nmedians of {args.rounds} rounds, {args.sessions} sessions x {args.requests} requests each:")
    print(report(results, args.db))
    print(f"load average at the end: {load()}")
    print(json.dumps({"db": args.db, "rounds": [{k: vars(v) for k, v in r.items()} for r in results]}))
    if not args.keep:
        import shutil

        shutil.rmtree(folder, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main()))
