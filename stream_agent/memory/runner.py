"""Running a language model layer by layer with the library's own decoder-layer modules.

ReKV retrieves per layer with the question's query at that layer, which depends on what earlier
layers retrieved, so the memory cannot call the decoder stack in one go. :class:`LayerRunner`
exposes the stack's pieces: the rotary embedding for explicit positions, the pre-RoPE query and
key projections of a layer (its ``input_layernorm`` and ``q_proj``/``k_proj``, plus per-head
norms where the family has them), one whole decoder layer over a cache and an explicit
additive mask, and the final norm plus LM head. Rotating stored keys to new positions (exact
because rotations compose: ``R(p + d) = R(d) R(p)``) uses the same rotary module.
"""

from __future__ import annotations

from typing import Any

import torch

from stream_agent.memory.errors import MemoryConfigError
from stream_agent.models.base import LanguageModel


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


class LayerRunner:
    """The decoder stack of ``model`` as separately callable pieces (see the module docstring)."""

    def __init__(self, model: LanguageModel) -> None:
        self.model = model
        decoder = model.decoder
        self.layers: list[Any] = list(decoder.layers)
        self.rotary: Any = decoder.rotary_emb
        self.norm: Any = decoder.norm
        self.head: Any = model.lm_head
        spec = model.lm_spec
        self.spec = spec
        self.num_layers = spec.num_layers
        self.heads = spec.num_heads
        self.kv_heads = spec.num_kv_heads
        self.head_dim = spec.head_dim
        self.group = spec.num_heads // spec.num_kv_heads
        self.device = model.device
        self.dtype = model.dtype
        if len(self.layers) != spec.num_layers:
            raise MemoryConfigError(
                f"the decoder has {len(self.layers)} layers but the model spec says "
                f"{spec.num_layers}"
            )
        config = model.model.config.get_text_config()
        layer_types = getattr(config, "layer_types", None) or ()
        if any(kind != "full_attention" for kind in layer_types):
            raise MemoryConfigError(
                "the memory needs a language model with full attention in every layer; this one "
                f"has layer types {sorted(set(layer_types))}"
            )
        # Rotary variants that scale cos/sin (YaRN's attention factor) would scale a re-rotation.
        self.rotary_scale = float(getattr(self.rotary, "attention_scaling", 1.0) or 1.0)

    # ------------------------------------------------------------------------------- positions

    def position_embeddings(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(cos, sin)`` ``(1, L, head_dim)`` of chunk positions ``(P, L)``, as the decoder's
        own ``rotary_emb`` computes them for its layers."""
        position_ids = self.model.lm_position_ids(positions.to(self.device))
        probe = torch.empty(1, 1, dtype=self.dtype, device=self.device)
        cos, sin = self.rotary(probe, position_ids)
        return cos, sin

    def shift_rotation(self, delta: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Float32 ``(cos, sin)`` ``(head_dim,)`` rotating a key by ``delta`` positions.

        For M-RoPE a uniform shift of all three position components is this 1-D rotation.
        """
        positions = torch.full(
            (self.spec.position_dims, 1), int(delta), dtype=torch.long, device=self.device
        )
        position_ids = self.model.lm_position_ids(positions)
        probe = torch.empty(1, 1, dtype=torch.float32, device=self.device)
        cos, sin = self.rotary(probe, position_ids)
        return (
            cos.reshape(-1).float() / self.rotary_scale,
            sin.reshape(-1).float() / self.rotary_scale,
        )

    def shift_keys(self, keys: torch.Tensor, delta: int) -> torch.Tensor:
        """Post-RoPE ``keys`` (``(..., head_dim)``) moved by ``delta`` positions (float32 maths,
        returned in ``keys``' dtype; ``delta == 0`` returns ``keys`` itself, bit for bit)."""
        if delta == 0:
            return keys
        cos, sin = self.shift_rotation(delta)
        k32 = keys.float()
        return (k32 * cos + rotate_half(k32) * sin).to(keys.dtype)

    def shift_tokens(self, keys: torch.Tensor, deltas: torch.Tensor) -> torch.Tensor:
        """Post-RoPE ``keys`` ``(..., T, head_dim)`` with token ``t`` moved by ``deltas[:, t]``
        (``(P, T)``, one row per position component; ``(T,)`` shifts every component alike),
        in one pass (float32 maths; a zero shift leaves a key bit for bit)."""
        if keys.shape[-2] == 0 or not bool(deltas.any()):
            return keys
        positions = deltas.to(self.device, torch.long)
        if positions.ndim == 1:
            positions = positions[None]
        positions = positions.expand(self.spec.position_dims, -1)
        position_ids = self.model.lm_position_ids(positions)
        probe = torch.empty(1, 1, dtype=torch.float32, device=self.device)
        cos, sin = self.rotary(probe, position_ids)
        cos = cos[0].float() / self.rotary_scale
        sin = sin[0].float() / self.rotary_scale
        k32 = keys.float()
        shifted: torch.Tensor = (k32 * cos + rotate_half(k32) * sin).to(keys.dtype)
        return shifted

    # ------------------------------------------------------------------------------ projections

    def normed(self, index: int, hidden: torch.Tensor) -> torch.Tensor:
        """Layer ``index``'s ``input_layernorm`` of ``hidden`` ``(1, L, D)``."""
        out: torch.Tensor = self.layers[index].input_layernorm(hidden)
        return out

    def project(self, index: int, normed: torch.Tensor, which: str) -> torch.Tensor:
        """Pre-RoPE queries (``which="q"``, ``(1, L, heads, head_dim)``) or keys (``"k"``,
        ``(1, L, kv_heads, head_dim)``) of layer ``index`` from its normed input."""
        attn = self.layers[index].self_attn
        proj = attn.q_proj if which == "q" else attn.k_proj
        out: torch.Tensor = proj(normed)
        out = out.view(*normed.shape[:-1], -1, self.head_dim)
        head_norm = getattr(attn, "q_norm" if which == "q" else "k_norm", None)
        if head_norm is not None:
            out = head_norm(out)
        return out

    def grouped_query(self, queries: torch.Tensor) -> torch.Tensor:
        """Mean query over rows ``(1, n, heads, head_dim)`` folded onto the KV heads: float32
        ``(kv_heads * head_dim,)``.

        Summing the query heads that share a KV head makes the dot product with a block's mean
        key equal ReKV's product of the mean query with the GQA-expanded mean key.
        """
        mean = queries[0].float().mean(dim=0)
        grouped = mean.view(self.kv_heads, self.group, self.head_dim).sum(dim=1)
        return grouped.reshape(-1)

    # ----------------------------------------------------------------------------------- layers

    def run_layer(
        self,
        index: int,
        hidden: torch.Tensor,
        position_embeddings: tuple[torch.Tensor, torch.Tensor],
        cache: Any,
        mask: torch.Tensor | None,
    ) -> torch.Tensor:
        """One whole decoder layer; it appends its keys/values to ``cache`` through
        ``cache.update`` and attends with the additive ``mask`` ``(1, 1, L, kv)`` (None: see
        every cached slot, only for a single query row)."""
        out = self.layers[index](
            hidden,
            attention_mask=mask,
            position_ids=None,
            cache=cache,  # transformers >= 5.25; past_key_values is removed in 5.40
            use_cache=True,
            position_embeddings=position_embeddings,
        )
        result: torch.Tensor = out[0] if isinstance(out, tuple) else out
        return result

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Float32 next-token logits ``(vocab,)`` after the last row of ``hidden``."""
        last = self.norm(hidden[:, -1:])
        logits: torch.Tensor = self.head(last)[0, -1]
        return logits.float()

    def additive_mask(self, visible: torch.Tensor) -> torch.Tensor:
        """Boolean ``(L, kv)`` (True = may attend) -> additive ``(1, 1, L, kv)`` in the model's
        dtype, which every attention implementation (sdpa, eager) takes."""
        blocked = torch.finfo(self.dtype).min
        zeros = torch.zeros((), dtype=self.dtype, device=visible.device)
        full = torch.full((), blocked, dtype=self.dtype, device=visible.device)
        return torch.where(visible, zeros, full)[None, None]
