"""A person's export (GDPR art. 15 and 20): one zip of JSON and files, written as it is read.

    manifest.json            every other file with its size, sha256 and what it holds; who
                             exported whose data, when and why
    person.json              the user record (null when the address never became a user)
    cases/<number>.json      each case they are requester or party of, or wrote on: the case,
                             its history, the comments they may see with their attachments'
                             metadata (internal notes only with --internal)
    attachments/<number>/<comment id>-<attachment id>-<name>   those comments' files
    notifications.json       every notification to them
    mails.json               the inbox records of the mails they sent
    mails/<inbound id>.eml   the raw mails still kept
    audit.json               the audit entries about them

Nothing is whole in memory: rows come a page at a time (store/export.py), files and raw mails in
chunks of a megabyte, each zip entry written and closed before the next is read. The zip is
written beside `out` under a temporary name (mode 0600) and renamed when complete.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import unicodedata
import zipfile
from collections.abc import AsyncIterator, Callable, Iterable
from datetime import date, datetime
from pathlib import Path
from typing import IO, Any

from gateway.datastore import DataStore
from store import audit
from store import export as rows
from store.person import Person, case_roles, inbound_ids, user_record

FORMAT = "kundebetjening-export/1"
CHUNK = 1 << 20
COMMENTS_PAGE = 20  # a comment may carry a few megabytes of text


def _default(value: Any) -> Any:
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    raise TypeError(type(value).__name__)


def dumps(value: Any) -> bytes:
    return json.dumps(value, ensure_ascii=False, indent=1, default=_default).encode("utf-8")


def file_name(name: str) -> str:
    """An attachment's name as a zip member's last part: no folders, no control characters."""
    base = name.replace("\\", "/").rsplit("/", 1)[-1]
    base = "".join(ch for ch in base if unicodedata.category(ch)[0] != "C").strip().strip(".")
    return re.sub(r"\s+", " ", base)[:120] or "attachment"


class ExportZip:
    """The zip being written, and its manifest's list of files."""

    def __init__(self, out: Path, when: datetime) -> None:
        self.out = out
        self.part = out.with_name(out.name + ".part")
        fd = os.open(self.part, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)  # personal data: owner only
        self._fh: IO[bytes] = os.fdopen(fd, "wb")
        self._zip = zipfile.ZipFile(self._fh, "w", allowZip64=True)
        self._when = when.timetuple()[:6]
        self.files: list[dict[str, Any]] = []

    def entry(self, name: str, what: str, compress: bool = True, large: bool = False) -> _Entry:
        info = zipfile.ZipInfo(name, self._when)  # type: ignore[arg-type]
        info.compress_type = zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED
        info.external_attr = 0o600 << 16
        return _Entry(self, self._zip.open(info, "w", force_zip64=large), name, what)

    def write(self, name: str, what: str, data: bytes) -> None:
        with self.entry(name, what) as e:
            e.write(data)

    def copy_file(self, name: str, what: str, chunks: Iterable[bytes], size: int) -> None:
        """A file's chunks into a stored (not compressed) entry; run in a thread."""
        with self.entry(name, what, compress=False, large=size > 1 << 30) as e:
            for chunk in chunks:
                e.write(chunk)

    def finish(self, manifest: dict[str, Any]) -> None:
        self.write("manifest.json", "this list", dumps({**manifest, "files": self.files}))
        self._zip.close()
        self._fh.flush()
        os.fsync(self._fh.fileno())
        self._fh.close()
        os.replace(self.part, self.out)

    def abort(self) -> None:
        try:
            self._zip.close()
        finally:
            self._fh.close()
            self.part.unlink(missing_ok=True)


class _Entry:
    def __init__(self, owner: ExportZip, stream: IO[bytes], name: str, what: str) -> None:
        self._owner, self._stream, self._name, self._what = owner, stream, name, what
        self._size, self._sha = 0, hashlib.sha256()

    def write(self, data: bytes) -> None:
        self._stream.write(data)
        self._size += len(data)
        self._sha.update(data)

    def __enter__(self) -> _Entry:
        return self

    def __exit__(self, *exc: object) -> None:
        self._stream.close()
        self._owner.files.append({"path": self._name, "size": self._size, "sha256": self._sha.hexdigest(),
                                  "what": self._what})


