"""`gateway run` as a child process, for tests that need the real daemon (signals, crashes).

    proc = DaemonProcess(tmp_path, worker={"lease_s": 2})
    proc.start()                      # waits until the SMTP port greets
    ... deliver to ("127.0.0.1", proc.smtp_port) ...
    rc = proc.stop()                  # SIGTERM, waits for the exit code
    proc.kill(); proc.start()         # SIGKILL, then the same config again (a restart)
    proc.kill_group()                 # SIGKILL of the daemon's whole process group
    await proc.freeze_worker_holding_claims()   # SIGSTOP the worker child while it holds claims
    await proc.scalar("SELECT count(*) FROM support_case")
    proc.events("mail.received")      # the daemon's JSON log lines with that event

The config is written as TOML in tmp_path: the store from `conftest.database_url` (a SQLite
file, or PostgreSQL when the suite runs there), outbound mail into a maildir, a free SMTP
port, the API off. Extra sections are merged over it, key by key.
"""

from __future__ import annotations

import asyncio
import atexit
import ctypes
import json
import os
import signal
import socket
import subprocess
import sys
import time
import tomllib
import weakref
from pathlib import Path
from typing import Any

from sqlalchemy import text

from gateway.settings import Settings, load_settings
from store.engine import make_engine, resolve_url
from tests.conftest import ROOT, database_url, free_port

PR_SET_PDEATHSIG = 1  # prctl(2), Linux


_RUNNING: weakref.WeakSet[DaemonProcess] = weakref.WeakSet()


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM when the test process dies, even by SIGKILL or a
    timeout's os._exit (the daemon has a session of its own, so no terminal hang-up reaches it)."""
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


@atexit.register
def _kill_leftovers() -> None:
    for proc in list(_RUNNING):
        proc.kill()


def to_toml(doc: dict[str, dict[str, Any]]) -> str:
    """Enough TOML for a settings file: tables of strings, numbers, booleans and lists."""
    lines: list[str] = []
    for section, values in doc.items():
        lines.append(f"[{section}]")
        lines.extend(f"{key} = {_value(value)}" for key, value in values.items())
        lines.append("")
    return "\n".join(lines)


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    return json.dumps(str(value))  # a JSON string is a valid TOML basic string


