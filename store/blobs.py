"""Content-addressed attachment files: `<blob_dir>/ab/cd/<sha256>`. Keys never come from a mail.

A blob is written to a temporary file, fsync'd and renamed into place, so a crash leaves either
the whole file or none; writing the same content twice is a no-op.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path


class BlobStore:
    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)  # made with the first blob: a command that only reads makes nothing
        self._made: set[Path] = set()  # fan-out folders known to exist (a mkdir per blob was 4 % of parsing)

    def path(self, sha256: str) -> Path:
        if len(sha256) != 64 or any(c not in "0123456789abcdef" for c in sha256):
            raise ValueError("not a sha256 key")
        return self.root / sha256[:2] / sha256[2:4] / sha256

    def put(self, data: bytes | Iterable[bytes]) -> str:
        """Store bytes (or byte chunks, written as they come) under their sha256."""
        if isinstance(data, bytes):
            known = hashlib.sha256(data).hexdigest()
            if self.path(known).exists():
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
            if target.exists():
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

    def get(self, sha256: str) -> bytes:
        return self.path(sha256).read_bytes()

    def exists(self, sha256: str) -> bool:
        return self.path(sha256).exists()
