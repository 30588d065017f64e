"""The family-neutral interface of a loaded video LLM, and what all families share.

A :class:`VideoLLM` exposes the pieces a streaming pipeline composes, each usable on its own:

* frames -> pixels: :meth:`VideoLLM.preprocess` (numpy/PIL, equal to the library's processor);
* pixels -> patch embeddings: :meth:`VideoLLM.embed_patches`;
* the vision encoder as :mod:`cacher.layers` records (:attr:`VideoLLM.vision_layers`), run by
  :func:`cacher.layers.encoder_forward_masks` or piece by piece by a token-reuse cache, keeping the
  hidden states :attr:`VisionSpec.feature_layers`;
* hidden states -> visual tokens in the LLM's embedding space: :meth:`VideoLLM.tokens_from_hidden`
  (the family's projector and pooling/merging), one :class:`VisualTokens` per step;
* text and visual tokens -> :class:`LMChunk` with explicit positions (:meth:`text_chunk`,
  :meth:`visual_chunk`, :meth:`video_end_chunk`), prefilled into a cache the caller owns
  (:meth:`new_cache`, :meth:`prefill`);
* token-by-token decoding that streams text (:meth:`decode`), and the chat prompt around a video
  (:meth:`build_prompt`).

Families subclass it and fill in the abstract methods; everything else lives here once. The
language-model half (prompt, chunks, prefill, decoding, and the decoder stack for layer-by-layer
runners such as the KV memory) is :class:`LanguageModel`, which text-only adapters
(:mod:`stream_agent.models.text_lm`) share.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import numpy.typing as npt
import torch
from transformers import DynamicCache

from cacher.layers import EncoderLayer, Rotary, encoder_forward_masks
from stream_agent.models.errors import IncompleteModelError, InputError
from stream_agent.models.preprocess import frame_transform_from_settings, preprocess_frames
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


def placeholder_token(tokenizer: Any, token_id: int, what: str = "video_token_id") -> str:
    """The token string of ``token_id`` (the video placeholder of the chat prompt), checked to be
    a real token of ``tokenizer``; :class:`IncompleteModelError` where it has none."""
    token = tokenizer.convert_ids_to_tokens(int(token_id))
    if not isinstance(token, str) or token == tokenizer.unk_token:
        raise IncompleteModelError(f"the tokenizer has no token for {what} {token_id}")
    return token


class LanguageModel(ABC):
    """The language-model side of an adapter: prompt, chunks with explicit positions, prefill into
    a cache the caller owns, decoding, and the decoder stack for layer-by-layer runners.

    :class:`VideoLLM` adds the vision path; text-only adapters subclass this directly.
    """

    family: ClassVar[str]

    def __init__(
        self,
        *,
        model: Any,
        tokenizer: Any,
        chat_template: str,
        placeholder: str,
        folder: Path | None = None,
    ) -> None:
        # Inference only: frozen parameters keep every op (including the layer-record maths run
        # by callers outside torch.no_grad) from building autograd graphs.
        self.model = model.eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.chat_template = chat_template
        self.placeholder = placeholder
        self.folder = folder
        first = next(model.parameters())
        self.device: torch.device = first.device
        self.dtype: torch.dtype = first.dtype

    @property
    @abstractmethod
    def lm_spec(self) -> LMSpec:
        """Attention layout of the language model (KV cache size, position kind)."""

    # ------------------------------------------------------------------------------------- text

    @abstractmethod
    def embed_text(self, ids: Sequence[int] | torch.Tensor) -> torch.Tensor:
        """Token ids -> input embeddings ``(L, D)``."""

    def text_chunk(self, ids: Sequence[int] | torch.Tensor, start: int) -> LMChunk:
        """Text tokens placed from position ``start`` (1-D positions; M-RoPE families override)."""
        return self.sequential_chunk(self.embed_text(ids), start)

    def sequential_chunk(self, embeds: torch.Tensor, start: int) -> LMChunk:
        """Embeddings ``(L, D)`` at the 1-D positions ``start, start + 1, ...``: the layout of
        every family without multi-dimensional positions."""
        length = int(embeds.shape[0])
        positions = torch.arange(start, start + length, device=self.device)[None]
        return LMChunk(embeds.to(self.dtype), positions, start + length)

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
        ``cache``: transformers 5 renamed ``past_key_values``, removed in 5.40)."""

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
            cache=cache,
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

        def feed(token: int, position: int) -> torch.Tensor:
            next_logits = self.prefill(cache, self.text_chunk([token], position), want_logits=True)
            assert next_logits is not None
            return next_logits

        yield from decode_tokens(self, logits, next_position, options, feed)

    # ----------------------------------------------------------- decoder stack, for layer runners

    @property
    def decoder(self) -> Any:
        """The language model's decoder stack (``layers``, ``rotary_emb``, ``norm``), for callers
        that run it layer by layer with the library's own decoder-layer modules (the KV memory)."""
        return self._decoder

    @property
    def lm_head(self) -> Any:
        """Final hidden state (after the decoder's ``norm``) -> vocabulary logits."""
        return self._lm_head

    def lm_position_ids(self, positions: torch.Tensor) -> torch.Tensor:
        """Chunk positions ``(P, L)`` -> the ``position_ids`` the decoder's ``rotary_emb`` takes."""
        return self._lm_position_ids(positions)


