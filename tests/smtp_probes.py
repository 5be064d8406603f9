"""Raw-socket SMTP probes (docs/testing.md): byte-exact framing that smtplib and swaks won't send.

Everything is async so a probe can talk to a listener running in the test's own event loop.
"""

from __future__ import annotations

import asyncio
import ssl
import time
import uuid
from dataclasses import dataclass

ADDRESS = "kundebetjening@statens-adm.example"
END_OF_DATA_VARIANTS = (b"\n.\r\n", b"\n.\n", b"\r.\r", b"\r\n.\n", b"\r.\r\n")


@dataclass(frozen=True)
class Reply:
    code: int
    text: str

    def __str__(self) -> str:
        return f"{self.code} {self.text}"


class RawSmtp:
    """One SMTP session over a plain socket: send bytes, read whole (multi-line) replies."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, timeout: float) -> None:
        self.reader = reader
        self.writer = writer
        self.timeout = timeout

    @classmethod
    async def connect(cls, port: int, host: str = "127.0.0.1", timeout: float = 10.0) -> RawSmtp:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
        return cls(reader, writer, timeout)

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def reply(self, timeout: float | None = None) -> Reply:
        """The next reply; code 0 with empty text when the server closed the connection."""
        lines: list[bytes] = []
        while True:
            line = await asyncio.wait_for(self.reader.readline(), timeout or self.timeout)
            if not line:
                return Reply(0, "\n".join(x.decode(errors="replace") for x in lines))
            lines.append(line.rstrip(b"\r\n"))
            if len(line) < 4 or line[3:4] != b"-":
                break
        return Reply(int(lines[-1][:3]), "\n".join(x[4:].decode(errors="replace") for x in lines))

    async def command(self, line: str | bytes) -> Reply:
        await self.send((line.encode() if isinstance(line, str) else line) + b"\r\n")
        return await self.reply()

    async def greet(self, verb: str = "EHLO", name: str = "probe.example") -> Reply:
        """The answer to EHLO; the banner itself when it is not 220 (a 421 at connect)."""
        banner = await self.reply()
        if banner.code != 220:
            return banner
        return await self.command(f"{verb} {name}")

    async def closed(self, timeout: float = 5.0) -> bool:
        """True when the server closes the connection within the timeout (replies are skipped)."""
        deadline = asyncio.get_running_loop().time() + timeout
        try:
            while await asyncio.wait_for(self.reader.read(65536), deadline - asyncio.get_running_loop().time()):
                pass
        except (TimeoutError, ConnectionError):
            return False
        return True

    async def close(self) -> None:
        self.writer.close()
        try:
            await self.writer.wait_closed()
        except (ConnectionError, ssl.SSLError):
            pass


def message(subject: str = "probe", body: str = "Hej.\r\n", sender: str = "probe@borger.example",
            extra_headers: str = "", message_id: str | None = None) -> bytes:
    """A small distinct CRLF mail (not dot-stuffed)."""
    mid = message_id or f"<{uuid.uuid4().hex}@borger.example>"
    head = (f"From: {sender}\r\nTo: {ADDRESS}\r\nSubject: {subject}\r\nMessage-ID: {mid}\r\n"
            f"Date: Mon, 05 Jan 2026 10:00:00 +0000\r\n{extra_headers}")
    return (head + "\r\n" + body).encode()


def dot_stuff(raw: bytes) -> bytes:
    lines = raw.split(b"\r\n")
    return b"\r\n".join(b"." + line if line.startswith(b".") else line for line in lines)


async def transaction(smtp: RawSmtp, raw: bytes, sender: str = "probe@borger.example",
                      recipients: tuple[str, ...] = (ADDRESS,)) -> Reply:
    """MAIL, RCPT…, DATA, body, dot: the reply to the first refused step or to the dot."""
    for line in (f"MAIL FROM:<{sender}>", *(f"RCPT TO:<{r}>" for r in recipients)):
        reply = await smtp.command(line)
        if reply.code >= 400:
            return reply
    reply = await smtp.command("DATA")
    if reply.code != 354:
        return reply
    body = dot_stuff(raw)
    await smtp.send(body + (b"" if body.endswith(b"\r\n") else b"\r\n") + b".\r\n")
    return await smtp.reply()


async def deliver(port: int, raw: bytes, sender: str = "probe@borger.example",
                  recipients: tuple[str, ...] = (ADDRESS,)) -> Reply:
    """One session, one mail, QUIT."""
    smtp = await RawSmtp.connect(port)
    try:
        ehlo = await smtp.greet()
        if ehlo.code != 250:
            return ehlo
        reply = await transaction(smtp, raw, sender, recipients)
        if reply.code:
            await smtp.send(b"QUIT\r\n")
        return reply
    finally:
        await smtp.close()


def smuggle_payload(end_of_data: bytes) -> bytes:
    """An outer mail whose body hides a second transaction behind a non-standard end of data."""
    return (b"From: outer@borger.example\r\nTo: " + ADDRESS.encode() + b"\r\nSubject: outer\r\n"
            b"Message-ID: <" + uuid.uuid4().hex.encode() + b"@borger.example>\r\n\r\nouter body"
            + end_of_data
            + b"MAIL FROM:<ceo@borger.example>\r\nRCPT TO:<" + ADDRESS.encode() + b">\r\nDATA\r\n"
            b"From: ceo@borger.example\r\nSubject: SMUGGLED\r\n\r\nsmuggled\r\n.\r\n")


async def smuggle(port: int, end_of_data: bytes) -> list[Reply]:
    """Send the smuggling payload raw (no dot-stuffing), then a real end of data."""
    smtp = await RawSmtp.connect(port)
    replies: list[Reply] = []
    try:
        await smtp.greet()
        for line in ("MAIL FROM:<outer@borger.example>", f"RCPT TO:<{ADDRESS}>", "DATA"):
            replies.append(await smtp.command(line))
        # QUIT right behind: replies come in order, so every reply to the payload (one 250, or
        # more if a smuggled message was accepted) arrives before QUIT's 221, however slow
        # the store's commit is (a silence window of 0.3 s missed the 250 on a loaded machine).
        await smtp.send(smuggle_payload(end_of_data) + b"\r\n.\r\nQUIT\r\n")
        while (reply := await smtp.reply()).code not in (0, 221):
            replies.append(reply)
    finally:
        await smtp.close()
    return replies


async def starttls_injection(port: int) -> bytes:
    """STARTTLS with a plaintext command pipelined behind it: what arrives after the handshake.

    A safe server discards the buffered `NOOP injected` (RFC 3207 §4), so nothing arrives.
    """
    smtp = await RawSmtp.connect(port)
    try:
        await smtp.greet()
        await smtp.send(b"STARTTLS\r\nNOOP injected\r\n")
        ready = await smtp.reply()
        assert ready.code == 220, ready
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        await smtp.writer.start_tls(ctx)
        try:
            return await asyncio.wait_for(smtp.reader.read(4096), 1.5)
        except TimeoutError:
            return b""
    finally:
        await smtp.close()


async def timed_deliveries(port: int, mails: list[bytes], sessions: int = 10,
                           sender: str = "probe@borger.example") -> tuple[list[Reply], list[float]]:
    """Send the mails over `sessions` parallel connections (one mail per connection).

    Returns the replies in mail order and the DATA→reply latencies in seconds (time from the
    final dot written to the reply read).
    """
    replies: list[Reply | None] = [None] * len(mails)
    latencies: list[float] = []
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(len(mails)):
        queue.put_nowait(i)

    async def session() -> None:
        while not queue.empty():
            i = queue.get_nowait()
            try:
                replies[i] = await _timed_one(port, mails[i], sender, latencies)
            except (OSError, TimeoutError, asyncio.IncompleteReadError) as exc:
                replies[i] = Reply(0, type(exc).__name__)

    await asyncio.gather(*(session() for _ in range(sessions)))
    return [r or Reply(0, "not sent") for r in replies], latencies


async def _timed_one(port: int, raw: bytes, sender: str, latencies: list[float]) -> Reply:
    smtp = await RawSmtp.connect(port, timeout=60)
    try:
        ehlo = await smtp.greet()
        if ehlo.code != 250:
            return ehlo
        for line in (f"MAIL FROM:<{sender}>", f"RCPT TO:<{ADDRESS}>", "DATA"):
            reply = await smtp.command(line)
            if reply.code >= 400:
                return reply
        body = dot_stuff(raw)
        await smtp.send(body if body.endswith(b"\r\n") else body + b"\r\n")
        started = time.perf_counter()
        await smtp.send(b".\r\n")
        reply = await smtp.reply()
        latencies.append(time.perf_counter() - started)
        await smtp.send(b"QUIT\r\n")
        return reply
    finally:
        await smtp.close()
