"""A KV cache of preallocated slots, for the library's decoder layers to write into.

The library's attention modules call ``past_key_values.update(keys, values, layer_idx)`` with
the new tokens' post-RoPE keys and values and attend over what it returns. :class:`SlotLayer`
(a ``CacheLayerMixin``, the library's extension point for cache layouts) writes them at slots
the memory chose beforehand (a contiguous range, or ring slots of the working window) into a
preallocated buffer, and returns the buffer's first ``extent`` slots. Which slots each query may
see is then the attention mask's business, so the buffer need not be in time order: softmax
attention does not depend on the order of its keys (positions are already rotated into them).
Preallocation avoids the concatenation (a copy of the whole cache) that ``DynamicCache`` does
on every update.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers.cache_utils import Cache, CacheLayerMixin

Slots = slice | torch.Tensor


class SlotLayer(CacheLayerMixin):
    """One layer's K/V buffers ``(1, kv_heads, capacity, head_dim)``, written at planned slots."""

    is_sliding = False
    is_compileable = False

    def __init__(self, keys: torch.Tensor, values: torch.Tensor, extent: int = 0) -> None:
        super().__init__()
        self.keys = keys
        self.values = values
        self.dtype, self.device = keys.dtype, keys.device
        self.is_initialized = True
        self.extent = extent
        self.write: Slots | None = None
        self.written: tuple[torch.Tensor, torch.Tensor] | None = None
        #: Slots the next :meth:`update` returns instead of ``[0, extent)`` (a compressor's
        #: per-step selection, gathered so that attention runs over fewer keys); reset by it.
        self.gather: torch.Tensor | None = None

    @property
    def capacity(self) -> int:
        assert self.keys is not None
        return int(self.keys.shape[2])

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        """Never needed: the buffers exist from construction."""

    def plan(self, write: Slots, extent: int) -> None:
        """The next :meth:`update` writes at ``write`` and returns slots ``[0, extent)``."""
        if extent > self.capacity:
            raise ValueError(f"extent {extent} exceeds the layer's {self.capacity} slots")
        self.write = write
        self.extent = extent

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Store the new tokens' keys/values at the planned slots; return the visible buffer."""
        assert self.keys is not None and self.values is not None
        if self.write is None:
            raise RuntimeError("SlotLayer.update called without a planned write")
        if isinstance(self.write, slice):
            self.keys[:, :, self.write] = key_states
            self.values[:, :, self.write] = value_states
        else:
            self.keys.index_copy_(2, self.write, key_states)
            self.values.index_copy_(2, self.write, value_states)
        self.written = (key_states, value_states)
        self.write = None
        if self.gather is not None:
            picked, self.gather = self.gather, None
            return self.keys.index_select(2, picked), self.values.index_select(2, picked)
        return self.keys[:, :, : self.extent], self.values[:, :, : self.extent]

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.extent, 0

    def get_seq_length(self) -> int:
        return self.extent

    def get_max_length(self) -> int:
        return self.capacity


class SlotCache(Cache):
    """A cache whose layers are :class:`SlotLayer` (possibly of different lengths per layer)."""

    def __init__(self, layers: list[SlotLayer]) -> None:
        super().__init__(layers=list(layers))
        self.slot_layers = list(layers)

    def layer(self, index: int) -> SlotLayer:
        return self.slot_layers[index]

    def add(self, layer: SlotLayer) -> None:
        """Append the next layer (caches built layer by layer, as the answer pass does)."""
        self.layers.append(layer)
        self.slot_layers.append(layer)


def empty_slot_layer(
    kv_heads: int, capacity: int, head_dim: int, *, dtype: torch.dtype, device: torch.device
) -> SlotLayer:
    """A layer of ``capacity`` zeroed slots."""
    shape = (1, kv_heads, capacity, head_dim)
    return SlotLayer(
        torch.zeros(shape, dtype=dtype, device=device),
        torch.zeros(shape, dtype=dtype, device=device),
    )