class VideoLLM(LanguageModel):
    """A video LLM of one family, loaded on one device in one dtype, in inference mode.

    Subclasses set ``family`` and implement the abstract methods; they are constructed by
    :meth:`from_folder` (see :func:`stream_agent.models.load_model`) or, for in-memory test models,
    directly from their parts.
    """

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
        super().__init__(
            model=model,
            tokenizer=tokenizer,
            chat_template=chat_template,
            placeholder=placeholder,
            folder=folder,
        )
        self.transform = transform

    # ----------------------------------------------------------------------------- construction

    @classmethod
    @abstractmethod
    def from_folder(cls, folder: Path, *, device: torch.device, dtype: torch.dtype) -> VideoLLM:
        """Load a checkpoint folder of this family (already checked to be one)."""

    @classmethod
    def transform_from_processor(cls, processor: Any) -> FrameTransform:
        """The :class:`FrameTransform` of an in-memory image processor (a test checkpoint's).

        The default reads a fixed ``{"height", "width"}`` size; families whose processors size
        frames otherwise (Qwen2-VL's pixel-count bounds) override it.
        """
        return frame_transform_from_settings(processor.to_dict())

    # ------------------------------------------------------------------------------------ specs

    @property
    @abstractmethod
    def vision_spec(self) -> VisionSpec:
        """Shapes of the vision path."""

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
        families with 2-D rotary or attention segments override it. The mask is the one all
        layers share; use :meth:`vision_layer_masks` for the mask of each layer.
        """
        return None, None

    def vision_layer_masks(self, pixels: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        """The attention mask of each of :attr:`vision_layers` for ``pixels`` (``None``: full).

        By default every layer uses :meth:`vision_attention`'s mask; encoders whose layers attend
        differently (Qwen2.5-VL's windows) override it.
        """
        _, mask = self.vision_attention(pixels)
        return (mask,) * len(self.vision_layers)

    @abstractmethod
    def tokens_from_hidden(self, hidden_states: Sequence[torch.Tensor]) -> list[VisualTokens]:
        """The family's head: hidden states at :attr:`VisionSpec.feature_layers` (in that order,
        each ``(F, N, Dv)``) -> one :class:`VisualTokens` per step."""

    @torch.no_grad()
    def encode_pixels(self, pixels: torch.Tensor) -> list[VisualTokens]:
        """Full vision path from pixels: patch embedding, all layers, head."""
        hidden = self.embed_patches(pixels)
        rotary, _ = self.vision_attention(pixels)
        out = encoder_forward_masks(
            self.vision_layers,
            hidden,
            masks=self.vision_layer_masks(pixels),
            keep=self.vision_spec.feature_layers,
            rotary=rotary,
        )
        return self.tokens_from_hidden(out.hidden_states)

    def encode_frames(self, frames: Sequence[npt.NDArray[np.uint8]]) -> list[VisualTokens]:
        """Full vision path from RGB frames."""
        return self.encode_pixels(self.preprocess(frames))

    # ----------------------------------------------------------------------------- video text

    @abstractmethod
    def visual_chunk(
        self,
        tokens: VisualTokens,
        start: int,
        *,
        step: int = 0,
        seconds_per_step: float = 1.0,
    ) -> LMChunk:
        """Step ``step`` (0-based, within the current video) of visual tokens, placed from the
        running position ``start``.

        Families with 1-D positions ignore ``step`` and ``seconds_per_step``; Qwen2-VL's M-RoPE
        needs both (the temporal position of step k; see its adapter). Prefer
        :meth:`video_step_chunk`, which adds the family's per-step text.
        """

    def video_step_chunk(
        self,
        tokens: VisualTokens,
        start: int,
        *,
        step: int,
        timestamp: float,
        seconds_per_step: float = 1.0,
        keep: torch.Tensor | Sequence[int] | None = None,
    ) -> LMChunk:
        """The whole LM input of video step ``step`` at ``timestamp`` seconds from the start of
        the video: the family's opening text, the visual tokens (only the rows ``keep``, at their
        original positions, when a pruner chose some), and its closing text.

        This is the one place that lays out a step, so the reference path, the memory and the
        daemon lay out every family the same way.
        """
        opening = self.frame_open_chunk(start, timestamp=timestamp)
        visual = self.visual_chunk(
            tokens, opening.next_position, step=step, seconds_per_step=seconds_per_step
        )
        if keep is not None:
            visual = visual.select(keep)
        closing = self.frame_close_chunk(visual.next_position)
        return LMChunk.concat([opening, visual, closing])

    @abstractmethod
    def video_end_chunk(self, start: int) -> LMChunk:
        """The embeddings that close a video (LLaVA-OneVision: ``image_newline``; may be empty)."""

    def frame_open_chunk(self, start: int, *, timestamp: float) -> LMChunk:
        """Text the family's prompt puts before each step's visual tokens (may be empty).

        ``timestamp`` is the step's time in seconds from the start of the video. Empty by default;
        SmolVLM2 puts ``"\\nFrame from 00:05:<fake_token_around_image><global-img>"`` there. Kept
        apart from :meth:`visual_chunk` so that a visual chunk holds only visual tokens (which a
        pruner selects from). Empty chunks are not prefilled.
        """
        return self.empty_chunk(start)

    def frame_close_chunk(self, start: int) -> LMChunk:
        """Text after each step's visual tokens (SmolVLM2: ``<fake_token_around_image>``); empty
        by default."""
        return self.empty_chunk(start)

    def empty_chunk(self, start: int) -> LMChunk:
        """A chunk of no tokens that leaves the position at ``start``."""
        spec = self.lm_spec
        return LMChunk(
            torch.empty(0, spec.hidden_size, dtype=self.dtype, device=self.device),
            torch.empty(spec.position_dims, 0, dtype=torch.long, device=self.device),
            start,
        )


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


def decode_tokens(
    model: LanguageModel,
    logits: torch.Tensor,
    next_position: int,
    options: DecodeOptions | None,
    feed: Callable[[int, int], torch.Tensor],
) -> Iterator[DecodeStep]:
    """The decoding loop: pick a token from ``logits``, stream its text, and get the next logits
    from ``feed(token, position)`` (which runs the token through the model at ``position``).

    Stops at one of ``options.stop_ids`` (default: the model's :attr:`LanguageModel.stop_ids`) or
    after ``options.max_new_tokens``; the final token is never fed.
    """
    options = options or DecodeOptions()
    stop = set(options.stop_ids if options.stop_ids is not None else model.stop_ids)
    generator: torch.Generator | None = None
    if not options.greedy:
        generator = torch.Generator(device=logits.device)
        generator.manual_seed(options.seed if options.seed is not None else 0)
    detok = IncrementalDetokenizer(model.tokenizer)
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
        logits = feed(token, position)
        position += 1
