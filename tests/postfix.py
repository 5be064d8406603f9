"""A private Postfix in front of the gateway, as an operator runs it (docs/testing.md).

Everything lives in one temporary folder: main.cf and master.cf, the queue and data folders,
the mail log. Postfix listens on a free loopback port and relays the gateway's domain to the
gateway's SMTP port; nothing else leaves it (`default_transport = error:`, no DNS). It runs in
the foreground (`postfix start-fg`) as our child, so stopping it is a plain terminate/wait.

The back-off is cut to seconds (`queue_run_delay`, `minimal_backoff_time`) so a deferred mail
is tried again within the test's time; everything else is Postfix's default, notably 20
connections per destination and the connection cache, which is what the gateway's
connection limits must live with.
"""

from __future__ import annotations

import atexit
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

MISSING = "Postfix is not installed (no `postfix` binary): apt-get install postfix (make system-deps)"


def postfix_binary() -> str | None:
    return shutil.which("postfix") or next((p for p in ("/usr/sbin/postfix",) if os.access(p, os.X_OK)), None)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


MAIN_CF = """\
compatibility_level = 3.6
queue_directory = {root}/queue
data_directory = {root}/data
mail_owner = postfix
setgid_group = postdrop
myhostname = mta.example.test
mydomain = example.test
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mydestination =
mynetworks = 127.0.0.0/8
relay_domains = {domain}
relayhost =
transport_maps = inline:{{ {domain}=smtp:[127.0.0.1]:{gateway_port} }}
smtpd_relay_restrictions = permit_mynetworks, reject_unauth_destination
maillog_file = {root}/maillog
maillog_file_prefixes = {root}
queue_run_delay = 2s
minimal_backoff_time = 2s
maximal_backoff_time = 4s
smtp_connect_timeout = 5s
smtp_line_length_limit = 998
alias_maps =
alias_database =
local_recipient_maps =
biff = no
default_transport = error:5.7.1 outbound mail disabled in test instance
smtp_dns_support_level = disabled
"""


class Postfix:
    """One private Postfix: `start()`, `stop()`, `flush()`, `queued()`, `log()`."""

    def __init__(self, gateway_port: int, domain: str, root: Path | None = None, **settings: str) -> None:
        binary = postfix_binary()
        if binary is None:
            raise RuntimeError(MISSING)
        self.binary = binary
        self.root = Path(root or tempfile.mkdtemp(prefix="gw-postfix-"))
        self.port = _free_port()
        self.gateway_port = gateway_port
        self.domain = domain
        self.settings = settings
        self._proc: subprocess.Popen[bytes] | None = None
        self._prepare()

    @property
    def etc(self) -> Path:
        return self.root / "etc"

    def _prepare(self) -> None:
        # The postfix user must reach the queue: no 0700 folder on the way (mkdtemp makes one).
        self.root.chmod(0o755)
        for sub in ("etc", "queue", "data"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        shutil.chown(self.root / "data", "postfix", "postfix")
        main = MAIN_CF.format(root=self.root, domain=self.domain, gateway_port=self.gateway_port)
        main += "".join(f"{key} = {value}\n" for key, value in self.settings.items())
        (self.etc / "main.cf").write_text(main)
        (self.etc / "master.cf").write_text(_master_cf(self.port))
        done = self._postfix("check")
        if done.returncode != 0:
            raise RuntimeError(f"postfix check failed: {done.stdout}{done.stderr}")

    def _postfix(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([self.binary, "-c", str(self.etc), *args], capture_output=True, text=True, timeout=30)

    def start(self, timeout: float = 15.0) -> Postfix:
        self._proc = subprocess.Popen([self.binary, "-c", str(self.etc), "start-fg"], stdout=subprocess.DEVNULL,
                                      stderr=subprocess.PIPE, start_new_session=True)
        _RUNNING.append(self)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"postfix exited: {self._proc.stderr.read().decode() if self._proc.stderr else ''}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
                    if sock.recv(512).startswith(b"220"):
                        sock.sendall(b"QUIT\r\n")
                        return self
            except OSError:
                time.sleep(0.05)
        raise TimeoutError(f"postfix did not listen on {self.port}")

    def flush(self) -> None:
        """`postqueue -f`: try every deferred mail now."""
        subprocess.run(["postqueue", "-c", str(self.etc), "-f"], capture_output=True, timeout=30)

    def queued(self) -> int:
        """Mails still in Postfix's queue (incoming, active, deferred)."""
        count = 0
        for sub in ("incoming", "active", "deferred", "maildrop"):
            folder = self.root / "queue" / sub
            if folder.exists():
                count += sum(1 for p in folder.rglob("*") if p.is_file())
        return count

    def log(self) -> str:
        path = self.root / "maillog"
        return path.read_text(errors="replace") if path.exists() else ""

    def replies(self, pattern: str) -> list[str]:
        """The log lines that match `pattern` (a regular expression)."""
        return [line for line in self.log().splitlines() if re.search(pattern, line)]

    def stop(self) -> None:
        """SIGTERM to the master (what `postfix stop` does): it stops its children and exits.
        `start-fg` runs the master in a session of its own, not in ours: it is found by its
        pid file, and its whole group is killed if it does not go in time."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        master = self._master_pid()
        if master is not None:
            _signal(master, signal.SIGTERM)
            deadline = time.monotonic() + 15
            while _alive(master) and time.monotonic() < deadline:
                time.sleep(0.05)
            _signal(-master, signal.SIGKILL)  # its children (smtp, qmgr, postlogd) that stayed
        _signal(proc.pid, signal.SIGKILL)
        proc.wait(5)
        if self in _RUNNING:
            _RUNNING.remove(self)

    def _master_pid(self) -> int | None:
        try:
            return int((self.root / "queue" / "pid" / "master.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> Postfix:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.remove()


def _signal(pid: int, signum: int) -> None:
    """`os.kill`, to a process group when `pid` is negative; quiet when it is gone."""
    try:
        os.kill(pid, signum)
    except (ProcessLookupError, PermissionError):
        pass


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _master_cf(port: int) -> str:
    """Debian's master.cf with the smtp listener on our port and no chroot."""
    lines = []
    for line in Path("/usr/share/postfix/master.cf.dist").read_text().splitlines():
        fields = line.split()
        if line.startswith(("#", " ", "\t")) or len(fields) < 8:
            lines.append(line)
            continue
        if fields[0] == "smtp" and fields[1] == "inet":
            fields[0] = f"127.0.0.1:{port}"
        fields[4] = "n"
        lines.append(" ".join(fields))
    return "\n".join(lines) + "\n"


_RUNNING: list[Postfix] = []


@atexit.register
def _stop_leftovers() -> None:
    for instance in list(_RUNNING):
        instance.remove()
