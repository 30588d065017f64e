"""Evidence frames on disk: one small JPEG per stored block, kept and deleted with the block.

Every moment an answer cites is a stored block; its ``frame_url`` must resolve for as long as the
block exists, across restarts. A :class:`FrameStore` keeps, beside the memory's block files, the
JPEG of each block's representative frame (the middle frame of its step, downscaled, see
:func:`thumbnail_jpeg`) in ``<root>/<stream as hex>/<block id>_<wall ms>_<pts ms>.jpg``: the
file name is the index, so a restarted daemon finds every frame without a database. The memory
writes a block's frame when it stores the block, deletes it when the block is evicted or dropped,
and counts the frames' bytes in its disk budget; the HTTP server reads them by wall time.

Plain module (numpy, PIL): no torch, no transformers. Thread-safe: the engine thread writes and
deletes, the event loop reads.
"""

from __future__ import annotations

import bisect
import logging
import os
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from stream_agent.jpeg import encode_jpeg

log = logging.getLogger(__name__)

#: Longer side of a stored evidence frame (pixels) and its JPEG quality.
FRAME_MAX_SIDE = 384
FRAME_QUALITY = 80


def thumbnail_jpeg(
    image: npt.NDArray[np.uint8], *, max_side: int = FRAME_MAX_SIDE, quality: int = FRAME_QUALITY
) -> bytes:
    """RGB ``uint8`` (H, W, 3) -> the JPEG of an evidence frame (longer side ``max_side``)."""
    return encode_jpeg(image, max_side=max_side, quality=quality)


@dataclass(frozen=True, slots=True)
class BlockFrame:
    """A block's representative frame as JPEG, with the frame's own timestamps."""

    jpeg: bytes
    pts: float
    wall: float


@dataclass(frozen=True, slots=True)
class StoredFrame:
    """One frame on disk (``jpeg`` filled by :meth:`FrameStore.nearest`)."""

    stream: str
    block_id: int
    pts: float
    wall: float
    size: int
    path: Path
    jpeg: bytes = b""


class _Index:
    """One stream's frames, sorted by wall time."""

    def __init__(self) -> None:
        self.walls: list[float] = []
        self.frames: list[StoredFrame] = []
        self.by_block: dict[int, StoredFrame] = {}
        self.bytes = 0

    def add(self, frame: StoredFrame) -> None:
        old = self.by_block.pop(frame.block_id, None)
        if old is not None:
            self.remove(old)
        i = bisect.bisect_right(self.walls, frame.wall)
        self.walls.insert(i, frame.wall)
        self.frames.insert(i, frame)
        self.by_block[frame.block_id] = frame
        self.bytes += frame.size

    def remove(self, frame: StoredFrame) -> None:
        i = self.frames.index(frame)
        del self.walls[i]
        del self.frames[i]
        self.by_block.pop(frame.block_id, None)
        self.bytes -= frame.size


class FrameStore:
    """Evidence JPEGs of stored blocks under ``root`` (see the module docstring)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self._lock = threading.Lock()
        self._streams: dict[str, _Index] = {}
        self._scan()

    # --- layout ----------------------------------------------------------------------------

    @staticmethod
    def _folder_name(stream: str) -> str:
        return stream.encode("utf-8").hex() or "00"

    def _folder(self, stream: str) -> Path:
        return self.root / self._folder_name(stream)

    def _scan(self) -> None:
        if not self.root.is_dir():
            return
        for folder in self.root.iterdir():
            try:
                stream = bytes.fromhex(folder.name).decode("utf-8")
            except ValueError:
                continue
            if not folder.is_dir():
                continue
            index = self._streams.setdefault(stream, _Index())
            for path in folder.glob("*.jpg"):
                parts = path.stem.split("_")
                try:
                    block_id, wall_ms, pts_ms = int(parts[0]), int(parts[1]), int(parts[2])
                    size = path.stat().st_size
                except (ValueError, IndexError, OSError):
                    continue
                index.add(
                    StoredFrame(stream, block_id, pts_ms / 1000.0, wall_ms / 1000.0, size, path)
                )

    # --- the memory's side -----------------------------------------------------------------

    def put(self, stream: str, block_id: int, frame: BlockFrame) -> int:
        """Write ``frame`` as block ``block_id``'s evidence; returns its bytes on disk."""
        folder = self._folder(stream)
        folder.mkdir(parents=True, exist_ok=True)
        wall_ms, pts_ms = round(frame.wall * 1000.0), round(frame.pts * 1000.0)
        path = folder / f"{block_id}_{wall_ms}_{pts_ms}.jpg"
        partial = path.with_suffix(".part")
        partial.write_bytes(frame.jpeg)
        os.replace(partial, path)  # a reader never sees half a file
        stored = StoredFrame(
            stream, block_id, pts_ms / 1000.0, wall_ms / 1000.0, len(frame.jpeg), path
        )
        with self._lock:
            self._streams.setdefault(stream, _Index()).add(stored)
        return stored.size

    def delete(self, stream: str, block_ids: Iterable[int]) -> None:
        """Delete the frames of ``block_ids`` (those that have one)."""
        doomed: list[StoredFrame] = []
        with self._lock:
            index = self._streams.get(stream)
            if index is None:
                return
            for block_id in block_ids:
                frame = index.by_block.get(block_id)
                if frame is not None:
                    index.remove(frame)
                    doomed.append(frame)
        for frame in doomed:
            try:
                frame.path.unlink(missing_ok=True)
            except OSError as exc:
                log.warning("frames: could not delete %s: %s", frame.path, exc.strerror)

    def retain(self, stream: str, block_ids: Iterable[int]) -> None:
        """Delete every frame of ``stream`` whose block is not in ``block_ids`` (after a
        restart: frames of blocks a crash left behind)."""
        keep = set(block_ids)
        with self._lock:
            index = self._streams.get(stream)
            orphans = [] if index is None else [b for b in index.by_block if b not in keep]
        if orphans:
            self.delete(stream, orphans)
            log.info("frames: %d frame(s) of %r had no block; deleted", len(orphans), stream)

    def stream_bytes(self, stream: str) -> int:
        with self._lock:
            index = self._streams.get(stream)
            return 0 if index is None else index.bytes

    @property
    def nbytes(self) -> int:
        with self._lock:
            return sum(index.bytes for index in self._streams.values())

    def streams(self) -> tuple[str, ...]:
        with self._lock:
            return tuple(self._streams)

    def count(self, stream: str) -> int:
        with self._lock:
            index = self._streams.get(stream)
            return 0 if index is None else len(index.frames)

    # --- the server's side -----------------------------------------------------------------

    def nearest(self, stream: str, wall: float, tolerance_s: float = 2.0) -> StoredFrame | None:
        """The stored frame of ``stream`` nearest ``wall`` (Unix s) within ``tolerance_s``, with
        its JPEG read; None if there is none (or it was deleted meanwhile)."""
        with self._lock:
            index = self._streams.get(stream)
            if index is None or not index.frames:
                return None
            i = bisect.bisect_left(index.walls, wall)
            near = [index.frames[j] for j in (i - 1, i) if 0 <= j < len(index.frames)]
        best = min(near, key=lambda f: abs(f.wall - wall))
        if abs(best.wall - wall) > tolerance_s:
            return None
        try:
            data = best.path.read_bytes()
        except OSError:
            return None
        return StoredFrame(
            best.stream, best.block_id, best.pts, best.wall, best.size, best.path, data
        )
