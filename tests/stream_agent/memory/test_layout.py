"""Moving a block re-rotates its keys exactly, for 1-D RoPE and Qwen2-VL's M-RoPE.

Layer 0's keys depend only on a token's embedding and position (not on what it attended to), so
a retrieved block's layer-0 keys, moved to where the answer lays it out, must equal the
library's own layer-0 keys of the same tokens prefilled at those positions.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable

import pytest
import torch

from stream_agent.memory import Memory, TimeRange
from stream_agent.models.base import VideoLLM
from stream_agent.models.records import LMChunk, VisualTokens

from .conftest import WALL0, stamp


def _check_moved_block(model: VideoLLM, tokens: list[VisualTokens], memory: Memory) -> None:
    for i, t in enumerate(tokens):
        memory.append_step("cam", t, stamp(i))
    # one retrieved block from the last two, no recent ones: each layer lays its pick out as
    # step 0 of a video right after the sink, far from where it was encoded
    _, prepared = memory.prepare(
        "Is the door open?", top_k=1, time_range=TimeRange(since=WALL0 + len(tokens) - 2)
    )
    picked = prepared.selections[0]
    assert len(picked) == 1
    meta = picked[0].meta
    seq = meta.seq
    sink = memory.sink.tokens
    chunk = model.video_step_chunk(tokens[seq], sink, step=0, timestamp=meta.layout.timestamp)
    assert seq >= len(tokens) - 2
    assert not torch.equal(chunk.positions.cpu(), meta.layout.positions)
    cache = model.new_cache()
    prefix = model.text_chunk(memory.sink.ids, 0)
    model.prefill(cache, LMChunk.concat([prefix, chunk]))
    expected = cache.layers[0].keys[0, :, sink:]
    got = prepared.cache.layer(0).keys[0, :, sink : sink + meta.tokens]
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


def test_moved_block_llava(
    llava: VideoLLM, frame_tokens: list[VisualTokens], make_memory: Callable[..., Memory]
) -> None:
    memory = make_memory(llava, store_dtype="float32", recent_blocks=0, top_k=1)
    _check_moved_block(llava, frame_tokens[:4], memory)


@pytest.mark.skipif(
    importlib.util.find_spec("stream_agent.models.qwen2_vl") is None,
    reason="the Qwen2-VL adapter is not in the tree",
)
def test_moved_block_qwen2_vl_mrope(make_memory: Callable[..., Memory]) -> None:
    import numpy as np

    from stream_agent.models.testing import build_test_adapter

    model = build_test_adapter("qwen2_vl", seed=0)
    rng = np.random.default_rng(3)
    frames = [rng.integers(0, 256, (48, 64, 3), dtype=np.uint8) for _ in range(8)]
    tokens = [model.encode_frames(frames[i : i + 2])[0] for i in range(0, 8, 2)]
    memory = make_memory(model, store_dtype="float32", recent_blocks=0, top_k=1)
    _check_moved_block(model, tokens, memory)
