"""Content-addressed attachment files: `<blob_dir>/ab/cd/<sha256>`. Keys never come from a mail.

A blob is written to a temporary file, fsync'd and renamed into place, so a crash leaves either
the whole file or none; writing the same content twice writes nothing but touches the file.

Deleting a blob that no row names any longer (the retention jobs, an erasure) races with an
ingest that stores the same content and has not committed its row yet. The touch is what
makes that safe: a file is only deleted when it is older than a cut-off, it is first moved
aside (`set_aside`: a `put` from then on writes a new file), and it is put back when it was
touched or named meanwhile (gateway/retention.py: `sweep_blobs`).
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path

_HEX = frozenset("0123456789abcdef")


class BlobStore:
    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)  # made with the first blob: a command that only reads makes nothing
        self._made: set[Path] = set()  # fan-out folders known to exist: not a mkdir per blob

    def path(self, sha256: str) -> Path:
        if not is_key(sha256):
            raise ValueError("not a sha256 key")
        return self.root / sha256[:2] / sha256[2:4] / sha256

    def put(self, data: bytes | Iterable[bytes]) -> str:
        """Store bytes (or byte chunks, written as they come) under their sha256."""
        if isinstance(data, bytes):
            known = hashlib.sha256(data).hexdigest()
            if self._touch(self.path(known)):
                return known  # same content already stored: nothing to write
        chunks = [data] if isinstance(data, bytes) else data
        digest = hashlib.sha256()
        if self.root not in self._made:
            self.root.mkdir(parents=True, exist_ok=True)
            self._made.add(self.root)
        fd, tmp = tempfile.mkstemp(dir=self.root, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as fh:
                for chunk in chunks:
                    digest.update(chunk)
                    fh.write(chunk)
                fh.flush()
                os.fsync(fh.fileno())
            sha = digest.hexdigest()
            target = self.path(sha)
            if self._touch(target):
                Path(tmp).unlink()
                return sha
            if target.parent not in self._made:
                target.parent.mkdir(parents=True, exist_ok=True)
                self._made.add(target.parent)
            try:
                os.replace(tmp, target)
            except FileNotFoundError:  # the folder was removed under us
                target.parent.mkdir(parents=True, exist_ok=True)
                os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return sha

    @staticmethod
    def _touch(path: Path) -> bool:
        """Mark an existing blob as just stored (its mtime), so no sweep deletes it before the
        row that names it is committed; False when there is no such file."""
        try:
            os.utime(path)
        except FileNotFoundError:
            return False
        return True

    def get(self, sha256: str) -> bytes:
        return self.path(sha256).read_bytes()

    def exists(self, sha256: str) -> bool:
        return self.path(sha256).exists()

    def open(self, sha256: str) -> Iterator[bytes]:
        """The blob's bytes in chunks of a megabyte (an export never holds a whole file)."""
        with self.path(sha256).open("rb") as fh:
            while chunk := fh.read(1 << 20):
                yield chunk

    def mtime(self, sha256: str) -> float | None:
        try:
            return self.path(sha256).stat().st_mtime
        except FileNotFoundError:
            return None

    def keys(self) -> Iterator[tuple[str, float]]:
        """Every stored blob with its mtime, walking the fan-out folders (names that are no
        key, such as temporary files, are left alone)."""
        for top in _subdirs(self.root):
            for mid in _subdirs(top):
                with os.scandir(mid) as files:
                    for entry in files:
                        if entry.is_file(follow_symlinks=False) and is_key(entry.name):
                            yield entry.name, entry.stat(follow_symlinks=False).st_mtime

    def stale_temporaries(self, older_than: float) -> list[Path]:
        """Temporary files a crash left behind (`put` and `set_aside` never keep one long)."""
        found: list[Path] = []
        if not self.root.is_dir():  # nothing stored yet: the folder is made by the first `put`
            return found
        with os.scandir(self.root) as entries:
            for entry in entries:
                if not (entry.name.startswith((".tmp-", ".gc-")) and entry.is_file(follow_symlinks=False)):
                    continue
                st = entry.stat(follow_symlinks=False)
                # An aside keeps its content's old mtime; its ctime is when it was moved aside
                # (by this node or another one still deciding): only a long-forgotten one is left.
                if max(st.st_mtime, st.st_ctime) < older_than:
                    found.append(Path(entry.path))
        return found

    def set_aside(self, sha256: str) -> Path | None:
        """Move the blob out of its place (atomically); None when it is not there (any more)."""
        aside = self.root / f".gc-{sha256}-{uuid.uuid4().hex}"
        try:
            os.rename(self.path(sha256), aside)
        except FileNotFoundError:
            return None
        return aside

    def put_back(self, aside: Path, sha256: str) -> None:
        """Undo `set_aside` (a `put` may have written the same content again meanwhile: either
        file is the blob)."""
        os.replace(aside, self.path(sha256))


def is_key(name: str) -> bool:
    return len(name) == 64 and _HEX.issuperset(name)


def _subdirs(folder: Path) -> Iterator[Path]:
    try:
        with os.scandir(folder) as entries:
            dirs = [Path(e.path) for e in entries if len(e.name) == 2 and e.is_dir(follow_symlinks=False)]
    except FileNotFoundError:  # nothing stored yet: the folder is made by the first `put`
        return iter(())
    return iter(sorted(dirs))
