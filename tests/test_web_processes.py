"""The pages and the API in the daemon's HTTP children (`api.processes`, gateway/runtime/web.py):
the real daemon, real connections on 127.0.0.1, a local SMTP sink for the notifications."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from pathlib import Path

import httpx
import pytest

from gateway.errors import ConfigError
from gateway.runtime import web
from gateway.settings import load_settings
from tests.conftest import ROOT, build_mail, free_port
from tests.daemon_proc import DaemonProcess
from tests.test_story import AGENT, PORTAL, REQUESTER, Sink, gateway, send, sink, until, users

__all__ = ["sink"]  # the fixture, from the story's tests


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _http_pids(proc: DaemonProcess) -> list[int]:
    return [int(e["pid"]) for e in proc.events("worker.process_started") if e["role"] == "http"]


async def _healthy(port: int, *parts: str, timeout: float = 30.0) -> dict[str, bool]:
    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient(timeout=5) as client:
        while True:
            try:
                answer = await client.get(f"http://127.0.0.1:{port}/healthz")
                loops = answer.json()["loops"]
                if answer.status_code == 200 and all(loops.get(p) for p in parts):
                    return dict(loops)
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"/healthz never showed {parts} alive")
            await asyncio.sleep(0.1)


async def _fresh_get(port: int, path: str) -> int:
    """One request on a connection of its own (`Connection: close`): the kernel hands each new
    connection to one of the children."""
    async with httpx.AsyncClient(timeout=10, headers={"Connection": "close"}) as client:
        return (await client.get(f"http://127.0.0.1:{port}{path}")).status_code


async def test_two_children_serve_one_port_and_a_killed_one_refuses_no_request(tmp_path: Path) -> None:
    port = free_port()
    with DaemonProcess(tmp_path, api={"enabled": True, "port": port, "processes": 2}) as proc:
        proc.start()
        loops = await _healthy(port, "http.1", "http.2")
        assert {"api", "smtp", "worker", "sender", "http.1", "http.2"} <= set(loops)
        first, second = _http_pids(proc)
        before = {pid: _cpu_s(pid) for pid in (first, second)}

        async def client(n: int) -> list[int]:
            return [await _fresh_get(port, "/login") for _ in range(n)]

        codes = [c for batch in await asyncio.gather(*(client(25) for _ in range(8))) for c in batch]
        assert codes == [200] * 200
        grown = {pid: _cpu_s(pid) - before[pid] for pid in (first, second)}
        assert all(spent > 0 for spent in grown.values()), grown  # both children took connections

        # One child dies between requests: every later request is answered (by its sibling, or
        # from the backlog by its successor); the supervisor starts a new one.
        os.kill(first, signal.SIGKILL)
        codes = [await _fresh_get(port, "/login") for _ in range(40)]
        assert codes == [200] * 40
        await _healthy(port, "http.1", "http.2")
        died = [e for e in proc.events("worker.process_died") if e["role"] == "http"]
        assert [e["pid"] for e in died] == [first]
        assert len(_http_pids(proc)) == 3 and second in _http_pids(proc)
        assert proc.stop() == 0


async def test_actions_served_by_the_children_wake_the_sender_and_count_once(
        tmp_path: Path, sink: tuple[Sink, int]) -> None:
    mails, sink_port = sink
    port = free_port()
    # The sender looks for work only every 30 s unless woken: a notice within seconds of an
    # action served by an HTTP child shows that the child woke the sender child.
    proc = DaemonProcess(tmp_path, outbound={"transport": f"smtp://127.0.0.1:{sink_port}", "poll_interval_s": 30.0},
                         api={"enabled": True, "port": port, "processes": 2}, portal={"url": PORTAL})
    with proc:
        await asyncio.to_thread(proc.start)
        await _healthy(port, "http.1", "http.2")
        await users(proc)
        await send(proc, build_mail(REQUESTER, "Adgang til portalen", "Jeg kan ikke logge ind."), REQUESTER)
        await until(proc, "SAG-000001", lambda c: c["status"] == "registreret")
        await mails.wait_for(1, timeout=20)  # the receipt: the worker child wakes the sender child
        _, token, _ = await gateway(proc, "tokens", "issue", "--agent", AGENT)
        auth = {"Authorization": f"Bearer {token.strip()}", "Connection": "close"}
        for n, status in enumerate(("paabegyndt", "afventer_rekvirent", "paabegyndt", "udfoert"), start=2):
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", headers=auth) as api:
                answer = await api.post("/cases/SAG-000001/status", json={"status": status})
            assert answer.status_code == 200, answer.text
            await mails.wait_for(n, timeout=10)  # well within the 30 s poll
        assert [m["To"].addresses[0].addr_spec for m in mails.messages] == [REQUESTER] * 5

        # Whichever child answers the scrape, it counts the actions of both.
        scrapes = []
        for _ in range(8):
            async with httpx.AsyncClient(headers={"Connection": "close"}) as client:
                text = (await client.get(f"http://127.0.0.1:{port}/metrics")).text
            scrapes += [line for line in text.splitlines() if line.startswith("gateway_case_actions_total")]
        assert scrapes == ['gateway_case_actions_total{action="status"} 4.0'] * 8
        assert await asyncio.to_thread(proc.stop) == 0


async def test_served_in_the_daemons_own_loop_with_no_children(tmp_path: Path) -> None:
    port = free_port()
    with DaemonProcess(tmp_path, api={"enabled": True, "port": port, "processes": 0}) as proc:
        proc.start()
        loops = await _healthy(port, "api")
        assert not any(name.startswith("http.") for name in loops)
        assert _http_pids(proc) == []
        assert await _fresh_get(port, "/login") == 200
        assert proc.stop() == 0


def test_the_board_reports_a_parent_that_stopped_publishing(monkeypatch: pytest.MonkeyPatch) -> None:
    board = web.Board()
    assert board.loops() == {"daemon": False}  # nothing published yet
    board.publish({"api": True, "worker": False})
    assert board.loops() == {"api": True, "worker": False}
    monkeypatch.setattr(web, "STALE_S", -1.0)  # as if the last snapshot were older than the limit
    assert board.loops() == {"api": True, "worker": False, "daemon": False}
    board.publish({f"loop-{n:04d}": True for n in range(1000)})  # far more than a daemon has
    monkeypatch.setattr(web, "STALE_S", 5.0)
    assert board.loops() == {"health_board": False}


def test_api_processes_out_of_range_is_a_config_error(tmp_path: Path) -> None:
    base = (ROOT / "config" / "gateway.toml").read_text()
    for bad in ("-1", "65"):
        path = tmp_path / f"bad{bad}.toml"
        path.write_text(base.replace("[api]\n", f"[api]\nprocesses = {bad}\n"), encoding="utf-8")
        with pytest.raises(ConfigError, match="api.processes"):
            load_settings(path)
    assert json.dumps(load_settings(ROOT / "config" / "gateway.toml").api.processes) == "2"
