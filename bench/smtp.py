"""SMTP ingest speed: the running daemon against the floor of its own protocol stack.

    .venv/bin/python bench/smtp.py --n 1000 --sessions 10 --size 20000

Two servers, the same load, one run:
  floor    aiosmtpd in a child process whose handler only answers 250 (nothing stored)
  gateway  `gateway run` as a child process: SQLite (WAL, synchronous=FULL), maildir outbound,
           parsing in a child process, group commit

Load 1 (throughput): Postfix's `smtp-source -s SESSIONS -m N -l SIZE` (distinct mails: each
has its own Message-Id). Acknowledged mails/s = N / the time smtp-source took; end to end =
N / the time until the N-th case exists (the bench polls the store).
Load 2 (latency): an asyncio client with the same number of sessions sends N distinct mails
(gen_corpus.py --fixed-size SIZE with a new Message-ID each) and times each final dot → reply.

It also prints the CPU each process of the daemon spent a mail during load 1 (from /proc, by
the names of gateway/procname.py: gw-daemon is the SMTP listener's process), and on
PostgreSQL that of the server's processes (`postgres`), which are the store's work too: each
backend named after the daemon's process it serves (`pg:gw-worker`, `pg:gw-writer`, …), the
server's own processes `pg-shared`.

Targets (issue 3): acknowledged >= 60% of the floor, end to end >= 50%, p99 DATA→250 < 100 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.daemon_proc import DaemonProcess  # noqa: E402
from tests.smtp_probes import ADDRESS, timed_deliveries  # noqa: E402

GEN_CORPUS = ROOT / "bench" / "gen_corpus.py"
SENDER = "loadgen@example.org"


@dataclass
class Result:
    name: str
    ack_rate: float
    e2e_rate: float | None
    p50_ms: float
    p99_ms: float
    client_rate: float
    refused: int
    cpu_ms: dict[str, float] | None = None  # per mail of load 1, by process


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
                if sock.recv(256).startswith(b"220"):
                    sock.sendall(b"QUIT\r\n")
                    return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listens on {port}")


def run_null_server(port: int, size_limit: int) -> None:
    """The floor: aiosmtpd with the gateway's protocol options and a handler that only says 250."""
    from aiosmtpd.smtp import SMTP

    class Null:
        async def handle_DATA(self, server: object, session: object, envelope: object) -> str:
            return "250 2.0.0 Ok"

    async def main() -> None:
        loop = asyncio.get_running_loop()
        await loop.create_server(lambda: SMTP(Null(), decode_data=False, data_size_limit=size_limit,
                                              hostname="floor", ident="floor"), "127.0.0.1", port)
        await asyncio.Event().wait()

    asyncio.run(main())


