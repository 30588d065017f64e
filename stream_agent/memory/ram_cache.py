"""The RAM tier: an LRU cache of stored block layers, bounded in bytes, shared by all streams.

Entries are one layer of one block (keys and values in the store dtype, on the CPU), because
retrieval is per layer: a question loads, for each layer, only the blocks that layer chose.
A freshly encoded block enters the cache whole, so the newest blocks (which every answer sees)
are usually served from RAM.
"""

from __future__ import annotations

from collections import OrderedDict

import torch

Key = tuple[int, int, int]  # (stream id, block id, layer)


class BlockCache:
    """LRU of ``(keys, values)`` per :data:`Key`, evicting least recently used beyond ``budget``."""

    def __init__(self, budget_bytes: int) -> None:
        self.budget = budget_bytes
        self._entries: OrderedDict[Key, tuple[torch.Tensor, torch.Tensor]] = OrderedDict()
        self._bytes = 0
        self._per_stream: dict[int, int] = {}
        self.hits = 0
        self.misses = 0

    @staticmethod
    def _size(entry: tuple[torch.Tensor, torch.Tensor]) -> int:
        return sum(t.numel() * t.element_size() for t in entry)

    def get(self, key: Key) -> tuple[torch.Tensor, torch.Tensor] | None:
        entry = self._entries.get(key)
        if entry is None:
            self.misses += 1
            return None
        self._entries.move_to_end(key)
        self.hits += 1
        return entry

    def put(self, key: Key, keys: torch.Tensor, values: torch.Tensor) -> None:
        entry = (keys, values)
        size = self._size(entry)
        if size > self.budget:
            return
        self.discard(key)
        self._entries[key] = entry
        self._bytes += size
        self._per_stream[key[0]] = self._per_stream.get(key[0], 0) + size
        while self._bytes > self.budget:
            old_key, old = self._entries.popitem(last=False)
            self._forget(old_key, old)

    def discard(self, key: Key) -> None:
        entry = self._entries.pop(key, None)
        if entry is not None:
            self._forget(key, entry)

    def discard_block(self, stream_id: int, block_id: int, layers: int) -> None:
        for layer in range(layers):
            self.discard((stream_id, block_id, layer))

    def _forget(self, key: Key, entry: tuple[torch.Tensor, torch.Tensor]) -> None:
        size = self._size(entry)
        self._bytes -= size
        self._per_stream[key[0]] = self._per_stream.get(key[0], 0) - size

    @property
    def nbytes(self) -> int:
        return self._bytes

    def stream_bytes(self, stream_id: int) -> int:
        return self._per_stream.get(stream_id, 0)

    def __len__(self) -> int:
        return len(self._entries)
