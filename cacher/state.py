"""A stream's cached reference frame: per-layer keys, values and branch outputs.

Per encoder layer the reference keeps what STC-Cacher reuses (methods.md section 1.1):
``keys`` and ``values`` (``(1, H, N, head_dim)``, keys after rotary), the attention branch
``attention`` (after the output projection, before the residual add) and the MLP branch ``mlp``
(before the residual add), both ``(1, N, D)``. The frame's encoder input ``embeds`` is kept too
(for the change map and, in ``adaptive`` mode, to rebuild the reference's per-layer inputs), and
in ``adaptive`` mode the hidden states the caller asked for, so an unchanged frame can be answered
without running a layer. Its size is fixed by the encoder and the token count, so a stream's
memory is bounded: :func:`reference_bytes` gives it before the first frame.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from cacher.layers import EncoderLayer, Rotary

Tensor = torch.Tensor


@dataclass(frozen=True, slots=True, eq=False)
class LayerReference:
    """What one layer of the reference frame left behind."""

    keys: Tensor
    values: Tensor
    attention: Tensor
    mlp: Tensor

    @property
    def nbytes(self) -> int:
        return sum(
            t.numel() * t.element_size() for t in (self.keys, self.values, self.attention, self.mlp)
        )


@dataclass(slots=True, eq=False)
class Reference:
    """The reference frame of one stream (mutable only in ``age``)."""

    embeds: Tensor
    layers: tuple[LayerReference, ...]
    kept: tuple[Tensor, ...] | None
    rotary: Rotary | None
    masks: tuple[Tensor | None, ...]
    grid: tuple[int, int] | None
    age: int = 0

    @property
    def tokens(self) -> int:
        return int(self.embeds.shape[1])

    @property
    def nbytes(self) -> int:
        """Bytes of the tensors this reference owns (the rotary angles and mask are the caller's
        and not counted)."""
        total = self.embeds.numel() * self.embeds.element_size()
        total += sum(layer.nbytes for layer in self.layers)
        if self.kept is not None:
            total += sum(t.numel() * t.element_size() for t in self.kept)
        return total

    def same_layout(
        self,
        embeds: Tensor,
        rotary: Rotary | None,
        masks: tuple[Tensor | None, ...],
        grid: tuple[int, int] | None,
    ) -> bool:
        """Whether a frame can be compared with this reference token by token: same shape, grid,
        rotary angles and attention masks."""
        if embeds.shape != self.embeds.shape or grid != self.grid:
            return False
        return _same_rotary(rotary, self.rotary) and all(
            _same_tensor(a, b) for a, b in zip(masks, self.masks, strict=True)
        )


def _same_tensor(a: Tensor | None, b: Tensor | None) -> bool:
    if a is None or b is None:
        return a is b
    return a is b or (a.shape == b.shape and a.dtype == b.dtype and bool(torch.equal(a, b)))


def _same_rotary(a: Rotary | None, b: Rotary | None) -> bool:
    if a is None or b is None:
        return a is b
    return a is b or (_same_tensor(a.cos, b.cos) and _same_tensor(a.sin, b.sin))


def reference_bytes(
    layers: Sequence[EncoderLayer],
    tokens: int,
    *,
    compute_dtype: torch.dtype,
    storage_dtype: torch.dtype,
    kept: int = 0,
    previous: bool = False,
) -> int:
    """Bytes a stream's reference takes for ``tokens`` tokens per frame.

    Keys and values (``tokens x heads x head_dim`` each) and the two branch outputs
    (``tokens x width`` each) per layer in ``storage_dtype``, plus the encoder input and
    ``kept`` hidden states (and with ``previous`` the previous frame's input) in
    ``compute_dtype``.
    """
    store = torch.empty((), dtype=storage_dtype).element_size()
    compute = torch.empty((), dtype=compute_dtype).element_size()
    per_layer = sum(
        2 * tokens * layer.num_heads * layer.head_dim + 2 * tokens * layer.hidden_size
        for layer in layers
    )
    width = layers[0].hidden_size if layers else 0
    return per_layer * store + (1 + kept + int(previous)) * tokens * width * compute
