"""A private Dovecot IMAP server for tests and benchmarks (docs/testing.md).

Everything lives in one temporary folder: the configuration (a `-c` file loads nothing from
conf.d), a passwd-file of users, the maildirs, the run and state folders. Dovecot runs in the
foreground (`dovecot -F`) as our child process on a free loopback port, so stopping it is a
plain terminate/wait. Dovecot's auth process runs as its own user, which must be able to read
the passwd-file: the folders are 0755 and the file 0644 (a 0700 folder gives "[UNAVAILABLE]
Temporary authentication failure" on every login). As non-root, every Dovecot user is set to
the current user.

Optional OAuth2 (docs/testing.md, the stand-ins): `oauth2` maps a mailbox to its introspection URL. Each such
mailbox gets an `oauth2` passdb of its own (`username_filter`), because Dovecot 2.3 sends the
introspection endpoint the token alone; the passwd-file passdb then serves only PLAIN/LOGIN, so
the tests' own clients still log in to those mailboxes with a password.

Optional TLS: a throw-away CA and a server certificate for `localhost`/127.0.0.1 made with the
`openssl` command; `ca_file` is what a client must trust. `imaps_port` is then the implicit TLS
listener, and the plain port offers STARTTLS.
"""

from __future__ import annotations

import atexit
import contextlib
import grp
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path

from imapclient import IMAPClient
from imapclient.exceptions import LoginError

MISSING = ("\n" + "!" * 78 + "\n!! Dovecot is not installed (no `dovecot` binary on PATH): the IMAP tests against a\n"
           "!! real server CANNOT RUN. Install Debian's dovecot-imapd (`make test` does it as root).\n"
           + "!" * 78)


