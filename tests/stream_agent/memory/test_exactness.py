"""When the window holds the whole stream and top-k covers every block, the memory's answer is
the uncompressed reference answer: same tokens, same first-token logits."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
import torch

from stream_agent.memory import AnswerFinal, FrameStamp, Memory
from stream_agent.models.base import VideoLLM
from stream_agent.models.records import DecodeOptions
from stream_agent.models.reference import answer_video

from .conftest import stamp

QUESTION = "What happens in the video?"
OPTIONS = DecodeOptions(max_new_tokens=10)


def _memory_answer(memory: Memory) -> tuple[AnswerFinal, torch.Tensor]:
    _, prepared = memory.prepare(QUESTION, max_new_tokens=OPTIONS.max_new_tokens)
    events = list(memory.answer(QUESTION, options=OPTIONS))
    final = events[-1]
    assert isinstance(final, AnswerFinal)
    return final, prepared.logits


def _check_family(
    model: VideoLLM, frames: list[np.ndarray], make_memory: Callable[..., Memory], **options: object
) -> None:
    reference = answer_video(model, frames, QUESTION, options=OPTIONS)
    memory = make_memory(
        model,
        window_tokens=100_000,
        top_k=1_000,
        recent_blocks=2,
        store_dtype="float32",
        **options,
    )
    # as the reference does: one step per frames_per_step frames, stamped with its first frame
    per_step = model.vision_spec.frames_per_step
    for first in range(0, len(frames), per_step):
        group = frames[first : first + per_step]
        for tokens in model.encode_frames(group):
            s = stamp(first)
            memory.append_step(
                "cam",
                tokens,
                FrameStamp(first, s.pts, s.wall, s.pts + len(group) - 1, s.wall + len(group) - 1),
                seconds_per_step=float(per_step),
            )
    steps = len(range(0, len(frames), per_step))
    final, logits = _memory_answer(memory)
    assert final.token_ids == reference.token_ids
    assert final.text == reference.text
    torch.testing.assert_close(logits, reference.first_logits, rtol=0, atol=1e-4)
    # every block is evidence, in time order
    assert sorted(e.seq for e in final.evidence) == list(range(0, len(frames), per_step))
    assert len(final.evidence) == steps
    assert all(e.score == 1.0 for e in final.evidence)


def test_llava_onevision_equals_reference(
    llava: VideoLLM, frames: list[np.ndarray], make_memory: Callable[..., Memory]
) -> None:
    _check_family(llava, frames[:6], make_memory)


def test_equal_from_disk_with_no_ram_cache(
    llava: VideoLLM, frames: list[np.ndarray], make_memory: Callable[..., Memory]
) -> None:
    """With a zero RAM budget every block comes back from disk, bit for bit."""
    _check_family(llava, frames[:4], make_memory, ram_budget_bytes=0)


@pytest.mark.parametrize("family", ["qwen2_vl", "qwen2_5_vl", "smolvlm"])
def test_other_families_equal_reference(
    family: str, frames: list[np.ndarray], make_memory: Callable[..., Memory]
) -> None:
    """Qwen2-VL/2.5-VL (M-RoPE, two frames per step) and SmolVLM2 (per-frame text)."""
    from stream_agent.models.testing import build_test_adapter

    model = build_test_adapter(family, seed=0)
    _check_family(model, frames[:4], make_memory)
