"""Where event pictures live: the :class:`SnapshotStore` interface and a small file-based store.

The daemon keeps answers' evidence frames in an on-disk frame store; events put their snapshot
in the same store so a picture outlives a restart. The alerts subsystem needs only
:class:`SnapshotStore`; :class:`FileSnapshotStore` (one JPEG file per key, written atomically)
serves where no other store is wired, and in tests.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Protocol

_KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$")


class SnapshotStore(Protocol):
    """A keyed store of JPEG bytes that persists across restarts."""

    def put(self, key: str, jpeg: bytes) -> None: ...
    def get(self, key: str) -> bytes | None: ...
    def delete(self, key: str) -> None: ...


def snapshot_key(event_id: str) -> str:
    """The store key of an event's snapshot."""
    return f"event-{event_id}.jpg"


class FileSnapshotStore:
    """One file per key under ``folder`` (created); keys are checked to be plain file names."""

    def __init__(self, folder: Path) -> None:
        self._folder = folder
        folder.mkdir(parents=True, exist_ok=True)

    def _path(self, key: str) -> Path:
        if not _KEY.match(key) or ".." in key:
            raise ValueError(f"{key!r} is not a valid snapshot key")
        return self._folder / key

    def put(self, key: str, jpeg: bytes) -> None:
        path = self._path(key)
        tmp = path.with_name(path.name + ".tmp")
        with tmp.open("wb") as out:
            out.write(jpeg)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)

    def get(self, key: str) -> bytes | None:
        try:
            return self._path(key).read_bytes()
        except FileNotFoundError:
            return None

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)
