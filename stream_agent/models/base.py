"""The family-neutral interface of a loaded video LLM, and what all families share.

A :class:`VideoLLM` exposes the pieces a streaming pipeline composes, each usable on its own:

* frames -> pixels: :meth:`VideoLLM.preprocess` (numpy/PIL, equal to the library's processor);
* pixels -> patch embeddings: :meth:`VideoLLM.embed_patches`;
* the vision encoder as :mod:`cacher.layers` records (:attr:`VideoLLM.vision_layers`), run by
  :func:`cacher.layers.encoder_forward` or piece by piece by a token-reuse cache, keeping the
  hidden states :attr:`VisionSpec.feature_layers`;
* hidden states -> visual tokens in the LLM's embedding space: :meth:`VideoLLM.tokens_from_hidden`
  (the family's projector and pooling/merging), one :class:`VisualTokens` per step;
* text and visual tokens -> :class:`LMChunk` with explicit positions (:meth:`text_chunk`,
  :meth:`visual_chunk`, :meth:`video_end_chunk`), prefilled into a cache the caller owns
  (:meth:`new_cache`, :meth:`prefill`);
* token-by-token decoding that streams text (:meth:`decode`), and the chat prompt around a video
  (:meth:`build_prompt`).

Families subclass it and fill in the abstract methods; everything else lives here once.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import numpy.typing as npt
import torch
from transformers import DynamicCache

from cacher.layers import EncoderLayer, Rotary, encoder_forward
from stream_agent.models.errors import InputError
from stream_agent.models.preprocess import preprocess_frames
from stream_agent.models.records import (
    DecodeOptions,
    DecodeStep,
    FrameTransform,
    LMChunk,
    LMSpec,
    PromptLayout,
    VisionSpec,
    VisualTokens,
)
from stream_agent.models.text import IncrementalDetokenizer, build_prompt_layout

log = logging.getLogger(__name__)


class VideoLLM(ABC):
    """A video LLM of one family, loaded on one device in one dtype, in inference mode.

    Subclasses set ``family`` and implement the abstract methods; they are constructed by
    :meth:`from_folder` (see :func:`stream_agent.models.load_model`) or, for in-memory test models,
    directly from their parts.
    """

    family: ClassVar[str]

    def __init__(
        self,
        *,
        model: Any,
        tokenizer: Any,
        chat_template: str,
        transform: FrameTransform,
        placeholder: str,
        folder: Path | None = None,
    ) -> None:
        # Inference only: frozen parameters keep every op (including the layer-record maths run
        # by callers outside torch.no_grad) from building autograd graphs.
        self.model = model.eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.chat_template = chat_template
        self.transform = transform
        self.placeholder = placeholder
        self.folder = folder
        first = next(model.parameters())
        self.device: torch.device = first.device
        self.dtype: torch.dtype = first.dtype

    # ----------------------------------------------------------------------------- construction

    @classmethod
    @abstractmethod
    def from_folder(cls, folder: Path, *, device: torch.device, dtype: torch.dtype) -> VideoLLM:
        """Load a checkpoint folder of this family (already checked to be one)."""

    # ------------------------------------------------------------------------------------ specs

    @property
    @abstractmethod
    def vision_spec(self) -> VisionSpec:
        """Shapes of the vision path."""

    @property
    @abstractmethod
    def lm_spec(self) -> LMSpec:
        """Attention layout of the language model (KV cache size, position kind)."""

    # ----------------------------------------------------------------------------------- vision

    def preprocess(self, frames: Sequence[npt.NDArray[np.uint8]]) -> torch.Tensor:
        """RGB uint8 frames ``(H, W, 3)`` -> float32 pixels ``(F, 3, h, w)`` on the device."""
        return torch.from_numpy(preprocess_frames(frames, self.transform)).to(self.device)

    @abstractmethod
    def embed_patches(self, pixels: torch.Tensor) -> torch.Tensor:
        """Pixels ``(F, 3, h, w)`` -> encoder input ``(F, N, Dv)`` (hidden state 0)."""

    @property
    @abstractmethod
    def vision_layers(self) -> tuple[EncoderLayer, ...]:
        """The encoder layers up to the deepest of :attr:`VisionSpec.feature_layers`, as records
        referencing the model's own weights."""

    def vision_attention(self, pixels: torch.Tensor) -> tuple[Rotary | None, torch.Tensor | None]:
        """Per-token rotary angles and attention mask of the encoder for ``pixels``.

        ``(None, None)`` for encoders with absolute positions and full attention (SigLIP);
        families with 2-D rotary or attention segments override it.
        """
        return None, None

    @abstractmethod
    def tokens_from_hidden(self, hidden_states: Sequence[torch.Tensor]) -> list[VisualTokens]:
        """The family's head: hidden states at :attr:`VisionSpec.feature_layers` (in that order,
        each ``(F, N, Dv)``) -> one :class:`VisualTokens` per step."""

    @torch.no_grad()
    def encode_pixels(self, pixels: torch.Tensor) -> list[VisualTokens]:
        """Full vision path from pixels: patch embedding, all layers, head."""
        hidden = self.embed_patches(pixels)
        rotary, mask = self.vision_attention(pixels)
        out = encoder_forward(
            self.vision_layers,
            hidden,
            keep=self.vision_spec.feature_layers,
            rotary=rotary,
            mask=mask,
        )
        return self.tokens_from_hidden(out.hidden_states)

    def encode_frames(self, frames: Sequence[npt.NDArray[np.uint8]]) -> list[VisualTokens]:
        """Full vision path from RGB frames."""
        return self.encode_pixels(self.preprocess(frames))

    # ------------------------------------------------------------------------------------- text

    @abstractmethod
    def embed_text(self, ids: Sequence[int] | torch.Tensor) -> torch.Tensor:
        """Token ids -> input embeddings ``(L, D)``."""

    @abstractmethod
    def text_chunk(self, ids: Sequence[int] | torch.Tensor, start: int) -> LMChunk:
        """Text tokens placed from position ``start``."""

    @abstractmethod
    def visual_chunk(self, tokens: VisualTokens, start: int) -> LMChunk:
        """One step of visual tokens placed from position ``start``."""

    @abstractmethod
    def video_end_chunk(self, start: int) -> LMChunk:
        """The embeddings that close a video (LLaVA-OneVision: ``image_newline``; may be empty)."""

    def build_prompt(self, question: str, *, system: str | None = None) -> PromptLayout:
        """The checkpoint's chat prompt around one video and ``question``."""
        return build_prompt_layout(
            self.tokenizer, self.chat_template, question, self.placeholder, system=system
        )

    # -------------------------------------------------------------------------------------- LLM

    @property
    @abstractmethod
    def _decoder(self) -> Any:
        """The language model's decoder stack (takes ``inputs_embeds``, ``position_ids``,
        ``past_key_values``)."""

    @property
    @abstractmethod
    def _lm_head(self) -> Any:
        """Hidden state -> vocabulary logits."""

    def _lm_position_ids(self, positions: torch.Tensor) -> torch.Tensor:
        """Chunk positions ``(P, L)`` -> the decoder's ``position_ids`` for batch size 1."""
        return positions

    def new_cache(self) -> DynamicCache:
        """An empty KV cache for this model's language model.

        ``cache.layers[i].keys`` / ``.values`` are ``(1, kv_heads, T, head_dim)``, keys after RoPE.
        """
        return DynamicCache(config=self.model.config.get_text_config())

    @torch.no_grad()
    def prefill(
        self,
        cache: Any,
        chunk: LMChunk,
        *,
        want_logits: bool = False,
        attention_mask: torch.Tensor | None = None,
    ) -> torch.Tensor | None:
        """Run ``chunk`` through the LLM, appending its keys/values to ``cache``.

        Returns the float32 next-token logits ``(vocab,)`` after the chunk's last token when
        ``want_logits``. ``attention_mask`` (``(1, cached + len(chunk))``, 1 = visible) hides
        cached tokens from the chunk; by default every cached token is visible.
        """
        if len(chunk) == 0:
            raise InputError("cannot prefill an empty chunk")
        if chunk.positions.shape[0] != self.lm_spec.position_dims:
            raise InputError(
                f"{self.family} needs {self.lm_spec.position_dims}-D positions, "
                f"got {chunk.positions.shape[0]}-D"
            )
        out = self._decoder(
            inputs_embeds=chunk.embeds[None].to(self.dtype),
            position_ids=self._lm_position_ids(chunk.positions),
            past_key_values=cache,
            attention_mask=attention_mask,
            use_cache=True,
        )
        if not want_logits:
            return None
        logits: torch.Tensor = self._lm_head(out.last_hidden_state[0, -1])
        return logits.float()

    @property
    def stop_ids(self) -> tuple[int, ...]:
        """The checkpoint's end-of-sequence ids (generation config, then tokenizer)."""
        ids: list[int] = []
        eos = getattr(getattr(self.model, "generation_config", None), "eos_token_id", None)
        for value in eos if isinstance(eos, list | tuple) else [eos]:
            if value is not None and int(value) not in ids:
                ids.append(int(value))
        tok_eos = getattr(self.tokenizer, "eos_token_id", None)
        if tok_eos is not None and int(tok_eos) not in ids:
            ids.append(int(tok_eos))
        return tuple(ids)

    @torch.no_grad()
    def decode(
        self,
        cache: Any,
        logits: torch.Tensor,
        next_position: int,
        options: DecodeOptions | None = None,
    ) -> Iterator[DecodeStep]:
        """Generate an answer token by token, streaming text.

        ``logits`` are the next-token logits after the prompt (from :meth:`prefill` with
        ``want_logits``) and ``next_position`` the prompt chunk's ``next_position``. Each chosen
        token is fed back at the next position into ``cache`` (the final token is not).
        """
        options = options or DecodeOptions()
        stop = set(options.stop_ids if options.stop_ids is not None else self.stop_ids)
        generator: torch.Generator | None = None
        if not options.greedy:
            generator = torch.Generator(device=logits.device)
            generator.manual_seed(options.seed if options.seed is not None else 0)
        detok = IncrementalDetokenizer(self.tokenizer)
        position = next_position
        for step in range(options.max_new_tokens):
            token = choose_token(logits, options, generator)
            if token in stop:
                yield DecodeStep(token, detok.push(None, final=True), finished=True, stopped=True)
                return
            last = step == options.max_new_tokens - 1
            yield DecodeStep(token, detok.push(token, final=last), finished=last)
            if last:
                return
            chunk = self.text_chunk([token], position)
            position = chunk.next_position
            next_logits = self.prefill(cache, chunk, want_logits=True)
            assert next_logits is not None
            logits = next_logits


def choose_token(
    logits: torch.Tensor, options: DecodeOptions, generator: torch.Generator | None
) -> int:
    """Greedy argmax, or a sample after temperature, top-k and top-p filtering."""
    if options.greedy:
        return int(torch.argmax(logits).item())
    scores = logits.float() / options.temperature
    if options.top_k > 0:
        k = min(options.top_k, scores.shape[-1])
        threshold = torch.topk(scores, k).values[-1]
        scores = scores.masked_fill(scores < threshold, float("-inf"))
    if options.top_p < 1.0:
        sorted_scores, order = torch.sort(scores, descending=True)
        cumulative = torch.softmax(sorted_scores, dim=-1).cumsum(-1)
        # drop tokens once the mass before them already reaches top_p (always keep the first)
        drop = (cumulative - torch.softmax(sorted_scores, dim=-1)) >= options.top_p
        scores = scores.scatter(0, order[drop], float("-inf"))
    probs = torch.softmax(scores, dim=-1)
    return int(torch.multinomial(probs, 1, generator=generator).item())