def tree_cpu(pid: int) -> dict[int, tuple[str, float]]:
    """Each process of the tree under `pid`: its name (gw-worker, …; gateway/procname.py) and
    the CPU seconds it has used so far (Linux /proc)."""
    found, todo = {}, [pid]
    while todo:
        p = todo.pop()
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            found[p] = (Path(f"/proc/{p}/comm").read_text().strip(),
                        (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK"))
            for task in Path(f"/proc/{p}/task").iterdir():
                todo += [int(c) for c in (task / "children").read_text().split()]
        except (OSError, IndexError, ValueError):
            continue
    return found


def server_cpu(database: str | None = None, clients: dict[int, str] | None = None) -> dict[int, tuple[str, float]]:
    """The PostgreSQL server's processes and their CPU seconds: on PostgreSQL the store's own
    work is not in the daemon's tree. `pg-backends`: the connections to the bench's own
    database; `pg-shared`: the server's own processes (WAL writer, checkpointer, …), which
    other users of the same server (test suites) keep busy too. Nothing on SQLite. With
    `clients` (`client_ports`), a backend is named after the daemon's process it serves:
    `pg:gw-worker` is the server's work for the worker's transactions."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if (entry / "comm").read_text().strip() != "postgres":
                continue
            words = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").split()
            if "(" in " ".join(words) and "postgres:" in words:  # a backend: "postgres: user db host(port) …"
                if database is None or database not in words:
                    continue
                name = "pg-backends"
                port = next((w.rsplit("(", 1)[1].rstrip(")") for w in words if "(" in w and w.endswith(")")), "")
                if clients is not None and port.isdigit() and int(port) in clients:
                    name = f"pg:{clients[int(port)]}"
            else:
                name = "pg-shared"
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            found[int(entry.name)] = (name, (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK"))
        except (OSError, IndexError, ValueError):
            continue
    return found


def client_ports(pids: list[int]) -> dict[int, str]:
    """The local ports of these processes' connections to PostgreSQL (port 5432), each with the
    name of the process that holds it (Linux /proc: a socket's inode in the process's fds, its
    ports in /proc/net/tcp)."""
    owner: dict[str, str] = {}
    for pid in pids:
        try:
            comm = Path(f"/proc/{pid}/comm").read_text().strip()
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                with contextlib.suppress(OSError):
                    target = os.readlink(fd)
                    if target.startswith("socket:["):
                        owner[target[8:-1]] = comm
        except OSError:
            continue
    ports: dict[int, str] = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                local, remote, inode = fields[1], fields[2], fields[9]
                if int(remote.rsplit(":", 1)[1], 16) == 5432 and inode in owner:
                    ports[int(local.rsplit(":", 1)[1], 16)] = owner[inode]
    return ports


def database_of(url: str) -> str | None:
    from sqlalchemy.engine import make_url

    return make_url(url).database if url.startswith("postgresql") else None


def tree_cpu_s(pid: int) -> float:
    """CPU seconds used so far by a process and all its descendants."""
    return sum(cpu for _, cpu in tree_cpu(pid).values())


def cpu_by_name(before: dict[int, tuple[str, float]], after: dict[int, tuple[str, float]],
                n: int) -> dict[str, float]:
    """Milliseconds of CPU a mail, by process name (the parse processes together)."""
    spent: dict[str, float] = {}
    for pid, (name, cpu) in after.items():
        spent[name] = spent.get(name, 0.0) + (cpu - before.get(pid, (name, 0.0))[1]) * 1000 / n
    return {name: ms for name, ms in sorted(spent.items(), key=lambda kv: -kv[1]) if ms >= 0.005}


def wait_idle(pid: int, timeout: float = 15.0) -> None:
    """Until the daemon and its children (worker, parse pool, writer) have finished starting:
    mail reaches a daemon that runs, not one still importing its modules on both cores."""
    deadline = time.monotonic() + timeout
    before = tree_cpu_s(pid)
    while time.monotonic() < deadline:
        time.sleep(0.25)
        now = tree_cpu_s(pid)
        if now - before < 0.01:
            return
        before = now


def smtp_source(port: int, n: int, sessions: int, size: int) -> float:
    """Seconds smtp-source needed for n mails; it stops at the first non-2xx reply."""
    started = time.perf_counter()
    subprocess.run(["smtp-source", "-s", str(sessions), "-m", str(n), "-l", str(size), "-S", "load test",
                    "-f", SENDER, "-t", ADDRESS, f"127.0.0.1:{port}"], check=True, timeout=600)
    return time.perf_counter() - started


def distinct_mails(n: int, size: int, tag: str) -> list[bytes]:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "fixed.eml"
        subprocess.run([sys.executable, str(GEN_CORPUS), "--fixed-size", str(size), "--out-file", str(path)],
                       check=True, capture_output=True)
        template = path.read_bytes().replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    head, sep, body = template.partition(b"\r\n\r\n")
    lines = [ln for ln in head.split(b"\r\n") if not ln.lower().startswith((b"message-id:", b"subject:"))]
    return [b"\r\n".join([*lines, f"Message-ID: <{tag}-{i}@bench.example>".encode(),
                          f"Subject: bench {tag} {i}".encode()]) + sep + body for i in range(n)]


def latency(port: int, mails: list[bytes], sessions: int) -> tuple[float, float, float, int]:
    started = time.perf_counter()
    replies, seconds = asyncio.run(timed_deliveries(port, mails, sessions, sender=SENDER))
    elapsed = time.perf_counter() - started
    refused = sum(1 for r in replies if r.code != 250)
    ordered = sorted(seconds)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] if ordered else float("nan")
    return statistics.median(ordered) * 1000, p99 * 1000, len(mails) / elapsed, refused


def bench_floor(args: argparse.Namespace) -> Result:
    port = free_port()
    server = subprocess.Popen([sys.executable, __file__, "--null-server", str(port), "--size", str(args.size)])
    try:
        wait_port(port)
        seconds = smtp_source(port, args.n, args.sessions, args.size)
        p50, p99, rate, refused = latency(port, distinct_mails(args.n, args.size, "floor"), args.sessions)
    finally:
        server.kill()
        server.wait()
    return Result("floor (aiosmtpd, 250 only)", args.n / seconds, None, p50, p99, rate, refused)


def bench_gateway(args: argparse.Namespace, folder: Path) -> Result:
    proc = DaemonProcess(folder, worker={"parse_in_subprocess": True},
                         daemon={"log_format": "json", "log_level": args.log_level})
    with proc:
        proc.start()
        assert proc.process is not None
        wait_idle(proc.process.pid)
        db = database_of(proc.settings.database.url)
        clients = client_ports(list(tree_cpu(proc.process.pid))) if db else None
        cpu_before = {**tree_cpu(proc.process.pid), **server_cpu(db, clients)}
        started = time.perf_counter()
        seconds = smtp_source(proc.smtp_port, args.n, args.sessions, args.size)
        asyncio.run(_wait_cases(proc, args.n, timeout=600))
        e2e = time.perf_counter() - started
        if db:  # connections opened during the load too
            clients = {**(clients or {}), **client_ports(list(tree_cpu(proc.process.pid)))}
        cpu = cpu_by_name(cpu_before, {**tree_cpu(proc.process.pid), **server_cpu(db, clients)}, args.n)
        p50, p99, rate, refused = latency(proc.smtp_port, distinct_mails(args.n, args.size, "gw"), args.sessions)
        asyncio.run(_wait_cases(proc, 2 * args.n - refused, timeout=600))
        if proc.stop() != 0:
            print(proc.tail(), file=sys.stderr)
    return Result("gateway run", args.n / seconds, args.n / e2e, p50, p99, rate, refused, cpu)


def bench_nodes(args: argparse.Namespace, folder: Path) -> Result:
    """Two `gateway run` nodes on one PostgreSQL (issue 8), half of the load to each."""
    from tests.pg import fresh_database

    shared = {"url": fresh_database(os.environ["GATEWAY_TEST_DATABASE_URL"])}
    nodes = []
    for name in ("a", "b"):
        (folder / name).mkdir()
        nodes.append(DaemonProcess(folder / name, database=shared, worker={"parse_in_subprocess": True},
                                   daemon={"log_format": "json", "log_level": args.log_level}))
    try:
        for node in nodes:
            node.start()
        pids = []
        for node in nodes:
            assert node.process is not None
            wait_idle(node.process.pid)
            pids.append(node.process.pid)

        clients = client_ports([pid for p in pids for pid in tree_cpu(p)])

        def all_cpu() -> dict[int, tuple[str, float]]:
            clients.update(client_ports([pid for p in pids for pid in tree_cpu(p)]))  # connections opened since
            return {pid: v for p in pids for pid, v in tree_cpu(p).items()} | server_cpu(database_of(shared["url"]),
                                                                                         clients)

        cpu_before = all_cpu()
        started = time.perf_counter()
        with ThreadPoolExecutor(2) as pool:
            took = list(pool.map(lambda node: smtp_source(node.smtp_port, args.n // 2, args.sessions // 2, args.size),
                                 nodes))
        asyncio.run(_wait_cases(nodes[0], 2 * (args.n // 2), timeout=600))
        e2e = time.perf_counter() - started
        cpu = cpu_by_name(cpu_before, all_cpu(), 2 * (args.n // 2))
        # latency: the asyncio client's sessions split over both nodes
        mails = distinct_mails(args.n, args.size, "gw")
        half = len(mails) // 2
        with ThreadPoolExecutor(2) as pool:
            lat = list(pool.map(lambda pm: timed_latency(pm[0], pm[1], args.sessions // 2),
                                [(nodes[0].smtp_port, mails[:half]), (nodes[1].smtp_port, mails[half:])]))
        seconds_all = sorted(t for ts, _ in lat for t in ts)
        refused = sum(r for _, r in lat)
        p50 = statistics.median(seconds_all) * 1000
        p99 = seconds_all[min(len(seconds_all) - 1, int(len(seconds_all) * 0.99))] * 1000
    finally:
        for node in nodes:
            if node.running:
                node.stop()
    return Result("2 nodes, PostgreSQL", 2 * (args.n // 2) / max(took), 2 * (args.n // 2) / e2e, p50, p99, 0.0,
                  refused, cpu)


def timed_latency(port: int, mails: list[bytes], sessions: int) -> tuple[list[float], int]:
    replies, seconds = asyncio.run(timed_deliveries(port, mails, sessions, sender=SENDER))
    return list(seconds), sum(1 for r in replies if r.code != 250)


async def _wait_cases(proc: DaemonProcess, n: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while (await proc.scalar("SELECT count(*) FROM support_case") or 0) < n:
        if time.monotonic() > deadline:
            raise TimeoutError(f"fewer than {n} cases after {timeout} s")
        await asyncio.sleep(0.05)


def report(floor: Result, gateway: Result, args: argparse.Namespace) -> None:
    print(f"\nSMTP ingest, {args.n} mails of {args.size} bytes, {args.sessions} sessions, {os.cpu_count()} cores")
    print(f"{'':28} {'ack/s':>8} {'e2e/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'client/s':>9} {'not 250':>8}")
    for r in (floor, gateway):
        e2e = f"{r.e2e_rate:8.0f}" if r.e2e_rate else f"{'-':>8}"
        print(f"{r.name:28} {r.ack_rate:8.0f} {e2e} {r.p50_ms:8.1f} {r.p99_ms:8.1f} {r.client_rate:9.0f} "
              f"{r.refused:8d}")
    ack, e2e = gateway.ack_rate / floor.ack_rate, (gateway.e2e_rate or 0) / floor.ack_rate
    if gateway.cpu_ms:
        print("CPU per mail (load 1, until the last case): "
              + ", ".join(f"{name} {ms:.2f} ms" for name, ms in gateway.cpu_ms.items())
              + f"; {sum(gateway.cpu_ms.values()):.2f} ms in all"
              + (f", {sum(ms for n, ms in gateway.cpu_ms.items() if n != 'pg-shared'):.2f} without pg-shared"
                 if "pg-shared" in gateway.cpu_ms else "")
              + (f"; PostgreSQL's backends {backends:.2f} ms"
                 if (backends := sum(ms for n, ms in gateway.cpu_ms.items() if n.startswith(("pg:", "pg-backends"))))
                 else ""))
    print(f"\nacknowledged / floor = {ack:.0%} (target >= 60%)   end to end / floor = {e2e:.0%} (target >= 50%)"
          f"   p99 DATA->250 = {gateway.p99_ms:.0f} ms (target < 100)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--sessions", type=int, default=10)
    parser.add_argument("--size", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=1, help="floor and gateway, alternately, this many times")
    parser.add_argument("--log-level", default="INFO", help="the daemon's log level (INFO logs every mail)")
    parser.add_argument("--keep", action="store_true", help="keep the daemon's folder (store, log)")
    parser.add_argument("--nodes", type=int, choices=(1, 2), default=1,
                        help="2: two nodes on the PostgreSQL of GATEWAY_TEST_DATABASE_URL, half the load each")
    parser.add_argument("--null-server", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.null_server:
        run_null_server(args.null_server, 35_000_000)
        return 0
    if shutil.which("smtp-source") is None:
        print("smtp-source is missing: apt-get install postfix (make system-deps)", file=sys.stderr)
        return 1
    rounds = []
    for _ in range(args.rounds):  # alternate, so both see the same machine (these are noisy)
        folder = Path(tempfile.mkdtemp(prefix="bench-smtp-"))
        try:
            gateway = bench_nodes(args, folder) if args.nodes == 2 else bench_gateway(args, folder)
            rounds.append((bench_floor(args), gateway))
        finally:
            if not args.keep:
                shutil.rmtree(folder, ignore_errors=True)
            else:
                print(f"kept {folder}")
        report(*rounds[-1], args)
        print(f"load average: {Path('/proc/loadavg').read_text().strip()}")
    if len(rounds) > 1:
        acks = sorted(g.ack_rate / f.ack_rate for f, g in rounds)
        e2es = sorted((g.e2e_rate or 0) / f.ack_rate for f, g in rounds)
        p99s = sorted(g.p99_ms for _, g in rounds)
        print(f"\nmedian of {len(rounds)} rounds: acknowledged / floor = {statistics.median(acks):.0%}, "
              f"end to end / floor = {statistics.median(e2es):.0%}, p99 DATA->250 = {statistics.median(p99s):.0f} ms")
        cpus = [sum(g.cpu_ms.values()) for _, g in rounds if g.cpu_ms]
        if cpus:
            print(f"CPU a mail over all processes (daemon, children, PostgreSQL server): median "
                  f"{statistics.median(cpus):.2f} ms ({', '.join(f'{c:.2f}' for c in cpus)})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

