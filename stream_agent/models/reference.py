"""The uncompressed reference answer: every token of every sampled frame in a full KV cache.

This is the baseline every compression (token reuse, pruning, retrieval) is compared with, in its
answers and first-token logits. The prompt is laid out as the checkpoint's chat template says:
``prefix | frame 1 tokens | ... | frame N tokens | end-of-video | suffix (question)``, prefilled
chunk by chunk (which equals one-shot prefill) with 1-D or family positions.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from stream_agent.models.base import VideoLLM
from stream_agent.models.errors import InputError
from stream_agent.models.records import DecodeOptions, DecodeStep, LMChunk, PromptLayout

log = logging.getLogger(__name__)


def uniform_indices(total: int, count: int) -> list[int]:
    """``count`` frame indices spread uniformly over ``total`` frames, first and last included.

    Fewer than ``count`` are returned when the video is shorter (no index twice).
    """
    if total <= 0 or count <= 0:
        return []
    if count >= total:
        return list(range(total))
    return sorted({int(i) for i in np.linspace(0, total - 1, count).round()})


@dataclass(frozen=True, slots=True, eq=False)
class PreparedPrompt:
    """A prompt prefilled into ``cache``: the next-token ``logits`` and where decoding continues."""

    cache: Any
    logits: torch.Tensor
    next_position: int
    prompt_tokens: int
    frames: int
    layout: PromptLayout


@dataclass(frozen=True, slots=True, eq=False)
class ReferenceAnswer:
    """A whole answer with what it was built from."""

    text: str
    token_ids: tuple[int, ...]
    first_logits: torch.Tensor
    prompt_tokens: int
    frames: int
    stopped: bool


def _check_room(model: VideoLLM, chunk: LMChunk) -> None:
    limit = model.lm_spec.max_positions
    if chunk.next_position > limit:
        raise InputError(
            f"the prompt reaches position {chunk.next_position}, beyond the model's "
            f"{limit} positions; use fewer frames"
        )


class PromptBuilder:
    """Builds the reference prompt incrementally, frame by frame as frames arrive.

    Construction prefills the prompt's prefix; :meth:`add_frame` takes one frame and, once the
    family's step is complete (two frames for Qwen2-VL's temporal patches, one otherwise),
    encodes the step and prefills it with the family's per-step text; :meth:`finish` encodes a
    last partial step, closes the video, prefills the question and returns the
    :class:`PreparedPrompt` to decode from. ``seconds_per_frame`` is the sampling interval, used
    for frames added without a timestamp and for the time one step covers.
    """

    def __init__(
        self,
        model: VideoLLM,
        question: str,
        *,
        system: str | None = None,
        seconds_per_frame: float = 1.0,
    ) -> None:
        if seconds_per_frame <= 0:
            raise InputError(f"seconds_per_frame must be positive, got {seconds_per_frame}")
        self.model = model
        self.layout = model.build_prompt(question, system=system)
        self.cache = model.new_cache()
        self.frames = 0
        self.tokens = 0
        self.steps = 0
        self.seconds_per_frame = seconds_per_frame
        self._pending: list[tuple[npt.NDArray[np.uint8], float]] = []
        self._finished = False
        self._position = self._feed(model.text_chunk(self.layout.prefix_ids, 0))[0]

    def _feed(
        self, chunk: LMChunk, *, want_logits: bool = False
    ) -> tuple[int, torch.Tensor | None]:
        _check_room(self.model, chunk)
        self.tokens += len(chunk)
        logits = self.model.prefill(self.cache, chunk, want_logits=want_logits)
        return chunk.next_position, logits

    def add_frame(self, frame: npt.NDArray[np.uint8], timestamp: float | None = None) -> None:
        """Add one RGB frame taken ``timestamp`` seconds into the video (by default its index
        times ``seconds_per_frame``); a complete step is encoded and prefilled at once."""
        if self._finished:
            raise InputError("the prompt is finished; start a new one to add frames")
        if timestamp is None:
            timestamp = self.frames * self.seconds_per_frame
        self._pending.append((frame, timestamp))
        self.frames += 1
        if len(self._pending) >= self.model.vision_spec.frames_per_step:
            self._encode_pending()

    def _encode_pending(self) -> None:
        frames = [f for f, _ in self._pending]
        timestamp = self._pending[0][1]
        self._pending.clear()
        per_step = self.model.vision_spec.frames_per_step
        for tokens in self.model.encode_frames(frames):
            chunk = self.model.video_step_chunk(
                tokens,
                self._position,
                step=self.steps,
                timestamp=timestamp,
                seconds_per_step=per_step * self.seconds_per_frame,
            )
            self._position = self._feed(chunk)[0]
            self.steps += 1

    def finish(self) -> PreparedPrompt:
        """Close the video, prefill the question; the prompt is then ready to decode."""
        if self.frames == 0:
            raise InputError("no frames to answer from")
        if self._finished:
            raise InputError("the prompt is already finished")
        if self._pending:
            self._encode_pending()
        self._finished = True
        end = self.model.video_end_chunk(self._position)
        if len(end):
            self._position = self._feed(end)[0]
        suffix = self.model.text_chunk(self.layout.suffix_ids, self._position)
        next_position, logits = self._feed(suffix, want_logits=True)
        assert logits is not None
        return PreparedPrompt(
            self.cache, logits, next_position, self.tokens, self.frames, self.layout
        )


def prepare_prompt(
    model: VideoLLM,
    frames: Iterable[npt.NDArray[np.uint8]],
    question: str,
    *,
    system: str | None = None,
    on_frame: Callable[[int], None] | None = None,
    seconds_per_frame: float = 1.0,
) -> PreparedPrompt:
    """Encode and prefill ``frames`` (as they arrive, one step at a time) and ``question``.

    ``on_frame(i)`` is called after frame ``i`` (1-based) is taken.
    """
    builder = PromptBuilder(model, question, system=system, seconds_per_frame=seconds_per_frame)
    for frame in frames:
        builder.add_frame(frame)
        if on_frame is not None:
            on_frame(builder.frames)
    return builder.finish()


def stream_answer(
    model: VideoLLM, prepared: PreparedPrompt, options: DecodeOptions | None = None
) -> Iterator[DecodeStep]:
    """Decode the answer to a prepared prompt, one step at a time."""
    return model.decode(prepared.cache, prepared.logits, prepared.next_position, options)


def answer_video(
    model: VideoLLM,
    frames: Iterable[npt.NDArray[np.uint8]],
    question: str,
    *,
    options: DecodeOptions | None = None,
    system: str | None = None,
) -> ReferenceAnswer:
    """The whole reference answer to ``question`` about ``frames``."""
    prepared = prepare_prompt(model, frames, question, system=system)
    steps = list(stream_answer(model, prepared, options))
    return ReferenceAnswer(
        text="".join(s.text for s in steps),
        token_ids=tuple(s.token_id for s in steps),
        first_logits=prepared.logits,
        prompt_tokens=prepared.prompt_tokens,
        frames=prepared.frames,
        stopped=bool(steps and steps[-1].stopped),
    )
