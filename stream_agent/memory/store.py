"""The on-disk block store: append-only segment files per stream, indexed in SQLite.

Layout under ``store_dir``::

    index.sqlite3                      the index (WAL journal): meta, streams, blocks
    streams/<dirname>/seg-00000001.kv  a stream's blocks, appended in order

A block on disk is a 32-byte header (magic, format, dtype, block id, tokens, layers, KV heads,
head dim) followed by one slice per layer, ``[keys | values]`` each ``(kv_heads, tokens,
head_dim)`` in the store dtype, so that one layer of one block is read with one ``pread``. Its
index row holds the stream, block id, frame sequence number, timestamps (pts and wall, start
and end), token count, its layout (kind, grid, kept rows, span, and the positions its keys are
rotated at), the representative keys per layer, the embedding sketch, and where its bytes are
with a CRC-32 per layer slice.

Crash safety: a block's bytes are written and (with ``fsync``) flushed to the device before its
index row commits, and SQLite's WAL journal keeps the index consistent through a crash at any
point. So after a crash the index lists only blocks whose bytes were complete; bytes after the
last indexed block (a block being written) are cut off at the next open, and an indexed block
whose bytes are missing or fail their checksum (a file truncated behind SQLite's back) is
dropped from the index while the rest loads.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sqlite3
import struct
import zlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from stream_agent.memory import kv8
from stream_agent.memory.errors import CorruptBlockError, StoreError, StoreMismatchError
from stream_agent.memory.layout import BlockLayout
from stream_agent.memory.records import BlockMeta, FrameStamp

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
INDEX_FILE = "index.sqlite3"
_MAGIC = b"SAKV"
_HEADER = struct.Struct("<4sHHQIHHH6x")
HEADER_BYTES = _HEADER.size
# the KV codec of a block file (its header says which); 4: the 8-bit codec of kv8
_DTYPE_CODES = {torch.float16: 1, torch.bfloat16: 2, torch.float32: 3, torch.int8: 4}
_DTYPE_NAMES = {
    torch.float16: "float16",
    torch.bfloat16: "bfloat16",
    torch.float32: "float32",
    torch.int8: "int8",
}
_NAMED_DTYPES = {name: dtype for dtype, name in _DTYPE_NAMES.items()}
_MAX_OPEN_SEGMENTS = 32

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS streams (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    dirname TEXT NOT NULL UNIQUE
);
CREATE TABLE IF NOT EXISTS blocks (
    stream_id INTEGER NOT NULL,
    block_id INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    pts_start REAL NOT NULL,
    pts_end REAL NOT NULL,
    wall_start REAL NOT NULL,
    wall_end REAL NOT NULL,
    tokens INTEGER NOT NULL,
    span INTEGER NOT NULL,
    key_base INTEGER NOT NULL,
    positions BLOB NOT NULL,
    rep_keys BLOB NOT NULL,
    segment INTEGER NOT NULL,
    offset INTEGER NOT NULL,
    length INTEGER NOT NULL,
    crcs BLOB NOT NULL,
    sketch BLOB NOT NULL,
    layout TEXT NOT NULL,
    keep BLOB NOT NULL,
    PRIMARY KEY (stream_id, block_id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS blocks_by_wall ON blocks (stream_id, wall_start);
"""

_COLUMNS = (
    "block_id, seq, pts_start, pts_end, wall_start, wall_end, tokens, span, key_base, "
    "positions, rep_keys, segment, offset, length, crcs, sketch, layout, keep"
)


@dataclass(frozen=True, slots=True, eq=False)
class LoadedStream:
    """A stream as found in the store: its blocks (oldest first), the representative keys
    ``(n, layers, kv_heads * head_dim)`` and embedding sketches ``(m, vectors, hidden)`` (store
    dtype) of its newest ``n`` and ``m`` blocks (as many as :meth:`BlockStore.open_stream` was
    asked to load; older blocks' rows stay in the index, see :meth:`BlockStore.read_rows`), and
    the next block id."""

    name: str
    stream_id: int
    blocks: list[BlockMeta]
    rep_keys: torch.Tensor
    sketches: torch.Tensor
    next_block_id: int
    dropped: int


@dataclass(slots=True)
class _StreamFiles:
    stream_id: int
    name: str
    folder: Path
    sizes: dict[int, int] = field(default_factory=dict)
    live: dict[int, int] = field(default_factory=dict)
    active: int = 0
    handle: Any = None


