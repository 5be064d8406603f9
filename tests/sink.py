"""A real SMTP sink on 127.0.0.1 run inside the test's event loop (aiosmtpd, not its Controller)."""

from __future__ import annotations

import asyncio
import email
import email.policy
from dataclasses import dataclass, field
from email.message import EmailMessage
from typing import Any

from aiosmtpd.smtp import SMTP


@dataclass
class Received:
    sender: str
    recipients: list[str]
    data: bytes

    @property
    def message(self) -> EmailMessage:
        return email.message_from_bytes(self.data, policy=email.policy.default)  # type: ignore[return-value]


@dataclass
class SinkHandler:
    messages: list[Received] = field(default_factory=list)
    rcpt_reply: str | None = None  # e.g. "550 5.1.1 No such user" to refuse every recipient
    data_reply: str | None = None
    data_stall_s: float = 0.0  # > 0: sit on the DATA reply that long (a slow relay, catalogue 82)
    stalling: int = 0  # DATA replies being sat on right now
    stall_matching: tuple[bytes, float] | None = None  # sit that long on a DATA that contains the bytes


    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str, options: Any) -> str:
        if self.rcpt_reply:
            return self.rcpt_reply
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        if self.data_stall_s > 0:
            self.stalling += 1
            try:  # the client hanging up cancels this: a stalled message is never recorded
                await asyncio.sleep(self.data_stall_s)
            finally:
                self.stalling -= 1
        if self.stall_matching and self.stall_matching[0] in (envelope.original_content or envelope.content):
            await asyncio.sleep(self.stall_matching[1])
        if self.data_reply:
            return self.data_reply
        self.messages.append(Received(envelope.mail_from, list(envelope.rcpt_tos),
                                      envelope.original_content or envelope.content))
        return "250 2.0.0 Ok: queued"


class Sink:
    def __init__(self) -> None:
        self.handler = SinkHandler()
        self.server: asyncio.base_events.Server | None = None
        self.port = 0

    async def start(self, port: int = 0) -> Sink:
        loop = asyncio.get_running_loop()
        self.server = await loop.create_server(
            lambda: SMTP(self.handler, hostname="sink.test", decode_data=False, loop=loop), "127.0.0.1", port)
        self.port = int(self.server.sockets[0].getsockname()[1])
        return self

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()
            self.server = None

    @property
    def messages(self) -> list[Received]:
        return self.handler.messages