def dovecot_binary() -> str | None:
    return shutil.which("dovecot") or next((p for p in ("/usr/sbin/dovecot",) if os.access(p, os.X_OK)), None)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Dovecot:
    """One private Dovecot instance. `start()`, `stop()`, `restart()`; users via `add_user()`."""

    def __init__(self, root: Path | None = None, tls: bool = False, spare_users: int = 0,
                 oauth2: dict[str, str] | None = None) -> None:
        binary = dovecot_binary()
        if binary is None:
            raise RuntimeError(MISSING)
        self.binary = binary
        self._own_root = root is None
        self.root = Path(root or tempfile.mkdtemp(prefix="gw-dovecot-"))
        self.port = _free_port()
        self.imaps_port = _free_port() if tls else 0
        self.tls = tls
        self.oauth2 = dict(oauth2 or {})
        self.users: dict[str, str] = {}
        # Users made before the start are known at once; fresh_user() hands them out.
        self._spare = [f"user{i}-{os.getpid()}@example.test" for i in range(spare_users)]
        self.users.update((u, "secret") for u in self._spare)
        self.ca_file = self.root / "tls" / "ca.pem"
        self._proc: subprocess.Popen[bytes] | None = None
        self._prepare()

    # -- set-up -------------------------------------------------------------------------------

    def _prepare(self) -> None:
        for sub in ("run", "state", "mail"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        self.root.chmod(0o755)
        (self.root / "mail").chmod(0o755)
        self._write_users()
        if self.tls:
            self._make_certificates()
        for i, (mailbox, url) in enumerate(self.oauth2.items()):
            self.users.setdefault(mailbox, "secret")  # the test's own side logs in with a password
            (self.root / f"oauth2-{i}.conf.ext").write_text(_oauth2_args(url), encoding="utf-8")
        self._write_users()
        (self.root / "dovecot.conf").write_text(self._config(), encoding="utf-8")
        if os.geteuid() == 0:
            os.chown(self.root / "mail", pwd.getpwnam("nobody").pw_uid, grp.getgrnam("nogroup").gr_gid)

    def _config(self) -> str:
        r = self.root
        if os.geteuid() == 0:
            identity = "uid=nobody gid=nogroup"
            extra = ""
        else:  # non-root: every service runs as us
            me = pwd.getpwuid(os.geteuid()).pw_name
            group = grp.getgrgid(os.getegid()).gr_name
            identity = f"uid={me} gid={group}"
            extra = (f"default_login_user = {me}\ndefault_internal_user = {me}\n"
                     f"default_internal_group = {group}\nfirst_valid_uid = {os.geteuid()}\n"
                     f"first_valid_gid = {os.getegid()}\n"
                     f"service auth-worker {{\n  user = {me}\n}}\n")
        ssl = (f"ssl = yes\nssl_cert = <{r}/tls/server.pem\nssl_key = <{r}/tls/server.key\n"
               if self.tls else "ssl = no\n")
        chroot = "  chroot =\n" if os.geteuid() != 0 else ""
        anvil_chroot = chroot
        return f"""instance_name = gw-dovecot-{self.port}
base_dir = {r}/run
state_dir = {r}/state
protocols = imap
listen = 127.0.0.1
{ssl}disable_plaintext_auth = no
auth_mechanisms = plain login{" xoauth2 oauthbearer" if self.oauth2 else ""}
# a refused login answers at once, so a client's own back-off is what the tests see
auth_failure_delay = 0
log_path = {r}/dovecot.log
mail_location = maildir:~/Maildir
mail_max_userip_connections = 50
login_trusted_networks = 127.0.0.0/8
passdb {{
  driver = passwd-file
  mechanisms = plain login
  args = scheme=PLAIN username_format=%u {r}/users
}}
{self._oauth2_passdbs()}userdb {{
  driver = static
  args = {identity} home={r}/mail/%u
}}
service imap-login {{
{chroot}  inet_listener imap {{
    address = 127.0.0.1
    port = {self.port}
  }}
  inet_listener imaps {{
    address = 127.0.0.1
    port = {self.imaps_port}
  }}
}}
# no per-IP penalty after failed logins (Dovecot's documented switch): the tests' wrong
# passwords on 127.0.0.1 must not slow down the right ones
service anvil {{
  unix_listener anvil-auth-penalty {{
    mode = 0
  }}
{anvil_chroot}}}
{extra}"""

    def _oauth2_passdbs(self) -> str:
        return "".join(f"""passdb {{
  driver = oauth2
  mechanisms = xoauth2 oauthbearer
  username_filter = {mailbox}
  args = {self.root}/oauth2-{i}.conf.ext
}}
""" for i, mailbox in enumerate(self.oauth2))

    def _make_certificates(self) -> None:
        d = self.root / "tls"
        d.mkdir(exist_ok=True)
        d.chmod(0o755)

        def run(*args: str) -> None:
            subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=d)

        run("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", "2",
            "-subj", "/CN=gateway test CA", "-keyout", "ca.key", "-out", "ca.pem")
        run("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-subj", "/CN=localhost",
            "-keyout", "server.key", "-out", "server.csr")
        (d / "san.ext").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n", encoding="ascii")
        run("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
            "-days", "2", "-extfile", "san.ext", "-out", "server.pem")
        for f in d.iterdir():
            f.chmod(0o644)

    def _write_users(self) -> None:
        path = self.root / "users"
        # Dovecot's passwd-file driver re-reads the file when it changes: users can be added live.
        tmp = path.with_suffix(".tmp")
        tmp.write_text("".join(f"{u}:{p}\n" for u, p in self.users.items()), encoding="utf-8")
        tmp.chmod(0o644)
        tmp.replace(path)

    def add_user(self, username: str, password: str = "secret") -> str:
        """Add a user; on a running server, return once Dovecot has read the new file (it looks at
        the passwd-file at most once a second)."""
        self.users[username] = password
        self._write_users()
        deadline = time.monotonic() + 5.0
        while self.running:
            try:
                self.client(username).logout()
                break
            except LoginError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        return username

    def fresh_user(self) -> str:
        """A user no one has used yet, with the password `secret`."""
        if self._spare:
            return self._spare.pop()
        return self.add_user(f"user{len(self.users)}-{time.monotonic_ns()}@example.test")

    # -- life cycle ---------------------------------------------------------------------------

    def start(self, timeout_s: float = 10.0) -> None:
        if self.running:
            return
        log = open(self.root / "stderr.log", "ab")  # noqa: SIM115 - handed to the child
        # Its own process group, so stop() can end the logged-in imap processes too.
        self._proc = subprocess.Popen([self.binary, "-F", "-c", str(self.root / "dovecot.conf")],
                                      stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                      start_new_session=True)
        log.close()
        atexit.register(self.stop)  # a crashed test run must not leave a server behind
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"dovecot exited with {self._proc.returncode}:\n{self.log_tail()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                    if s.recv(100).startswith(b"* OK"):
                        return
            except OSError:
                time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"dovecot did not answer on port {self.port}:\n{self.log_tail()}")

    def stop(self) -> None:
        """Stop the server and drop every client connection, like a service manager's restart.

        The master alone is not enough: in the foreground, its logged-in imap processes outlive it.
        """
        proc, self._proc = self._proc, None
        if proc is None:
            return
        atexit.unregister(self.stop)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)

    def restart(self) -> None:
        self.stop()
        self.start()

    def kill(self) -> None:
        """A crash: every Dovecot process dies at once, no BYE to the clients."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        atexit.unregister(self.stop)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        # A process killed inside a maildir write can leave its uidlist dotlock behind, and the next
        # Dovecot waits minutes before it calls the lock stale: the suite then times out on the
        # server, not on us. Dead owners only (every Dovecot process of this instance is gone).
        for lock in self.root.rglob("dovecot-uidlist.lock"):
            lock.unlink(missing_ok=True)
        proc.wait()

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def close(self) -> None:
        self.stop()
        if self._own_root:
            shutil.rmtree(self.root, ignore_errors=True)

    def kick(self, username: str) -> None:
        """Drop every connection of one user (`doveadm kick`), as a server does when it ends a session."""
        subprocess.run(["doveadm", "-c", str(self.root / "dovecot.conf"), "kick", username], check=True,
                       capture_output=True, timeout=10)

    def log_tail(self, lines: int = 30) -> str:
        text = ""
        for name in ("stderr.log", "dovecot.log"):
            p = self.root / name
            if p.exists():
                text += p.read_text(errors="replace")
        return "\n".join(text.splitlines()[-lines:])

    def __enter__(self) -> Dovecot:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- a client for the test's side of the mailbox ------------------------------------------

    def client(self, username: str) -> IMAPClient:
        c = IMAPClient("127.0.0.1", port=self.port, ssl=False, timeout=30)
        c.login(username, self.users[username])
        return c

    def append(self, username: str, messages: Iterable[bytes], folder: str = "INBOX") -> int:
        count = 0
        with self.client(username) as c:
            if not c.folder_exists(folder):
                c.create_folder(folder)
            for raw in messages:
                c.append(folder, raw)
                count += 1
        return count

    def count(self, username: str, folder: str) -> int:
        """Messages in a folder (0 if it does not exist), by STATUS: no \\Recent side effects."""
        with self.client(username) as c:
            if not c.folder_exists(folder):
                return 0
            return int(c.folder_status(folder, [b"MESSAGES"])[b"MESSAGES"])


def _oauth2_args(introspection_url: str) -> str:
    """The `oauth2` passdb's settings (docs/testing.md: what introspection must get right)."""
    return f"""introspection_mode = post
introspection_url = {introspection_url}
client_id = dovecot
client_secret = introspect-secret
username_attribute = username
active_attribute = active
active_value = true
scope = IMAP.AccessAsApp
timeout_msecs = 3000
"""
