"""Typed records passed between the model runtime and the rest of the pipeline.

All are frozen dataclasses. Tensors inside them live on the model's device; records that hold
tensors compare by identity (``eq=False``), since element-wise equality of tensors is not a bool.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from stream_agent.models.errors import InputError


@dataclass(frozen=True, slots=True)
class FrameTransform:
    """How one RGB frame becomes the vision tower's input, read from the checkpoint.

    The frame is resized to ``height`` x ``width`` with PIL's ``resample`` filter (a
    ``PIL.Image.Resampling`` value), scaled by ``rescale_factor`` and normalised per channel with
    ``mean``/``std``, exactly as the library's PIL image processor does.
    """

    height: int
    width: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    rescale_factor: float
    resample: int


@dataclass(frozen=True, slots=True)
class VisionSpec:
    """The shape of a family's vision path, for callers that run the layers themselves.

    ``feature_layers`` index hidden states (0 = patch embeddings, ``j`` = output of layer ``j``)
    and are what the family's head (:meth:`VideoLLM.tokens_from_hidden`) consumes, in this order.
    ``patch_grid`` is the raster grid of patch tokens (rows, cols) the encoder sees per frame;
    ``token_grid`` the grid of visual tokens per step after the family's projector and pooling.
    ``frames_per_step`` is how many input frames one step of tokens covers (1 for LLaVA-OneVision;
    2 for Qwen2-VL, whose patches span two frames).
    """

    image_size: tuple[int, int]
    patch_size: int
    patch_grid: tuple[int, int]
    hidden_size: int
    num_layers: int
    feature_layers: tuple[int, ...]
    token_grid: tuple[int, int]
    frames_per_step: int = 1

    @property
    def patches_per_frame(self) -> int:
        return self.patch_grid[0] * self.patch_grid[1]

    @property
    def tokens_per_step(self) -> int:
        return self.token_grid[0] * self.token_grid[1]


@dataclass(frozen=True, slots=True)
class LMSpec:
    """The language model's attention layout, for sizing and reading its KV cache.

    ``rope`` is ``"1d"`` (positions are one integer per token) or ``"mrope"`` (three integers per
    token: time, height, width). Keys in the cache are stored after the rotary embedding.
    """

    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    hidden_size: int
    vocab_size: int
    rope: str
    rope_theta: float
    max_positions: int
    dtype: torch.dtype

    @classmethod
    def from_text_config(
        cls, text: Any, *, rope: str, dtype: torch.dtype, default_theta: float = 10000.0
    ) -> LMSpec:
        """The layout of a transformers text config (``config.get_text_config()``); the rope
        base from ``rope_parameters`` (transformers 5) or ``rope_theta``."""
        head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
        parameters = getattr(text, "rope_parameters", None) or {}
        theta = parameters.get("rope_theta", getattr(text, "rope_theta", default_theta))
        return cls(
            num_layers=int(text.num_hidden_layers),
            num_heads=int(text.num_attention_heads),
            num_kv_heads=int(
                getattr(text, "num_key_value_heads", None) or text.num_attention_heads
            ),
            head_dim=int(head_dim),
            hidden_size=int(text.hidden_size),
            vocab_size=int(text.vocab_size),
            rope=rope,
            rope_theta=float(theta),
            max_positions=int(text.max_position_embeddings),
            dtype=dtype,
        )

    @property
    def position_dims(self) -> int:
        return 3 if self.rope == "mrope" else 1

    @property
    def kv_bytes_per_token(self) -> int:
        """Bytes one token occupies in a full KV cache (keys + values, all layers)."""
        itemsize = torch.empty((), dtype=self.dtype).element_size()
        return 2 * self.num_layers * self.num_kv_heads * self.head_dim * itemsize


@dataclass(frozen=True, slots=True, eq=False)
class VisualTokens:
    """The visual tokens of one step (one frame for LLaVA-OneVision) in the LLM's embedding space.

    ``embeds`` is ``(n, D)`` with ``n == grid[0] * grid[1]``, rows in raster order over ``grid``.
    """

    embeds: torch.Tensor
    grid: tuple[int, int]
    frames: int = 1

    def __post_init__(self) -> None:
        if self.embeds.ndim != 2 or self.embeds.shape[0] != self.grid[0] * self.grid[1]:
            raise InputError(
                f"visual tokens of shape {tuple(self.embeds.shape)} do not fill a {self.grid} grid"
            )

    def __len__(self) -> int:
        return int(self.embeds.shape[0])


@dataclass(frozen=True, slots=True, eq=False)
class LMChunk:
    """LLM input embeddings with their explicit positions, ready to prefill into a cache.

    ``embeds`` is ``(L, D)``; ``positions`` is ``(P, L)`` int64 with ``P`` the family's position
    dimensions (1 for 1-D RoPE, 3 for M-RoPE). ``next_position`` is where the sequence continues
    after this chunk. Positions may have gaps (pruned tokens): RoPE attention depends only on
    differences, and ``next_position`` is kept from the unpruned chunk.
    """

    embeds: torch.Tensor
    positions: torch.Tensor
    next_position: int

    def __post_init__(self) -> None:
        if self.embeds.ndim != 2 or self.positions.ndim != 2:
            raise InputError("an LMChunk needs embeds (L, D) and positions (P, L)")
        if self.positions.shape[1] != self.embeds.shape[0]:
            raise InputError(
                f"{self.embeds.shape[0]} embeddings but {self.positions.shape[1]} positions"
            )

    def __len__(self) -> int:
        return int(self.embeds.shape[0])

    def select(self, keep: torch.Tensor | Sequence[int]) -> LMChunk:
        """The chunk restricted to the token rows ``keep`` (indices or a boolean mask)."""
        index = torch.as_tensor(keep, device=self.embeds.device)
        if index.dtype == torch.bool:
            index = index.nonzero().flatten()
        return LMChunk(self.embeds[index], self.positions[:, index], self.next_position)

    @staticmethod
    def concat(chunks: Sequence[LMChunk]) -> LMChunk:
        """One chunk made of ``chunks`` in order (for one-shot prefill)."""
        if not chunks:
            raise InputError("cannot concatenate zero chunks")
        return LMChunk(
            torch.cat([c.embeds for c in chunks]),
            torch.cat([c.positions for c in chunks], dim=1),
            chunks[-1].next_position,
        )


@dataclass(frozen=True, slots=True)
class PromptLayout:
    """A chat prompt around one video, as token ids.

    The model sees ``prefix_ids``, then the video's tokens (and the family's end-of-video tokens),
    then ``suffix_ids`` (the question and the opening of the assistant's turn). ``prefix_ids`` do
    not depend on the question, so a stream can prefill them once before any question is known.
    """

    prefix_ids: tuple[int, ...]
    suffix_ids: tuple[int, ...]
    text: str


@dataclass(frozen=True, slots=True)
class DecodeOptions:
    """How to pick answer tokens.

    ``temperature == 0`` is greedy decoding; otherwise tokens are sampled after optional top-k and
    top-p filtering, reproducibly from ``seed``. ``stop_ids`` of ``None`` means the checkpoint's own
    end-of-sequence ids.
    """

    max_new_tokens: int = 128
    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int | None = None
    stop_ids: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise InputError("max_new_tokens must be at least 1")
        if self.temperature < 0 or not 0 < self.top_p <= 1 or self.top_k < 0:
            raise InputError("temperature must be >= 0, top_p in (0, 1] and top_k >= 0")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


@dataclass(frozen=True, slots=True)
class DecodeStep:
    """One generated token and the text it adds to the answer.

    ``text`` may be empty (a token that ends inside a multi-byte character, or a stop token) and
    may carry held-back text of earlier tokens. ``finished`` is set on the last step; ``stopped``
    tells whether it ended on a stop token (True) or at ``max_new_tokens`` (False).
    """

    token_id: int
    text: str
    finished: bool = False
    stopped: bool = False