class DaemonProcess:
    def __init__(self, tmp_path: Path, **sections: dict[str, Any]) -> None:
        self.dir = tmp_path
        self.smtp_port = free_port()
        doc: dict[str, dict[str, Any]] = tomllib.loads((ROOT / "config" / "gateway.toml").read_text())
        defaults: dict[str, dict[str, Any]] = {
            "database": {"url": database_url(tmp_path)},
            "storage": {"blob_dir": str(tmp_path / "blobs")},
            "outbound": {"transport": f"maildir:{tmp_path}/outbound"},
            "smtp": {"host": "127.0.0.1", "port": self.smtp_port},
            "api": {"enabled": False, "port": 0},
            "daemon": {"log_format": "json", "grace_s": 10.0},
            # load from one address is the point of these tests, not a mail loop
            "policy": {"max_mails_per_sender_per_hour": 0},
        }
        for layer in (defaults, sections):
            for name, values in layer.items():
                doc.setdefault(name, {}).update(values)
        self.smtp_port = int(doc["smtp"]["port"])
        self.config_path = tmp_path / "gateway-test.toml"
        self.config_path.write_text(to_toml(doc), encoding="utf-8")
        self.log_path = tmp_path / "daemon.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def settings(self) -> Settings:
        return load_settings(self.config_path, env={})

    def start(self, timeout: float = 30.0) -> None:
        assert self.process is None or self.process.poll() is not None, "already running"
        log = self.log_path.open("ab")
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        env = {k: v for k, v in env.items() if not k.startswith("GATEWAY_")}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "gateway", "--config", str(self.config_path), "run"],
            cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True,
            preexec_fn=_die_with_parent)
        _RUNNING.add(self)
        log.close()
        self.starts += 1
        self._wait_ready(timeout)

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(f"gateway run exited with {self.process.returncode}:\n{self.tail()}")
            if self._greets():
                return
            time.sleep(0.05)
        raise TimeoutError(f"gateway run did not listen on {self.smtp_port} in {timeout}s:\n{self.tail()}")

    def _greets(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.smtp_port), timeout=2) as sock:
                ok = sock.recv(512).startswith(b"220")
                sock.sendall(b"QUIT\r\n")
                return ok
        except OSError:
            return False

    def signal(self, signum: int) -> None:
        assert self.process is not None
        self.process.send_signal(signum)

    def wait(self, timeout: float = 30.0) -> int:
        assert self.process is not None
        rc = self.process.wait(timeout)
        self.reap()
        return rc

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM and wait: the exit code."""
        if self.process is None or self.process.poll() is not None:
            return self.process.returncode if self.process else 0
        self.signal(signal.SIGTERM)
        return self.wait(timeout)

    def kill(self) -> None:
        """SIGKILL the daemon alone (a crash), then whatever it left behind in its group."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)
        self.reap()

    def child_pid(self, role: str) -> int:
        """The pid of the newest worker or sender child (from the daemon's log)."""
        return int([e for e in self.events("worker.process_started") if e["role"] == role][-1]["pid"])

    async def freeze_worker_holding_claims(self, timeout: float = 30.0) -> tuple[int, int]:
        """SIGSTOP the worker child at a moment it holds claims (of this node): its pid and how
        many mails it holds. A SIGKILL then lands with claims in hand, every time."""
        settings = self.settings
        engine = make_engine(resolve_url(settings.database.url, settings.base_dir))
        held_now = ("SELECT count(*) FROM inbound_mail WHERE state = 'processing' "
                    "AND claimed_by NOT LIKE 'other-node:%'")
        deadline = time.monotonic() + timeout
        try:
            async with engine.connect() as conn:
                while time.monotonic() < deadline:
                    if (await conn.exec_driver_sql(held_now)).scalar():
                        pid = self.child_pid("worker")
                        os.kill(pid, signal.SIGSTOP)
                        await conn.rollback()  # a fresh snapshot after the stop
                        held = int((await conn.exec_driver_sql(held_now)).scalar() or 0)
                        if held:
                            return pid, held
                        os.kill(pid, signal.SIGCONT)  # it finished them meanwhile: try again
                    await conn.rollback()
                    await asyncio.sleep(0.002)
        finally:
            await engine.dispose()
        raise AssertionError("the worker never held a claim")

    def kill_group(self) -> None:
        """SIGKILL the daemon's whole process group at once (a crash of the machine's view of
        it: no process gets to notice another's death first)."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)

    def reap(self) -> None:
        """Kill leftovers of a daemon that died abruptly: its parse pool does not notice."""
        if self.process is None:
            return
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass

    def restart(self, timeout: float = 30.0) -> None:
        self.stop()
        self.start(timeout)

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def tail(self, lines: int = 40) -> str:
        if not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def events(self, name: str | None = None) -> list[dict[str, Any]]:
        """The daemon's structured log lines (all starts), optionally one event name."""
        found = []
        for line in self.log_path.read_text(errors="replace").splitlines() if self.log_path.exists() else []:
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if isinstance(entry, dict) and (name is None or entry.get("event") == name):
                found.append(entry)
        return found

    async def rows(self, sql: str, **params: Any) -> list[tuple[Any, ...]]:
        """Read the daemon's store from the test (works on SQLite and PostgreSQL)."""
        settings = self.settings
        engine = make_engine(resolve_url(settings.database.url, settings.base_dir))
        try:
            async with engine.connect() as conn:
                return [tuple(r) for r in (await conn.execute(text(sql), params)).all()]
        finally:
            await engine.dispose()

    async def scalar(self, sql: str, **params: Any) -> Any:
        rows = await self.rows(sql, **params)
        return rows[0][0] if rows else None

    def __enter__(self) -> DaemonProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.kill()