async def write_export(data: DataStore, person: Person, out: Path, manifest: dict[str, Any],
                       internal: bool = False) -> dict[str, int]:
    """Write the zip; what it holds, counted."""
    zf = ExportZip(out, data.clock.now())
    try:
        counts = await _contents(data, person, zf, internal)
        zf.finish({**manifest, "format": FORMAT, "contents": counts})
    except BaseException:
        zf.abort()
        raise
    return counts


async def _contents(data: DataStore, person: Person, zf: ExportZip, internal: bool) -> dict[str, int]:
    record = await data.tx.read(user_record, person)
    zf.write("person.json", "the user record", dumps({"address": person.address, "blocked": person.blocked,
                                                     "user": record}))
    counts = {"cases": 0, "comments": 0, "attachments": 0, "notifications": 0, "mails": 0, "raw_mails": 0}
    if person.user_id is not None:
        for case_id, role in await data.tx.read(case_roles, person.user_id):
            await _case(data, person.user_id, case_id, role, zf, internal, counts)
    counts["notifications"] = await _array(zf, "notifications.json", "notifications sent to the person",
                                           _paged(data, rows.notifications_page, person))
    raws: list[tuple[int, int]] = []  # (inbound id, size) of the raw mails still kept
    counts["mails"] = await _array(zf, "mails.json", "the inbox records of the mails the person sent",
                                   _mails(data, await data.tx.read(inbound_ids, person)),
                                   lambda m: raws.append((m["id"], int(m["raw_kept"]))) if m["raw_kept"] else None)
    for inbound_id, size in raws:
        await _raw(data, zf, inbound_id, size)
        counts["raw_mails"] += 1
    events = await data.tx.read(audit.events_about, person.address)
    zf.write("audit.json", "who exported or erased the person's data, when and why", dumps(events))
    return counts


async def _case(data: DataStore, user_id: int, case_id: int, role: str, zf: ExportZip, internal: bool,
                counts: dict[str, int]) -> None:
    head = await data.tx.read(rows.case_head, case_id)
    number = head["number"]
    files: list[tuple[str, str, int]] = []
    with zf.entry(f"cases/{number}.json", f"case {number}, where the person is {role}") as e:
        e.write(b'{"role": ' + dumps(role) + b',\n"case": ' + dumps(head) + b',\n"comments": [\n')
        after, first = 0, True
        while page := await data.tx.read(rows.comments_page, case_id, user_id, internal, after, COMMENTS_PAGE):
            for comment in page:
                e.write((b"" if first else b",\n") + dumps(comment))
                first = False
                files += [(f"attachments/{number}/{comment['id']}-{a['id']}-{file_name(a['name'])}", a["sha256"],
                           a["size"]) for a in comment["attachments"]]
                counts["comments"] += 1
            after = page[-1]["id"]
        e.write(b"\n]}\n")
    counts["cases"] += 1
    for name, sha, size in files:
        if data.blobs.exists(sha):
            await asyncio.to_thread(zf.copy_file, name, f"an attachment on {number}", data.blobs.open(sha), size)
            counts["attachments"] += 1


async def _raw(data: DataStore, zf: ExportZip, inbound_id: int, size: int) -> None:
    with zf.entry(f"mails/{inbound_id}.eml", "a raw mail the person sent, as received", large=size > 1 << 30) as e:
        for start in range(0, size, CHUNK):
            e.write(await data.tx.read(rows.raw_chunk, inbound_id, start, CHUNK))


async def _paged(data: DataStore, page_of: Any, person: Person) -> AsyncIterator[dict[str, Any]]:
    after = 0
    while page := await data.tx.read(page_of, person, after):
        for item in page:
            yield item
        after = page[-1]["id"]


async def _mails(data: DataStore, ids: list[int]) -> AsyncIterator[dict[str, Any]]:
    for start in range(0, len(ids), rows.PAGE):
        for mail in await data.tx.read(rows.inbound_rows, ids[start:start + rows.PAGE]):
            yield mail


async def _array(zf: ExportZip, name: str, what: str, items: AsyncIterator[dict[str, Any]],
                 seen: Callable[[dict[str, Any]], object] = lambda _item: None) -> int:
    count = 0
    with zf.entry(name, what) as e:
        e.write(b"[\n")
        async for item in items:
            e.write((b",\n" if count else b"") + dumps(item))
            seen(item)
            count += 1
        e.write(b"\n]\n")
    return count
