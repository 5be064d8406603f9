"""The listener's DATA reader (gateway.ingest.smtp_data.read_data) against the rules it must keep.

The reader takes everything up to the next ".<CRLF>" at a time, where aiosmtpd reads a line at
a time. The reference below is aiosmtpd's rule written out line by line: lines end at <CRLF>
only; the first line that is exactly ".<CRLF>" ends the mail; a line starting with a dot loses
that dot; a line longer than the limit (with its CRLF) or a mail over the size limit is
refused after the dot, the whole mail read either way, and the first line that is too long
or ends past the size limit decides which refusal. Streams are built from the pieces that
matter (bare CR and LF, dots, CRLF, long runs) and fed to a real asyncio.StreamReader with
aiosmtpd's limit, in random chunks, with the next command behind the mail.
"""

from __future__ import annotations

import asyncio

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.ingest.smtp_data import LINE_TOO_LONG, TOO_MUCH_DATA, read_data

LINE_LIMIT = 1001  # aiosmtpd's line_length_limit, also its StreamReader limit
TOO_BIG = TOO_MUCH_DATA
NEXT = b"MAIL FROM:<next@example.org>\r\n"


def reference(stream: bytes, size_limit: int) -> tuple[bytes, str | None, bytes]:
    """(content, refusal, what follows the mail) by aiosmtpd's line rule."""
    lines, pos = [], 0
    while True:
        end = stream.index(b"\r\n", pos) + 2
        line, pos = stream[pos:end], end
        if line == b".\r\n":
            break
        lines.append(line)
    rest = stream[pos:]
    refusal, size = None, 0
    for line in lines:  # the order of aiosmtpd 1.4.6's checks in its smtp_DATA
        if refusal is None and len(line) > LINE_LIMIT + 2:  # the line overran the stream reader
            refusal = LINE_TOO_LONG
        size += len(line)
        if refusal is None and size_limit and size > size_limit:
            refusal = TOO_BIG
        if refusal is None and len(line) > LINE_LIMIT:
            refusal = LINE_TOO_LONG
    if refusal:
        return b"", refusal, rest
    return b"".join(line[1:] if line.startswith(b".") else line for line in lines), None, rest


async def read_in_chunks(stream: bytes, cuts: list[int], size_limit: int) -> tuple[bytes, str | None, bytes]:
    reader = asyncio.StreamReader(limit=LINE_LIMIT)

    async def feed() -> None:
        last = 0
        for cut in sorted({c % (len(stream) + 1) for c in cuts}) + [len(stream)]:
            reader.feed_data(stream[last:cut])
            last = cut
            await asyncio.sleep(0)
        reader.feed_eof()

    feeder = asyncio.ensure_future(feed())
    content, refusal = await read_data(reader, size_limit, LINE_LIMIT)
    await feeder
    return content, refusal, await reader.read()


PIECES = st.sampled_from([b"\r\n", b"\n", b"\r", b".", b"..", b".\r\n", b"\n.\r\n", b"\r\n.\n", b"x", b"Hej.",
                          b" ", b"\r\n..\r\n", b"y" * 400, b"z" * 999, b"w" * 1000, b"v" * 1001, b"u" * 1002])


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(body=st.lists(PIECES, max_size=40), cuts=st.lists(st.integers(0, 50_000), max_size=8),
       size_limit=st.sampled_from([0, 1000, 2000, 3000, 100_000]))
def test_read_data_keeps_aiosmtpds_rules_in_any_chunking(body: list[bytes], cuts: list[int],
                                                          size_limit: int) -> None:
    # the mail: the pieces, ended by a line of one dot (after a CRLF unless it is empty)
    data = b"".join(body)
    stream = data + (b"\r\n" if data and not data.endswith(b"\r\n") else b"") + b".\r\n" + NEXT
    got = asyncio.run(read_in_chunks(stream, cuts, size_limit))
    assert got == reference(stream, size_limit)


async def test_the_first_line_of_one_dot_is_an_empty_mail() -> None:
    assert await read_in_chunks(b".\r\n" + NEXT, [1, 2], 0) == (b"", None, NEXT)


async def test_a_bare_lf_dot_does_not_end_the_mail_smuggling() -> None:
    """The SMTP smuggling shapes (CVE-2023-51764 and kin): only <CRLF>.<CRLF> ends the data."""
    smuggled = b"Hej\r\n\n.\r\nMAIL FROM:<evil@x>\r\n\r.\r\nmore\n.\n\r\n.\r\n" + NEXT
    content, refusal, rest = await read_in_chunks(smuggled, [5, 9, 13], 0)
    assert refusal is None and rest == NEXT
    assert content == b"Hej\r\n\n.\r\nMAIL FROM:<evil@x>\r\n\r.\r\nmore\n.\n\r\n"


async def test_a_mail_over_the_size_limit_is_read_to_its_end_and_refused() -> None:
    stream = b"".join(b"line %d of a long mail\r\n" % i for i in range(10_000)) + b".\r\n" + NEXT
    content, refusal, rest = await read_in_chunks(stream, list(range(0, len(stream), 4096)), 50_000)
    assert (content, refusal, rest) == (b"", TOO_BIG, NEXT)


@given(st.binary(max_size=40).map(lambda b: bytes(b"ab\r\n"[x % 4] for x in b)), st.integers(2, 12))
def test_the_long_line_check_answers_as_splitting_every_line(content: bytes, line_limit: int) -> None:
    """`_has_long_line` looks one window at a time; it finds what measuring every CRLF-ended line
    finds (a bare CR or LF belongs to its line, as in aiosmtpd)."""
    from gateway.ingest.smtp_data import _has_long_line

    every_line = bool(content) and max(map(len, content.split(b"\r\n"))) + 2 > line_limit
    assert _has_long_line(content, line_limit) is every_line
