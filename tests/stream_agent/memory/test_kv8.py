"""The 8-bit KV codec: the documented error bound (a property), packed layer slices, and what it
costs the model (first-token KL on the tiny LLaVA-OneVision's cache)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from stream_agent.memory.errors import MemoryConfigError
from stream_agent.memory.kv8 import (
    first_token_kl,
    layer_nbytes,
    pack_layer,
    quantize,
    roundtrip,
    unpack_layer,
)
from stream_agent.models.base import VideoLLM
from stream_agent.models.records import VisualTokens


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    heads=st.integers(1, 3),
    tokens=st.integers(1, 40),
    dim=st.sampled_from([4, 8, 16]),
    magnitude=st.floats(1e-3, 1e3),
    axis=st.sampled_from(["channel", "token"]),
)
def test_round_trip_error_is_at_most_half_a_step(
    seed: int, heads: int, tokens: int, dim: int, magnitude: float, axis: str
) -> None:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(heads, tokens, dim, generator=gen) * magnitude
    x[..., 0] *= 30  # an outlier channel
    q = quantize(x, axis)  # type: ignore[arg-type]
    assert q.data.dtype == torch.int8 and int(q.data.abs().max()) <= 127
    expected_scale = (heads, 1, dim) if axis == "channel" else (heads, tokens, 1)
    assert tuple(q.scale.shape) == expected_scale
    error = (q.dequantize() - x).abs()
    bound = q.scale.float() / 2 * (1 + 1e-5) + 1e-30
    assert bool((error <= bound).all())
    # the per-channel bound in terms of the data: half of max|x| / 127 of the channel (float16
    # rounding of the scale adds at most 0.05 %)
    reduce = -2 if axis == "channel" else -1
    amax = x.abs().amax(dim=reduce, keepdim=True)
    normal = amax / 127 >= 2.0**-14  # float16 normal range: the scale within 0.05 %
    assert bool(((error <= amax / 254 * 1.001) | ~normal).all())


def test_zeros_empty_blocks_and_bad_input() -> None:
    zeros = torch.zeros(2, 5, 8)
    assert torch.equal(roundtrip(zeros), zeros)
    empty = torch.zeros(2, 0, 8)
    assert roundtrip(empty).shape == (2, 0, 8)
    assert layer_nbytes(2, 0, 8) == 2 * 2 * 8 * 2  # only the per-channel scales
    with pytest.raises(ValueError, match="NaN"):
        quantize(torch.tensor([[1.0, float("nan")]]))
    with pytest.raises(ValueError, match="floating"):
        quantize(torch.ones(2, 3, dtype=torch.int32))
    with pytest.raises(MemoryConfigError, match="axis"):
        quantize(torch.ones(2, 3), "row")  # type: ignore[arg-type]


@pytest.mark.parametrize(("key_axis", "value_axis"), [("channel", "channel"), ("channel", "token")])
def test_packed_layer_slice_round_trips(key_axis: str, value_axis: str) -> None:
    gen = torch.Generator().manual_seed(0)
    keys = torch.randn(2, 64, 16, generator=gen) * 4
    values = torch.randn(2, 64, 16, generator=gen)
    axes = {"key_axis": key_axis, "value_axis": value_axis}
    blob = pack_layer(keys, values, **axes)  # type: ignore[arg-type]
    assert len(blob) == layer_nbytes(2, 64, 16, **axes)  # type: ignore[arg-type]
    k, v = unpack_layer(blob, 2, 64, 16, **axes)  # type: ignore[arg-type]
    assert torch.equal(k, roundtrip(keys, key_axis))  # type: ignore[arg-type]
    assert torch.equal(v, roundtrip(values, value_axis))  # type: ignore[arg-type]
    # about half of float16's 2 bytes per element, plus the scales
    fp16 = 2 * keys.numel() * 2
    assert len(blob) / fp16 < 0.55
    with pytest.raises(ValueError, match="expected"):
        unpack_layer(blob[:-1], 2, 64, 16, **axes)  # type: ignore[arg-type]


def test_first_token_kl() -> None:
    logits = torch.randn(50)
    assert first_token_kl(logits, logits) == pytest.approx(0.0, abs=1e-12)
    assert first_token_kl(logits, logits + 3.0) == pytest.approx(0.0, abs=1e-9)  # shift-free
    other = torch.randn(50)
    assert first_token_kl(logits, other) > 0
    with pytest.raises(ValueError, match="differ"):
        first_token_kl(logits, torch.randn(49))


@torch.no_grad()
def test_a_cache_round_tripped_through_the_codec_keeps_the_next_token(
    llava: VideoLLM, frame_tokens: list[VisualTokens]
) -> None:
    """Prefill a prompt and four frames, round-trip every layer's keys and values through the
    codec (as blocks read from disk would be), and compare the next-token distribution of the
    same question chunk: the KL is small and the greedy token is the same."""
    prompt = llava.tokenizer("Watch the video.", add_special_tokens=False)["input_ids"]
    question = llava.tokenizer(" What moved?", add_special_tokens=False)["input_ids"]
    results = {}
    for codec in ("float", "kv8"):
        cache = llava.new_cache()
        chunk = llava.text_chunk(prompt, 0)
        llava.prefill(cache, chunk)
        position = chunk.next_position
        for tokens in frame_tokens[:4]:
            chunk = llava.visual_chunk(tokens, position)
            llava.prefill(cache, chunk)
            position = chunk.next_position
        if codec == "kv8":
            for layer in cache.layers:
                stored: Any = layer  # a DynamicLayer: .keys / .values (1, kv_heads, T, head_dim)
                stored.keys = roundtrip(stored.keys)
                stored.values = roundtrip(stored.values)
        logits = llava.prefill(cache, llava.text_chunk(question, position), want_logits=True)
        assert logits is not None
        results[codec] = logits
    kl = first_token_kl(results["float"], results["kv8"])
    assert 0 < kl < 1e-2
    assert int(results["float"].argmax()) == int(results["kv8"].argmax())
    assert np.isfinite(kl)