def dtype_name(dtype: torch.dtype) -> str:
    return _DTYPE_NAMES[dtype]


def _segment_name(number: int) -> str:
    return f"seg-{number:08d}.kv"


def _segment_number(path: Path) -> int | None:
    match = re.fullmatch(r"seg-(\d{8})\.kv", path.name)
    return int(match.group(1)) if match else None


def _dirname(name: str, stream_id: int) -> str:
    """A safe, unique folder name for a stream (its name may hold any characters)."""
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._")[:40] or "stream"
    return f"{stream_id:04d}-{safe}"


def _newest(items: list[bytes], count: int | None) -> list[bytes]:
    if count is None:
        return items
    return items[max(0, len(items) - count) :] if count > 0 else []


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class BlockStore:
    """The store of one :class:`~stream_agent.memory.memory.Memory` (all of its streams).

    Not thread-safe: the memory calls it from one thread at a time.
    """

    def __init__(
        self,
        root: Path,
        *,
        fingerprint: dict[str, Any],
        store_dtype: torch.dtype,
        layers: int,
        kv_heads: int,
        head_dim: int,
        hidden: int,
        position_dims: int,
        sketch_vectors: int,
        segment_bytes: int,
        fsync: bool,
    ) -> None:
        self.root = root
        self.hidden = hidden
        self.position_dims = position_dims
        self.layers = layers
        self.kv_heads = kv_heads
        self.head_dim = head_dim
        self.segment_bytes = segment_bytes
        self.fsync = fsync
        try:
            (root / "streams").mkdir(parents=True, exist_ok=True)
            self.db = sqlite3.connect(
                str(root / INDEX_FILE), isolation_level=None, check_same_thread=False
            )
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute(f"PRAGMA synchronous={'FULL' if fsync else 'NORMAL'}")
            self.db.executescript(_SCHEMA)
        except (OSError, sqlite3.Error) as exc:
            raise StoreError(
                f"cannot open the memory store in {root} ({exc}); check that the folder is "
                "writable, or point memory.store_dir elsewhere"
            ) from exc
        try:
            stored, self.sketch_vectors = self._check_meta(fingerprint, store_dtype, sketch_vectors)
        except BaseException:
            self.db.close()
            raise
        # ``kv_dtype``: how block files hold K/V (torch.int8: the 8-bit codec); ``dtype``: the
        # float dtype of everything else (representative keys, sketches) and of the K/V that
        # read_layers returns
        self.kv_dtype = stored
        self.kv8 = stored == torch.int8
        self.dtype = torch.float16 if self.kv8 else stored
        self.itemsize = torch.empty((), dtype=self.dtype).element_size()
        self._files: dict[int, _StreamFiles] = {}
        self._readers: dict[tuple[int, int], int] = {}
        # (stream_id, block_id) -> (pts_end, wall_end): spans extended since the last write,
        # written in one transaction at the next append, delete or flush (a still scene extends
        # the last block once per gated frame; a commit per frame would cost more than the gate)
        self._spans: dict[tuple[int, int], tuple[float, float]] = {}
        self._closed = False

    # ------------------------------------------------------------------------------- metadata

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield self.db
            self.db.execute("COMMIT")
        except BaseException:
            # also after a failed COMMIT (disk full): an open transaction would make every
            # later BEGIN fail
            if self.db.in_transaction:
                self.db.execute("ROLLBACK")
            raise

    def _check_meta(
        self, fingerprint: dict[str, Any], store_dtype: torch.dtype, sketch_vectors: int
    ) -> tuple[torch.dtype, int]:
        rows = dict(self.db.execute("SELECT key, value FROM meta").fetchall())
        wanted = json.dumps(fingerprint, sort_keys=True)
        if not rows:
            with self._transaction() as db:
                db.executemany(
                    "INSERT INTO meta (key, value) VALUES (?, ?)",
                    [
                        ("format", str(FORMAT_VERSION)),
                        ("fingerprint", wanted),
                        ("store_dtype", dtype_name(store_dtype)),
                        ("sketch_vectors", str(sketch_vectors)),
                    ],
                )
            return store_dtype, sketch_vectors
        if rows.get("format") != str(FORMAT_VERSION):
            raise StoreMismatchError(
                f"the memory store in {self.root} has format {rows.get('format')}, this version "
                f"reads format {FORMAT_VERSION}; point memory.store_dir at a new folder"
            )
        if rows.get("fingerprint") != wanted:
            raise StoreMismatchError(
                f"the memory store in {self.root} was written by another model (or another "
                "dtype) and its KV blocks are meaningless for this one; point memory.store_dir "
                "at a new folder or delete the old store"
            )
        stored = _NAMED_DTYPES.get(rows.get("store_dtype", ""), store_dtype)
        if stored != store_dtype:
            log.warning(
                "memory store %s keeps blocks in %s; memory.store_dtype=%s applies to new stores",
                self.root,
                dtype_name(stored),
                dtype_name(store_dtype),
            )
        vectors = int(rows.get("sketch_vectors", sketch_vectors))
        if vectors != sketch_vectors:
            log.warning(
                "memory store %s keeps %d sketch vectors per block; memory.sketch_vectors=%d "
                "applies to new stores",
                self.root,
                vectors,
                sketch_vectors,
            )
        return stored, vectors

    def stream_names(self) -> list[str]:
        return [r[0] for r in self.db.execute("SELECT name FROM streams ORDER BY id").fetchall()]

    def layer_bytes(self, tokens: int) -> int:
        if self.kv8:
            return kv8.layer_nbytes(self.kv_heads, tokens, self.head_dim)
        return 2 * self.kv_heads * tokens * self.head_dim * self.itemsize

    def as_stored(
        self, keys: torch.Tensor, values: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``keys``/``values`` ``(layers, kv_heads, tokens, head_dim)`` as reading them back
        will give them (the codec's round trip with ``int8``; a cast otherwise), so that what
        the RAM tier keeps is what the disk tier returns."""
        if not self.kv8:
            return keys.to("cpu", self.dtype), values.to("cpu", self.dtype)
        out_k, out_v = (
            torch.empty_like(keys, dtype=self.dtype),
            torch.empty_like(values, dtype=self.dtype),
        )
        for layer in range(int(keys.shape[0])):
            out_k[layer] = kv8.roundtrip(keys[layer].float()).to(self.dtype)
            out_v[layer] = kv8.roundtrip(values[layer].float()).to(self.dtype)
        return out_k, out_v

    # ------------------------------------------------------------------------------- opening

    def open_stream(
        self, name: str, *, rep_rows: int | None = None, sketch_rows: int | None = None
    ) -> LoadedStream:
        """Open (creating if new) a stream: recover its files and load its index, with the
        representative keys and sketches of its newest ``rep_rows`` / ``sketch_rows`` blocks
        (None: all of them)."""
        row = self.db.execute("SELECT id, dirname FROM streams WHERE name = ?", (name,)).fetchone()
        if row is None:
            with self._transaction() as db:
                next_id = db.execute("SELECT COALESCE(MAX(id), 0) + 1 FROM streams").fetchone()[0]
                dirname = _dirname(name, int(next_id))
                db.execute(
                    "INSERT INTO streams (id, name, dirname) VALUES (?, ?, ?)",
                    (next_id, name, dirname),
                )
            row = (int(next_id), dirname)
        stream_id, dirname = int(row[0]), str(row[1])
        folder = self.root / "streams" / dirname
        folder.mkdir(parents=True, exist_ok=True)
        files = _StreamFiles(stream_id, name, folder)
        self._files[stream_id] = files
        for path in folder.iterdir():
            number = _segment_number(path)
            if number is not None:
                files.sizes[number] = path.stat().st_size
        metas, rep_blobs, sketch_blobs, dropped = self._recover(files)
        reps = [
            self._blob_tensor(b, (self.layers, self.kv_heads * self.head_dim))
            for b in _newest(rep_blobs, rep_rows)
        ]
        sketches = [
            self._blob_tensor(b, (self.sketch_vectors, self.hidden))
            for b in _newest(sketch_blobs, sketch_rows)
        ]
        del rep_blobs, sketch_blobs
        max_id = self.db.execute(
            "SELECT COALESCE(MAX(block_id), 0) FROM blocks WHERE stream_id = ?", (stream_id,)
        ).fetchone()[0]
        next_block = max(int(max_id), metas[-1].block_id if metas else 0) + 1
        rep_keys = (
            torch.stack(reps)
            if reps
            else torch.empty(0, self.layers, self.kv_heads * self.head_dim, dtype=self.dtype)
        )
        sketch_table = (
            torch.stack(sketches)
            if sketches
            else torch.empty(0, self.sketch_vectors, self.hidden, dtype=self.dtype)
        )
        if metas or dropped:
            log.info(
                "memory store: stream %r reloaded with %d blocks (%d dropped as incomplete)",
                name,
                len(metas),
                dropped,
            )
        return LoadedStream(name, stream_id, metas, rep_keys, sketch_table, next_block, dropped)

    def _recover(
        self, files: _StreamFiles
    ) -> tuple[list[BlockMeta], list[bytes], list[bytes], int]:
        rows = self.db.execute(
            f"SELECT {_COLUMNS} FROM blocks WHERE stream_id = ? ORDER BY block_id",
            (files.stream_id,),
        ).fetchall()
        metas: list[BlockMeta] = []
        reps: list[bytes] = []
        sketches: list[bytes] = []
        bad: list[int] = []
        for row in rows:
            meta = self._meta(files.name, row)
            size = files.sizes.get(meta.segment)
            if size is None or meta.offset + meta.length > size:
                bad.append(meta.block_id)
                continue
            metas.append(meta)
            reps.append(bytes(row[10]))
            sketches.append(bytes(row[15]))
        # the newest block is the one a crash or a copy could have cut: check all its bytes
        while metas and not self._intact(metas[-1]):
            bad.append(metas.pop().block_id)
            reps.pop()
            sketches.pop()
        if bad:
            log.warning(
                "memory store: dropping %d incomplete block(s) of stream %r", len(bad), files.name
            )
            with self._transaction() as db:
                db.executemany(
                    "DELETE FROM blocks WHERE stream_id = ? AND block_id = ?",
                    [(files.stream_id, b) for b in bad],
                )
        for meta in metas:
            files.live[meta.segment] = files.live.get(meta.segment, 0) + 1
        # the last block's segment stays active; bytes after its end belong to no block
        if metas:
            files.active = metas[-1].segment
            end = metas[-1].offset + metas[-1].length
            if files.sizes[files.active] > end:
                self._truncate(files, files.active, end)
        else:
            files.active = max(files.sizes, default=0) + 1
        for number in sorted(files.sizes):
            if files.live.get(number, 0) == 0 and number != files.active:
                self._unlink_segment(files, number)
        return metas, reps, sketches, len(bad)

    def _intact(self, meta: BlockMeta) -> bool:
        try:
            self.read_layers(meta, range(self.layers))
        except CorruptBlockError:
            return False
        return True

    def _truncate(self, files: _StreamFiles, number: int, size: int) -> None:
        path = files.folder / _segment_name(number)
        with open(path, "r+b") as handle:
            handle.truncate(size)
            if self.fsync:
                os.fsync(handle.fileno())
        log.warning(
            "memory store: cut %d bytes of an unfinished block from %s",
            files.sizes[number] - size,
            path,
        )
        files.sizes[number] = size

    def _unlink_segment(self, files: _StreamFiles, number: int) -> None:
        reader = self._readers.pop((files.stream_id, number), None)
        if reader is not None:
            os.close(reader)
        with suppress(FileNotFoundError):
            (files.folder / _segment_name(number)).unlink()
        files.sizes.pop(number, None)
        files.live.pop(number, None)

    def _meta(self, name: str, row: Sequence[Any]) -> BlockMeta:
        crc_blob = bytes(row[14])
        tokens = int(row[6])
        positions = torch.frombuffer(bytearray(bytes(row[9])) or bytearray(4), dtype=torch.int32)
        positions = positions[: self.position_dims * tokens].long().view(self.position_dims, tokens)
        keep = torch.frombuffer(bytearray(bytes(row[17])) or bytearray(4), dtype=torch.int32)
        keep = keep[: len(bytes(row[17])) // 4].long()
        layout = BlockLayout.restore(str(row[16]), positions, keep)
        return BlockMeta(
            stream=name,
            block_id=int(row[0]),
            seq=int(row[1]),
            pts_start=float(row[2]),
            pts_end=float(row[3]),
            wall_start=float(row[4]),
            wall_end=float(row[5]),
            tokens=tokens,
            segment=int(row[11]),
            offset=int(row[12]),
            length=int(row[13]),
            crcs=struct.unpack(f"<{len(crc_blob) // 4}I", crc_blob),
            layout=layout,
        )

    def _blob_tensor(self, blob: bytes, shape: tuple[int, int]) -> torch.Tensor:
        data = torch.frombuffer(bytearray(blob), dtype=torch.uint8)
        return data.view(self.dtype).view(shape).clone()

    # -------------------------------------------------------------------------------- writing

    def _writer(self, files: _StreamFiles, length: int) -> Any:
        size = files.sizes.get(files.active, 0)
        if size > 0 and size + length > self.segment_bytes:
            if files.handle is not None:
                files.handle.close()
                files.handle = None
            files.active = max(files.sizes, default=files.active) + 1
        if files.handle is None:
            path = files.folder / _segment_name(files.active)
            is_new = not path.exists()
            files.handle = open(path, "ab")  # noqa: SIM115 - kept open across appends
            files.sizes.setdefault(files.active, files.handle.tell())
            if is_new and self.fsync:
                _fsync_dir(files.folder)
        return files.handle

    def append(
        self,
        stream_id: int,
        block_id: int,
        stamp: FrameStamp,
        *,
        layout: BlockLayout,
        rep_keys: torch.Tensor,
        sketch: torch.Tensor,
        keys: torch.Tensor,
        values: torch.Tensor,
    ) -> BlockMeta:
        """Write one block (keys/values ``(layers, kv_heads, tokens, head_dim)``) and index it.

        Returns its index record; the block's bytes are durable before its row commits.
        """
        self.write_spans()
        files = self._files[stream_id]
        tokens = int(keys.shape[2])
        if self.kv8:
            raw = (
                b"".join(
                    kv8.pack_layer(keys[i].float(), values[i].float()) for i in range(self.layers)
                )
                if tokens
                else b""
            )
        else:
            kv = torch.stack([keys, values], dim=1).to("cpu", self.dtype).contiguous()
            raw = kv.view(torch.uint8).numpy().tobytes() if tokens else b""
        per_layer = self.layer_bytes(tokens)
        view = memoryview(raw)
        crcs = [zlib.crc32(view[i * per_layer : (i + 1) * per_layer]) for i in range(self.layers)]
        header = _HEADER.pack(
            _MAGIC,
            FORMAT_VERSION,
            _DTYPE_CODES[self.kv_dtype],
            block_id,
            tokens,
            self.layers,
            self.kv_heads,
            self.head_dim,
        )
        length = HEADER_BYTES + len(raw)
        handle = self._writer(files, length)
        segment = files.active
        offset = files.sizes[segment]
        try:
            handle.write(header)
            handle.write(raw)
            handle.flush()
            if self.fsync:
                os.fsync(handle.fileno())
        except OSError as exc:
            self._abandon(files, segment, offset)
            raise StoreError(
                f"cannot write a memory block to {files.folder} ({exc}); free disk space or "
                "lower memory.disk_budget"
            ) from exc
        files.sizes[segment] = offset + length
        meta = BlockMeta(
            stream=files.name,
            block_id=block_id,
            seq=stamp.seq,
            pts_start=float(stamp.pts),
            pts_end=float(stamp.end_pts),
            wall_start=float(stamp.wall),
            wall_end=float(stamp.end_wall),
            tokens=tokens,
            segment=segment,
            offset=offset,
            length=length,
            crcs=tuple(crcs),
            layout=layout,
        )
        rep_blob = rep_keys.to("cpu", self.dtype).contiguous().view(torch.uint8).numpy().tobytes()
        pos_blob = layout.positions.to("cpu", torch.int32).contiguous().numpy().tobytes()
        keep = layout.keep if layout.keep is not None else torch.empty(0, dtype=torch.int32)
        keep_blob = torch.as_tensor(keep).to("cpu", torch.int32).contiguous().numpy().tobytes()
        sketch_blob = sketch.to("cpu", self.dtype).contiguous().view(torch.uint8).numpy().tobytes()
        try:
            with self._transaction() as db:
                db.execute(
                    f"INSERT INTO blocks (stream_id, {_COLUMNS}) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        stream_id,
                        block_id,
                        meta.seq,
                        meta.pts_start,
                        meta.pts_end,
                        meta.wall_start,
                        meta.wall_end,
                        tokens,
                        layout.span,
                        layout.start,
                        pos_blob,
                        rep_blob,
                        segment,
                        offset,
                        length,
                        struct.pack(f"<{len(crcs)}I", *crcs),
                        sketch_blob,
                        layout.describe(),
                        keep_blob,
                    ),
                )
        except sqlite3.Error as exc:
            self._abandon(files, segment, offset)
            raise StoreError(
                f"cannot index a memory block in {self.root} ({exc}); free disk space or point "
                "memory.store_dir elsewhere"
            ) from exc
        files.live[segment] = files.live.get(segment, 0) + 1
        return meta

    def _abandon(self, files: _StreamFiles, segment: int, offset: int) -> None:
        """Cut a failed write's bytes so that the next block starts cleanly."""
        handle, files.handle = files.handle, None
        if handle is not None:
            try:
                handle.close()  # flushes what is buffered, which fails again on a full disk
            except OSError as exc:
                log.warning("memory store: closing %s after a failed write: %s", files.folder, exc)
        try:
            with open(files.folder / _segment_name(segment), "r+b") as handle:
                handle.truncate(offset)
            files.sizes[segment] = offset
        except OSError:
            log.exception("memory store: cannot cut a failed write in %s", files.folder)

    # -------------------------------------------------------------------------------- reading

    def _reader(self, files: _StreamFiles, segment: int) -> int:
        key = (files.stream_id, segment)
        fd = self._readers.get(key)
        if fd is None:
            if len(self._readers) >= _MAX_OPEN_SEGMENTS:
                old_key = next(iter(self._readers))
                os.close(self._readers.pop(old_key))
            try:
                fd = os.open(files.folder / _segment_name(segment), os.O_RDONLY)
            except OSError as exc:
                raise CorruptBlockError(f"segment {segment} of {files.name!r}: {exc}") from exc
            self._readers[key] = fd
        return fd

    def read_layers(
        self, meta: BlockMeta, layers: Sequence[int] | range
    ) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
        """Keys and values ``(kv_heads, tokens, head_dim)`` (store dtype, CPU) of ``layers``."""
        files = self._files[self._stream_id(meta.stream)]
        fd = self._reader(files, meta.segment)
        per_layer = self.layer_bytes(meta.tokens)
        shape = (2, self.kv_heads, meta.tokens, self.head_dim)
        out: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        if per_layer == 0:
            empty = torch.empty(shape[1:], dtype=self.dtype)
            return {index: (empty, empty) for index in layers}
        for index in layers:
            at = meta.offset + HEADER_BYTES + index * per_layer
            try:
                data = os.pread(fd, per_layer, at)
            except OSError as exc:
                raise CorruptBlockError(
                    f"block {meta.block_id} of {meta.stream!r}: {exc}", meta
                ) from exc
            if len(data) != per_layer or zlib.crc32(data) != meta.crcs[index]:
                raise CorruptBlockError(
                    f"block {meta.block_id} of stream {meta.stream!r} (layer {index}) is "
                    "truncated or corrupt",
                    meta,
                )
            if self.kv8:
                out[index] = kv8.unpack_layer(
                    data, self.kv_heads, meta.tokens, self.head_dim, dtype=self.dtype
                )
                continue
            kv = torch.frombuffer(bytearray(data), dtype=torch.uint8).view(self.dtype).view(shape)
            out[index] = (kv[0], kv[1])
        return out

    def row_shape(self, column: str) -> tuple[int, int]:
        """The shape of one block's ``"rep_keys"`` or ``"sketch"`` row."""
        if column == "rep_keys":
            return (self.layers, self.kv_heads * self.head_dim)
        if column == "sketch":
            return (self.sketch_vectors, self.hidden)
        raise ValueError(f"no retrieval column {column!r}")

    def read_rows(
        self, stream_id: int, column: str, block_ids: Sequence[int], *, batch: int = 512
    ) -> torch.Tensor:
        """The ``column`` (``"rep_keys"`` or ``"sketch"``) of blocks ``block_ids`` (ascending) of
        ``stream_id`` from the index, in that order: ``(n, layers, kv_heads * head_dim)`` or
        ``(n, vectors, hidden)`` in the store dtype. Read in batches of primary-key ranges, so a
        question over old blocks costs a few range scans, not one query per block."""
        shape = self.row_shape(column)
        out = torch.empty((len(block_ids), *shape), dtype=self.dtype)
        at = 0
        for first in range(0, len(block_ids), batch):
            wanted = block_ids[first : first + batch]
            found = {
                int(block_id): bytes(blob)
                for block_id, blob in self.db.execute(
                    f"SELECT block_id, {column} FROM blocks WHERE stream_id = ? "
                    "AND block_id BETWEEN ? AND ?",
                    (stream_id, wanted[0], wanted[-1]),
                )
            }
            for block_id in wanted:
                blob = found.get(int(block_id))
                if blob is None:
                    raise StoreError(
                        f"block {block_id} of stream {stream_id} has no row in the index "
                        f"{self.root / INDEX_FILE}; it was evicted or the index was edited"
                    )
                raw = torch.frombuffer(bytearray(blob), dtype=torch.uint8)
                out[at] = raw.view(self.dtype).view(shape)
                at += 1
        return out

    def _stream_id(self, name: str) -> int:
        for files in self._files.values():
            if files.name == name:
                return files.stream_id
        raise KeyError(name)

    # ---------------------------------------------------------------------------------- spans

    def extend_span(self, stream_id: int, block_id: int, pts_end: float, wall_end: float) -> None:
        """Record that block ``block_id`` now covers up to ``pts_end``/``wall_end`` (a still
        scene after it); written to the index by :meth:`write_spans` (next append, delete or
        flush), so a crash loses at most the extensions since the last write."""
        self._spans[(stream_id, block_id)] = (float(pts_end), float(wall_end))

    def write_spans(self) -> None:
        """Write the pending span extensions in one transaction."""
        if not self._spans:
            return
        pending, self._spans = self._spans, {}
        try:
            with self._transaction() as db:
                db.executemany(
                    "UPDATE blocks SET pts_end = ?, wall_end = ? "
                    "WHERE stream_id = ? AND block_id = ?",
                    [(p, w, sid, bid) for (sid, bid), (p, w) in pending.items()],
                )
        except sqlite3.Error as exc:
            for key, value in pending.items():
                self._spans.setdefault(key, value)
            raise StoreError(
                f"cannot update block time spans in {self.root} ({exc}); free disk space or "
                "point memory.store_dir elsewhere"
            ) from exc

    # ------------------------------------------------------------------------------- evicting

    def delete(self, stream_id: int, metas: Sequence[BlockMeta]) -> None:
        """Remove blocks from the index, then delete segment files no block uses any more."""
        if not metas:
            return
        self.write_spans()
        files = self._files[stream_id]
        with self._transaction() as db:
            db.executemany(
                "DELETE FROM blocks WHERE stream_id = ? AND block_id = ?",
                [(stream_id, m.block_id) for m in metas],
            )
        for meta in metas:
            files.live[meta.segment] = files.live.get(meta.segment, 1) - 1
        for number in sorted({m.segment for m in metas}):
            if files.live.get(number, 0) > 0:
                continue
            if number == files.active and files.handle is not None:
                # the segment being appended to emptied: start it afresh on the next append
                files.handle.close()
                files.handle = None
            self._unlink_segment(files, number)

    def active_segment(self, stream_id: int) -> int:
        """The segment file ``stream_id``'s next block is appended to."""
        return self._files[stream_id].active

    # ---------------------------------------------------------------------------------- sizes

    def disk_bytes(self, stream_id: int) -> int:
        return sum(self._files[stream_id].sizes.values())

    def index_bytes(self) -> int:
        total = 0
        for suffix in ("", "-wal", "-shm"):
            path = self.root / f"{INDEX_FILE}{suffix}"
            if path.exists():
                total += path.stat().st_size
        return total

    # -------------------------------------------------------------------------------- closing

    def flush(self) -> None:
        """Push everything written so far to the device (appends already are, with fsync)."""
        self.write_spans()
        for files in self._files.values():
            if files.handle is not None:
                files.handle.flush()
                os.fsync(files.handle.fileno())
        self.db.execute("PRAGMA wal_checkpoint(PASSIVE)")

    def close(self) -> None:
        if self._closed:
            return
        try:
            self.write_spans()
        except StoreError:
            log.exception("memory store: block time spans could not be written at close")
        self._closed = True
        for files in self._files.values():
            if files.handle is not None:
                files.handle.close()
                files.handle = None
        for fd in self._readers.values():
            os.close(fd)
        self._readers.clear()
        self.db.close()
